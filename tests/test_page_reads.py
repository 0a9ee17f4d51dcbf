"""The page writer's reads at PyPI scale (issue 15), against a real
PostgreSQL: ``get_project_page`` tells exactly what the eight per-list
functions told, the writer asks it once per project, and the root of the
simple index, the search index and a full rewrite come right from names
and text read in several pages and chunks."""

import json
import xml.etree.ElementTree as ElementTree
from datetime import datetime, timedelta, timezone

import pytest
import pytest_twisted

from piwtwist.db.client import Database
from piwtwist.db.pool import ConnectionPool
from piwtwist.db.records import Dependency, DownloadHit
from piwtwist.web import render
from tests.web_support import (
    T0, add_release, apt, build_file, log_failure, log_success, make_wheel,
    page_writer)


@pytest.fixture
def output(tmp_path):
    path = tmp_path / "www"
    path.mkdir()
    return path


async def busy_project(db, output, tmp_path):
    """"many-things": every kind of fact a project page shows."""
    pkg = "many-things"
    await db.set_build_abis(["cp39", "cp311"])
    wheels = tmp_path / "wheels"
    await add_release(db, pkg, "0.9", T0, skip="binary only",
                      description='Many "things", naïve \\ and\ttabbed')
    await add_release(db, pkg, "1.0", T0 + timedelta(days=1),
                      requires_python=">=3.9")
    await add_release(db, pkg, "1.1", T0 + timedelta(days=2))
    await add_release(db, pkg, "2.0", T0 + timedelta(days=3))
    await db.yank_version(pkg, "1.1", "broken on arm")
    native = build_file(make_wheel(wheels, "many_things", "1.0",
                                   "cp39-cp39-linux_armv7l"), output, pkg,
                        requires_python=">=3.9")
    pure = build_file(make_wheel(wheels, "many_things", "1.1"), output, pkg)
    await log_success(db, pkg, "1.0", "cp39", [native],
                      {native.filename: apt("libfoo1", "libc6") + (
                          Dependency("pip", "numpy"),
                          Dependency("unresolved", "libweird.so.1"))})
    await log_failure(db, pkg, "1.0", "cp311", reason="compiler exploded",
                      failure_class="network", failure_hint="try again")
    await log_success(db, pkg, "1.1", "cp39", [pure], rescued="setuptools<82")
    await log_failure(db, pkg, "2.0", "cp39")
    await db.add_package_name(pkg, "Many_Things", T0)
    await db.add_package_name(pkg, "MANY.things", T0 + timedelta(hours=1))
    now = datetime.now(timezone.utc)
    for days in (0, 1, 45):
        await db.log_download(DownloadHit(native.filename, "10.0.0.1",
                                          now - timedelta(days=days)))
    return pkg


async def old_facts(db, package):
    """What the eight functions the page writer used to call say."""
    return {
        "description": await db.get_package_description(package),
        "skip": await db.get_package_skip(package),
        "versions": await db.get_project_versions(package),
        "files": await db.get_project_files(package),
        "builds": await db.get_project_builds(package),
        "dependencies": await db.get_project_dependencies(package),
        "aliases": await db.get_package_aliases(package),
        "downloads": await db.get_project_downloads(package),
    }


@pytest_twisted.ensureDeferred
async def test_one_query_tells_what_the_eight_told(
        db, test_db, output, tmp_path, reactor):
    pkg = await busy_project(db, output, tmp_path)
    await db.skip_package(pkg, "too big")
    # timestamps keep their offset (and microseconds) in another time zone
    test_db.sql(f"ALTER DATABASE {test_db.name} SET timezone TO "
                f"'Asia/Kolkata'")
    pool = ConnectionPool(test_db.master_dsn, reactor)
    pool.startService()
    try:
        await pool.ready
        other_zone = Database(pool)
        row = await other_zone.get_project_page(pkg)
        facts = row.decode()
        old = await old_facts(other_zone, pkg)
    finally:
        await pool.stopService()
    assert facts == old
    assert facts["builds"][0].built_at.utcoffset() == \
        old["builds"][0].built_at.utcoffset() == timedelta(hours=5,
                                                            minutes=30)
    assert [b.built_at for b in facts["builds"]] == \
        [b.built_at for b in old["builds"]]
    # the facts are all there, not two equally empty answers
    assert facts["skip"] == "too big"
    assert facts["downloads"] == (2, 3)
    assert [v.version for v in facts["versions"]] == \
        ["2.0", "1.1", "1.0", "0.9"]
    assert facts["versions"][2].builds_succeeded == ("cp39",)
    assert facts["versions"][2].builds_failed == ("cp311",)
    assert facts["versions"][1].yanked and \
        facts["versions"][1].yank_reason == "broken on arm"
    assert facts["versions"][3].skip == "binary only"
    failed = [b for b in facts["builds"] if not b.status]
    assert [(b.failure_class, b.failure_hint) for b in failed] == \
        [("network", "try again"), ("", "")]
    assert [b.rescued for b in facts["builds"] if b.status] == \
        ["", "setuptools<82"]
    assert {b.duration for b in facts["builds"]} == \
        {timedelta(seconds=12), timedelta(seconds=3)}
    assert len(facts["files"]) == 2
    assert sum(len(d) for d in facts["dependencies"].values()) == 4
    assert [a.name for a in facts["aliases"]] == ["MANY.things",
                                                  "Many_Things"]
    assert await db.get_project_page("never-heard-of-it") is None


@pytest_twisted.ensureDeferred
async def test_an_empty_project_reads_as_before(db):
    await db.add_new_package("bare")
    facts = (await db.get_project_page("bare")).decode()
    assert facts == await old_facts(db, "bare")
    assert facts["versions"] == [] and facts["dependencies"] == {}


class CountingPool:
    """The test's pool, with every statement the database client sends
    through it (or through its retrying view) written down."""

    def __init__(self, pool, statements=None):
        self.pool = pool
        self.statements = [] if statements is None else statements

    def retrying(self):
        return CountingPool(self.pool.retrying(), self.statements)

    def run_query(self, sql, params=None):
        self.statements.append(sql)
        return self.pool.run_query(sql, params)

    def run_operation(self, sql, params=None):
        self.statements.append(sql)
        return self.pool.run_operation(sql, params)

    def run_interaction(self, interaction, *args, **kwargs):
        self.statements.append("<interaction>")
        return self.pool.run_interaction(interaction, *args, **kwargs)


@pytest_twisted.ensureDeferred
async def test_the_writer_asks_once_per_project(
        db, pool, output, tmp_path, reactor):
    pkg = await busy_project(db, output, tmp_path)
    counting = CountingPool(pool)
    writer = page_writer(Database(counting), output, reactor)
    assert await writer.write_project(pkg, both=True)
    first = list(counting.statements)
    # the ABIs (read every few minutes), the page, the four missing logs
    assert first.count("SELECT * FROM get_project_page(%s)") == 1
    assert first.count("SELECT * FROM get_build_outputs(%s, %s)") == 1
    assert sum("get_build_abis" in s or "get_preinstalled" in s
               for s in first) == len(first) - 2
    logs = sorted((output / "logs").rglob("*.txt.gz"))
    assert len(logs) == 4
    # a project new to the index asked for the root and search index too
    await writer.wait_until_idle()
    assert (output / "simple" / "index.html").is_file()
    counting.statements.clear()
    for _ in range(3):
        assert await writer.write_project(pkg, both=True)
    assert counting.statements == ["SELECT * FROM get_project_page(%s)"] * 3
    project = json.loads(
        (output / "project" / pkg / "json" / "index.json").read_text())
    assert project["downloads"] == {"last_30_days": 2, "all_time": 3}
    assert project["releases"]["1.0"]["builds"]["cp311"]["failure_class"] \
        == "network"
    await writer.wait_until_idle()


def test_pieces_make_the_same_files_as_the_whole_lists():
    names = ["a", "b<c", "dé", "e&f", "g"]
    for pages in ([], [names], [names[:2], names[2:4], names[4:]]):
        flat = [n for page in pages for n in page]
        assert b"".join(render.simple_root_link_pieces(pages)) == \
            render.simple_root_links(flat).encode()
        assert b"".join(render.simple_root_json_pieces(pages)) == \
            render.simple_root_json(flat)
    page = b"<html><body><!--piwtwist:list--></body></html>"
    assert b"".join(render.splice(page, [b"x", b"y"])) == \
        b"<html><body>xy</body></html>"
    with pytest.raises(ValueError, match="piwtwist:list"):
        render.splice(b"<html></html>", [b"x"])


@pytest_twisted.ensureDeferred
async def test_indexes_from_several_pages_and_chunks(
        db, test_db, output, tmp_path, reactor):
    """Eight packages read three names a page and two search entries a
    chunk: the files are those the whole lists make."""
    descriptions = {"alpha": 'says "hi"', "beta": "naïve \\ café",
                    "gamma": "tab\there", "delta": "", "epsilon": "<b>",
                    "zeta": "line\nbreak", "eta": "x" * 200, "theta": "θ"}
    for name, description in descriptions.items():
        await add_release(db, name, "1.0", T0, description=description)
    await db.skip_package("eta", "never built")
    wheel = build_file(make_wheel(tmp_path / "wheels", "gamma", "1.0"),
                       output, "gamma")
    await log_success(db, "gamma", "1.0", "cp311", [wheel])
    now = datetime.now(timezone.utc)
    for days in (0, 1, 90):
        await db.log_download(DownloadHit(wheel.filename, "10.0.0.1",
                                          now - timedelta(days=days)))
    writer = page_writer(db, output, reactor, names_per_page=3,
                         search_entries_per_chunk=2)
    writer.startService()
    try:
        assert await writer.rewrite_all() == 8
        await writer.wait_until_idle()
    finally:
        await writer.stopService()

    everything = await db.get_all_packages()
    assert len(everything) == 8
    for name in everything:
        assert (output / "project" / name / "index.html").is_file()
        assert (output / "simple" / name / "index.json").is_file()
    root_html = (output / "simple" / "index.html").read_text()
    assert render.simple_root_links(everything) in root_html
    assert "piwtwist:list" not in root_html
    assert (output / "simple" / "index.json").read_bytes() == \
        render.simple_root_json(everything)
    search = await db.get_search_index()
    assert len(search) == 7            # the skipped one is not searched
    assert (output / "packages.json").read_bytes() == \
        render.packages_json(search)
    entries = json.loads((output / "packages.json").read_text())
    assert entries[0] == ["gamma", "tab\there", 2, 3]
    assert {e[0]: e[1] for e in entries} == {
        k: v for k, v in descriptions.items() if k != "eta"}
    assert "Search 7 packages" in (output / "packages.html").read_text()
    sitemap = ElementTree.fromstring((output / "sitemap.xml").read_bytes())
    projects = sorted(e.text for e in sitemap.iter(
        "{http://www.sitemaps.org/schemas/sitemap/0.9}loc")
        if "/project/" in e.text)
    assert projects == sorted(f"http://piwheels.test/project/{name}/"
                              for name in everything if name != "eta")


@pytest_twisted.ensureDeferred
async def test_name_pages_and_search_chunks_refuse_nonsense(db):
    with pytest.raises(ValueError, match="at least one"):
        await db.get_package_names("", 0)
    with pytest.raises(ValueError, match="at least 1"):
        await db.get_search_index_chunks(0)
    assert await db.get_search_index_chunks(5) == []
    assert [page async for page in db.package_name_pages(2)] == []


@pytest_twisted.ensureDeferred
async def test_missing_logs_come_a_bounded_answer_at_a_time(
        db, pool, output, tmp_path):
    pkg = await busy_project(db, output, tmp_path)
    builds = [b.build_id for b in await db.get_project_builds(pkg)]
    expected = {b: await db.get_build_output(b) for b in builds}
    counting = CountingPool(pool)
    # a budget smaller than one log: one log an answer; ids without a log
    # (99999) are skipped, not asked about forever
    logs = await Database(counting).get_build_outputs(builds + [99999], 10)
    assert logs == expected
    # one a log, and one that finds nothing for 99999
    assert len(counting.statements) == len(builds) + 1
    counting.statements.clear()
    assert await Database(counting).get_build_outputs(builds) == expected
    assert len(counting.statements) == 1
