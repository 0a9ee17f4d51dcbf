"""The master's collector tuning: thresholds while it runs, and young
collections on a timer, which keep the young generation a second's worth
however the master churns its long-lived objects."""

import gc

from twisted.internet import task

from piwtwist.master.collector import CollectorTuning


class Collector:
    """Stands in for the gc module: notes what it is asked."""

    def __init__(self):
        self.thresholds = (700, 10, 10)
        self.collections = []

    def get_threshold(self):
        return self.thresholds

    def set_threshold(self, *thresholds):
        self.thresholds = thresholds

    def collect(self, generation=2):
        self.collections.append(generation)
        return 0

    def freeze(self):
        self.collections.append("freeze")

    def unfreeze(self):
        self.collections.append("unfreeze")


def test_each_generation_is_collected_on_its_timer_while_it_runs():
    clock, collector = task.Clock(), Collector()
    tuning = CollectorTuning(clock, young_interval=1.0, middle_interval=3.0,
                             full_interval=6.0, thresholds=(5, 6, 7),
                             collector=collector)
    tuning.startService()
    assert collector.thresholds == (5, 6, 7)
    assert collector.collections == []
    clock.pump([1.0] * 6)
    assert sorted(collector.collections) == [0] * 6 + [1] * 2 + [2]
    tuning.stopService()
    assert collector.thresholds == (700, 10, 10)
    clock.pump([1.0] * 6)
    assert len(collector.collections) == 9
    assert not clock.getDelayedCalls()


def test_what_the_master_made_to_start_is_frozen_until_it_stops():
    clock, collector = task.Clock(), Collector()
    tuning = CollectorTuning(clock, collector=collector)
    tuning.startService()
    tuning.freeze_startup()
    tuning.freeze_startup()       # once
    assert collector.collections == [2, "freeze"]
    tuning.stopService()
    assert collector.collections == [2, "freeze", "unfreeze"]


def churn(objects, rounds):
    """What a cache or a deque of recent builds does: a new long-lived
    object for each old one freed."""
    from collections import deque
    kept = deque([n] for n in range(objects))
    for n in range(rounds):
        kept.append([n])
        kept.popleft()
    return kept


def test_churn_grows_the_young_generation_unless_collected():
    """The reason for the timer, with the real collector: churn leaves
    CPython's allocation count near zero while the young generation grows;
    a young collection per interval keeps it to what that interval
    made."""
    before = gc.get_threshold()
    gc.set_threshold(50_000, 50, 100)
    try:
        gc.collect()
        kept = churn(100_000, 100_000)
        assert gc.get_count()[0] < 1_000
        assert len(gc.get_objects(0)) > 90_000
        clock = task.Clock()
        tuning = CollectorTuning(clock, young_interval=1.0)
        tuning.startService()
        clock.advance(1.0)
        assert len(gc.get_objects(0)) < 1_000
        tuning.stopService()
        del kept
    finally:
        gc.set_threshold(*before)
