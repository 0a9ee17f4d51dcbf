"""The builder hub's side of every exchange, over in-memory AMP with a fake
clock: hello and authentication, work, pings, controls, results, timeouts
and reconnections."""

import hashlib
import queue
import threading
from datetime import datetime, timezone
from pathlib import Path

import psycopg2
import pytest
from twisted.internet import defer, task
from twisted.protocols import amp
from twisted.python.threadpool import ThreadPool
from twisted.test import iosim

from piwtwist import __version__, failures
from piwtwist.master import builder_hub
from piwtwist.db.records import QueueEntry
from piwtwist.master.build_queue import BuildQueue
from piwtwist.master.builder_hub import BuilderHub, build_identity
from piwtwist.protocol import builder as proto
from piwtwist.protocol.transfer import FetchChunks
from piwtwist.transfer.receiver import TransferFailed, publish_staged_file

SECRET = b"s" * 32
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
STATS = dict(timestamp=0.0, disk_total=100, disk_free=50, mem_total=100,
             mem_free=50, load_average=0.5, cpu_temperature=None)


class FakeDatabase:
    def __init__(self, entries=()):
        self.entries = list(entries)
        self.logged = []

    async def get_build_queue(self, limit, exclude=()):
        excluded = set(exclude)
        return [e for e in self.entries
                if (e.abi_tag, e.package, e.version) not in excluded]

    async def log_build(self, build):
        self.logged.append(build)
        self.entries = [e for e in self.entries
                        if (e.package, e.version) != (build.package,
                                                      build.version)]
        return len(self.logged)


class FakeReceiver:
    def __init__(self, root, fail=None):
        self.root = Path(root)
        self.fail = fail
        self.received = []
        self.abandoned = False

    async def receive(self, call_remote, package, filename, size, sha256,
                      publish=True):
        if self.fail:
            raise TransferFailed(self.fail)
        assert not publish, "the hub publishes only after recording"
        self.received.append((package, filename, size, sha256))
        path = self.staged_path(filename, sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"wheel")
        return path

    def staged_path(self, filename, sha256):
        return self.root / ".incoming" / "verified" / sha256 / filename

    async def publish_staged(self, package, filename, size, sha256,
                             aliases=(), replace=False):
        publish_staged_file(self.root, self.staged_path(filename, sha256),
                            package, filename, size, sha256, aliases,
                            durable=False)

    def abandon(self):
        self.abandoned = True


def entry(package, version="1.0", abi="cp311"):
    return QueueEntry(abi_tag=abi, package=package, version=version,
                      released=T0)


class Harness:
    """A hub with a fake database and receiver, and builders to connect."""

    def __init__(self, tmp_path, entries=(), fail=None, clock=None):
        self.clock = clock or task.Clock()
        self.db = FakeDatabase(entries)
        self.queue = BuildQueue(self.db, self.clock, size=10)
        self.receiver = FakeReceiver(tmp_path, fail)
        self.hub = BuilderHub(self.db, self.queue, self.receiver, self.clock,
                              SECRET, tmp_path, index_url="https://idx/",
                              idle_delay=7.0)
        self.queue.startService()
        self.hub.startService()
        self.builds = []
        self.hub.build_listeners.append(self.builds.append)

    def connect(self):
        client_received = []
        fetches = self.fetches = []

        class BuilderEnd(amp.AMP):
            @proto.Done.responder
            def done(self, package, version):
                client_received.append(("done", package, version))
                return {}

            @proto.Bye.responder
            def bye(self, reason):
                client_received.append(("bye", reason))
                return {}

            @FetchChunks.responder
            def fetch_chunks(self, filename, offset, length):
                # answered when the test says so
                client_received.append(("fetch", filename, offset))
                answer = defer.Deferred()
                fetches.append(answer)
                return answer

        factory = self.hub.factory()
        client, server, pump = iosim.connectedServerAndClient(
            lambda: factory.buildProtocol(None), BuilderEnd)
        return Builder(self, client, server, pump, client_received)


class Builder:
    def __init__(self, harness, client, server, pump, received):
        self.harness = harness
        self.client = client
        self.server = server
        self.pump = pump
        self.received = received

    @property
    def lost(self):
        transport = self.client.transport
        return transport is None or transport.disconnected

    def call(self, command, **kwargs):
        results = []
        self.client.callRemote(command, **kwargs).addBoth(results.append)
        self.pump.flush()
        self.pump.flush()
        (result,) = results
        if hasattr(result, "raiseException"):
            result.raiseException()
        return result

    def hello(self, version=__version__, abi="cp311", **extra):
        nonce = b"n" * 32
        fields = dict(version=version, nonce=nonce, build_timeout=3600.0,
                      busy_timeout=60.0, py_tag="cp311", abi_tag=abi,
                      platform_tag="linux_armv7l", label="pi-1",
                      os_name="Debian", os_version="12", board_revision="",
                      board_serial="")
        fields.update(extra)
        return self.call(proto.Hello, **fields)

    def login(self, **extra):
        reply = self.hello(**extra)
        assert reply["proof"] == proto.master_proof(SECRET, b"n" * 32)
        return self.call(proto.Authenticate, proof=proto.builder_proof(
            SECRET, reply["challenge"]))

    def idle(self):
        return self.call(proto.Idle, **STATS)

    def busy(self):
        return self.call(proto.Busy, **STATS)["action"]

    def report(self, package, version, status, files=(), log=b"the log",
               reason="", **extra):
        for offset in range(0, len(log), 4):
            self.call(proto.BuildLog, offset=offset,
                      data=log[offset:offset + 4])
        return self.call(
            proto.Built, package=package, version=version, status=status,
            duration=12.5, reason=reason, log_size=len(log),
            log_sha256=hashlib.sha256(log).hexdigest(),
            files=list(files), **extra)["action"]


def wheel_facts(package, version="1.0", platform="linux_armv7l", deps=()):
    return dict(filename=f"{package}-{version}-cp311-cp311-{platform}.whl",
                filesize=5, filehash="ab" * 32, package_tag=package,
                package_version_tag=version, py_version_tag="cp311",
                abi_tag="cp311", platform_tag=platform,
                requires_python=">=3.9", dependencies=list(deps))


@pytest.fixture
def harness(tmp_path):
    return Harness(tmp_path, [entry("foo"), entry("bar")])


def test_refuses_another_version_naming_both(harness):
    builder = harness.connect()
    with pytest.raises(proto.VersionMismatch) as caught:
        builder.hello(version="0.0.1")
    assert "0.0.1" in str(caught.value) and __version__ in str(caught.value)


def test_nothing_before_authentication(harness):
    builder = harness.connect()
    with pytest.raises(proto.NotAuthenticated):
        builder.idle()
    builder.hello()
    with pytest.raises(proto.NotAuthenticated):
        builder.busy()


def test_wrong_secret_is_refused_and_dropped(harness):
    builder = harness.connect()
    reply = builder.hello()
    with pytest.raises(proto.AuthenticationFailed) as caught:
        builder.call(proto.Authenticate, proof=proto.builder_proof(
            b"w" * 32, reply["challenge"]))
    harness.clock.advance(0)
    builder.pump.flush()
    assert builder.lost


def test_the_secret_never_crosses_the_wire(harness):
    builder = harness.connect()
    builder.login()
    assert SECRET not in builder.client.transport.stream
    assert SECRET not in builder.server.transport.stream


def test_second_hello_is_a_protocol_violation(harness):
    builder = harness.connect()
    builder.login()
    with pytest.raises(proto.ProtocolViolation) as caught:
        builder.hello()


def test_idle_builders_get_different_work(harness):
    one, two, three = harness.connect(), harness.connect(), harness.connect()
    for builder in (one, two, three):
        builder.login()
    first, second, third = one.idle(), two.idle(), three.idle()
    assert {first["package"], second["package"]} == {"foo", "bar"}
    assert first["action"] == second["action"] == proto.BUILD
    assert first["index_url"] == "https://idx/"
    assert (third["action"], third["delay"]) == (proto.SLEEP, 7.0)


def test_builders_only_get_their_own_abi(tmp_path):
    harness = Harness(tmp_path, [entry("foo", abi="cp39")])
    builder = harness.connect()
    builder.login(abi="cp311")
    assert builder.idle()["action"] == proto.SLEEP


def test_failed_build_is_recorded_with_its_whole_log(harness):
    builder = harness.connect()
    builder.login()
    work = builder.idle()
    log = b"collecting...\nerror: \xff boom\n" * 3
    assert builder.report(work["package"], "1.0", False, log=log,
                          reason="exit status 1") == proto.DONE
    (build,) = harness.db.logged
    assert (build.package, build.status, build.reason) == (
        work["package"], False, "exit status 1")
    assert build.output == log.decode("utf-8", errors="replace")
    assert build.duration.total_seconds() == 12.5
    assert build.builder_label == "pi-1"
    assert harness.queue.held() == {}
    builder.pump.flush()
    assert ("done", work["package"], "1.0") in builder.received


def test_successful_build_fetches_files_and_records_aliases(harness):
    builder = harness.connect()
    builder.login()
    work = builder.idle()
    package = work["package"]
    facts = wheel_facts(package, deps=["apt:libc6", "pip:six", "bogus"])
    assert builder.report(package, "1.0", True, files=[facts]) == proto.SEND
    builder.pump.flush()
    assert harness.receiver.received == [(package, facts["filename"], 5,
                                          "ab" * 32)]
    (build,) = harness.db.logged
    assert build.status is True
    names = sorted(f.filename for f in build.files)
    assert names == [f"{package}-1.0-cp311-cp311-linux_armv6l.whl",
                     f"{package}-1.0-cp311-cp311-linux_armv7l.whl"]
    alias = Path(harness.hub.output_path) / "simple" / package / names[0]
    assert alias.read_bytes() == b"wheel"
    assert alias.stat().st_nlink == 2
    assert [(d.tool, d.dependency) for d in
            build.dependencies[facts["filename"]]] == [("apt", "libc6"),
                                                       ("pip", "six")]
    assert ("done", package, "1.0") in builder.received
    assert harness.builds == [build]
    assert builder.server.info.status == "idle"


def test_wheel_of_another_package_fails_the_build(harness):
    builder = harness.connect()
    builder.login()
    work = builder.idle()
    builder.report(work["package"], "1.0", True,
                   files=[wheel_facts("evil")])
    builder.pump.flush()
    (build,) = harness.db.logged
    assert build.status is False
    assert "not a wheel of" in build.reason
    assert harness.receiver.received == []


def test_transfer_that_never_verifies_fails_the_build(tmp_path):
    harness = Harness(tmp_path, [entry("foo")],
                      fail="sha256 mismatch after 3 tries")
    builder = harness.connect()
    builder.login()
    builder.idle()
    builder.report("foo", "1.0", True, files=[wheel_facts("foo")])
    builder.pump.flush()
    (build,) = harness.db.logged
    assert build.status is False
    assert "failed to arrive intact" in build.reason
    assert "sha256 mismatch" in build.reason


def test_log_must_arrive_whole_and_in_order(harness):
    builder = harness.connect()
    builder.login()
    work = builder.idle()
    builder.call(proto.BuildLog, offset=0, data=b"abc")
    with pytest.raises(proto.ProtocolViolation, match="expected 3"):
        builder.call(proto.BuildLog, offset=10, data=b"def")
    with pytest.raises(proto.ProtocolViolation) as caught:
        builder.call(proto.Built, package=work["package"], version="1.0",
                     status=False, duration=1.0, reason="", log_size=99,
                     log_sha256="0" * 64, files=[])
    assert "whole" in str(caught.value)
    assert harness.db.logged == []


def test_result_for_something_else_is_refused(harness):
    builder = harness.connect()
    builder.login()
    builder.idle()
    with pytest.raises(proto.ProtocolViolation) as caught:
        builder.report("other", "9.9", False)
    assert harness.db.logged == []


def test_busy_continue_then_skip_releases_without_recording(harness):
    builder = harness.connect()
    builder.login()
    work = builder.idle()
    assert builder.busy() == proto.CONTINUE
    harness.hub.skip(builder.server.info.builder_id)
    assert builder.busy() == proto.STOP
    assert builder.report(work["package"], "1.0", False,
                          reason="stopped") == proto.DONE
    assert harness.db.logged == []
    assert harness.queue.held() == {}
    assert builder.busy() == proto.STOP  # nothing in hand any more


def test_sleeping_builder_gets_no_work_until_woken(harness):
    builder = harness.connect()
    builder.login()
    harness.hub.sleep(builder.server.info.builder_id)
    assert builder.idle()["action"] == proto.SLEEP
    assert harness.queue.held() == {}
    harness.hub.wake()
    assert builder.idle()["action"] == proto.BUILD


def test_kill_now_stops_the_build_then_the_builder(harness):
    builder = harness.connect()
    builder.login()
    work = builder.idle()
    harness.hub.kill_now()
    assert builder.busy() == proto.STOP
    builder.report(work["package"], "1.0", False, reason="stopped")
    assert builder.idle()["action"] == proto.DIE
    assert harness.db.logged == []
    assert harness.queue.held() == {}


def test_kill_lets_the_build_finish_then_stops_the_builder(harness):
    builder = harness.connect()
    builder.login()
    work = builder.idle()
    harness.hub.kill()
    assert builder.busy() == proto.CONTINUE
    builder.report(work["package"], "1.0", False, reason="exit status 1")
    harness.clock.advance(0)
    assert builder.idle()["action"] == proto.DIE
    assert [b.package for b in harness.db.logged] == [work["package"]]


def test_unknown_builder_control_is_an_error(harness):
    with pytest.raises(KeyError):
        harness.hub.kill(999)


def test_deleted_package_stops_its_build(harness):
    builder = harness.connect()
    builder.login()
    work = builder.idle()
    harness.queue.drop(work["package"])
    assert builder.busy() == proto.STOP


def test_quiet_builder_is_dropped_and_its_work_requeued(harness):
    builder = harness.connect()
    builder.login()
    work = builder.idle()
    harness.clock.advance(59)
    assert builder.busy() == proto.CONTINUE  # a ping resets the watchdog
    harness.clock.advance(61)
    builder.pump.flush()
    assert builder.lost
    key = ("cp311", work["package"], "1.0")
    assert key in harness.queue.held()  # it may yet come back
    harness.clock.advance(60)
    assert key not in harness.queue.held()
    harness.clock.advance(1)  # the refresh this asked for
    other = harness.connect()
    other.login()
    assert other.idle()["package"] in ("foo", "bar")


def test_builder_that_never_says_hello_is_dropped(harness):
    builder = harness.connect()
    harness.clock.advance(31)
    builder.pump.flush()
    assert builder.lost


def test_reconnecting_builder_keeps_its_build(harness):
    builder = harness.connect()
    builder.login()
    work = builder.idle()
    builder.client.transport.loseConnection()
    builder.pump.flush()
    again = harness.connect()
    answer = again.login(current_package=work["package"],
                         current_version="1.0", current_ticket=work["ticket"])
    assert answer["resumed"] is True
    for _ in range(3):  # well past the orphan timer, which was cancelled
        harness.clock.advance(50)
        assert again.busy() == proto.CONTINUE
    assert ("cp311", work["package"], "1.0") in harness.queue.held()
    assert again.report(work["package"], "1.0", False) == proto.DONE
    assert [b.package for b in harness.db.logged] == [work["package"]]


def test_master_tells_builders_when_it_stops(harness):
    builder = harness.connect()
    builder.login()
    harness.hub.stopService()
    builder.pump.flush()
    assert builder.received[-1] == ("bye", "the master is shutting down")
    assert harness.receiver.abandoned


def test_a_large_result_fits_in_one_amp_box():
    files = [wheel_facts(f"package{n}", deps=[f"apt:libsomething{n}-{d}"
                                              for d in range(40)])
             for n in range(20)]
    box = proto.Built.makeArguments(
        dict(package="p", version="1", status=True, duration=1.0,
             reason="", log_size=0, log_sha256="0" * 64, files=files), None)
    assert len(box.serialize()) > 20000


class GoneDatabase(FakeDatabase):
    async def log_build(self, build):
        raise psycopg2.errors.ForeignKeyViolation("release deleted")


def test_build_of_a_release_deleted_meanwhile_is_discarded(tmp_path):
    harness = Harness(tmp_path, [entry("foo")])
    harness.hub.db = GoneDatabase()
    builder = harness.connect()
    builder.login()
    builder.idle()
    builder.report("foo", "1.0", True, files=[wheel_facts("foo")])
    builder.pump.flush()
    assert ("done", "foo", "1.0") in builder.received
    # nothing was ever published: wheels wait for their build's commit
    assert not (tmp_path / "simple").exists()
    assert harness.queue.held() == {}
    assert harness.builds == []


class SlowRecordingDatabase(FakeDatabase):
    """log_build waits until the test lets it finish."""

    def __init__(self, entries=()):
        super().__init__(entries)
        self.pending = []

    def log_build(self, build):
        d = defer.Deferred()
        self.pending.append((d, build))
        return d

    def finish_all(self):
        for d, build in self.pending:
            self.logged.append(build)
            self.entries = [e for e in self.entries
                            if (e.package, e.version) != (build.package,
                                                          build.version)]
            d.callback(len(self.logged))
        self.pending = []


def test_a_failure_being_recorded_is_never_handed_out_again(tmp_path):
    harness = Harness(tmp_path, [entry("foo"), entry("bar")])
    harness.hub.db = SlowRecordingDatabase(harness.db.entries)
    harness.queue.db = harness.hub.db
    one, two = harness.connect(), harness.connect()
    one.login()
    two.login()
    first = one.idle()["package"]
    assert one.report(first, "1.0", False, reason="boom") == proto.DONE
    # it asks again at once, while the failure is still being written
    second = one.idle()
    assert second["package"] != first
    harness.clock.advance(5)  # refreshes run meanwhile
    assert two.idle()["action"] == proto.SLEEP
    harness.hub.db.finish_all()
    harness.clock.advance(5)
    assert two.idle()["action"] == proto.SLEEP
    assert [b.package for b in harness.hub.db.logged] == [first]


class SlowSender(FakeReceiver):
    """Fetches every wheel in *pieces* pieces, each answered only when the
    test pumps the connection."""

    def __init__(self, root, pieces):
        super().__init__(root)
        self.pieces = pieces

    async def receive(self, call_remote, package, filename, size, sha256,
                      **options):
        for piece in range(self.pieces):
            await call_remote(FetchChunks, filename=filename, offset=piece,
                              length=1)
        return await super().receive(call_remote, package, filename, size,
                                     sha256, **options)


def test_a_builder_sending_slowly_is_not_taken_for_a_silent_one(tmp_path):
    harness = Harness(tmp_path, [entry("foo")])
    harness.hub.receiver = SlowSender(tmp_path, pieces=6)
    builder = harness.connect()
    builder.login()  # its busy timeout is 60 s
    builder.idle()
    assert builder.report("foo", "1.0", True,
                          files=[wheel_facts("foo")]) == proto.SEND
    for _ in range(6):
        # each piece takes 50 s to come: 300 s in all, no ping meanwhile
        harness.clock.advance(50)
        assert not builder.lost
        harness.fetches.pop(0).callback({})
        builder.pump.flush()
    assert len([r for r in builder.received if r[0] == "fetch"]) == 6
    assert ("done", "foo", "1.0") in builder.received
    assert [b.package for b in harness.db.logged] == ["foo"]
    # once it has gone quiet for real, it is dropped as before
    harness.clock.advance(61)
    builder.pump.flush()
    assert builder.lost


def test_a_builder_back_while_its_result_is_recorded_gets_done(tmp_path):
    harness = Harness(tmp_path, [entry("foo")])
    harness.hub.db = SlowRecordingDatabase(harness.db.entries)
    harness.queue.db = harness.hub.db
    builder = harness.connect()
    builder.login()
    work = builder.idle()
    wheel = wheel_facts("foo")
    report = dict(files=[wheel], build_token="t" * 32)
    assert builder.report("foo", "1.0", True, **report) == proto.SEND
    assert len(harness.hub.db.pending) == 1  # fetched, being recorded
    builder.client.transport.loseConnection()
    builder.pump.flush()
    again = harness.connect()
    assert again.login(current_package="foo", current_version="1.0",
                       current_ticket=work["ticket"])["resumed"] is True
    # it reports the same result again and waits for Done, silently
    assert again.report("foo", "1.0", True, **report) == proto.SEND
    harness.clock.advance(120)  # twice its busy timeout: not dropped
    again.pump.flush()
    assert not again.lost
    harness.hub.db.finish_all()
    again.pump.flush()
    assert ("done", "foo", "1.0") in again.received
    # recorded once, fetched once
    assert [b.package for b in harness.hub.db.logged] == ["foo"]
    assert len(harness.receiver.received) == 1
    assert harness.hub.connections[2].info.entry is None
    assert again.idle()["action"] == proto.SLEEP
    assert harness.queue.held() == {}


def test_a_result_carries_its_identity_to_the_database(tmp_path):
    harness = Harness(tmp_path, [entry("foo"), entry("bar")])
    builder = harness.connect()
    builder.login()
    first = builder.idle()
    builder.report(first["package"], "1.0", False, build_token="x" * 32)
    second = builder.idle()
    builder.report(second["package"], "1.0", False)
    tokens = [b.token for b in harness.db.logged]
    # bound to the build, so one build's token never stands for another's
    assert tokens[0] == build_identity(entry(first["package"]), "x" * 32)
    # a builder without a token of its own is known by its ticket
    assert tokens[1] == build_identity(entry(second["package"]),
                                       second["ticket"])
    assert len(set(tokens)) == 2 and None not in tokens


class ThreadedClock(task.Clock):
    """A fake clock with a real thread pool: what a thread hands back to
    the reactor waits in ``from_threads`` until the test runs it."""

    def __init__(self):
        super().__init__()
        self.pool = ThreadPool(1, 1)
        self.pool.start()
        self.from_threads = queue.Queue()

    def getThreadPool(self):
        return self.pool

    def callFromThread(self, function, *args, **kwargs):
        self.from_threads.put((function, args, kwargs))

    def run_from_threads(self):
        function, args, kwargs = self.from_threads.get(timeout=10)
        function(*args, **kwargs)


def test_the_build_log_is_checked_decoded_and_classified_off_the_reactor(
        tmp_path, monkeypatch):
    """Hashing, decoding (up to MAX_LOG_BYTES) and classifying a log run
    in the thread pool; the reactor only waits for the answer."""
    threads = {}

    def watch(module, name):
        original = getattr(module, name)

        def watched(*args):
            threads[name] = threading.current_thread()
            return original(*args)
        monkeypatch.setattr(module, name, watched)

    watch(builder_hub, "checked_log")
    watch(failures, "classify")
    clock = ThreadedClock()
    try:
        harness = Harness(tmp_path, [entry("foo")], clock=clock)
        builder = harness.connect()
        builder.login()
        work = builder.idle()
        log = b"gcc -c foo.c\nfoo.c:1:10: fatal error: Python.h: No " \
              b"such file or directory\n" + b"\xff" * 1000
        builder.call(proto.BuildLog, offset=0, data=log)
        answers = []
        builder.client.callRemote(
            proto.Built, package=work["package"], version="1.0",
            status=False, duration=3.0, reason="", log_size=len(log),
            log_sha256=hashlib.sha256(log).hexdigest(),
            files=[]).addBoth(answers.append)
        builder.pump.flush()
        assert answers == []  # the reactor is free while the thread works
        clock.run_from_threads()  # the log checked and decoded
        builder.pump.flush()
        builder.pump.flush()
        assert answers == [{"action": proto.DONE}]
        clock.run_from_threads()  # classified
        (build,) = harness.db.logged
        assert build.output.startswith("gcc -c foo.c") and \
            build.output.endswith("\ufffd" * 1000)
        assert build.failure_class != "unknown"
        assert threads["checked_log"] is not threading.main_thread()
        assert threads["classify"] is not threading.main_thread()
    finally:
        clock.pool.stop()
