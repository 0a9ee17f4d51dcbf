"""Python's garbage collector, tuned for a master that must never pause
long.

A collection stops every thread, the reactor's too, for as long as it
takes, and it takes as long as the objects it looks at.  Two settings:

* thresholds (``GC_THRESHOLDS``) that make full collections rare: with the
  defaults (700, 10, 10) every minute of load brought a full collection over
  the master's ~200,000 objects (bench/follower.py, 50,000 events: 125-169
  ms each);
* collections on timers, on the reactor: the young generation every
  ``young_interval`` seconds, the middle one every ``middle_interval``, a
  full collection every ``full_interval``.  CPython
  counts allocations minus deallocations *of any age*, so a master that
  keeps replacing long-lived objects (caches, queues, deques of recent
  builds) frees old ones as fast as it makes new ones: the count stays near
  zero while the young generation grows to hundreds of thousands of
  objects, and the one collection that finally comes looks at all of them
  (bench/scale.py at a tenth of PyPI: one young collection a minute, 110-146
  ms each).  On a timer, each looks at a second's worth.  The same count
  is what starts the older generations' collections, so they are timed
  too: without them cyclic garbage that lived a while (a builder's
  connection, say) would never be collected.

What the master made to start (modules, classes, services) is frozen once
it has started (``gc.freeze``): full collections need not look at it
again.
"""

import gc

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

GC_THRESHOLDS = (50_000, 50, 100)
#: Seconds between collections of each generation.
YOUNG_INTERVAL = 1.0
MIDDLE_INTERVAL = 30.0
FULL_INTERVAL = 900.0


class CollectorTuning(service.Service):
    """Sets the thresholds while running (the old ones come back at stop)
    and collects each generation on its timer."""

    log = Logger()
    name = "collector tuning"

    def __init__(self, clock, young_interval=YOUNG_INTERVAL,
                 middle_interval=MIDDLE_INTERVAL, full_interval=FULL_INTERVAL,
                 thresholds=GC_THRESHOLDS, collector=gc):
        self.clock = clock
        self.intervals = (young_interval, middle_interval, full_interval)
        self.thresholds = thresholds
        self.collector = collector
        self._before = None
        self._loops = []
        self._frozen = False

    def startService(self):
        super().startService()
        self._before = self.collector.get_threshold()
        self.collector.set_threshold(*self.thresholds)
        for generation, interval in enumerate(self.intervals):
            loop = task.LoopingCall(self.collector.collect, generation)
            loop.clock = self.clock
            loop.start(interval, now=False)
            self._loops.append(loop)

    def freeze_startup(self):
        """Once the master has started: what it made so far is looked at
        by no later collection."""
        if not self._frozen and hasattr(self.collector, "freeze"):
            self.collector.collect(2)
            self.collector.freeze()
            self._frozen = True

    def stopService(self):
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        if self._frozen:
            self.collector.unfreeze()
            self._frozen = False
        if self._before is not None:
            self.collector.set_threshold(*self._before)
            self._before = None
