"""Getting hits to the master: batches, acknowledgements, retries, and the
bounded buffer of ``--drop``.

Hits collect in ``pending`` until ``batch_size`` of them are there or
``flush_delay`` seconds have passed since the first; then they become a
numbered batch (its id never changes, so the master can tell a batch sent
again from a new one).  Up to ``window`` batches are out at once; a batch
is forgotten only when the master acknowledges it.  When the connection
dies, the batches in flight go back to the front of the queue, in order.

Without ``drop`` nothing is ever thrown away: :meth:`HitShipper.add`
returns a Deferred that fires only once fewer than ``max_buffered`` hits
are held, and the reader waits for it (and the web server behind it, if
any).  With ``drop`` it never waits: when more than ``max_buffered`` hits
are held the oldest go, and the count is reported (logged here, and sent
to the master) once the master takes batches again.
"""

from collections import deque

import attrs
from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.protocols import amp

from ..protocol import logger as proto


@attrs.define(eq=False)
class Batch:
    batch_id: str
    seq: int
    hits: list
    parts: list
    dropped: int = 0


class LoggerClient(amp.AMP):
    """``piw-logger``'s end of the connection."""

    def __init__(self, shipper):
        super().__init__()
        self.shipper = shipper

    def connectionMade(self):
        super().connectionMade()
        self.shipper.connected(self)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.shipper.disconnected(self)


class HitShipper:
    log = Logger()

    def __init__(self, clock, session, batch_size=5000, flush_delay=1.0,
                 window=4, drop=False, max_buffered=200000,
                 retry_delay=2.0, warning_interval=60.0):
        self.clock = clock
        self.session = session
        self.batch_size = batch_size
        self.flush_delay = flush_delay
        self.window = window
        self.drop = drop
        self.max_buffered = max_buffered
        self.retry_delay = retry_delay
        self.warning_interval = warning_interval
        self.seq = 0
        self.pending = []
        self.unsent = deque()
        self.in_flight = {}
        self.client = None
        self.held = 0              # hits in pending, unsent and in flight
        self.acked_hits = 0
        self.acked_batches = 0
        self.dropped_total = 0
        self.dropped_unreported = 0
        self.dropped_claimed = 0
        self.broken_total = 0
        self.broken_unreported = 0
        self.lines = 0
        self._flush_call = None
        self._retry_call = None
        self._warning_call = None
        self._warned_at = None
        self._room = []
        self._finishing = None
        self._away_since = None

    # input -----------------------------------------------------------------

    def add(self, hits, lines=0, broken=0):
        """Take *hits* (and the counts of lines read and broken); a
        Deferred that fires when there is room for more."""
        self.lines += lines
        if broken:
            self._broken(broken)
        if hits:
            self.pending.extend(hits)
            self.held += len(hits)
            while len(self.pending) >= self.batch_size:
                self._cut(self.batch_size)
            if self.pending and self._flush_call is None:
                self._flush_call = self.clock.callLater(self.flush_delay,
                                                        self._timed_flush)
            if self.drop:
                self._drop_oldest()
            self._pump()
        if self.drop or self.held < self.max_buffered:
            return defer.succeed(None)
        waiter = defer.Deferred()
        self._room.append(waiter)
        return waiter

    def finish(self):
        """End of input: send what is left; a Deferred that fires once the
        master has acknowledged everything."""
        self._report_broken()
        if self.pending:
            self._cut(len(self.pending))
        self._finishing = defer.Deferred()
        self._pump()
        self._check_finished()
        return self._finishing

    def _timed_flush(self):
        self._flush_call = None
        if self.pending:
            self._cut(len(self.pending))
            self._pump()

    def _cut(self, size):
        hits, self.pending = self.pending[:size], self.pending[size:]
        if not self.pending and self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        self._make_batches(hits)

    def _make_batches(self, hits):
        """Queue *hits* as one batch, or as several when one would have
        more parts than the master takes (long User-Agents)."""
        parts = proto.split_parts(proto.encode_batch(hits))
        if len(parts) > proto.MAX_PARTS and len(hits) > 1:
            half = len(hits) // 2
            self._make_batches(hits[:half])
            self._make_batches(hits[half:])
            return
        self.seq += 1
        self.unsent.append(Batch(f"{self.session}:{self.seq}", self.seq,
                                 hits, parts))

    def _drop_oldest(self):
        excess = self.held - self.max_buffered
        while excess > 0 and self.unsent:
            batch = self.unsent.popleft()
            self._dropped(len(batch.hits))
            excess -= len(batch.hits)
        if excess > 0 and self.pending:
            count = min(excess, len(self.pending))
            del self.pending[:count]
            self._dropped(count)

    def _dropped(self, count):
        self.held -= count
        self.dropped_total += count
        self.dropped_unreported += count

    def _broken(self, count):
        self.broken_total += count
        self.broken_unreported += count
        now = self.clock.seconds()
        if self._warned_at is None or \
                now - self._warned_at >= self.warning_interval:
            self._report_broken()
        elif self._warning_call is None:
            self._warning_call = self.clock.callLater(
                self._warned_at + self.warning_interval - now,
                self._report_broken)

    def _report_broken(self):
        if self._warning_call is not None and self._warning_call.active():
            self._warning_call.cancel()
        self._warning_call = None
        if self.broken_unreported:
            self.log.warn("skipped {count} broken log lines (not in the "
                          "log format, bad dates or too long)",
                          count=self.broken_unreported)
            self.broken_unreported = 0
            self._warned_at = self.clock.seconds()

    # the connection --------------------------------------------------------

    def connected(self, client):
        """A new connection to the master."""
        self.client = client
        self._pump()
        return client

    def disconnected(self, client):
        if client is not self.client:
            return
        self.client = None
        self._requeue_in_flight()

    def _requeue_in_flight(self):
        for batch in sorted(self.in_flight.values(), key=lambda b: b.seq,
                            reverse=True):
            self.dropped_claimed -= batch.dropped
            batch.dropped = 0
            self.unsent.appendleft(batch)
        self.in_flight.clear()
        if self._away_since is None and self.held:
            self._away_since = self.clock.seconds()
            self.log.info("the master is away; holding {count} hits",
                          count=self.held)

    def _pump(self):
        while self.client is not None and self._retry_call is None and \
                self.unsent and len(self.in_flight) < self.window:
            batch = self.unsent.popleft()
            self.in_flight[batch.batch_id] = batch
            claim = self.dropped_unreported - self.dropped_claimed
            batch.dropped = claim
            self.dropped_claimed += claim
            self._send(batch)

    def _send(self, batch):
        client = self.client
        count = len(batch.parts)
        answers = [
            client.callRemote(proto.HitBatch, batch=batch.batch_id,
                              part=index, parts=count, data=part,
                              dropped=batch.dropped if index == count - 1
                              else 0)
            for index, part in enumerate(batch.parts)
        ]
        d = defer.gatherResults(answers, consumeErrors=True)
        d.addCallbacks(self._acknowledged, self._not_acknowledged,
                       callbackArgs=(batch, client),
                       errbackArgs=(batch, client))
        d.addErrback(lambda f: self.log.failure("sending hits failed", f))

    def _acknowledged(self, answers, batch, client):
        if self.in_flight.get(batch.batch_id) is not batch:
            return
        del self.in_flight[batch.batch_id]
        self.held -= len(batch.hits)
        self.acked_hits += len(batch.hits)
        self.acked_batches += 1
        if batch.dropped:
            self.dropped_unreported -= batch.dropped
            self.dropped_claimed -= batch.dropped
            self.log.warn("dropped {count} hits while the master could not "
                          "take them (--drop)", count=batch.dropped)
        if self._away_since is not None:
            self.log.info("the master is back")
            self._away_since = None
        self._release_room()
        self._pump()
        self._check_finished()

    def _not_acknowledged(self, failure, batch, client):
        failure = getattr(failure.value, "subFailure", failure)
        if self.in_flight.get(batch.batch_id) is not batch:
            return
        if failure.check(proto.BatchRefused):
            # sending it again cannot help: say so loudly and go on
            del self.in_flight[batch.batch_id]
            self.held -= len(batch.hits)
            self.dropped_claimed -= batch.dropped
            batch.dropped = 0
            self.log.error("the master refused {count} hits: {why}",
                           count=len(batch.hits),
                           why=failure.getErrorMessage())
            self._release_room()
            self._pump()
            self._check_finished()
            return
        if failure.check(error.ConnectionDone, error.ConnectionLost,
                         amp.ProtocolSwitched):
            return      # disconnected() puts it back
        # TryLater, or anything else: all in flight go back, and wait
        if failure.check(proto.TryLater):
            self.log.info("the master cannot store hits now: {why}",
                          why=failure.getErrorMessage())
        else:
            self.log.warn("sending hits failed: {why}",
                          why=failure.getErrorMessage())
        self._requeue_in_flight()
        if self._retry_call is None:
            self._retry_call = self.clock.callLater(self.retry_delay,
                                                    self._retry)

    def _retry(self):
        self._retry_call = None
        self._pump()

    def _release_room(self):
        while self._room and self.held < self.max_buffered:
            self._room.pop(0).callback(None)

    def _check_finished(self):
        if self._finishing is not None and not self._finishing.called and \
                not self.pending and not self.unsent and not self.in_flight:
            self._finishing.callback(self.acked_hits)

    def stop(self):
        """Cancel the timers (the reactor is stopping)."""
        for call in (self._flush_call, self._retry_call, self._warning_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._retry_call = self._warning_call = None
