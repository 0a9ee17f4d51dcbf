"""How long the master's reactor goes without turning.

Everything in the master shares one reactor, so a call that blocks (a
large result turned into records, a big JSON document, a hash of a large
file) delays every builder, admin tool and monitor.  systemd's watchdog
catches a reactor that stops for good; this catches the shorter stalls
that come before, so that an operator sees them in the log.

A timer asks to run every ``tick`` seconds; how late it runs is how long
the reactor was busy with something else.  Each ``interval`` the longest
delay seen is logged (a warning above ``threshold``) and starts again.
:meth:`figures` gives monitors the recent and the worst stall.

Python's cyclic garbage collector stops every thread while it runs, and a
full collection of a large heap takes hundreds of milliseconds: the
longest collection of each interval is logged with the stall, so that an
operator can tell the two causes apart.  So is how much of the longest
stall the reactor's thread spent running (its CPU time): a stall it ran
through is code on the reactor; one it did not is the thread waiting, for
the GIL that another thread holds or for a core.
"""

import gc
import time

from twisted.application import service
from twisted.logger import Logger


class StallDetector(service.Service):
    """Measures the reactor's lateness; see the module's docstring.

    ``clock`` is the reactor or a ``task.Clock``: only ``seconds()`` and
    ``callLater()`` are used, so a test advances a fake clock past a tick
    to stand for a slow call.
    """

    name = "stall detector"
    log = Logger()

    def __init__(self, clock, tick=0.05, interval=60.0, threshold=0.1,
                 gc_callbacks=gc.callbacks, timer=time.perf_counter,
                 thread_timer=time.thread_time):
        self.clock = clock
        self.gc_callbacks = gc_callbacks
        self.timer = timer
        self.thread_timer = thread_timer
        #: the reactor thread's CPU time (seconds) from the scheduling of
        #: the interval's longest-stalled tick to its running, and of the
        #: last complete interval's
        self.longest_running = self.last_longest_running = None
        self._scheduled_cpu = None
        #: the longest garbage collection (seconds) of the interval under
        #: way, of the last complete one, and since the start
        self.gc_longest = 0.0
        self.gc_last_longest = None
        #: the generation of the interval's longest collection, and how
        #: many collections of each generation it saw (for the log line)
        self.gc_longest_generation = self.gc_last_generation = None
        self.gc_counts = [0, 0, 0]
        self.gc_last_counts = None
        self.gc_worst = 0.0
        self._gc_started = None
        self.tick = tick
        self.interval = interval
        self.threshold = threshold
        #: the longest stall (seconds) of the interval under way
        self.longest = 0.0
        #: the longest stall of the last complete interval
        self.last_longest = None
        #: the longest stall since the service started, and when it ended
        self.worst = 0.0
        self.worst_at = None
        self._due = None
        self._interval_started = None
        self._call = None

    def startService(self):
        super().startService()
        self._interval_started = self.clock.seconds()
        self.longest = 0.0
        self.worst, self.worst_at = 0.0, None
        self.gc_longest = self.gc_worst = 0.0
        self.gc_callbacks.append(self._gc_phase)
        self._schedule()

    def _gc_phase(self, phase, info):
        """gc.callbacks: time each collection (in whichever thread)."""
        if phase == "start":
            self._gc_started = self.timer()
        elif self._gc_started is not None:
            pause = self.timer() - self._gc_started
            self._gc_started = None
            generation = info.get("generation", 0)
            self.gc_counts[min(generation, 2)] += 1
            if pause > self.gc_longest:
                self.gc_longest = pause
                self.gc_longest_generation = generation
            self.gc_worst = max(self.gc_worst, pause)

    def recent(self):
        """The longest stall (seconds) of the interval under way and the
        last complete one: what the last minute or two have seen."""
        return max(self.longest, self.last_longest or 0.0)

    def figures(self):
        """For monitors: ``recent`` (:meth:`recent`), ``worst`` since the
        start and ``worst_at`` (when it ended, clock time), in seconds."""
        return {"recent": self.recent(), "worst": self.worst,
                "worst_at": self.worst_at,
                "gc_recent": max(self.gc_longest,
                                 self.gc_last_longest or 0.0),
                "gc_worst": self.gc_worst}

    def stopService(self):
        super().stopService()
        if self._gc_phase in self.gc_callbacks:
            self.gc_callbacks.remove(self._gc_phase)
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self):
        self._due = self.clock.seconds() + self.tick
        self._scheduled_cpu = self.thread_timer()
        self._call = self.clock.callLater(self.tick, self._ticked)

    def _ticked(self):
        self._call = None
        now = self.clock.seconds()
        stall = now - self._due
        if stall > self.longest or self.longest_running is None:
            self.longest = max(self.longest, stall)
            self.longest_running = self.thread_timer() - self._scheduled_cpu
        if stall > self.worst:
            self.worst, self.worst_at = stall, now
        if now - self._interval_started >= self.interval:
            self._report(now - self._interval_started)
            self._interval_started = now
        if self.running:
            self._schedule()

    def _report(self, elapsed):
        self.last_longest, self.longest = self.longest, 0.0
        self.last_longest_running, self.longest_running = \
            self.longest_running, None
        running = "?" if self.last_longest_running is None else \
            f"{self.last_longest_running * 1000:.0f}"
        self.gc_last_longest, self.gc_longest = self.gc_longest, 0.0
        self.gc_last_generation, self.gc_longest_generation = \
            self.gc_longest_generation, None
        self.gc_last_counts, self.gc_counts = self.gc_counts, [0, 0, 0]
        collections = "/".join(str(n) for n in self.gc_last_counts)
        if self.last_longest > self.threshold:
            self.log.warn(
                "longest reactor stall in the last {elapsed:.0f}s: "
                "{stall_ms:.0f} ms (more than {threshold_ms:.0f} ms: "
                "something blocks the reactor; its thread ran {running} "
                "ms of that tick's {window_ms:.0f} ms); longest garbage "
                "collection {gc_ms:.0f} ms (generation {generation}; "
                "collections of generations 0/1/2: {collections})",
                elapsed=elapsed, stall_ms=self.last_longest * 1000,
                threshold_ms=self.threshold * 1000, running=running,
                window_ms=(self.last_longest + self.tick) * 1000,
                gc_ms=self.gc_last_longest * 1000,
                generation=self.gc_last_generation,
                collections=collections)
        else:
            self.log.info(
                "longest reactor stall in the last {elapsed:.0f}s: "
                "{stall_ms:.0f} ms; longest garbage collection "
                "{gc_ms:.0f} ms (generation {generation}; collections of "
                "generations 0/1/2: {collections})",
                elapsed=elapsed, stall_ms=self.last_longest * 1000,
                gc_ms=self.gc_last_longest * 1000,
                generation=self.gc_last_generation,
                collections=collections)
