"""The builder hub: the master's side of every builder connection.

Each connection is a :class:`BuilderConnection` (one AMP protocol, one
builder); the :class:`BuilderHub` service owns them all, hands out work from
the build queue, watches the builders' pings, fetches finished wheels
through the file receiver and records builds in the database.  The controls
a monitor uses (kill, kill now, skip, sleep, wake) live here too, and every
change of a builder's state is told to ``state_listeners`` (the control
hub).

Knowing the shared secret lets a machine connect, not change what the master
believes: a builder reports only on the build handed to this connection, or
on the one it held when its connection dropped (shown by that assignment's
ticket); wheels are checked against their file names and never replace
published bytes; a build log is bounded.
"""

import hashlib
import hmac
import os
import secrets
from datetime import timedelta
from itertools import count
from pathlib import Path

import attrs
import psycopg2
from twisted.application import service
from twisted.internet import defer, threads
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp

from .. import __version__, failures
from ..db.pool import DatabaseUnavailable
from ..db.records import BuildResult, QueueEntry
from ..protocol import builder as proto
from ..transfer.receiver import (AlreadyPublished, TransferFailed,
                                 TransferInterrupted)
from .published_wheels import (DEFAULT_PLATFORM_ALIASES, alias_names,
                               publish_build, wheel_problem, wheel_records)

#: The largest build log accepted (builders send the head and tail of
#: bigger ones).
MAX_LOG_BYTES = proto.MAX_LOG_BYTES


def in_thread(clock, function, *args):
    """*function* in the reactor's thread pool, or inline where *clock*
    has none (a ``task.Clock`` in tests)."""
    get_pool = getattr(clock, "getThreadPool", None)
    if get_pool is None:
        return defer.maybeDeferred(function, *args)
    return threads.deferToThreadPool(clock, get_pool(), function, *args)


def checked_log(log, log_size, log_sha256):
    """The build log's text, or None when *log* is not the whole of what
    the builder sent (its size and sha256 say).  Up to MAX_LOG_BYTES are
    hashed and decoded: run in the thread pool."""
    if len(log) != log_size or \
            hashlib.sha256(log).hexdigest() != log_sha256:
        return None
    return log.decode("utf-8", errors="replace")


def load_ticket_key(path):
    """The master's own key for build tickets, kept in *path* (mode 0600,
    created at first use) so that tickets outlive a restart.  Builders
    never see it, unlike the shared secret."""
    path = Path(path)
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as stream:
            stream.write(key)
    if len(key) < 16:
        raise ValueError(f"{path} holds no usable ticket key")
    return key


@attrs.define
class Orphan:
    """A build whose builder's connection dropped: it may come back with
    the assignment's ticket."""

    entry: QueueEntry
    ticket: str
    expiry: object


@attrs.define
class Recording:
    """A result being fetched and recorded.  Its builder may lose its
    connection meanwhile and report the same result again on a new one:
    ``connection`` is the latest, where Done goes."""

    connection: object
    token: str | None = None


def build_identity(entry, token):
    """What the database stores to record a result once: the builder's
    token bound to the build it reported (so that one build's token can
    never stand for another's)."""
    if not token:
        return None
    message = "\0".join((entry.abi_tag, entry.package, entry.version, token))
    return hashlib.sha256(message.encode("utf-8")).hexdigest()


@attrs.define
class BuilderState:
    """What the hub knows of one connected builder (monitors read this)."""

    builder_id: int
    label: str = ""
    abi_tag: str = ""
    py_tag: str = ""
    platform_tag: str = ""
    os_name: str = ""
    os_version: str = ""
    board_revision: str = ""
    board_serial: str = ""
    version: str = ""
    build_timeout: float = 3 * 3600.0
    busy_timeout: float = 300.0
    address: str = ""
    connected_at: float = 0.0
    last_seen: float = 0.0
    stats: dict = attrs.Factory(dict)
    entry: QueueEntry | None = None
    build_started: float | None = None
    status: str = "connecting"
    sleeping: bool = False
    kill_requested: bool = False
    #: stop the current build too, not only the builder after it
    kill_now: bool = False
    skip_requested: bool = False
    #: the wheel being fetched from the builder, and its size
    sending_file: str | None = None
    sending_size: int | None = None


class BuilderConnection(amp.AMP):
    """One builder, from Hello to Bye."""

    log = Logger()

    def __init__(self, hub, builder_id):
        super().__init__()
        self.hub = hub
        self.info = BuilderState(builder_id=builder_id)
        self.authenticated = False
        self._challenge = None
        self._log = bytearray()
        self._watchdog = None
        self._lost = False
        self._resuming = (None, None, None)
        #: the ticket of the build handed to this connection
        self.ticket = None
        #: the end of the running build's log, as the latest Busy sent it
        self.log_tail = b""

    # connection -----------------------------------------------------------

    def connectionMade(self):
        super().connectionMade()
        now = self.hub.clock.seconds()
        peer = self.transport.getPeer()
        self.info.address = str(getattr(peer, "host", peer))
        self.info.connected_at = self.info.last_seen = now
        # a connection that never says hello is dropped after a while
        self._arm_watchdog(self.hub.hello_timeout)

    def connectionLost(self, reason):
        self._lost = True
        super().connectionLost(reason)
        self._disarm_watchdog()
        self.hub.connection_lost(self)

    def callRemote(self, command, **kwargs):
        """Every answer the builder gives (a piece of a wheel, say) shows
        that it is alive, as a ping does: a slow builder sending a big
        wheel is never taken for a silent one."""
        d = super().callRemote(command, **kwargs)
        if d is not None:
            d.addCallback(self._answered)
        return d

    def _answered(self, answer):
        if self.authenticated and not self._lost:
            self._seen()
        return answer

    def _arm_watchdog(self, seconds):
        self._disarm_watchdog()
        self._watchdog = self.hub.clock.callLater(seconds, self._timed_out)

    def _disarm_watchdog(self):
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None

    def _timed_out(self):
        self._watchdog = None
        if self.info.status == "recording" and self.hub.recording_for(self):
            # it waits for Done while the master records its result: the
            # silence is the master's
            self._arm_watchdog(self.info.busy_timeout)
            return
        self.log.warn("builder {id} ({label}) went quiet; dropping it",
                      id=self.info.builder_id, label=self.info.label)
        self.transport.abortConnection()

    def _seen(self):
        self.info.last_seen = self.hub.clock.seconds()
        self._arm_watchdog(self.info.busy_timeout)

    def _require_authentication(self):
        if not self.authenticated:
            raise proto.NotAuthenticated("say hello and authenticate first")

    # handshake ------------------------------------------------------------

    @proto.Hello.responder
    def hello(self, version, nonce, build_timeout, busy_timeout, py_tag,
              abi_tag, platform_tag, label, os_name, os_version,
              board_revision, board_serial, current_package=None,
              current_version=None, current_ticket=None):
        if self._challenge is not None:
            raise proto.ProtocolViolation("hello was already said")
        if version != __version__:
            self.log.warn("refused builder at {address}: {why}",
                          address=self.info.address,
                          why=proto.version_mismatch_message(version))
            raise proto.VersionMismatch(
                proto.version_mismatch_message(version))
        if not (1 <= len(nonce) <= 1024):
            raise proto.ProtocolViolation("the nonce must be 1 to 1024 bytes")
        if not abi_tag or busy_timeout <= 0 or build_timeout <= 0:
            raise proto.ProtocolViolation("hello needs an ABI and timeouts")
        self.info = attrs.evolve(
            self.info, label=label, abi_tag=abi_tag, py_tag=py_tag,
            platform_tag=platform_tag, os_name=os_name, os_version=os_version,
            board_revision=board_revision, board_serial=board_serial,
            version=version, build_timeout=build_timeout,
            busy_timeout=busy_timeout)
        self._resuming = (current_package, current_version, current_ticket)
        self._challenge = secrets.token_bytes(proto.NONCE_BYTES)
        return {"challenge": self._challenge,
                "proof": proto.master_proof(self.hub.secret, nonce)}

    @proto.Authenticate.responder
    def authenticate(self, proof):
        if self._challenge is None or self.authenticated:
            raise proto.ProtocolViolation("authenticate follows hello, once")
        expected = proto.builder_proof(self.hub.secret, self._challenge)
        if not proto.proofs_match(expected, proof):
            self.log.warn("builder at {address} failed to authenticate",
                          address=self.info.address)
            self.hub.clock.callLater(0, self.transport.loseConnection)
            raise proto.AuthenticationFailed("wrong secret")
        self.authenticated = True
        self.info.status = "idle"
        self._seen()
        package, version, ticket = self._resuming
        resumed = False
        if package or version:
            resumed = self.hub.resume(self, package, version, ticket)
        self.hub.builder_ready(self)
        self.hub.changed(self)
        self.log.info("builder {id} ({label}, {abi}) connected from {address}",
                      id=self.info.builder_id, label=self.info.label,
                      abi=self.info.abi_tag, address=self.info.address)
        return {"builder_id": self.info.builder_id, "resumed": resumed}

    def refuse(self, message, **fields):
        """Log a refused claim or report with who made it."""
        self.log.warn("refused builder {id} ({label}) at {address}: "
                      + message, id=self.info.builder_id,
                      label=self.info.label, address=self.info.address,
                      **fields)

    # work -----------------------------------------------------------------

    def _stats(self, timestamp, disk_total, disk_free, mem_total, mem_free,
               load_average, cpu_temperature=None, swap_total=None,
               swap_free=None):
        self.info.stats = dict(
            timestamp=timestamp, disk_total=disk_total, disk_free=disk_free,
            mem_total=mem_total, mem_free=mem_free, swap_total=swap_total,
            swap_free=swap_free, load_average=load_average,
            cpu_temperature=cpu_temperature)

    @proto.Idle.responder
    def idle(self, **stats):
        self._require_authentication()
        self._seen()
        self._stats(**stats)
        action = self.hub.next_action(self)
        self.hub.changed(self)
        return action

    @proto.Busy.responder
    def busy(self, log_tail=None, **stats):
        self._require_authentication()
        self._seen()
        self._stats(**stats)
        if log_tail is not None and self.info.entry is not None:
            self.log_tail = bytes(log_tail[-proto.LOG_TAIL_BYTES:])
        action = self.hub.busy_action(self)
        self.hub.changed(self)
        return {"action": action}

    @proto.BuildLog.responder
    def build_log(self, offset, data):
        self._require_authentication()
        self._seen()
        if offset == 0:
            self._log = bytearray()
        if offset != len(self._log):
            raise proto.ProtocolViolation(
                f"log piece at {offset}, expected {len(self._log)}")
        if len(self._log) + len(data) > MAX_LOG_BYTES:
            self._log = bytearray()
            self.refuse("a build log of more than {limit} bytes",
                        limit=MAX_LOG_BYTES)
            raise proto.LogTooLarge(
                f"the build log is larger than the {MAX_LOG_BYTES} bytes "
                f"the master accepts; send its head and tail, from "
                f"offset 0")
        self._log += data
        return {}

    @proto.Built.responder
    def built(self, package, version, status, duration, reason, log_size,
              log_sha256, files, build_token=None, failure_class=None,
              rescued=None):
        self._require_authentication()
        self._seen()
        entry = self.info.entry
        if entry is None or (entry.package, entry.version) != (package,
                                                                version):
            self.refuse("a result for {package} {version}, which it was "
                        "not given", package=package, version=version)
            raise proto.ProtocolViolation(
                f"{package} {version} is not what this builder was given")
        # the log is the thread's from here: the next piece starts a new one
        log, self._log = self._log, bytearray()
        d = in_thread(self.hub.clock, checked_log, log, log_size, log_sha256)
        d.addCallback(self._log_checked, entry, status, duration, reason,
                      files, build_token, failure_class, rescued)
        return d

    def _log_checked(self, output, entry, status, duration, reason, files,
                     build_token, failure_class, rescued):
        """The rest of :meth:`built`, once the log has been checked and
        decoded away from the reactor."""
        if output is None:
            raise proto.ProtocolViolation(
                "the build log did not arrive whole; send it again")
        if self._lost or self.info.entry != entry:
            # gone meanwhile: the hub has put the build back or kept it for
            # a reconnection, which reports it again
            raise proto.ProtocolViolation(
                f"{entry.package} {entry.version} is no longer this "
                f"connection's to report")
        if status and not files:
            status, reason = False, "the build succeeded but made no wheel"
        # the ticket stands for a builder that sends no token of its own
        token = build_identity(entry, build_token or self.ticket)
        action = self.hub.built(self, entry, status, duration, reason,
                                output, files, token=token,
                                claimed_class=failure_class or "",
                                rescued=rescued or "")
        self.hub.changed(self)
        return {"action": action}

    @proto.Bye.responder
    def bye(self, reason):
        self.log.info("builder {id} ({label}) says goodbye: {reason}",
                      id=self.info.builder_id, label=self.info.label,
                      reason=reason)
        self.info.status = "leaving"
        self.hub.changed(self)
        self.transport.loseConnection()
        return {}


class BuilderHub(service.Service):
    """Every builder connection, the work they get and what they built."""

    log = Logger()
    name = "builder hub"

    def __init__(self, db, queue, receiver, clock, secret, output_path,
                 index_url, extra_index_urls=(), platform_aliases=None,
                 idle_delay=10.0, hello_timeout=30.0, stop_grace=60.0,
                 ticket_key=None):
        self.db = db
        self.ticket_key = ticket_key or secrets.token_bytes(32)
        self.queue = queue
        self.receiver = receiver
        self.clock = clock
        self.secret = secret
        self.output_path = Path(output_path)
        self.index_url = index_url
        self.extra_index_urls = list(extra_index_urls)
        self.platform_aliases = (DEFAULT_PLATFORM_ALIASES
                                 if platform_aliases is None
                                 else platform_aliases)
        self.idle_delay = idle_delay
        self.hello_timeout = hello_timeout
        self.stop_grace = stop_grace
        self.paused = False
        self.connections = {}
        self._ids = count(1)
        self._orphans = {}
        #: (abi, package, version) -> Recording
        self._recording = {}
        self.build_listeners = []
        #: called with a builder's BuilderState whenever it changes; a
        #: state whose builder_id is no longer in ``connections`` is gone
        self.state_listeners = []

    def factory(self):
        return Factory.forProtocol(lambda: self._new_connection())

    def _new_connection(self):
        connection = BuilderConnection(self, next(self._ids))
        self.connections[connection.info.builder_id] = connection
        return connection

    # service --------------------------------------------------------------

    def stopService(self):
        super().stopService()
        for orphan in self._orphans.values():
            if orphan.expiry.active():
                orphan.expiry.cancel()
        self._orphans.clear()
        # partial transfers keep their received ranges for the next start
        saved = self.receiver.abandon()
        for connection in list(self.connections.values()):
            if connection.authenticated:
                connection.callRemote(proto.Bye,
                                      reason="the master is shutting down")
            connection.transport.loseConnection()
        return saved if isinstance(saved, defer.Deferred) else \
            defer.succeed(None)

    # connections ----------------------------------------------------------

    def builder_ready(self, connection):
        pass

    def changed(self, connection):
        """Tell the state listeners that *connection*'s state changed."""
        for listener in list(self.state_listeners):
            try:
                listener(connection.info)
            except Exception:
                self.log.failure("a builder state listener failed")

    def connection_lost(self, connection):
        state = connection.info
        self.connections.pop(state.builder_id, None)
        self.changed(connection)
        entry = state.entry
        if entry is not None and self.running:
            # it may come back with the build in hand; if not, re-queue
            key = (entry.abi_tag, entry.package, entry.version)
            self._orphans[key] = Orphan(
                entry=entry, ticket=connection.ticket,
                expiry=self.clock.callLater(state.busy_timeout,
                                            self._orphan_expired, entry))
            self.log.info("builder {id} ({label}) lost while holding "
                          "{package} {version}; waiting {t:.0f}s for it",
                          id=state.builder_id, label=state.label,
                          package=entry.package, version=entry.version,
                          t=state.busy_timeout)
        elif self.running:
            self.log.info("builder {id} ({label}) disconnected",
                          id=state.builder_id, label=state.label)

    def _orphan_expired(self, entry):
        self._orphans.pop((entry.abi_tag, entry.package, entry.version), None)
        self.log.info("{package} {version} ({abi}) goes back to the queue",
                      package=entry.package, version=entry.version,
                      abi=entry.abi_tag)
        self.queue.release(entry)

    def resume(self, connection, package, version, ticket):
        """A builder came back saying it holds a build: give it the entry
        again if it is the orphan of that very builder (it shows the
        ticket of that assignment); return whether it was given back.  Any
        other claim is refused, logged, and changes nothing."""
        abi = connection.info.abi_tag
        key = (abi, package, version)
        orphan = self._orphans.get(key)
        if not self._ticket_valid(key, ticket) or (
                orphan is not None and not hmac.compare_digest(
                    orphan.ticket or "", ticket)):
            connection.refuse(
                "it claims {package} {version} for {abi} with a ticket "
                "that is {what}", package=package, version=version, abi=abi,
                what="missing" if not ticket else "not the one handed out")
            return False
        if orphan is None:
            # handed out before a restart of the master (the ticket says
            # so): the builder may finish it unless it is taken or done
            entry = QueueEntry(abi_tag=abi, package=package,
                               version=version, released=None)
            if key in self._recording or not self.queue.is_wanted(entry):
                connection.refuse("{package} {version} is no longer wanted",
                                  package=package, version=version)
                return False
        else:
            entry = orphan.entry
        holder = self.queue.holder(entry)
        if holder is not None and holder is not connection and \
                holder.info.builder_id in self.connections:
            # someone else has it now; this builder's result is late
            connection.refuse("{package} {version} went to another builder",
                              package=package, version=version)
            return False
        if orphan is not None:
            del self._orphans[key]
            if orphan.expiry.active():
                orphan.expiry.cancel()
        self.queue.hold(entry, connection)
        self._assign(connection, entry, started=self.clock.seconds(),
                     ticket=ticket)
        return True

    def _new_ticket(self, key):
        """A ticket for handing out *key*: a nonce and the master's MAC of
        it with the build, so that it can be checked even after a restart
        and cannot be made up by anyone who only knows the shared secret."""
        nonce = secrets.token_hex(8)
        return nonce + self._ticket_mac(key, nonce)

    def _ticket_mac(self, key, nonce):
        message = "\0".join((*key, nonce)).encode("utf-8")
        return hmac.new(self.ticket_key, message,
                        hashlib.sha256).hexdigest()[:32]

    def _ticket_valid(self, key, ticket):
        if not isinstance(ticket, str) or len(ticket) != 48:
            return False
        nonce, mac = ticket[:16], ticket[16:]
        return hmac.compare_digest(self._ticket_mac(key, nonce), mac)

    def _assign(self, connection, entry, started, ticket):
        connection.info.entry = entry
        connection.info.build_started = started
        connection.info.status = "building"
        connection.ticket = ticket
        connection.log_tail = b""

    def _unassign(self, connection):
        connection.ticket = None
        connection.log_tail = b""
        connection.info.entry = None
        connection.info.build_started = None
        connection.info.status = "idle"
        connection.info.skip_requested = False

    # replies --------------------------------------------------------------

    def next_action(self, connection):
        state = connection.info
        if state.entry is not None:
            # it asked for work, so whatever it held was not built (unless
            # its result is being recorded right now: that finishes it)
            entry = state.entry
            if (entry.abi_tag, entry.package, entry.version) not in \
                    self._recording:
                self.queue.release(entry)
            self._unassign(connection)
        if state.kill_requested:
            state.status = "leaving"
            return {"action": proto.DIE}
        if self.paused or state.sleeping:
            state.status = "sleeping"
            return {"action": proto.SLEEP, "delay": self.idle_delay}
        entry = self.queue.take(state.abi_tag, connection)
        if entry is None:
            state.status = "idle"
            return {"action": proto.SLEEP, "delay": self.idle_delay}
        ticket = self._new_ticket((entry.abi_tag, entry.package,
                                   entry.version))
        self._assign(connection, entry, started=self.clock.seconds(),
                     ticket=ticket)
        self.log.info("builder {id} ({label}) builds {package} {version} "
                      "for {abi}", id=state.builder_id, label=state.label,
                      package=entry.package, version=entry.version,
                      abi=entry.abi_tag)
        return {"action": proto.BUILD, "package": entry.package,
                "version": entry.version, "index_url": self.index_url,
                "extra_index_urls": self.extra_index_urls, "ticket": ticket}

    def busy_action(self, connection):
        state = connection.info
        if state.entry is None:
            return proto.STOP
        if state.kill_now or state.skip_requested:
            return proto.STOP
        if not self.queue.is_wanted(state.entry):
            return proto.STOP
        elapsed = self.clock.seconds() - (state.build_started or 0)
        if elapsed > state.build_timeout + self.stop_grace:
            return proto.STOP
        return proto.CONTINUE

    def built(self, connection, entry, status, duration, reason, output,
              files, token=None, claimed_class="", rescued=""):
        state = connection.info
        if not status and (state.skip_requested or state.kill_now
                           or not self.queue.is_wanted(entry)):
            # stopped on purpose: nothing to record, and a skipped build
            # goes back to the queue
            self.queue.release(entry)
            self._unassign(connection)
            return proto.DONE
        state.status = "sending" if status else "recording"
        key = (entry.abi_tag, entry.package, entry.version)
        recording = self._recording.get(key)
        if recording is not None:
            # the same result again, from a builder that reconnected while
            # it was being recorded: the first attempt finishes the job and
            # sends Done here, where the builder now waits for it
            recording.connection = connection
            state.status = "recording"
            if not status:
                self._unassign(connection)
            return proto.SEND if status else proto.DONE
        self._recording[key] = Recording(connection=connection, token=token)
        d = defer.Deferred.fromCoroutine(self._record(
            connection, entry, status, duration, reason, output, files,
            token, claimed_class, rescued))
        d.addBoth(self._recorded, key)
        if not status:
            # the builder is done with it; the recording owns it now
            self._unassign(connection)
        return proto.SEND if status else proto.DONE

    def _recorded(self, result, key):
        # _record logs its own failures; this only ends the bookkeeping
        self._recording.pop(key, None)

    def recording_for(self, connection):
        """Whether a result is being recorded for *connection*."""
        return any(r.connection is connection
                   for r in self._recording.values())

    def _reporter(self, entry, connection):
        """The connection the builder of *entry* reported on last: a
        reconnection may have replaced *connection* while recording."""
        recording = self._recording.get(
            (entry.abi_tag, entry.package, entry.version))
        return connection if recording is None else recording.connection

    async def _record(self, connection, entry, status, duration, reason,
                      output, files, token=None, claimed_class="",
                      rescued=""):
        state = connection.info
        build = BuildResult(
            package=entry.package, version=entry.version,
            abi_tag=entry.abi_tag, built_by=state.builder_id,
            builder_label=state.label,
            duration=timedelta(seconds=max(duration, 0.0)),
            status=status, output=output, reason=reason, token=token,
            rescued=self._rescue_shown(rescued, output) if status else "")
        try:
            if status:
                build = await self._fetch_files(
                    connection, entry, build, files)
                if state.entry == entry:
                    state.status = "recording"
                    self.changed(connection)
            if not build.status and not build.failure_class:
                build = await self._classified(build, claimed_class)
            try:
                await self.db.log_build(build)
            except psycopg2.errors.UniqueViolation as e:
                # the database knows one of these files with other bytes:
                # what it recorded stands
                reason = str(e).strip().splitlines()[0]
                connection.refuse("{reason}", reason=reason)
                build = self._failed(build, reason, files=(),
                                     dependencies={})
                await self.db.log_build(build)
            if build.status:
                # committed: only now may its wheels be seen
                for problem in await publish_build(
                        self.receiver, entry.package, files,
                        self.platform_aliases):
                    self.log.error("{problem}; the tree audit will publish "
                                   "it", problem=problem)
        except TransferInterrupted as e:
            self.log.info("transfer from builder {id} ({label}) interrupted "
                          "({error}); it will resume when the builder "
                          "reconnects", id=state.builder_id,
                          label=state.label, error=str(e))
            connection = self._reporter(entry, connection)
            if connection.transport is not None and \
                    connection.info.builder_id in self.connections:
                # it stopped answering but is still connected: drop it, so
                # that it reconnects (and resumes), or its build is given
                # to another builder once it has been gone a while
                connection.transport.abortConnection()
            return
        except DatabaseUnavailable as e:
            if status:
                # the builder still holds the result and reports it again
                self.log.warn("could not record {package} {version}: "
                              "{error}; dropping builder {id} so it reports "
                              "again", package=entry.package,
                              version=entry.version, error=str(e),
                              id=state.builder_id)
                self._reporter(entry, connection).transport.abortConnection()
            else:
                self.log.warn("could not record the failed build of "
                              "{package} {version}: {error}; it goes back to "
                              "the queue", package=entry.package,
                              version=entry.version, error=str(e))
                self.queue.release(entry)
            return
        except psycopg2.IntegrityError as e:
            # the release went away (deleted on PyPI) while it was built:
            # nothing to record, and nothing was published (its staged
            # wheels are purged in a day)
            self.log.warn("{package} {version} is gone; discarding its build "
                          "({error})", package=entry.package,
                          version=entry.version, error=str(e).strip())
            build = None
        except Exception:
            self.log.failure("recording {package} {version} failed",
                             package=entry.package, version=entry.version)
            self._reporter(entry, connection).transport.abortConnection()
            return
        self.queue.finish(entry)
        reporter = self._reporter(entry, connection)
        for holder in dict.fromkeys((connection, reporter)):
            if holder.info.entry == entry:
                self._unassign(holder)
                self.changed(holder)
        connection = reporter
        orphan = self._orphans.pop((entry.abi_tag, entry.package,
                                    entry.version), None)
        if orphan is not None and orphan.expiry.active():
            # recorded: a builder that lost Done is told so when it is back
            orphan.expiry.cancel()
        if build is not None:
            self._announce(build, entry, state)
        if connection.transport is not None and \
                connection.info.builder_id in self.connections:
            try:
                await connection.callRemote(proto.Done, package=entry.package,
                                            version=entry.version)
            except Exception as e:
                self.log.info("builder {id} did not take Done: {error}",
                              id=state.builder_id, error=str(e))

    def _announce(self, build, entry, state):
        self.log.info("{outcome} {package} {version} for {abi} "
                      "(builder {id}, {seconds:.1f}s)",
                      outcome="built" if build.status else "failed to build",
                      package=entry.package, version=entry.version,
                      abi=entry.abi_tag, id=state.builder_id,
                      seconds=build.duration.total_seconds())
        for listener in list(self.build_listeners):
            try:
                listener(build)
            except Exception:
                self.log.failure("a build listener failed")

    @staticmethod
    def _failed(build, reason, **changes):
        # what the master found wrong with the wheels fits no class of the
        # build's own doing
        return attrs.evolve(
            build, status=False, reason=reason,
            output=build.output + f"\n\npiwtwist master: {reason}\n",
            failure_class="unknown", failure_hint=reason, **changes)

    async def _classified(self, build, claimed_class=""):
        """*build* with the failure class of its own log and reason: the
        master's classification, never the builder's (which only serves
        as a check, logged when the two differ).  The rules read up to a
        few hundred KiB, so they run in a thread where there is one."""
        get_pool = getattr(self.clock, "getThreadPool", None)
        if get_pool is None:
            diagnosis = failures.classify(build.output, build.reason)
        else:
            diagnosis = await threads.deferToThreadPool(
                self.clock, get_pool(), failures.classify, build.output,
                build.reason)
        if claimed_class and claimed_class != diagnosis.failure_class:
            self.log.info("builder {id} called the failure of {package} "
                          "{version} {claimed}; its log says {found}",
                          id=build.built_by, package=build.package,
                          version=build.version, claimed=claimed_class,
                          found=diagnosis.failure_class)
        return attrs.evolve(build, failure_class=diagnosis.failure_class,
                            failure_hint=diagnosis.hint)

    @staticmethod
    def _rescue_shown(rescued, output):
        """The remedy a builder says it rescued the build with, provided
        it is one builders may apply and the log shows the retry."""
        if rescued and failures.known_remedy(rescued) and \
                failures.retry_marker(rescued) in output:
            return rescued
        return ""

    async def _fetch_files(self, connection, entry, build, files):
        """Fetch and verify every wheel into the incoming directory, where
        it waits until the build is committed.  A wheel that does not match
        its file name or the build, that will not verify, or that would
        replace published bytes turns the build into a failure that says
        why.  Returns the build with its :class:`BuildFile` records."""
        names = []
        for wheel in files:
            problem = wheel_problem(entry.package, entry.version, wheel,
                                    abi=entry.abi_tag)
            if problem:
                connection.refuse("{problem}", problem=problem)
                return self._failed(build, problem)
            names.append(wheel["filename"])
            names.extend(alias_names(wheel["filename"],
                                     self.platform_aliases))
        if len(set(names)) != len(names):
            problem = "the same file name appears twice among the wheels"
            connection.refuse("{problem}", problem=problem)
            return self._failed(build, problem)
        recorded, dependencies = [], {}
        try:
            for wheel in files:
                filename = wheel["filename"]
                connection.info.sending_file = filename
                connection.info.sending_size = wheel["filesize"]
                self.changed(connection)
                try:
                    await self.receiver.receive(
                        connection.callRemote, entry.package, filename,
                        wheel["filesize"], wheel["filehash"], publish=False)
                finally:
                    connection.info.sending_file = None
                    connection.info.sending_size = None
                for build_file, deps in wheel_records(
                        entry.package, wheel, self.platform_aliases):
                    recorded.append(build_file)
                    dependencies[build_file.filename] = deps
        except AlreadyPublished as e:
            connection.refuse("{problem}", problem=str(e))
            return self._failed(build, str(e))
        except TransferFailed as e:
            return self._failed(
                build, f"{filename} failed to arrive intact: {e}")
        return attrs.evolve(build, files=tuple(recorded),
                            dependencies=dependencies)

    # controls -------------------------------------------------------------

    def _targets(self, builder_id):
        if builder_id is None:
            return list(self.connections.values())
        connection = self.connections.get(builder_id)
        if connection is None:
            raise KeyError(f"no builder {builder_id}")
        return [connection]

    def kill(self, builder_id=None):
        """Stop the builder(s) once their current build is done: the next
        Idle is answered by DIE."""
        for connection in self._targets(builder_id):
            connection.info.kill_requested = True
            self.changed(connection)

    def kill_now(self, builder_id=None):
        """Stop the builder(s)' current build (the next Busy is answered by
        STOP and the build is not recorded), then the builder(s)."""
        for connection in self._targets(builder_id):
            connection.info.kill_requested = True
            connection.info.kill_now = True
            self.changed(connection)

    def skip(self, builder_id=None):
        """Abandon the builder(s)' current build."""
        for connection in self._targets(builder_id):
            if connection.info.entry is not None:
                connection.info.skip_requested = True
                self.changed(connection)

    def sleep(self, builder_id=None):
        """No new work for the builder(s) until woken."""
        for connection in self._targets(builder_id):
            connection.info.sleeping = True
            self.changed(connection)

    def wake(self, builder_id=None):
        for connection in self._targets(builder_id):
            connection.info.sleeping = False
            self.changed(connection)

    def pause(self):
        self.paused = True

    def resume_all(self):
        self.paused = False

    def status(self):
        """A snapshot of every builder, for monitors."""
        return [attrs.evolve(c.info) for c in self.connections.values()]
