#!/usr/bin/env python3
"""Time the master's whole-site reads on a PyPI-sized database.

The statistics service calls get_statistics() every minute, and the page
writer get_all_packages() and get_search_index() for the root of the
simple index and the search index.  This times each of them as the
master's role on the database bench/build_queue.py generates (the same
--scale and --dir: a kept cluster is reused, not generated again), cold
(server just restarted) and warm, and times each part of
get_statistics() on its own.  get_statistics() reads counters that
triggers keep up to date; this also checks its figures against plain
scans of the tables (what get_statistics() did before the counters, timed
too), and times what the counters cost recording a build.

    .venv/bin/python bench/site_reads.py --scale 0.01
    .venv/bin/python bench/site_reads.py --dir /var/tmp/piwtwist-bench

The generator records no downloads, so the two download figures (and the
search index's download columns) are measured over empty tables here.
Issue 15's target: get_statistics() under 1 s at PyPI's size.
"""

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.build_queue import (  # noqa: E402
    FULL_PACKAGES, FULL_VERSIONS, MASTER_ROLE, SERVER_SETTINGS, Bench,
    fmt_ms, out)

TARGET_SECONDS = 1.0
ROOT = Path(__file__).resolve().parent.parent

#: Whole-site reads the master makes, as it makes them.
CALLS = [
    ("get_statistics()", "SELECT * FROM get_statistics()"),
    ("get_all_packages()", "SELECT * FROM get_all_packages()"),
    ("get_search_index()", "SELECT * FROM get_search_index()"),
]


#: What get_statistics() reads, part by part.
STATISTICS_PARTS = [
    ("statistics_counters (every figure but two)",
     "SELECT SUM(packages), SUM(packages_built), SUM(versions), "
     "SUM(versions_tried), SUM(builds), SUM(builds_success), "
     "SUM(builds_time), SUM(files), SUM(files_size), SUM(downloads) "
     "FROM statistics_counters"),
    ("builds of the last hour (builds_built_at)",
     "SELECT COUNT(*) FROM builds "
     "WHERE built_at > CURRENT_TIMESTAMP - INTERVAL '1 hour'"),
    ("downloads of the last 30 days (download_counters)",
     "SELECT SUM(downloads) FROM download_counters "
     "WHERE day > (CURRENT_TIMESTAMP AT TIME ZONE 'UTC')::DATE - 30"),
]

#: get_statistics() as it was before the counters: a scan for every figure
SCANNED_STATISTICS = """
    SELECT
        (SELECT COUNT(*) FROM packages WHERE skip = ''),
        (SELECT COUNT(DISTINCT b.package) FROM builds b WHERE b.status),
        (SELECT COUNT(*) FROM packages p JOIN versions v USING (package)
         WHERE p.skip = '' AND v.skip = ''),
        (SELECT COUNT(*) FROM (SELECT DISTINCT package, version
                               FROM builds) t),
        (SELECT COUNT(*) FROM builds),
        (SELECT COUNT(*) FROM builds WHERE status),
        (SELECT COUNT(*) FROM builds
         WHERE built_at > CURRENT_TIMESTAMP - INTERVAL '1 hour'),
        (SELECT COALESCE(SUM(duration), INTERVAL '0') FROM builds),
        (SELECT COUNT(*) FROM files),
        (SELECT COALESCE(SUM(filesize), 0)::BIGINT FROM files),
        (SELECT COALESCE(SUM(d.downloads), 0)::BIGINT FROM downloads_daily d
         WHERE d.day > (CURRENT_TIMESTAMP AT TIME ZONE 'UTC')::DATE - 30),
        (SELECT COALESCE(SUM(t.downloads), 0)::BIGINT FROM download_totals t)
"""

#: The triggers that keep the build and file counters, switched off (in a
#: transaction that is rolled back) to time recording without them.
COUNTING_TRIGGERS = {
    "builds": ["builds_added", "builds_changed", "builds_removed"],
    "files": ["files_added", "files_changed", "files_removed"],
}

RECORDED_BUILDS = 200


class StatisticsBench(Bench):

    def run(self):
        out("piwtwist whole-site reads (get_statistics and friends)")
        out("=====================================================")
        out(f"scale {self.scale:g} ({round(FULL_PACKAGES * self.scale):,} "
            f"packages, ~{round(FULL_VERSIONS * self.scale):,} versions)")
        out(f"cluster: {self.directory} "
            f"({'kept' if self.kept else 'temporary, removed at the end'})")
        try:
            self.cluster.start(**SERVER_SETTINGS)
            meta = self.reusable_meta()
            if meta is None:
                meta = self.generate()
            else:
                out(f"reusing the database generated at scale "
                    f"{meta['scale']:g} on {meta['generated_at']}")
            for line in meta.get("summary", []):
                out(line)
            out()
            self.measure_calls()
        finally:
            if self.kept:
                self.cluster.stop()
            else:
                self.cluster.destroy()
                shutil.rmtree(self.directory, ignore_errors=True)

    def timed(self, conn, sql):
        started = time.monotonic()
        with conn.cursor() as cur:
            cur.execute(sql)
            rows = cur.fetchall()
        return time.monotonic() - started, len(rows)

    def measure_calls(self):
        runs = self.args.runs
        results = {}
        out(f"as {MASTER_ROLE!r}, cold = first call after a server "
            f"restart, warm = median of {runs}")
        for label, sql in CALLS:
            self.cluster.stop()
            self.cluster.start(**SERVER_SETTINGS)
            conn = self.master()
            cold, nrows = self.timed(conn, sql)
            warm = [self.timed(conn, sql)[0] for _ in range(runs)]
            conn.close()
            results[label] = statistics.median(warm)
            out(f"  {label:<22} {nrows:>9,} rows  cold {fmt_ms(cold):>12}  "
                f"warm {fmt_ms(statistics.median(warm)):>12}  "
                f"(max {fmt_ms(max(warm))})")
        out()
        out("get_statistics(), part by part (warm, best of 3, as the "
            "superuser):")
        conn = self.superuser()
        for label, sql in STATISTICS_PARTS:
            took = min(self.timed(conn, sql)[0] for _ in range(3))
            out(f"  {fmt_ms(took):>12}  {label}")
        out()
        self.compare_with_scans(conn)
        self.time_recording(conn)
        conn.close()
        figure = results["get_statistics()"]
        verdict = "meets" if figure < TARGET_SECONDS else "misses"
        out(f"RESULT: warm get_statistics() {fmt_ms(figure)} at scale "
            f"{self.scale:g}: {verdict} the target of {TARGET_SECONDS:g} s "
            f"(ratio {figure / TARGET_SECONDS:.3f})")


    def compare_with_scans(self, conn):
        """get_statistics()'s figures against plain scans of the tables."""
        with conn.cursor() as cur:
            cur.execute("SELECT * FROM get_statistics()")
            names = [d.name for d in cur.description]
            kept = cur.fetchone()
        started = time.monotonic()
        with conn.cursor() as cur:
            cur.execute(SCANNED_STATISTICS)
            scanned = cur.fetchone()
        took = time.monotonic() - started
        out(f"the same figures by plain scans (get_statistics() before the "
            f"counters): {fmt_ms(took)}")
        wrong = [f"{name} {k} (scans: {s})"
                 for name, k, s in zip(names, kept, scanned) if k != s]
        if wrong:
            out("  DISAGREE: " + "; ".join(wrong))
        else:
            out(f"  agree on all {len(names)} figures: "
                + ", ".join(f"{n} {v}" for n, v in zip(names, kept)))
        out()

    def time_recording(self, conn):
        """What the counters cost recording builds: RECORDED_BUILDS builds
        (half failures, half successes with a wheel) of releases without
        one, in a transaction rolled back, with the counting triggers and
        without them."""
        with conn.cursor() as cur:
            cur.execute("""
                SELECT v.package, v.version FROM versions v
                WHERE v.skip = '' AND NOT EXISTS (
                    SELECT 1 FROM builds b
                    WHERE b.package = v.package AND b.version = v.version)
                LIMIT %s""", (RECORDED_BUILDS,))
            releases = cur.fetchall()

        def record(counting):
            with conn.cursor() as cur:
                cur.execute("BEGIN")
                if not counting:
                    for table, triggers in COUNTING_TRIGGERS.items():
                        for trigger in triggers:
                            cur.execute(f"ALTER TABLE {table} "
                                        f"DISABLE TRIGGER {trigger}")
                started = time.monotonic()
                for i, (package, version) in enumerate(releases):
                    if i % 2:
                        cur.execute(
                            "SELECT log_build_failure(%s, %s, 1, "
                            "INTERVAL '42 seconds', 'cp311', 'log')",
                            (package, version))
                        continue
                    tag = package.replace("-", "_")
                    name = f"{tag}-{version}-py3-none-any.whl"
                    files = json.dumps([{
                        "filename": name, "filesize": 1234,
                        "filehash": "ab" * 32, "package_tag": tag,
                        "package_version_tag": version,
                        "py_version_tag": "py3", "abi_tag": "none",
                        "platform_tag": "any"}])
                    cur.execute(
                        "SELECT log_build_success(%s, %s, 1, "
                        "INTERVAL '42 seconds', 'cp311', 'log', %s)",
                        (package, version, files))
                took = time.monotonic() - started
                cur.execute("ROLLBACK")
            return took / len(releases)

        if not releases:
            out("no releases without builds to time recording with")
            return
        record(True)            # warm the pages they touch
        rounds = {True: [], False: []}
        for _ in range(3):
            for counting in (True, False):
                rounds[counting].append(record(counting))
        with_counters = min(rounds[True])
        without = min(rounds[False])
        out(f"recording a build ({len(releases)} builds of releases "
            f"without one, half with a wheel; best of 3 rounds):")
        out(f"  {fmt_ms(with_counters)} a build with the counting triggers, "
            f"{fmt_ms(without)} without: the counters cost "
            f"{fmt_ms(with_counters - without)} a build")
        out()


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Time get_statistics(), get_all_packages() and "
                    "get_search_index() on a PyPI-sized database.")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of PyPI's size (default 1.0)")
    parser.add_argument("--dir", default=None,
                        help="bench/build_queue.py's kept cluster (reused "
                             "at the same scale; default: a temporary one)")
    parser.add_argument("--runs", type=int, default=5,
                        help="warm runs of each call (default 5)")
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 10:
        parser.error("--scale must be in (0, 10]")
    # Bench reads these
    args.limit = 1000
    args.plan_lines = 0
    StatisticsBench(args).run()


if __name__ == "__main__":
    main()
