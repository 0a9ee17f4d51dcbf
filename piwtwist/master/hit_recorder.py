"""The hit recorder: downloads, searches and page views into the database,
in batches.

Two kinds of callers: ``piw-logger`` sends batches over the ``--log-queue``
(:mod:`piwtwist.protocol.logger`), and the master's own web server hands
over one hit at a time with :meth:`HitRecorder.record`, which collects them
for up to ``flush_delay`` seconds.  Either way a batch is one call of
``log_hits()``: one transaction, a multi-row insert per kind of hit, the
daily counts updated in the same statement.  At most ``concurrency``
batches (2) are written at once: one can be waiting for its commit to
reach the disk while the next is inserted, and the pool keeps a connection
for the rest of the master (the master's pool has three).  Both take the
daily count rows in the same order, so they wait for each other rather
than deadlock; should PostgreSQL still find a deadlock or a serialization
failure, the batch is answered ``TryLater`` and sent again.

Once an hour ``prune_hits()`` forgets raw hits older than the retention
(the daily counts stay) and the ids of old batches.
"""

import uuid

import cbor2
import psycopg2
import psycopg2.errors
from twisted.application import service
from twisted.internet import defer, protocol, task
from twisted.logger import Logger
from twisted.protocols import amp

from ..db.pool import DatabaseUnavailable
from ..logger.classify import (CLIENT_FIELDS, CLIENT_KEYS, DOWNLOAD, JSON,
                               PAGE, PROJECT, SEARCH, address, clean)
from ..protocol import logger as proto

_CLIENT_LIMITS = tuple(limit for _, _, limit in CLIENT_FIELDS)
_CLIENT_SIZE = len(CLIENT_FIELDS)


class InvalidHit(ValueError):
    pass


def _text(value, limit):
    if value is None:
        return None
    if type(value) is not str:
        raise InvalidHit(f"{value!r} is not text")
    return clean(value, limit)


def _client(values):
    """A row of ``log_hits()``'s clients from a client list."""
    if type(values) is not list or len(values) != _CLIENT_SIZE:
        raise InvalidHit("malformed client details")
    row = {key: _text(value, limit) for key, value, limit in
           zip(CLIENT_KEYS[:-1], values, _CLIENT_LIMITS[:-1])}
    ci = values[-1]
    row["c"] = ci if type(ci) is bool else None
    return row


class _Clients:
    """The clients of one batch, each checked once."""

    def __init__(self, given):
        self.given = given if type(given) is list else []
        self.rows = []
        self.index = {}

    def row_index(self, slot):
        if slot is None:
            return None
        if type(slot) is int:
            if not 0 <= slot < len(self.given):
                raise InvalidHit("no such client")
            key = ("given", slot)
            values = self.given[slot]
        else:
            key = id(slot)
            values = slot
        index = self.index.get(key)
        if index is None:
            row = _client(values)       # raises before anything is kept
            index = self.index[key] = len(self.rows)
            self.rows.append(row)
        return index


def database_rows(hits, clients=None):
    """What ``log_hits()`` takes, from *hits* as
    :mod:`piwtwist.logger.classify` makes them (with client lists, or
    indexes into *clients* as a batch carries them), checked as untrusted
    input: ``(clients, downloads, searches, project hits, JSON hits, page
    hits)``, lists of rows; and how many hits were malformed (left out)."""
    known = _Clients(clients)
    tables = ([], [], [], [], [])
    malformed = 0
    for hit in hits:
        try:
            if type(hit) is not list or len(hit) < 5:
                raise InvalidHit("not a hit")
            kind, moment, host, name = hit[:4]
            if type(moment) not in (int, float) or \
                    not 0 <= moment < 2 ** 33:     # also false for NaN
                raise InvalidHit("bad time")
            if type(host) is not str or len(host) > 64:
                raise InvalidHit("bad address")
            if type(name) is not str:
                raise InvalidHit("no name")
            if kind == DOWNLOAD or kind == SEARCH:
                if len(hit) != 5:
                    raise InvalidHit("not a hit")
                if kind == DOWNLOAD:
                    if not name.endswith(".whl"):
                        raise InvalidHit("not a wheel")
                    row = {"t": moment, "h": address(host),
                           "f": clean(name, 255),
                           "c": known.row_index(hit[4])}
                else:
                    row = {"t": moment, "h": address(host),
                           "p": clean(name, 200),
                           "c": known.row_index(hit[4])}
            elif kind in (PROJECT, JSON, PAGE):
                if len(hit) != 6:
                    raise InvalidHit("not a hit")
                row = {"t": moment, "h": address(host),
                       "p": clean(name, 200 if kind != PAGE else 100),
                       "u": _text(hit[4], 2000), "b": hit[5] is True}
            else:
                raise InvalidHit("unknown kind")
            if kind != DOWNLOAD and not row["p"]:
                raise InvalidHit("no name")
        except InvalidHit:
            malformed += 1
            continue
        tables[kind].append(row)
    return (known.rows, *tables), malformed


class HitReceiver(amp.AMP):
    """One ``piw-logger`` connection: puts batches together from their
    parts and has the recorder store them."""

    log = Logger()
    max_open_batches = 16

    def __init__(self, recorder):
        super().__init__()
        self.recorder = recorder
        self.parts = {}

    @proto.HitBatch.responder
    def hit_batch(self, batch, part, parts, data, dropped):
        if not batch or len(batch) > 100:
            raise proto.BatchRefused("a batch id is 1 to 100 characters")
        if not 0 <= part < parts <= proto.MAX_PARTS:
            raise proto.BatchRefused(
                f"part {part} of {parts}: at most {proto.MAX_PARTS} parts")
        received = self.parts.get(batch)
        if received is None:
            if part != 0:
                raise proto.BatchRefused(f"{batch}: part {part} came first")
            if len(self.parts) >= self.max_open_batches:
                raise proto.BatchRefused("too many batches at once")
            received = self.parts[batch] = []
        if part != len(received):
            del self.parts[batch]
            raise proto.BatchRefused(f"{batch}: parts out of order")
        received.append(data)
        if part < parts - 1:
            return {"stored": False, "hits": 0}
        del self.parts[batch]
        try:
            clients, hits = cbor2.loads(b"".join(received))
        except Exception as e:
            raise proto.BatchRefused(f"{batch} is not [clients, hits] in "
                                     f"CBOR: {e}")
        if type(hits) is not list or len(hits) > proto.MAX_BATCH_HITS or \
                type(clients) is not list:
            raise proto.BatchRefused(
                f"{batch} is not a list of at most "
                f"{proto.MAX_BATCH_HITS} hits")
        if dropped > 0:
            self.log.warn("piw-logger dropped {count} hits while the master "
                          "could not take them (--drop)", count=dropped)
        return defer.Deferred.fromCoroutine(self._store(batch, hits, clients))

    async def _store(self, batch, hits, clients):
        stored, count = await self.recorder.store(batch, hits, clients)
        return {"stored": stored, "hits": count}

    def connectionLost(self, reason):
        self.parts.clear()
        super().connectionLost(reason)


class HitRecorder(service.Service):
    """Stores batches of hits, from ``piw-logger`` and the built-in web
    server, and prunes old raw hits."""

    log = Logger()
    name = "hit recorder"

    def __init__(self, db, clock, retention_days=90, prune_interval=3600.0,
                 flush_delay=0.5, max_local_hits=10000, concurrency=2):
        self.db = db
        self.clock = clock
        self.retention_days = retention_days
        self.prune_interval = prune_interval
        self.flush_delay = flush_delay
        self.max_local_hits = max_local_hits
        self.session = uuid.uuid4().hex
        self.counter = 0
        self.local = []
        self.local_dropped = 0
        self.hits_stored = 0
        self._flush_call = None
        self._writers = defer.DeferredSemaphore(concurrency)
        self._loop = None
        self._loop_done = None

    # service --------------------------------------------------------------

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self._prune_and_log)
        self._loop.clock = self.clock
        self._loop_done = self._loop.start(self.prune_interval, now=False)

    async def _stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
            await self._loop_done
        await self.flush()

    def stopService(self):
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    def factory(self):
        """The AMP server factory for the ``--log-queue``."""
        return protocol.Factory.forProtocol(lambda: HitReceiver(self))

    # storing ---------------------------------------------------------------

    async def store(self, batch_id, hits, clients=None):
        """Store a batch; (whether it was new, how many hits it held).
        Raises :class:`~piwtwist.protocol.logger.TryLater` while the
        database is away."""
        tables, malformed = database_rows(hits, clients)
        if malformed:
            self.log.warn("{batch}: left out {count} malformed hits",
                          batch=batch_id, count=malformed)
        await self._writers.acquire()
        try:
            stored = await self.db.log_hits(batch_id, *tables)
        except (DatabaseUnavailable, psycopg2.OperationalError,
                psycopg2.errors.DeadlockDetected,
                psycopg2.errors.SerializationFailure) as e:
            raise proto.TryLater(str(e).strip()) from e
        except psycopg2.Error as e:
            self.log.warn("{batch} was refused by the database: {why}",
                          batch=batch_id, why=str(e).strip())
            raise proto.BatchRefused(str(e).strip()) from e
        finally:
            self._writers.release()
        count = len(hits) - malformed
        if stored:
            self.hits_stored += count
        return stored, count

    def record(self, hit):
        """One hit from the built-in web server; written with the others of
        the next ``flush_delay`` seconds.  Best effort: beyond
        ``max_local_hits`` waiting, hits are dropped (and counted)."""
        if len(self.local) >= self.max_local_hits:
            self.local_dropped += 1
            return
        self.local.append(hit)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(self.flush_delay,
                                                    self._timed_flush)

    def _timed_flush(self):
        self._flush_call = None
        d = defer.Deferred.fromCoroutine(self.flush())
        d.addErrback(lambda f: self.log.failure("storing hits failed", f))

    async def flush(self):
        """Store the built-in web server's waiting hits now."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if not self.local:
            return
        hits, self.local = self.local, []
        if self.local_dropped:
            self.log.warn("dropped {count} hits of the web server: too many "
                          "were waiting for the database",
                          count=self.local_dropped)
            self.local_dropped = 0
        self.counter += 1
        try:
            await self.store(f"master-{self.session}:{self.counter}", hits)
        except Exception as e:
            self.log.warn("could not record {count} hits of the web "
                          "server: {why}", count=len(hits), why=str(e))

    # pruning ---------------------------------------------------------------

    def _prune_and_log(self):
        d = defer.Deferred.fromCoroutine(self.prune())
        d.addErrback(lambda f: self.log.warn(
            "could not prune old hits: {why}", why=f.getErrorMessage()))
        return d

    async def prune(self):
        removed = await self.db.prune_hits(self.retention_days)
        if removed:
            self.log.info("forgot {count} hits older than {days} days",
                          count=removed, days=self.retention_days)
        return removed
