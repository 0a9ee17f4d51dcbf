"""PyPI's JSON API: what the journal does not say about a release.

The journal says that a file was added; the JSON API says when the release
was made, what Python it requires, why it was yanked, what the project is
about, and which files the release has now.  None of that is essential, so
callers treat every failure here as "not known yet".

Answers are cached.  Each carries the project's ``last_serial``: a cached
answer is good for any journal event up to that serial, which makes a
catch-up through old events cost one request per project (the project's
document lists every release), while a live event, newer than anything
cached, costs one small request for its release.

**Size.**  A project's document lists every file of every release; the
largest on PyPI run to tens of MB.  Documents over ``max_bytes`` (16 MiB
unless told) are refused with :class:`~piwtwist.pypi.http.TooLarge`, and
remembered, so that they are not fetched again: a release of such a
project is read from its own (small) document instead.  A document is
decoded and turned into records in the reactor's thread pool, and decoded
a member at a time (:func:`loads_in_steps`) because ``json.loads`` is one
call that holds the GIL throughout: 140 ms for 14.5 MiB, all of which the
reactor would wait.
"""

import json
import re
from collections import OrderedDict
from urllib.parse import quote
from datetime import datetime, timezone

import attrs
from packaging.utils import canonicalize_name
from twisted.internet import defer
from twisted.logger import Logger

from ..db.client import sanitize
from .http import Malformed, PoliteClient, TooLarge, in_thread
from .journal import FileKind, classify_file

PARSE_INLINE_BYTES = 256 * 1024

#: The largest document read; larger ones are done without (see above).
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024

#: How many refused URLs are remembered.
TOO_LARGE_MEMORY = 10_000

# The database's column sizes.
MAX_SUMMARY = 200
MAX_REQUIRES_PYTHON = 200
MAX_YANK_REASON = 500


@attrs.frozen
class PublishedFile:
    filename: str
    kind: FileKind
    uploaded: datetime | None


@attrs.frozen
class ReleaseDetails:
    """One release as the JSON API describes it now."""

    version: str
    files: tuple = ()
    requires_python: str = ""
    released: datetime | None = None
    yanked: bool = False
    yank_reason: str = ""
    summary: str = ""
    #: the project's last serial when PyPI answered: the answer is stale
    #: for journal events after it
    as_of: int = 0

    def kinds(self):
        return {f.kind for f in self.files}


@attrs.frozen(eq=False)
class ProjectDetails:
    name: str
    summary: str
    last_serial: int
    releases: dict  # version -> ReleaseDetails


_NOT_FOUND = object()


def _parse_time(value):
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment


def _short_text(value, limit):
    if not isinstance(value, str):
        return ""
    value = sanitize(" ".join(value.split()))
    return value if len(value) <= limit else value[:limit - 1] + "\u2026"


def _requires_python(value):
    if not isinstance(value, str):
        return ""
    value = sanitize(value.strip())
    # a cut specifier would mean something else: better none at all
    return value if len(value) <= MAX_REQUIRES_PYTHON else ""


def _files(entries, where):
    if not isinstance(entries, list):
        raise Malformed(f"{where}: the file list is a "
                        f"{type(entries).__name__}")
    files = []
    for entry in entries:
        if not isinstance(entry, dict) or \
                not isinstance(entry.get("filename"), str):
            raise Malformed(f"{where}: a file entry without a file name")
        python_version = entry.get("python_version")
        if entry.get("packagetype") == "sdist":
            python_version = "source"
        files.append((entry, PublishedFile(
            filename=entry["filename"],
            kind=classify_file(entry["filename"], python_version),
            uploaded=_parse_time(entry.get("upload_time_iso_8601"))
            or _parse_time(entry.get("upload_time")))))
    return files


def _release(version, entries, where, info=None, as_of=0):
    """A :class:`ReleaseDetails` from a release's file entries (and, for
    the release's own document, its ``info``)."""
    files = _files(entries, where)
    times = [f.uploaded for _, f in files if f.uploaded is not None]
    if info is not None:
        requires = _requires_python(info.get("requires_python"))
        yanked = bool(info.get("yanked"))
        reason = info.get("yanked_reason")
        summary = _short_text(info.get("summary"), MAX_SUMMARY)
    else:
        # the project's document has per-file values only; the sdist's
        # come first because they are what a build uses
        ordered = sorted(files, key=lambda ef: ef[1].kind is not
                         FileKind.SOURCE)
        requires = next((_requires_python(e.get("requires_python"))
                         for e, _ in ordered if e.get("requires_python")), "")
        yanked = any(bool(e.get("yanked")) for e, _ in files)
        reason = next((e.get("yanked_reason") for e, _ in files
                       if e.get("yanked_reason")), "")
        summary = ""
    return ReleaseDetails(
        version=version, files=tuple(f for _, f in files),
        requires_python=requires, released=min(times) if times else None,
        yanked=yanked, yank_reason=_short_text(reason, MAX_YANK_REASON),
        summary=summary, as_of=as_of)


def _document(data, where):
    if not isinstance(data, dict) or not isinstance(data.get("info"), dict):
        raise Malformed(f"{where}: no 'info' object")
    serial = data.get("last_serial", 0)
    if not isinstance(serial, int) or isinstance(serial, bool):
        raise Malformed(f"{where}: last_serial {serial!r} is not a number")
    return data["info"], serial


def parse_project(data, where="project JSON"):
    info, serial = _document(data, where)
    releases = data.get("releases", {})
    if not isinstance(releases, dict):
        raise Malformed(f"{where}: 'releases' is not an object")
    summary = _short_text(info.get("summary"), MAX_SUMMARY)
    parsed = {}
    for version, entries in releases.items():
        release = _release(version, entries, f"{where}, release {version}",
                           as_of=serial)
        parsed[version] = attrs.evolve(release, summary=summary)
    name = info.get("name")
    return ProjectDetails(name=name if isinstance(name, str) else "",
                          summary=summary, last_serial=serial,
                          releases=parsed)


def parse_release(data, version, where="release JSON"):
    info, serial = _document(data, where)
    return _release(version, data.get("urls", []), where, info,
                    as_of=serial), serial


_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


def loads_in_steps(body, depth=2):
    """``json.loads(body)``, but objects down to *depth* levels are decoded
    one member at a time, so that a thread running it lets go of the GIL
    between members (a project's document: one release at a time)."""
    text = body.decode(json.detect_encoding(body)) \
        if isinstance(body, (bytes, bytearray)) else body
    value, end = _value_in_steps(text, _SPACE.match(text, 0).end(), depth)
    end = _SPACE.match(text, end).end()
    if end != len(text):
        raise json.JSONDecodeError("extra data", text, end)
    return value


def _value_in_steps(text, index, depth):
    if depth <= 0 or not text.startswith("{", index):
        return _DECODER.raw_decode(text, index)
    members = {}
    index = _SPACE.match(text, index + 1).end()
    if text.startswith("}", index):
        return members, index + 1
    while True:
        if not text.startswith('"', index):
            raise json.JSONDecodeError("expected a member name", text, index)
        name, index = json.decoder.scanstring(text, index + 1)
        index = _SPACE.match(text, index).end()
        if not text.startswith(":", index):
            raise json.JSONDecodeError("expected ':'", text, index)
        index = _SPACE.match(text, index + 1).end()
        members[name], index = _value_in_steps(text, index, depth - 1)
        index = _SPACE.match(text, index).end()
        if text.startswith(",", index):
            index = _SPACE.match(text, index + 1).end()
        elif text.startswith("}", index):
            return members, index + 1
        else:
            raise json.JSONDecodeError("expected ',' or '}'", text, index)


def _decode(body, parse, where):
    """*parse* of the JSON in *body*, or the exception that says why not
    (returned, not raised, so that it crosses from the thread as a value).
    """
    try:
        data = loads_in_steps(body)
    except (ValueError, UnicodeDecodeError) as e:
        return Malformed(f"{where}: the answer is not JSON ({e})")
    try:
        return parse(data)
    except Malformed as e:
        return e


class PyPIJson:
    """``/pypi/<name>/json`` and ``/pypi/<name>/<version>/json``, cached.

    ``prefer_projects`` (set by the follower while it catches up) makes a
    cache miss for a release fetch the whole project's document instead.
    """

    log = Logger()

    def __init__(self, http, reactor, url="https://pypi.org/pypi",
                 timeout=20.0, cache_size=5_000, concurrency=4,
                 not_found_ttl=300.0, refetch_interval=5.0,
                 max_bytes=MAX_DOCUMENT_BYTES):
        self.url = url.rstrip("/")
        self.reactor = reactor
        self.client = PoliteClient(http, reactor, timeout=timeout,
                                   max_bytes=max_bytes)
        self.cache_size = cache_size
        self.not_found_ttl = not_found_ttl
        self.refetch_interval = refetch_interval
        self.prefer_projects = False
        #: whether /pypi/<name>/<version>/json works (it 404s behind some
        #: proxies); when it does not, project documents are used instead
        self.release_documents = True
        self._limit = defer.DeferredSemaphore(concurrency)
        self._projects = OrderedDict()  # package -> (doc, serial, fetched)
        self._releases = OrderedDict()  # (package, version) -> same
        self._in_flight = {}
        self._too_large = OrderedDict()  # url -> why it was refused
        self.requests = 0

    # cache -----------------------------------------------------------------

    def _cached(self, cache, key, serial, allow_stale=True):
        hit = cache.get(key)
        if hit is None:
            return None
        document, last_serial, fetched = hit
        age = self.reactor.seconds() - fetched
        if document is _NOT_FOUND:
            fresh = age < self.not_found_ttl
        else:
            # a stale answer is asked for again, but not more often than
            # refetch_interval: PyPI's CDN may simply not have caught up
            # (the caller sees how stale it is in ``as_of``)
            fresh = last_serial >= serial or (
                allow_stale and age < self.refetch_interval)
        if not fresh:
            return None
        cache.move_to_end(key)
        return hit

    def _store(self, cache, key, document, serial):
        cache[key] = (document, serial, self.reactor.seconds())
        cache.move_to_end(key)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)

    # queries ---------------------------------------------------------------

    async def project(self, name, serial=0, allow_stale=True):
        """The project's :class:`ProjectDetails` as of at least *serial*
        (or a recent older answer, when *allow_stale*), or None when PyPI
        does not know it."""
        package = canonicalize_name(name)
        hit = self._cached(self._projects, package, serial, allow_stale)
        if hit is None:
            await self._fetch_project(package)
            hit = self._projects[package]
        return None if hit[0] is _NOT_FOUND else hit[0]

    async def release(self, name, version, serial=0, allow_stale=True):
        """The release's :class:`ReleaseDetails` as of at least *serial*
        (or a recent older answer, when *allow_stale*), or None when PyPI
        does not know it (any more)."""
        package = canonicalize_name(name)
        hit = self._cached(self._projects, package, serial, allow_stale)
        if hit is not None and hit[0] is not _NOT_FOUND:
            return hit[0].releases.get(version)
        hit = self._cached(self._releases, (package, version), serial,
                           allow_stale)
        if hit is None:
            if self.prefer_projects or not self.release_documents:
                try:
                    project = await self.project(package, serial,
                                                 allow_stale)
                except TooLarge:
                    if not self.release_documents:
                        raise
                    # the release's own document is small
                else:
                    return None if project is None else \
                        project.releases.get(version)
            await self._fetch_release(package, version)
            hit = self._releases[(package, version)]
        if hit[0] is _NOT_FOUND:
            return await self._release_from_project(package, version, serial)
        return hit[0]

    async def _release_from_project(self, package, version, serial):
        """The project's document, for a release PyPI said it does not
        have: either the release is gone, or (as some mirrors and proxies
        do) release documents are not served at all."""
        project = await self.project(package, serial, allow_stale=False)
        if project is None:
            return None
        release = project.releases.get(version)
        if release is not None and self.release_documents:
            self.release_documents = False
            self.log.info("{url} does not serve release documents; asking "
                          "for whole projects instead", url=self.url)
        return release

    async def _fetch_project(self, package):
        where = f"the JSON of {package}"
        project = await self._get(
            f"{self.url}/{quote(package)}/json",
            lambda data: parse_project(data, where))
        if project is None:
            self._store(self._projects, package, _NOT_FOUND, 0)
            return
        self._store(self._projects, package, project, project.last_serial)

    async def _fetch_release(self, package, version):
        where = f"the JSON of {package} {version}"
        found = await self._get(
            f"{self.url}/{quote(package)}/{quote(version, safe='')}/json",
            lambda data: parse_release(data, version, where))
        if found is None:
            self._store(self._releases, (package, version), _NOT_FOUND, 0)
            return
        release, serial = found
        self._store(self._releases, (package, version), release, serial)

    async def _get(self, url, parse):
        """*parse* of the decoded JSON at *url*, or None for a 404; one
        request per URL at a time however many callers want it.  A URL
        whose answer was too large raises :class:`TooLarge` again without
        asking."""
        refused = self._too_large.get(url)
        if refused is not None:
            self._too_large.move_to_end(url)
            raise TooLarge(refused)
        if url in self._in_flight:
            waiter = defer.Deferred()
            self._in_flight[url].append(waiter)
            return await waiter
        self._in_flight[url] = []
        try:
            result = await self._limit.run(
                lambda: defer.Deferred.fromCoroutine(
                    self._request(url, parse)))
        except BaseException as e:
            if isinstance(e, TooLarge):
                self.log.error(
                    "PyPI's JSON document {url} is larger than {limit} "
                    "bytes: not read, and not asked for again; its "
                    "releases are read from their own documents and the "
                    "journal", url=url, limit=self.client.max_bytes)
                self._too_large[url] = str(e)
                while len(self._too_large) > TOO_LARGE_MEMORY:
                    self._too_large.popitem(last=False)
            for waiter in self._in_flight.pop(url):
                if not waiter.called:  # a cancelled waiter has fired
                    waiter.errback(e)
            raise
        for waiter in self._in_flight.pop(url):
            if not waiter.called:
                waiter.callback(result)
        return result

    async def _request(self, url, parse):
        self.requests += 1
        reply = await self.client.request(
            "GET", url, headers={"Accept": ["application/json"]},
            accept_statuses=(404, 410))
        if reply.status in (404, 410):
            return None
        # decoded and made into records where the reactor does not wait
        if len(reply.body) > PARSE_INLINE_BYTES:
            parsed = await in_thread(self.reactor, _decode, reply.body,
                                     parse, url)
        else:
            parsed = _decode(reply.body, parse, url)
        if isinstance(parsed, Exception):
            raise parsed
        return parsed
