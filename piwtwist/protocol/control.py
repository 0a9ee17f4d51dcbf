"""The conversation between monitors (``piw-monitor``, ``piwheels-sense``)
and the master's control hub, over AMP.

A monitor connects to the master's ``--control-queue`` and speaks first.

Monitor -> master:

``Hello``        my piwtwist version and a nonce; answered by a challenge,
                 the master's proof that it knows the shared secret (empty
                 when it has none) and whether the monitor must prove it too
                 (on ``tcp:``/``ssl:`` listeners; a UNIX socket is guarded by
                 its file mode instead).
``Authenticate`` my proof that I know the secret (the builders' one).
``Subscribe``    send me the whole picture, then every change; answered at
                 once, the picture follows as ``Status`` messages.
``Control``      do something (see :data:`ACTIONS`); answered by the
                 resulting state of what was touched (CBOR in a
                 :class:`LongString`: every builder's state may exceed one
                 AMP value), or :class:`ControlRefused` with one sentence
                 saying why.
``BuildLogTail`` the last bytes (at most 16 KiB) of a builder's current
                 build log, as far as the master has it (builders send it
                 with their pings); empty when it builds nothing.

Master -> monitor:

``Status``       one piece of one status message. A message is a CBOR map
                 (see below) split into pieces of at most
                 :data:`CHUNK_BYTES`, sent in order with the same
                 ``message_id``; the monitor decodes it when
                 ``index == count - 1``. Each piece is answered (an empty
                 box): a subscriber with more than :data:`MAX_UNANSWERED`
                 pieces unanswered is dropped rather than let the master's
                 buffer grow without bound.

Status messages (CBOR maps, strings as keys; times are seconds since the
epoch, durations seconds, sizes bytes; ``None`` where unknown):

``{"type": "snapshot", "master": MASTER, "builders": [BUILDER, ...]}``
    the whole picture: first after ``Subscribe``, and whenever the master
    prefers it to a list of changes.
``{"type": "master", "master": MASTER}``
    the master's facts changed (sent every few seconds).
``{"type": "builder", "builder": BUILDER}``
    one builder appeared or changed.
``{"type": "builder_gone", "builder_id": ID}``
    one builder disconnected.
``{"type": "bye", "reason": TEXT}``
    the master is shutting down (also when a monitor terminated it).

MASTER is a map with: ``version``, ``host``, ``started`` (time),
``now`` (time), ``abis`` (list), ``paused`` (bool), ``pypi_serial``,
``pypi_behind`` (events read from PyPI's journal and not yet saved, once
the master has caught up with it; None while it catches up or does not
follow PyPI), ``terminating`` (bool), ``queue`` ({abi: pending builds}),
``builds_last_hour`` ({abi: count}), ``successes_last_hour`` ({abi:
count}), ``downloads_last_hour`` (None where the database cannot say),
``last_build_at`` (time of the newest finished build, or None),
``builds_time`` and ``builds_size`` (every build's duration and every
built file's size, all time, as the site statistics last counted them;
None until then),
``reactor_stall`` (seconds: the longest the master's reactor was held up
in the minute under way and the one before), ``reactor_stall_worst`` and
``reactor_stall_worst_at`` (the longest since the master started, and the
time it ended), ``gc_pause`` (seconds: the longest garbage collection in
the same minutes, which holds up every thread; all None where the master
does not measure them),
``disk_total``, ``disk_free`` (the output tree's file system), ``load``
([1, 5, 15 minute]), ``cpu_count``, ``mem_total``, ``mem_free``,
``swap_total``, ``swap_free``, ``cpu_temperature``.

BUILDER is a map with: ``builder_id``, ``label``, ``abi``, ``platform``,
``python`` (py tag), ``os_name``, ``os_version``, ``board_revision``,
``board_serial``, ``address``, ``version``, ``connected_at``,
``last_seen``, ``busy_timeout``, ``build_timeout``, ``status`` (one of
:data:`BUILDER_STATUSES`), ``sleeping``, ``kill_requested`` (it stops
after its build), ``kill_now`` (its build is stopped too),
``package``, ``package_version`` (the current task, or None),
``task_started`` (time), ``sending`` (``{"filename", "size",
"received"}`` while a wheel moves, else None), ``last_failure``
(``{"package", "version", "reason", "failure_class"}`` of its latest
failed build, or None), ``stats`` (the latest machine stats: ``timestamp``,
``disk_total``, ``disk_free``, ``mem_total``, ``mem_free``,
``swap_total``, ``swap_free``, ``load_average``, ``cpu_temperature``;
None until the builder first reports).
"""

import cbor2
from twisted.protocols import amp

from .builder import proof, proofs_match  # noqa: F401 - shared

#: The most bytes of CBOR one Status piece carries: well under AMP's
#: 65,535-byte value limit.
CHUNK_BYTES = 60_000
#: A subscriber this far behind is dropped.
MAX_UNANSWERED = 64

NONCE_BYTES = 32

#: What a builder may be doing, as monitors show it.
BUILDER_STATUSES = ("connecting", "idle", "building", "sending",
                    "recording", "cleaning", "sleeping", "stopping",
                    "leaving")

#: Controls. The builder ones take a builder id, or none for every
#: builder.
PAUSE, RESUME, TERMINATE = "pause", "resume", "terminate"
SLEEP, WAKE, SKIP, KILL, KILL_NOW = "sleep", "wake", "skip", "kill", \
    "kill_now"
MASTER_ACTIONS = (PAUSE, RESUME, TERMINATE)
BUILDER_ACTIONS = (SLEEP, WAKE, SKIP, KILL, KILL_NOW)
ACTIONS = MASTER_ACTIONS + BUILDER_ACTIONS


class ControlRefused(Exception):
    """The master will not do it; the text says why in one sentence."""


class NotAuthenticated(Exception):
    """A command came before the monitor proved it knows the secret."""


class AuthenticationFailed(Exception):
    """The monitor's proof did not match the master's secret."""


class VersionMismatch(Exception):
    """The monitor runs another piwtwist version than the master."""


_ERRORS = {NotAuthenticated: b"NOT_AUTHENTICATED",
           ControlRefused: b"CONTROL_REFUSED"}


class LongString(amp.String):
    """Bytes of any length, in pieces of at most :data:`CHUNK_BYTES` under
    the keys NAME, NAME.2, NAME.3, ...; a short value travels exactly as an
    :class:`amp.String` would."""

    def toBox(self, name, strings, objects, proto):
        value = self.retrieve(objects, name.decode("ascii").replace(
            "-", "_"), proto)
        for number, start in enumerate(
                range(0, max(len(value), 1), CHUNK_BYTES), 1):
            key = name if number == 1 else b"%s.%d" % (name, number)
            strings[key] = value[start:start + CHUNK_BYTES]

    def fromBox(self, name, strings, objects, proto):
        parts = [self.retrieve(strings, name, proto)]
        number = 2
        while b"%s.%d" % (name, number) in strings:
            parts.append(strings.pop(b"%s.%d" % (name, number)))
            number += 1
        objects[name.decode("ascii").replace("-", "_")] = b"".join(parts)


class Hello(amp.Command):
    commandName = b"hello"
    arguments = [(b"version", amp.Unicode()), (b"nonce", amp.String())]
    response = [
        (b"challenge", amp.String()),
        (b"proof", amp.String()),
        (b"authenticate", amp.Boolean()),
        (b"master_version", amp.Unicode()),
    ]
    errors = {VersionMismatch: b"VERSION_MISMATCH"}


class Authenticate(amp.Command):
    commandName = b"authenticate"
    arguments = [(b"proof", amp.String())]
    response = []
    errors = {AuthenticationFailed: b"AUTHENTICATION_FAILED"}


class Subscribe(amp.Command):
    commandName = b"subscribe"
    arguments = []
    response = []
    errors = dict(_ERRORS)


class Control(amp.Command):
    commandName = b"control"
    arguments = [
        (b"action", amp.Unicode()),
        (b"builder_id", amp.Integer(optional=True)),
    ]
    # CBOR: {"master": MASTER} or {"builders": [BUILDER, ...]}
    response = [(b"state", LongString())]
    errors = dict(_ERRORS)


class BuildLogTail(amp.Command):
    commandName = b"build-log-tail"
    arguments = [(b"builder_id", amp.Integer())]
    response = [(b"data", amp.String())]
    errors = dict(_ERRORS)


class Status(amp.Command):
    commandName = b"status"
    arguments = [
        (b"message_id", amp.Integer()),
        (b"index", amp.Integer()),
        (b"count", amp.Integer()),
        (b"data", amp.String()),
    ]
    response = []


def encode(value):
    return cbor2.dumps(value)


def decode(data):
    return cbor2.loads(data)


def pieces(value):
    """The CBOR of *value* in pieces of at most :data:`CHUNK_BYTES`."""
    data = encode(value)
    return [data[start:start + CHUNK_BYTES]
            for start in range(0, max(len(data), 1), CHUNK_BYTES)]


class Reassembler:
    """Joins Status pieces back into messages."""

    def __init__(self):
        self._message_id = None
        self._parts = []

    def add(self, message_id, index, count, data):
        """Take one piece; return the decoded message when it is the last
        one, else None. Pieces out of order start the message over."""
        if index == 0:
            self._message_id, self._parts = message_id, []
        if message_id != self._message_id or index != len(self._parts):
            self._message_id, self._parts = None, []
            return None
        self._parts.append(data)
        if index == count - 1:
            data = b"".join(self._parts)
            self._message_id, self._parts = None, []
            return decode(data)
        return None


def master_proof(secret, nonce):
    return proof(secret, b"control master", nonce)


def monitor_proof(secret, challenge):
    return proof(secret, b"control monitor", challenge)
