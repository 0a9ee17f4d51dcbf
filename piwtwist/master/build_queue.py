"""The build queue: which release each ABI's builders should build next.

The database keeps the authoritative queue (``get_build_queue``); this
service holds the first entries of it per ABI in memory so that handing out
work never waits for a query, refreshes them periodically and soon after
anything changes, and remembers which entries builders hold so that no
entry is handed out twice.
"""

from collections import deque

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from ..db.pool import DatabaseUnavailable


def _key(entry):
    return (entry.abi_tag, entry.package, entry.version)


class BuildQueue(service.Service):
    log = Logger()
    name = "build queue"

    def __init__(self, db, clock, size=1000, refresh_interval=60.0,
                 settle_delay=0.5):
        self.db = db
        self.clock = clock
        self.size = size
        self.refresh_interval = refresh_interval
        self.settle_delay = settle_delay
        self._queues = {}
        self._held = {}
        self._dropped = set()
        self._finished = set()
        self._unwanted = set()
        self._loop = None
        self._pending_refresh = None
        self._refreshing = None

    # service --------------------------------------------------------------

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self._refresh_logging_errors)
        self._loop.clock = self.clock
        self._loop.start(self.refresh_interval, now=True)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._pending_refresh is not None and \
                self._pending_refresh.active():
            self._pending_refresh.cancel()
        self._pending_refresh = None
        return self._refreshing or defer.succeed(None)

    # refreshing -----------------------------------------------------------

    def _refresh_logging_errors(self):
        d = defer.Deferred.fromCoroutine(self.refresh())

        def failed(failure):
            failure.trap(DatabaseUnavailable, Exception)
            self.log.warn("the build queue could not be refreshed ({error}); "
                          "keeping the entries it has",
                          error=failure.getErrorMessage())

        return d.addErrback(failed)

    async def refresh(self):
        """Reload the first entries of every ABI's queue from the database."""
        while self._refreshing is not None:
            # one query at a time; a request during it gets a fresh one after
            await self._refreshing
        self._dropped = set()
        self._finished = set()
        done = defer.Deferred()
        self._refreshing = done
        try:
            entries = await self.db.get_build_queue(self.size,
                                                    list(self._held))
            queues = {}
            for entry in entries:
                # held, dropped, or built while the query ran: the answer
                # predates what we know now
                if _key(entry) in self._held or _key(entry) in \
                        self._finished or self._is_dropped(entry):
                    continue
                queues.setdefault(entry.abi_tag, deque()).append(entry)
            self._queues = queues
        finally:
            self._refreshing = None
            done.callback(None)

    def request_refresh(self, delay=None):
        """Refresh soon; bursts of requests share one query (an urgent
        request brings a pending one forward)."""
        delay = self.settle_delay if delay is None else delay
        pending = self._pending_refresh
        if pending is None or not pending.active():
            self._pending_refresh = self.clock.callLater(
                delay, self._refresh_logging_errors)
        elif pending.getTime() > self.clock.seconds() + delay:
            pending.reset(delay)

    # handing out work -----------------------------------------------------

    def take(self, abi_tag, holder):
        """The next entry for *abi_tag*, now held by *holder*, or None."""
        queue = self._queues.get(abi_tag)
        while queue:
            entry = queue.popleft()
            if _key(entry) in self._held or self._is_dropped(entry):
                continue
            self._held[_key(entry)] = holder
            if len(queue) < self.size // 2:
                self.request_refresh()
            return entry
        # ran dry: builders are waiting, so do not wait to settle
        self.request_refresh(delay=0)
        return None

    def hold(self, entry, holder):
        """Mark *entry* as held (a builder came back with it in hand)."""
        self._held[_key(entry)] = holder
        queue = self._queues.get(entry.abi_tag)
        if queue:
            self._queues[entry.abi_tag] = deque(
                e for e in queue if _key(e) != _key(entry))

    def holder(self, entry):
        return self._held.get(_key(entry))

    def release(self, entry):
        """*entry* was not built after all: offer it again."""
        self._unwanted.discard(_key(entry))
        if self._held.pop(_key(entry), None) is not None:
            self.request_refresh()

    def finish(self, entry):
        """*entry* was built (or failed) and recorded."""
        self._unwanted.discard(_key(entry))
        self._held.pop(_key(entry), None)
        if self._refreshing is not None:
            self._finished.add(_key(entry))

    def drop(self, package, version=None):
        """A package or release was deleted or skipped: stop offering it."""
        self._dropped.add((package, version))
        for key in self._held:
            if key[1] == package and version in (None, key[2]):
                self._unwanted.add(key)
        for abi_tag, queue in self._queues.items():
            self._queues[abi_tag] = deque(
                e for e in queue if not self._is_dropped(e))
        self.request_refresh()

    def _is_dropped(self, entry):
        return ((entry.package, None) in self._dropped
                or (entry.package, entry.version) in self._dropped)

    def is_wanted(self, entry):
        """False once a held entry's package or release has been dropped."""
        return _key(entry) not in self._unwanted

    # figures --------------------------------------------------------------

    def lengths(self):
        """Entries ready per ABI (the first ``size`` of each at most)."""
        return {abi: len(queue) for abi, queue in self._queues.items()}

    def held(self):
        return dict(self._held)
