"""What every request to PyPI shares: who we say we are, how long we wait,
how much we accept, and when PyPI has asked us to slow down.

PyPI is a shared service run by volunteers; the follower is one of its
heavier mirrors-in-spirit.  So every request carries a User-Agent that says
what piwtwist is, goes over one pooled HTTP client, gives up after a
timeout, and honours ``Retry-After`` and the ``RateLimit`` headers; callers
back off exponentially on any failure (:class:`BackOff`).
"""

import email.utils
import re
import sys
from datetime import timezone

import attrs
import treq
import twisted
from twisted.internet import defer, error
from twisted.web import client as web_client
from twisted.web import http as web_http

from .. import __version__

USER_AGENT = (
    f"piwtwist/{__version__} (wheel builder following PyPI's journal, "
    f"a re-creation of piwheels; +https://www.piwheels.org/) "
    f"Twisted/{twisted.__version__} "
    f"Python/{'.'.join(map(str, sys.version_info[:3]))}"
)

#: The largest body accepted: a full changelog batch of 50,000 events is
#: about 15 MB of XML, a big project's JSON a few tens of MB.
MAX_BODY_BYTES = 128 * 1024 * 1024


class PyPIProblem(Exception):
    """A request to PyPI did not give a usable answer; try again later.

    ``retry_after`` is how long PyPI asked us to wait (seconds), if it did.
    """

    retry_after = None

    def __init__(self, message, retry_after=None):
        super().__init__(message)
        self.retry_after = retry_after


class Unreachable(PyPIProblem):
    """No answer at all: DNS, connection, TLS or a timeout."""


class Overloaded(PyPIProblem):
    """PyPI answered 429 or 5xx."""


class Refused(PyPIProblem):
    """PyPI answered with a client error other than 404 and 429 (for
    example 405 where XML-RPC is blocked): likely to last."""


class Malformed(PyPIProblem):
    """The answer could not be understood."""


class TooLarge(Malformed):
    """The answer is larger than the client accepts (``max_bytes``):
    asking again would only fetch the same, so callers do without it."""


class RateLimited(PyPIProblem):
    """Not sent: PyPI asked us to wait and the time is not up yet."""


# Failures of the connection rather than of our code.
_NETWORK_ERRORS = (
    error.ConnectError,
    error.ConnectionLost,
    error.ConnectionClosed,
    error.DNSLookupError,
    web_client.ResponseFailed,
    web_client.RequestNotSent,
    web_client.RequestTransmissionFailed,
    web_client.ResponseNeverReceived,
    web_http.PotentialDataLoss,
    web_client.PartialDownloadError,
)


@attrs.frozen
class Reply:
    status: int
    headers: object  # twisted.web.http_headers.Headers
    body: bytes

    def header(self, name):
        values = self.headers.getRawHeaders(name.encode("ascii"))
        return values[-1].decode("latin-1") if values else None


class _TooBig(Exception):
    pass


def new_http_client(reactor, connect_timeout=10.0, connections_per_host=4):
    """One treq client over one persistent connection pool; the caller
    closes the pool (``closeCachedConnections``) when it stops."""
    pool = web_client.HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = connections_per_host
    pool.cachedConnectionTimeout = 120
    agent = web_client.Agent(reactor, pool=pool,
                             connectTimeout=connect_timeout)
    return treq.client.HTTPClient(agent), pool


def seconds_to_wait(reply, now):
    """How long PyPI asked us to wait before the next request, or None.

    ``Retry-After`` (seconds or an HTTP date) comes with 429 and 503;
    the IETF ``RateLimit`` headers (``RateLimit: limit=.., remaining=0,
    reset=N`` or ``r=0;t=N``, or the older ``RateLimit-Remaining`` and
    ``RateLimit-Reset``, or the ``X-RateLimit-*`` spellings) can come with
    any answer and ask for a pause only when nothing remains.
    """
    waits = []
    retry_after = reply.header("Retry-After")
    if retry_after is not None:
        waits.append(_retry_after_seconds(retry_after.strip(), now))
    combined = reply.header("RateLimit")
    if combined is not None:
        remaining = _field(combined, ("remaining", "r"))
        reset = _field(combined, ("reset", "t"))
        if remaining == 0 and reset is not None:
            waits.append(reset)
    for prefix in ("RateLimit-", "X-RateLimit-"):
        remaining = _number(reply.header(prefix + "Remaining"))
        reset = _number(reply.header(prefix + "Reset"))
        if remaining == 0 and reset is not None:
            # some services give an epoch time rather than a delay
            waits.append(reset - now if reset > 1e9 else reset)
    waits = [w for w in waits if w is not None]
    return max(0.0, max(waits)) if waits else None


def _retry_after_seconds(value, now):
    seconds = _number(value)
    if seconds is not None:
        return seconds
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp() - now


def _number(value):
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if number == number and number >= 0 else None


_FIELD = re.compile(r"(?:^|[\s,;])([a-z]+)\s*=\s*([0-9.]+)")


def _field(header, names):
    for key, value in _FIELD.findall(header.lower()):
        if key in names:
            return _number(value)
    return None


class PoliteClient:
    """Requests to one of PyPI's APIs, with a timeout, a size limit, our
    User-Agent, and a gate that stays shut while PyPI asked us to wait."""

    def __init__(self, http, clock, timeout=30.0, max_bytes=MAX_BODY_BYTES):
        self.http = http
        self.clock = clock
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.not_before = 0.0

    def waiting(self):
        """Seconds until PyPI's requested pause is over (0 when it is)."""
        return max(0.0, self.not_before - self.clock.seconds())

    def hold_off(self, seconds):
        self.not_before = max(self.not_before, self.clock.seconds() + seconds)

    async def request(self, method, url, data=None, headers=None,
                      accept_statuses=()):
        """The reply to one request.  2xx answers and *accept_statuses* are
        returned; everything else raises a :class:`PyPIProblem`."""
        wait = self.waiting()
        if wait > 0:
            raise RateLimited(f"PyPI asked us to wait {wait:.0f} s more",
                              retry_after=wait)
        all_headers = {"User-Agent": [USER_AGENT]}
        all_headers.update(headers or {})
        exchange = defer.Deferred.fromCoroutine(
            self._exchange(method, url, data, all_headers))
        timed_out = []

        def give_up():
            timed_out.append(True)
            exchange.cancel()

        timer = self.clock.callLater(self.timeout, give_up)
        try:
            reply = await exchange
        except _TooBig:
            raise TooLarge(f"the answer from {url} is larger than "
                           f"{self.max_bytes} bytes") from None
        except (*_NETWORK_ERRORS, defer.CancelledError) as e:
            if timed_out:
                raise Unreachable(f"no answer from {url} within "
                                  f"{self.timeout:g} s") from None
            if isinstance(e, defer.CancelledError):
                raise
            raise Unreachable(f"cannot reach {url}: {_describe(e)}") from None
        finally:
            if timer.active():
                timer.cancel()
        wait = seconds_to_wait(reply, self.clock.seconds())
        if wait:
            self.hold_off(wait)
        if 200 <= reply.status < 300 or reply.status in accept_statuses:
            return reply
        if reply.status == 429 or reply.status >= 500:
            raise Overloaded(f"{url} answered {reply.status}",
                             retry_after=wait)
        raise Refused(f"{url} answered {reply.status}", retry_after=wait)

    async def _exchange(self, method, url, data, headers):
        response = await self.http.request(method, url, data=data,
                                           headers=headers,
                                           reactor=self.clock)
        received = []
        size = 0
        # a declared length over the limit is refused at the first piece,
        # not after the whole body has been read
        declared = response.length
        if isinstance(declared, int) and declared > self.max_bytes:
            size = declared

        def collect(chunk):
            nonlocal size
            size += len(chunk)
            if size > self.max_bytes:
                raise _TooBig()
            received.append(chunk)

        await treq.collect(response, collect)
        return Reply(response.code, response.headers, b"".join(received))


def _describe(exc):
    reasons = getattr(exc, "reasons", None)
    if reasons:
        return "; ".join(r.getErrorMessage() or r.type.__name__
                         for r in reasons)
    return str(exc) or type(exc).__name__


class BackOff:
    """Exponential back-off: *initial* seconds after the first failure,
    doubling up to *maximum*; PyPI's own request to wait wins when longer."""

    def __init__(self, initial=10.0, maximum=900.0, factor=2.0):
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.failures = 0

    def failed(self, requested=None):
        """Record a failure; the seconds to wait before trying again."""
        delay = min(self.maximum,
                    self.initial * self.factor ** self.failures)
        self.failures += 1
        if requested is not None:
            delay = max(delay, requested)
        return delay

    def succeeded(self):
        self.failures = 0


def in_thread(reactor, function, *args):
    """Run *function* in the reactor's thread pool (inline where the
    reactor has none, as with ``task.Clock`` in tests)."""
    get_pool = getattr(reactor, "getThreadPool", None)
    if get_pool is None:
        return defer.maybeDeferred(function, *args)
    from twisted.internet.threads import deferToThreadPool
    return deferToThreadPool(reactor, get_pool(), function, *args)
