#!/usr/bin/env python3
"""Issue 15's benchmark: a real twistd master on a PyPI-sized database.

On the database bench/build_queue.py generates (same --scale and --dir: a
kept cluster is reused), this runs the master the way an operator does
(``twistd -n piwheels-master``, not --dev-mode, as the piwheels user when
we are root) on a copy of that database, so that the builds, packages and
pages it records never reach the generated one, and measures:

1. a first start on an empty output tree: seconds to the master's "ready"
   line, to serving the root of the simple index over HTTP, to handing out
   the first build, and the full rewrite it does (pages/s);
2. a second start with nothing changed: the same times, and how many
   index and project files were rewritten (their mtimes; target 0);
   then a start after an upgrade (the site generation changed, as new
   templates would): the full rewrite of an existing tree with nothing
   else to do, the rate issue 15's one-hour target is about;
3. ``--minutes`` of mixed load: the follower catching up a fake PyPI's
   journal (``--events``, 50,000 by default), ``--builders`` simulated
   builders (bench/scale_builders.py, another process) building and
   sending small real wheels, a full rewrite asked for with ``piw-rebuild
   index``, statistics refreshing every minute: the longest reactor stall
   (the master's stall detector, from its log), p99 idle -> BUILD latency,
   builds recorded per second, the rewrite's pages/s;
4. ``get_statistics()`` timed directly (as site_reads.py does), under load
   and afterwards;

then prints every figure against issue 15's targets.

    .venv/bin/python bench/scale.py --scale 0.01 --minutes 2 \
        --dir /var/tmp/piwtwist-bench-scale
    .venv/bin/python bench/scale.py --dir /var/tmp/piwtwist-bench

See bench/README.md.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.build_queue import (  # noqa: E402
    DBNAME, FULL_PACKAGES, FULL_VERSIONS, MASTER_ROLE, SERVER_SETTINGS,
    Bench, fmt_ms, out)
from piwtwist.db.schema import create_script  # noqa: E402
from piwtwist.service_user import as_user, own, service_user  # noqa: E402
from piwtwist.web.generation import read_generation  # noqa: E402
from tests.fake_pypi import FIRST_SERIAL  # noqa: E402

#: the master's copy of the generated database (dropped at the end)
COPY_DBNAME = "piwheels_scale"
WORKDIR_NAME = "scale"
BIN = Path(sys.executable).parent
TWISTD = BIN / "twistd"

TARGET_SERVING = 30.0
TARGET_STALL = 0.1
TARGET_STATISTICS = 1.0
TARGET_REWRITE = 3600.0
FILES_PER_PROJECT = 3

STALL_LINE = re.compile(
    r"longest reactor stall in the last (\d+)s: (\d+) ms")
REWRITE_LINE = re.compile(
    r"wrote the pages of (\d+) projects in ([\d.]+)s")
AUDIT_LINE = re.compile(r"tree audit: .*")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def verdict(ok):
    return "MEETS" if ok else "MISSES"


def percentile(samples, fraction):
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def project_files(output):
    """mtime of every index and project file of the tree: the root of the
    simple index and everything under simple/<p>/ and project/<p>/
    except wheels (which are never rewritten, only published)."""
    found = {}
    for top in ("simple", "project"):
        base = output / top
        if not base.is_dir():
            continue
        for dirpath, _, filenames in os.walk(base):
            for name in filenames:
                if name.endswith(".whl"):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    found[path] = os.stat(path).st_mtime_ns
                except FileNotFoundError:
                    pass
    return found


def other_files(output):
    """mtime of the site's other files (home, statistics, search index,
    sitemap, static pages); build logs left out."""
    found = {}
    for path in output.iterdir():
        if path.is_file():
            found[str(path)] = path.stat().st_mtime_ns
    return found


class Master:
    """One ``twistd -n piwheels-master`` process and its log."""

    def __init__(self, bench, label, extra=()):
        self.bench = bench
        self.label = label
        self.log_path = bench.work / f"master-{label}.log"
        for old in self.log_files():
            old.unlink()
        command = [
            str(TWISTD), "-n", "--pidfile=", f"--logfile={self.log_path}",
            "piwheels-master", "-c", os.devnull,
            "-d", bench.master_dsn, "-o", str(bench.output),
            "--build-abi", "cp311", "--build-abi", "cp313",
            "--builder-queue", f"tcp:{bench.builder_port}:"
                               f"interface=127.0.0.1",
            "--http-endpoint", f"tcp:{bench.http_port}:interface=127.0.0.1",
            "--secret-file", str(bench.secret),
            "--import-queue", f"unix:{bench.work / 'import.sock'}",
            "--control-queue", f"unix:{bench.work / 'control.sock'}",
            "--log-queue", f"unix:{bench.work / 'logger.sock'}",
            "--db-pool-size", str(bench.args.db_pool_size),
            *extra,
        ]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "HOME": str(bench.work), "LANG": "C.UTF-8",
               # the code as it was when the run began (see prepare_tree)
               "PYTHONPATH": str(bench.code)}
        self.started = time.time()
        self.process = subprocess.Popen(
            command, cwd=bench.work, env=env, start_new_session=True,
            stdout=open(bench.work / f"master-{label}.out", "wb"),
            stderr=subprocess.STDOUT, **as_user(bench.user))

    def log_files(self):
        """The log and the parts twistd rotated away (every 1 MB),
        oldest first."""
        rotated = sorted(
            self.log_path.parent.glob(self.log_path.name + ".*"),
            key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit()
            else 0)
        return [*rotated, *([self.log_path] if self.log_path.exists()
                            else [])]

    def log(self):
        parts = []
        for path in self.log_files():
            try:
                parts.append(path.read_text(errors="replace"))
            except FileNotFoundError:
                pass
        return "".join(parts)

    def alive(self):
        return self.process.poll() is None

    def check(self):
        if not self.alive():
            tail = "\n".join(self.log().splitlines()[-30:])
            out_text = (self.bench.work / f"master-{self.label}.out"
                        ).read_text(errors="replace")
            raise SystemExit(f"the master ({self.label}) exited with "
                             f"{self.process.returncode}:\n{out_text}\n"
                             f"{tail}")

    def stop(self, timeout=120):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return time.time()

    def stalls(self):
        """(interval seconds, stall ms) of every stall detector line."""
        return [(int(a), int(b)) for a, b in STALL_LINE.findall(self.log())]

    def rewrites(self):
        return [(int(n), float(s)) for n, s in
                REWRITE_LINE.findall(self.log())]


class Builders:
    """bench/scale_builders.py in a process of its own."""

    def __init__(self, bench, label, count, first, once=False,
                 report=True):
        self.result = bench.work / f"builders-{label}.json"
        self.result.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "scale_builders.py"),
             "--port", str(bench.builder_port), "--secret-file",
             str(bench.secret), "--builders", str(count), "--first",
             str(first), "--result", str(self.result),
             *(["--first-build-only"] if once else []),
             *([] if report else ["--no-report"])],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=open(bench.work / f"builders-{label}.err", "wb"),
            text=True)

    def wait_ready(self):
        line = self.process.stdout.readline().strip()
        if line != "ready":
            self.process.kill()
            raise SystemExit(f"the simulated builders did not start "
                             f"({line!r}); see builders-*.err")

    def finish(self, timeout=600):
        """Close stdin (the builders finish the build in hand and leave)
        and return their figures."""
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        try:
            return json.loads(self.result.read_text())
        except (OSError, ValueError):
            return None


class ScaleBench(Bench):

    def __init__(self, args):
        super().__init__(args)
        self.work = self.directory / WORKDIR_NAME
        self.output = self.work / "www"
        self.secret = self.work / "secret"
        self.code = self.work / "code"
        self.user = service_user()
        self.builder_port = free_port()
        self.http_port = free_port()
        self.master_dsn = self.cluster.dsn(COPY_DBNAME, MASTER_ROLE)
        self.figures = {}

    # -- set-up ---------------------------------------------------------

    def schema_is_current(self):
        """Whether the generated database has every table and function the
        current schema script creates (a kept database may predate
        changes to it; the master would then fail or measure old code)."""
        script = create_script(MASTER_ROLE)
        functions = set(re.findall(
            r"CREATE (?:OR REPLACE )?FUNCTION\s+(\w+)", script))
        tables = set(re.findall(
            r"CREATE (?:UNLOGGED )?TABLE\s+(?:IF NOT EXISTS\s+)?(\w+)",
            script))
        conn = self.superuser()
        with conn.cursor() as cur:
            cur.execute("SELECT proname FROM pg_proc p JOIN pg_namespace n "
                        "ON n.oid = p.pronamespace "
                        "WHERE nspname = 'public'")
            have_functions = {r[0] for r in cur.fetchall()}
            cur.execute("SELECT tablename FROM pg_tables "
                        "WHERE schemaname = 'public'")
            have_tables = {r[0] for r in cur.fetchall()}
        conn.close()
        missing = sorted((functions - have_functions)
                         | (tables - have_tables))
        return missing

    def prepare_database(self):
        meta = self.reusable_meta()
        if meta is not None:
            missing = self.schema_is_current()
            if missing:
                out(f"the kept database lacks {', '.join(missing[:8])}"
                    f"{' ...' if len(missing) > 8 else ''} of the current "
                    f"schema: generating it again")
                self.meta_path.unlink()
                meta = self.reusable_meta()
        if meta is None:
            meta = self.generate()
        else:
            out(f"reusing the database generated at scale {meta['scale']:g} "
                f"on {meta['generated_at']}")
        for line in meta.get("summary", []):
            out(line)
        out()
        started = time.monotonic()
        conn = self.connect(dbname="postgres")
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {COPY_DBNAME}")
            cur.execute(f"CREATE DATABASE {COPY_DBNAME} "
                        f"TEMPLATE {DBNAME} STRATEGY FILE_COPY")
        conn.close()
        out(f"copied {DBNAME} to {COPY_DBNAME} for the master in "
            f"{time.monotonic() - started:.1f} s (the generated database "
            f"stays as it was)")
        conn = self.connect(dbname=COPY_DBNAME)
        with conn.cursor() as cur:
            cur.execute("SELECT EXISTS (SELECT 1 FROM build_queue)")
            if not cur.fetchone()[0]:
                t = time.monotonic()
                cur.execute("SELECT rebuild_build_queue()")
                out(f"rebuild_build_queue() on the copy: "
                    f"{time.monotonic() - t:.1f} s")
            cur.execute("VACUUM ANALYZE build_queue")
            cur.execute("SELECT count(*) FROM build_queue")
            out(f"build queue of the copy: {cur.fetchone()[0]:,} entries")
        conn.close()

    def prepare_tree(self):
        if self.work.exists():
            # a tree of a tenth of PyPI is 600,000 files, minutes to delete:
            # renamed aside at once, deleted meanwhile at idle I/O priority
            doomed = self.work.with_name(f"{self.work.name}.old-{os.getpid()}")
            os.replace(self.work, doomed)
            subprocess.Popen(["ionice", "-c3", "rm", "-rf", str(doomed)],
                             start_new_session=True)
        self.work.mkdir(parents=True)
        os.chmod(self.work, 0o755)
        self.output.mkdir()
        # The masters run a copy of the package taken now: other commits
        # landing during a run would otherwise change the site generation
        # between the starts and turn the unchanged restart into a full
        # rewrite.  (Templates and SQL come along: the links are followed.)
        shutil.copytree(ROOT / "piwtwist", self.code / "piwtwist",
                        ignore=shutil.ignore_patterns("__pycache__"))
        self.secret.write_text(os.urandom(24).hex() + "\n")
        os.chmod(self.secret, 0o640)
        own(self.work, self.user)

    def drop_copy(self):
        shutil.rmtree(self.code, ignore_errors=True)
        if self.args.keep_copy:
            out(f"kept {COPY_DBNAME} and {self.work} (--keep-copy)")
            return
        try:
            conn = self.connect(dbname="postgres")
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {COPY_DBNAME}")
            conn.close()
        except Exception as e:   # noqa: BLE001 - the cluster may be gone
            out(f"(could not drop {COPY_DBNAME}: {e})")
        shutil.rmtree(self.work / "www", ignore_errors=True)

    # -- measurements -----------------------------------------------------

    def index_served(self):
        """Whether the root of the simple index is written and served."""
        if not (self.output / "simple" / "index.html").exists():
            return False
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.http_port}/simple/",
                    timeout=5) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def time_statistics(self, runs=3):
        conn = self.connect(MASTER_ROLE, dbname=COPY_DBNAME)
        times = []
        with conn.cursor() as cur:
            for _ in range(runs):
                t = time.monotonic()
                cur.execute("SELECT * FROM get_statistics()")
                cur.fetchall()
                times.append(time.monotonic() - t)
        conn.close()
        return times

    def copy_sql(self, sql, params=None):
        conn = self.connect(dbname=COPY_DBNAME)
        with conn.cursor() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall() if cur.description else None
        conn.close()
        return rows

    def start(self, label, title, wait_rewrite):
        """Start a master, time serving and the first build; with
        *wait_rewrite*, wait for its full rewrite at start."""
        out(title)
        master = Master(self, label, ["--no-pypi-follow"])
        # on a restart the probe leaves without reporting its build, so
        # that no page changes because of it
        probe = Builders(self, f"{label}-probe", 1, 900, once=True,
                         report=wait_rewrite)
        served = ready = first_build = None
        audit = None
        deadline = time.time() + self.args.start_timeout
        while time.time() < deadline:
            master.check()
            now = time.time()
            log = master.log()
            if ready is None and "piwtwist master ready" in log:
                ready = now - master.started
            if served is None and self.index_served():
                served = now - master.started
            if first_build is None and probe.process.poll() is not None:
                figures = probe.finish()
                if figures and figures.get("first_build_at"):
                    first_build = figures["first_build_at"] - master.started
                else:
                    first_build = float("nan")
            if audit is None:
                found = AUDIT_LINE.search(log)
                if found:
                    audit = found.group(0)
            # the generation file is written once a full rewrite is done
            rewritten = read_generation(self.output) is not None and \
                master.rewrites()
            if served is not None and first_build is not None and \
                    (rewritten if wait_rewrite else audit is not None):
                break
            time.sleep(0.2)
        else:
            probe.process.kill()
            master.stop()
            raise SystemExit(f"{label}: not served, given a build and "
                             f"audited within {self.args.start_timeout} s; "
                             f"see {master.log_path}")
        if probe.process.poll() is None:
            probe.finish()

        def show(what, value, target=None):
            if value is None:
                out(f"  {what:<44} never")
            elif target is None:
                out(f"  {what:<44} {value:8.1f} s")
            else:
                out(f"  {what:<44} {value:8.1f} s  (target < {target:g} s: "
                    f"{verdict(value < target)})")

        show("master ready (its log line)", ready)
        show("root of the simple index served over HTTP", served,
             TARGET_SERVING)
        show("first build handed out", first_build, TARGET_SERVING)
        out(f"  {audit}")
        return master, {"ready": ready, "served": served,
                        "first_build": first_build}

    def phase_first_start_partly(self):
        """The first start for --first-minutes only (at PyPI's size the
        whole rewrite takes hours): the serving times, then the rewrite's
        rate from the project pages written so far."""
        minutes = self.args.first_minutes
        master, times = self.start(
            "first", f"1. First start, empty output tree, stopped after "
            f"{minutes:g} min (the rewrite's rate so far)", wait_rewrite=False)
        while time.time() < master.started + minutes * 60:
            master.check()
            time.sleep(1.0)
        seconds = time.time() - master.started
        count = sum(1 for entry in os.scandir(self.output / "project")
                    if os.path.exists(os.path.join(entry.path, "index.html")))
        rate = count * FILES_PER_PROJECT / seconds
        out(f"  rewrite at start: {count:,} of the projects in "
            f"{seconds:.1f} s = {count / seconds:,.0f} projects/s, "
            f"{rate:,.0f} pages/s (build logs written too)")
        master.stop()
        self.report_stalls("  ", master)
        out()
        self.figures["first"] = dict(times, rewrite=(count, seconds))

    def phase_first_start(self):
        master, times = self.start(
            "first", "1. First start, empty output tree (every page written)",
            wait_rewrite=True)
        count, seconds = self.report_rewrite(
            master, "full rewrite at start", "project page, JSON and simple "
            "index; build logs written too, the first time")
        # what was queued meanwhile (the reclassifier's pages, the probe's
        # build) is written before the stop, as after any long run
        drained = self.wait_drained(master)
        out(f"  pending page rewrites drained {drained:.1f} s after the "
            f"full rewrite" if drained is not None else
            f"  pending page rewrites NOT drained within "
            f"{self.args.settle * 3:g} s")
        master.stop()
        self.report_stalls("  ", master)
        out()
        self.figures["first"] = dict(times, rewrite=(count, seconds))

    @staticmethod
    def report_rewrite(master, what, note):
        """Print the master's last full rewrite; its (projects, seconds)."""
        (count, seconds), = master.rewrites()[-1:]
        rate = count * FILES_PER_PROJECT / seconds if seconds else 0
        out(f"  {what}: {count:,} projects in {seconds:.1f} s = "
            f"{count / seconds:,.0f} projects/s, {rate:,.0f} pages/s "
            f"({note})")
        return count, seconds

    def wait_drained(self, master):
        """Wait --settle seconds, then until the page writer's saved queue
        (rewrites_pending) stays empty; the seconds waited or None."""
        started = time.monotonic()
        time.sleep(self.args.settle)
        empty = 0
        while time.monotonic() - started < self.args.settle * 3:
            master.check()
            count = self.copy_sql("SELECT count(*) FROM rewrites_pending"
                                  )[0][0]
            empty = empty + 1 if count == 0 else 0
            if empty >= 3:
                return time.monotonic() - started
            time.sleep(2.0)
        return None

    def phase_restart(self):
        before = project_files(self.output)
        before_other = other_files(self.output)
        master, times = self.start(
            "restart", "2. Second start, nothing changed", wait_rewrite=False)
        # let what the start queued (saved rewrites, the audit's stale
        # pages, the rate-limited jobs) run
        time.sleep(self.args.settle)
        master.stop()
        after = project_files(self.output)
        after_other = other_files(self.output)
        changed = sorted(p for p, m in after.items() if before.get(p) != m)
        other = sorted(os.path.basename(p) for p, m in after_other.items()
                       if before_other.get(p) != m)
        ok = not changed
        out(f"  index and project files rewritten: {len(changed):,} of "
            f"{len(after):,} (target 0: {verdict(ok)})")
        for path in changed[:10]:
            out(f"    {os.path.relpath(path, self.output)}")
        out(f"  other files rewritten (home, statistics, search index...): "
            f"{', '.join(other) or 'none'}")
        self.report_stalls("  ", master)
        out()
        self.figures["restart"] = dict(times, changed=len(changed),
                                       files=len(after))

    def phase_upgrade(self):
        """A start whose site generation differs from the tree's (what an
        upgrade with new templates does): a full rewrite over the pages
        and logs already there, nothing else running."""
        generation = self.output / ".generation"
        generation.write_text("an older release of piwtwist\n")
        master, times = self.start(
            "upgrade", "2b. Start after an upgrade (site generation "
            "changed): full rewrite of the tree", wait_rewrite=True)
        count, seconds = self.report_rewrite(master, "full rewrite",
                                             "logs already there")
        master.stop()
        self.report_stalls("  ", master)
        out()
        self.figures["upgrade"] = dict(times, rewrite=(count, seconds))

    def phase_load(self):
        minutes = self.args.minutes
        out(f"3. Mixed load for {minutes:g} min: follower catching up "
            f"{self.args.events:,} journal events, {self.args.builders} "
            f"builders, a full rewrite (piw-rebuild index), statistics")
        fake = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_pypi", "--events",
             str(self.args.events), "--batch-size", "50000", "--seed", "1"],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        words = fake.stdout.readline().split()
        if not words or words[0] != "PORT":
            fake.kill()
            raise SystemExit("the fake PyPI did not start")
        facts = dict(zip(words[::2], words[1::2]))
        last_serial = int(facts["LAST"])
        url = f"http://127.0.0.1:{facts['PORT']}/pypi"
        self.copy_sql("UPDATE configuration SET pypi_serial = %s",
                      (FIRST_SERIAL - 1,))
        master = Master(self, "load", ["--pypi-xmlrpc", url,
                                       "--pypi-json", url])
        try:
            return self._load(master, fake, last_serial, minutes)
        finally:
            master.stop()
            fake.kill()
            fake.wait()

    def _load(self, master, fake, last_serial, minutes):
        while "piwtwist master ready" not in master.log():
            master.check()
            time.sleep(0.2)
        builders = Builders(self, "load", self.args.builders, 1)
        builders.wait_ready()
        packages = self.copy_sql("SELECT count(*) FROM packages")[0][0]
        rebuild_at = time.time()
        rebuild = subprocess.run(
            [str(BIN / "piw-rebuild"), "-c", os.devnull, "--yes",
             "--import-queue", f"unix:{self.work / 'import.sock'}",
             "index"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=120)
        out(f"  piw-rebuild index: {rebuild.stdout.strip()}")
        started = time.time()
        end = started + minutes * 60
        caught_up = None
        statistics_times = []
        next_statistics = started + 20
        while time.time() < end:
            master.check()
            if caught_up is None:
                serial = self.copy_sql(
                    "SELECT pypi_serial FROM configuration")[0][0]
                if serial >= last_serial:
                    caught_up = time.time() - started
                    out(f"  follower caught up ({self.args.events:,} "
                        f"events) after {caught_up:.1f} s: "
                        f"{self.args.events / caught_up:,.0f} events/s")
            if time.time() >= next_statistics:
                statistics_times.extend(self.time_statistics(1))
                next_statistics = time.time() + 30
            time.sleep(1.0)
        elapsed = time.time() - started
        rewritten = sum(1 for m in project_files(self.output).values()
                        if m / 1e9 >= rebuild_at)
        figures = builders.finish()
        master.stop()
        if caught_up is None:
            serial = self.copy_sql("SELECT pypi_serial FROM configuration"
                                   )[0][0]
            done = max(0, serial - (FIRST_SERIAL - 1))
            out(f"  follower NOT caught up: serial {serial:,} of "
                f"{last_serial:,} ({done:,} events) in {elapsed:.0f} s: "
                f"{done / elapsed:,.0f} events/s")
        stalls = master.stalls()
        longest = max((ms for _, ms in stalls), default=None)
        out(f"  stall detector lines: {len(stalls)} "
            f"({', '.join(f'{ms} ms' for _, ms in stalls)})")
        if longest is not None:
            out(f"  longest reactor stall: {longest} ms (target < "
                f"{TARGET_STALL * 1000:.0f} ms: "
                f"{verdict(longest < TARGET_STALL * 1000)})")
        latency = recorded = None
        if figures:
            latencies = figures["idle_to_build"]
            latency = percentile(latencies, 0.99)
            recorded = [t for t in figures["recorded_at"]
                        if started <= t <= started + elapsed]
            out(f"  builders connected: {figures['connected']}; builds "
                f"handed out {len(latencies):,}, recorded "
                f"{len(figures['recorded_at']):,}; SLEEPs "
                f"{figures['sleeps']:,}; lost {figures['lost']}, "
                f"Done timeouts {figures['done_timeouts']}, other "
                f"{figures['other'] or 'none'}, errors "
                f"{figures['errors'][:3] or 'none'}")
            if latencies:
                out(f"  idle -> BUILD latency: p50 "
                    f"{fmt_ms(percentile(latencies, 0.5))}, p99 "
                    f"{fmt_ms(latency)}, max {fmt_ms(max(latencies))}")
            done = figures["built_to_done"]
            if done:
                out(f"  Built -> Done (transfer, recording, publishing): "
                    f"p50 {fmt_ms(percentile(done, 0.5))}, p99 "
                    f"{fmt_ms(percentile(done, 0.99))}")
            out(f"  builds recorded per second: "
                f"{len(recorded) / elapsed:.1f}")
        else:
            out("  the simulated builders wrote no figures; see "
                "builders-load.err")
        rewrites = master.rewrites()
        if rewrites:
            count, seconds = rewrites[-1]
            finished = ("finished" if count >= packages else
                        f"stopped with the master, of {packages:,}")
            out(f"  full rewrite under load: {count:,} projects in "
                f"{seconds:.1f} s ({finished}) = "
                f"{count * FILES_PER_PROJECT / seconds:,.0f} pages/s")
        else:
            count, seconds = rewritten / FILES_PER_PROJECT, elapsed
            out(f"  full rewrite under load not finished: {rewritten:,} "
                f"index and project files written in {elapsed:.0f} s")
        if statistics_times:
            out(f"  get_statistics() under load: "
                + ", ".join(fmt_ms(t) for t in statistics_times))
        out()
        self.figures["load"] = dict(
            longest=longest, latency=latency,
            per_second=len(recorded) / elapsed if recorded is not None
            else None, rewrite=(count, seconds),
            statistics=statistics_times, caught_up=caught_up)

    def report_stalls(self, indent, master):
        stalls = master.stalls()
        if stalls:
            out(f"{indent}longest reactor stall per interval: "
                + ", ".join(f"{ms} ms" for _, ms in stalls))
        else:
            out(f"{indent}(no stall detector line: it reports once a "
                f"minute)")

    def summary(self):
        out("RESULTS against issue 15's targets "
            f"(scale {self.scale:g}; rewrite times scaled to "
            f"{FULL_PACKAGES:,} projects)")
        rows = []
        first = self.figures.get("first", {})
        restart = self.figures.get("restart", {})
        upgrade = self.figures.get("upgrade", {})
        load = self.figures.get("load", {})
        quiet = self.time_statistics(3)
        stats = statistics.median(quiet)

        def row(what, value, target, ok):
            rows.append((what, value, target,
                         "n/a" if ok is None else verdict(ok)))

        for label, figures in (("first start", first),
                               ("unchanged restart", restart)):
            served = figures.get("served")
            row(f"serving the index, {label}",
                "never" if served is None else f"{served:.1f} s",
                f"< {TARGET_SERVING:g} s",
                None if served is None else served < TARGET_SERVING)
            build = figures.get("first_build")
            row(f"first build handed out, {label}",
                "never" if build is None else f"{build:.1f} s",
                f"< {TARGET_SERVING:g} s",
                None if build is None else build < TARGET_SERVING)
        if restart:
            row("pages rewritten on an unchanged restart",
                f"{restart['changed']:,} of {restart['files']:,}", "0",
                restart["changed"] == 0)
        if load:
            longest = load["longest"]
            row("longest reactor stall under load",
                "no report" if longest is None else f"{longest} ms",
                f"< {TARGET_STALL * 1000:.0f} ms",
                None if longest is None else longest < TARGET_STALL * 1000)
            latency = load["latency"]
            row("p99 idle -> BUILD latency",
                "none" if latency is None else fmt_ms(latency),
                "(no target)", None)
            per_second = load["per_second"]
            row("builds recorded per second",
                "none" if per_second is None else f"{per_second:.1f}",
                "(no target)", None)
        row("get_statistics(), quiet (median of 3)", fmt_ms(stats),
            f"< {TARGET_STATISTICS:g} s", stats < TARGET_STATISTICS)
        if load and load["statistics"]:
            worst = max(load["statistics"])
            row("get_statistics(), under load (worst)", fmt_ms(worst),
                f"< {TARGET_STATISTICS:g} s", worst < TARGET_STATISTICS)
        for label, figures in (("first start, logs too", first),
                               ("after an upgrade", upgrade),
                               ("under load", load)):
            if not figures or not figures.get("rewrite"):
                continue
            count, seconds = figures["rewrite"]
            if not count or not seconds:
                continue
            pages = count * FILES_PER_PROJECT / seconds
            full = FULL_PACKAGES * seconds / count
            row(f"full rewrite, {label}",
                f"{pages:,.0f} pages/s -> {full / 60:,.0f} min",
                f">= {FULL_PACKAGES * FILES_PER_PROJECT / TARGET_REWRITE:,.0f}"
                f" pages/s (< 60 min)", full < TARGET_REWRITE)
        width = max(len(r[0]) for r in rows)
        vwidth = max(len(r[1]) for r in rows)
        twidth = max(len(r[2]) for r in rows)
        for what, value, target, result in rows:
            out(f"  {what:<{width}}  {value:>{vwidth}}  {target:<{twidth}}"
                f"  {result}")

    # -- the whole run ----------------------------------------------------

    def run(self):
        out("piwtwist at PyPI scale: a real master (issue 15)")
        out("================================================")
        out(f"scale {self.scale:g} ({round(FULL_PACKAGES * self.scale):,} "
            f"packages, ~{round(FULL_VERSIONS * self.scale):,} versions); "
            f"{os.cpu_count()} CPUs; cluster {self.directory} "
            f"({'kept' if self.kept else 'temporary'})")
        try:
            self.prepare_tree()
            self.cluster.start(**SERVER_SETTINGS)
            self.prepare_database()
            out(f"master: {TWISTD} -n piwheels-master as "
                f"{self.user or 'ourselves'}, --db-pool-size "
                f"{self.args.db_pool_size}, output {self.output}")
            out()
            if self.args.first_minutes:
                self.phase_first_start_partly()
                out("2. (restart and upgrade left out: the tree is "
                    "incomplete after --first-minutes)")
                out()
            else:
                self.phase_first_start()
                self.phase_restart()
                self.phase_upgrade()
            if self.args.minutes > 0:
                self.phase_load()
            self.summary()
        finally:
            try:
                self.drop_copy()
            finally:
                if self.kept:
                    self.cluster.stop()
                else:
                    self.cluster.destroy()
                    shutil.rmtree(self.directory, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Run a real master on a PyPI-sized database and "
                    "measure issue 15's figures.")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of PyPI's size (default 1.0)")
    parser.add_argument("--dir", default=None,
                        help="bench/build_queue.py's kept cluster (reused "
                             "at the same scale; default: a temporary one)")
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="minutes of mixed load (default 10; 0 skips "
                             "it)")
    parser.add_argument("--first-minutes", type=float, default=0.0,
                        help="stop the first start after this many minutes "
                             "and take the rewrite's rate so far, leaving "
                             "out the restart and upgrade (which need the "
                             "whole tree): for PyPI's size, where the "
                             "first rewrite takes hours")
    parser.add_argument("--events", type=int, default=50_000,
                        help="journal events the follower catches up "
                             "(default 50,000)")
    parser.add_argument("--builders", type=int, default=50,
                        help="simulated builders (default 50)")
    parser.add_argument("--db-pool-size", type=int, default=4,
                        help="the master's --db-pool-size (default 4)")
    parser.add_argument("--settle", type=float, default=20.0,
                        help="seconds the unchanged restart runs after "
                             "serving, given a build and audited")
    parser.add_argument("--start-timeout", type=float, default=4 * 3600.0,
                        help="longest wait for a start (the first one "
                             "includes the full rewrite)")
    parser.add_argument("--keep-copy", action="store_true",
                        help="leave the master's database copy and output "
                             "tree for inspection")
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 10:
        parser.error("--scale must be in (0, 10]")
    if args.minutes < 0 or args.builders < 1 or args.events < 1:
        parser.error("--minutes, --builders and --events must be positive")
    args.limit = 1000
    args.plan_lines = 0
    ScaleBench(args).run()


if __name__ == "__main__":
    main()
