"""The conversation between a builder and the master's builder hub, over AMP.

The builder connects and speaks first; the master answers every command
with what the builder should do next, so a builder is never told anything
it did not ask about except the transfer requests below.

Builder -> master:

``Hello``         who I am (versions, ABI, platform, label, machine, limits)
                  and a nonce; answered by a challenge and the master's proof
                  that it knows the shared secret.
``Authenticate``  my proof that I know the secret; answered by my builder id
                  and whether the master took back the build I said I held
                  (``resumed``); if not, I throw that build away.
``Idle``          machine stats; answered by ``build`` (with what to build,
                  from which index, and a ticket for this assignment),
                  ``sleep`` (ask again later) or ``die``.
``Busy``          a ping while building, with the end of the build's log so
                  far (at most :data:`LOG_TAIL_BYTES`, for monitors);
                  answered by ``continue`` or ``stop``.
``BuildLog``      one piece of the build log (logs are larger than an AMP
                  value may be), sent before ``Built``.
``Built``         the outcome: status, duration, the log's size and hash,
                  every wheel's facts, a failure's class, the remedy a
                  rescued build was retried with, and a token the builder
                  made up for this build (the same however often it is reported, so the
                  master records it once); answered by ``send`` (the master
                  will fetch the files, then say ``Done``) or ``done``
                  (nothing to fetch).  Reported again on a new connection
                  while the master is still recording it, it is answered as
                  the first report was, and ``Done`` comes on the new one.
``Bye``           I am going away.

Master -> builder:

``FetchChunks``    (see :mod:`piwtwist.protocol.transfer`) ranges of a wheel.
``Done``          the build is recorded; the builder may delete its files and
                  ask for work again.

The shared secret never crosses the wire: each side proves it knows it with
an HMAC over the other side's random nonce.

Knowing the secret is not enough to change anything: a builder reports only
on the build it was handed on this connection, or on the build it held when
its connection dropped, which it proves with that assignment's ticket.
"""

import hashlib
import hmac

from twisted.protocols import amp

from .. import __version__

#: Replies to Idle.
BUILD, SLEEP, DIE = "build", "sleep", "die"
#: Replies to Busy.
CONTINUE, STOP = "continue", "stop"
#: Replies to Built.
SEND, DONE = "send", "done"

NONCE_BYTES = 32


class VersionMismatch(Exception):
    """The builder runs another piwtwist version than the master."""


class AuthenticationFailed(Exception):
    """The builder's proof did not match the master's secret."""


class NotAuthenticated(Exception):
    """A command came before Hello and Authenticate succeeded."""


class ProtocolViolation(Exception):
    """A command that makes no sense in the builder's current state."""


_ERRORS = {
    NotAuthenticated: b"NOT_AUTHENTICATED",
    ProtocolViolation: b"PROTOCOL_VIOLATION",
}


class Hello(amp.Command):
    commandName = b"hello"
    arguments = [
        (b"version", amp.Unicode()),
        (b"nonce", amp.String()),
        (b"build_timeout", amp.Float()),
        (b"busy_timeout", amp.Float()),
        (b"py_tag", amp.Unicode()),
        (b"abi_tag", amp.Unicode()),
        (b"platform_tag", amp.Unicode()),
        (b"label", amp.Unicode()),
        (b"os_name", amp.Unicode()),
        (b"os_version", amp.Unicode()),
        (b"board_revision", amp.Unicode()),
        (b"board_serial", amp.Unicode()),
        # what the builder is still busy with after a reconnection
        (b"current_package", amp.Unicode(optional=True)),
        (b"current_version", amp.Unicode(optional=True)),
        # the ticket Idle handed out with that build
        (b"current_ticket", amp.Unicode(optional=True)),
    ]
    response = [
        (b"challenge", amp.String()),
        (b"proof", amp.String()),
    ]
    errors = {VersionMismatch: b"VERSION_MISMATCH",
              ProtocolViolation: b"PROTOCOL_VIOLATION"}


class Authenticate(amp.Command):
    commandName = b"authenticate"
    arguments = [(b"proof", amp.String())]
    response = [
        (b"builder_id", amp.Integer()),
        # whether the build named in Hello is still this builder's
        (b"resumed", amp.Boolean()),
    ]
    errors = {AuthenticationFailed: b"AUTHENTICATION_FAILED",
              ProtocolViolation: b"PROTOCOL_VIOLATION"}


_STATS = [
    (b"timestamp", amp.Float()),
    (b"disk_total", amp.Integer()),
    (b"disk_free", amp.Integer()),
    (b"mem_total", amp.Integer()),
    (b"mem_free", amp.Integer()),
    (b"load_average", amp.Float()),
    (b"cpu_temperature", amp.Float(optional=True)),
    (b"swap_total", amp.Integer(optional=True)),
    (b"swap_free", amp.Integer(optional=True)),
]

#: The most bytes of the running build's log a Busy ping carries.
LOG_TAIL_BYTES = 8 * 1024


class Idle(amp.Command):
    commandName = b"idle"
    arguments = list(_STATS)
    response = [
        (b"action", amp.Unicode()),
        (b"package", amp.Unicode(optional=True)),
        (b"version", amp.Unicode(optional=True)),
        (b"index_url", amp.Unicode(optional=True)),
        (b"extra_index_urls", amp.ListOf(amp.Unicode(), optional=True)),
        (b"delay", amp.Float(optional=True)),
        # proof, after a reconnection, that this build was handed to us
        (b"ticket", amp.Unicode(optional=True)),
    ]
    errors = dict(_ERRORS)


class Busy(amp.Command):
    commandName = b"busy"
    arguments = list(_STATS) + [(b"log_tail", amp.String(optional=True))]
    response = [(b"action", amp.Unicode())]
    errors = dict(_ERRORS)


class LogTooLarge(Exception):
    """The build log exceeds what the master keeps (:data:`MAX_LOG_BYTES`);
    the builder must send a shorter one (its head and tail), from offset 0."""


class BuildLog(amp.Command):
    """A piece of the log; pieces arrive in order, each under AMP's limit."""

    commandName = b"build-log"
    arguments = [(b"offset", amp.Integer()), (b"data", amp.String())]
    response = []
    errors = {**_ERRORS, LogTooLarge: b"LOG_TOO_LARGE"}


#: The most log bytes one BuildLog carries.
LOG_CHUNK = 48 * 1024
#: The longest build log the master accepts from a builder; builders keep
#: the head and tail of longer logs under their own, smaller, cap.
MAX_LOG_BYTES = 4 * 1024 * 1024

WHEEL_FACTS = [
    (b"filename", amp.Unicode()),
    (b"filesize", amp.Integer()),
    (b"filehash", amp.Unicode()),
    (b"package_tag", amp.Unicode()),
    (b"package_version_tag", amp.Unicode()),
    (b"py_version_tag", amp.Unicode()),
    (b"abi_tag", amp.Unicode()),
    (b"platform_tag", amp.Unicode()),
    (b"requires_python", amp.Unicode()),
    # "tool:name" pairs, e.g. "apt:libc6", "pip:requests"
    (b"dependencies", amp.ListOf(amp.Unicode())),
]


def wheel_facts(build_file, dependencies):
    """The :data:`WHEEL_FACTS` of a wheel, from its
    :class:`~piwtwist.records.BuildFile` and dependencies."""
    return {
        "filename": build_file.filename,
        "filesize": build_file.filesize,
        "filehash": build_file.filehash,
        "package_tag": build_file.package_tag,
        "package_version_tag": build_file.package_version_tag,
        "py_version_tag": build_file.py_version_tag,
        "abi_tag": build_file.abi_tag,
        "platform_tag": build_file.platform_tag,
        "requires_python": build_file.requires_python,
        "dependencies": [f"{d.tool}:{d.dependency}" for d in dependencies],
    }


class Built(amp.Command):
    commandName = b"built"
    arguments = [
        (b"package", amp.Unicode()),
        (b"version", amp.Unicode()),
        (b"status", amp.Boolean()),
        (b"duration", amp.Float()),
        (b"reason", amp.Unicode()),
        (b"log_size", amp.Integer()),
        (b"log_sha256", amp.Unicode()),
        (b"files", amp.AmpList(WHEEL_FACTS)),
        # the identity of this result: a random token per build
        (b"build_token", amp.Unicode(optional=True)),
        # a failure's class as the builder sees it (the master classifies
        # the log itself and uses this only as a check), and the remedy a
        # rescued build was retried with (piwtwist.failures)
        (b"failure_class", amp.Unicode(optional=True)),
        (b"rescued", amp.Unicode(optional=True)),
    ]
    response = [(b"action", amp.Unicode())]
    errors = dict(_ERRORS)


class Bye(amp.Command):
    commandName = b"bye"
    arguments = [(b"reason", amp.Unicode())]
    response = []
    requiresAnswer = False


class Done(amp.Command):
    """Master -> builder: the build is recorded (or given up on)."""

    commandName = b"done"
    arguments = [(b"package", amp.Unicode()), (b"version", amp.Unicode())]
    response = []


def proof(secret, speaker, nonce):
    """An HMAC of the other side's *nonce* that shows the *speaker* knows
    *secret*; the speaker's name keeps one side's proof from being
    replayed as the other's."""
    return hmac.new(secret, b"piwtwist " + speaker + b"\0" + nonce,
                    hashlib.sha256).digest()


def master_proof(secret, nonce):
    """What the master sends to show it knows *secret*."""
    return proof(secret, b"master", nonce)


def builder_proof(secret, challenge):
    """What a builder sends to show it knows *secret*."""
    return proof(secret, b"builder", challenge)


def proofs_match(expected, given):
    return hmac.compare_digest(expected, given)


def version_mismatch_message(builder_version, master_version=__version__):
    return (f"this builder runs piwtwist {builder_version} but the master "
            f"runs {master_version}; upgrade the builder to "
            f"{master_version}")
