"""The build queue service with a fake clock and a scripted database."""

from twisted.internet import defer, task

from piwtwist.db.pool import DatabaseUnavailable
from piwtwist.master.build_queue import BuildQueue
from tests.test_builder_hub import FakeDatabase, entry


class SlowDatabase(FakeDatabase):
    """Answers get_build_queue only when the test says so."""

    def __init__(self, entries=()):
        super().__init__(entries)
        self.calls = []

    def get_build_queue(self, limit, exclude=()):
        d = defer.Deferred()
        self.calls.append((d, list(self.entries), list(exclude)))
        return d

    def answer(self, index=-1):
        d, entries, exclude = self.calls[index]
        d.callback([e for e in entries
                    if (e.abi_tag, e.package, e.version) not in exclude])


class FailingDatabase(FakeDatabase):
    async def get_build_queue(self, limit, exclude=()):
        raise DatabaseUnavailable("cannot connect to the database: gone")


def started(db, **kwargs):
    clock = task.Clock()
    queue = BuildQueue(db, clock, **kwargs)
    queue.startService()
    return queue, clock


def test_hands_out_each_entry_once_per_abi():
    queue, clock = started(FakeDatabase(
        [entry("a"), entry("b"), entry("c", abi="cp39")]))
    assert queue.lengths() == {"cp311": 2, "cp39": 1}
    assert queue.take("cp311", "builder 1").package == "a"
    assert queue.take("cp311", "builder 2").package == "b"
    assert queue.take("cp311", "builder 3") is None
    assert queue.take("cp39", "builder 4").package == "c"
    assert queue.holder(entry("a")) == "builder 1"
    queue.stopService()
    assert not clock.getDelayedCalls()


def test_held_entries_are_excluded_from_refreshes():
    db = FakeDatabase([entry("a"), entry("b")])
    queue, clock = started(db)
    queue.take("cp311", "builder 1")
    clock.advance(60)
    assert [e.package for e in queue._queues["cp311"]] == ["b"]
    queue.stopService()


def test_refresh_racing_a_take_never_hands_out_twice():
    db = SlowDatabase([entry("a"), entry("b")])
    queue, clock = started(db)
    db.answer(0)
    queue.request_refresh()
    clock.advance(1)  # a second query is now in flight...
    taken = queue.take("cp311", "builder 1")  # ...while this is handed out
    db.answer(-1)  # the query's answer still lists it
    assert taken.package == "a"
    assert queue.take("cp311", "builder 2").package == "b"
    assert queue.take("cp311", "builder 3") is None
    queue.stopService()


def test_released_entry_is_offered_again():
    db = FakeDatabase([entry("a")])
    queue, clock = started(db)
    taken = queue.take("cp311", "builder 1")
    assert queue.take("cp311", "builder 2") is None
    queue.release(taken)
    clock.advance(1)
    assert queue.take("cp311", "builder 2") == taken
    queue.stopService()


def test_dropped_package_leaves_at_once_and_stops_its_builds():
    db = SlowDatabase([entry("a"), entry("a", "2.0"), entry("b")])
    queue, clock = started(db)
    db.answer(0)
    held = queue.take("cp311", "builder 1")
    assert held.package == "a"
    assert queue.is_wanted(held)
    queue.request_refresh()
    clock.advance(1)  # a query is in flight when the package is deleted
    db.entries = [entry("b")]
    queue.drop("a")
    assert not queue.is_wanted(held)
    assert [e.package for e in queue._queues["cp311"]] == ["b"]
    db.answer(1)  # answered from before the deletion: must not bring it back
    assert [e.package for e in queue._queues["cp311"]] == ["b"]
    queue.stopService()


def test_database_trouble_keeps_the_queue_and_says_so(observe_errors):
    warnings = []
    from twisted.logger import globalLogPublisher
    globalLogPublisher.addObserver(warnings.append)
    try:
        queue, clock = started(FakeDatabase([entry("a")]))
        queue.db = FailingDatabase()
        clock.advance(60)
    finally:
        globalLogPublisher.removeObserver(warnings.append)
    assert queue.lengths() == {"cp311": 1}
    assert any("could not be refreshed" in str(e.get("log_format"))
               for e in warnings)
    assert queue._loop.running  # the periodic refresh goes on
    queue.stopService()


def test_bursts_of_refresh_requests_share_one_query():
    db = SlowDatabase([entry("a")])
    queue, clock = started(db, settle_delay=0.5)
    db.answer(0)
    for _ in range(10):
        queue.request_refresh()
    clock.advance(1)
    assert len(db.calls) == 2
    db.answer(-1)
    queue.stopService()


def test_entry_finished_while_a_refresh_runs_is_not_brought_back():
    db = SlowDatabase([entry("a"), entry("b")])
    queue, clock = started(db)
    db.answer(0)
    queue.request_refresh()
    clock.advance(1)  # a query is in flight...
    taken = queue.take("cp311", "builder 1")
    queue.finish(taken)  # ...when the build is recorded
    db.answer(-1)  # the answer predates the recording
    assert [e.package for e in queue._queues["cp311"]] == ["b"]
    queue.stopService()


def test_running_dry_refreshes_at_once():
    db = SlowDatabase([entry("a")])
    queue, clock = started(db)
    db.answer(0)
    queue.take("cp311", "builder 1")
    assert queue.take("cp311", "builder 2") is None
    clock.advance(0)
    assert len(db.calls) == 2
    db.answer(-1)
    queue.stopService()


def test_concurrent_refreshes_run_one_query_at_a_time():
    db = SlowDatabase([entry("a")])
    queue, clock = started(db)
    waiting = [defer.Deferred.fromCoroutine(queue.refresh())
               for _ in range(3)]
    for expected_calls in (1, 2, 3, 4):
        # the start-up query, then one per waiter: never two at once
        assert len(db.calls) == expected_calls
        assert sum(not d.called for d, _, _ in db.calls) == 1
        db.answer(-1)
    assert all(d.called for d in waiting)
    queue.stopService()
