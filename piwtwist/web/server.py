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

Downloads, searches and page views are classified by the same rules as
``piw-logger``'s (:mod:`piwtwist.logger.classify`) and handed to the
master's hit recorder, which writes them in batches.  Recording is best
effort: it never affects the response, and the recorder bounds what waits.
"""

import os
import time
from pathlib import Path

from twisted.logger import Logger
from twisted.web import resource, server, static
from twisted.web.util import redirectTo

from ..logger.classify import classify
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

    def __init__(self, output_path, hits=None):
        super().__init__()
        self.output = Path(output_path)
        self.hits = hits

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
        self._record(request)
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

    def _record(self, request):
        """Hand the hit this request makes, if any, to the recorder; served
        files only, so the status is 200."""
        if self.hits is None or request.method != b"GET":
            return
        try:
            hit = classify(
                "GET", request.uri.decode("latin-1"), 200,
                request.getHeader("user-agent"),
                getattr(request.getClientAddress(), "host", ""), time.time())
            if hit is not None:
                self.hits.record(hit)
        except Exception:
            self.log.failure("could not record a hit")


def site(output_path, hits=None):
    """A twisted.web Site serving the output tree; *hits* (the master's
    :class:`~piwtwist.master.hit_recorder.HitRecorder`) records what it
    serves."""
    factory = server.Site(OutputTree(output_path, hits=hits))
    factory.displayTracebacks = False
    return factory
