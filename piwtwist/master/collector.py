"""Python's garbage collector, tuned for a master that must never pause
long.

A collection stops every thread, the reactor's too, for as long as it
takes, and it takes as long as the objects it looks at.  Two settings:

* thresholds (``GC_THRESHOLDS``) that make full collections rare: with the
  defaults (700, 10, 10) every minute of load brought a full collection over
  the master's ~200,000 objects (bench/follower.py, 50,000 events: 125-169
  ms each);
* a young collection every ``interval`` seconds, on the reactor.  CPython
  counts allocations minus deallocations *of any age*, so a master that
  keeps replacing long-lived objects (caches, queues, deques of recent
  builds) frees old ones as fast as it makes new ones: the count stays near
  zero while the young generation grows to hundreds of thousands of
  objects, and the one collection that finally comes looks at all of them
  (bench/scale.py at a tenth of PyPI: one young collection a minute, 110-146
  ms each).  On a timer, each looks at a second's worth.

Cyclic garbage of long-lived objects waits longer; the master makes little
of it.
"""

import gc

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

GC_THRESHOLDS = (50_000, 50, 100)
#: Seconds between young collections.
YOUNG_INTERVAL = 1.0


class CollectorTuning(service.Service):
    """Sets the thresholds while running (the old ones come back at stop)
    and collects the young generation every *interval* seconds."""

    log = Logger()
    name = "collector tuning"

    def __init__(self, clock, interval=YOUNG_INTERVAL,
                 thresholds=GC_THRESHOLDS, collector=gc):
        self.clock = clock
        self.interval = interval
        self.thresholds = thresholds
        self.collector = collector
        self._before = None
        self._loop = None

    def startService(self):
        super().startService()
        self._before = self.collector.get_threshold()
        self.collector.set_threshold(*self.thresholds)
        self._loop = task.LoopingCall(self._collect_young)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def _collect_young(self):
        self.collector.collect(0)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._before is not None:
            self.collector.set_threshold(*self._before)
            self._before = None
