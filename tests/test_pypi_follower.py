"""The PyPI follower against a fake PyPI on 127.0.0.1 and a real
PostgreSQL: every action, odd journals, crashes and misbehaving servers.
Every test checks the database state that results."""

import os
from datetime import datetime, timezone

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.logger import LogLevel, globalLogPublisher

from piwtwist import __version__
from piwtwist.db.client import Database
from piwtwist.db.pool import ConnectionPool
from piwtwist.master import tap as master_tap
from piwtwist.master.pypi_follower import (
    SKIP_BINARY_ONLY, SKIP_PURE_WHEEL, PageChange, PyPIFollower,
    page_writer_listener,
)
from piwtwist.master.tree_effects import TreeEffects
from piwtwist.pypi.http import BackOff, new_http_client
from piwtwist.pypi.journal import JournalSequencer
from piwtwist.pypi.json_api import PyPIJson
from piwtwist.pypi.xmlrpc import PyPIXmlRpc
from tests.conftest import TEMPLATE, _create_database
from tests.fake_pypi import FIRST_SERIAL, T0, FakePyPI
from tests.test_db_queue import success, wheel
from tests.tree_support import FakePageWriter


def utc(seconds):
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


class RecordingQueue:
    """Stands in for the build queue: remembers drops and refreshes."""

    def __init__(self):
        self.dropped = []
        self.refreshes = 0

    def drop(self, package, version=None):
        self.dropped.append((package, version))

    def request_refresh(self):
        self.refreshes += 1


@pytest_twisted.async_yield_fixture
async def fake_pypi(reactor):
    fake = FakePyPI(reactor, batch_size=50)
    fake.listen()
    yield fake
    await fake.stop()


@pytest.fixture
def output(tmp_path):
    path = tmp_path / "www"
    path.mkdir()
    return path


class Followers:
    """Makes followers of the fake PyPI and stops them after the test."""

    def __init__(self, reactor, fake, output):
        self.reactor = reactor
        self.fake = fake
        self.output = output
        self.started = []

    def make(self, db, *, timeout=5.0, window=600.0, start=True, **kwargs):
        client, pool = new_http_client(self.reactor)
        xmlrpc = PyPIXmlRpc(client, self.reactor, self.fake.url + "/pypi",
                            timeout=timeout)
        json_api = PyPIJson(client, self.reactor, self.fake.url + "/pypi",
                            timeout=timeout)
        options = dict(
            build_queue=RecordingQueue(), poll_interval=0.05,
            batch_limit=self.fake.batch_size, chunk_size=20,
            backoff=BackOff(initial=0.05, maximum=0.4),
            sequencer=JournalSequencer(window=window), http_pool=pool)
        options.update(kwargs)
        follower = PyPIFollower(db, self.reactor, xmlrpc, json_api,
                                self.output, **options)
        follower.changes = []
        follower.page_listeners.append(
            lambda *change: follower.changes.append(change))
        if start:
            follower.startService()
        self.started.append(follower)
        return follower

    async def stop_all(self):
        for follower in self.started:
            if follower.running:
                await follower.stopService()
            elif follower.http_pool is not None:
                await follower.http_pool.closeCachedConnections()


@pytest_twisted.async_yield_fixture
async def followers(reactor, fake_pypi, output):
    made = Followers(reactor, fake_pypi, output)
    yield made
    await made.stop_all()


async def sleep(reactor, seconds):
    await task.deferLater(reactor, seconds, lambda: None)


async def caught_up(follower, fake, timeout=15.0):
    """Wait until *follower* has applied the fake's whole journal and is
    between polls."""
    reactor = follower.clock
    deadline = reactor.seconds() + timeout
    while reactor.seconds() < deadline:
        if follower.saved_serial == fake.last_serial() and \
                follower._cycle is None:
            return
        await sleep(reactor, 0.02)
    raise AssertionError(
        f"not caught up: saved {follower.saved_serial}, fake at "
        f"{fake.last_serial()}, problem {follower.last_problem}")


def state(test_db):
    """packages -> (description, {version: (skip, yanked, reason,
    requires_python)}), read as the superuser."""
    packages = {package: (description, {}) for package, description in
                test_db.sql("SELECT package, description FROM packages")}
    for row in test_db.sql(
            "SELECT package, version, skip, yanked, yank_reason, "
            "requires_python FROM versions"):
        packages[row[0]][1][row[1]] = tuple(row[2:])
    return packages


def versions(test_db, package):
    return state(test_db)[package][1]


def aliases(test_db, package):
    return dict(test_db.sql(
        "SELECT name, seen FROM package_names WHERE package = %s",
        (package,)))


def serial(test_db):
    return test_db.sql("SELECT pypi_serial FROM configuration")[0][0]


def follow_from_now(test_db, fake):
    """Make the database a follower's that has applied the fake's journal
    so far (an empty journal included)."""
    test_db.sql("UPDATE configuration SET pypi_serial = %s",
                (fake.next_serial - 1,))


@pytest.fixture
def logged():
    """Every log event during the test."""
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def warnings_in(logged):
    from twisted.logger import formatEvent
    return [formatEvent(e) for e in logged
            if e.get("log_level") == LogLevel.warn]


# -- starting ---------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_fresh_database_follows_from_pypis_latest_serial(
        db, test_db, fake_pypi, followers):
    fake_pypi.release("old-package", "1.0")
    follower = followers.make(db)
    await caught_up(follower, fake_pypi)
    assert serial(test_db) == fake_pypi.last_serial()
    assert state(test_db) == {}
    fake_pypi.release("new-package", "2.0", summary="Brand new",
                      requires_python=">=3.9")
    await caught_up(follower, fake_pypi)
    assert state(test_db) == {"new-package": ("Brand new", {
        "2.0": ("", False, "", ">=3.9")})}
    assert serial(test_db) == fake_pypi.last_serial()


@pytest_twisted.ensureDeferred
async def test_population_records_every_package_first(
        db, test_db, fake_pypi, followers):
    fake_pypi.release("Alpha", "1.0", summary="The first")
    fake_pypi.release("Alpha", "1.1", files=["binary"])
    fake_pypi.release("beta.two", "0.1", files=["sdist", "pure"])
    fake_pypi.create("empty-project")
    fake_pypi.release("gone", "1.0")
    fake_pypi.remove_project("gone")
    follower = followers.make(db, populate=True)
    await caught_up(follower, fake_pypi)
    assert state(test_db) == {
        "alpha": ("The first", {"1.0": ("", False, "", ""),
                                "1.1": (SKIP_BINARY_ONLY, False, "", "")}),
        "beta-two": ("", {"0.1": (SKIP_PURE_WHEEL, False, "", "")}),
        "empty-project": ("", {}),
    }
    assert set(aliases(test_db, "beta-two")) == {"beta.two"}
    assert serial(test_db) == fake_pypi.last_serial()


@pytest_twisted.ensureDeferred
async def test_population_resumes_and_outlasts_json_failures(
        db, test_db, fake_pypi, followers, reactor):
    for name in ("one", "two", "three", "four"):
        fake_pypi.release(name, "1.0", requires_python=">=3.8")
    # an earlier population got as far as "four"
    await db.add_new_package("four")
    fake_pypi.fail_next("json", 500, times=2)
    follower = followers.make(db, populate=True)
    await caught_up(follower, fake_pypi)
    assert "/pypi/four/json" not in [r["path"] for r in fake_pypi.requests]
    assert set(state(test_db)) == {"one", "two", "three", "four"}
    # the two the JSON API failed on are recorded bare, then completed
    for _ in range(100):
        if not follower.status()["repairs_pending"]:
            break
        follower._json_retry_at = 0
        await sleep(reactor, 0.05)
    packages = state(test_db)
    assert all(packages[name][1] == {"1.0": ("", False, "", ">=3.8")}
               for name in ("one", "two", "three"))
    assert packages["four"][1] == {}


# -- the actions ------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_releases_and_what_they_are_built_from(
        db, test_db, fake_pypi, followers):
    follow_from_now(test_db, fake_pypi)
    follower = followers.make(db)
    fake_pypi.create("foo", summary="Foo does things")
    fake_pypi.release("foo", "1.0", files=["sdist"],
                      requires_python=">=3.8", timestamp=T0 + 100)
    fake_pypi.release("foo", "2.0", files=["binary", "armv7l"])
    fake_pypi.release("foo", "3.0", files=["sdist", "pure"])
    fake_pypi.release("foo", "4.0", files=["universal"])
    fake_pypi.release("foo", "5.0", files=["py2", "sdist"])
    fake_pypi.release("foo", "6.0", files=["egg"])
    await caught_up(follower, fake_pypi)
    assert versions(test_db, "foo") == {
        "1.0": ("", False, "", ">=3.8"),
        "2.0": (SKIP_BINARY_ONLY, False, "", ""),
        "3.0": (SKIP_PURE_WHEEL, False, "", ""),
        "4.0": (SKIP_PURE_WHEEL, False, "", ""),
        "5.0": ("", False, "", ""),
        "6.0": (SKIP_BINARY_ONLY, False, "", ""),
    }
    assert await db.get_package_description("foo") == "Foo does things"
    released = {v.version: v.released
                for v in await db.get_project_versions("foo")}
    assert released["1.0"] == utc(T0 + 100)
    # a binary-only release is built once a source file appears
    fake_pypi.add_file("foo", "2.0", "sdist")
    fake_pypi.add_file("foo", "6.0", "pure")
    await caught_up(follower, fake_pypi)
    skips = {v: s[0] for v, s in versions(test_db, "foo").items()}
    assert (skips["2.0"], skips["6.0"]) == ("", SKIP_PURE_WHEEL)
    assert ("foo", "2.0", PageChange.VERSION_SKIP) in follower.changes
    assert ("foo", "6.0") in follower.build_queue.dropped
    assert follower.build_queue.refreshes > 0
    assert ("foo", None, PageChange.PACKAGE_ADDED) in follower.changes
    assert ("foo", "1.0", PageChange.VERSION_ADDED) in follower.changes


@pytest_twisted.ensureDeferred
async def test_building_pure_wheels_when_asked(db, test_db, fake_pypi,
                                               followers):
    follow_from_now(test_db, fake_pypi)
    follower = followers.make(db, skip_pure_wheels=False)
    fake_pypi.release("foo", "1.0", files=["sdist", "pure"])
    fake_pypi.release("foo", "2.0", files=["pure"])
    await caught_up(follower, fake_pypi)
    assert versions(test_db, "foo") == {
        "1.0": ("", False, "", ""), "2.0": (SKIP_BINARY_ONLY, False, "", "")}


@pytest_twisted.ensureDeferred
async def test_removing_files_works_the_skip_out_again(
        db, test_db, fake_pypi, followers):
    follow_from_now(test_db, fake_pypi)
    follower = followers.make(db)
    fake_pypi.release("foo", "1.0", files=["sdist", "pure"])
    fake_pypi.release("foo", "2.0", files=["sdist", "binary"])
    await caught_up(follower, fake_pypi)
    fake_pypi.remove_file("foo", "1.0", "pure")
    fake_pypi.remove_file("foo", "2.0", "sdist")
    await caught_up(follower, fake_pypi)
    assert versions(test_db, "foo") == {
        "1.0": ("", False, "", ""), "2.0": (SKIP_BINARY_ONLY, False, "", "")}
    # an operator's skip is never touched
    await db.skip_package_version("foo", "1.0", "broken by design")
    fake_pypi.add_file("foo", "1.0", "pure")
    await caught_up(follower, fake_pypi)
    assert versions(test_db, "foo")["1.0"][0] == "broken by design"


@pytest_twisted.ensureDeferred
async def test_yank_and_unyank_with_pypis_reason(db, test_db, fake_pypi,
                                                 followers):
    follow_from_now(test_db, fake_pypi)
    follower = followers.make(db)
    fake_pypi.release("foo", "1.0")
    await caught_up(follower, fake_pypi)
    fake_pypi.yank("foo", "1.0", reason="Broken metadata")
    await caught_up(follower, fake_pypi)
    assert versions(test_db, "foo")["1.0"] == ("", True, "Broken metadata",
                                               "")
    fake_pypi.unyank("foo", "1.0")
    await caught_up(follower, fake_pypi)
    assert versions(test_db, "foo")["1.0"] == ("", False, "", "")
    assert follower.changes.count(("foo", "1.0", PageChange.YANK)) == 2
    assert not follower.status()["repairs_pending"]


async def built(db, output, package, version):
    """Record a successful build of *package* *version* and put its wheel
    (and metadata) in the output tree; the wheel's path."""
    await db.set_build_abis(["cp311"])
    built_wheel = wheel(package, version, "py3", "none", "any")
    await db.log_build(success(package, version, "cp311", built_wheel))
    directory = output / "simple" / package
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / built_wheel.filename
    path.write_bytes(b"wheel")
    (directory / (built_wheel.filename + ".metadata")).write_text("meta")
    return path


@pytest_twisted.ensureDeferred
async def test_removals_reach_the_database_queue_and_output_tree(
        db, test_db, fake_pypi, followers, output):
    follow_from_now(test_db, fake_pypi)
    follower = followers.make(db)
    fake_pypi.release("foo", "1.0")
    fake_pypi.release("foo", "2.0")
    fake_pypi.release("bar", "1.0")
    await caught_up(follower, fake_pypi)
    foo_1 = await built(db, output, "foo", "1.0")
    foo_2 = await built(db, output, "foo", "2.0")
    bar_1 = await built(db, output, "bar", "1.0")
    bystander = output / "simple" / "foo" / "index.html"
    bystander.write_text("the page writer's")
    fake_pypi.remove_release("foo", "1.0")
    await caught_up(follower, fake_pypi)
    assert set(versions(test_db, "foo")) == {"2.0"}
    # the deletion was recorded with the commit; the tree effects carry it
    # out (the master's page listener wakes them)
    effects = TreeEffects(db, output, follower.clock, None, FakePageWriter())
    assert await effects.carry_out_deletions() > 0
    assert not foo_1.exists()
    assert not foo_1.with_name(foo_1.name + ".metadata").exists()
    assert foo_2.exists() and bystander.exists()
    assert follower.build_queue.dropped == [("foo", "1.0")]
    assert ("foo", "1.0", PageChange.VERSION_DELETED) in follower.changes
    fake_pypi.remove_project("foo")
    await caught_up(follower, fake_pypi)
    assert set(state(test_db)) == {"bar"}
    await effects.carry_out_deletions()
    assert not foo_2.exists() and bar_1.exists()
    assert not (output / "simple" / "foo").exists()
    assert follower.build_queue.dropped[-1] == ("foo", None)
    assert ("foo", None, PageChange.PACKAGE_DELETED) in follower.changes
    assert (await db.get_statistics()).builds_count == 1


@pytest_twisted.ensureDeferred
async def test_files_outside_the_output_tree_are_never_deleted(
        db, test_db, fake_pypi, followers, output, tmp_path):
    follow_from_now(test_db, fake_pypi)
    follower = followers.make(db)
    fake_pypi.release("foo", "1.0")
    await caught_up(follower, fake_pypi)
    # the package's directory is a link to somewhere else
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = await built(db, output, "foo", "1.0")
    for name in os.listdir(path.parent):
        (path.parent / name).rename(elsewhere / name)
    path.parent.rmdir()
    path.parent.symlink_to(elsewhere)
    fake_pypi.remove_release("foo", "1.0")
    await caught_up(follower, fake_pypi)
    assert versions(test_db, "foo") == {}
    effects = TreeEffects(db, output, follower.clock, None, FakePageWriter())
    await effects.carry_out_deletions()
    assert (elsewhere / path.name).exists()


@pytest_twisted.ensureDeferred
async def test_rename_moves_the_project(db, test_db, fake_pypi, followers):
    follow_from_now(test_db, fake_pypi)
    follower = followers.make(db)
    fake_pypi.release("Old_Name", "1.0", summary="Renamed soon")
    fake_pypi.release("Old_Name", "1.1", files=["binary"])
    await caught_up(follower, fake_pypi)
    fake_pypi.rename("Old_Name", "New.Name")
    # a change of spelling only is one more alias
    fake_pypi.release("Spelling", "1.0")
    fake_pypi.rename("Spelling", "SPELLING")
    await caught_up(follower, fake_pypi)
    assert state(test_db) == {
        "new-name": ("Renamed soon", {
            "1.0": ("", False, "", ""),
            "1.1": (SKIP_BINARY_ONLY, False, "", "")}),
        "spelling": ("", {"1.0": ("", False, "", "")}),
    }
    assert set(aliases(test_db, "spelling")) == {"Spelling", "SPELLING"}
    assert ("old-name", None, PageChange.PACKAGE_DELETED) in follower.changes


@pytest_twisted.ensureDeferred
async def test_names_are_canonical_and_every_spelling_is_kept(
        db, test_db, fake_pypi, followers):
    follow_from_now(test_db, fake_pypi)
    follower = followers.make(db)
    fake_pypi.create("Foo_Bar", timestamp=T0 + 10)
    fake_pypi.release("foo.bar", "1.0", timestamp=T0 + 20)
    fake_pypi.release("Foo_Bar", "2.0", timestamp=T0 + 30)
    await caught_up(follower, fake_pypi)
    assert set(state(test_db)) == {"foo-bar"}
    assert aliases(test_db, "foo-bar") == {
        "Foo_Bar": utc(T0 + 30), "foo.bar": utc(T0 + 20)}
    assert ("foo-bar", None, PageChange.NEW_NAME) in follower.changes
    # seen again: nothing new for the pages
    follower.changes.clear()
    fake_pypi.release("FOO.BAR", "3.0")
    fake_pypi.release("foo.bar", "4.0")
    await caught_up(follower, fake_pypi)
    assert [c for c in follower.changes
            if c[2] == PageChange.NEW_NAME] == [
        ("foo-bar", None, PageChange.NEW_NAME)]
    assert set(aliases(test_db, "foo-bar")) == {"Foo_Bar", "foo.bar",
                                                "FOO.BAR"}


# -- odd journals -----------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_deletions_journalled_before_their_creations(
        db, test_db, fake_pypi, followers):
    follow_from_now(test_db, fake_pypi)
    follower = followers.make(db)
    for number in range(44):
        fake_pypi.create(f"filler-{number}")
    # PyPI's early journal: removals come first, with later times...
    stamp = int(fake_pypi.now) + 1
    fake_pypi.raw("ghost", "1.0", "remove release", timestamp=stamp + 5)
    fake_pypi.raw("Gone", None, "remove project", timestamp=stamp + 6)
    for number in range(10):  # (so that the creations are a batch later)
        fake_pypi.create(f"more-{number}")
    # ...than the creations they undo
    fake_pypi.raw("ghost", None, "create", timestamp=stamp)
    fake_pypi.raw("ghost", "1.0", "new release", timestamp=stamp)
    fake_pypi.raw("ghost", "1.0", "add source file ghost-1.0.tar.gz",
                  timestamp=stamp + 1)
    fake_pypi.raw("Gone", "0.1", "add source file gone-0.1.tar.gz",
                  timestamp=stamp + 2)
    # a later release of the same project is not undone
    fake_pypi.raw("ghost", "2.0", "add source file ghost-2.0.tar.gz",
                  timestamp=stamp + 20)
    await caught_up(follower, fake_pypi)
    packages = state(test_db)
    assert "gone" not in packages
    assert packages["ghost"][1] == {"2.0": ("", False, "", "")}
    ghost_1 = [c[2] for c in follower.changes if c[:2] == ("ghost", "1.0")]
    assert ghost_1 == [PageChange.VERSION_ADDED, PageChange.VERSION_DELETED]
    assert follower.sequencer.deletions_reapplied == 2
    assert len(fake_pypi.requests_to("xmlrpc")) >= 2


@pytest_twisted.ensureDeferred
async def test_duplicate_events_are_applied_once(db, test_db, fake_pypi,
                                                 followers):
    follow_from_now(test_db, fake_pypi)
    follower = followers.make(db)
    first = fake_pypi.release("foo", "1.0", files=["sdist"])
    fake_pypi.repeat_last()
    fake_pypi.raw("foo", "1.0", "yank release")
    fake_pypi.raw("foo", "1.0", "yank release")
    # and an entry served twice under one serial
    fake_pypi.journal.append(list(fake_pypi.journal[-1]))
    await caught_up(follower, fake_pypi)
    assert versions(test_db, "foo") == {"1.0": ("", True, "", "")}
    assert follower.changes.count(("foo", "1.0",
                                   PageChange.VERSION_ADDED)) == 1
    assert follower.changes.count(("foo", "1.0", PageChange.YANK)) == 1
    assert follower.sequencer.repeats_dropped == 2
    assert first < fake_pypi.last_serial() == serial(test_db)


@pytest_twisted.ensureDeferred
async def test_a_journal_longer_than_a_batch_is_read_without_pausing(
        db, test_db, fake_pypi, followers, reactor):
    follow_from_now(test_db, fake_pypi)
    for number in range(120):
        fake_pypi.release(f"package-{number % 40}", f"1.{number}",
                          files=["sdist", "binary"])
    assert len(fake_pypi.journal) == 400
    # between polls the follower waits 30 s: only full batches are read
    # back to back
    follower = followers.make(db, poll_interval=30.0)
    started = reactor.seconds()
    await caught_up(follower, fake_pypi, timeout=20)
    assert reactor.seconds() - started < 20
    calls = fake_pypi.requests_to("xmlrpc")
    assert len(calls) == 9  # 8 full batches, then nothing more
    packages = state(test_db)
    assert len(packages) == 40
    assert sum(len(p[1]) for p in packages.values()) == 120
    assert follower.events_applied == 400


def second_database(pg_cluster):
    return _create_database(pg_cluster, TEMPLATE)


async def started_pool(database, reactor):
    pool = ConnectionPool(database.master_dsn, reactor)
    pool.startService()
    await pool.ready
    return pool


def script_busy_journal(fake):
    """Releases of seven packages with yanks, late wheels and removals."""
    def exists(name, version):
        return version in fake._project(name).releases

    for number in range(30):
        name = f"pkg-{number % 7}"
        fake.release(name, f"{number}.0",
                     files=["sdist"] if number % 3 else ["binary"])
        if number % 5 == 4:
            fake.yank(name, f"{number}.0", reason=f"reason {number}")
        if number % 6 == 5 and exists(name, f"{number - 7}.0"):
            fake.add_file(name, f"{number - 7}.0", "pure")
        if number % 9 == 8 and exists(name, f"{number - 14}.0"):
            fake.remove_release(name, f"{number - 14}.0")
    fake.remove_project("pkg-6")


@pytest_twisted.ensureDeferred
async def test_stopping_mid_way_loses_and_repeats_nothing(
        db, test_db, fake_pypi, followers, reactor, pg_cluster):
    follow_from_now(test_db, fake_pypi)
    script_busy_journal(fake_pypi)
    assert len(fake_pypi.journal) == 80  # four chunks of 20
    # one follower is stopped after its third chunk...
    first = followers.make(db, start=False)
    chunks = []

    def stop_soon(*change):
        if not chunks or chunks[-1] != first.saved_serial:
            chunks.append(first.saved_serial)
        if len(chunks) == 3 and first.running:
            first.stopService()

    first.page_listeners.append(stop_soon)
    first.startService()
    while first.running or first._cycle is not None:
        await sleep(reactor, 0.02)
    stopped_at = serial(test_db)
    assert fake_pypi.next_serial - 100 < stopped_at < fake_pypi.last_serial()
    # ...and another takes over
    second = followers.make(db)
    await caught_up(second, fake_pypi)
    # the same as one follower that was never stopped
    other = second_database(pg_cluster)
    try:
        follow_from_now(other, fake_pypi)
        other.sql("UPDATE configuration SET pypi_serial = %s",
                  (fake_pypi.journal[0][4] - 1,))
        pool = await started_pool(other, reactor)
        try:
            uninterrupted = followers.make(Database(pool))
            await caught_up(uninterrupted, fake_pypi)
            await uninterrupted.stopService()
        finally:
            await pool.stopService()
        assert state(test_db) == state(other)
        assert first.changes + second.changes == uninterrupted.changes
        # what was read again is exactly the stretch a parked deletion
        # held the saved serial back over (applying it changed nothing)
        applied_through = fake_pypi.journal[first.events_applied - 1][4]
        read_again = [e for e in fake_pypi.journal
                      if stopped_at < e[4] <= applied_through]
        assert first.events_applied + second.events_applied == \
            uninterrupted.events_applied + len(read_again)
        assert all(e[3] == "remove release" for e in read_again[:1])
    finally:
        pg_cluster.psql(f"DROP DATABASE {other.name} WITH (FORCE)")


@pytest_twisted.ensureDeferred
async def test_an_event_the_database_refuses_is_skipped_alone(
        db, test_db, fake_pypi, followers, logged):
    follow_from_now(test_db, fake_pypi)
    follower = followers.make(db)
    fake_pypi.release("fine", "1.0")
    # whatever the reason, the database will not take this release
    test_db.sql("ALTER TABLE versions ADD CONSTRAINT refuse_one "
                "CHECK (package <> 'refused')")
    fake_pypi.release("refused", "1.0")
    fake_pypi.release("fine", "2.0")
    await caught_up(follower, fake_pypi)
    assert state(test_db)["fine"][1].keys() == {"1.0", "2.0"}
    assert "refused" in state(test_db)
    assert any("skipping" in w and "refused" in w
               for w in warnings_in(logged))


@pytest_twisted.ensureDeferred
async def test_a_package_an_operator_removed_meanwhile_comes_back(
        db, test_db, fake_pypi, followers, logged):
    follow_from_now(test_db, fake_pypi)
    follower = followers.make(db)
    fake_pypi.release("foo", "1.0")
    await caught_up(follower, fake_pypi)
    # (the follower remembers that foo exists...)
    await db.delete_package("foo")
    fake_pypi.release("foo", "2.0")
    await caught_up(follower, fake_pypi)
    assert versions(test_db, "foo") == {"2.0": ("", False, "", "")}
    assert any("event by event" in w for w in warnings_in(logged))


# -- misbehaving servers ----------------------------------------------------

def xmlrpc_times(fake):
    return [r["time"] for r in fake.requests_to("xmlrpc")]


@pytest_twisted.ensureDeferred
async def test_slow_answers_time_out_and_are_asked_again(
        db, test_db, fake_pypi, followers, logged):
    follow_from_now(test_db, fake_pypi)
    fake_pypi.release("foo", "1.0", requires_python=">=3.10")
    fake_pypi.delay_next("xmlrpc", 5)
    fake_pypi.delay_next("json", 5)
    follower = followers.make(db, timeout=0.3)
    await caught_up(follower, fake_pypi)
    assert any("within 0.3 s" in w for w in warnings_in(logged))
    # the release is recorded without details at first, then repaired
    for _ in range(100):
        if versions(test_db, "foo")["1.0"][3]:
            break
        await sleep(follower.clock, 0.05)
    assert versions(test_db, "foo") == {"1.0": ("", False, "", ">=3.10")}


@pytest_twisted.ensureDeferred
async def test_server_errors_back_off_exponentially(db, test_db, fake_pypi,
                                                    followers, logged):
    follow_from_now(test_db, fake_pypi)
    fake_pypi.release("foo", "1.0")
    fake_pypi.fail_next("xmlrpc", 500, times=3)
    follower = followers.make(db, backoff=BackOff(initial=0.1, maximum=5))
    await caught_up(follower, fake_pypi)
    times = xmlrpc_times(fake_pypi)
    gaps = [later - earlier for earlier, later in zip(times, times[1:4])]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.39
    assert len([w for w in warnings_in(logged) if "500" in w]) == 1
    assert set(versions(test_db, "foo")) == {"1.0"}


@pytest_twisted.ensureDeferred
async def test_429_waits_as_long_as_retry_after_says(
        db, test_db, fake_pypi, followers):
    follow_from_now(test_db, fake_pypi)
    fake_pypi.release("foo", "1.0")
    fake_pypi.fail_next("xmlrpc", 429, headers={"Retry-After": "1"})
    follower = followers.make(db)
    await caught_up(follower, fake_pypi)
    times = xmlrpc_times(fake_pypi)
    assert times[1] - times[0] >= 0.95
    assert set(versions(test_db, "foo")) == {"1.0"}


@pytest_twisted.ensureDeferred
async def test_ratelimit_headers_pause_the_next_request(
        db, test_db, fake_pypi, followers, logged):
    follow_from_now(test_db, fake_pypi)
    fake_pypi.headers_next("xmlrpc",
                           {"RateLimit": "limit=100, remaining=0, reset=1"})
    follower = followers.make(db)
    await caught_up(follower, fake_pypi)
    fake_pypi.release("foo", "1.0")
    await caught_up(follower, fake_pypi)
    times = xmlrpc_times(fake_pypi)
    assert times[1] - times[0] >= 0.95
    assert warnings_in(logged) == []


@pytest_twisted.ensureDeferred
async def test_garbage_is_a_warning_that_says_what_was_wrong(
        db, test_db, fake_pypi, followers, logged):
    follow_from_now(test_db, fake_pypi)
    fake_pypi.release("foo", "1.0")
    fake_pypi.garbage_next("xmlrpc")
    fake_pypi.garbage_next("xmlrpc", body=b"<?xml version='1.0'?>"
                           b"<methodResponse><params><param><value>"
                           b"<string>not a list</string></value></param>"
                           b"</params></methodResponse>")
    fake_pypi.garbage_next("json", body=b"{not json")
    follower = followers.make(db)
    await caught_up(follower, fake_pypi)
    warnings = warnings_in(logged)
    assert any("not XML-RPC" in w for w in warnings)
    assert any("gave a str, not a list" in w for w in warnings)
    assert any("not JSON" in w for w in warnings)
    assert set(versions(test_db, "foo")) == {"1.0"}


@pytest_twisted.ensureDeferred
async def test_xmlrpc_faults_back_off(db, test_db, fake_pypi, followers,
                                      logged):
    follow_from_now(test_db, fake_pypi)
    fake_pypi.release("foo", "1.0")
    fake_pypi.fault_next(times=2)
    follower = followers.make(db)
    await caught_up(follower, fake_pypi)
    assert len([w for w in warnings_in(logged)
                if "too many requests" in w]) == 1
    assert len(fake_pypi.requests_to("xmlrpc")) == 3
    assert set(versions(test_db, "foo")) == {"1.0"}


@pytest_twisted.ensureDeferred
async def test_unreachable_xmlrpc_is_reported_once(db, test_db, fake_pypi,
                                                   followers, logged,
                                                   reactor):
    fake_pypi.release("foo", "1.0")
    fake_pypi.block("xmlrpc", 405)
    follower = followers.make(db, backoff=BackOff(initial=0.02, maximum=0.1))
    await sleep(reactor, 1.0)
    assert len(fake_pypi.requests_to("xmlrpc")) > 5
    warnings = warnings_in(logged)
    assert len(warnings) == 1 and "405" in warnings[0]
    assert follower.status()["problem"].startswith("Refused")
    assert serial(test_db) == 0
    fake_pypi.block("xmlrpc", None)
    await caught_up(follower, fake_pypi)
    assert len(warnings_in(logged)) == 1
    assert serial(test_db) == fake_pypi.last_serial()
    assert follower.status()["problem"] is None


@pytest_twisted.ensureDeferred
async def test_json_failures_never_stop_the_follower(
        db, test_db, fake_pypi, followers, logged, reactor):
    follow_from_now(test_db, fake_pypi)
    fake_pypi.block("json", 503)
    follower = followers.make(db)
    fake_pypi.create("foo", summary="Described later")
    fake_pypi.release("foo", "1.0", requires_python=">=3.11",
                      timestamp=T0 + 5)
    await caught_up(follower, fake_pypi)
    assert state(test_db) == {"foo": ("", {"1.0": ("", False, "", "")})}
    assert len([w for w in warnings_in(logged) if "JSON" in w]) == 1
    assert follower.status()["repairs_pending"] == 2
    fake_pypi.block("json", None)
    # the follower asks again once its back-off is over
    follower.json_backoff.succeeded()
    follower._json_retry_at = 0
    for _ in range(100):
        if not follower.status()["repairs_pending"]:
            break
        await sleep(reactor, 0.05)
    assert state(test_db) == {"foo": ("Described later", {
        "1.0": ("", False, "", ">=3.11")})}


@pytest_twisted.ensureDeferred
async def test_json_rate_limits_are_respected(db, test_db, fake_pypi,
                                              followers, reactor):
    fake_pypi.create("foo")
    follow_from_now(test_db, fake_pypi)
    fake_pypi.fail_next("json", 429, headers={"Retry-After": "1"})
    follower = followers.make(db)
    fake_pypi.release("foo", "1.0", requires_python=">=3.9")
    await caught_up(follower, fake_pypi)
    before = len(fake_pypi.requests_to("json"))
    await sleep(reactor, 0.5)
    assert len(fake_pypi.requests_to("json")) == before
    for _ in range(100):
        if versions(test_db, "foo")["1.0"][3]:
            break
        await sleep(reactor, 0.05)
    assert versions(test_db, "foo")["1.0"] == ("", False, "", ">=3.9")
    times = [r["time"] for r in fake_pypi.requests_to("json")]
    assert times[-1] - times[0] >= 0.95


# -- control and manners ----------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_pause_and_resume(db, test_db, fake_pypi, followers, reactor):
    follow_from_now(test_db, fake_pypi)
    follower = followers.make(db)
    await caught_up(follower, fake_pypi)
    follower.pause()
    await sleep(reactor, 0.1)
    asked = len(fake_pypi.requests_to("xmlrpc"))
    fake_pypi.release("foo", "1.0")
    await sleep(reactor, 0.5)
    assert len(fake_pypi.requests_to("xmlrpc")) == asked
    assert state(test_db) == {}
    assert follower.status()["paused"]
    follower.resume()
    await caught_up(follower, fake_pypi)
    assert set(state(test_db)) == {"foo"}


@pytest_twisted.ensureDeferred
async def test_polite_requests_over_few_connections(db, test_db, fake_pypi,
                                                    followers):
    follow_from_now(test_db, fake_pypi)
    follower = followers.make(db)
    for number in range(30):
        fake_pypi.release(f"pkg-{number}", "1.0")
    await caught_up(follower, fake_pypi)
    assert len(fake_pypi.requests) > 30
    assert {r["user_agent"].split(" ")[0] for r in fake_pypi.requests} == {
        f"piwtwist/{__version__}"}
    assert fake_pypi.connections <= 4


@pytest_twisted.ensureDeferred
async def test_stopping_gives_up_a_slow_request(db, test_db, fake_pypi,
                                                followers, reactor):
    follow_from_now(test_db, fake_pypi)
    fake_pypi.delay_next("xmlrpc", 30)
    follower = followers.make(db, timeout=60)
    await sleep(reactor, 0.2)
    started = reactor.seconds()
    await follower.stopService()
    assert reactor.seconds() - started < 1
    assert not follower._interruptible_work


# -- the master's options and service tree ----------------------------------

def master_options(tmp_path, *args):
    from tests.test_taps import parse
    secret = tmp_path / "secret"
    secret.write_text("s" * 40)
    os.chmod(secret, 0o600)
    return parse(master_tap.Options, "--build-abi", "cp311",
                 "--secret-file", str(secret), "-o", str(tmp_path / "www"),
                 "--builder-queue", "tcp:0:interface=127.0.0.1", *args)


def test_master_options_for_the_follower(not_root, tmp_path):
    options = master_options(tmp_path)
    assert options["pypi-xmlrpc"] == options["pypi-json"] == \
        "https://pypi.org/pypi"
    assert not (options["pypi-populate"] or options["build-pure-wheels"] or
                options["no-pypi-follow"])
    options = master_options(tmp_path, "--pypi-populate",
                             "--build-pure-wheels",
                             "--pypi-xmlrpc", "http://mirror.test/pypi",
                             "--pypi-json", "http://json.test/pypi")
    assert options["pypi-populate"] and options["build-pure-wheels"]


def test_the_master_follows_pypi(not_root, tmp_path, reactor):
    options = master_options(tmp_path, "--pypi-populate", "--dev-mode",
                             "--pypi-xmlrpc", "http://mirror.test/pypi",
                             "--pypi-json", "http://json.test/pypi")
    master = master_tap.MasterService(options, reactor)
    follower = master.follower
    assert follower in list(master.dependents)
    assert follower.xmlrpc.url == "http://mirror.test/pypi"
    assert follower.json.url == "http://json.test/pypi"
    assert follower.populate and follower.skip_pure_wheels
    assert follower.poll_interval == 2.0
    assert follower.build_queue is master.queue
    assert follower.http_pool is not None
    assert follower.output_path == options["output-path"]
    options = master_options(tmp_path, "--build-pure-wheels",
                             "--no-pypi-follow")
    master = master_tap.MasterService(options, reactor)
    assert master.follower is None
    assert not [s for s in master.dependents
                if isinstance(s, PyPIFollower)]


def test_changes_reach_the_page_writer():
    calls = []

    class PageWriter:
        def __getattr__(self, name):
            return lambda *args, **kwargs: calls.append(
                (name, args, kwargs))

    class TreeEffects:
        def request_deletions(self):
            calls.append(("request_deletions", (), {}))

    listener = page_writer_listener(PageWriter(), TreeEffects())
    listener("foo", None, PageChange.PACKAGE_ADDED)
    listener("foo", "1.0", PageChange.VERSION_ADDED)
    listener("foo", "1.0", PageChange.VERSION_DELETED)
    listener("foo", None, PageChange.DESCRIPTION)
    listener("foo", None, PageChange.PACKAGE_DELETED)
    # deletions: the database recorded what the tree loses; the tree
    # effects carry it out (and rewrite the pages)
    assert calls == [
        ("request_rewrite", ("foo",), {"both": True}),
        ("rewrite_index", (), {}), ("rewrite_search", (), {}),
        ("request_rewrite", ("foo",), {"both": True}),
        ("request_deletions", (), {}),
        ("request_rewrite", ("foo",), {"both": False}),
        ("rewrite_search", (), {}),
        ("request_deletions", (), {}),
    ]


# -- size and the reactor (issue 15) ----------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_project_document_too_large_to_read_is_done_without(
        db, test_db, fake_pypi, followers, logged, observe_errors):
    for index in range(40):
        fake_pypi.release("Big", f"1.{index}", files=["sdist", "binary"])
    fake_pypi.release("small", "1.0")
    follower = followers.make(db, populate=True, start=False)
    # the big project's document is ~40 KB, a release's ~1 KB
    follower.json.client.max_bytes = 4000
    follower.startService()
    await caught_up(follower, fake_pypi)
    packages = state(test_db)
    assert packages["small"][1] == {"1.0": ("", False, "", "")}
    assert packages["big"] == ("", {})  # recorded, without its releases
    assert any("recorded Big without its releases" in w
               for w in warnings_in(logged))
    errors = [e for e in observe_errors]
    assert len(errors) == 1
    from twisted.logger import formatEvent
    assert "/pypi/big/json is larger than 4000 bytes" in \
        formatEvent(errors[0])
    # the follower carries on: a new release is read from its own document
    fake_pypi.release("Big", "2.0", requires_python=">=3.9")
    await caught_up(follower, fake_pypi)
    assert state(test_db)["big"][1] == {"2.0": ("", False, "", ">=3.9")}
    paths = [r["path"] for r in fake_pypi.requests]
    assert paths.count("/pypi/big/json") == 1
    assert "/pypi/big/2.0/json" in paths
    assert follower.status()["repairs_pending"] == 0
    observe_errors.clear()  # the one error this test expects


def busy_batch(count, first=FIRST_SERIAL):
    """*count* raw journal entries with releases, files, repeats and
    deletions journalled before their creations."""
    entries = []
    for index in range(count):
        # six entries on each release, of projects seen again and again
        name = f"project-{index // 6 % 3000}"
        version = f"1.{index // 6 % 7}"
        kind = index % 6
        if kind == 0:
            action = "new release"
        elif kind in (1, 2):  # the same file twice: a repeat
            action = f"add source file {name}-{version}.tar.gz"
        elif kind == 3:
            action = "remove release"
        elif kind == 4:
            action = f"add cp311 file {name.replace('-', '_')}-{version}" \
                     f"-cp311-cp311-linux_armv7l.whl"
        else:
            action = "create"
        # deletions carry a later time than what follows them
        stamp = T0 + index + (30 if kind == 3 else 0)
        entries.append([name, None if kind == 5 else version, stamp,
                        action, first + index])
    return entries


def test_a_full_batch_is_sequenced_a_chunk_at_a_time():
    """50,000 entries are parsed and sequenced 1,000 at a time with a turn
    of the reactor between, into what one go would give."""
    from twisted.internet import defer
    from piwtwist.pypi.journal import parse_entry
    class CountingClock(task.Clock):
        turns = 0

        def callLater(self, delay, *args, **kwargs):
            self.turns += 1
            return super().callLater(delay, *args, **kwargs)

    clock = CountingClock()
    follower = PyPIFollower(None, clock, None, None, "/nonexistent",
                            chunk_size=1000)
    follower.sequencer.start_at(FIRST_SERIAL - 1)
    entries = busy_batch(50_000)
    sequencing = defer.Deferred.fromCoroutine(
        follower._sequence_batch(entries))
    # other work the reactor has meanwhile, and how far the batch was
    # each time it ran
    seen = []

    def other_work():
        seen.append(follower.sequencer.high_water)
        if not sequencing.called:
            clock.callLater(0, other_work)

    clock.callLater(0, other_work)
    clock.advance(0)
    assert sequencing.called
    turns = clock.turns - len(seen)
    assert turns == 49 + 49  # parsing, then sequencing
    # the other work ran after every turn: between every two chunks
    assert len(seen) == turns
    assert len(set(seen)) == 1 + 50  # before, and after each sequenced chunk
    ordered = sequencing.result
    in_one_go = JournalSequencer()
    in_one_go.start_at(FIRST_SERIAL - 1)
    expected = in_one_go.sequence([parse_entry(e) for e in entries])
    assert ordered == expected
    assert in_one_go.deletions_reapplied > 0 and in_one_go.repeats_dropped
    assert follower.sequencer.high_water == in_one_go.high_water
    assert follower.sequencer.parked() == in_one_go.parked()
    assert not clock.getDelayedCalls()
