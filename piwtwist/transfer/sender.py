"""The side that has the files: answers the master's ``FetchChunk``.

Chunks are read with a plain :func:`os.pread` on the reactor thread.  A
read is at most :data:`~piwtwist.protocol.transfer.MAX_CHUNK_SIZE` (60 kB)
of a wheel that was just written, so it comes from the page cache in
microseconds; a thread hop per chunk would cost more than the read, and the
sending process (a builder or an admin tool) has nothing else on its reactor
that a rare cold read could delay noticeably.

Combining the responder with another AMP protocol, either by inheritance::

    class BuilderProtocol(FileSenderResponders, amp.AMP):
        def __init__(self, file_sender):
            super().__init__()
            self.file_sender = file_sender

(the AMP metaclass merges the responders of every base class; a subclass
that overrides ``locateResponder`` must call ``super()``), or by
delegation, when the protocol must not know about transfers::

    class BuilderProtocol(amp.AMP):
        def __init__(self, file_sender):
            super().__init__()
            self.transfer_locator = FileSenderLocator(file_sender)

        def locateResponder(self, name):
            return (super().locateResponder(name)
                    or self.transfer_locator.locateResponder(name))
"""

import os
from pathlib import Path

from twisted.protocols import amp

from ..protocol.transfer import (
    MAX_CHUNK_SIZE,
    BadRange,
    FetchChunk,
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

    def read_chunk(self, filename, offset, length):
        """Up to *length* bytes of *filename* at *offset*."""
        offered = self._offered.get(filename)
        if offered is None:
            raise FileNotOffered(f"{filename!r} is not offered")
        if not 0 < length <= MAX_CHUNK_SIZE:
            raise BadRange(f"length {length} is outside 1..{MAX_CHUNK_SIZE}")
        if not 0 <= offset <= offered.size:
            raise BadRange(f"offset {offset} is outside {filename!r} "
                           f"({offered.size} bytes)")
        try:
            return os.pread(offered.fd, min(length, offered.size - offset),
                            offset)
        except OSError as error:
            # not worth dropping the connection over (which an unexpected
            # error in a responder does): the master gives this file up
            raise FileNotOffered(
                f"{filename!r} cannot be read: {error}") from None


class FileSenderResponders(amp.CommandLocator):
    """Responders of the transfer conversation, to mix into an AMP class.

    Needs a ``file_sender`` attribute (a :class:`FileSender`).
    """

    file_sender = None

    @FetchChunk.responder
    def fetch_chunk(self, filename, offset, length):
        return {"data": self._read_chunk(filename, offset, length)}

    def locateResponder(self, name):
        if name == FetchChunk.commandName:
            return self._answer_fetch_chunk
        return super().locateResponder(name)

    def _answer_fetch_chunk(self, box):
        """:meth:`fetch_chunk` at the box level, with the same wire format.

        AMP's generic argument handling costs as much CPU as the read and
        the send together (about 80 of 160 microseconds per chunk here,
        several times that on a Raspberry Pi), and a builder's CPU bounds
        how fast it can send.
        """
        try:
            data = self._read_chunk(box[b"filename"].decode("utf-8"),
                                    int(box[b"offset"]), int(box[b"length"]))
        except (FileNotOffered, BadRange) as error:
            raise amp.RemoteAmpError(FetchChunk.errors[type(error)],
                                     str(error)) from None
        return amp.AmpBox(data=data)

    def _read_chunk(self, filename, offset, length):
        if self.file_sender is None:
            raise FileNotOffered(f"{filename!r} is not offered")
        return self.file_sender.read_chunk(filename, offset, length)


class FileSenderLocator(FileSenderResponders):
    """The same responders as a stand-alone locator to delegate to."""

    def __init__(self, file_sender):
        self.file_sender = file_sender
