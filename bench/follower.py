#!/usr/bin/env python3
"""Benchmark the PyPI follower: replay a scripted journal into a master.

A fake PyPI (tests/fake_pypi.py, in a process of its own) serves a generated
journal of about 200,000 events through XML-RPC in PyPI's batches of 50,000,
with the JSON API behind it.  This process runs the master's service tree
(database pool, build queue, builder hub, page writer, follower; as
``--dev-mode``) on a private PostgreSQL cluster, starting from the journal's
first serial, and waits until the follower has applied all of it.  It prints
events applied per second, the CPU time of the master, the fake PyPI and
PostgreSQL, and the follower's share of the master's CPU time, measured by
sampling every thread's stack; then it checks the database against the
state the journal leads to.

    .venv/bin/python bench/follower.py
    .venv/bin/python bench/follower.py --events 20000 --follower-only

See bench/README.md.
"""

import argparse
import collections
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet import defer, task  # noqa: E402
from twisted.logger import (  # noqa: E402
    FilteringLogObserver, LogLevel, LogLevelFilterPredicate,
    globalLogBeginner, textFileLogObserver,
)

from piwtwist.db.schema import create_script  # noqa: E402
from piwtwist.devcluster import PrivateCluster  # noqa: E402
from piwtwist.master import tap as master_tap  # noqa: E402
from piwtwist.master.pypi_follower import (  # noqa: E402
    SKIP_NO_FILES, skip_for,
)
from piwtwist.pypi.journal import classify_file  # noqa: E402
from tests.fake_pypi import FIRST_SERIAL, FakePyPI, generate_journal  # noqa
from proc import process_cpu  # noqa: E402  (bench/ is on sys.path)

MASTER_ROLE = "piwheels"
DBNAME = "piwheels_bench"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def out(line=""):
    print(line, flush=True)


# -- CPU accounting ---------------------------------------------------------



def cluster_cpu(cluster):
    """CPU seconds of the cluster's postmaster and its children so far."""
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(entry) == postmaster:
            # with the reaped backends' time (cutime, cstime)
            total += sum(int(f) for f in fields[11:15]) / CLOCK_TICKS
        elif int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def own_cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# Where a thread's stack says it is spending its time.
COMPONENTS = [
    ("follower", ("/piwtwist/pypi/", "/piwtwist/master/pypi_follower.py",
                  "/piwtwist/master/journal_applier.py")),
    ("page writer", ("/piwtwist/web/page_writer.py", "/piwtwist/web/render",
                     "/piwtwist/web/model", "/piwtwist/web/layout",
                     "/piwtwist/web/metadata", "/genshi/")),
    ("statistics", ("/piwtwist/web/",)),
    ("build queue", ("/piwtwist/master/build_queue.py",)),
    ("database pool (any caller)", ("/piwtwist/db/",)),
    ("other piwtwist", ("/piwtwist/",)),
    ("database driver", ("/txpostgres/", "/psycopg2/")),
]


def classify(frame):
    """The component one thread's stack (innermost *frame*) is in."""
    innermost = frame.f_code
    if innermost.co_name in ("doPoll", "wait", "_wait_for_tstate_lock",
                             "get") and \
            innermost.co_filename.endswith(
                ("epollreactor.py", "threading.py", "queue.py",
                 "pollreactor.py", "selectreactor.py")):
        return "poll, or a thread between tasks"
    files = []
    while frame is not None:
        files.append(frame.f_code.co_filename)
        frame = frame.f_back
    for component, markers in COMPONENTS:
        if any(marker in name for name in files for marker in markers):
            return component
    return "reactor and libraries"


class CPUProfiler:
    """Each time the process has used *interval* seconds of CPU (SIGPROF),
    charges the CPU each thread used since the last tick to what that
    thread's stack says it is doing.  The handler runs in the main (reactor)
    thread where it was interrupted, so its work is seen mid-way."""

    def __init__(self, interval=0.002):
        self.interval = interval
        self.seconds = collections.Counter()
        self._used = {}

    def start(self):
        signal.signal(signal.SIGPROF, self._tick)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)

    def stop(self):
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, signal.SIG_DFL)

    def _tick(self, signum, frame):
        frames = sys._current_frames()
        frames[threading.get_ident()] = frame  # not this handler's frame
        for ident, stack in frames.items():
            try:
                now = time.clock_gettime(time.pthread_getcpuclockid(ident))
            except (OSError, ProcessLookupError):
                continue  # the thread has just ended
            before = self._used.get(ident, now)
            self._used[ident] = now
            if now > before:
                self.seconds[classify(stack)] += now - before


# -- the world --------------------------------------------------------------

def make_cluster(directory):
    cluster = PrivateCluster(directory)
    cluster.start(shared_buffers="256MB", max_wal_size="2GB",
                  track_functions="all")
    cluster.psql(f"CREATE ROLE {MASTER_ROLE} LOGIN")
    cluster.psql(f"CREATE DATABASE {DBNAME}")
    run_sql(cluster.dsn(DBNAME), create_script(MASTER_ROLE))
    return cluster


def run_sql(dsn, sql, params=None):
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else None
    finally:
        conn.close()


def start_fake_pypi(events, seed):
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_pypi", "--events", str(events),
         "--batch-size", "50000", "--seed", str(seed)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    words = process.stdout.readline().split()
    if not words or words[0] != "PORT":
        process.kill()
        raise SystemExit("the fake PyPI did not start")
    facts = dict(zip(words[::2], words[1::2]))
    return process, int(facts["PORT"]), int(facts["EVENTS"]), \
        int(facts["LAST"])


def master_options(dsn, output, url):
    options = master_tap.Options()
    options.update({
        "dsn": dsn, "output-path": Path(output), "secret": b"b" * 40,
        "build-abi": ["cp311"], "dev-mode": True,
        "builder-queue": "tcp:0:interface=127.0.0.1",
        "import-queue": f"unix:{output}.import.sock",
        "control-queue": f"unix:{output}.control.sock",
        "pypi-xmlrpc": f"{url}/pypi", "pypi-json": f"{url}/pypi",
        "platform-aliases": {}, "quiet": True,
    })
    return options


async def replay(reactor, options, last_serial, keep):
    """Run the master until the follower has applied the journal; the
    follower and the seconds it took.  *keep* says which of the master's
    services run: "all", "no page writer" or "follower"."""
    master = master_tap.MasterService(options, reactor)
    follower = master.follower
    if keep == "follower":
        # nothing but the database pool, the build queue and the follower
        for child in list(master.dependents):
            if child not in (master.queue, follower):
                child.disownServiceParent()
    if keep != "all":
        if master.page_writer in list(master.dependents):
            master.page_writer.disownServiceParent()
        master.hub.build_listeners.clear()
        follower.page_listeners.clear()
    started = time.perf_counter()
    master.startService()
    await master.started
    while not (follower.saved_serial == last_serial and
               follower._cycle is None):
        await task.deferLater(reactor, 0.2, lambda: None)
    elapsed = time.perf_counter() - started
    # the master's own timer: how long its reactor was held up at worst
    follower.longest_stall = master.stall_detector.worst
    follower.longest_gc = master.stall_detector.gc_worst
    await master.stopService()
    return follower, elapsed


def expected_state(events, seed):
    """The packages and releases the journal leads to, as the follower
    should record them: canonical name -> {version: (skip, yanked)}."""
    fake = FakePyPI(None, batch_size=50_000)
    generate_journal(fake, events, seed)
    state = {}
    for package, project in fake.projects.items():
        releases = {}
        for version, release in project.releases.items():
            kinds = {classify_file(f.filename, f.python_version)
                     for f in release.files}
            skip = skip_for(kinds) if kinds else SKIP_NO_FILES
            releases[version] = (skip, release.yanked)
        state[package] = releases
    return state


def recorded_state(dsn):
    state = {package: {} for (package,) in
             run_sql(dsn, "SELECT package FROM packages")}
    for package, version, skip, yanked in run_sql(
            dsn, "SELECT package, version, skip, yanked FROM versions"):
        state[package][version] = (skip, yanked)
    return state


def compare(expected, recorded):
    """Differences, leaving out releases without files: the follower keeps
    one whose files were removed (its builds may be published) but does
    not record one it learns of without files."""
    def with_files(releases):
        return {v: s for v, s in releases.items() if s[0] != SKIP_NO_FILES}

    expected = {p: with_files(r) for p, r in expected.items()}
    recorded = {p: with_files(r) for p, r in recorded.items()}
    problems = []
    for package in sorted(set(expected) | set(recorded)):
        if package not in recorded:
            problems.append(f"missing package {package}")
        elif package not in expected:
            problems.append(f"extra package {package}")
        elif expected[package] != recorded[package]:
            problems.append(f"{package}: expected {expected[package]}, "
                            f"recorded {recorded[package]}")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--follower-only", action="store_true",
                        help="run only the follower, the build queue and "
                        "the database pool")
    parser.add_argument("--with-page-writer", action="store_true",
                        help="run the page writer too (it rewrites the "
                        "pages of every package the journal touches; "
                        "slow)")
    parser.add_argument("--keep", metavar="DIR",
                        help="put the cluster and output tree in DIR and "
                        "leave them there")
    args = parser.parse_args(argv)

    globalLogBeginner.beginLoggingTo([FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(LogLevel.warn)])],
        redirectStandardIO=False)

    directory = Path(args.keep or tempfile.mkdtemp(prefix="piwtwist-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    out(f"Generating a journal of {args.events} events and starting the "
        f"fake PyPI...")
    fake, port, events, last_serial = start_fake_pypi(args.events,
                                                      args.seed)
    cluster = make_cluster(directory / "cluster")
    dsn = cluster.dsn(DBNAME)
    try:
        run_sql(dsn, "UPDATE configuration SET pypi_serial = %s",
                (FIRST_SERIAL - 1,))
        options = master_options(cluster.dsn(DBNAME, MASTER_ROLE),
                                 directory / "www",
                                 f"http://127.0.0.1:{port}")
        keep = "follower" if args.follower_only else \
            "all" if args.with_page_writer else "no page writer"
        described = {"follower": "the follower alone",
                     "all": "a whole master",
                     "no page writer": "a master without its page writer"}
        from twisted.internet import reactor

        sampler = CPUProfiler()
        before = (own_cpu(), process_cpu(fake.pid), cluster_cpu(cluster))
        sampler.start()
        outcome = {}

        async def run():
            try:
                outcome["result"] = await replay(
                    reactor, options, last_serial, keep)
            finally:
                reactor.stop()

        reactor.callWhenRunning(
            lambda: defer.Deferred.fromCoroutine(run()))
        out(f"Replaying into {described[keep]} (dev mode) on "
            f"{os.cpu_count()} CPUs...")
        reactor.run()
        sampler.stop()
        after = (own_cpu(), process_cpu(fake.pid), cluster_cpu(cluster))
        if "result" not in outcome:
            raise SystemExit("the replay did not finish")
        follower, elapsed = outcome["result"]
        master_cpu, fake_cpu, postgres_cpu = (
            b - a for a, b in zip(before, after))
        busy = {k: v for k, v in sampler.seconds.items() if v >= 0.05}
        sampled = sum(busy.values()) or 1.0

        out()
        out(f"journal events           {events:,} "
            f"(last serial {last_serial:,})")
        out(f"events applied           {follower.events_applied:,} "
            f"(repeats dropped {follower.sequencer.repeats_dropped:,}, "
            f"deletions re-applied "
            f"{follower.sequencer.deletions_reapplied:,})")
        out(f"wall time                {elapsed:.1f} s")
        out(f"events per second        {events / elapsed:,.0f}")
        out(f"longest reactor stall    "
            f"{follower.longest_stall * 1000:.0f} ms (target 100 ms; "
            f"longest garbage collection "
            f"{follower.longest_gc * 1000:.0f} ms)")
        out(f"JSON requests            {follower.json.requests:,}")
        for stage, seconds in follower.seconds_spent.items():
            out(f"  wall time {stage:25} {seconds:6.1f} s")
        out(f"CPU: master process      {master_cpu:.1f} s "
            f"({master_cpu / elapsed:.0%} of one CPU)")
        out(f"CPU: fake PyPI           {fake_cpu:.1f} s")
        out(f"CPU: PostgreSQL          {postgres_cpu:.1f} s")
        out("master's CPU time by component (sampled):")
        for component, seconds in sorted(busy.items(),
                                         key=lambda kv: -kv[1]):
            out(f"  {component:30} {seconds:7.1f} s  "
                f"{seconds / sampled:6.1%}")
        out(f"follower's share of the master's CPU: "
            f"{busy.get('follower', 0) / sampled:.0%} (its own code; the "
            f"reactor, HTTP and database driver work it causes is most of "
            f"the rest)")
        out("database functions by total time:")
        for name, calls, total in run_sql(
                dsn, "SELECT funcname, calls, total_time "
                "FROM pg_stat_user_functions ORDER BY total_time DESC "
                "LIMIT 8"):
            out(f"  {name:28} {calls:8,} calls {total / 1000:7.1f} s")
        problems = compare(expected_state(args.events, args.seed),
                           recorded_state(dsn))
        if problems:
            out(f"database differs from the journal in {len(problems)} "
                f"packages, for example:")
            for problem in problems[:5]:
                out(f"  {problem}")
            return 1
        out("database matches the state the journal leads to")
        return 0
    finally:
        fake.kill()
        fake.wait()
        if args.keep:
            cluster.stop()
        else:
            cluster.destroy()
            import shutil
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
