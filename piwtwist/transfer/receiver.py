"""The master's side of a transfer: pull, resume, verify, publish.

A file being received lives in the incoming directory (``<output>/.incoming``
by default, on the output tree's filesystem so that publishing is a
rename) as two files:

``<filename>.part``
    the data, written at its final offsets into a file of the final size;
``<filename>.ranges``
    JSON: the size, the expected sha256 and the byte ranges received.  It is
    rewritten (atomically, after an ``fdatasync`` of the data) every few
    megabytes and whenever a transfer stops, so it never claims bytes that
    are not on disk; after a dropped connection or a restart of the master,
    a transfer of the same (name, size, sha256) fetches only what is
    missing.  A different size or hash starts over.

The file is asked for in pieces of up to
:data:`~piwtwist.protocol.transfer.MAX_FETCH_SIZE` (960 kB), each answered
by one AMP box of up to 16 values, with a bounded window of pieces
outstanding.  The reactor thread only parses AMP boxes and keeps the books.
Pieces are written (one ``pwritev`` each) and hashed in the thread pool, one
batch at a time: the pieces that arrive while a batch is being written form
the next batch, so a slow disk (or the kernel throttling dirty pages) never
stalls the reactor, and the hashing runs on another core.  A fresh transfer
is hashed as it is written, in order, so even a large file needs no second
read; a resumed one is hashed from disk at the end.  Fetching pauses while
too much data waits for the disk, so a transfer holds at most
``write_buffer + window * fetch_size`` bytes (about 8 MB by default).

Nothing appears under ``simple/`` until the whole file has been verified,
synced and linked into place.  The master's hubs go further: they receive
with ``publish=False``, which leaves the verified file in
``.incoming/verified/<sha256>/<filename>`` (named by its bytes, so two
transfers never share one), record the build, and only then publish it
with :meth:`FileReceiver.publish_staged`; a staged file whose build was
never committed is never seen under ``simple/`` (see
docs/crash-consistency.md).  A published file never changes its bytes: a
file of the same name that is already published is accepted only if its
bytes are the same (checked before anything is fetched, and again when
publishing, which never replaces), unless the caller asks to replace it.
"""

import hashlib
import json
import os
import re
import time
from bisect import bisect_left, bisect_right
from pathlib import Path

from packaging.utils import canonicalize_name
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredLock,
    succeed,
)
from twisted.internet.error import ConnectionClosed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from .. import names
from ..protocol.transfer import (
    DATA_NAMES,
    MAX_FETCH_SIZE,
    BadRange,
    FetchChunks,
    FileNotOffered,
)

DEFAULT_MAX_SIZE = 2 * 1024 ** 3
#: Requests outstanding at most; 4 requests ask for about 4 MB.
DEFAULT_WINDOW = 4
DEFAULT_ATTEMPTS = 3
#: How much data may arrive between two saves of the received ranges: what
#: a restart of the master may have to fetch again.
DEFAULT_CHECKPOINT_BYTES = 8 * 1024 * 1024
#: How many received bytes may wait for the disk before fetching pauses.
DEFAULT_WRITE_BUFFER = 4 * 1024 * 1024
#: How long the sender may leave every request unanswered before the
#: transfer is considered interrupted (AMP has no keep-alive of its own);
#: noticed within a quarter of this again.
DEFAULT_CHUNK_TIMEOUT = 120.0

PART_SUFFIX = ".part"
#: Verified files waiting for their build to be committed live in
#: ``<incoming>/verified/<sha256>/<filename>``.
VERIFIED_DIRECTORY = "verified"
RANGES_SUFFIX = ".ranges"
_TEMP_SUFFIX = ".tmp"
#: Longest accepted file name: room for our suffixes within NAME_MAX (255).
MAX_FILENAME_LENGTH = names.MAX_FILENAME_LENGTH
assert MAX_FILENAME_LENGTH + len(RANGES_SUFFIX + _TEMP_SUFFIX) <= \
    names.MAX_PATH_COMPONENT

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_HASH_BLOCK = 1024 * 1024
#: Small pieces wait for this much company before they are written, unless
#: no more are on their way.
_WRITE_BATCH = 256 * 1024


class TransferError(Exception):
    """A transfer did not produce the file."""


class TransferFailed(TransferError):
    """The transfer failed in a way that asking again will not mend: a bad
    request, a sender that misbehaves, a hash that never matches, a local
    disk that refuses.  Data from a suspect sender is deleted."""


class TransferRefused(TransferFailed):
    """The request was refused before anything was written."""


class AlreadyPublished(TransferRefused):
    """A file of that name is already published with other bytes."""


class TransferInterrupted(TransferError):
    """The transfer stopped early; what arrived is kept for resumption."""


class _Abandoned(Exception):
    """The receiver is shutting down."""


class _NoAnswer(Exception):
    """The sender has stopped answering."""


class _SenderError(Exception):
    """The sender broke the protocol."""


class ReceivedRanges:
    """A set of half-open byte ranges, kept sorted and merged."""

    def __init__(self, ranges=()):
        self._starts = []
        self._ends = []
        for start, end in ranges:
            self.add(start, end)

    def add(self, start, end):
        # every range that overlaps or touches [start, end) merges into it
        first = bisect_left(self._ends, start)
        last = bisect_right(self._starts, end)
        if first < last:
            start = min(start, self._starts[first])
            end = max(end, self._ends[last - 1])
        self._starts[first:last] = [start]
        self._ends[first:last] = [end]

    def __iter__(self):
        return iter(zip(self._starts, self._ends))

    def as_list(self):
        return [[start, end] for start, end in self]

    @property
    def total(self):
        return sum(end - start for start, end in self)

    def missing(self, size):
        """The ranges of ``[0, size)`` not received, in order."""
        gaps = []
        position = 0
        for start, end in self:
            if start > position:
                gaps.append((position, start))
            position = max(position, end)
        if position < size:
            gaps.append((position, size))
        return gaps


class _StreamHash:
    """The sha256 of a file's prefix, fed piece by piece as they are
    written (in the writing thread, one batch at a time)."""

    def __init__(self):
        self.hasher = hashlib.sha256()
        self.position = 0
        self._held = {}

    def feed(self, offset, length, chunks):
        if offset != self.position:
            # overtook an earlier piece; at most a window's worth waits
            self._held[offset] = length, chunks
            return
        while True:
            for chunk in chunks:
                self.hasher.update(chunk)
            self.position += length
            if self.position not in self._held:
                return
            length, chunks = self._held.pop(self.position)


class _Transfer:
    """One attempt at receiving one file: the partial file and progress.

    Work on the file runs in the thread pool as background jobs (writing
    batches of pieces, saving the ranges); the file is closed only when no
    job is running, however the transfer ends.
    """

    def __init__(self, filename, size, sha256, part_path, ranges_path, fd,
                 received=()):
        self.filename = filename
        self.size = size
        self.sha256 = sha256
        self.part_path = part_path
        self.ranges_path = ranges_path
        self.fd = fd
        self.received = ReceivedRanges(received)
        self.fetched = 0
        self.unsaved = 0
        # a fresh transfer is hashed as it is written; a resumed one is
        # hashed from disk at the end
        self.stream_hash = None if self.received.total else _StreamHash()
        self.saving = False
        self.save_error = None
        self.pipeline = None
        self.jobs = 0
        self._idle_waiters = []
        self._close_when_idle = False

    def record(self):
        return {"filename": self.filename, "size": self.size,
                "sha256": self.sha256, "ranges": self.received.as_list()}

    def missing_pieces(self, fetch_size):
        """(offset, length) of what is missing, in pieces of at most
        *fetch_size* bytes, in order."""
        for start, end in self.received.missing(self.size):
            for offset in range(start, end, fetch_size):
                yield offset, min(fetch_size, end - offset)

    def job_started(self):
        self.jobs += 1

    def job_finished(self, result=None):
        self.jobs -= 1
        if not self.jobs:
            if self._close_when_idle:
                self.close()
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        return result

    async def idle(self):
        """Return once no background job is running."""
        while self.jobs:
            waiter = Deferred()
            self._idle_waiters.append(waiter)
            await waiter

    def close(self):
        if self.jobs:
            self._close_when_idle = True
        elif self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Pipeline:
    """Fetches a transfer's missing pieces and writes them to its file.

    At most *window* requests are outstanding, sent half a window at a
    time, and fetching pauses while *write_buffer* bytes wait for the
    disk.  Writing runs in the thread pool one batch at a time, so the
    pieces that arrive while a batch is being written form the next batch:
    the reactor only parses AMP boxes.
    """

    def __init__(self, receiver, transfer, call_remote):
        self._receiver = receiver
        self._transfer = transfer
        self._call_remote = call_remote
        self._pieces = transfer.missing_pieces(receiver.fetch_size)
        self._exhausted = False
        self._outstanding = {}
        self._pending = []
        self._buffered = 0
        self._writing = False
        self._requesting = False
        self._stopped = False
        self._finished = Deferred(
            lambda d: self.stop(Failure(CancelledError())))
        # one watchdog rather than a timer (a DelayedCall to schedule and
        # cancel) per request
        self._answers = 0
        self._answers_seen = 0
        self._quiet_since = None
        self._watchdog = None

    def run(self):
        """Fetch; the Deferred fires once every missing piece is on disk."""
        reactor = self._receiver.reactor
        self._quiet_since = reactor.seconds()
        self._watchdog = reactor.callLater(
            self._receiver.chunk_timeout / 4, self._check_answers)
        self._request_more()
        self._finish_if_done()
        return self._finished

    def stop(self, failure):
        """Stop with *failure*.  Answers still on their way are ignored;
        pieces already received are still written (and then count as
        received when the ranges are saved)."""
        if self._stopped:
            return
        self._end()
        for request in list(self._outstanding.values()):
            request.cancel()
        self._write_more()
        self._finished.errback(failure)

    def _end(self):
        self._stopped = True
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()

    def _check_answers(self):
        """Stop when requests have gone unanswered for the chunk timeout."""
        receiver = self._receiver
        if self._stopped:
            return
        now = receiver.reactor.seconds()
        if self._answers != self._answers_seen or not self._outstanding:
            self._answers_seen = self._answers
            self._quiet_since = now
        elif now - self._quiet_since >= receiver.chunk_timeout:
            self._watchdog = None
            self.stop(Failure(_NoAnswer()))
            return
        self._watchdog = receiver.reactor.callLater(
            receiver.chunk_timeout / 4, self._check_answers)

    def _request_more(self):
        # answers may come back synchronously: loop, do not recurse
        if self._requesting:
            return
        self._requesting = True
        try:
            self._issue_requests()
        finally:
            self._requesting = False

    def _issue_requests(self):
        receiver = self._receiver
        if len(self._outstanding) > receiver.window // 2:
            # refill half a window at a time: one send, and one wake-up of
            # the sender, then carries several requests
            return
        filename = self._transfer.filename
        while not self._stopped and not self._exhausted and \
                len(self._outstanding) < receiver.window and \
                self._buffered < receiver.write_buffer:
            try:
                offset, length = next(self._pieces)
            except StopIteration:
                self._exhausted = True
                return
            try:
                request = self._call_remote(FetchChunks, filename=filename,
                                            offset=offset, length=length)
            except Exception:
                self.stop(Failure())
                return
            self._outstanding[offset] = request
            request.addCallbacks(self._received, self._failed,
                                 callbackArgs=(offset, length),
                                 errbackArgs=(offset,))

    def _received(self, answer, offset, length):
        del self._outstanding[offset]
        if self._stopped:
            return
        self._answers += 1
        chunks = []
        for name in DATA_NAMES:
            chunk = answer.get(name)
            if chunk is None:
                break
            chunks.append(chunk)
        got = sum(map(len, chunks))
        if got != length:
            self.stop(Failure(_SenderError(self._wrong_length(
                offset, length, got))))
            return
        self._pending.append((offset, length, chunks))
        self._buffered += length
        self._write_more()
        self._request_more()
        self._finish_if_done()

    def _wrong_length(self, offset, asked, got):
        name = self._transfer.filename
        if got > asked:
            return (f"the sender returned {got} bytes at offset {offset} "
                    f"of {name} when {asked} were asked for")
        return (f"the sender returned only {got} of {asked} bytes at "
                f"offset {offset} of {name}: its file is shorter than the "
                f"declared {self._transfer.size} bytes")

    def _failed(self, failure, offset):
        self._outstanding.pop(offset, None)
        self.stop(failure)

    def _write_more(self):
        if self._writing or not self._pending:
            return
        if self._buffered < _WRITE_BATCH and self._outstanding:
            return  # more is coming: one thread hop for several pieces
        batch, self._pending = self._pending, []
        self._writing = True
        transfer = self._transfer
        self._receiver._background(
            transfer, lambda result: self._written(result, batch),
            _write_pieces, transfer.fd, batch, transfer.stream_hash)

    def _written(self, result, batch):
        self._writing = False
        transfer = self._transfer
        if isinstance(result, Failure):
            self.stop(result)
            return
        for offset, length, chunks in batch:
            transfer.received.add(offset, offset + length)
            transfer.fetched += length
            transfer.unsaved += length
            self._buffered -= length
        self._write_more()
        if self._stopped:
            return
        self._receiver._save_if_due(transfer)
        self._request_more()
        self._finish_if_done()

    def _finish_if_done(self):
        if not self._stopped and self._exhausted and \
                not self._outstanding and not self._pending and \
                not self._writing:
            self._end()
            self._finished.callback(None)


def _write_pieces(fd, batch, stream_hash):
    """Write (offset, length, chunks) pieces, in the writing thread: one
    system call per piece, however many values it came in."""
    for offset, length, chunks in batch:
        written = os.pwritev(fd, chunks, offset)
        if written < length:  # rare: finish it a slice at a time
            view = memoryview(b"".join(chunks))[written:]
            position = offset + written
            while view:
                written = os.pwrite(fd, view, position)
                view = view[written:]
                position += written
        if stream_hash is not None:
            stream_hash.feed(offset, length, chunks)


class FileReceiver:
    """Receives wheels into ``<output>/simple/<canonical-name>/``.

    *reactor* provides ``callLater`` (the no-answer watchdog), ``seconds``
    and the thread hop; *threadpool* defaults to the reactor's.  Partial
    files live in *incoming_path* (default ``<output>/.incoming``, which
    must be on the output tree's filesystem).  Limits: *max_size* bytes per
    file, *window* outstanding requests, *write_buffer* bytes waiting for
    the disk, *attempts* whole-file tries when the hash does not match,
    *fetch_size* bytes per request (at most :data:`MAX_FETCH_SIZE`),
    *chunk_timeout* seconds without any answer.  The received ranges are
    saved every *checkpoint_bytes*.  *durable* (the default) syncs data
    before it is recorded as received and before it is published.

    Call :meth:`abandon` when the master stops, and wait for its Deferred.
    """

    log = Logger()

    def __init__(self, output_path, reactor, *, threadpool=None,
                 incoming_path=None, fetch_size=MAX_FETCH_SIZE,
                 window=DEFAULT_WINDOW, max_size=DEFAULT_MAX_SIZE,
                 attempts=DEFAULT_ATTEMPTS,
                 checkpoint_bytes=DEFAULT_CHECKPOINT_BYTES,
                 chunk_timeout=DEFAULT_CHUNK_TIMEOUT,
                 write_buffer=DEFAULT_WRITE_BUFFER, durable=True):
        if not 0 < fetch_size <= MAX_FETCH_SIZE:
            raise ValueError(f"fetch_size must be 1..{MAX_FETCH_SIZE}")
        if window < 1 or attempts < 1:
            raise ValueError("window and attempts must be at least 1")
        self.output_path = Path(output_path)
        self.incoming_path = Path(incoming_path) if incoming_path \
            else self.output_path / ".incoming"
        self.reactor = reactor
        self.threadpool = threadpool
        self.fetch_size = fetch_size
        self.window = window
        self.max_size = max_size
        self.attempts = attempts
        self.checkpoint_bytes = checkpoint_bytes
        self.chunk_timeout = chunk_timeout
        self.write_buffer = write_buffer
        self.durable = durable
        self._locks = {}
        self._transfers = set()
        self._active = 0
        self._idle_waiters = []
        self._abandoned = False

    # -- the public face ---------------------------------------------------

    async def receive(self, call_remote, package, filename, size, sha256,
                      *, replace=False, publish=True):
        """Pull *filename* through *call_remote*; return its final path.

        With *publish* false the verified file is left in the incoming
        directory (:meth:`staged_path`) and that path is returned, unless
        the file is already published with the same bytes (then the
        published path is returned); :meth:`publish_staged` publishes it
        once the caller has recorded it.  A staged file of the same bytes
        is taken as it is, without fetching anything.

        A file of that name already published with the same sha256 is
        accepted as it is, without fetching anything; one with other bytes
        raises :class:`AlreadyPublished`, unless *replace* (an operator's
        explicit choice) allows the new bytes to take its place.

        *call_remote* is ``amp.AMP.callRemote`` of the connection to the
        sender, or anything called the same way.  Raises
        :class:`TransferRefused` for a request that makes no sense,
        :class:`TransferFailed` when the sender misbehaves or the hash still
        does not match after the allowed attempts, and
        :class:`TransferInterrupted` when the connection is lost, the sender
        stops answering or the receiver is abandoned.
        """
        canonical = self.check_request(package, filename, size, sha256)
        sha256 = sha256.lower()
        if self._abandoned:
            raise TransferInterrupted("the master is shutting down")
        self._active += 1
        lock = self._locks.setdefault(filename, DeferredLock())
        try:
            await lock.acquire()
            try:
                return await self._receive(call_remote, canonical, filename,
                                           size, sha256, replace, publish)
            finally:
                lock.release()
        finally:
            if not lock.locked and not lock.waiting and \
                    self._locks.get(filename) is lock:
                del self._locks[filename]
            self._active -= 1
            if not self._active:
                waiters, self._idle_waiters = self._idle_waiters, []
                for waiter in waiters:
                    waiter.callback(None)

    def abandon(self):
        """Stop every transfer, keeping what arrived; refuse new ones.

        Returns a Deferred that fires once every transfer has saved its
        state and stopped: the master's ``stopService`` waits for it.
        """
        self._abandoned = True
        for transfer in list(self._transfers):
            if transfer.pipeline is not None:
                transfer.pipeline.stop(Failure(_Abandoned()))
        if not self._active:
            return succeed(None)
        waiter = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def progress(self, filename):
        """Bytes of *filename* received so far while it is being received,
        else None (for monitors)."""
        for transfer in self._transfers:
            if transfer.filename == filename:
                return transfer.received.total
        return None

    def check_request(self, package, filename, size, sha256):
        """Raise :class:`TransferRefused` unless the request is sane; return
        the canonical project name."""
        try:
            name = names.check_wheel_filename(filename)[0]
        except names.InvalidName as exc:
            raise TransferRefused(str(exc)) from None
        canonical = canonicalize_name(name)
        if not isinstance(package, str) or \
                canonicalize_name(package) != canonical:
            raise TransferRefused(
                f"{filename!r} is a wheel of {canonical!r}, "
                f"not of {package!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise TransferRefused(
                f"size {size!r} of {filename!r} is not a positive integer")
        if size > self.max_size:
            raise TransferRefused(
                f"{filename!r} is {size} bytes, more than the "
                f"{self.max_size} bytes allowed")
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise TransferRefused(
                f"sha256 {sha256!r} of {filename!r} is not 64 hex digits")
        return canonical

    async def purge_stale(self, max_age):
        """Delete partial files untouched for *max_age* seconds (senders
        that never came back); return the names deleted."""
        busy = {t.filename for t in self._transfers}
        return await self._in_thread(self._purge_stale, max_age, busy)

    # -- one file ----------------------------------------------------------

    async def _receive(self, call_remote, canonical, filename, size, sha256,
                       replace, publish=True):
        if not publish:
            staged = await self._on_disk(
                "check", filename, self._staged_copy, filename, size, sha256)
            if staged is not None:
                self.log.info("{filename} was received before",
                              filename=filename)
                return staged
        if not replace:
            published = await self._on_disk(
                "check", filename, self._published_copy, canonical,
                filename, size, sha256)
            if published is not None:
                self.log.info("{filename} is already published with the "
                              "same bytes", filename=filename)
                return published
        digest = None
        for attempt in range(1, self.attempts + 1):
            if self._abandoned:
                raise TransferInterrupted("the master is shutting down")
            transfer = await self._on_disk(
                "prepare", filename, self._open_partial, filename, size,
                sha256, attempt > 1)
            if transfer.received.total:
                self.log.info(
                    "resuming {filename}: {have} of {size} bytes kept",
                    filename=filename, size=size,
                    have=transfer.received.total)
            self._transfers.add(transfer)
            try:
                await self._fetch(transfer, call_remote)
                digest = await self._on_disk(
                    "hash", filename, _finish_hash, transfer)
                if digest == sha256:
                    if self._abandoned:
                        # complete and saved: the next receive publishes it
                        raise TransferInterrupted(
                            "the master is shutting down")
                    if publish:
                        path = await self._on_disk(
                            "publish", filename, self._publish, transfer,
                            canonical, replace)
                    else:
                        path = await self._on_disk(
                            "stage", filename, self._stage, transfer)
                    self.log.info(
                        "received {filename} ({size} bytes, {fetched} "
                        "fetched)", filename=filename, size=size,
                        fetched=transfer.fetched)
                    return path
                self.log.warn(
                    "{filename}: attempt {attempt} of {attempts} has sha256 "
                    "{digest}, expected {expected}", filename=filename,
                    attempt=attempt, attempts=self.attempts, digest=digest,
                    expected=sha256)
                await self._on_disk("discard", filename, _discard, transfer)
            finally:
                self._transfers.discard(transfer)
                transfer.close()
        raise TransferFailed(
            f"{filename}: sha256 mismatch after {self.attempts} attempts: "
            f"expected {sha256}, got {digest}")

    async def _fetch(self, transfer, call_remote):
        """Fetch what is missing and save the ranges; turn every way of
        stopping early into one of our exceptions."""
        transfer.pipeline = _Pipeline(self, transfer, call_remote)
        try:
            if self._abandoned:  # while the partial file was being opened
                raise _Abandoned()
            await transfer.pipeline.run()
        except BaseException as stopped:
            error, keep = self._explain(stopped, transfer)
            try:
                if keep:
                    await self._save(transfer)
                else:
                    await transfer.idle()
                    await self._in_thread(_discard, transfer)
            except Exception:
                self.log.failure("cannot tidy up after {filename}",
                                 filename=transfer.filename)
            if error is stopped:
                raise
            raise error from stopped
        finally:
            transfer.pipeline = None
        await self._save(transfer)
        if transfer.save_error is not None:
            await self._in_thread(_discard, transfer)
            raise TransferFailed(
                f"cannot save {transfer.ranges_path}: "
                f"{transfer.save_error.getErrorMessage()}")

    def _explain(self, exc, transfer):
        """The exception to raise for *exc*, and whether to keep state."""
        progress = (f"after {transfer.received.total} of {transfer.size} "
                    f"bytes of {transfer.filename}")
        if isinstance(exc, _Abandoned):
            return TransferInterrupted(
                f"the master is shutting down; stopped {progress}"), True
        if isinstance(exc, CancelledError):
            return exc, True
        if isinstance(exc, (ConnectionClosed, amp.ProtocolSwitched)):
            return TransferInterrupted(
                f"lost the connection to the sender {progress}"), True
        if isinstance(exc, _NoAnswer):
            return TransferInterrupted(
                f"the sender did not answer within {self.chunk_timeout} s; "
                f"stopped {progress}"), True
        if isinstance(exc, FileNotOffered):
            return TransferFailed(
                f"the sender does not offer {transfer.filename}: {exc}"), \
                False
        if isinstance(exc, BadRange):
            return TransferFailed(
                f"the sender refused a range of {transfer.filename}: {exc}"
                f" (is its file shorter than the declared "
                f"{transfer.size} bytes?)"), False
        if isinstance(exc, _SenderError):
            return TransferFailed(str(exc)), False
        if isinstance(exc, amp.RemoteAmpError):
            return TransferFailed(
                f"the sender failed to send {transfer.filename}: {exc}"), \
                False
        if isinstance(exc, OSError):
            return TransferFailed(
                f"cannot write {transfer.part_path}: {exc}"), False
        if isinstance(exc, Exception):
            return TransferFailed(
                f"receiving {transfer.filename} failed: {exc!r}"), False
        return exc, True

    # -- background jobs on a transfer's file -------------------------------

    def _background(self, transfer, on_done, function, *args):
        """Run *function* in the pool, then *on_done* with its result (or
        Failure) on the reactor; the file stays open until both finish."""
        transfer.job_started()
        running = deferToThreadPool(self.reactor, self._pool(), function,
                                    *args)
        running.addBoth(on_done)
        running.addErrback(lambda failure: self.log.failure(
            "handling a background job of {filename}", failure,
            filename=transfer.filename))
        running.addBoth(transfer.job_finished)

    def _save_if_due(self, transfer):
        if transfer.unsaved >= self.checkpoint_bytes and not transfer.saving:
            self._start_save(transfer)

    def _start_save(self, transfer):
        """Save the ranges received so far: sync the data they describe,
        then replace the ranges file."""
        transfer.saving = True
        transfer.unsaved = 0
        self._background(transfer, lambda result: _saved(transfer, result),
                         self._write_ranges, transfer.fd,
                         transfer.ranges_path, transfer.record())

    async def _save(self, transfer):
        """Save the ranges as they are once every background job is done."""
        await transfer.idle()
        if transfer.save_error is None:
            self._start_save(transfer)
            await transfer.idle()

    # -- blocking work, run in the thread pool ------------------------------

    def _write_ranges(self, fd, ranges_path, record):
        if self.durable:
            os.fdatasync(fd)
        temp_path = ranges_path.with_name(ranges_path.name + _TEMP_SUFFIX)
        with open(temp_path, "w", encoding="ascii") as stream:
            json.dump(record, stream)
            if self.durable:
                stream.flush()
                os.fsync(stream.fileno())
        os.replace(temp_path, ranges_path)

    def _open_partial(self, filename, size, sha256, start_over):
        """Open (or create) the partial file; return a :class:`_Transfer`."""
        self.output_path.mkdir(parents=True, exist_ok=True)
        try:
            self.incoming_path.mkdir(mode=0o700)
        except FileExistsError:
            pass
        if self.incoming_path.stat().st_dev != self.output_path.stat().st_dev:
            raise OSError(f"{self.incoming_path} is not on the filesystem "
                          f"of {self.output_path}")
        part_path = self.incoming_path / (filename + PART_SUFFIX)
        ranges_path = self.incoming_path / (filename + RANGES_SUFFIX)
        flags = os.O_RDWR | os.O_NOFOLLOW
        ranges = None if start_over else \
            _load_ranges(ranges_path, filename, size, sha256)
        if ranges is not None:
            try:
                fd = os.open(part_path, flags)
            except FileNotFoundError:
                pass
            else:
                if os.fstat(fd).st_size == size:
                    return _Transfer(filename, size, sha256, part_path,
                                     ranges_path, fd, ranges)
                os.close(fd)
        ranges_path.unlink(missing_ok=True)
        fd = os.open(part_path, flags | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            raise
        return _Transfer(filename, size, sha256, part_path, ranges_path, fd)

    def _publish(self, transfer, canonical, replace=False):
        os.fchmod(transfer.fd, 0o644)
        if self.durable:
            os.fsync(transfer.fd)
        simple = self.output_path / "simple"
        directory = simple / canonical
        for path in (simple, directory):
            try:
                path.mkdir(mode=0o755)
            except FileExistsError:
                pass
            else:
                path.chmod(0o755)  # whatever the umask
        final_path = directory / transfer.filename
        if replace:
            os.replace(transfer.part_path, final_path)
        else:
            try:
                # a link never replaces what is there
                os.link(transfer.part_path, final_path)
            except FileExistsError:
                try:
                    check_same_bytes(final_path, transfer.filename,
                                      transfer.size, transfer.sha256)
                finally:
                    _discard(transfer)
                return final_path
            transfer.part_path.unlink()
        if self.durable:
            _fsync_directory(directory)
        transfer.ranges_path.unlink(missing_ok=True)
        return final_path

    def staged_path(self, filename, sha256):
        """Where a verified *filename* with these bytes waits to be
        published."""
        return self.incoming_path / VERIFIED_DIRECTORY / sha256.lower() / \
            filename

    def _staged_copy(self, filename, size, sha256):
        path = self.staged_path(filename, sha256)
        try:
            if os.lstat(path).st_size == size:
                # wanted again: not stale, whatever its age
                os.utime(path, follow_symlinks=False)
                return path
        except FileNotFoundError:
            pass
        return None

    def _stage(self, transfer):
        """Move a verified transfer aside, named by its bytes, to wait for
        its build to be committed."""
        os.fchmod(transfer.fd, 0o644)
        if self.durable:
            os.fsync(transfer.fd)
        path = self.staged_path(transfer.filename, transfer.sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(transfer.part_path, path)
        if self.durable:
            _fsync_directory(path.parent)
        transfer.ranges_path.unlink(missing_ok=True)
        return path

    async def publish_staged(self, package, filename, size, sha256,
                             aliases=(), replace=False):
        """Publish a staged file (see :meth:`receive`) and its *aliases*
        (other names of the same bytes in the same directory) once its
        build is committed; returns the final path.  Idempotent: what is
        published already is left alone.  The database is the truth by
        now, so a file of that name with other bytes (an orphan no row
        ever pointed to, or a damaged copy) is replaced, with a warning."""
        canonical = canonicalize_name(package)
        replaced = await self._on_disk(
            "publish", filename, publish_staged_file, self.output_path,
            self.staged_path(filename, sha256), canonical, filename, size,
            sha256, tuple(aliases), self.durable)
        for name in replaced:
            if not replace:
                self.log.warn("{name} was published with bytes other than "
                              "the recorded ones; replaced", name=name)
        return self.output_path / "simple" / canonical / filename

    def staged_files(self):
        """Thread: (sha256, filename, path, mtime) of every staged file."""
        found = []
        try:
            directories = list(os.scandir(self.incoming_path /
                                          VERIFIED_DIRECTORY))
        except FileNotFoundError:
            return found
        for directory in directories:
            if not directory.is_dir(follow_symlinks=False) or \
                    not _SHA256.fullmatch(directory.name):
                continue
            for entry in os.scandir(directory.path):
                if entry.is_file(follow_symlinks=False):
                    found.append((directory.name, entry.name,
                                  Path(entry.path),
                                  entry.stat(follow_symlinks=False).st_mtime))
        return found

    def _published_copy(self, canonical, filename, size, sha256):
        """The published file of that name when it has these bytes; None
        when there is none; :class:`AlreadyPublished` otherwise."""
        path = self.output_path / "simple" / canonical / filename
        if not os.path.lexists(path):
            return None
        check_same_bytes(path, filename, size, sha256)
        return path

    def _purge_stale(self, max_age, busy):
        deleted = []
        limit = time.time() - max_age
        try:
            entries = list(os.scandir(self.incoming_path))
        except FileNotFoundError:
            return deleted
        for entry in entries:
            name = entry.name
            for suffix in (PART_SUFFIX, RANGES_SUFFIX,
                           RANGES_SUFFIX + _TEMP_SUFFIX):
                if name.endswith(suffix):
                    filename = name[:-len(suffix)]
                    break
            else:
                continue
            if filename in busy or entry.stat().st_mtime > limit:
                continue
            os.unlink(entry.path)
            deleted.append(name)
        return deleted

    # -- threads ------------------------------------------------------------

    def _pool(self):
        if self.threadpool is None:
            return self.reactor.getThreadPool()
        return self.threadpool

    async def _on_disk(self, what, filename, function, *args):
        """:meth:`_in_thread`, with the OS's complaints as TransferFailed."""
        try:
            return await self._in_thread(function, *args)
        except OSError as exc:
            raise TransferFailed(f"cannot {what} {filename}: {exc}") from exc

    async def _in_thread(self, function, *args):
        """Run *function* in the pool.  If we are cancelled meanwhile, wait
        for it to finish anyway: it may be using a file we would close."""
        running = deferToThreadPool(self.reactor, self._pool(), function,
                                    *args)
        waiter = Deferred()

        def relay(result):
            if waiter.called:
                return result
            waiter.callback(result)
            return None

        running.addBoth(relay)
        try:
            return await waiter
        except CancelledError:
            try:
                await running
            except Exception:
                pass
            raise


def _saved(transfer, result):
    transfer.saving = False
    if isinstance(result, Failure):
        transfer.save_error = result
        if transfer.pipeline is not None:
            transfer.pipeline.stop(result)


def _finish_hash(transfer):
    """The sha256 of the whole file, reading from disk what was not hashed
    as it was written."""
    stream_hash = transfer.stream_hash
    if stream_hash is None:
        hasher, position = hashlib.sha256(), 0
    else:
        hasher, position = stream_hash.hasher, stream_hash.position
    while position < transfer.size:
        block = os.pread(transfer.fd,
                         min(_HASH_BLOCK, transfer.size - position),
                         position)
        if not block:
            raise OSError(f"{transfer.part_path} is shorter than "
                          f"{transfer.size} bytes")
        hasher.update(block)
        position += len(block)
    return hasher.hexdigest()


def file_sha256(path):
    """The size and sha256 of the file at *path* (never following a
    symbolic link)."""
    hasher, size = hashlib.sha256(), 0
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        while True:
            block = os.read(fd, _HASH_BLOCK)
            if not block:
                return size, hasher.hexdigest()
            hasher.update(block)
            size += len(block)
    finally:
        os.close(fd)


def check_same_bytes(path, filename, size, sha256):
    """Raise :class:`AlreadyPublished` unless the file at *path* has
    *size* bytes with this *sha256*."""
    try:
        found_size = os.lstat(path).st_size
        same = found_size == size and \
            file_sha256(path) == (size, sha256.lower())
    except OSError as exc:  # a symbolic link, a directory...
        raise AlreadyPublished(
            f"{filename} is already published and cannot be read: "
            f"{exc}") from None
    if not same:
        raise AlreadyPublished(
            f"{filename} is already published with other bytes")


def publish_staged_file(output_path, staged, canonical, filename, size,
                        sha256, aliases=(), durable=True):
    """Thread: link *staged* (a verified file) to
    ``simple/<canonical>/<filename>`` and to each alias name beside it,
    then remove *staged*; the names whose other bytes were replaced."""
    directory = Path(output_path) / "simple" / canonical
    for path in (directory.parent, directory):
        try:
            path.mkdir(mode=0o755)
        except FileExistsError:
            pass
        else:
            path.chmod(0o755)  # whatever the umask
    final = directory / filename
    replaced = []
    if os.path.lexists(staged):
        source = staged
    elif os.path.lexists(final):
        source = final   # published already (by a sweep, or long ago)
    else:
        raise FileNotFoundError(f"{staged} is not there to publish")
    for name in (filename, *aliases):
        target = directory / name
        if target == source:
            continue
        try:
            os.link(source, target)   # never replaces
        except FileExistsError:
            if os.path.samefile(source, target):
                continue
            try:
                check_same_bytes(target, name, size, sha256)
                continue
            except AlreadyPublished:
                pass
            temporary = directory / f".{name}.link"
            temporary.unlink(missing_ok=True)
            os.link(source, temporary)
            os.replace(temporary, target)
            replaced.append(name)
    if durable:
        _fsync_directory(directory)
    if source == staged:
        staged.unlink()
        try:
            staged.parent.rmdir()
        except OSError:
            pass   # another file of the same bytes waits there
    return replaced


def _discard(transfer):
    """Delete a transfer's partial state (its file is closed separately)."""
    transfer.part_path.unlink(missing_ok=True)
    transfer.ranges_path.unlink(missing_ok=True)


def _load_ranges(ranges_path, filename, size, sha256):
    """The ranges saved for this very file, or None."""
    try:
        with open(ranges_path, encoding="ascii") as stream:
            record = json.load(stream)
        if record["filename"] != filename or record["size"] != size or \
                record["sha256"] != sha256:
            return None
        ranges = [(int(start), int(end)) for start, end in record["ranges"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if all(0 <= start < end <= size for start, end in ranges):
        return ranges
    return None


def _fsync_directory(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
