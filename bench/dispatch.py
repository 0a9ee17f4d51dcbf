#!/usr/bin/env python3
"""Benchmark handing out work to many builders over real loopback TCP AMP.

Three kinds of process, all this script:

* the master (``--serve``): a real :class:`~piwtwist.master.builder_hub.
  BuilderHub` and :class:`~piwtwist.master.build_queue.BuildQueue` on the
  default reactor, listening on 127.0.0.1, over an in-memory database that
  serves a large synthetic queue (one ABI, ``limit`` entries at a time,
  leaving out the held ones) and forgets every build it is told to record;
  no PostgreSQL, no files;
* one or more client processes (``--clients``), each running its share of
  the simulated builders on one reactor, one AMP connection apiece: Hello,
  Authenticate, then Idle -> BUILD -> BuildLog + Built(status=False, no
  files) -> DONE -> Idle again, or SLEEP for the delay the hub gives;
* this process, which starts the others, says "go" once every builder is
  authenticated, samples the master's CPU time over the run and prints the
  figures.

    .venv/bin/python bench/dispatch.py
    .venv/bin/python bench/dispatch.py --builders 200 --duration 20 --profile

See bench/README.md.
"""

import argparse
import hashlib
import json
import os
import platform
import pstats
import resource
import secrets
import select
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import twisted  # noqa: E402
from twisted.internet import (  # noqa: E402
    defer, endpoints, error, protocol, stdio, task)
from twisted.logger import (  # noqa: E402
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.protocols import amp, basic  # noqa: E402

from piwtwist import __version__  # noqa: E402
from piwtwist.db.records import QueueEntry  # noqa: E402
from piwtwist.protocol import builder as proto  # noqa: E402
from proc import process_cpu  # noqa: E402  (bench/ is on sys.path)

ABI = "cp311"
PACKAGE_FORMAT = "bench-{:07d}"
RELEASED_FROM = datetime(2026, 1, 1, tzinfo=timezone.utc)
STARTUP_TIMEOUT = 60.0


# -- the master --------------------------------------------------------------

class SyntheticDatabase:
    """The two queries the hub and the queue make, over a synthetic queue of
    *entries* releases of ``bench-NNNNNNN 1.0`` for one ABI, newest first.

    Entries are made on demand: the queue is the indexes from ``_first`` up,
    less the ``_recorded`` ones above it, so a query costs about ``limit``
    plus the number of held entries, whatever the queue's length.
    """

    def __init__(self, clock, entries, query_delay=0.0, record_delay=0.0):
        self.clock = clock
        self.entries = entries
        self.query_delay = query_delay
        self.record_delay = record_delay
        self._first = 0
        self._recorded = set()
        self.queries = 0
        self.query_seconds = 0.0
        self.recorded = 0
        self.recorded_twice = 0

    def _entry(self, index):
        return QueueEntry(abi_tag=ABI, package=PACKAGE_FORMAT.format(index),
                          version="1.0",
                          released=RELEASED_FROM - timedelta(seconds=index))

    async def get_build_queue(self, limit, exclude=()):
        started = time.process_time()
        excluded = {(package, version) for abi, package, version in exclude
                    if abi == ABI}
        result = []
        index = self._first
        while len(result) < limit and index < self.entries:
            if index not in self._recorded:
                entry = self._entry(index)
                if (entry.package, entry.version) not in excluded:
                    result.append(entry)
            index += 1
        self.queries += 1
        self.query_seconds += time.process_time() - started
        if self.query_delay:
            await task.deferLater(self.clock, self.query_delay, lambda: None)
        return result

    async def log_build(self, build):
        if self.record_delay:
            await task.deferLater(self.clock, self.record_delay, lambda: None)
        index = int(build.package.rsplit("-", 1)[1])
        if index < self._first or index in self._recorded:
            self.recorded_twice += 1
        else:
            self._recorded.add(index)
            while self._first in self._recorded:
                self._recorded.discard(self._first)
                self._first += 1
        self.recorded += 1
        return self.recorded

    def stats(self):
        return {"queries": self.queries, "query_seconds": self.query_seconds,
                "recorded": self.recorded,
                "recorded_twice": self.recorded_twice}


class UnusedReceiver:
    """Builds in this benchmark never succeed, so nothing is fetched."""

    async def receive(self, call_remote, package, filename, size, sha256):
        raise AssertionError("the benchmark's builds have no files")

    def abandon(self):
        pass


class _Commands(basic.LineReceiver):
    """The parent's commands on stdin: ``go`` starts the measured window
    (and the profiler); end of file stops the master."""

    delimiter = b"\n"

    def __init__(self, on_go, done):
        self._on_go = on_go
        self._done = done

    def lineReceived(self, line):
        if line.strip() == b"go":
            self._on_go()

    def connectionLost(self, reason):
        if not self._done.called:
            self._done.callback(None)


def _begin_logging(path):
    """Log at info level as the master does under twistd (the hub logs two
    lines per build, so formatting them is part of the cost), warnings and
    worse on stderr too."""
    observers = [
        FilteringLogObserver(textFileLogObserver(open(path, "a")),
                             [LogLevelFilterPredicate(LogLevel.info)]),
        FilteringLogObserver(textFileLogObserver(sys.stderr),
                             [LogLevelFilterPredicate(LogLevel.warn)]),
    ]
    globalLogBeginner.beginLoggingTo(observers, discardBuffer=True,
                                     redirectStandardIO=False)


async def serve(reactor, options):
    from piwtwist.master.build_queue import BuildQueue
    from piwtwist.master.builder_hub import BuilderHub

    _begin_logging(options.master_log)
    db = SyntheticDatabase(reactor, options.queue_entries,
                           query_delay=options.query_delay,
                           record_delay=options.record_delay)
    queue = BuildQueue(db, reactor, size=options.queue_size)
    # no wheel ever arrives, so the output tree is never written to
    hub = BuilderHub(db, queue, UnusedReceiver(), reactor,
                     bytes.fromhex(options.secret),
                     Path(tempfile.gettempdir()) / "piwtwist-dispatch-unused",
                     index_url="https://pypi.org/simple/",
                     idle_delay=options.idle_delay)
    queue.startService()
    hub.startService()
    endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, backlog=1024,
                                            interface="127.0.0.1")
    port = await endpoint.listen(hub.factory())
    if options.nodelay:
        import socket
        # Linux: accepted sockets inherit the listening socket's TCP_NODELAY
        port.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    print(port.getHost().port, flush=True)

    profiler = None
    window = {}

    def go():
        window["queue"] = db.stats()
        nonlocal profiler
        if options.profile_to:
            import cProfile
            profiler = cProfile.Profile()
            profiler.enable()

    done = defer.Deferred()
    stdio.StandardIO(_Commands(go, done), reactor=reactor)
    await done
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(options.profile_to)
    stats = db.stats()
    before = window.get("queue", {k: 0 for k in stats})
    stats = {k: stats[k] - before[k] for k in stats}
    await defer.maybeDeferred(port.stopListening)
    await hub.stopService()
    await queue.stopService()
    Path(options.stats).write_text(json.dumps(stats))


# -- the simulated builders --------------------------------------------------

class BuilderEnd(amp.AMP):
    """The builder's end: takes Done and Bye, asks for nothing else."""

    @proto.Done.responder
    def done(self, package, version):
        return {}

    @proto.Bye.responder
    def bye(self, reason):
        self.transport.loseConnection()
        return {}


async def login(reactor, port, secret, number, nodelay=False):
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    connection = await endpoint.connect(
        protocol.Factory.forProtocol(BuilderEnd))
    if nodelay:
        connection.transport.setTcpNoDelay(True)
    nonce = os.urandom(proto.NONCE_BYTES)
    reply = await connection.callRemote(
        proto.Hello, version=__version__, nonce=nonce, build_timeout=3600.0,
        busy_timeout=300.0, py_tag=ABI, abi_tag=ABI,
        platform_tag="linux_armv7l", label=f"bench-{number}",
        os_name="Raspberry Pi OS", os_version="12", board_revision="c03114",
        board_serial=f"{number:016x}")
    if not proto.proofs_match(proto.master_proof(secret, nonce),
                              reply["proof"]):
        raise RuntimeError("the master does not know the secret")
    await connection.callRemote(
        proto.Authenticate,
        proof=proto.builder_proof(secret, reply["challenge"]))
    return connection


def _stats():
    return dict(timestamp=time.time(), disk_total=64 * 2**30,
                disk_free=40 * 2**30, mem_total=8 * 2**30,
                mem_free=6 * 2**30, load_average=1.5, cpu_temperature=52.0)


async def run_builder(reactor, connection, deadline, log, results):
    """Ask for work until ``deadline[0]``; finish the build in hand, then
    leave."""
    log_sha256 = hashlib.sha256(log).hexdigest()
    try:
        await _builder_loop(reactor, connection, deadline, log, log_sha256,
                            results)
    except (error.ConnectionLost, error.ConnectionDone):
        results["lost"] += 1
        return
    connection.callRemote(proto.Bye, reason="the benchmark is over")
    connection.transport.loseConnection()


async def _builder_loop(reactor, connection, deadline, log, log_sha256,
                        results):
    clock = time.perf_counter
    while clock() < deadline[0]:
        sent = clock()
        reply = await connection.callRemote(proto.Idle, **_stats())
        answered = clock()
        action = reply["action"]
        if action == proto.SLEEP:
            results["sleeps"] += 1
            await task.deferLater(reactor, reply["delay"], lambda: None)
            continue
        if action != proto.BUILD:
            results["other"][action] = results["other"].get(action, 0) + 1
            break
        results["idle_to_build"].append(answered - sent)
        package, version = reply["package"], reply["version"]
        results["handed_out"].append(int(package.rsplit("-", 1)[1]))
        await connection.callRemote(proto.BuildLog, offset=0, data=log)
        sent = clock()
        reply = await connection.callRemote(
            proto.Built, package=package, version=version, status=False,
            duration=0.0, reason="simulated", log_size=len(log),
            log_sha256=log_sha256, files=[])
        results["built_to_done"].append(clock() - sent)
        if reply["action"] != proto.DONE:
            results["other"][reply["action"]] = \
                results["other"].get(reply["action"], 0) + 1


async def clients(reactor, options):
    secret = bytes.fromhex(options.secret)
    started = time.perf_counter()
    connections = []
    # a few logins at a time, so that the numbers of the connection phase
    # do not depend on the listen backlog
    numbers = iter(range(options.first, options.first + options.builders))

    async def connect_some():
        for number in numbers:
            connections.append(
                await login(reactor, options.port, secret, number,
                            options.nodelay))

    await defer.gatherResults([defer.Deferred.fromCoroutine(connect_some())
                               for _ in range(20)], consumeErrors=True)
    connect_seconds = time.perf_counter() - started
    print("ready", flush=True)

    go = defer.Deferred()
    stdin_closed = defer.Deferred()
    stdio.StandardIO(_Commands(lambda: go.callback(None), stdin_closed),
                     reactor=reactor)
    await defer.DeferredList([go, stdin_closed], fireOnOneCallback=True)
    if not go.called:
        return
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    deadline = [time.perf_counter() + options.duration]
    # the conductor closes our stdin at the end, or early when interrupted
    stdin_closed.addCallback(lambda _: deadline.__setitem__(0, 0.0))
    results = {"idle_to_build": [], "built_to_done": [], "handed_out": [],
               "sleeps": 0, "lost": 0, "other": {}}
    log = (b"simulated build log line\n" * (options.log_bytes // 25 + 1))[
        :options.log_bytes]
    await defer.gatherResults(
        [defer.Deferred.fromCoroutine(
            run_builder(reactor, c, deadline, log, results))
         for c in connections], consumeErrors=True)
    after = resource.getrusage(resource.RUSAGE_SELF)
    results["cpu_seconds"] = (after.ru_utime - cpu.ru_utime
                              + after.ru_stime - cpu.ru_stime)
    results["connected"] = len(connections)
    results["connect_seconds"] = connect_seconds
    Path(options.result).write_text(json.dumps(results))


# -- the conductor -----------------------------------------------------------



def machine_cpu():
    """Busy and stolen CPU seconds of the whole machine so far (Linux), from
    the first line of /proc/stat, or None."""
    try:
        with open("/proc/stat") as stream:
            fields = [int(f) for f in stream.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...
    fields += [0] * (8 - len(fields))
    busy = sum(fields[:8]) - fields[3] - fields[4] - fields[7]
    tick = os.sysconf("SC_CLK_TCK")
    return busy / tick, fields[7] / tick


def read_line(process, what, timeout=STARTUP_TIMEOUT):
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ""
    if not line:
        raise SystemExit(f"{what} did not start (exit status "
                         f"{process.poll()}); see its messages above")
    return line.strip()


def percentiles(samples):
    if not samples:
        return "no samples"
    ordered = sorted(samples)

    def at(fraction):
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    return "  ".join(f"{name} {value * 1000:7.2f}" for name, value in (
        ("p50", at(0.50)), ("p90", at(0.90)), ("p99", at(0.99)),
        ("max", ordered[-1])))


def stop(process, timeout=10.0):
    if process.poll() is not None:
        return
    try:
        if process.stdin and not process.stdin.closed:
            process.stdin.close()
        process.wait(timeout)
    except (subprocess.TimeoutExpired, BrokenPipeError):
        process.terminate()
        try:
            process.wait(5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def conduct(options):
    cores = os.cpu_count()
    client_processes = options.client_processes or max(1, min(8, cores - 1))
    client_processes = min(client_processes, options.builders)
    secret = secrets.token_bytes(32).hex()
    script = [sys.executable, __file__]
    processes = []
    with tempfile.TemporaryDirectory(prefix="piwtwist-dispatch-") as temp:
        temp = Path(temp)
        profile = None
        if options.profile is not None:
            profile = Path(options.profile or temp / "master.prof").absolute()
        try:
            master = subprocess.Popen(
                script + [
                    "--serve", "--secret", secret,
                    "--stats", str(temp / "master.json"),
                    "--queue-entries", str(options.queue_entries),
                    "--queue-size", str(options.queue_size),
                    "--idle-delay", str(options.idle_delay),
                    "--query-delay", str(options.query_delay),
                    "--record-delay", str(options.record_delay),
                    "--master-log", options.master_log]
                + (["--nodelay"] if options.nodelay else [])
                + (["--profile-to", str(profile)] if profile else []),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                start_new_session=True)
            processes.append(master)
            port = int(read_line(master, "the master"))

            workers = []
            first = 0
            for n in range(client_processes):
                share = (options.builders * (n + 1) // client_processes
                         - options.builders * n // client_processes)
                worker = subprocess.Popen(
                    script + [
                        "--clients", "--port", str(port), "--secret", secret,
                        "--builders", str(share), "--first", str(first),
                        "--duration", str(options.duration),
                        "--log-bytes", str(options.log_bytes),
                        "--result", str(temp / f"clients-{n}.json")]
                    + (["--nodelay"] if options.nodelay else []),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                    start_new_session=True)
                first += share
                processes.append(worker)
                workers.append(worker)
            for worker in workers:
                read_line(worker, "a client process")

            master.stdin.write("go\n")
            master.stdin.flush()
            master_cpu = process_cpu(master.pid)
            machine = machine_cpu()
            started = time.perf_counter()
            for worker in workers:
                worker.stdin.write("go\n")
                worker.stdin.flush()
            time.sleep(options.duration)
            elapsed = time.perf_counter() - started
            master_cpu = process_cpu(master.pid) - master_cpu
            if machine is not None:
                busy, stolen = machine_cpu()
                machine = (busy - machine[0], stolen - machine[1])
            for worker in workers:
                worker.stdin.close()
                worker.wait(options.duration + 60)
            stop(master, timeout=30.0)
            if master.returncode or any(w.returncode for w in workers):
                raise SystemExit("a process failed; see its messages above")
            master_stats = json.loads((temp / "master.json").read_text())
            results = [json.loads((temp / f"clients-{n}.json").read_text())
                       for n in range(client_processes)]
        finally:
            for process in reversed(processes):
                stop(process)
        report(options, cores, client_processes, elapsed, master_cpu,
               machine, master_stats, results)
        if profile and options.profile_lines > 0:
            stats = pstats.Stats(str(profile), stream=sys.stdout)
            for order, name in (("tottime", "own"),
                                ("cumulative", "cumulative")):
                print()
                print(f"master profile: top {options.profile_lines} by "
                      f"{name} time (cProfile itself slows the master down)")
                stats.sort_stats(order).print_stats(options.profile_lines)


def report(options, cores, client_processes, elapsed, master_cpu, machine,
           master_stats, results):
    idle = [s for r in results for s in r["idle_to_build"]]
    built = [s for r in results for s in r["built_to_done"]]
    handed = [p for r in results for p in r["handed_out"]]
    connected = sum(r["connected"] for r in results)
    connect_seconds = max(r["connect_seconds"] for r in results)
    sleeps = sum(r["sleeps"] for r in results)
    lost = sum(r["lost"] for r in results)
    client_cpu = sum(r["cpu_seconds"] for r in results)
    other = {}
    for r in results:
        for action, n in r["other"].items():
            other[action] = other.get(action, 0) + n
    print(f"machine: {cores} cores, {platform.machine()}, Python "
          f"{platform.python_version()}, Twisted {twisted.__version__}, "
          f"piwtwist {__version__}")
    print(f"master: BuilderHub + BuildQueue(size={options.queue_size}), "
          f"idle_delay {options.idle_delay} s, synthetic queue of "
          f"{options.queue_entries:,} releases for {ABI}, query delay "
          f"{options.query_delay} s, record delay {options.record_delay} s"
          + (", under cProfile" if options.profile is not None else ""))
    print(f"builders connected: {connected} of {options.builders} "
          f"(in {connect_seconds:.2f} s, {client_processes} client "
          f"process{'es' if client_processes > 1 else ''})")
    print(f"run: {elapsed:.1f} s after every builder had authenticated")
    print(f"builds handed out: {len(idle):,} ({len(idle) / elapsed:,.0f}/s); "
          f"SLEEP replies: {sleeps:,}; duplicates handed out: "
          f"{len(handed) - len(set(handed))}"
          + (f"; other replies: {other}" if other else "")
          + (f"; connections lost: {lost}" if lost else ""))
    print(f"idle -> BUILD  ms: {percentiles(idle)}")
    print(f"built -> DONE  ms: {percentiles(built)}")
    print(f"master CPU: {master_cpu:.1f} s in {elapsed:.1f} s "
          f"({master_cpu / elapsed:.0%} of one core)")
    if idle:
        print(f"CPU per build handed out: master "
              f"{master_cpu / len(idle) * 1000:.2f} ms, clients "
              f"{client_cpu / len(idle) * 1000:.2f} ms")
    print(f"client CPU: {client_cpu:.1f} s in {elapsed:.1f} s "
          f"({client_cpu / elapsed / client_processes:.0%} of one core per "
          f"process, {client_processes} process"
          f"{'es' if client_processes > 1 else ''})")
    if machine is not None:
        busy, stolen = machine
        others = max(0.0, busy - master_cpu - client_cpu)
        print(f"whole machine: {busy / elapsed:.2f} of {cores} cores busy, "
              f"{others / elapsed:.2f} of them with other processes"
              + (f", {stolen / elapsed:.2f} stolen by the hypervisor"
                 if stolen / elapsed >= 0.01 else ""))
    print(f"master queue: {master_stats['queries']} get_build_queue calls "
          f"({master_stats['query_seconds'] * 1000:.0f} ms CPU in the fake "
          f"database), {master_stats['recorded']:,} builds recorded, "
          f"{master_stats['recorded_twice']} recorded twice")
    master_share = master_cpu / elapsed
    client_share = client_cpu / elapsed / client_processes
    if master_share >= 0.9:
        verdict = "the master is the bottleneck (it used a whole core)"
    elif client_share >= 0.9:
        verdict = ("the clients are the bottleneck; the master had "
                   f"{1 - master_share:.0%} of a core to spare")
    elif machine is not None and machine[0] >= 0.9 * elapsed * cores:
        verdict = ("the machine's cores are all busy (other processes "
                   "included): the figures are a floor")
    elif sleeps > 0.05 * len(idle):
        verdict = ("the build queue: builders were told to SLEEP while "
                   "work was waiting, because the in-memory queue ran dry "
                   "between refreshes (try a larger --queue-size)")
    else:
        verdict = "neither side used a whole core (waiting on something)"
    print(f"verdict: {verdict}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builders", type=int, default=200)
    parser.add_argument("--duration", type=float, default=20.0,
                        help="seconds to measure, once everyone is in")
    parser.add_argument("--client-processes", type=int, default=0,
                        help="processes the builders are spread over "
                        "(default: one per core but the master's, up to 8)")
    parser.add_argument("--queue-entries", type=int, default=1_000_000)
    parser.add_argument("--queue-size", type=int, default=1000,
                        help="BuildQueue(size=...): entries held in memory")
    parser.add_argument("--idle-delay", type=float, default=0.05)
    parser.add_argument("--query-delay", type=float, default=0.0,
                        help="seconds each get_build_queue takes (simulated "
                        "database latency, off the reactor)")
    parser.add_argument("--record-delay", type=float, default=0.0,
                        help="seconds each log_build takes (likewise)")
    parser.add_argument("--log-bytes", type=int, default=2000,
                        help="size of each simulated build log")
    parser.add_argument("--master-log", default=os.devnull,
                        help="where the master's info log goes (default: "
                        "formatted, then thrown away)")
    parser.add_argument("--nodelay", action="store_true",
                        help="set TCP_NODELAY on both ends (the hub does not)")
    parser.add_argument("--profile", nargs="?", const="", metavar="FILE",
                        help="run the master under cProfile and print its "
                        "hotspots (and keep the stats in FILE if given)")
    parser.add_argument("--profile-lines", type=int, default=25)
    # internal: the master's and the clients' own options
    parser.add_argument("--serve", action="store_true",
                        help=argparse.SUPPRESS)
    parser.add_argument("--clients", action="store_true",
                        help=argparse.SUPPRESS)
    parser.add_argument("--secret", help=argparse.SUPPRESS)
    parser.add_argument("--stats", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0,
                        help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.builders < 1 or options.duration <= 0 or \
            options.queue_entries < 1 or options.queue_size < 2:
        parser.error("builders, duration, queue entries and queue size "
                     "must be positive (queue size at least 2)")
    return options


def main(argv=None):
    options = parse_args(argv)
    if options.serve:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(
            serve(reactor, options)))
    elif options.clients:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(
            clients(reactor, options)))
    else:
        try:
            conduct(options)
        except KeyboardInterrupt:
            raise SystemExit("interrupted")


if __name__ == "__main__":
    main()
