"""How long the master's reactor goes without turning.

Everything in the master shares one reactor, so a call that blocks (a
large result turned into records, a big JSON document, a hash of a large
file) delays every builder, admin tool and monitor.  systemd's watchdog
catches a reactor that stops for good; this catches the shorter stalls
that come before, so that an operator sees them in the log.

A timer asks to run every ``tick`` seconds; how late it runs is how long
the reactor was busy with something else.  Each ``interval`` the longest
delay seen is logged (a warning above ``threshold``) and starts again.
"""

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

    def __init__(self, clock, tick=0.05, interval=60.0, threshold=0.1):
        self.clock = clock
        self.tick = tick
        self.interval = interval
        self.threshold = threshold
        #: the longest stall (seconds) of the interval under way
        self.longest = 0.0
        #: the longest stall of the last complete interval
        self.last_longest = None
        self._due = None
        self._interval_started = None
        self._call = None

    def startService(self):
        super().startService()
        self._interval_started = self.clock.seconds()
        self.longest = 0.0
        self._schedule()

    def stopService(self):
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self):
        self._due = self.clock.seconds() + self.tick
        self._call = self.clock.callLater(self.tick, self._ticked)

    def _ticked(self):
        self._call = None
        now = self.clock.seconds()
        self.longest = max(self.longest, now - self._due)
        if now - self._interval_started >= self.interval:
            self._report(now - self._interval_started)
            self._interval_started = now
        if self.running:
            self._schedule()

    def _report(self, elapsed):
        self.last_longest, self.longest = self.longest, 0.0
        if self.last_longest > self.threshold:
            self.log.warn(
                "longest reactor stall in the last {elapsed:.0f}s: "
                "{stall_ms:.0f} ms (more than {threshold_ms:.0f} ms: "
                "something blocks the reactor)",
                elapsed=elapsed, stall_ms=self.last_longest * 1000,
                threshold_ms=self.threshold * 1000)
        else:
            self.log.info(
                "longest reactor stall in the last {elapsed:.0f}s: "
                "{stall_ms:.0f} ms",
                elapsed=elapsed, stall_ms=self.last_longest * 1000)
