"""A small pool of asynchronous PostgreSQL connections, owned by a service.

txpostgres gives one non-blocking connection at a time and does not
reconnect by itself.  The pool keeps a few connections, lends one to each
query, notices when PostgreSQL has gone away (restarted, connection killed)
and connects again, so that a restart of the database costs a short delay
instead of a crashed service.

A connection PostgreSQL closed while it sat idle is noticed before it is
lent, and any statement simply goes to another one.  A connection lost in
the middle of a statement is another matter: the statement may have
committed and only its answer been lost.  Such a statement is run again
only when the caller says it is safe to (``retry=True``: a read, or a write
made idempotent, see :func:`piwtwist.db.client.retry_safe`); any other
fails with :class:`DatabaseUnavailable` and its caller decides.

**Lanes.**  Page writing reads a lot and for a long time (a full rewrite
is hours of queries at PyPI's size), while recording a build or answering
an admin tool must not wait behind it.  Statements of the *bulk* lane
(:meth:`ConnectionPool.bulk`: the page writer, statistics) hold at most
``size - 1`` connections at once, so one is always left for the rest; and
a connection released goes to a waiting ordinary statement before a
waiting bulk one.  An ordinary statement therefore waits at most for
another ordinary one to finish.
"""

import ipaddress
import select
from collections import deque

import psycopg2
import psycopg2.extensions
import psycopg2.extras
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from txpostgres import txpostgres

from .schema import SCHEMA_VERSION

# Errors that mean "this connection is no use any more", as opposed to an
# error in the query itself, which is the caller's to handle.
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)

#: The lanes of :class:`ConnectionPool` (see the module's docstring).
ORDINARY = "ordinary"
BULK = "bulk"


class SchemaMismatch(Exception):
    """The database was made for another version of piwtwist."""


class DatabaseUnavailable(Exception):
    """PostgreSQL could not be reached, even after retrying."""


def _connection_failed(err):
    # OperationalError also covers a few query-level problems (for example a
    # cancelled statement); those leave the connection open.
    return isinstance(err, CONNECTION_ERRORS) and not isinstance(
        err, psycopg2.extensions.QueryCanceledError)


async def resolve_dsn(dsn, reactor):
    """Add ``hostaddr`` to a DSN that names a host, resolved without blocking.

    libpq's asynchronous connect still resolves host names synchronously,
    which would stall the reactor; giving it the address avoids that.
    """
    params = psycopg2.extensions.parse_dsn(dsn)
    host = params.get("host", "")
    if not host or host.startswith("/") or "," in host or "hostaddr" in params:
        return params
    try:
        ipaddress.ip_address(host)
        return params
    except ValueError:
        pass
    params["hostaddr"] = await reactor.resolve(host)
    return params


class ConnectionPool(service.Service):
    """Lends out up to *size* connections to *dsn*, one query at a time each.

    ``ready`` fires once the first connection is open and the schema version
    has been checked; queries made before then wait for it.
    """

    log = Logger()
    name = "database"

    def __init__(self, dsn, reactor, size=2, retry_delays=(0.5, 1, 2, 4),
                 expected_version=SCHEMA_VERSION):
        self.dsn = dsn
        self.reactor = reactor
        self.size = size
        self.retry_delays = tuple(retry_delays)
        self.expected_version = expected_version
        self._idle = deque()
        #: waiters for a connection, per lane: ordinary ones are served first
        self._waiting = deque()
        self._bulk_waiting = deque()
        #: connections lent to the bulk lane
        self._bulk_lent = 0
        self._open = 0
        self._closing = False
        self.ready = None

    # service --------------------------------------------------------------

    def startService(self):
        super().startService()
        self._closing = False
        self.ready = defer.Deferred.fromCoroutine(self._start())

    async def _start(self):
        self._open += 1
        try:
            connection = await self._connect_with_retries()
        except Exception:
            self._open -= 1
            raise
        try:
            rows = await connection.runQuery("SELECT get_schema_version()")
        except psycopg2.Error as e:
            connection.close()
            self._open -= 1
            raise SchemaMismatch(
                "the database has no piwtwist schema (or this role may not "
                "read it): run piw-initdb first") from e
        version = rows[0][0]
        if version != self.expected_version:
            connection.close()
            self._open -= 1
            raise SchemaMismatch(
                f"the database's schema is version {version} but this "
                f"piwtwist needs version {self.expected_version}; run "
                f"piw-initdb to upgrade it")
        self._release(connection)
        return self

    def stopService(self):
        super().stopService()
        self._closing = True
        for waiting in (self._waiting, self._bulk_waiting):
            while waiting:
                waiting.popleft().errback(DatabaseUnavailable(
                    "the database pool is shutting down"))
        while self._idle:
            self._idle.popleft().close()
            self._open -= 1
        return defer.succeed(None)

    # connections ----------------------------------------------------------

    async def _connect(self):
        params = await resolve_dsn(self.dsn, self.reactor)
        connection = txpostgres.Connection(reactor=self.reactor)
        await connection.connect(
            cursor_factory=psycopg2.extras.NamedTupleCursor, **params)
        return connection

    async def _connect_with_retries(self):
        last_error = None
        for delay in (0, *self.retry_delays):
            if delay:
                await _sleep(self.reactor, delay)
            if self._closing:
                break
            try:
                return await self._connect()
            except CONNECTION_ERRORS as e:
                last_error = e
                self.log.warn("cannot connect to the database ({error}); "
                              "trying again", error=str(e).strip())
        raise DatabaseUnavailable(
            f"cannot connect to the database: "
            f"{str(last_error).strip() if last_error else 'shutting down'}")

    @property
    def bulk_limit(self):
        """How many connections the bulk lane may hold at once."""
        return max(1, self.size - 1)

    def _take_idle(self):
        """A live idle connection, or None."""
        while self._idle:
            connection = self._idle.popleft()
            if _alive(connection):
                return connection
            self.log.info("a database connection was closed while idle; "
                          "reconnecting")
            try:
                connection.close()
            except Exception:
                pass
            self._open -= 1
        return None

    async def _acquire(self, lane=ORDINARY):
        if self.ready is not None and not self.ready.called:
            await self.ready
        if self._closing:
            raise DatabaseUnavailable("the database pool is shutting down")
        bulk = lane == BULK
        if bulk and self._bulk_lent >= self.bulk_limit:
            waiter = defer.Deferred()
            self._bulk_waiting.append(waiter)
            return await waiter     # counted in the lane by _next_waiter
        connection = self._take_idle()
        if connection is not None:
            self._bulk_lent += bulk
            return connection
        if self._open < self.size:
            self._open += 1
            self._bulk_lent += bulk
            try:
                return await self._connect_with_retries()
            except Exception:
                self._open -= 1
                self._bulk_lent -= bulk
                raise
        waiter = defer.Deferred()
        (self._bulk_waiting if bulk else self._waiting).append(waiter)
        return await waiter

    def _next_waiter(self):
        """The waiter to serve next (ordinary first; bulk only within its
        limit), counted in its lane; or None."""
        if self._waiting:
            return self._waiting.popleft()
        if self._bulk_waiting and self._bulk_lent < self.bulk_limit:
            self._bulk_lent += 1
            return self._bulk_waiting.popleft()
        return None

    def _release(self, connection, lane=ORDINARY):
        if lane == BULK:
            self._bulk_lent -= 1
        if self._closing:
            connection.close()
            self._open -= 1
            return
        waiter = self._next_waiter()
        if waiter is not None:
            waiter.callback(connection)
        else:
            self._idle.append(connection)

    def _discard(self, connection, lane=ORDINARY):
        if lane == BULK:
            self._bulk_lent -= 1
        try:
            connection.close()
        except Exception:
            pass
        self._open -= 1
        # someone may be waiting for a connection that will now never be
        # released: let the first waiter open a fresh one instead
        if self._closing:
            return
        was_bulk = not self._waiting
        waiter = self._next_waiter()
        if waiter is not None:
            self._open += 1
            d = defer.Deferred.fromCoroutine(self._connect_with_retries())
            d.addErrback(self._undo_open, was_bulk)
            d.chainDeferred(waiter)

    def _undo_open(self, failure, bulk=False):
        self._open -= 1
        if bulk:
            self._bulk_lent -= 1
        return failure

    def retrying(self):
        """This pool as seen by callers whose statements are all safe to
        repeat after a lost connection."""
        return _RetryingPool(self)

    def bulk(self):
        """This pool as seen by bulk readers (the page writer, statistics):
        their statements use the bulk lane."""
        return _Lane(self, BULK)

    # queries --------------------------------------------------------------

    async def _use(self, work, retry=False, lane=ORDINARY):
        """Run ``work(connection)`` on a borrowed connection; on a lost
        connection, reconnect and run it once more if *retry*."""
        for attempt in (1, 2):
            connection = await self._acquire(lane)
            try:
                result = await work(connection)
            except Exception as e:
                if not _connection_failed(e):
                    self._release(connection, lane)
                    raise
                self._discard(connection, lane)
                if not retry:
                    raise DatabaseUnavailable(
                        f"lost the database connection during a statement "
                        f"that may have taken effect: {str(e).strip()}"
                    ) from e
                if attempt == 2:
                    raise DatabaseUnavailable(
                        f"lost the database connection twice: "
                        f"{str(e).strip()}") from e
                self.log.warn("database connection lost ({error}); "
                              "reconnecting", error=str(e).strip())
                continue
            self._release(connection, lane)
            return result

    async def run_query(self, sql, params=None, retry=False, lane=ORDINARY):
        """Rows of *sql* as named tuples.  *retry*: *sql* may run twice (see
        the module's docstring)."""
        return await self._use(
            lambda connection: connection.runQuery(sql, params), retry,
            lane)

    async def run_operation(self, sql, params=None, retry=False,
                            lane=ORDINARY):
        await self._use(
            lambda connection: connection.runOperation(sql, params), retry,
            lane)

    async def run_interaction(self, interaction, *args, retry=False,
                              lane=ORDINARY, **kwargs):
        """Run *interaction(cursor, ...)* inside one transaction; run it
        again after a lost connection only if *retry*."""
        return await self._use(
            lambda connection: connection.runInteraction(
                interaction, *args, **kwargs), retry, lane)


class _Lane:
    """A :class:`ConnectionPool` whose statements use one lane."""

    def __init__(self, pool, lane, retry=False):
        self.pool = pool
        self.lane = lane
        self.retry = retry

    def retrying(self):
        return _Lane(self.pool, self.lane, retry=True)

    def run_query(self, sql, params=None):
        return self.pool.run_query(sql, params, retry=self.retry,
                                   lane=self.lane)

    def run_operation(self, sql, params=None):
        return self.pool.run_operation(sql, params, retry=self.retry,
                                       lane=self.lane)

    def run_interaction(self, interaction, *args, **kwargs):
        return self.pool.run_interaction(interaction, *args,
                                         retry=self.retry, lane=self.lane,
                                         **kwargs)


class _RetryingPool(_Lane):
    """A :class:`ConnectionPool` whose every statement is safe to repeat."""

    def __init__(self, pool):
        super().__init__(pool, ORDINARY, retry=True)


def _alive(connection):
    """False for a connection PostgreSQL closed while it sat idle (a
    restart, a terminated backend).  Nothing was sent on it, so whatever
    was meant for it may go to another connection."""
    try:
        raw = connection.pollable()
        if raw is None or raw.closed:
            return False
        poller = select.poll()
        poller.register(raw.fileno(), select.POLLIN)
        # we never LISTEN, so anything that arrives on an idle connection
        # is the server's goodbye (an error, then the end of the stream)
        return not poller.poll(0)
    except (psycopg2.Error, OSError, ValueError):
        return False


def _sleep(reactor, seconds):
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d
