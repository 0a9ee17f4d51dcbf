"""The page writer's queue is saved request by request: a crash (no
stopService) loses no requested rewrite, and each save carries only what
changed."""

import pytest
import pytest_twisted

from piwtwist.db.pool import DatabaseUnavailable
from tests.web_support import add_release, page_writer, settle


class CountingDatabase:
    """The real database, with its queue saves counted (and refused while
    ``refuse`` is set)."""

    def __init__(self, db):
        self.db = db
        self.saves = []
        self.refuse = False

    def __getattr__(self, name):
        return getattr(self.db, name)

    async def update_rewrites_pending(self, done, added):
        if self.refuse:
            raise DatabaseUnavailable("the database went away")
        self.saves.append((sorted(done), sorted(r.package for r in added)))
        await self.db.update_rewrites_pending(done, added)


@pytest.fixture
def output(tmp_path):
    path = tmp_path / "www"
    path.mkdir()
    return path


async def saved(db):
    return {(r.package, r.command) for r in await db.load_rewrites_pending()}


@pytest_twisted.ensureDeferred
async def test_requests_are_saved_as_they_come_and_forgotten_once_written(
        db, output, reactor):
    for name in ("one", "two", "three"):
        await add_release(db, name, "1.0")
    counting = CountingDatabase(db)
    writer = page_writer(counting, output, reactor, rewrite_delay=0.5,
                         save_interval=0.1)
    writer.startService()
    try:
        await settle(reactor, 0.05)
        writer.request_rewrite("one")
        writer.request_rewrite("two", both=False)
        writer.request_rewrite("one", both=False)
        await settle(reactor, 0.05)
        # saved before anything is written: a crash now loses nothing
        assert await saved(db) == {("one", "BOTH"), ("two", "PROJECT")}
        assert counting.saves == [([], ["one", "two"])]  # one save a turn
        writer.request_rewrite("two")
        await settle(reactor, 0.05)
        assert counting.saves[-1] == ([], ["two"])  # only what changed
        assert await saved(db) == {("one", "BOTH"), ("two", "BOTH")}
        # a save the database refuses is made again later
        counting.refuse = True
        writer.request_rewrite("three", both=False)
        await settle(reactor, 0.05)
        counting.refuse = False
        await settle(reactor, 0.2)
        assert await saved(db) == {("one", "BOTH"), ("two", "BOTH"),
                                   ("three", "PROJECT")}
        await writer.wait_until_idle()
        await settle(reactor, 0.1)
        assert (output / "project" / "three" / "index.html").is_file()
        # written: forgotten, without waiting for the writer to stop
        assert await saved(db) == set()
        assert {p for done, _ in counting.saves for p in done} == {
            "one", "two", "three"}
    finally:
        await writer.stopService()
    assert await saved(db) == set()


@pytest_twisted.ensureDeferred
async def test_a_write_asked_for_while_stopping_waits_for_the_next_start(
        db, output, reactor):
    """Services that stop after the page writer (the tree effects carrying
    out a deletion) may still ask for a project's pages: no traceback, and
    the rewrite is saved for the next start, not lost."""
    await add_release(db, "late", "1.0")
    writer = page_writer(db, output, reactor, rewrite_delay=0.5,
                         save_interval=0.1)
    writer.startService()
    await settle(reactor, 0.05)
    await writer.stopService()
    assert not await writer.write_project("late")
    await settle(reactor, 0.1)
    assert not (output / "project" / "late" / "index.html").exists()
    assert await saved(db) == {("late", "BOTH")}
    # the next start writes it and forgets it
    again = page_writer(db, output, reactor, rewrite_delay=0.05,
                        save_interval=0.1)
    again.startService()
    try:
        await settle(reactor, 0.3)
        await again.wait_until_idle()
        await settle(reactor, 0.1)
        assert (output / "project" / "late" / "index.html").is_file()
        assert await saved(db) == set()
    finally:
        await again.stopService()


@pytest_twisted.ensureDeferred
async def test_a_big_queue_is_saved_in_pieces(db, output, reactor,
                                              monkeypatch):
    """A rebuild of every project queues PyPI's 740,000 names in one
    turn: they are saved a piece at a time, not in one query."""
    from piwtwist.web import page_writer as module
    monkeypatch.setattr(module, "SAVE_PIECE", 2)
    names = [f"p{n}" for n in range(5)]
    for name in names:
        await add_release(db, name, "1.0")
    counting = CountingDatabase(db)
    writer = page_writer(counting, output, reactor, rewrite_delay=30)
    writer.startService()
    try:
        await settle(reactor, 0.05)
        for name in names:
            writer.request_rewrite(name)
        await settle(reactor, 0.1)
        assert [len(added) for _, added in counting.saves] == [2, 2, 1]
        assert await saved(db) == {(name, "BOTH") for name in names}
    finally:
        await writer.stopService()


@pytest_twisted.ensureDeferred
async def test_a_big_queue_refused_in_the_middle_loses_nothing(
        db, output, reactor, monkeypatch):
    """The database goes away after the first piece: the rest, and the
    piece in hand, are saved at the next try."""
    from piwtwist.web import page_writer as module
    monkeypatch.setattr(module, "SAVE_PIECE", 2)
    names = [f"p{n}" for n in range(5)]
    counting = CountingDatabase(db)
    original = counting.update_rewrites_pending
    calls = []

    async def refuse_the_second(done, added):
        calls.append(len(added))
        if len(calls) == 2:
            raise DatabaseUnavailable("the database went away")
        await original(done, added)

    counting.update_rewrites_pending = refuse_the_second
    writer = page_writer(counting, output, reactor, rewrite_delay=30,
                         save_interval=0.1)
    writer.startService()
    try:
        await settle(reactor, 0.05)
        for name in names:
            writer.request_rewrite(name, both=name != "p4")
        await settle(reactor, 0.5)
        assert await saved(db) == {(name, "BOTH") for name in names[:4]} | {
            ("p4", "PROJECT")}
    finally:
        await writer.stopService()


@pytest_twisted.ensureDeferred
async def test_a_big_queue_adds_nothing_the_collector_tracks(
        db, output, reactor):
    """Every tracked object lengthens the master's full garbage
    collections (reactor stalls); a full rebuild queues one request per
    project, PyPI has 740,000."""
    import gc
    writer = page_writer(db, output, reactor, rewrite_delay=3600,
                         save_interval=3600)
    names = [f"p{n}" for n in range(20_000)]
    gc.collect()
    before = len(gc.get_objects())
    for name in names:
        writer._add(name, "BOTH", save=False)
    gc.collect()
    assert len(writer._pending) == len(names)
    assert len(gc.get_objects()) - before < 100
