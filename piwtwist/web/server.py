"""The master's own web server for the output tree (``--http-endpoint``).

For small installations and the demo; a big one puts Apache or nginx in
front of the same tree (``docs/apache.conf``, ``docs/nginx.conf``).  It
behaves like those configurations:

* PEP 691 content negotiation under ``/simple/``: ``Accept:
  application/vnd.pypi.simple.v1+json`` (or ``?format=``) gets
  ``index.json``, anything else ``index.html``;
* build logs (``*.txt.gz``) are sent as they are, with ``Content-Encoding:
  gzip`` and ``Content-Type: text/plain``;
* nothing whose name starts with a dot is served (``/.incoming/`` holds
  partial transfers), nor anything outside the tree; no directory listings;
  ``404.html`` for what is not there.

Downloads, index and project page views are recorded straight through the
database's hit loggers.  Recording is best effort: a failure is logged as a
warning and never affects the response, and at most ``max_pending_hits``
writes wait at once (beyond that hits are dropped, so a database outage
cannot pile up memory).
"""

import os
from datetime import datetime, timezone
from pathlib import Path

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server, static
from twisted.web.util import redirectTo

from ..db.records import DownloadHit, PageHit, SearchHit
from .hits import client_address, client_details, is_bot
from .render import HTML_CONTENT_TYPE, JSON_CONTENT_TYPE

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".xml": "application/xml",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".whl": "application/zip",
    ".metadata": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
}


def negotiate(accept, query_format=None):
    """The simple API format a client wants: ``"json"`` or ``"html"``
    (PEP 691; quality values respected, HTML when in doubt)."""
    if query_format:
        return "json" if query_format == JSON_CONTENT_TYPE else "html"
    best, best_quality = "html", -1.0
    for order, item in enumerate((accept or "").split(",")):
        media, *params = [p.strip() for p in item.split(";")]
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        kind = {JSON_CONTENT_TYPE: "json", HTML_CONTENT_TYPE: "html",
                "text/html": "html", "*/*": "html",
                "application/vnd.pypi.simple.latest+json": "json",
                "application/vnd.pypi.simple.latest+html": "html",
                }.get(media.lower())
        if kind is not None and quality > best_quality:
            best, best_quality = kind, quality
    return best


class OutputTree(resource.Resource):
    """The whole output tree as one leaf resource."""

    isLeaf = True
    log = Logger()

    def __init__(self, output_path, db=None, clock=None,
                 max_pending_hits=100):
        super().__init__()
        self.output = Path(output_path)
        self.db = db
        self.clock = clock
        self.max_pending_hits = max_pending_hits
        self._pending_hits = 0

    def render_HEAD(self, request):
        return self.render_GET(request)

    def render_GET(self, request):
        segments = [s.decode("utf-8", "replace") for s in request.postpath]
        if any(s.startswith(".") or "/" in s or "\0" in s
               for s in segments if s):
            return self._not_found(request)
        path = self.output.joinpath(*[s for s in segments if s])
        real = os.path.realpath(path)
        root = os.path.realpath(self.output)
        if real != root and not real.startswith(root + os.sep):
            return self._not_found(request)
        top = segments[0] if segments else ""
        media_type = None
        if os.path.isdir(real):
            if not request.path.endswith(b"/"):
                return redirectTo(request.path + b"/" + (
                    b"?" + request.uri.split(b"?", 1)[1]
                    if b"?" in request.uri else b""), request)
            if top == "simple":
                # an unencoded "+" arrives as a space
                fmt = request.args.get(b"format", [b""])[0].decode(
                    "ascii", "replace").replace(" ", "+")
                wanted = negotiate(
                    (request.getHeader("accept") or ""), fmt or None)
                name = "index.json" if wanted == "json" else "index.html"
                media_type = JSON_CONTENT_TYPE if wanted == "json" else \
                    "text/html; charset=utf-8"
                request.setHeader("vary", "Accept")
            elif top == "project" and segments[-2:] == ["json", ""]:
                name = "index.json"
            else:
                name = "index.html"
            path = Path(real) / name
            if not path.is_file():
                return self._not_found(request)
        elif not os.path.isfile(real):
            return self._not_found(request)
        self._record(request, segments)
        return self._send(request, path, media_type)

    def _send(self, request, path, media_type=None):
        served = static.File(str(path))
        name = path.name
        if name.endswith(".gz"):
            served.encoding = "gzip"
            name = name[:-3]
        else:
            served.encoding = None
        served.type = media_type or CONTENT_TYPES.get(
            os.path.splitext(name)[1], "application/octet-stream")
        return served.render(request)

    def _not_found(self, request):
        request.setResponseCode(404)
        request.setHeader("content-type", "text/html; charset=utf-8")
        try:
            return (self.output / "404.html").read_bytes()
        except OSError:
            return b"<!DOCTYPE html><title>Not found</title><h1>Not found</h1>"

    # hits -------------------------------------------------------------

    def _record(self, request, segments):
        if self.db is None or request.method != b"GET":
            return
        host = client_address(getattr(request.getClientAddress(), "host", ""))
        if host is None:
            return
        agent = (request.getHeader("user-agent") or "")[:2000]
        now = datetime.now(timezone.utc)
        parts = [s for s in segments if s]
        hit = None
        if len(parts) == 3 and parts[0] == "simple" and \
                parts[2].endswith(".whl"):
            hit = ("log_download", DownloadHit(
                filename=parts[2], host=host, timestamp=now,
                client=client_details(agent)))
        elif len(parts) == 2 and parts[0] == "simple":
            hit = ("log_search", SearchHit(
                package=parts[1], host=host, timestamp=now,
                client=client_details(agent)))
        elif len(parts) == 2 and parts[0] == "project":
            hit = ("log_project", PageHit(name=parts[1], host=host,
                                          timestamp=now, user_agent=agent,
                                          bot=is_bot(agent)))
        elif len(parts) == 3 and parts[0] == "project" and parts[2] == "json":
            hit = ("log_json", PageHit(name=parts[1], host=host,
                                       timestamp=now, user_agent=agent,
                                       bot=is_bot(agent)))
        elif len(parts) <= 1 and (not parts or parts[0].endswith(".html")):
            page = parts[0] if parts else "index.html"
            hit = ("log_page", PageHit(name=page, host=host, timestamp=now,
                                       user_agent=agent, bot=is_bot(agent)))
        if hit is None:
            return
        if self._pending_hits >= self.max_pending_hits:
            return
        self._pending_hits += 1
        try:
            d = defer.ensureDeferred(getattr(self.db, hit[0])(hit[1]))
        except Exception as e:
            d = defer.fail(e)
        d.addErrback(self._hit_failed, hit[0])
        d.addBoth(self._hit_done)

    def _hit_failed(self, failure, kind):
        self.log.warn("could not record a hit ({kind}): {why}", kind=kind,
                      why=failure.getErrorMessage())

    def _hit_done(self, _):
        self._pending_hits -= 1


def site(output_path, db=None, clock=None):
    """A twisted.web Site serving the output tree."""
    factory = server.Site(OutputTree(output_path, db=db, clock=clock))
    factory.displayTracebacks = False
    return factory
