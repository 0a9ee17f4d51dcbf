#!/usr/bin/env python3
"""Benchmark the wheel transfer against a plain TCP copy of the same file.

A second process (this script with ``--serve``) offers a random file over
loopback TCP twice: as an AMP :class:`~piwtwist.transfer.sender.FileSender`
and as a plain stream (connect, read the whole file, close).  This process
receives it both ways on one reactor and times each from the first request
to the file being complete on disk: through
:class:`~piwtwist.transfer.receiver.FileReceiver` (chunked, windowed,
sha256-verified, renamed into ``simple/``) and through a protocol that
writes whatever arrives to a file.  Both sync the data before they stop the
clock unless ``--no-durable`` is given.  The target is for the transfer to
reach at least half the plain copy's throughput.  A third figure, the same
FetchChunks requests with the answers thrown away, shows the ceiling that
AMP itself sets (boxes of up to 16 values, each under its 64 KiB limit).

Each figure is the median of ``--repeat`` runs, with the best run beside
it: on a shared machine the plain copy in particular varies a lot.

    .venv/bin/python bench/transfer.py
    .venv/bin/python bench/transfer.py --size-mb 100 --fetch-size 480000 \\
        --window 8 --repeat 3
"""

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import (  # noqa: E402
    defer, endpoints, protocol, stdio, task)
from twisted.protocols import amp  # noqa: E402

from piwtwist.protocol.transfer import (  # noqa: E402
    MAX_FETCH_SIZE,
    FetchChunks,
)
from piwtwist.transfer.receiver import (  # noqa: E402
    DEFAULT_WINDOW,
    FileReceiver,
)
from piwtwist.transfer.sender import (  # noqa: E402
    FileSender,
    FileSenderResponders,
)
from proc import process_cpu  # noqa: E402  (bench/ is on sys.path)

WHEEL_NAME = "benchmark_payload-1.0-py3-none-any.whl"
TARGET_RATIO = 0.5
COPY_READ_SIZE = 256 * 1024


# -- the serving process -----------------------------------------------------

class _SenderProtocol(FileSenderResponders, amp.AMP):
    def __init__(self, file_sender):
        super().__init__()
        self.file_sender = file_sender


class _CopySender(protocol.Protocol):
    """Writes the whole file, as fast as the transport takes it, then
    closes."""

    def connectionMade(self):
        self._file = open(self.factory.path, "rb")
        self.transport.registerProducer(self, False)

    def resumeProducing(self):
        data = self._file.read(COPY_READ_SIZE)
        if data:
            self.transport.write(data)
        else:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def stopProducing(self):
        pass

    def connectionLost(self, reason):
        self._file.close()


async def serve(reactor, path):
    file_sender = FileSender({WHEEL_NAME: Path(path)})
    amp_factory = protocol.Factory.forProtocol(
        lambda: _SenderProtocol(file_sender))
    copy_factory = protocol.Factory.forProtocol(_CopySender)
    copy_factory.path = path
    ports = []
    for factory in (amp_factory, copy_factory):
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0,
                                                interface="127.0.0.1")
        ports.append((await endpoint.listen(factory)).getHost().port)
    print(*ports, flush=True)
    # run until the parent closes our stdin
    done = defer.Deferred()
    stdio.StandardIO(_StdinWatcher(done), reactor=reactor)
    await done


class _StdinWatcher(protocol.Protocol):
    def __init__(self, done):
        self._done = done

    def connectionLost(self, reason):
        self._done.callback(None)


# -- the receiving process ---------------------------------------------------

class _CopyReceiver(protocol.Protocol):
    """Writes whatever arrives to a file; fires *done* when it is closed."""

    def __init__(self, path, durable, done):
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._durable = durable
        self._done = done
        self.received = 0

    def dataReceived(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self.received += len(data)

    def connectionLost(self, reason):
        if self._durable:
            os.fdatasync(self._fd)
        os.close(self._fd)
        self._done.callback(self.received)


async def plain_copy(reactor, port, path, durable):
    done = defer.Deferred()
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    started = time.perf_counter()
    await endpoint.connect(protocol.Factory.forProtocol(
        lambda: _CopyReceiver(path, durable, done)))
    received = await done
    return received, time.perf_counter() - started


async def amp_transfer(reactor, port, output, size, sha256, options):
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    client = await endpoint.connect(
        protocol.Factory.forProtocol(amp.AMP))
    receiver = FileReceiver(output, reactor, fetch_size=options.fetch_size,
                            window=options.window,
                            durable=not options.no_durable)
    try:
        started = time.perf_counter()
        path = await receiver.receive(client.callRemote, "benchmark-payload",
                                      WHEEL_NAME, size, sha256)
        elapsed = time.perf_counter() - started
    finally:
        client.transport.loseConnection()
    return path.stat().st_size, elapsed


async def amp_only(reactor, port, size, options):
    """The same requests with the same window, the answers thrown away:
    the ceiling that AMP itself sets, without disk, hash or bookkeeping."""
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    client = await endpoint.connect(protocol.Factory.forProtocol(amp.AMP))
    offsets = iter(range(0, size, options.fetch_size))
    done = defer.Deferred()
    state = {"outstanding": 0, "received": 0}

    def request_more():
        while state["outstanding"] < options.window:
            offset = next(offsets, None)
            if offset is None:
                if not state["outstanding"]:
                    done.callback(None)
                return
            state["outstanding"] += 1
            client.callRemote(
                FetchChunks, filename=WHEEL_NAME, offset=offset,
                length=options.fetch_size).addCallback(received)

    def received(answer):
        state["outstanding"] -= 1
        state["received"] += sum(len(value) for value in answer.values()
                                 if value is not None)
        request_more()

    started = time.perf_counter()
    request_more()
    await done
    elapsed = time.perf_counter() - started
    client.transport.loseConnection()
    return state["received"], elapsed


def make_payload(path, size):
    hasher = hashlib.sha256()
    with open(path, "wb") as stream:
        remaining = size
        while remaining:
            block = os.urandom(min(remaining, 1 << 20))
            hasher.update(block)
            stream.write(block)
            remaining -= len(block)
    return hasher.hexdigest()




async def measure(server, method, *args):
    """Wall seconds, receiver CPU seconds and sender CPU seconds of one
    run, which starts without the previous run's writeback."""
    os.sync()
    cpu, sender = time.process_time(), process_cpu(server.pid)
    received, seconds = await method(*args)
    cpu = time.process_time() - cpu
    if sender is not None:
        sender = process_cpu(server.pid) - sender
    return received, (seconds, cpu, sender)


def summary(name, size, runs):
    """Print the median and best rates; return them."""
    seconds, cpu, sender = (statistics.median(values)
                            for values in zip(*runs))
    best = size / min(run[0] for run in runs) / 1e6
    scale = 100e6 / size
    sender = "?" if sender is None else f"{sender * scale:.2f}"
    print(f"{name:18} {size / seconds / 1e6:6.0f} MB/s (best {best:4.0f})  "
          f"CPU s per 100 MB: receiver {cpu * scale:.2f}, sender {sender}")
    return size / seconds / 1e6, best


async def bench(reactor, options):
    size = options.size_mb * 1_000_000
    durable = not options.no_durable
    with tempfile.TemporaryDirectory(prefix="piwtwist-bench-",
                                     dir=options.dir) as temp:
        temp = Path(temp)
        payload = temp / "payload.whl"
        sha256 = make_payload(payload, size)
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(payload)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            amp_port, copy_port = map(int, server.stdout.readline().split())
            copies, transfers, ceilings = [], [], []
            # alternate so that neither always runs on a warmer system
            for run in range(options.repeat):
                copy_path = temp / "copy.bin"
                received, figures = await measure(
                    server, plain_copy, reactor, copy_port, copy_path,
                    durable)
                assert received == size, received
                copy_path.unlink()
                copies.append(figures)
                received, figures = await measure(
                    server, amp_transfer, reactor, amp_port,
                    temp / f"output-{run}", size, sha256, options)
                assert received == size, received
                transfers.append(figures)
                received, figures = await measure(
                    server, amp_only, reactor, amp_port, size, options)
                assert received == size, received
                ceilings.append(figures)
                print(f"run {run + 1}: plain copy "
                      f"{size / copies[-1][0] / 1e6:.0f} MB/s, transfer "
                      f"{size / transfers[-1][0] / 1e6:.0f} MB/s", flush=True)
        finally:
            server.stdin.close()
            server.wait()
    print(f"{options.size_mb} MB of random data over loopback TCP; "
          f"{options.fetch_size} bytes per request, window {options.window}; "
          f"{'synced' if durable else 'not synced'}; median of "
          f"{options.repeat} runs")
    copy_rate, copy_best = summary("plain TCP copy", size, copies)
    transfer_rate, transfer_best = summary("FileReceiver", size, transfers)
    summary("AMP requests only", size, ceilings)
    ratio = transfer_rate / copy_rate
    verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
    print(f"ratio of medians {ratio:.2f}, of bests "
          f"{transfer_best / copy_best:.2f} (target: at least "
          f"{TARGET_RATIO:.2f}): {verdict}")
    return ratio >= TARGET_RATIO


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", metavar="FILE",
                        help="(internal) offer FILE and print the ports")
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--fetch-size", type=int, default=MAX_FETCH_SIZE)
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-durable", action="store_true",
                        help="do not sync the data (either side)")
    parser.add_argument("--dir", help="where to put the files (default: "
                        "the system's temporary directory)")
    return parser.parse_args(argv)


def main(argv=None):
    options = parse_args(argv)
    if options.serve:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(
            serve(reactor, options.serve)))
        return
    task.react(lambda reactor: defer.Deferred.fromCoroutine(
        bench(reactor, options)))


if __name__ == "__main__":
    main()
