"""The wheel transfer: FetchChunks, FileSender and FileReceiver.

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
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient

from piwtwist.protocol.transfer import (
    DATA_KEYS,
    DATA_NAMES,
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    MAX_FETCH_SIZE,
    BadRange,
    FetchChunks,
    FileNotOffered,
)
from piwtwist.transfer.receiver import (
    FileReceiver,
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
        self.transfer_locator = FileSenderLocator(file_sender, self)

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

    @FetchChunks.responder
    def fetch_chunks(self, filename, offset, length):
        return {"data0": self.data[offset:offset + length + 1]}


class GappySender(amp.AMP):
    """A broken sender that leaves out ``data1``."""

    def __init__(self, data):
        super().__init__()
        self.data = data

    @FetchChunks.responder
    def fetch_chunks(self, filename, offset, length):
        answer = as_answer(self.data[offset:offset + length])
        del answer["data1"]
        return answer


def as_answer(data):
    """*data* as a typed FetchChunks answer."""
    return {name: data[start:start + MAX_CHUNK_SIZE] for name, start in
            zip(DATA_NAMES, range(0, len(data), MAX_CHUNK_SIZE))}


def read(sender, filename, offset, length):
    """What *sender* answers, as one bytes object."""
    return b"".join(sender.read_chunks(filename, offset, length))


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
    kw.setdefault("fetch_size", CHUNK)
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
            self.bytes += answer_length(result)
        return result


def answer_length(answer):
    """How many bytes a FetchChunks answer holds."""
    return sum(len(value) for value in answer.values() if value is not None)


def held_answers():
    """A call_remote whose answers wait in a list: (Deferred, offset,
    length)."""
    held = []

    def call_remote(command, filename, offset, length):
        assert command is FetchChunks
        answer = Deferred()
        held.append((answer, offset, length))
        return answer

    call_remote.held = held
    return call_remote


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

@pytest.fixture
def big_wheel(tmp_path):
    """A file of a few requests' worth at full size, the last one short."""
    data = payload(3 * MAX_FETCH_SIZE + 2 * MAX_CHUNK_SIZE + 123, seed=4)
    path = tmp_path / "big" / WHEEL
    path.parent.mkdir()
    path.write_bytes(data)
    return path, data


def _values_on_the_wire(wire):
    """(key, value) pairs of one serialised box, read by hand."""
    pairs = []
    position = 0
    while True:
        key_length = int.from_bytes(wire[position:position + 2], "big")
        position += 2
        if not key_length:
            break
        key = wire[position:position + key_length]
        position += key_length
        value_length = int.from_bytes(wire[position:position + 2], "big")
        position += 2
        pairs.append((key, wire[position:position + value_length]))
        assert len(pairs[-1][1]) == value_length
        position += value_length
    assert position == len(wire)
    return pairs


@pytest.mark.parametrize("offset", [0, 7, MAX_FETCH_SIZE])
def test_largest_answer_box_fits_amp(big_wheel, offset):
    """A real FetchChunks answer of the largest size, as the responder
    gives it and AMP serialises it: every value within AMP's limit, the
    box parsed back by AMP holding the range in order."""
    path, data = big_wheel
    sender = FileSender({WHEEL: path})
    client, server, pump = connect(SenderProtocol(sender))
    sent = []
    write = server.transport.write
    server.transport.write = lambda wire: (sent.append(wire), write(wire))
    answer = client.callRemote(FetchChunks, filename=WHEEL, offset=offset,
                               length=MAX_FETCH_SIZE)
    pump.flush()
    sender.clear()
    (wire,) = sent
    pairs = _values_on_the_wire(wire)
    values = dict(pairs)
    assert set(values) == {b"_answer", *DATA_KEYS}
    assert len(pairs) == MAX_CHUNKS + 1
    for key, value in pairs:
        assert len(value) <= MAX_CHUNK_SIZE < amp.MAX_VALUE_LENGTH
    assert b"".join(values[key] for key in DATA_KEYS) == \
        data[offset:offset + MAX_FETCH_SIZE]
    (parsed,) = amp.parseString(wire)
    assert parsed == values
    # the typed answer too
    assert b"".join(answer.result[key.decode()] for key in DATA_KEYS) == \
        data[offset:offset + MAX_FETCH_SIZE]
    # and one byte more than a value may hold does not serialise
    box = amp.AmpBox(parsed)
    box[b"data0"] = b"x" * (amp.MAX_VALUE_LENGTH + 1)
    with pytest.raises(amp.TooLong):
        box.serialize()


def test_answer_declares_every_value():
    """The response lists every value an answer may hold, optional, so
    that AMP accepts a box with any number of them."""
    assert MAX_FETCH_SIZE == MAX_CHUNKS * MAX_CHUNK_SIZE
    assert [name for name, argument in FetchChunks.response] == \
        list(DATA_KEYS)
    assert all(argument.optional for name, argument in FetchChunks.response)
    assert MAX_CHUNK_SIZE < amp.MAX_VALUE_LENGTH


def _answer(responder, box):
    """What a responder answers: an AmpBox, or (error code, description)."""
    answers = []
    maybeDeferred(responder, box).addCallbacks(
        answers.append, lambda failure: answers.append(
            (failure.value.errorCode, failure.value.description)))
    return answers[0]


@pytest.mark.parametrize("offset, length, sizes", [
    (0, 1, [1]),
    (0, MAX_CHUNK_SIZE, [MAX_CHUNK_SIZE]),
    (0, MAX_CHUNK_SIZE + 1, [MAX_CHUNK_SIZE, 1]),
    (5, MAX_FETCH_SIZE, [MAX_CHUNK_SIZE] * MAX_CHUNKS),
    (3 * MAX_FETCH_SIZE, MAX_FETCH_SIZE,
     [MAX_CHUNK_SIZE, MAX_CHUNK_SIZE, 123]),
    (3 * MAX_FETCH_SIZE + 2 * MAX_CHUNK_SIZE, 1000, [123]),
    (3 * MAX_FETCH_SIZE + 2 * MAX_CHUNK_SIZE + 123, 1000, []),
])
def test_answer_values(big_wheel, offset, length, sizes):
    """An answer holds the range in values of MAX_CHUNK_SIZE, only the
    last one shorter, none past the end of the file."""
    path, data = big_wheel
    locator = FileSenderLocator(FileSender({WHEEL: path}))
    box = FetchChunks.makeArguments(
        {"filename": WHEEL, "offset": offset, "length": length}, None)
    answer = _answer(locator.locateResponder(b"fetch-chunks"), box)
    assert [len(answer[key]) for key in DATA_KEYS if key in answer] == sizes
    assert set(answer) == set(DATA_KEYS[:len(sizes)])
    assert b"".join(answer[key] for key in DATA_KEYS[:len(sizes)]) == \
        data[offset:offset + length]


@pytest.mark.parametrize("filename, offset, length, error", [
    (WHEEL, 10_501, 1000, b"BAD_RANGE"),
    (WHEEL, -1, 1000, b"BAD_RANGE"),
    (WHEEL, 0, 0, b"BAD_RANGE"),
    (WHEEL, 0, MAX_FETCH_SIZE + 1, b"BAD_RANGE"),
    ("other-1.0-py3-none-any.whl", 0, 10, b"FILE_NOT_OFFERED"),
    ("\N{SNOWMAN}", 0, 10, b"FILE_NOT_OFFERED"),
])
def test_responder_errors(wheel, filename, offset, length, error):
    path, data = wheel
    locator = FileSenderLocator(FileSender({WHEEL: path}))
    box = FetchChunks.makeArguments(
        {"filename": filename, "offset": offset, "length": length}, None)
    code, description = _answer(locator.locateResponder(b"fetch-chunks"),
                                box)
    assert code == error


def test_responder_without_a_file_sender():
    class Bare(FileSenderResponders, amp.AMP):
        pass

    box = FetchChunks.makeArguments(
        {"filename": WHEEL, "offset": 0, "length": 10}, None)
    code, description = _answer(Bare().locateResponder(b"fetch-chunks"),
                                box)
    assert code == b"FILE_NOT_OFFERED"


def test_sender_file_shrunk_after_offer(big_wheel):
    """A short read ends the answer there: no value after a gap."""
    path, data = big_wheel
    sender = FileSender({WHEEL: path})
    os.truncate(path, 100_000)
    assert sender.read_chunks(WHEEL, 0, MAX_FETCH_SIZE) == \
        [data[:MAX_CHUNK_SIZE], data[MAX_CHUNK_SIZE:100_000]]


class PausingTransport(StringTransport):
    """Pauses its streaming producer while it holds more than 64 KiB, as a
    TCP transport does, until a test drains it."""

    def write(self, data):
        super().write(data)
        if self.producer is not None and self.streaming and \
                len(self.value()) > 65_536:
            self.producer.pauseProducing()

    def drain(self):
        """Everything written so far; the producer is resumed."""
        sent = self.value()
        self.clear()
        if self.producer is not None:
            self.producer.resumeProducing()
        return sent


def _request(ask, offset, length=MAX_FETCH_SIZE, filename=WHEEL):
    return amp.AmpBox(_command=b"fetch-chunks", _ask=b"%d" % ask,
                      filename=filename.encode(), offset=b"%d" % offset,
                      length=b"%d" % length).serialize()


class CountingSender(FileSender):
    def __init__(self, files):
        super().__init__(files)
        self.reads = 0

    def read_chunks(self, filename, offset, length):
        self.reads += 1
        return super().read_chunks(filename, offset, length)


@pytest.mark.parametrize("delegated", [False, True])
def test_answers_go_out_one_at_a_time(big_wheel, delegated):
    """However many requests are outstanding, the sender reads and writes
    the next answer only once the transport has sent the previous one."""
    path, data = big_wheel
    sender = CountingSender({WHEEL: path})
    protocol = DelegatingProtocol(sender) if delegated else \
        SenderProtocol(sender)
    transport = PausingTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"".join(
        _request(ask, ask * MAX_FETCH_SIZE) for ask in range(4)))
    assert sender.reads == 1
    received = []
    while sender.reads <= 4:
        wire = transport.drain()
        if not wire:
            break
        (box,) = amp.parseString(wire)
        assert box[b"_answer"] == b"%d" % len(received)
        received.append(b"".join(box.get(key, b"") for key in DATA_KEYS))
        assert sender.reads == min(len(received) + 1, 4)
    assert b"".join(received) == data
    # with nothing waiting and the transport empty, answers go out at once
    protocol.dataReceived(_request(9, 0, 10))
    (box,) = amp.parseString(transport.drain())
    assert box[b"data0"] == data[:10]


def test_answers_waiting_when_the_connection_is_lost(big_wheel):
    path, data = big_wheel
    sender = CountingSender({WHEEL: path})
    protocol = SenderProtocol(sender)
    transport = PausingTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(_request(1, 0) + _request(2, MAX_FETCH_SIZE))
    transport.producer.stopProducing()
    protocol.connectionLost(Failure(ConnectionLost("gone")))
    assert sender.reads == 1


def test_unpaced_beside_another_producer(big_wheel):
    """A protocol with a producer of its own gets its answers at once."""
    path, data = big_wheel
    sender = CountingSender({WHEEL: path})
    protocol = SenderProtocol(sender)
    transport = PausingTransport()
    protocol.makeConnection(transport)
    other = StringTransport()  # any push producer
    transport.registerProducer(other, True)
    protocol.dataReceived(_request(1, 0) + _request(2, MAX_FETCH_SIZE))
    assert sender.reads == 2
    assert len(amp.parseString(transport.value())) == 2


def test_sender_ranges(wheel):
    path, data = wheel
    sender = FileSender({WHEEL: path})
    assert sender.offered == {WHEEL: path}
    assert sender.read_chunks(WHEEL, 0, 10) == [data[:10]]
    assert sender.read_chunks(WHEEL, 10_000, 1000) == [data[10_000:]]
    assert sender.read_chunks(WHEEL, len(data), 1000) == []
    assert sender.read_chunks(WHEEL, 0, MAX_FETCH_SIZE) == [data]
    for offset, length in [(-1, 10), (len(data) + 1, 10), (0, 0),
                           (0, MAX_FETCH_SIZE + 1)]:
        with pytest.raises(BadRange):
            sender.read_chunks(WHEEL, offset, length)
    with pytest.raises(FileNotOffered):
        sender.read_chunks("other-1.0-py3-none-any.whl", 0, 10)
    sender.withdraw(WHEEL)
    with pytest.raises(FileNotOffered):
        sender.read_chunks(WHEEL, 0, 10)


def test_sender_serves_what_was_offered(wheel, tmp_path):
    """A file replaced after it was offered still serves the old bytes."""
    path, data = wheel
    sender = FileSender({WHEEL: path})
    path.unlink()
    path.write_bytes(b"something else")
    assert read(sender, WHEEL, 0, 20) == data[:20]
    sender.clear()
    assert sender.offered == {}


def test_fetch_unoffered_file(wheel):
    path, data = wheel
    client, server, pump = connect(SenderProtocol(FileSender({WHEEL: path})))
    answer = client.callRemote(FetchChunks, filename="other-1.0.whl",
                               offset=0, length=10)
    failure = []
    answer.addErrback(failure.append)
    pump.flush()
    failure[0].trap(FileNotOffered)
    assert "other-1.0.whl" in failure[0].getErrorMessage()


def test_fetch_bad_range_over_amp(wheel):
    path, data = wheel
    client, server, pump = connect(SenderProtocol(FileSender({WHEEL: path})))
    answer = client.callRemote(FetchChunks, filename=WHEEL,
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
    """Checks that nothing is published while ranges are being read."""

    def __init__(self, files, output):
        super().__init__(files)
        self.output = output
        self.requests = []

    def read_chunks(self, filename, offset, length):
        assert published(self.output) == []
        self.requests.append((offset, length))
        return super().read_chunks(filename, offset, length)


def test_in_memory_transfer(wheel, output, fake_reactor):
    path, data = wheel
    sender = WatchingSender({WHEEL: path}, output)
    client, server, pump = connect(SenderProtocol(sender))
    receiver = make_receiver(output, fake_reactor, durable=True)
    final = run(pump, start(receiver, client.callRemote, data))
    assert final == output / "simple" / "foo-bar" / WHEEL
    assert final.read_bytes() == data
    assert stat.S_IMODE(final.stat().st_mode) == 0o644
    assert stat.S_IMODE(final.parent.stat().st_mode) == 0o755
    assert stat.S_IMODE(final.parent.parent.stat().st_mode) == 0o755
    assert sender.requests == [(offset, CHUNK)
                               for offset in range(0, 10_000, CHUNK)] + \
        [(10_000, 500)]
    assert incoming(output) == []
    assert published(output) == [final.parent.relative_to(output),
                                 final.relative_to(output)]


def test_in_memory_transfer_full_size(big_wheel, output, fake_reactor):
    """With the default request size: one box per MAX_FETCH_SIZE."""
    path, data = big_wheel
    sender = WatchingSender({WHEEL: path}, output)
    client, server, pump = connect(SenderProtocol(sender))
    receiver = FileReceiver(output, fake_reactor, threadpool=SyncThreadPool())
    counting = Counting(client.callRemote)
    final = run(pump, start(receiver, counting, data))
    assert final.read_bytes() == data
    assert sender.requests == [
        (0, MAX_FETCH_SIZE), (MAX_FETCH_SIZE, MAX_FETCH_SIZE),
        (2 * MAX_FETCH_SIZE, MAX_FETCH_SIZE),
        (3 * MAX_FETCH_SIZE, 2 * MAX_CHUNK_SIZE + 123)]
    assert counting.bytes == len(data)
    assert incoming(output) == []


@pytest_twisted.ensureDeferred
async def test_loopback_tcp_transfer(tmp_path, reactor):
    data = payload(3 * MAX_FETCH_SIZE + 123, seed=2)
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


@pytest.mark.parametrize("fetch_size", [CHUNK, MAX_FETCH_SIZE])
def test_window_is_respected(output, fake_reactor, tmp_path, fetch_size):
    """Never more than *window* requests outstanding, and the window is
    used, refilled half a window at a time: answers are held back and
    released one at a time."""
    data = payload(10 * fetch_size + fetch_size // 2)
    path = tmp_path / WHEEL
    path.write_bytes(data)
    sender = FileSender({WHEEL: path})
    call_remote = held_answers()
    held = call_remote.held
    counting = Counting(call_remote)
    receiver = make_receiver(output, fake_reactor, window=4,
                             fetch_size=fetch_size)
    result = start(receiver, counting, data)
    sent = [len(counting.requests)]
    while held:
        assert len(held) == counting.outstanding <= 4
        answer, offset, length = held.pop(0)
        answer.callback(as_answer(read(sender, WHEEL, offset, length)))
        sent.append(len(counting.requests) - sum(sent))
    assert result.result.read_bytes() == data
    assert counting.most_outstanding == 4
    assert sent == [4, 0, 2, 0, 2, 0, 2, 0, 1, 0, 0, 0]
    assert counting.requests == [
        (offset, min(fetch_size, len(data) - offset))
        for offset in range(0, len(data), fetch_size)]


@pytest.mark.parametrize("fetch_size", [CHUNK, MAX_FETCH_SIZE])
def test_write_buffer_pauses_fetching(output, fake_reactor, tmp_path,
                                      fetch_size):
    """While the disk is behind, no more is asked for."""
    data = payload(10 * fetch_size + fetch_size // 2)
    path = tmp_path / WHEEL
    path.write_bytes(data)
    sender = FileSender({WHEEL: path})
    jobs = []

    class SlowPool:
        def callInThreadWithCallback(self, on_result, function, *args):
            jobs.append((on_result, function, args))

    def call_remote(command, filename, offset, length):
        return succeed(as_answer(read(sender, WHEEL, offset, length)))

    counting = Counting(call_remote)
    receiver = FileReceiver(output, fake_reactor, threadpool=SlowPool(),
                            fetch_size=fetch_size, window=8,
                            write_buffer=fetch_size * 5 // 2,
                            durable=False)
    result = start(receiver, counting, data)
    requested = []
    while not result.called:
        requested.append(len(counting.requests))
        on_result, function, args = jobs.pop(0)
        on_result(True, function(*args))
    assert result.result.read_bytes() == data
    # the first job looks for a published copy; then every answer comes at
    # once, so the window (8) never limits: 3 pieces (more than the 2.5
    # pieces allowed) wait for the disk, and each written batch lets as
    # many more be fetched
    assert requested[:9] == [0, 0, 3, 4, 6, 7, 9, 10, 11]


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


def test_resume_full_size_fetches_only_the_gaps(big_wheel, output,
                                                fake_reactor):
    """Ranges saved with holes: the next receive asks for exactly the holes,
    in requests of at most MAX_FETCH_SIZE, and nothing else."""
    path, data = big_wheel
    size = len(data)
    kept = [(0, 1_000_000), (1_000_000 + 2 * MAX_FETCH_SIZE + 5, size - 7)]
    incoming_path = output / ".incoming"
    incoming_path.mkdir(parents=True)
    part = bytearray(size)
    for begin, end in kept:
        part[begin:end] = data[begin:end]
    (incoming_path / (WHEEL + ".part")).write_bytes(part)
    (incoming_path / (WHEEL + ".ranges")).write_text(json.dumps({
        "filename": WHEEL, "size": size, "sha256": sha256(data),
        "ranges": [list(r) for r in kept]}))
    sender = WatchingSender({WHEEL: path}, output)
    client, server, pump = connect(SenderProtocol(sender))
    counting = Counting(client.callRemote)
    receiver = make_receiver(output, fake_reactor, fetch_size=MAX_FETCH_SIZE)
    final = run(pump, start(receiver, counting, data))
    assert final.read_bytes() == data
    assert sender.requests == [
        (1_000_000, MAX_FETCH_SIZE),
        (1_000_000 + MAX_FETCH_SIZE, MAX_FETCH_SIZE),
        (1_000_000 + 2 * MAX_FETCH_SIZE, 5),
        (size - 7, 7)]
    assert counting.bytes == 2 * MAX_FETCH_SIZE + 12


def test_resume_full_size_after_dropped_connection(big_wheel, output,
                                                   fake_reactor):
    """At the default request size a dropped connection keeps whole
    answers, and resuming fetches only what they do not cover."""
    path, data = big_wheel
    sender = FileSender({WHEEL: path})
    receiver = make_receiver(output, fake_reactor, window=2,
                             fetch_size=MAX_FETCH_SIZE)
    client, server, pump = connect(SenderProtocol(sender))
    with pytest.raises(TransferInterrupted, match="lost the connection"):
        run(pump, start(receiver, _interrupt_after(client, 3), data))
    saved = _saved_ranges(output)["ranges"]
    assert saved and all(begin % MAX_FETCH_SIZE == 0 and
                         (end % MAX_FETCH_SIZE == 0 or end == len(data))
                         for begin, end in saved)
    kept = ReceivedRanges(saved).total
    assert 0 < kept < len(data)

    client, server, pump = connect(SenderProtocol(sender))
    counting = Counting(client.callRemote)
    final = run(pump, start(receiver, counting, data))
    assert final.read_bytes() == data
    assert counting.bytes == len(data) - kept
    assert counting.requests == [
        (offset, min(MAX_FETCH_SIZE, len(data) - offset))
        for offset in range(kept, len(data), MAX_FETCH_SIZE)]
    assert incoming(output) == []


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


def test_sender_leaving_out_a_value(big_wheel, output, fake_reactor):
    """Values after a missing one are not used: the answer is short."""
    path, data = big_wheel
    client, server, pump = connect(GappySender(data))
    receiver = make_receiver(output, fake_reactor, fetch_size=MAX_FETCH_SIZE)
    with pytest.raises(TransferFailed,
                       match=f"returned only {MAX_CHUNK_SIZE} of "
                             f"{MAX_FETCH_SIZE} bytes at offset 0 "):
        run(pump, start(receiver, client.callRemote, data))
    assert published(output) == [] and incoming(output) == []


def test_fetch_size_limits(output, fake_reactor):
    for fetch_size in (0, MAX_FETCH_SIZE + 1):
        with pytest.raises(ValueError, match="fetch_size"):
            FileReceiver(output, fake_reactor, fetch_size=fetch_size)


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
