"""Benchmark: write the whole site (every project's pages, build logs and
simple index, then the site pages) for a generated database, and measure
pages per second and the longest reactor stall while it runs.

See bench/README.md.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from piwtwist.db.client import Database  # noqa: E402
from piwtwist.db.pool import ConnectionPool  # noqa: E402
from piwtwist.db.schema import create_script  # noqa: E402
from piwtwist.devcluster import PrivateCluster  # noqa: E402
from piwtwist.web.page_writer import PageWriter  # noqa: E402
from tests.web_support import GENERATE_SITE, StallMonitor  # noqa: E402

MASTER_ROLE = "piwheels"
DBNAME = "piwheels_pages"


def out(line=""):
    print(line, flush=True)


def count_files(output):
    """{kind: count} of what is in the output tree."""
    counts = {"pages": 0, "logs": 0, "other": 0}
    size = 0
    for directory, _, names in os.walk(output):
        for name in names:
            size += os.path.getsize(os.path.join(directory, name))
            if name.endswith((".html", ".json", ".xml")):
                counts["pages"] += 1
            elif name.endswith(".txt.gz"):
                counts["logs"] += 1
            else:
                counts["other"] += 1
    return counts, size


class PagesBenchmark:
    def __init__(self, args):
        self.args = args
        self.directory = Path(tempfile.mkdtemp(prefix="piwtwist-pages-"))
        os.chmod(self.directory, 0o755)
        self.cluster = PrivateCluster(self.directory / "pg")
        self.output = self.directory / "www"

    def prepare(self):
        a = self.args
        self.cluster.start()
        self.cluster.psql(f"CREATE ROLE {MASTER_ROLE} LOGIN")
        self.cluster.psql(f"CREATE DATABASE {DBNAME}")
        conn = psycopg2.connect(self.cluster.dsn(DBNAME))
        try:
            with conn, conn.cursor() as cursor:
                cursor.execute(create_script(MASTER_ROLE))
            started = time.perf_counter()
            with conn, conn.cursor() as cursor:
                cursor.execute(GENERATE_SITE, {
                    "packages": a.packages, "versions": a.versions,
                    "files": a.files})
                cursor.execute("SELECT (SELECT count(*) FROM packages), "
                               "(SELECT count(*) FROM versions), "
                               "(SELECT count(*) FROM builds), "
                               "(SELECT count(*) FROM files)")
                self.rows = cursor.fetchone()
        finally:
            conn.close()
        out(f"generated {self.rows[0]:,} packages, {self.rows[1]:,} "
            f"versions, {self.rows[2]:,} builds, {self.rows[3]:,} files in "
            f"{time.perf_counter() - started:.1f}s")

    async def write(self, reactor, label):
        pool = ConnectionPool(self.cluster.dsn(DBNAME, MASTER_ROLE), reactor,
                              size=self.args.connections)
        pool.startService()
        await pool.ready
        writer = PageWriter(Database(pool), self.output, reactor,
                            rewrite_all_at_start=False,
                            concurrency=self.args.concurrency,
                            render_processes=self.args.render_processes,
                            site_url="https://piwheels.example.org/")
        writer.startService()
        await writer.wait_until_idle()
        monitor = StallMonitor(reactor)
        monitor.start()
        cpu, started = time.process_time(), time.perf_counter()
        projects = await writer.rewrite_all()
        took = time.perf_counter() - started
        cpu = time.process_time() - cpu
        monitor.stop()
        await writer.stopService()
        await pool.stopService()
        counts, size = count_files(self.output)
        pages = projects * 4 + 8
        out(f"{label}: {projects:,} projects in {took:.1f}s "
            f"({projects / took:,.0f} projects/s, {pages / took:,.0f} "
            f"pages/s; master CPU {cpu:.1f}s)")
        out(f"  longest reactor stall {monitor.longest * 1000:.1f} ms "
            f"({monitor.samples:,} samples every "
            f"{monitor.interval * 1000:.0f} ms)")
        out(f"  output tree: {counts['pages']:,} pages, {counts['logs']:,} "
            f"build logs, {size / 1e6:,.0f} MB")
        return took, monitor.longest

    def run(self):
        from twisted.internet import defer, task

        a = self.args
        out("piwtwist page writer benchmark")
        out("==============================")
        out(f"{a.packages:,} packages x {a.versions} versions x {a.files} "
            f"files; {a.concurrency} projects at a time over "
            f"{a.connections} database connections")
        try:
            self.prepare()

            async def both(reactor):
                await self.write(reactor, "first run (logs written too)")
                await self.write(reactor, "second run (pages only)")

            task.react(lambda reactor: defer.ensureDeferred(both(reactor)))
        finally:
            if not a.keep:
                self.cluster.destroy()
                shutil.rmtree(self.directory, ignore_errors=True)
            else:
                out(f"kept {self.directory}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packages", type=int, default=10_000)
    parser.add_argument("--versions", type=int, default=5)
    parser.add_argument("--files", type=int, default=3, choices=(1, 2, 3, 4))
    parser.add_argument("--concurrency", type=int, default=4,
                        help="projects written at once (default 4)")
    parser.add_argument("--connections", type=int, default=2,
                        help="database connections (default 2, as the "
                             "master)")
    parser.add_argument("--render-processes", type=int, default=1,
                        help="page-rendering worker processes (default 1, "
                             "as the master on 2 cores; 0: in the master)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the cluster and the output tree")
    args = parser.parse_args(argv)
    PagesBenchmark(args).run()


if __name__ == "__main__":
    main()
