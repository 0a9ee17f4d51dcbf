#!/usr/bin/env python3
"""Simulated builders for bench/scale.py, in a process of their own.

Each builder speaks the real builder protocol to a real master over TCP:
Hello, Authenticate, then Idle -> BUILD -> BuildLog -> Built(status=True)
with one small real wheel (a py3-none-any zip with its dist-info) that the
master fetches with FetchChunks from this process's FileSender -> Done ->
Idle, or SLEEP for the delay the master gives.  Nothing is compiled: the
wheel is made in a few hundred microseconds, so what is measured is the
master (hand-out, transfer, recording, publishing).

    python bench/scale_builders.py --port P --secret-file F --builders 50 \
        --result out.json [--first-build-only]

It prints ``ready`` once every builder has authenticated and stops when its
stdin closes (or, with ``--first-build-only``, after one builder has been
handed out and has reported one build), then writes its figures as JSON.
"""

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import (  # noqa: E402
    defer, endpoints, error, protocol, stdio, task)
from twisted.protocols import amp, basic  # noqa: E402

from piwtwist import __version__  # noqa: E402
from piwtwist.protocol import builder as proto  # noqa: E402
from piwtwist.shared_secret import read_secret  # noqa: E402
from piwtwist.transfer.sender import (  # noqa: E402
    FileSender, FileSenderResponders)

ABI = "cp311"
#: longest wait for the master's Done after it fetched a wheel
DONE_TIMEOUT = 300.0


def make_wheel(directory, package, version):
    """Write a small but valid py3-none-any wheel of *package* *version*;
    its path and the facts the Built command carries."""
    tag = package.replace("-", "_").replace(".", "_")
    version_tag = version.replace("-", "_")
    dist_info = f"{tag}-{version_tag}.dist-info"
    module = f"{tag}/__init__.py"
    contents = {
        module: f'"""{package} {version}, built by the benchmark."""\n'
                f'__version__ = "{version}"\n' + "# padding\n" * 200,
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {package}\n"
                                 f"Version: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: piwtwist-bench"
                              "\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in contents)
    record += f"{dist_info}/RECORD,,\n"
    contents[f"{dist_info}/RECORD"] = record
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in contents.items():
            archive.writestr(name, text)
    data = buffer.getvalue()
    filename = f"{tag}-{version_tag}-py3-none-any.whl"
    path = Path(directory) / filename
    path.write_bytes(data)
    facts = {
        "filename": filename, "filesize": len(data),
        "filehash": hashlib.sha256(data).hexdigest(),
        "package_tag": tag, "package_version_tag": version_tag,
        "py_version_tag": "py3", "abi_tag": "none", "platform_tag": "any",
        "requires_python": "", "dependencies": [],
    }
    return path, facts


class SimulatedBuilder(FileSenderResponders, amp.AMP):
    """The builder's end: offers its wheel, takes Done and Bye."""

    def __init__(self):
        super().__init__()
        self.file_sender = FileSender()
        self.done = None

    @proto.Done.responder
    def master_done(self, package, version):
        if self.done is not None and not self.done.called:
            self.done.callback((package, version))
        return {}

    @proto.Bye.responder
    def bye(self, reason):
        self.transport.loseConnection()
        return {}


async def login(reactor, port, secret, number):
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    connection = await endpoint.connect(
        protocol.Factory.forProtocol(SimulatedBuilder))
    nonce = os.urandom(proto.NONCE_BYTES)
    reply = await connection.callRemote(
        proto.Hello, version=__version__, nonce=nonce, build_timeout=3600.0,
        busy_timeout=300.0, py_tag=ABI, abi_tag=ABI,
        platform_tag="linux_armv7l", label=f"scale-{number}",
        os_name="Raspberry Pi OS", os_version="12", board_revision="c03114",
        board_serial=f"{number:016x}")
    if not proto.proofs_match(proto.master_proof(secret, nonce),
                              reply["proof"]):
        raise RuntimeError("the master does not know the secret")
    await connection.callRemote(
        proto.Authenticate,
        proof=proto.builder_proof(secret, reply["challenge"]))
    return connection


def stats():
    return dict(timestamp=time.time(), disk_total=64 * 2**30,
                disk_free=40 * 2**30, mem_total=8 * 2**30,
                mem_free=6 * 2**30, load_average=1.5, cpu_temperature=52.0)


async def build_once(reactor, connection, package, version, workdir, log,
                     results):
    """Report a successful build of *package* *version* with one wheel and
    wait until the master has recorded it (Done)."""
    path, facts = make_wheel(workdir, package, version)
    try:
        await connection.callRemote(proto.BuildLog, offset=0, data=log)
        connection.file_sender.offer(facts["filename"], path)
        connection.done = defer.Deferred()
        sent = time.perf_counter()
        reply = await connection.callRemote(
            proto.Built, package=package, version=version, status=True,
            duration=1.0, reason="", log_size=len(log),
            log_sha256=hashlib.sha256(log).hexdigest(), files=[facts])
        if reply["action"] == proto.SEND:
            timeout = reactor.callLater(DONE_TIMEOUT, connection.done.cancel)
            try:
                await connection.done
            except defer.CancelledError:
                results["done_timeouts"] += 1
                return
            finally:
                if timeout.active():
                    timeout.cancel()
            # let Done's answer leave before anything closes the connection
            await task.deferLater(reactor, 0, lambda: None)
        elif reply["action"] != proto.DONE:
            results["other"][reply["action"]] = \
                results["other"].get(reply["action"], 0) + 1
            return
        results["built_to_done"].append(time.perf_counter() - sent)
        results["recorded_at"].append(time.time())
    finally:
        connection.file_sender.clear()
        connection.done = None
        path.unlink(missing_ok=True)


async def builder_loop(reactor, connection, stop, workdir, log, results,
                       once=False, report=True):
    clock = time.perf_counter
    while not stop.called:
        sent = clock()
        reply = await connection.callRemote(proto.Idle, **stats())
        answered = clock()
        action = reply["action"]
        if action == proto.SLEEP:
            results["sleeps"] += 1
            await task.deferLater(reactor, min(reply["delay"], 2.0),
                                  lambda: None)
            continue
        if action != proto.BUILD:
            results["other"][action] = results["other"].get(action, 0) + 1
            return
        results["idle_to_build"].append(answered - sent)
        if results["first_build_at"] is None:
            results["first_build_at"] = time.time()
        if not report:
            return
        await build_once(reactor, connection, reply["package"],
                         reply["version"], workdir, log, results)
        if once:
            return


class _StdinWatcher(basic.LineReceiver):
    delimiter = b"\n"

    def __init__(self, closed):
        self.closed = closed

    def lineReceived(self, line):
        pass

    def connectionLost(self, reason):
        if not self.closed.called:
            self.closed.callback(None)


async def connect_with_retry(reactor, port, secret, number, patience):
    """Log in, retrying while the master is not listening yet."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return await login(reactor, port, secret, number)
        except (error.ConnectError, error.ConnectionLost,
                error.ConnectionDone):
            if time.monotonic() > deadline:
                raise
            await task.deferLater(reactor, 0.1, lambda: None)


async def main(reactor, args):
    secret = read_secret(args.secret_file)
    workdir = Path(tempfile.mkdtemp(prefix="scale-builders-"))
    log = (b"simulated build log line\n" * (args.log_bytes // 25 + 1))[
        :args.log_bytes]
    results = {"idle_to_build": [], "built_to_done": [], "recorded_at": [],
               "sleeps": 0, "lost": 0, "done_timeouts": 0, "other": {},
               "first_build_at": None, "errors": []}
    stop = defer.Deferred()
    if not args.first_build_only:
        stdio.StandardIO(_StdinWatcher(stop), reactor=reactor)
    numbers = iter(range(args.first, args.first + args.builders))
    connections = []

    async def connect_some():
        for number in numbers:
            connections.append(await connect_with_retry(
                reactor, args.port, secret, number, args.patience))

    await defer.gatherResults(
        [defer.Deferred.fromCoroutine(connect_some()) for _ in range(10)],
        consumeErrors=True)
    results["connected"] = len(connections)
    results["connected_at"] = time.time()
    print("ready", flush=True)

    async def run(connection):
        try:
            await builder_loop(reactor, connection, stop, workdir, log,
                               results, once=args.first_build_only,
                               report=not args.no_report)
        except (error.ConnectionLost, error.ConnectionDone):
            results["lost"] += 1
        except Exception as e:   # noqa: BLE001 - reported, not hidden
            results["errors"].append(repr(e))
        else:
            if connection.transport.connected:
                connection.callRemote(proto.Bye, reason="benchmark over")
            connection.transport.loseConnection()

    await defer.gatherResults(
        [defer.Deferred.fromCoroutine(run(c)) for c in connections],
        consumeErrors=True)
    Path(args.result).write_text(json.dumps(results))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret-file", required=True)
    parser.add_argument("--builders", type=int, default=50)
    parser.add_argument("--first", type=int, default=1,
                        help="number of the first builder (labels differ "
                             "between processes)")
    parser.add_argument("--result", required=True)
    parser.add_argument("--log-bytes", type=int, default=2000)
    parser.add_argument("--patience", type=float, default=120.0,
                        help="seconds to keep trying to reach the master")
    parser.add_argument("--first-build-only", action="store_true",
                        help="one build by the first builder handed one, "
                             "then stop")
    parser.add_argument("--no-report", action="store_true",
                        help="leave without reporting the build handed out "
                             "(so that no page changes because of it)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    task.react(lambda reactor: defer.Deferred.fromCoroutine(
        main(reactor, parse_args())))
