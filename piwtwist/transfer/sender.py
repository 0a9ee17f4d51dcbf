"""The side that has the files: answers the master's ``FetchChunks``.

Answers go into the transport one at a time.  The responders register as
the connection's streaming producer (at the first request) and hold every
answer back while the transport is paused, that is while it still has more
than a few kilobytes of an earlier answer to send; then the next one is
read and written.  So however many requests the master has outstanding, a
sender holds one answer (about 1 MB) beyond what the kernel buffers, and
Twisted never has to join queued answers into one buffer.

Each value of an answer is read with its own :func:`os.pread` of at most
:data:`~piwtwist.protocol.transfer.MAX_CHUNK_SIZE` bytes.  Together with
pacing this keeps every buffer but the serialised answer under glibc's
thresholds for handing memory back to the kernel: with one read of the
whole range and answers piling up in the transport, the sender faulted in a
fresh page for every 4 kB it sent, and spent half its CPU doing so.  Reads
run on the reactor thread: a request reads at most
:data:`~piwtwist.protocol.transfer.MAX_FETCH_SIZE` (960 kB) of a wheel that
was just written, which comes from the page cache in a fraction of a
millisecond; a thread hop per request would cost about as much, and the
sending process (a builder or an admin tool) has nothing else on its
reactor that a rare cold read could delay noticeably.

Combining the responder with another AMP protocol, either by inheritance::

    class BuilderProtocol(FileSenderResponders, amp.AMP):
        def __init__(self, file_sender):
            super().__init__()
            self.file_sender = file_sender

(the AMP metaclass merges the responders of every base class; the
protocol's ``transport`` is the one paced), or by delegation, when the
protocol must not know about transfers::

    class BuilderProtocol(amp.AMP):
        def __init__(self, file_sender):
            super().__init__()
            self.transfer_locator = FileSenderLocator(file_sender, self)

        def locateResponder(self, name):
            return (super().locateResponder(name)
                    or self.transfer_locator.locateResponder(name))

A protocol that registers a producer of its own on its transport before the
first request gets its answers unpaced (written at once), which works but
costs the sender more CPU and memory.
"""

import os
from collections import deque
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.protocols import amp
from zope.interface import implementer

from ..protocol.transfer import (
    DATA_NAMES,
    MAX_CHUNK_SIZE,
    MAX_FETCH_SIZE,
    BadRange,
    FetchChunks,
    FileNotOffered,
)


class _OfferedFile:
    """An open file and its size, fixed when offered."""

    def __init__(self, path):
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_RDONLY)
        try:
            self.size = os.fstat(self.fd).st_size
        except BaseException:
            os.close(self.fd)
            raise

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class FileSender:
    """The files offered for the current build, by file name.

    Files are opened when offered, so a file deleted or replaced later still
    serves the bytes (and the size) the master was told about.
    """

    def __init__(self, files=None):
        self._offered = {}
        for filename, path in (files or {}).items():
            self.offer(filename, path)

    @property
    def offered(self):
        """``{filename: Path}`` of what is on offer."""
        return {name: f.path for name, f in self._offered.items()}

    def offer(self, filename, path):
        """Offer *path* under *filename*; return its size."""
        offered = _OfferedFile(path)
        self.withdraw(filename)
        self._offered[filename] = offered
        return offered.size

    def withdraw(self, filename):
        """Stop offering *filename* (no error if it was not offered)."""
        offered = self._offered.pop(filename, None)
        if offered is not None:
            offered.close()

    def clear(self):
        """Offer nothing any more (the build is done)."""
        for filename in list(self._offered):
            self.withdraw(filename)

    def read_chunks(self, filename, offset, length):
        """Up to *length* bytes of *filename* at *offset*, as a list of
        pieces of :data:`~piwtwist.protocol.transfer.MAX_CHUNK_SIZE` bytes,
        the last one shorter; fewer bytes only at the end of the file."""
        offered = self._offered.get(filename)
        if offered is None:
            raise FileNotOffered(f"{filename!r} is not offered")
        if not 0 < length <= MAX_FETCH_SIZE:
            raise BadRange(f"length {length} is outside 1..{MAX_FETCH_SIZE}")
        if not 0 <= offset <= offered.size:
            raise BadRange(f"offset {offset} is outside {filename!r} "
                           f"({offered.size} bytes)")
        end = min(offset + length, offered.size)
        chunks = []
        try:
            for start in range(offset, end, MAX_CHUNK_SIZE):
                wanted = min(MAX_CHUNK_SIZE, end - start)
                chunk = os.pread(offered.fd, wanted, start)
                if chunk:
                    chunks.append(chunk)
                if len(chunk) < wanted:
                    break  # the file shrank: the master will notice
        except OSError as error:
            # not worth dropping the connection over (which an unexpected
            # error in a responder does): the master gives this file up
            raise FileNotOffered(
                f"{filename!r} cannot be read: {error}") from None
        return chunks


class FileSenderResponders(amp.CommandLocator):
    """Responders of the transfer conversation, to mix into an AMP class.

    Needs a ``file_sender`` attribute (a :class:`FileSender`).
    """

    file_sender = None
    _answer_pacer = None

    @FetchChunks.responder
    def fetch_chunks(self, filename, offset, length):
        turn = self._answer_turn()
        if turn is None:
            return self._answer(filename, offset, length)
        return turn.addCallback(
            lambda _: self._answer(filename, offset, length))

    def _answer(self, filename, offset, length):
        if self.file_sender is None:
            raise FileNotOffered(f"{filename!r} is not offered")
        return dict(zip(DATA_NAMES, self.file_sender.read_chunks(
            filename, offset, length)))

    def _answer_turn(self):
        """None to answer now, or a Deferred that fires when it is this
        answer's turn."""
        pacer = self._answer_pacer
        if pacer is None:
            transport = self._paced_transport()
            if transport is None:
                return None  # not connected (yet): decide later
            pacer = self._answer_pacer = _start_pacing(transport)
        return pacer.turn() if pacer else None

    def _paced_transport(self):
        return getattr(self, "transport", None)


class FileSenderLocator(FileSenderResponders):
    """The same responders as a stand-alone locator to delegate to; the
    answers are paced on *protocol*'s transport, if given."""

    def __init__(self, file_sender, protocol=None):
        self.file_sender = file_sender
        self.protocol = protocol

    def _paced_transport(self):
        return getattr(self.protocol, "transport", None)


def _start_pacing(transport):
    """An :class:`_AnswerPacer` registered with *transport*, or False if
    the transport has another producer or takes none."""
    if getattr(transport, "producer", None) is not None:
        return False
    pacer = _AnswerPacer()
    try:
        transport.registerProducer(pacer, True)
    except (AttributeError, RuntimeError):
        return False
    return pacer


@implementer(IPushProducer)
class _AnswerPacer:
    """The transport's producer: lets answers through while the transport
    wants data, one at a time (writing one pauses it again)."""

    def __init__(self):
        self._paused = False
        self._stopped = False
        self._waiting = deque()

    def turn(self):
        if self._stopped or not (self._paused or self._waiting):
            return None
        waiter = Deferred()
        self._waiting.append(waiter)
        return waiter

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        while self._waiting and not self._paused:
            self._waiting.popleft().callback(None)

    def stopProducing(self):
        # the connection is gone: nobody to answer
        self._stopped = True
        self._waiting.clear()
