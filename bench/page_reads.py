#!/usr/bin/env python3
"""Benchmark the page writer's reads on a PyPI-sized database (issue 15).

On the database bench/build_queue.py generates (the same --scale and
--dir: a kept cluster is reused), with the page writer as the master runs
it (a pool of 4 connections, the bulk lane, 4 projects at once), this
measures, old way against new:

* the root of the simple index and the search index (packages.json,
  packages.html, the sitemap): wall time and the longest stretch the
  reactor was held (a 2 ms timer's worst lateness).  Old: get_all_packages()
  and get_search_index() as lists of records on the reactor, rendered in a
  thread.  New: keyset pages of names and packages.json's text made by
  PostgreSQL, read a chunk at a time, rendered and written in pieces;
* project pages per second over a sample of projects spread over the
  whole database: the eight queries a project used to cost against
  get_project_page's one (each run after a first that wrote the logs);
* database reads alone, one project after another, old and new;
* the biggest project: decoding get_project_page's answer in the thread.

    .venv/bin/python bench/page_reads.py --scale 0.01
    .venv/bin/python bench/page_reads.py --scale 0.1 \\
        --dir /var/tmp/piwtwist-bench-pages

A database generated before these functions existed gets them (and the
search index's cache table) from the current schema first.  The generator
records no downloads, so every search index entry has 0 downloads.
"""

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.build_queue import (  # noqa: E402
    DBNAME, FULL_PACKAGES, FULL_VERSIONS, MASTER_ROLE, SERVER_SETTINGS,
    Bench, out)
from piwtwist.db.schema import create_script  # noqa: E402

#: What this benchmark needs of the current schema.
OWN_TABLES = ["search_index_chunks"]
OWN_FUNCTIONS = ["get_project_page", "get_build_outputs", "get_package_names",
                 "get_search_index_chunks", "prepare_search_index",
                 "get_search_index_text"]
#: issue 15's budget for one stall of the reactor
STALL_TARGET = 0.100


def schema_statements(script):
    """The CREATE statements of OWN_TABLES and OWN_FUNCTIONS in *script*,
    in the script's order."""
    found = []
    for name in OWN_TABLES:
        match = re.search(rf"CREATE UNLOGGED TABLE {name} \(.*?\n\);", script,
                          re.S)
        found.append((match.start(), f"DROP TABLE IF EXISTS {name}",
                      match.group(0)))
    for name in OWN_FUNCTIONS:
        match = re.search(
            rf"CREATE FUNCTION {name}\(.*?\n\$(sql|plpgsql)\$;", script, re.S)
        found.append((match.start(), f"DROP FUNCTION IF EXISTS {name}",
                      match.group(0)))
    return [(drop, create) for _, drop, create in sorted(found)]


class _EightQueries:
    """The old read's facts, in the shape the page writer takes."""

    def __init__(self, facts):
        self.facts = facts

    def build_ids(self):
        return [build.build_id for build in self.facts["builds"]]

    def decode(self):
        return dict(self.facts)


async def read_the_old_way(db, package):
    """What the page writer read before get_project_page: eight queries."""
    from piwtwist.web.page_writer import _gather
    (description, skip, versions, files, builds, dependencies, aliases,
     downloads) = await _gather(
        db.get_package_description(package), db.get_package_skip(package),
        db.get_project_versions(package), db.get_project_files(package),
        db.get_project_builds(package),
        db.get_project_dependencies(package),
        db.get_package_aliases(package), db.get_project_downloads(package))
    if description is None:
        return None
    return _EightQueries(dict(
        description=description, skip=skip, versions=versions, files=files,
        builds=builds, dependencies=dependencies, aliases=aliases,
        downloads=downloads))


class PageReadsBench(Bench):

    def run(self):
        a = self.args
        out("piwtwist page writer reads at scale")
        out("===================================")
        out(f"scale {self.scale:g} ({round(FULL_PACKAGES * self.scale):,} "
            f"packages, ~{round(FULL_VERSIONS * self.scale):,} versions); "
            f"{a.projects:,} sample projects, {a.concurrency} at a time "
            f"over a pool of {a.pool_size}")
        out(f"cluster: {self.directory} "
            f"({'kept' if self.kept else 'temporary, removed at the end'})")
        self.output = Path(tempfile.mkdtemp(prefix="piwtwist-page-reads-"))
        try:
            self.cluster.start(**SERVER_SETTINGS)
            meta = self.reusable_meta()
            if meta is None:
                meta = self.generate()
            else:
                out(f"reusing the database generated at scale "
                    f"{meta['scale']:g} on {meta['generated_at']}")
            self.install_functions()
            self.choose_projects()
            from twisted.internet import defer, task
            task.react(lambda reactor: defer.ensureDeferred(
                self.measure(reactor)))
        finally:
            shutil.rmtree(self.output, ignore_errors=True)
            if self.kept:
                self.cluster.stop()
            else:
                self.cluster.destroy()
                shutil.rmtree(self.directory, ignore_errors=True)

    def install_functions(self):
        """The current definitions of this benchmark's functions, in a
        database generated from an older schema."""
        conn = self.superuser()
        with conn.cursor() as cur:
            for drop, create in schema_statements(create_script(MASTER_ROLE)):
                cur.execute(drop)
                cur.execute(create)
            cur.execute(f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public "
                        f"TO {MASTER_ROLE}")
            cur.execute("ANALYZE search_index_chunks")
        conn.close()

    def choose_projects(self):
        conn = self.superuser()
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM packages")
            total = cur.fetchone()[0]
            step = max(1, total // self.args.projects)
            cur.execute(
                "SELECT package FROM (SELECT package, row_number() OVER "
                "(ORDER BY package) AS n FROM packages) p "
                "WHERE n %% %s = 0 LIMIT %s", (step, self.args.projects))
            self.sample = [row[0] for row in cur.fetchall()]
            cur.execute("SELECT package, count(*) FROM versions "
                        "GROUP BY package ORDER BY 2 DESC LIMIT 1")
            self.biggest, self.biggest_versions = cur.fetchone()
            cur.execute("SELECT count(*) FROM builds WHERE package = %s",
                        (self.biggest,))
            self.biggest_builds = cur.fetchone()[0]
        conn.close()
        self.packages = total

    async def timed_on_reactor(self, reactor, work):
        """(seconds, longest reactor stall) of ``await work()``."""
        from tests.web_support import StallMonitor
        monitor = StallMonitor(reactor, interval=0.002)
        monitor.start()
        started = time.perf_counter()
        await work()
        took = time.perf_counter() - started
        monitor.stop()
        return took, monitor.longest

    async def measure(self, reactor):
        from piwtwist.db.client import Database
        from piwtwist.db.pool import ConnectionPool
        from piwtwist.web.page_writer import PageWriter
        a = self.args
        pool = ConnectionPool(self.cluster.dsn(DBNAME, MASTER_ROLE), reactor,
                              size=a.pool_size)
        pool.startService()
        await pool.ready
        db = Database(pool.bulk())
        writer = PageWriter(db, self.output, reactor,
                            rewrite_all_at_start=False,
                            concurrency=a.concurrency,
                            site_url="https://piwheels.example.org/")
        figures = {}
        out()
        out(f"Site lists ({self.packages:,} packages; each run twice, the "
            f"longest reactor stall against the {STALL_TARGET * 1000:.0f} ms "
            f"budget)")
        for label, work in (
                ("root index, old (get_all_packages)",
                 lambda: self.old_index(writer)),
                ("root index, new (keyset pages)", writer._write_index),
                ("search index, old (get_search_index)",
                 lambda: self.old_search(writer)),
                ("search index, new (PostgreSQL's text)",
                 writer._write_search)):
            runs = [await self.timed_on_reactor(reactor, work)
                    for _ in range(2)]
            took = min(r[0] for r in runs)
            stall = max(r[1] for r in runs)
            figures[label] = (took, stall)
            out(f"  {label:<40} {took:7.2f} s   longest stall "
                f"{stall * 1000:6.1f} ms "
                f"({'within' if stall < STALL_TARGET else 'OVER'} budget)")
        out(f"  output: simple/index.html "
            f"{(self.output / 'simple' / 'index.html').stat().st_size:,} "
            f"bytes, packages.json "
            f"{(self.output / 'packages.json').stat().st_size:,} bytes")

        out()
        out("Database reads alone, one project after another "
            f"({min(len(self.sample), 500)} projects)")
        for label, read in (("old: eight queries", read_the_old_way),
                            ("new: get_project_page", None)):
            sample = self.sample[:500]
            started = time.perf_counter()
            for package in sample:
                if read is None:
                    await db.get_project_page(package)
                else:
                    await read(db, package)
            took = time.perf_counter() - started
            out(f"  {label:<24} {len(sample) / took:8,.0f} projects/s "
                f"({took / len(sample) * 1000:.2f} ms each)")

        out()
        out(f"Project pages ({len(self.sample):,} projects spread over the "
            f"database, 4 files each; logs written by a first run)")
        await self.rewrite(reactor, writer, "first run (new, logs too)")
        old_read = writer._read_project
        writer._read_project = lambda package: read_the_old_way(db, package)
        old = await self.rewrite(reactor, writer, "old: eight queries")
        writer._read_project = old_read
        new = await self.rewrite(reactor, writer, "new: one query")
        out(f"  new / old: {new / old:.2f}x the pages per second; "
            f"{FULL_PACKAGES:,} projects at {new:,.0f} pages/s would take "
            f"{FULL_PACKAGES * 4 / new / 3600:.2f} h")

        out()
        row = await db.get_project_page(self.biggest)
        text = sum(len(t) for t in (row.versions_json, row.files_json,
                                    row.builds_json, row.dependencies_json,
                                    row.aliases_json))
        started = time.perf_counter()
        row.decode()
        decoded = time.perf_counter() - started
        took, stall = await self.timed_on_reactor(
            reactor, lambda: writer.write_project(self.biggest))
        out(f"Biggest project: {self.biggest} ({self.biggest_versions:,} "
            f"versions, {self.biggest_builds:,} builds): "
            f"{text / 1e6:.2f} MB of JSON text, decoded in "
            f"{decoded * 1000:.1f} ms (in the thread pool); its pages "
            f"written in {took * 1000:.0f} ms, longest stall "
            f"{stall * 1000:.1f} ms")
        await pool.stopService()

    async def rewrite(self, reactor, writer, label):
        from piwtwist.web.page_writer import _gather
        remaining = iter(self.sample)

        async def worker():
            for package in remaining:
                await writer.write_project(package, both=True)

        before = writer.pages_written
        took, stall = await self.timed_on_reactor(
            reactor, lambda: _gather(*[worker()
                                       for _ in range(self.args.concurrency)]))
        pages = writer.pages_written - before
        out(f"  {label:<28} {took:6.1f} s  {len(self.sample) / took:6,.0f} "
            f"projects/s  {pages / took:6,.0f} pages/s  longest stall "
            f"{stall * 1000:5.1f} ms")
        return pages / took

    async def old_index(self, writer):
        """The root of the simple index as the writer made it before."""
        from piwtwist.web import render
        packages = await writer.db.get_all_packages()
        links, root_json = await writer._in_thread(
            lambda: (render.simple_root_links(packages),
                     render.simple_root_json(packages)))
        page = await render.render_cooperatively(
            writer.cooperator, writer.renderer.simple_root(links))
        await writer._in_thread(writer._write_files, {
            self.output / "simple" / "index.html": page,
            self.output / "simple" / "index.json": root_json})

    async def old_search(self, writer):
        """The search index, its page and the sitemap as made before."""
        from piwtwist.web import render
        entries = await writer.db.get_search_index()
        page = await render.render_cooperatively(
            writer.cooperator, writer.renderer.packages_page(len(entries)))

        def write():
            files = {self.output / "packages.json":
                     render.packages_json(entries),
                     self.output / "packages.html": page}
            packages = sorted(e.package for e in entries)
            for name, data in render.sitemaps(writer.site_url,
                                              packages).items():
                files[self.output / name] = data
            writer._write_files(files)
        await writer._in_thread(write)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.1,
                        help="fraction of PyPI's size (default 0.1: 74,000 "
                             "packages)")
    parser.add_argument("--dir", default=None,
                        help="build_queue.py's kept cluster to reuse (or "
                             "generate there)")
    parser.add_argument("--projects", type=int, default=2000,
                        help="projects in the page-writing sample "
                             "(default 2000)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--pool-size", type=int, default=4,
                        help="database connections (default 4, the "
                             "master's; the page writer gets 3)")
    parser.add_argument("--limit", type=int, default=1000,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 10:
        parser.error("--scale must be in (0, 10]")
    if args.projects < 1:
        parser.error("--projects must be at least 1")
    PageReadsBench(args).run()


if __name__ == "__main__":
    main()
