"""The monitor's connection to the master's control queue.

:class:`MasterConnection` is a service holding a ``ClientService``: it
connects, reconnects with back-off for as long as the monitor runs, and on
every connection says ``Hello`` (proving the secret when the master asks),
then ``Subscribe``.  The greeting runs from ``connectionMade`` rather than
as ``ClientService``'s ``prepareConnection``: a connection that closes
after a failed ``prepareConnection`` (a refused secret) trips a state the
ClientService machine has no transition for (Twisted 24.x), so a refusal
instead counts towards the back-off through the retry policy.  The master's ``Status`` pieces are answered at once
and joined into messages for the :class:`~piwtwist.monitor.model.Model`.
What the operator needs to know about the connection (waiting, connected,
refused and why) goes to ``on_state(text)``, one sentence at a time.
"""

import os

from twisted.application import internet, service
from twisted.internet import defer, error
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp

from .. import __version__
from ..protocol import control as proto

#: Drop a connection on which the master said nothing for this long (it
#: sends its facts every few seconds): the network may have died quietly.
QUIET_LIMIT = 45.0


class NotConnected(Exception):
    """A control was asked for while there is no master to ask."""


class Refused(Exception):
    """The master would not have us; the text says why in one sentence."""


class MonitorProtocol(amp.AMP):
    """Our end of one connection."""

    def __init__(self, link):
        super().__init__()
        self.link = link
        self.reassembler = proto.Reassembler()
        self.subscribed = False

    def connectionMade(self):
        super().connectionMade()
        self.link.greet(self)

    @proto.Status.responder
    def status(self, message_id, index, count, data):
        try:
            message = self.reassembler.add(message_id, index, count, data)
        except Exception:
            self.link.log.failure("an undecodable status message")
            return {}
        self.link.last_heard = self.link.clock.seconds()
        if message is not None:
            self.link.model.apply(message)
        return {}

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.link.lost(self, reason)


class MasterConnection(service.MultiService):
    """Keeps the monitor connected to the master at *address* (an endpoint
    description, for people) through *endpoint*."""

    log = Logger()

    def __init__(self, clock, endpoint, address, model, secret=None,
                 on_state=None, initial_delay=0.5, max_delay=5.0):
        super().__init__()
        self.clock = clock
        self.address = address
        self.model = model
        self.secret = secret
        self.on_state = on_state or (lambda text: None)
        backoff = internet.backoffPolicy(
            initialDelay=initial_delay, factor=1.5, maxDelay=max_delay,
            jitter=lambda: 0)
        self.protocol = None
        self.problem = None
        #: refusals since the last good connection: they lengthen the
        #: wait before the next attempt
        self.refusals = 0
        self.last_heard = None
        self._quiet_check = None
        self.client = internet.ClientService(
            endpoint, _quiet(Factory.forProtocol(
                lambda: MonitorProtocol(self))),
            retryPolicy=lambda attempt: backoff(attempt + self.refusals),
            clock=clock)
        self.client.setServiceParent(self)

    def startService(self):
        self.on_state(self.waiting_text())
        super().startService()
        self._schedule_quiet_check()

    def stopService(self):
        if self._quiet_check is not None and self._quiet_check.active():
            self._quiet_check.cancel()
        self._quiet_check = None
        return super().stopService()

    def waiting_text(self):
        text = f"Waiting for the master at {self.address}"
        return f"{text}: {self.problem}" if self.problem else text

    @property
    def connected(self):
        return self.protocol is not None and self.protocol.subscribed

    # each connection ------------------------------------------------------

    def greet(self, connection):
        d = defer.Deferred.fromCoroutine(self._greet(connection))

        def failed(failure):
            if failure.check(error.ConnectionDone, error.ConnectionLost):
                return
            if failure.check(Refused):
                text = failure.getErrorMessage()
            else:
                self.log.failure("saying hello to the master failed",
                                 failure)
                text = (f"the master did not answer as expected "
                        f"({failure.type.__name__})")
            self.refusals += 1
            self._refused(connection, text)

        d.addErrback(failed)

    async def _greet(self, connection):
        nonce = os.urandom(proto.NONCE_BYTES)
        try:
            reply = await connection.callRemote(
                proto.Hello, version=__version__, nonce=nonce)
        except proto.VersionMismatch as e:
            raise Refused(f"the master refuses our version: {e}")
        if self.secret is not None and reply["proof"] and \
                not proto.proofs_match(proto.master_proof(self.secret, nonce),
                                       reply["proof"]):
            raise Refused("the master at the other end does not know our "
                          "secret; not talking to it")
        if reply["authenticate"]:
            if self.secret is None:
                raise Refused("the master asks for the shared secret; give "
                              "--secret-file")
            try:
                await connection.callRemote(
                    proto.Authenticate, proof=proto.monitor_proof(
                        self.secret, reply["challenge"]))
            except proto.AuthenticationFailed:
                raise Refused("the master refused our secret (is "
                              "--secret-file the builders' secret?)")
        self.protocol = connection
        self.last_heard = self.clock.seconds()
        await connection.callRemote(proto.Subscribe)
        connection.subscribed = True
        self.problem = None
        self.refusals = 0
        self.log.info("connected to the master at {address} (piwtwist "
                      "{version})", address=self.address,
                      version=reply["master_version"])
        self.on_state(None)

    def _refused(self, connection, text):
        self.problem = text
        self.log.warn("the master at {address}: {problem}",
                      address=self.address, problem=text)
        self.on_state(self.waiting_text())
        if connection.transport is not None:
            connection.transport.loseConnection()

    def lost(self, connection, reason):
        if connection is not self.protocol:
            return
        self.protocol = None
        if connection.subscribed:
            self.log.info("lost the master at {address}: {reason}",
                          address=self.address,
                          reason=reason.getErrorMessage())
            self.model.connection_lost()
        self.on_state(self.waiting_text())

    def _schedule_quiet_check(self):
        self._quiet_check = self.clock.callLater(QUIET_LIMIT / 3,
                                                 self._check_quiet)

    def _check_quiet(self):
        self._schedule_quiet_check()
        connection = self.protocol
        if connection is None or not connection.subscribed:
            return
        if self.clock.seconds() - self.last_heard > QUIET_LIMIT:
            self.log.warn("the master said nothing for {seconds:.0f}s; "
                          "reconnecting", seconds=QUIET_LIMIT)
            self.problem = "it fell silent"
            connection.transport.abortConnection()

    # what the operator asks -----------------------------------------------

    def _connection(self):
        if not self.connected:
            raise NotConnected(f"not connected to the master at "
                               f"{self.address}")
        return self.protocol

    async def control(self, action, builder_id=None):
        """Ask for *action*; apply and return the resulting state.  Raises
        :class:`~piwtwist.protocol.control.ControlRefused` or
        :class:`NotConnected` with a sentence."""
        connection = self._connection()
        arguments = {"action": action}
        if builder_id is not None:
            arguments["builder_id"] = builder_id
        try:
            answer = await connection.callRemote(proto.Control, **arguments)
        except (error.ConnectionDone, error.ConnectionLost):
            raise NotConnected("the master went away before it answered")
        state = proto.decode(answer["state"])
        self.model.apply_state(state)
        return state

    async def build_log_tail(self, builder_id):
        """The end of *builder_id*'s current build log, as text."""
        connection = self._connection()
        try:
            answer = await connection.callRemote(proto.BuildLogTail,
                                                 builder_id=builder_id)
        except (error.ConnectionDone, error.ConnectionLost):
            raise NotConnected("the master went away before it answered")
        return answer["data"].decode("utf-8", errors="replace")


def run(d, log, what):
    """Let *d* (a coroutine or Deferred) run; log its failure, if any,
    instead of leaving it to the garbage collector."""
    if not isinstance(d, defer.Deferred):
        d = defer.Deferred.fromCoroutine(d)
    d.addErrback(lambda failure: log.failure(what, failure))
    return d


def _quiet(factory):
    # reconnecting every few seconds would fill the log with factory
    # start and stop lines
    factory.noisy = False
    return factory
