"""The file-transfer conversation: the master pulls a file in pieces.

Sent by the master (the receiver), answered by the side that has the file
(a builder, or an admin tool importing wheels):

``FetchChunks(filename, offset, length) -> data0, data1, ... data15``
    The bytes of an offered file from ``offset`` to ``offset + length``, or
    to its end if that comes first, in order: ``data0`` holds the first
    :data:`MAX_CHUNK_SIZE` bytes, ``data1`` the next, and so on; only the
    last value present may be shorter, and values past the end of the data
    are left out (none at all when ``offset`` is the file's size).
    ``length`` is 1..:data:`MAX_FETCH_SIZE`, so an answer has at most
    :data:`MAX_CHUNKS` values.  Errors: ``FileNotOffered`` (the sender does
    not offer that name: it may have restarted or moved on to another
    build) and ``BadRange`` (``offset`` beyond the file, ``length`` outside
    1..``MAX_FETCH_SIZE``).

AMP limits every value, not every box, to 65,535 bytes, so one answer moves
up to :data:`MAX_FETCH_SIZE` (960,000) bytes while no value exceeds
:data:`MAX_CHUNK_SIZE` (a test serialises a real answer box to prove it).
Handling a box costs far more than copying its data: with one 60 kB value
per box (the ``FetchChunk`` this command replaced) AMP's per-box cost held
a transfer to about half the speed of a plain TCP copy, and was most of
the CPU both sides spent.  There is no single-value command: a short range
(the tail of a file, a small wheel) is simply answered with one value.

The master decides which ranges it needs, so resuming, retrying and
back-pressure (a bounded window of outstanding requests) are its business
alone; the sender keeps nothing beyond the set of files it offers, and may
hold an answer back until its connection has sent the previous one.  Which
files are offered, with their sizes and hashes, is told in the build
conversation, not here.
"""

from twisted.protocols import amp

#: The most bytes in one value of an answer.  AMP caps every value at
#: 65,535 bytes; 60,000 leaves room under that cap.
MAX_CHUNK_SIZE = 60_000
#: The most values in one answer.
MAX_CHUNKS = 16
#: The most bytes one request may ask for: about 1 MB per box.
MAX_FETCH_SIZE = MAX_CHUNKS * MAX_CHUNK_SIZE
#: The answer's keys, in the order of the data they hold.
DATA_KEYS = tuple(b"data%d" % index for index in range(MAX_CHUNKS))
#: The same keys as ``callRemote`` and responders name them.
DATA_NAMES = tuple(key.decode("ascii") for key in DATA_KEYS)


class FileNotOffered(Exception):
    """The sender does not offer a file of that name."""


class BadRange(Exception):
    """The requested range lies outside the offered file or the limits."""


class FetchChunks(amp.Command):
    """Master -> sender: a range of an offered file, one value per
    :data:`MAX_CHUNK_SIZE` bytes."""

    commandName = b"fetch-chunks"
    arguments = [
        (b"filename", amp.Unicode()),
        (b"offset", amp.Integer()),
        (b"length", amp.Integer()),
    ]
    response = [(key, amp.String(optional=True)) for key in DATA_KEYS]
    errors = {
        FileNotOffered: b"FILE_NOT_OFFERED",
        BadRange: b"BAD_RANGE",
    }
