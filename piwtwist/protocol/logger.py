"""The conversation between ``piw-logger`` and the master's hit recorder,
over the master's ``--log-queue`` (a UNIX socket, mode 0660, by default).

``piw-logger`` -> master:

* :class:`HitBatch`, once per part of a batch.  A batch is the CBOR of
  ``[clients, hits]`` (:func:`encode_batch`): hits as
  :mod:`piwtwist.logger.classify` makes them, except that a download's or
  search's client details are an index into ``clients``, where each
  distinct client appears once (a log repeats a few hundred clients).  It
  is cut into parts of at most :data:`MAX_PART` bytes because an AMP value holds at
  most 65,535.  Every part carries the batch's id (``"<session>:<number>"``,
  unique for ever), its index and the number of parts; the master stores
  the batch when the last part arrives, in one transaction, and only then
  answers that part.  The answer to the last part is the acknowledgement:
  ``stored`` is false when the batch had been stored before (the logger
  sends a batch again when a connection died before its acknowledgement),
  so a batch counts exactly once.  ``dropped`` (on the last part) is how
  many hits the logger dropped (``--drop``) since it last said so.

The master never sends anything of its own accord.  Errors:
``BatchRefused`` (malformed or oversized: sending it again cannot help) and
``TryLater`` (the database is away: send it again after a while).
"""

import cbor2
from twisted.protocols import amp

#: The largest part of a batch, well under AMP's 65,535-byte value limit
MAX_PART = 60000
#: The most parts a batch may have, and the most hits
MAX_PARTS = 256
MAX_BATCH_HITS = 50000


class BatchRefused(Exception):
    """The batch is malformed or too large; the text says how."""


class TryLater(Exception):
    """The master cannot store hits now (its database is away)."""


class HitBatch(amp.Command):
    commandName = b"HitBatch"
    arguments = [
        (b"batch", amp.Unicode()),
        (b"part", amp.Integer()),
        (b"parts", amp.Integer()),
        (b"data", amp.String()),
        (b"dropped", amp.Integer()),
    ]
    response = [
        (b"stored", amp.Boolean()),
        (b"hits", amp.Integer()),
    ]
    errors = {
        BatchRefused: b"BATCH_REFUSED",
        TryLater: b"TRY_LATER",
    }


def split_parts(data):
    """*data* (a batch's CBOR) in parts of at most :data:`MAX_PART` bytes;
    always at least one part."""
    return [data[i:i + MAX_PART]
            for i in range(0, len(data), MAX_PART)] or [b""]


def encode_batch(hits):
    """The CBOR of ``[clients, hits]`` for *hits* (see the module's
    docstring); the hits themselves are left as they are."""
    clients, seen, encoded = [], {}, []
    for hit in hits:
        if hit[0] <= 1 and hit[4] is not None:      # download, search
            key = id(hit[4])
            index = seen.get(key)
            if index is None:
                index = seen[key] = len(clients)
                clients.append(hit[4])
            hit = [hit[0], hit[1], hit[2], hit[3], index]
        encoded.append(hit)
    return cbor2.dumps([clients, encoded])
