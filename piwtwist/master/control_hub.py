"""The control hub: what monitors (``piw-monitor``, ``piwheels-sense``) see
of the master and how they steer it, over its ``--control-queue``.

A subscriber gets the whole picture, then every change: the master's facts
every few seconds and a builder's state whenever the builder hub says it
changed (coalesced over a fraction of a second).  Controls act through the
builder hub, the PyPI follower and an injected ``stop_master`` callable, and
are answered with the resulting state.  See :mod:`piwtwist.protocol.control`
for the conversation and the shape of every message.

Nothing here waits on anything slow in the reactor thread: machine figures
are read in the thread pool, the database is asked one cheap question at
most every ``figures_interval`` seconds and never twice at once, and a
subscriber that stops answering is dropped instead of buffered for.
"""

import os
import socket
from collections import deque
from itertools import count
from pathlib import Path

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp

from .. import __version__
from ..builder import machine
from ..protocol import control as proto

#: A builds-in-the-last-hour window.
HOUR = 3600.0
#: The most bytes of a build log tail a monitor gets.
MAX_LOG_TAIL = 16 * 1024


def control_needs_authentication(description):
    """Whether monitors on the listener *description* must prove they know
    the secret: yes on anything but a UNIX socket, which its file mode
    guards."""
    return not description.startswith("unix:")


def builder_message(state, sending_received=None, last_failure=None):
    """The BUILDER map of :mod:`piwtwist.protocol.control` for a
    :class:`~piwtwist.master.builder_hub.BuilderState`."""
    entry = state.entry
    stats = state.stats or {}
    sending = None
    if state.sending_file is not None:
        sending = {"filename": state.sending_file,
                   "size": state.sending_size,
                   "received": sending_received}
    return {
        "builder_id": state.builder_id,
        "label": state.label,
        "abi": state.abi_tag,
        "platform": state.platform_tag,
        "python": state.py_tag,
        "os_name": state.os_name,
        "os_version": state.os_version,
        "board_revision": state.board_revision,
        "board_serial": state.board_serial,
        "address": state.address,
        "version": state.version,
        "connected_at": state.connected_at,
        "last_seen": state.last_seen,
        "busy_timeout": state.busy_timeout,
        "build_timeout": state.build_timeout,
        "status": state.status,
        "sleeping": state.sleeping,
        "kill_requested": state.kill_requested,
        "kill_now": state.kill_now,
        "package": entry.package if entry is not None else None,
        "package_version": entry.version if entry is not None else None,
        "task_started": state.build_started,
        "sending": sending,
        "last_failure": last_failure,
        "stats": {key: stats.get(key) for key in (
            "timestamp", "disk_total", "disk_free", "mem_total", "mem_free",
            "swap_total", "swap_free", "load_average", "cpu_temperature")}
        if stats else None,
    }


def sample_machine(path, root="/"):
    """The master machine's figures (blocking: run it in a thread)."""
    root_path = Path(root)
    try:
        disk = os.statvfs(path)
        disk_total = disk.f_blocks * disk.f_frsize
        disk_free = disk.f_bavail * disk.f_frsize
    except OSError:
        disk_total = disk_free = None
    mem_total, mem_free = machine.read_memory(root_path)
    swap_total, swap_free = machine.read_swap(root_path)
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {"disk_total": disk_total, "disk_free": disk_free,
            "load": load, "cpu_count": os.cpu_count(),
            "mem_total": mem_total, "mem_free": mem_free,
            "swap_total": swap_total, "swap_free": swap_free,
            "cpu_temperature": machine.read_cpu_temperature(root_path)}


class ControlConnection(amp.AMP):
    """One monitor, from Hello to its last Status."""

    log = Logger()

    def __init__(self, hub, require_authentication):
        super().__init__()
        self.hub = hub
        self.require_authentication = require_authentication
        self.authenticated = False
        self.subscribed = False
        self.unanswered = 0
        self.address = ""
        self._challenge = None
        self._watchdog = None

    def connectionMade(self):
        super().connectionMade()
        peer = self.transport.getPeer()
        self.address = str(getattr(peer, "host", None)
                           or "the control socket")
        self._watchdog = self.hub.clock.callLater(self.hub.hello_timeout,
                                                  self._too_slow)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self._disarm()
        self.hub.unsubscribe(self)

    def _disarm(self):
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None

    def _too_slow(self):
        self._watchdog = None
        self.log.info("monitor at {address} did not say who it is in time; "
                      "dropping it", address=self.address)
        self.transport.abortConnection()

    def _check(self):
        if not self.authenticated:
            raise proto.NotAuthenticated(
                "say hello and authenticate first" if
                self.require_authentication else "say hello first")

    @proto.Hello.responder
    def hello(self, version, nonce):
        if version != __version__:
            self.log.warn("refused a monitor at {address} running piwtwist "
                          "{version}", address=self.address, version=version)
            raise proto.VersionMismatch(
                f"this monitor runs piwtwist {version} but the master runs "
                f"{__version__}; use a monitor of {__version__}")
        self._challenge = os.urandom(proto.NONCE_BYTES)
        secret = self.hub.secret
        if not self.require_authentication:
            self.authenticated = True
            self._disarm()
        return {"challenge": self._challenge,
                "proof": proto.master_proof(secret, nonce) if secret else b"",
                "authenticate": self.require_authentication,
                "master_version": __version__}

    @proto.Authenticate.responder
    def authenticate(self, proof):
        if self._challenge is None:
            raise proto.AuthenticationFailed("say hello first")
        secret = self.hub.secret
        if not secret or not proto.proofs_match(
                proto.monitor_proof(secret, self._challenge), proof):
            self.log.warn("monitor at {address} failed to authenticate "
                          "(wrong secret)", address=self.address)
            self.hub.clock.callLater(0, self.transport.loseConnection)
            raise proto.AuthenticationFailed(
                "the master refused the secret: this monitor's secret "
                "file is not the one the master's builders use")
        self.authenticated = True
        self._disarm()
        return {}

    @proto.Subscribe.responder
    def subscribe(self):
        self._check()
        self.hub.subscribe(self)
        return {}

    @proto.Control.responder
    def control(self, action, builder_id=None):
        self._check()
        state = self.hub.control(action, builder_id, who=self.address)
        return {"state": proto.encode(state)}

    @proto.BuildLogTail.responder
    def build_log_tail(self, builder_id):
        self._check()
        return {"data": self.hub.log_tail(builder_id)}

    def send(self, message_id, pieces):
        """Send one message's pieces; drop this subscriber when it has
        left too many unanswered."""
        for index, data in enumerate(pieces):
            if self.transport is None or \
                    getattr(self.transport, "disconnected", False):
                return
            self.unanswered += 1
            if self.unanswered > proto.MAX_UNANSWERED:
                self.log.warn("monitor at {address} is not keeping up "
                              "({count} status pieces unanswered); "
                              "dropping it", address=self.address,
                              count=self.unanswered - 1)
                self.transport.abortConnection()
                return
            d = self.callRemote(proto.Status, message_id=message_id,
                                index=index, count=len(pieces), data=data)
            d.addCallbacks(self._answered, self._unanswerable)

    def _answered(self, _):
        self.unanswered -= 1

    def _unanswerable(self, failure):
        # a lost connection, or a monitor that refused a piece: either way
        # nothing more to do than forget it
        self.unanswered -= 1


class ControlHub(service.Service):
    """Every monitor connection, the master's facts they are sent and the
    controls they may use.

    *builder_hub*, *queue*, *db* and *follower* (None when the master does
    not follow PyPI) are the master's services; *receiver* tells how far a
    wheel's transfer got; *stop_master* stops the master as SIGTERM would
    (``reactor.stop``).  *sample_machine* (blocking, run in the thread
    pool when the clock has one) returns the master machine's figures.
    *stall_detector* (a :class:`~piwtwist.master.stall_detector.
    StallDetector`) tells how long the reactor was last held up.
    """

    log = Logger()
    name = "control hub"

    def __init__(self, builder_hub, queue, db, clock, *, secret,
                 output_path, abis, follower=None, receiver=None,
                 stop_master=None, refresh_interval=2.0,
                 figures_interval=10.0, coalesce_delay=0.2,
                 hello_timeout=30.0, sample_machine=sample_machine,
                 host=None, statistics=None, stall_detector=None):
        self.builder_hub = builder_hub
        self.stall_detector = stall_detector
        #: the site statistics service, for all-time build time and size
        self.statistics = statistics
        self.queue = queue
        self.db = db
        self.clock = clock
        self.secret = secret
        self.output_path = output_path
        self.abis = list(abis)
        self.follower = follower
        self.receiver = receiver
        self.stop_master = stop_master
        self.refresh_interval = refresh_interval
        self.figures_interval = figures_interval
        self.coalesce_delay = coalesce_delay
        self.hello_timeout = hello_timeout
        self.sample_machine = sample_machine
        self.host = host or socket.gethostname()
        self.started = None
        self.terminating = False
        self.subscribers = set()
        self._message_ids = count(1)
        self._loop = None
        self._refreshing = None
        self._seeding = None
        self._figures_at = None
        self._machine = {}
        self._queue_lengths = None
        self._downloads = None
        self._builds = deque()  # (time, abi, status), oldest first
        self._last_build_at = None
        self._last_failures = {}  # builder id -> {package, version, reason}
        self._dirty = set()
        self._flush_call = None
        self._progress = {}  # builder id -> bytes received last told
        builder_hub.state_listeners.append(self.builder_changed)
        builder_hub.build_listeners.append(self.build_finished)

    def factory(self, require_authentication=True):
        return Factory.forProtocol(
            lambda: ControlConnection(self, require_authentication))

    # service -------------------------------------------------------------

    def startService(self):
        super().startService()
        self.started = self.clock.seconds()
        self._seeding = defer.Deferred.fromCoroutine(self._seed())
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.refresh_interval, now=True)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._broadcast({"type": "bye",
                         "reason": "the master is shutting down"})
        for subscriber in list(self.subscribers):
            subscriber.transport.loseConnection()
        waits = [d for d in (self._refreshing, self._seeding)
                 if d is not None and not d.called]
        return defer.DeferredList(waits) if waits else defer.succeed(None)

    async def _seed(self):
        """The builds of the last hour, once; later ones are counted as
        the builder hub announces them."""
        try:
            rows = await self.db.get_recent_builds()
        except Exception as e:
            self.log.warn("could not count the last hour's builds "
                          "({error}); counting from now", error=str(e))
            return
        # builds announced while the query ran come after the seed
        seeded = deque((built_at.timestamp(), abi, status)
                       for abi, built_at, status in rows)
        seeded.extend(self._builds)
        self._builds = seeded
        if seeded:
            self._last_build_at = max(t for t, _, _ in seeded)

    # subscribers ---------------------------------------------------------

    def subscribe(self, connection):
        first = not self.subscribers
        self.subscribers.add(connection)
        connection.subscribed = True
        self.log.info("monitor at {address} subscribed",
                      address=connection.address)
        # after the answer to Subscribe; the facts may be old if nobody
        # was watching, so refresh them then
        self.clock.callLater(0, self._send_snapshot, connection,
                             first and self.running)

    def unsubscribe(self, connection):
        if connection in self.subscribers:
            self.subscribers.discard(connection)
            self.log.info("monitor at {address} went away",
                          address=connection.address)

    def _send_snapshot(self, connection, refresh=False):
        if connection not in self.subscribers:
            return
        self._send(connection, self.snapshot())
        if refresh:
            self._tick()

    def _send(self, connection, message):
        connection.send(next(self._message_ids), proto.pieces(message))

    def _broadcast(self, message):
        if not self.subscribers:
            return
        message_id = next(self._message_ids)
        pieces = proto.pieces(message)
        for subscriber in list(self.subscribers):
            subscriber.send(message_id, pieces)

    def snapshot(self):
        return {"type": "snapshot", "master": self.master_facts(),
                "builders": self.builders()}

    # the master ----------------------------------------------------------

    def _tick(self):
        """The LoopingCall's body: never raises, never overlaps."""
        try:
            self._prune_builds()
            if not self.subscribers or self._refreshing is not None:
                return
            d = defer.Deferred.fromCoroutine(self._refresh())
            if not d.called:
                self._refreshing = d
            d.addErrback(lambda f: self.log.failure(
                "refreshing the master's facts failed", f))
            d.addBoth(self._refreshed)
        except Exception:
            self.log.failure("the control hub's refresh failed")

    def _refreshed(self, _):
        self._refreshing = None

    async def _refresh(self):
        self._machine = await self._in_thread(self.sample_machine,
                                              str(self.output_path))
        now = self.clock.seconds()
        if self._figures_at is None or \
                now - self._figures_at >= self.figures_interval:
            self._figures_at = now
            try:
                self._queue_lengths, self._downloads = \
                    await self.db.get_monitor_figures()
            except Exception as e:
                self.log.warn("could not read the queue and downloads "
                              "({error})", error=str(e))
        self._note_progress()
        self._broadcast({"type": "master", "master": self.master_facts()})

    def _in_thread(self, function, *args):
        get_pool = getattr(self.clock, "getThreadPool", None)
        if get_pool is None:
            return defer.maybeDeferred(function, *args)
        return threads.deferToThreadPool(self.clock, get_pool(), function,
                                         *args)

    def _prune_builds(self):
        horizon = self.clock.seconds() - HOUR
        while self._builds and self._builds[0][0] < horizon:
            self._builds.popleft()

    def build_finished(self, build):
        """A build listener: count it, and remember a builder's failure."""
        now = self.clock.seconds()
        self._builds.append((now, build.abi_tag, build.status))
        self._last_build_at = now
        if not build.status and build.built_by in \
                self.builder_hub.connections:
            self._last_failures[build.built_by] = {
                "package": build.package, "version": build.version,
                "reason": build.reason,
                "failure_class": getattr(build, "failure_class", "")}
            self.builder_changed(
                self.builder_hub.connections[build.built_by].info)

    def _build_totals(self):
        """All builds' time (seconds) and files' size (bytes), as the
        statistics service last read them; None until it has."""
        figures = getattr(self.statistics, "figures", None)
        statistics = getattr(figures, "statistics", None)
        if statistics is None:
            return None, None
        seconds = statistics.builds_time
        if seconds is not None and hasattr(seconds, "total_seconds"):
            seconds = seconds.total_seconds()
        return seconds, statistics.builds_size

    def master_facts(self):
        self._prune_builds()
        builds, successes = {}, {}
        for _, abi, status in self._builds:
            builds[abi] = builds.get(abi, 0) + 1
            if status:
                successes[abi] = successes.get(abi, 0) + 1
        queue = self._queue_lengths
        if queue is None:
            queue = self.queue.lengths()
        follower = self.follower
        serial = behind = None
        if follower is not None:
            serial = follower.saved_serial
            read = follower.sequencer.high_water
            if follower.caught_up and serial is not None and read:
                # what has been read from PyPI's journal but not saved yet
                behind = max(0, read - serial)
        facts = {
            "version": __version__,
            "host": self.host,
            "started": self.started,
            "now": self.clock.seconds(),
            "abis": list(self.abis),
            "paused": self.builder_hub.paused,
            "terminating": self.terminating,
            "pypi_serial": serial,
            "pypi_behind": behind,
            "queue": {abi: queue.get(abi, 0) for abi in
                      sorted(set(self.abis) | set(queue))},
            "builds_last_hour": {abi: builds.get(abi, 0)
                                 for abi in self.abis} | builds,
            "successes_last_hour": {abi: successes.get(abi, 0)
                                    for abi in self.abis} | successes,
            "downloads_last_hour": self._downloads,
            "last_build_at": self._last_build_at,
        }
        facts["builds_time"], facts["builds_size"] = self._build_totals()
        stalls = self.stall_detector.figures() \
            if self.stall_detector is not None else {}
        facts["reactor_stall"] = stalls.get("recent")
        facts["reactor_stall_worst"] = stalls.get("worst")
        facts["reactor_stall_worst_at"] = stalls.get("worst_at")
        facts["gc_pause"] = stalls.get("gc_recent")
        for key in ("disk_total", "disk_free", "load", "cpu_count",
                    "mem_total", "mem_free", "swap_total", "swap_free",
                    "cpu_temperature"):
            facts[key] = self._machine.get(key)
        return facts

    # builders ------------------------------------------------------------

    def _received(self, state):
        if state.sending_file is None or self.receiver is None:
            return None
        progress = getattr(self.receiver, "progress", None)
        return progress(state.sending_file) if progress else None

    def builder(self, state):
        return builder_message(
            state, sending_received=self._received(state),
            last_failure=self._last_failures.get(state.builder_id))

    def _visible(self):
        """The connections monitors see: those that proved who they are."""
        return [c for c in self.builder_hub.connections.values()
                if c.authenticated]

    def builders(self):
        return [self.builder(c.info) for c in self._visible()]

    def builder_changed(self, state):
        """A builder hub state listener: tell subscribers soon (changes
        that come in a burst make one message per builder)."""
        if state.status == "connecting":
            return  # never said who it is: not shown, not gone
        if state.builder_id not in self.builder_hub.connections:
            self._last_failures.pop(state.builder_id, None)
            self._progress.pop(state.builder_id, None)
        if not self.subscribers:
            return
        self._dirty.add(state.builder_id)
        if self._flush_call is None or not self._flush_call.active():
            self._flush_call = self.clock.callLater(self.coalesce_delay,
                                                    self._flush)

    def _flush(self):
        self._flush_call = None
        dirty, self._dirty = self._dirty, set()
        for builder_id in sorted(dirty):
            connection = self.builder_hub.connections.get(builder_id)
            if connection is None:
                self._broadcast({"type": "builder_gone",
                                 "builder_id": builder_id})
            elif connection.authenticated:
                self._broadcast({"type": "builder",
                                 "builder": self.builder(connection.info)})

    def _note_progress(self):
        """A wheel's transfer moves without the builder hub hearing of
        it: tell subscribers how far it got."""
        for connection in self._visible():
            state = connection.info
            received = self._received(state)
            if received is not None and \
                    self._progress.get(state.builder_id) != received:
                self._progress[state.builder_id] = received
                self.builder_changed(state)

    def log_tail(self, builder_id):
        connection = self.builder_hub.connections.get(builder_id)
        if connection is None or not connection.authenticated:
            raise proto.ControlRefused(f"there is no builder {builder_id}")
        if connection.info.entry is None:
            return b""
        return bytes(connection.log_tail[-MAX_LOG_TAIL:])

    # controls ------------------------------------------------------------

    def control(self, action, builder_id=None, who="a monitor"):
        """Carry out *action*; the resulting state, or ControlRefused."""
        if action not in proto.ACTIONS:
            raise proto.ControlRefused(
                f"{action!r} is not something the master can do; the "
                f"actions are {', '.join(proto.ACTIONS)}")
        if self.terminating:
            raise proto.ControlRefused(
                "the master is already terminating" if
                action == proto.TERMINATE else
                f"the master is terminating; it will not {action} now")
        if action in proto.MASTER_ACTIONS:
            if builder_id is not None:
                raise proto.ControlRefused(
                    f"{action} acts on the whole master; give no builder "
                    f"id")
            return self._master_control(action, who)
        return self._builder_control(action, builder_id, who)

    def _master_control(self, action, who):
        self.log.info("{who} asks the master to {action}", who=who,
                      action=action)
        if action == proto.PAUSE:
            self.builder_hub.pause()
            if self.follower is not None:
                self.follower.pause()
        elif action == proto.RESUME:
            self.builder_hub.resume_all()
            if self.follower is not None:
                self.follower.resume()
        else:
            self.terminating = True
            self._broadcast({"type": "bye",
                             "reason": f"terminated by {who}"})
            # answer first; then stop as SIGTERM would (builders are told
            # goodbye as the builder hub stops)
            if self.stop_master is not None:
                self.clock.callLater(0, self.stop_master)
        facts = self.master_facts()
        self._broadcast({"type": "master", "master": facts})
        return {"master": facts}

    def _builder_control(self, action, builder_id, who):
        if builder_id is None:
            targets = self._visible()
        else:
            connection = self.builder_hub.connections.get(builder_id)
            if connection is None or not connection.authenticated:
                raise proto.ControlRefused(
                    f"there is no builder {builder_id}")
            if action == proto.SKIP and connection.info.entry is None:
                raise proto.ControlRefused(
                    f"builder {builder_id} is not building anything to "
                    f"skip")
            targets = [connection]
        self.log.info("{who} asks {whom} to {action}", who=who,
                      whom="every builder" if builder_id is None
                      else f"builder {builder_id}", action=action)
        method = {proto.SLEEP: self.builder_hub.sleep,
                  proto.WAKE: self.builder_hub.wake,
                  proto.SKIP: self.builder_hub.skip,
                  proto.KILL: self.builder_hub.kill,
                  proto.KILL_NOW: self.builder_hub.kill_now}[action]
        for connection in targets:
            method(connection.info.builder_id)
        return {"builders": [self.builder(c.info) for c in targets]}
