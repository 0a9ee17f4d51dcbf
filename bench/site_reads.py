#!/usr/bin/env python3
"""Time the master's whole-site reads on a PyPI-sized database.

The statistics service calls get_statistics() every minute, and the page
writer get_all_packages() and get_search_index() for the root of the
simple index and the search index.  This times each of them as the
master's role on the database bench/build_queue.py generates (the same
--scale and --dir: a kept cluster is reused, not generated again), cold
(server just restarted) and warm, and times each figure of
get_statistics() on its own, to show which scans the time goes to.

    .venv/bin/python bench/site_reads.py --scale 0.01
    .venv/bin/python bench/site_reads.py --dir /var/tmp/piwtwist-bench

The generator records no downloads, so the two download figures (and the
search index's download columns) are measured over empty tables here.
Issue 15's target: get_statistics() under 1 s at PyPI's size.
"""

import argparse
import re
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


def statistics_parts():
    """Each scalar subquery of get_statistics(), from the schema script."""
    script = (ROOT / "sql" / "create_piwheels.sql").read_text()
    body = script.split("CREATE FUNCTION get_statistics()", 1)[1]
    body = body.split("$sql$", 2)[1]
    select = body.strip()[len("SELECT"):]
    parts, depth, current = [], 0, ""
    for char in select:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return [re.sub(r"\s+", " ", p) for p in parts if p]


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
        out("get_statistics(), figure by figure (warm, as the superuser):")
        conn = self.superuser()
        for part in statistics_parts():
            took = min(self.timed(conn, f"SELECT {part}")[0]
                       for _ in range(3))
            shown = part if len(part) <= 70 else part[:67] + "..."
            out(f"  {fmt_ms(took):>12}  {shown}")
        conn.close()
        out()
        figure = results["get_statistics()"]
        verdict = "meets" if figure < TARGET_SECONDS else "misses"
        out(f"RESULT: warm get_statistics() {fmt_ms(figure)} at scale "
            f"{self.scale:g}: {verdict} the target of {TARGET_SECONDS:g} s "
            f"(ratio {figure / TARGET_SECONDS:.3f})")


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
