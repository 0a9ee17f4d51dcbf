"""The master's reactor stall detector: a slow call on the reactor is
measured and reported, with a fake clock and with the real reactor."""

import time

import pytest_twisted
from twisted.internet import task
from twisted.logger import LogLevel, globalLogPublisher

from piwtwist.master.stall_detector import StallDetector


class Captured:
    def __init__(self):
        self.events = []

    def __call__(self, event):
        if event.get("log_namespace", "").endswith("StallDetector"):
            self.events.append(event)

    def __enter__(self):
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc):
        globalLogPublisher.removeObserver(self)


def test_slow_call_reported_with_a_warning():
    clock = task.Clock()
    detector = StallDetector(clock, tick=0.05, interval=60, threshold=0.1)
    detector.startService()
    with Captured() as captured:
        clock.pump([0.05] * 100)          # an idle reactor: on time
        assert detector.longest == 0
        clock.advance(0.3)                # a call that held it for 300 ms
        assert abs(detector.longest - 0.25) < 1e-9
        clock.pump([0.05] * 1200)         # the rest of the minute
    assert len(captured.events) == 1
    event = captured.events[0]
    assert event["log_level"] == LogLevel.warn
    assert round(event["stall_ms"]) == 250
    assert abs(detector.last_longest - 0.25) < 1e-9
    assert detector.longest == 0          # a new interval began
    detector.stopService()
    assert not clock.getDelayedCalls()


def test_short_stalls_logged_quietly():
    clock = task.Clock()
    detector = StallDetector(clock, tick=0.05, interval=10, threshold=0.1)
    detector.startService()
    with Captured() as captured:
        clock.advance(0.062)              # 12 ms late
        clock.pump([0.05] * 420)
    levels = [e["log_level"] for e in captured.events]
    assert levels[0] == LogLevel.info
    assert round(captured.events[0]["stall_ms"]) == 12
    assert "longest reactor stall in the last 10s: 12 ms" in \
        captured.events[0]["log_format"].format(**captured.events[0])
    assert round(captured.events[1]["stall_ms"]) == 0
    detector.stopService()
    assert not clock.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_real_reactor_stall_measured(reactor):
    detector = StallDetector(reactor, tick=0.01, interval=3600)
    detector.startService()
    try:
        await task.deferLater(reactor, 0.05, lambda: None)
        # a deliberately blocking call on the reactor
        await task.deferLater(reactor, 0, time.sleep, 0.3)
        await task.deferLater(reactor, 0.05, lambda: None)
        assert 0.25 <= detector.longest < 1.0, detector.longest
    finally:
        detector.stopService()


def test_figures_for_monitors_recent_and_worst():
    """What the control hub shows: the longest stall of the minute under
    way and the one before, and the longest since the start."""
    clock = task.Clock()
    detector = StallDetector(clock, tick=0.05, interval=60, threshold=0.1,
                             gc_callbacks=[])
    detector.startService()
    assert detector.figures() == {"recent": 0.0, "worst": 0.0,
                                  "worst_at": None, "gc_recent": 0.0,
                                  "gc_worst": 0.0}
    with Captured():
        clock.pump([0.05] * 10)
        clock.advance(0.45)               # held up 400 ms
        stalled_at = clock.seconds()
        clock.pump([0.05] * 10)
        figures = detector.figures()
        assert abs(figures["recent"] - 0.4) < 1e-9
        assert abs(figures["worst"] - 0.4) < 1e-9
        assert figures["worst_at"] == stalled_at
        clock.pump([0.05] * 1200)         # the next minute: still recent
        assert abs(detector.recent() - 0.4) < 1e-9
        clock.advance(0.15)               # 100 ms in this minute
        clock.pump([0.05] * 1300)         # two minutes on: forgotten
        assert abs(detector.recent() - 0.1) < 1e-9
        clock.pump([0.05] * 1300)
        assert detector.recent() == 0.0
    assert abs(detector.figures()["worst"] - 0.4) < 1e-9
    detector.stopService()
    assert not clock.getDelayedCalls()


def test_garbage_collections_are_timed_and_logged_with_the_stall():
    """A collection stops every thread: its length is logged beside the
    stall, so that the two causes can be told apart."""
    clock = task.Clock()
    now = [100.0]
    callbacks = []
    detector = StallDetector(clock, tick=0.05, interval=10, threshold=0.1,
                             gc_callbacks=callbacks, timer=lambda: now[0])
    detector.startService()
    (collecting,) = callbacks
    with Captured() as captured:
        for _ in range(3):
            collecting("start", {"generation": 0})
            now[0] += 0.01
            collecting("stop", {"generation": 0, "collected": 0})
        collecting("start", {"generation": 2})
        now[0] += 0.3
        collecting("stop", {"generation": 2, "collected": 0})
        clock.advance(0.35)               # what the collection held up
        assert abs(detector.figures()["gc_recent"] - 0.3) < 1e-9
        clock.pump([0.05] * 420)          # two intervals
    event = captured.events[0]
    assert event["log_level"] == LogLevel.warn
    text = event["log_format"].format(**event)
    assert text.startswith("longest reactor stall in the last 10s: 300 ms")
    # which generation, and how often each ran: what an operator needs to
    # tune the collector's thresholds
    assert text.endswith("longest garbage collection 300 ms (generation 2; "
                         "collections of generations 0/1/2: 3/0/1)")
    assert round(captured.events[1]["gc_ms"]) == 0
    assert abs(detector.figures()["gc_worst"] - 0.3) < 1e-9
    detector.stopService()
    assert callbacks == []
    assert not clock.getDelayedCalls()


def test_the_real_collector_is_timed():
    import gc
    detector = StallDetector(task.Clock(), tick=0.05)
    detector.startService()
    try:
        gc.collect()
        assert detector.gc_worst > 0
    finally:
        detector.stopService()
    assert detector._gc_phase not in gc.callbacks


def test_a_stall_says_whether_the_reactor_ran_through_it():
    """A stall the reactor's thread ran through (its CPU time grew as much)
    is code on the reactor; one it did not is the thread waiting for the
    GIL or a core.  The log line says which."""
    clock = task.Clock()
    cpu = [0.0]
    detector = StallDetector(clock, tick=0.05, interval=10, threshold=0.1,
                             gc_callbacks=[], thread_timer=lambda: cpu[0])
    detector.startService()
    with Captured() as captured:
        clock.pump([0.05] * 10)
        cpu[0] += 0.01                    # ran 10 ms of a 300 ms stall
        clock.advance(0.35)
        clock.pump([0.05] * 200)          # first interval over
        cpu[0] += 0.3                     # ran through this one
        clock.advance(0.35)
        clock.pump([0.05] * 200)
    waiting, busy = [e["log_format"].format(**e) for e in captured.events]
    assert "its thread ran 10 ms of that tick's 350 ms" in waiting
    assert "its thread ran 300 ms of that tick's 350 ms" in busy
    detector.stopService()
