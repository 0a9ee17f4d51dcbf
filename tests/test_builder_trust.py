"""Builders that know the secret but lie, against a real builder hub on a
127.0.0.1 TCP listener with a real database and file receiver: none of
their claims changes what is recorded or published, every one is logged
with the builder's label, and an honest builder is served afterwards."""

import hashlib
import os
import zipfile

import attrs
import psycopg2
import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, task
from twisted.internet.protocol import Factory
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols import amp

from piwtwist import __version__
from piwtwist.builder.client import BuilderService, Job
from piwtwist.master.build_queue import BuildQueue
from piwtwist.master.builder_hub import BuilderHub
from piwtwist.protocol import builder as proto
from piwtwist.protocol.transfer import FetchChunks
from piwtwist.transfer.receiver import FileReceiver
from piwtwist.transfer.sender import FileSender, FileSenderResponders
from tests.test_db_queue import release, success, wheel

SECRET = b"t" * 32
ABI = "cp311"
STATS = dict(timestamp=0.0, disk_total=100, disk_free=50, mem_total=100,
             mem_free=50, load_average=0.5, cpu_temperature=None)


class BuilderEnd(FileSenderResponders, amp.AMP):
    """A builder's end of the wire, driven by the test."""

    def __init__(self):
        super().__init__()
        self.file_sender = FileSender()
        self.done = []
        self.lost = defer.Deferred()

    @proto.Done.responder
    def master_done(self, package, version):
        self.done.append((package, version))
        return {}

    @proto.Bye.responder
    def bye(self, reason):
        return {}

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if not self.lost.called:
            self.lost.callback(None)


class Staller(amp.AMP):
    """Offers wheels, then never answers a request for their bytes."""

    def __init__(self):
        super().__init__()
        self.asked = []
        self.lost = defer.Deferred()

    @FetchChunks.responder
    def fetch(self, filename, offset, length):
        self.asked.append((filename, offset, length))
        return defer.Deferred()

    @proto.Bye.responder
    def bye(self, reason):
        return {}

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if not self.lost.called:
            self.lost.callback(None)


def make_wheel(directory, filename, content=b"print('hi')\n"):
    path = directory / filename
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("module.py", content)
    return path


def facts_of(path, **lies):
    data = path.read_bytes()
    parts = path.name[:-len(".whl")].split("-")
    facts = dict(filename=path.name, filesize=len(data),
                 filehash=hashlib.sha256(data).hexdigest(),
                 package_tag=parts[0], package_version_tag=parts[1],
                 py_version_tag=parts[-3], abi_tag=parts[-2],
                 platform_tag=parts[-1], requires_python="",
                 dependencies=[])
    facts.update(lies)
    return facts


class Master:
    """A builder hub listening on 127.0.0.1, its queue, receiver and a
    database; and a way to connect builders to it."""

    def __init__(self, reactor, db, test_db, output):
        self.reactor = reactor
        self.db = db
        self.test_db = test_db
        self.output = output
        self.queue = BuildQueue(db, reactor, size=10)
        self.receiver = FileReceiver(output, reactor, chunk_timeout=1.0,
                                     durable=False)
        self.hub = BuilderHub(db, self.queue, self.receiver, reactor, SECRET,
                              output, index_url="https://idx/",
                              idle_delay=0.1)
        self.port = None
        self.clients = []

    async def start(self):
        self.queue.startService()
        self.hub.startService()
        self.port = self.reactor.listenTCP(0, self.hub.factory(),
                                           interface="127.0.0.1")

    async def stop(self):
        for client in self.clients:
            if client.transport is not None:
                client.transport.loseConnection()
        await self.port.stopListening()
        await self.hub.stopService()
        await self.queue.stopService()

    def endpoint(self):
        return endpoints.TCP4ClientEndpoint(
            self.reactor, "127.0.0.1", self.port.getHost().port)

    async def connect(self, protocol=None, label="liar", **hello):
        client = await endpoints.connectProtocol(
            self.endpoint(), protocol or BuilderEnd())
        self.clients.append(client)
        nonce = os.urandom(32)
        fields = dict(version=__version__, nonce=nonce, build_timeout=3600.0,
                      busy_timeout=60.0, py_tag=ABI, abi_tag=ABI,
                      platform_tag="linux_x86_64", label=label,
                      os_name="Debian", os_version="12", board_revision="",
                      board_serial="")
        fields.update(hello)
        reply = await client.callRemote(proto.Hello, **fields)
        assert reply["proof"] == proto.master_proof(SECRET, nonce)
        client.answer = await client.callRemote(
            proto.Authenticate,
            proof=proto.builder_proof(SECRET, reply["challenge"]))
        return client

    async def work(self, client):
        """Ask until given a build."""
        for _ in range(100):
            reply = await client.callRemote(proto.Idle, **STATS)
            if reply["action"] == proto.BUILD:
                return reply
            await task.deferLater(self.reactor, 0.05, lambda: None)
        raise AssertionError("no work was handed out")

    def rows(self):
        """What the database holds of builds and files."""
        builds = self.test_db.sql(
            "SELECT package, version, abi_tag, status, builder_label, reason "
            "FROM builds ORDER BY build_id")
        files = self.test_db.sql(
            "SELECT filename, build_id, filehash, abi_tag, platform_tag "
            "FROM files ORDER BY filename")
        return builds, files

    def tree(self):
        """Every published file and its bytes."""
        simple = self.output / "simple"
        if not simple.exists():
            return {}
        return {str(p.relative_to(simple)): p.read_bytes()
                for p in simple.rglob("*") if p.is_file()}

    async def wait(self, condition, what, timeout=10.0):
        for _ in range(int(timeout / 0.05)):
            if condition():
                return
            await task.deferLater(self.reactor, 0.05, lambda: None)
        raise AssertionError(f"timed out waiting for {what}")

    async def honest_build(self, tmp_path, package, version="1.0"):
        """An honest builder builds *package*, which must be recorded."""
        client = await self.connect(label="honest")
        work = await self.work(client)
        assert (work["package"], work["version"]) == (package, version)
        directory = tmp_path / "honest"
        directory.mkdir(exist_ok=True)
        path = make_wheel(directory,
                          f"{package}-{version}-{ABI}-{ABI}-linux_x86_64.whl")
        client.file_sender.offer(path.name, path)
        log = b"honest log\n"
        await client.callRemote(proto.BuildLog, offset=0, data=log)
        action = await client.callRemote(
            proto.Built, package=package, version=version, status=True,
            duration=1.0, reason="", log_size=len(log),
            log_sha256=hashlib.sha256(log).hexdigest(),
            files=[facts_of(path)])
        assert action["action"] == proto.SEND
        await self.wait(lambda: client.done, "the honest build's Done")
        assert self.tree()[f"{package}/{path.name}"] == path.read_bytes()
        builds, _ = self.rows()
        assert (package, version, ABI, True, "honest", "") in builds
        client.transport.loseConnection()


@pytest.fixture
def events():
    seen = []

    def observer(event):
        seen.append(event)

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


def logged(events, *words):
    """The log lines that contain every one of *words*."""
    lines = [formatEvent(e) for e in events]
    return [line for line in lines if all(w in line for w in words)]


@pytest_twisted.async_yield_fixture
async def master(reactor, db, test_db, tmp_path):
    await db.set_build_abis([ABI])
    await release(db, "foo", "1.0")
    await release(db, "bar", "1.0")
    master = Master(reactor, db, test_db, tmp_path / "www")
    await master.start()
    yield master
    await master.stop()


async def report(client, package, version, status, files=(), log=b"log",
                 reason=""):
    for offset in range(0, max(len(log), 1), proto.LOG_CHUNK):
        await client.callRemote(proto.BuildLog, offset=offset,
                                data=log[offset:offset + proto.LOG_CHUNK])
    reply = await client.callRemote(
        proto.Built, package=package, version=version, status=status,
        duration=1.0, reason=reason, log_size=len(log),
        log_sha256=hashlib.sha256(log).hexdigest(), files=list(files))
    return reply["action"]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("ticket", [None, "0" * 32])
async def test_a_claim_after_a_reconnection_needs_the_ticket(
        master, events, tmp_path, ticket):
    holder = await master.connect(label="pi-holder")
    work = await master.work(holder)
    package = work["package"]
    assert len(work["ticket"]) == 48
    holder.transport.loseConnection()
    await holder.lost
    await master.wait(lambda: master.hub._orphans, "the orphan")
    held = dict(master.queue.held())
    before = master.rows(), master.tree()

    extra = {} if ticket is None else {"current_ticket": ticket}
    liar = await master.connect(label="pi-liar", current_package=package,
                                current_version="1.0", **extra)
    assert liar.answer["resumed"] is False
    assert logged(events, "pi-liar", "127.0.0.1", package, "refused")
    with pytest.raises(proto.ProtocolViolation):
        await report(liar, package, "1.0", False, reason="made up")
    assert (await liar.callRemote(proto.Busy, **STATS))["action"] == \
        proto.STOP
    # nothing changed: the orphan still waits for its own builder
    assert (master.rows(), master.tree()) == before
    assert master.rows()[0] == []
    assert set(master.queue.held()) == set(held)
    assert ("cp311", package, "1.0") in master.hub._orphans

    # the real holder comes back with its ticket and may report
    back = await master.connect(label="pi-holder", current_package=package,
                                current_version="1.0",
                                current_ticket=work["ticket"])
    assert back.answer["resumed"] is True
    assert await report(back, package, "1.0", False,
                        reason="exit status 1") == proto.DONE
    await master.wait(lambda: master.rows()[0], "the failure recorded")
    assert master.rows()[0] == [(package, "1.0", ABI, False, "pi-holder",
                                 "exit status 1")]
    other = "bar" if package == "foo" else "foo"
    await master.honest_build(tmp_path, other)


@pytest_twisted.ensureDeferred
async def test_a_claim_of_something_never_handed_out(master, events,
                                                     tmp_path):
    liar = await master.connect(label="pi-liar", current_package="foo",
                                current_version="1.0",
                                current_ticket="f" * 48)
    assert liar.answer["resumed"] is False
    assert logged(events, "pi-liar", "127.0.0.1", "foo", "refused")
    assert master.queue.held() == {}
    with pytest.raises(proto.ProtocolViolation):
        await report(liar, "foo", "1.0", False)
    assert master.rows() == ([], [])
    # it may still ask for work like anyone else
    assert (await master.work(liar))["action"] == proto.BUILD
    liar.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_a_result_for_another_release_without_reconnecting(
        master, events, tmp_path):
    liar = await master.connect(label="pi-liar")
    work = await master.work(liar)
    other = "bar" if work["package"] == "foo" else "foo"
    path = make_wheel(tmp_path, f"{other}-1.0-{ABI}-{ABI}-linux_x86_64.whl")
    liar.file_sender.offer(path.name, path)
    with pytest.raises(proto.ProtocolViolation):
        await report(liar, other, "1.0", True, files=[facts_of(path)])
    assert logged(events, "pi-liar", "127.0.0.1", other, "not given")
    assert master.rows() == ([], [])
    assert master.tree() == {}
    liar.transport.loseConnection()
    await liar.lost
    # its own build waits for it a while; the other one is built honestly
    await master.honest_build(tmp_path, other)


@pytest_twisted.ensureDeferred
async def test_a_published_file_keeps_its_bytes(master, events, db,
                                                tmp_path):
    # foo 1.0 is published (an abi3 wheel from a cp312 build) and the
    # cp311 build the queue then offers claims that very name
    await db.set_build_abis([ABI, "cp312"])
    name = "foo-1.0-cp312-abi3-linux_x86_64.whl"
    original = make_wheel(tmp_path, name, b"the original\n")
    published = master.output / "simple" / "foo" / name
    published.parent.mkdir(parents=True)
    published.write_bytes(original.read_bytes())
    data = original.read_bytes()
    await db.log_build(attrs.evolve(success(
        "foo", "1.0", "cp312", attrs.evolve(
            wheel("foo", "1.0", "cp312", "abi3", "linux_x86_64"),
            filesize=len(data), filehash=hashlib.sha256(data).hexdigest(),
            location=f"simple/foo/{name}")), builder_label="pi-good"))
    master.queue.request_refresh()
    before_builds, before_files = master.rows()

    liar = await master.connect(label="pi-liar")
    work = await master.work(liar)
    if work["package"] != "foo":
        await report(liar, work["package"], "1.0", False, reason="skip")
        work = await master.work(liar)
    assert work["package"] == "foo"
    directory = tmp_path / "liar"
    directory.mkdir()
    evil = make_wheel(directory, name, b"import os  # other bytes\n")
    liar.file_sender.offer(name, evil)
    assert await report(liar, "foo", "1.0", True,
                        files=[facts_of(evil)]) == proto.SEND
    # (a skipped bar was answered with a Done of its own)
    await master.wait(lambda: ("foo", "1.0") in liar.done, "Done of foo")
    assert published.read_bytes() == data
    builds, files = master.rows()
    assert files == before_files
    assert builds[-1] == ("foo", "1.0", ABI, False, "pi-liar",
                          f"{name} is already published with other bytes")
    assert logged(events, "pi-liar", "127.0.0.1",
                  "already published with other bytes")
    liar.transport.loseConnection()
    await release(db, "baz", "1.0")
    master.queue.request_refresh()
    await master.honest_build(tmp_path, "baz")


@pytest_twisted.ensureDeferred
async def test_the_database_refuses_other_bytes_for_a_recorded_file(db):
    await db.set_build_abis([ABI])
    await release(db, "foo", "1.0")
    recorded = wheel("foo", "1.0", "py3", "none", "any")
    first = await db.log_build(success("foo", "1.0", ABI, recorded))
    again = await db.log_build(success("foo", "1.0", ABI, recorded))
    files = await db.get_project_files("foo")
    assert [(f.filename, f.build_id) for f in files] == [
        (recorded.filename, first)]  # the same bytes again: left alone
    with pytest.raises(psycopg2.errors.UniqueViolation,
                       match="already recorded with other bytes"):
        await db.log_build(success("foo", "1.0", ABI, attrs.evolve(
            recorded, filehash="cd" * 32)))
    files = await db.get_project_files("foo")
    assert [(f.filename, f.filehash, f.build_id) for f in files] == [
        (recorded.filename, "ab" * 32, first)]
    assert again != first
    # the operator's explicit replacement
    replaced = await db.log_build(success("foo", "1.0", ABI, attrs.evolve(
        recorded, filehash="cd" * 32)), replace_files=True)
    files = await db.get_project_files("foo")
    assert [(f.filehash, f.build_id) for f in files] == [
        ("cd" * 32, replaced)]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("lie", [
    {"abi_tag": "none"}, {"platform_tag": "any"}, {"py_version_tag": "py3"},
    {"package_version_tag": "9.9"},
])
async def test_tags_that_disagree_with_the_file_name(master, events,
                                                     tmp_path, lie):
    liar = await master.connect(label="pi-liar")
    work = await master.work(liar)
    package = work["package"]
    path = make_wheel(tmp_path,
                      f"{package}-1.0-{ABI}-{ABI}-linux_x86_64.whl")
    liar.file_sender.offer(path.name, path)
    assert await report(liar, package, "1.0", True,
                        files=[facts_of(path, **lie)]) == proto.SEND
    await master.wait(lambda: liar.done, "Done")
    builds, files = master.rows()
    assert files == []
    ((_, _, _, status, label, reason),) = builds
    assert (status, label) == (False, "pi-liar")
    assert "disagree with its name" in reason
    assert master.tree() == {}
    assert logged(events, "pi-liar", "127.0.0.1", "disagree with its name")
    liar.transport.loseConnection()
    other = "bar" if package == "foo" else "foo"
    await master.honest_build(tmp_path, other)


@pytest_twisted.ensureDeferred
async def test_a_wheel_of_another_abi_fails_the_build(master, events,
                                                      tmp_path):
    liar = await master.connect(label="pi-liar")
    package = (await master.work(liar))["package"]
    path = make_wheel(tmp_path, f"{package}-1.0-cp39-cp39-linux_x86_64.whl")
    liar.file_sender.offer(path.name, path)
    await report(liar, package, "1.0", True, files=[facts_of(path)])
    await master.wait(lambda: liar.done, "Done")
    builds, files = master.rows()
    assert files == [] and master.tree() == {}
    assert builds[0][3:5] == (False, "pi-liar")
    assert "built for cp39, not for cp311" in builds[0][5]
    liar.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_an_oversized_log_is_refused_without_wedging(master, events,
                                                          tmp_path):
    liar = await master.connect(label="pi-liar")
    package = (await master.work(liar))["package"]
    piece = b"x" * proto.LOG_CHUNK
    with pytest.raises(proto.LogTooLarge):
        for offset in range(0, proto.MAX_LOG_BYTES + len(piece), len(piece)):
            await liar.callRemote(proto.BuildLog, offset=offset, data=piece)
    assert offset <= proto.MAX_LOG_BYTES
    assert logged(events, "pi-liar", "127.0.0.1", str(proto.MAX_LOG_BYTES))
    # the hub kept nothing of it, and the connection still works
    connection = master.hub.connections[liar.answer["builder_id"]]
    assert len(connection._log) == 0
    assert master.rows() == ([], [])
    assert await report(liar, package, "1.0", False, log=b"short",
                        reason="exit status 1") == proto.DONE
    await master.wait(lambda: master.rows()[0], "the failure recorded")
    liar.transport.loseConnection()
    other = "bar" if package == "foo" else "foo"
    await master.honest_build(tmp_path, other)


@pytest_twisted.ensureDeferred
async def test_a_stalled_transfer_times_out(master, events, tmp_path):
    liar = await master.connect(Staller(), label="pi-staller")
    package = (await master.work(liar))["package"]
    path = make_wheel(tmp_path, f"{package}-1.0-{ABI}-{ABI}-linux_x86_64.whl")
    assert await report(liar, package, "1.0", True,
                        files=[facts_of(path)]) == proto.SEND
    # the receiver gives up after its chunk timeout (1 s) and drops it
    await defer.DeferredList([liar.lost, task.deferLater(
        master.reactor, 10, lambda: None)], fireOnOneCallback=True)
    assert liar.lost.called
    assert liar.asked
    assert master.rows() == ([], [])
    assert master.tree() == {}
    assert logged(events, "pi-staller", "interrupted")
    # its build waits for it (it may resume); the other one is served
    assert ("cp311", package, "1.0") in master.hub._orphans
    other = "bar" if package == "foo" else "foo"
    await master.honest_build(tmp_path, other)


class FakeRunning:
    """A build in progress that the builder may be told to stop."""

    def __init__(self):
        self.stopped = []

    def stop(self, reason="stopped"):
        self.stopped.append(reason)
        return defer.succeed(None)

    def wait(self):
        return defer.Deferred()


@pytest_twisted.ensureDeferred
async def test_a_refused_resume_makes_the_builder_discard_its_job(
        master, events, reactor, tmp_path):
    asked = []
    next_action = master.hub.next_action

    def spy(connection):
        asked.append(connection.info.label)
        return next_action(connection)

    master.hub.next_action = spy
    # a paused hub tells it to sleep, not to build
    master.hub.pause()
    builder = BuilderService(reactor, master.endpoint(), SECRET,
                             tmp_path / "build", label="pi-restarted",
                             busy_timeout=60.0)
    running = FakeRunning()
    job = Job(package="foo", version="1.0", index_url="https://idx/",
              extra_index_urls=[], ticket="a" * 32)
    job.running = running
    builder.job = job
    builder.startService()
    try:
        await master.wait(lambda: "pi-restarted" in asked,
                          "the builder asking for work")
        assert builder.job is None
        assert running.stopped == ["the master does not expect it"]
        assert logged(events, "pi-restarted", "foo", "refused")
    finally:
        # stopService calls back the sleep's deferLater, whose timer would
        # then fire it again (AlreadyCalledError): let the cancellation of
        # the main loop end the sleep instead
        builder._wake = defer.Deferred()
        await builder.stopService()
