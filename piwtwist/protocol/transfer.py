"""The file-transfer conversation: the master pulls a file in chunks.

Sent by the master (the receiver), answered by the side that has the file
(a builder, or an admin tool importing wheels):

``FetchChunk(filename, offset, length) -> data``
    Up to ``length`` bytes of an offered file, starting at ``offset``.  Fewer
    bytes only at the end of the file.  Errors: ``FileNotOffered`` (the
    sender does not offer that name: it may have restarted or moved on to
    another build) and ``BadRange`` (``offset`` beyond the file,
    ``length`` outside 1..``MAX_CHUNK_SIZE``).

The master decides which ranges it needs, so resuming, retrying and
back-pressure (a bounded window of outstanding requests) are its business
alone; the sender is stateless beyond the set of files it offers.  Which
files are offered, with their sizes and hashes, is told in the build
conversation, not here.
"""

from twisted.protocols import amp

#: The largest chunk a sender serves.  AMP caps every value at 65,535 bytes;
#: 60,000 bytes of data leaves room under that cap (a test serialises a real
#: answer box to prove it) and keeps the per-chunk cost low: handling a box
#: costs far more than copying its data, so 32 KiB chunks cost the sender
#: half as much CPU again per megabyte, and the master a fifth more.
MAX_CHUNK_SIZE = 60_000


class FileNotOffered(Exception):
    """The sender does not offer a file of that name."""


class BadRange(Exception):
    """The requested range lies outside the offered file or the limits."""


class FetchChunk(amp.Command):
    """Master -> sender: a slice of an offered file."""

    commandName = b"fetch-chunk"
    arguments = [
        (b"filename", amp.Unicode()),
        (b"offset", amp.Integer()),
        (b"length", amp.Integer()),
    ]
    response = [(b"data", amp.String())]
    errors = {
        FileNotOffered: b"FILE_NOT_OFFERED",
        BadRange: b"BAD_RANGE",
    }
