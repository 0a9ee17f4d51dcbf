"""The wheel transfer: FetchChunk, FileSender and FileReceiver.

Most tests run both ends in memory (``iosim``) with a thread pool and a
reactor that run "threaded" work at once, so a whole transfer happens inside
``pump`` calls; two run over real loopback TCP with the real reactor.
"""

import hashlib
import json
import os
import random
import shutil
import stat

import pytest
import pytest_twisted
from twisted.internet import endpoints, protocol
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    maybeDeferred,
    succeed,
)
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient

from piwtwist.protocol.transfer import (
    MAX_CHUNK_SIZE,
    BadRange,
    FetchChunk,
    FileNotOffered,
)
from piwtwist.transfer.receiver import (
    FileReceiver,
    _chunk_fetcher,
    ReceivedRanges,
    TransferFailed,
    TransferInterrupted,
    TransferRefused,
)
from piwtwist.transfer.sender import (
    FileSender,
    FileSenderLocator,
    FileSenderResponders,
)

PACKAGE = "Foo.Bar"
WHEEL = "foo_bar-1.0-cp311-cp311-linux_armv7l.whl"
CHUNK = 1000


# -- helpers -----------------------------------------------------------------

class SyncThreadPool:
    """Runs "threaded" work at once, in the caller's thread."""

    def callInThreadWithCallback(self, on_result, function, *args, **kw):
        try:
            result = function(*args, **kw)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class SyncReactor(MemoryReactorClock):
    """A fake clock whose thread hops happen at once."""

    def callFromThread(self, function, *args, **kw):
        function(*args, **kw)


class SenderProtocol(FileSenderResponders, amp.AMP):
    """How a builder's protocol mixes the responders in."""

    def __init__(self, file_sender):
        super().__init__()
        self.file_sender = file_sender


class Ping(amp.Command):
    commandName = b"test-ping"
    response = [(b"pong", amp.Unicode())]


class DelegatingProtocol(amp.AMP):
    """How a protocol that knows nothing of transfers delegates to them."""

    def __init__(self, file_sender):
        super().__init__()
        self.transfer_locator = FileSenderLocator(file_sender)

    @Ping.responder
    def ping(self):
        return {"pong": "pong"}

    def locateResponder(self, name):
        return (super().locateResponder(name)
                or self.transfer_locator.locateResponder(name))


class GreedySender(amp.AMP):
    """A broken sender that returns one byte too many."""

    def __init__(self, data):
        super().__init__()
        self.data = data

    @FetchChunk.responder
    def fetch_chunk(self, filename, offset, length):
        return {"data": self.data[offset:offset + length + 1]}


def payload(size, seed=1):
    return random.Random(seed).randbytes(size)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def wheel(tmp_path):
    """A 10,500-byte file to send: 11 chunks of 1,000 bytes, the last one
    short."""
    data = payload(10_500)
    path = tmp_path / "build" / WHEEL
    path.parent.mkdir()
    path.write_bytes(data)
    return path, data


@pytest.fixture
def output(tmp_path):
    return tmp_path / "output"


@pytest.fixture
def fake_reactor():
    reactor = SyncReactor()
    yield reactor
    assert not reactor.getDelayedCalls()


def make_receiver(output, reactor, **kw):
    kw.setdefault("chunk_size", CHUNK)
    kw.setdefault("durable", False)
    return FileReceiver(output, reactor, threadpool=SyncThreadPool(), **kw)


def connect(server_protocol):
    """An in-memory connection: (master's AMP, sender's protocol, pump)."""
    return connectedServerAndClient(lambda: server_protocol, amp.AMP)


class Counting:
    """Wraps call_remote: counts requests, outstanding ones and bytes."""

    def __init__(self, call_remote):
        self._call_remote = call_remote
        self.requests = []
        self.outstanding = 0
        self.most_outstanding = 0
        self.bytes = 0

    def __call__(self, command, **kw):
        self.requests.append((kw["offset"], kw["length"]))
        self.outstanding += 1
        self.most_outstanding = max(self.most_outstanding, self.outstanding)
        result = self._call_remote(command, **kw)
        result.addBoth(self._answered)
        return result

    def _answered(self, result):
        self.outstanding -= 1
        if not isinstance(result, Failure):
            self.bytes += len(result["data"])
        return result


def start(receiver, call_remote, data, filename=WHEEL, package=PACKAGE,
          digest=None):
    return Deferred.fromCoroutine(receiver.receive(
        call_remote, package, filename, len(data), digest or sha256(data)))


def run(pump, result, limit=10_000):
    """Pump until *result* has fired; return its result or raise."""
    for _ in range(limit):
        if result.called:
            break
        if not pump.pump():
            break
    assert result.called, "the transfer did not finish"
    outcome = []
    result.addBoth(outcome.append)
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def published(output):
    simple = output / "simple"
    return sorted(p.relative_to(output) for p in simple.rglob("*")) \
        if simple.exists() else []


def incoming(output):
    path = output / ".incoming"
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


# -- the protocol ------------------------------------------------------------

def test_largest_answer_box_fits_amp(tmp_path):
    """A real FetchChunk answer with the largest chunk, serialised."""
    data = payload(MAX_CHUNK_SIZE * 2)
    path = tmp_path / WHEEL
    path.write_bytes(data)
    sender = FileSender({WHEEL: path})
    responder = FileSenderLocator(sender).locateResponder(b"fetch-chunk")
    request = amp.AmpBox(_ask=b"ffffffff", _command=b"fetch-chunk",
                         filename=WHEEL.encode(), offset=b"60000",
                         length=str(MAX_CHUNK_SIZE).encode())
    answers = []
    maybeDeferred(responder, request).addCallback(answers.append)
    sender.clear()
    (answer,) = answers
    answer[b"_answer"] = b"ffffffff"
    wire = answer.serialize()
    assert answer[b"data"] == data[60000:60000 + MAX_CHUNK_SIZE]
    assert len(wire) < 65_535
    # and one byte more than a value may hold does not serialise
    answer[b"data"] = b"x" * 65_536
    with pytest.raises(amp.TooLong):
        answer.serialize()


def _answer(responder, box):
    """What a responder answers: an AmpBox, or (error code, description)."""
    answers = []
    maybeDeferred(responder, box).addCallbacks(
        answers.append, lambda failure: answers.append(
            (failure.value.errorCode, failure.value.description)))
    return answers[0]


@pytest.mark.parametrize("filename, offset, length", [
    (WHEEL, 0, 1000),
    (WHEEL, 10_000, 1000),
    (WHEEL, 10_500, 1000),
    (WHEEL, 10_501, 1000),
    (WHEEL, 0, MAX_CHUNK_SIZE + 1),
    ("other-1.0-py3-none-any.whl", 0, 10),
    ("\N{SNOWMAN}", 0, 10),
])
def test_fast_responder_answers_like_the_command(wheel, filename, offset,
                                                 length):
    """The box-level responder is the typed one, only cheaper."""
    path, data = wheel
    locator = FileSenderLocator(FileSender({WHEEL: path}))
    box = FetchChunk.makeArguments(
        {"filename": filename, "offset": offset, "length": length}, None)
    fast = _answer(locator.locateResponder(b"fetch-chunk"), box)
    typed = _answer(amp.CommandLocator.locateResponder(
        locator, b"fetch-chunk"), box)
    assert fast == typed
    if isinstance(fast, tuple):
        assert fast[0] in FetchChunk.errors.values()
    else:
        assert fast == {b"data": data[offset:offset + length]}


@pytest.mark.parametrize("filename, offset, length", [
    (WHEEL, 0, 1000),
    (WHEEL, 10_000, 1000),
    (WHEEL, 10_501, 1000),
    ("other-1.0-py3-none-any.whl", 0, 10),
])
def test_fast_requests_answer_like_call_remote(wheel, filename, offset,
                                               length):
    """The receiver's raw-box requests, used with AMP's own callRemote,
    give what callRemote(FetchChunk, ...) gives, errors included."""
    path, data = wheel
    client, server, pump = connect(SenderProtocol(FileSender({WHEEL: path})))
    outcomes = []
    for call_remote in (client.callRemote, lambda *a, **kw:
                        client.callRemote(*a, **kw)):
        fetch_chunk = _chunk_fetcher(call_remote)
        result = fetch_chunk(filename, offset, length)
        result.addBoth(outcomes.append)
        pump.flush()
    fast, generic = outcomes
    if isinstance(fast, Failure):
        assert type(fast.value) is type(generic.value)
        assert type(fast.value) in (FileNotOffered, BadRange)
        assert str(fast.value) == str(generic.value)
    else:
        assert fast == generic == data[offset:offset + length]


def test_sender_ranges(wheel):
    path, data = wheel
    sender = FileSender({WHEEL: path})
    assert sender.offered == {WHEEL: path}
    assert sender.read_chunk(WHEEL, 0, 10) == data[:10]
    assert sender.read_chunk(WHEEL, 10_000, 1000) == data[10_000:]
    assert sender.read_chunk(WHEEL, len(data), 1000) == b""
    for offset, length in [(-1, 10), (len(data) + 1, 10), (0, 0),
                           (0, MAX_CHUNK_SIZE + 1)]:
        with pytest.raises(BadRange):
            sender.read_chunk(WHEEL, offset, length)
    with pytest.raises(FileNotOffered):
        sender.read_chunk("other-1.0-py3-none-any.whl", 0, 10)
    sender.withdraw(WHEEL)
    with pytest.raises(FileNotOffered):
        sender.read_chunk(WHEEL, 0, 10)


def test_sender_serves_what_was_offered(wheel, tmp_path):
    """A file replaced after it was offered still serves the old bytes."""
    path, data = wheel
    sender = FileSender({WHEEL: path})
    path.unlink()
    path.write_bytes(b"something else")
    assert sender.read_chunk(WHEEL, 0, 20) == data[:20]
    sender.clear()
    assert sender.offered == {}


def test_fetch_unoffered_file(wheel):
    path, data = wheel
    client, server, pump = connect(SenderProtocol(FileSender({WHEEL: path})))
    answer = client.callRemote(FetchChunk, filename="other-1.0.whl",
                               offset=0, length=10)
    failure = []
    answer.addErrback(failure.append)
    pump.flush()
    failure[0].trap(FileNotOffered)
    assert "other-1.0.whl" in failure[0].getErrorMessage()


def test_fetch_bad_range_over_amp(wheel):
    path, data = wheel
    client, server, pump = connect(SenderProtocol(FileSender({WHEEL: path})))
    answer = client.callRemote(FetchChunk, filename=WHEEL,
                               offset=len(data) + 1, length=10)
    failure = []
    answer.addErrback(failure.append)
    pump.flush()
    failure[0].trap(BadRange)


def test_responders_by_delegation(wheel, output, fake_reactor):
    """Another protocol's commands and the transfer share one connection."""
    path, data = wheel
    client, server, pump = connect(DelegatingProtocol(FileSender(
        {WHEEL: path})))
    pong = client.callRemote(Ping)
    pump.flush()
    assert pong.result == {"pong": "pong"}
    receiver = make_receiver(output, fake_reactor)
    final = run(pump, start(receiver, client.callRemote, data))
    assert final.read_bytes() == data


# -- receiving ---------------------------------------------------------------

class WatchingSender(FileSender):
    """Checks that nothing is published while chunks are being read."""

    def __init__(self, files, output):
        super().__init__(files)
        self.output = output
        self.requests = []

    def read_chunk(self, filename, offset, length):
        assert published(self.output) == []
        self.requests.append((offset, length))
        return super().read_chunk(filename, offset, length)


@pytest.mark.parametrize("fast", [True, False])
def test_in_memory_transfer(wheel, output, fake_reactor, fast):
    path, data = wheel
    sender = WatchingSender({WHEEL: path}, output)
    client, server, pump = connect(SenderProtocol(sender))
    receiver = make_receiver(output, fake_reactor, durable=True)
    counting = Counting(client.callRemote)
    call_remote = client.callRemote if fast else counting
    final = run(pump, start(receiver, call_remote, data))
    assert final == output / "simple" / "foo-bar" / WHEEL
    assert final.read_bytes() == data
    assert stat.S_IMODE(final.stat().st_mode) == 0o644
    assert stat.S_IMODE(final.parent.stat().st_mode) == 0o755
    assert stat.S_IMODE(final.parent.parent.stat().st_mode) == 0o755
    assert len(sender.requests) == 11
    assert counting.bytes == (0 if fast else len(data))
    assert incoming(output) == []
    assert published(output) == [final.parent.relative_to(output),
                                 final.relative_to(output)]


@pytest_twisted.ensureDeferred
async def test_loopback_tcp_transfer(tmp_path, reactor):
    data = payload(3 * MAX_CHUNK_SIZE + 123, seed=2)
    path = tmp_path / WHEEL
    path.write_bytes(data)
    sender = FileSender({WHEEL: path})
    port = await endpoints.TCP4ServerEndpoint(
        reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(lambda: SenderProtocol(sender)))
    try:
        client = await endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", port.getHost().port).connect(
            protocol.Factory.forProtocol(amp.AMP))
        receiver = FileReceiver(tmp_path / "output", reactor, window=2)
        counting = Counting(client.callRemote)
        final = await receiver.receive(counting, PACKAGE, WHEEL, len(data),
                                       sha256(data).upper())
        client.transport.loseConnection()
    finally:
        await port.stopListening()
        sender.clear()
    assert final.read_bytes() == data
    assert len(counting.requests) == 4
    assert counting.most_outstanding == 2
    assert incoming(tmp_path / "output") == []


def test_window_is_respected(wheel, output, fake_reactor):
    """Never more than *window* requests outstanding, and the window is
    used, refilled half a window at a time: answers are held back and
    released one at a time."""
    path, data = wheel
    sender = FileSender({WHEEL: path})
    held = []

    def call_remote(command, filename, offset, length):
        answer = Deferred()
        held.append((answer, offset, length))
        return answer

    counting = Counting(call_remote)
    receiver = make_receiver(output, fake_reactor, window=4)
    result = start(receiver, counting, data)
    sent = [len(counting.requests)]
    while held:
        assert len(held) == counting.outstanding <= 4
        answer, offset, length = held.pop(0)
        answer.callback({"data": sender.read_chunk(WHEEL, offset, length)})
        sent.append(len(counting.requests) - sum(sent))
    assert result.result.read_bytes() == data
    assert counting.most_outstanding == 4
    assert sent == [4, 0, 2, 0, 2, 0, 2, 0, 1, 0, 0, 0]
    assert [offset for offset, length in counting.requests] == \
        list(range(0, 11_000, 1000))


def test_write_buffer_pauses_fetching(wheel, output, fake_reactor):
    """While the disk is behind, no more is asked for."""
    path, data = wheel
    sender = FileSender({WHEEL: path})
    jobs = []

    class SlowPool:
        def callInThreadWithCallback(self, on_result, function, *args):
            jobs.append((on_result, function, args))

    def call_remote(command, filename, offset, length):
        return succeed({"data": sender.read_chunk(WHEEL, offset, length)})

    counting = Counting(call_remote)
    receiver = FileReceiver(output, fake_reactor, threadpool=SlowPool(),
                            chunk_size=CHUNK, window=8, write_buffer=2500,
                            durable=False)
    result = start(receiver, counting, data)
    requested = []
    while not result.called:
        requested.append(len(counting.requests))
        on_result, function, args = jobs.pop(0)
        on_result(True, function(*args))
    assert result.result.read_bytes() == data
    # every answer comes at once, so the window (8) never limits: 3 chunks
    # (3,000 >= 2,500 bytes) wait for the disk, and each written batch
    # lets as many more be fetched
    assert requested[:8] == [0, 3, 4, 6, 7, 9, 10, 11]


def _interrupt_after(client, count):
    """A call_remote that drops the connection after *count* requests."""
    counting = Counting(client.callRemote)

    def call_remote(command, **kw):
        if len(counting.requests) == count:
            client.transport.loseConnection()
        return counting(command, **kw)

    call_remote.counting = counting
    return call_remote


def _saved_ranges(output):
    with open(output / ".incoming" / (WHEEL + ".ranges")) as stream:
        return json.load(stream)


def test_resume_after_dropped_connection(wheel, output, fake_reactor):
    path, data = wheel
    sender = FileSender({WHEEL: path})
    receiver = make_receiver(output, fake_reactor, window=2)

    client, server, pump = connect(SenderProtocol(sender))
    call_remote = _interrupt_after(client, 5)
    with pytest.raises(TransferInterrupted, match="lost the connection"):
        run(pump, start(receiver, call_remote, data))
    assert published(output) == []
    assert incoming(output) == [WHEEL + ".part", WHEEL + ".ranges"]
    kept = ReceivedRanges(_saved_ranges(output)["ranges"]).total
    assert 0 < kept < len(data)

    client, server, pump = connect(SenderProtocol(sender))
    counting = Counting(client.callRemote)
    final = run(pump, start(receiver, counting, data))
    assert final.read_bytes() == data
    assert counting.bytes == len(data) - kept
    assert incoming(output) == []


def test_resume_after_master_restart(wheel, output, fake_reactor):
    """A new FileReceiver on the same directories picks up the pieces."""
    path, data = wheel
    sender = FileSender({WHEEL: path})
    client, server, pump = connect(SenderProtocol(sender))
    with pytest.raises(TransferInterrupted):
        run(pump, start(make_receiver(output, fake_reactor),
                        _interrupt_after(client, 3), data))
    kept = ReceivedRanges(_saved_ranges(output)["ranges"]).total

    client, server, pump = connect(SenderProtocol(sender))
    counting = Counting(client.callRemote)
    final = run(pump, start(make_receiver(output, fake_reactor), counting,
                            data))
    assert final.read_bytes() == data
    assert counting.bytes == len(data) - kept
    assert (counting.requests[0][0], counting.requests[-1][0]) == \
        (kept, 10_000)


def test_resume_after_crash(wheel, output, fake_reactor, tmp_path):
    """The ranges saved mid-transfer are all a crashed master leaves; the
    next master fetches only what they do not cover."""
    path, data = wheel
    sender = FileSender({WHEEL: path})
    client, server, pump = connect(SenderProtocol(sender))
    receiver = make_receiver(output, fake_reactor, checkpoint_bytes=3000,
                             window=1)
    snapshot = tmp_path / "snapshot"
    counting = Counting(client.callRemote)

    def call_remote(command, **kw):
        if len(counting.requests) == 7:
            # what the disk holds at this moment, as a crash would leave it
            shutil.copytree(output / ".incoming", snapshot)
        return counting(command, **kw)

    run(pump, start(receiver, call_remote, data))
    shutil.rmtree(output)
    output.mkdir()
    shutil.copytree(snapshot, output / ".incoming")
    saved = ReceivedRanges(_saved_ranges(output)["ranges"])
    assert saved.as_list() == [[0, 6000]]

    client, server, pump = connect(SenderProtocol(sender))
    counting = Counting(client.callRemote)
    final = run(pump, start(make_receiver(output, fake_reactor), counting,
                            data))
    assert final.read_bytes() == data
    assert counting.bytes == len(data) - 6000


def test_different_hash_starts_over(wheel, output, fake_reactor):
    path, data = wheel
    sender = FileSender({WHEEL: path})
    receiver = make_receiver(output, fake_reactor)
    client, server, pump = connect(SenderProtocol(sender))
    with pytest.raises(TransferInterrupted):
        run(pump, start(receiver, _interrupt_after(client, 4), data))

    # the builder rebuilt the wheel: same name, other content
    rebuilt = payload(len(data) - 700, seed=3)
    path.unlink()
    path.write_bytes(rebuilt)
    sender.offer(WHEEL, path)
    client, server, pump = connect(SenderProtocol(sender))
    counting = Counting(client.callRemote)
    final = run(pump, start(receiver, counting, rebuilt))
    assert final.read_bytes() == rebuilt
    assert counting.bytes == len(rebuilt)


def test_hash_mismatch_retried_then_failed(wheel, output, fake_reactor):
    path, data = wheel
    client, server, pump = connect(SenderProtocol(FileSender({WHEEL: path})))
    counting = Counting(client.callRemote)
    receiver = make_receiver(output, fake_reactor, attempts=3)
    claimed = sha256(b"what the builder said")
    with pytest.raises(TransferFailed) as failed:
        run(pump, start(receiver, counting, data, digest=claimed))
    message = str(failed.value)
    assert "after 3 attempts" in message
    assert f"expected {claimed}" in message
    assert f"got {sha256(data)}" in message
    assert counting.bytes == 3 * len(data)
    assert published(output) == []
    assert incoming(output) == []


@pytest.mark.parametrize("filename, reason", [
    ("../evil-1.0-py3-none-any.whl", "'/'"),
    ("..evil-1.0-py3-none-any.whl", "'..'"),
    ("a/b.whl", "'/'"),
    ("a\\foo_bar-1.0-py3-none-any.whl", "contains '\\\\'"),
    ("foo_bar-1.0-py3-none-any.whl\0", "contains '\\x00'"),
    (".foo_bar-1.0-py3-none-any.whl", "starts with '.'"),
    ("foo_bar-1.0-py3-none-any.whl ", "characters outside"),
    ("foo_bar-1.0-py3-none-any.whl\n", "characters outside"),
    ("foo_bar-1.0.tar.gz", "not a wheel"),
    ("foo_bar.whl", "not a wheel"),
    ("-1.0-py3-none-any.whl", "not a wheel"),
    ("other-1.0-py3-none-any.whl", "not of 'Foo.Bar'"),
    ("foo_bar-1.0-py3-none-" + "x" * 300 + ".whl", "longer than"),
])
def test_hostile_names_refused(filename, reason, output, fake_reactor):
    calls = []
    receiver = make_receiver(output, fake_reactor)
    result = Deferred.fromCoroutine(receiver.receive(
        lambda *a, **kw: calls.append(a), PACKAGE, filename, 10,
        sha256(b"")))
    failure = result.result
    result.addErrback(lambda f: None)
    assert failure.check(TransferRefused), failure
    assert reason in str(failure.value)
    assert calls == []
    assert not output.exists()


@pytest.mark.parametrize("size, digest, reason", [
    (2 * 1024 ** 3 + 1, "0" * 64, "more than the 2147483648 bytes allowed"),
    (0, "0" * 64, "not a positive integer"),
    (-5, "0" * 64, "not a positive integer"),
    (10, "0" * 63, "not 64 hex digits"),
    (10, "g" * 64, "not 64 hex digits"),
    (10, "0" * 64 + "\n", "not 64 hex digits"),
])
def test_bad_sizes_and_hashes_refused(size, digest, reason, output,
                                      fake_reactor):
    receiver = FileReceiver(output, fake_reactor)
    result = Deferred.fromCoroutine(receiver.receive(
        None, PACKAGE, WHEEL, size, digest))
    failure = result.result
    result.addErrback(lambda f: None)
    assert failure.check(TransferRefused)
    assert reason in str(failure.value)
    assert not output.exists()


def test_configured_maximum(output, fake_reactor):
    receiver = FileReceiver(output, fake_reactor, max_size=1000)
    with pytest.raises(TransferRefused, match="1001 bytes, more than the "
                                              "1000 bytes allowed"):
        receiver.check_request(PACKAGE, WHEEL, 1001, "0" * 64)


def test_sender_returning_too_much(wheel, output, fake_reactor):
    path, data = wheel
    client, server, pump = connect(GreedySender(data))
    receiver = make_receiver(output, fake_reactor)
    with pytest.raises(TransferFailed,
                       match="returned 1001 bytes at offset 0 .* when 1000 "
                             "were asked for"):
        run(pump, start(receiver, client.callRemote, data))
    assert published(output) == []
    assert incoming(output) == []


def test_sender_file_shorter_than_declared(wheel, output, fake_reactor):
    path, data = wheel
    client, server, pump = connect(SenderProtocol(FileSender({WHEEL: path})))
    receiver = make_receiver(output, fake_reactor)
    longer = data + b"more"
    with pytest.raises(TransferFailed, match="shorter than the declared "
                                             "10504 bytes"):
        run(pump, start(receiver, client.callRemote, longer))
    assert published(output) == [] and incoming(output) == []


def test_unoffered_file_fails_the_transfer(wheel, output, fake_reactor):
    path, data = wheel
    client, server, pump = connect(SenderProtocol(FileSender()))
    receiver = make_receiver(output, fake_reactor)
    with pytest.raises(TransferFailed, match="does not offer"):
        run(pump, start(receiver, client.callRemote, data))
    assert published(output) == [] and incoming(output) == []


def test_unanswered_request_times_out(wheel, output, fake_reactor):
    path, data = wheel
    receiver = make_receiver(output, fake_reactor, chunk_timeout=30)
    result = start(receiver, lambda command, **kw: Deferred(), data)
    # the watchdog looks every quarter of the timeout
    fake_reactor.pump([1] * 29)
    assert not result.called
    fake_reactor.pump([1] * 8)
    with pytest.raises(TransferInterrupted, match="did not answer within 30"):
        result.result.raiseException()
    result.addErrback(lambda f: None)
    assert incoming(output) == [WHEEL + ".part", WHEEL + ".ranges"]


def test_abandon(wheel, output, fake_reactor):
    """The master shuts down mid-transfer: nothing under simple/, the
    partial state kept, and the next master finishes the job."""
    path, data = wheel
    sender = FileSender({WHEEL: path})
    client, server, pump = connect(SenderProtocol(sender))
    receiver = make_receiver(output, fake_reactor, window=2)
    result = start(receiver, client.callRemote, data)
    pump.pump()
    pump.pump()
    stopped = receiver.abandon()
    assert stopped.called
    with pytest.raises(TransferInterrupted, match="shutting down"):
        run(pump, result)
    assert published(output) == []
    kept = ReceivedRanges(_saved_ranges(output)["ranges"]).total
    assert 0 < kept < len(data)
    later = start(receiver, client.callRemote, data)
    with pytest.raises(TransferInterrupted, match="shutting down"):
        run(pump, later)

    counting = Counting(client.callRemote)
    final = run(pump, start(make_receiver(output, fake_reactor), counting,
                            data))
    assert final.read_bytes() == data
    assert counting.bytes == len(data) - kept


def test_abandon_waits_for_transfers(wheel, output, fake_reactor):
    path, data = wheel
    receiver = make_receiver(output, fake_reactor)
    assert receiver.abandon().called  # nothing running
    receiver = make_receiver(output, fake_reactor)
    jobs = []

    class SlowPool:
        def callInThreadWithCallback(self, on_result, function, *args):
            jobs.append((on_result, function, args))

    receiver.threadpool = SlowPool()
    result = start(receiver, lambda command, **kw: Deferred(), data)
    on_result, function, args = jobs.pop()  # preparing the partial file
    on_result(True, function(*args))
    stopped = receiver.abandon()
    assert not stopped.called  # saving the ranges is still to do
    while jobs:
        on_result, function, args = jobs.pop()
        on_result(True, function(*args))
    assert stopped.called
    result.addErrback(lambda f: f.trap(TransferInterrupted))


def test_abandon_while_preparing(wheel, output, fake_reactor):
    path, data = wheel
    jobs = []

    class SlowPool:
        def callInThreadWithCallback(self, on_result, function, *args):
            jobs.append((on_result, function, args))

    calls = []
    receiver = FileReceiver(output, fake_reactor, threadpool=SlowPool())
    result = start(receiver, lambda *a, **kw: calls.append(a), data)
    stopped = receiver.abandon()
    while jobs:
        on_result, function, args = jobs.pop(0)
        on_result(True, function(*args))
    assert stopped.called
    with pytest.raises(TransferInterrupted, match="shutting down"):
        result.result.raiseException()
    result.addErrback(lambda f: None)
    assert calls == []


def test_cancel_keeps_partial_state(wheel, output, fake_reactor):
    path, data = wheel
    client, server, pump = connect(SenderProtocol(FileSender({WHEEL: path})))
    receiver = make_receiver(output, fake_reactor, window=2)
    result = start(receiver, client.callRemote, data)
    pump.pump()
    pump.pump()
    result.cancel()
    failure = result.result
    result.addErrback(lambda f: None)
    assert failure.check(CancelledError)
    assert published(output) == []
    assert incoming(output) == [WHEEL + ".part", WHEEL + ".ranges"]
    pump.flush()  # late answers are ignored


def test_connection_lost_error(wheel, output, fake_reactor):
    path, data = wheel

    def call_remote(command, **kw):
        from twisted.internet.defer import fail
        return fail(ConnectionLost("gone"))

    receiver = make_receiver(output, fake_reactor)
    result = start(receiver, call_remote, data)
    with pytest.raises(TransferInterrupted, match="after 0 of 10500 bytes"):
        result.result.raiseException()
    result.addErrback(lambda f: None)


def test_concurrent_receives_of_one_file(wheel, output, fake_reactor):
    """A second receive of the same file waits for the first."""
    path, data = wheel
    client, server, pump = connect(SenderProtocol(FileSender({WHEEL: path})))
    receiver = make_receiver(output, fake_reactor)
    first = start(receiver, client.callRemote, data)
    second = start(receiver, client.callRemote, data)
    assert run(pump, first).read_bytes() == data
    assert run(pump, second).read_bytes() == data
    assert receiver._locks == {}


def test_purge_stale(wheel, output, fake_reactor):
    incoming_path = output / ".incoming"
    incoming_path.mkdir(parents=True)
    old = [incoming_path / ("old-1.0-py3-none-any.whl" + suffix)
           for suffix in (".part", ".ranges")]
    new = incoming_path / "new-1.0-py3-none-any.whl.part"
    other = incoming_path / "README"
    for path in old + [new, other]:
        path.write_bytes(b"x")
    for path in old + [other]:
        os.utime(path, (1, 1))
    receiver = make_receiver(output, fake_reactor)
    deleted = Deferred.fromCoroutine(receiver.purge_stale(3600)).result
    assert sorted(deleted) == sorted(p.name for p in old)
    assert sorted(incoming(output)) == sorted([new.name, "README"])


def test_received_ranges():
    ranges = ReceivedRanges()
    ranges.add(10, 20)
    ranges.add(30, 40)
    assert ranges.missing(50) == [(0, 10), (20, 30), (40, 50)]
    ranges.add(20, 30)
    assert ranges.as_list() == [[10, 40]]
    ranges.add(0, 5)
    ranges.add(5, 10)
    ranges.add(45, 50)
    ranges.add(35, 46)
    assert ranges.as_list() == [[0, 50]]
    assert ranges.missing(50) == []
    assert ranges.total == 50
    assert ReceivedRanges([(5, 8), (1, 3), (2, 6)]).as_list() == [[1, 8]]
