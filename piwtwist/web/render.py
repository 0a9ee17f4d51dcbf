"""Turning facts into the bytes of the output tree.

HTML comes from the genshi templates in ``templates/``, except a project's
simple index (:func:`simple_project_html`): a list of links a quarter of
whose cost genshi was, made by a string join; JSON is built as plain
dictionaries.  Rendering a template is a stream of small chunks, which
:func:`render_cooperatively` feeds through a
:class:`~twisted.internet.task.Cooperator` so that even a project with
thousands of releases never holds the reactor for long.

The four PyPI-sized lists (the root of the simple index, its JSON,
``packages.json`` and the sitemap) are built by plain string joins in a
thread instead: a template engine would spend tens of seconds of the
reactor's time on 700,000 links.  :func:`simple_root_links` makes the links,
the ``simple_root.html`` template the page around them.  The page writer
uses the ``*_pieces`` forms: one piece per page of names (or chunk of
PostgreSQL's ``packages.json`` text), so that no single step in the thread
holds the GIL over the whole list, and :func:`splice` puts the pieces where
the template left :data:`LIST_PLACEHOLDER`.
"""

import html
import json
from datetime import datetime, timezone

from genshi.core import Markup, escape
from genshi.template import TemplateLoader

from ..failures import CLASSES
from ..resources import templates_dir
from . import charts
from .model import (
    FAILURE, PENDING, SKIPPED, SUCCESS, YANKED, apt_install_lines, utc_iso)

#: The PEP 629 / PEP 691 version of the simple API we speak (1.1: PEP 700).
API_VERSION = "1.1"
JSON_CONTENT_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_CONTENT_TYPE = "application/vnd.pypi.simple.v1+html"
#: Entries a sitemap file may hold (sitemaps.org).
SITEMAP_LIMIT = 50_000
#: Chunks of serialised output per step of the cooperator.
_CHUNKS_PER_STEP = 64

STATUS_SYMBOLS = {SUCCESS: "\N{CHECK MARK}", FAILURE: "\N{BALLOT X}",
                  PENDING: "\N{WHITE CIRCLE}", SKIPPED: "\N{EM DASH}",
                  YANKED: "\N{WARNING SIGN}"}


def dumps(value):
    """Compact JSON bytes."""
    return json.dumps(value, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def serialize(stream):
    """The UTF-8 bytes of the genshi *stream* at once (in a worker process
    or a thread; the reactor uses :func:`render_cooperatively`)."""
    return "".join(stream.serialize("html", doctype="html5",
                                    strip_whitespace=False)).encode("utf-8")


def render_cooperatively(cooperator, stream):
    """A Deferred firing with the UTF-8 bytes of the genshi *stream*,
    serialised a few chunks per cooperator step."""
    chunks = []

    def steps():
        # whitespace stripping would double the cost of a page
        chunks_out = stream.serialize("html", doctype="html5",
                                      strip_whitespace=False)
        for n, chunk in enumerate(chunks_out, 1):
            chunks.append(chunk)
            if n % _CHUNKS_PER_STEP == 0:
                yield None

    d = cooperator.coiterate(steps())
    d.addCallback(lambda _: "".join(chunks).encode("utf-8"))
    return d


def _size(count):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1024 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else \
                f"{count:.1f} {unit}"
        count /= 1024


def _number(value):
    return "\N{EM DASH}" if value is None else f"{value:,}"


def _date(moment):
    if moment is None:
        return ""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d")


class Renderer:
    """The templates, loaded once, and the data each page needs."""

    def __init__(self, site_name="piwtwist", site_url="http://localhost/",
                 directory=None):
        self.site_name = site_name
        self.site_url = site_url.rstrip("/") + "/"
        self.directory = directory
        self.loader = TemplateLoader(str(directory or templates_dir()),
                                     auto_reload=False)

    def _stream(self, template, **data):
        context = dict(site_name=self.site_name, site_url=self.site_url,
                       size=_size, number=_number, date=_date,
                       symbols=STATUS_SYMBOLS, Markup=Markup, **data)
        return self.loader.load(template).generate(**context)

    # the simple index -------------------------------------------------

    def simple_root(self, links):
        """*links* is the Markup of :func:`simple_root_links`."""
        return self._stream("simple_root.html", links=Markup(links),
                            api_version=API_VERSION)

    # project pages ----------------------------------------------------

    def project_page(self, project):
        return self._stream("project.html", project=project,
                            apt_lines=apt_install_lines(project),
                            newest_stable=project.install_version,
                            release_rows=release_rows(project),
                            file_rows=file_rows(project))

    # site pages -------------------------------------------------------

    def home(self, figures):
        return self._stream("index.html", figures=figures)

    def packages_page(self, count):
        return self._stream("packages.html", count=count)

    def stats_page(self, figures, series):
        return self._stream("stats.html", figures=figures,
                            charts=charts.site_charts(series),
                            days=series.days,
                            downloads=series.download_tables,
                            failure_classes=series.failures_by_class,
                            explanations=CLASSES)

    def faq(self):
        return self._stream("faq.html")

    def not_found(self):
        return self._stream("404.html")


# the project page's two long tables ----------------------------------------

#: The title of a rescued build's remark.
RESCUED_TITLE = "the first attempt failed; a retry with this remedy built it"


def _text(value):
    return escape(value, quotes=False)


def release_rows(project):
    """The rows of the releases table (a release by the ABIs): the bulk of
    a big project's page, and the bulk of genshi's time on it, made by a
    string join at a fifth of the cost.  ``tests/data/project_page.html``
    (the template that made them before) holds them to the same content.
    """
    parts = []
    for release in project.releases:
        classes = " ".join(name for name, present in (
            ("yanked", release.yanked), ("prerelease", release.prerelease),
            ("skipped", release.skip)) if present)
        parts.append(f'<tr class="{escape(classes)}">\n' if classes
                     else "<tr>\n")
        parts.append(f'<td class="version">{_text(release.version)}')
        if release.yanked:
            parts.append(f'\n <span class="tag yanked" title="'
                         f'{escape(release.yank_reason or "yanked")}">'
                         f'yanked</span>')
        if release.prerelease:
            parts.append('\n <span class="tag pre">pre-release</span>')
        parts.append(f"</td>\n<td>{_text(_date(release.released))}</td>\n")
        for abi in project.abis:
            cell = release.cells[abi]
            title = cell.status + (f": {cell.reason}" if cell.reason else "")
            label = (f'{STATUS_SYMBOLS[cell.status]}<span class="label"> '
                     f'{_text(cell.status)}</span>')
            parts.append(f'<td class="status {escape(cell.status)}" '
                         f'title="{escape(title)}">\n')
            parts.append(f'<a href="{escape(cell.log_url)}">{label}</a>\n'
                         if cell.log_url else f"{label}\n")
            if cell.reason and cell.status != SUCCESS:
                parts.append(f'<span class="reason">{_text(cell.reason)}'
                             f'</span>\n')
            if cell.failure_class:
                parts.append(f'<span class="failure-class" title="'
                             f'{escape(cell.explanation)}">'
                             f'{_text(cell.failure_class)}</span>\n')
            if cell.failure_hint:
                parts.append(f'<span class="hint">'
                             f'{_text(cell.failure_hint)}</span>\n')
            if cell.rescued:
                parts.append(f'<span class="rescued" title="{RESCUED_TITLE}"'
                             f'>rescued with {_text(cell.rescued)}</span>\n')
            parts.append("</td>\n")
        parts.append(f'<td class="count">{len(release.files)}</td>\n</tr>\n')
    return Markup("".join(parts))


def file_rows(project):
    """The rows of the files table, newest release first: see
    :func:`release_rows`."""
    parts = []
    package = escape(project.package)
    for release in project.releases:
        for f in release.files:
            dependencies = ", ".join(
                str(d) for d in f.apt_dependencies + f.pip_dependencies)
            parts.append(
                ('<tr class="yanked">\n' if f.yanked else "<tr>\n") +
                f'<td><a href="/simple/{package}/{escape(f.filename)}">'
                f'{_text(f.filename)}</a></td>\n'
                f'<td class="size">{_text(_size(f.size))}</td>\n'
                f'<td class="hash"><code title="{escape(f.sha256)}">'
                f'{_text(f.sha256[:16])}\u2026</code></td>\n'
                f'<td class="deps">{_text(dependencies)}</td>\n</tr>\n')
    return Markup("".join(parts))


# JSON, and the PyPI-sized lists (run these in a thread) ---------------------

def _attribute(name, value):
    return f' {name}="{escape(value)}"' if value is not None else ""


def simple_project_html(project):
    """PEP 503 with PEP 592, 658 and 714's attributes: the same bytes the
    genshi template ``tests/data/simple_project.html`` gives (a test holds
    them together), at a fifth of its cost."""
    name = escape(project.package, quotes=False)
    parts = ['<!DOCTYPE html>\n<html>\n<head>\n'
             f'<meta name="pypi:repository-version" content="{API_VERSION}">'
             f'\n<title>Links for {name}</title>\n</head>\n<body>\n'
             f'<h1>Links for {name}</h1>\n']
    for f in project.files:
        metadata = f"sha256={f.metadata_sha256}" if f.metadata_sha256 \
            else None
        yanked = (f.yank_reason or "") if f.yanked else None
        parts.append(
            f'<a href="{escape(f.filename)}#sha256={escape(f.sha256)}"'
            f'{_attribute("data-requires-python", f.requires_python or None)}'
            f'{_attribute("data-yanked", yanked)}'
            f'{_attribute("data-core-metadata", metadata)}'
            f'{_attribute("data-dist-info-metadata", metadata)}'
            f'>{escape(f.filename, quotes=False)}</a><br>\n')
    parts.append("\n</body>\n</html>")
    return "".join(parts).encode("utf-8")


def simple_project_json(project):
    """PEP 691 with PEP 700: versions, size, upload-time."""
    files = []
    for f in project.files:
        entry = {
            "filename": f.filename,
            "url": f.filename,
            "hashes": {"sha256": f.sha256},
            "size": f.size,
            "yanked": (f.yank_reason or True) if f.yanked else False,
        }
        if f.requires_python:
            entry["requires-python"] = f.requires_python
        if f.upload_time:
            entry["upload-time"] = f.upload_time
        metadata = {"sha256": f.metadata_sha256} if f.metadata_sha256 \
            else False
        # PEP 714's name only: pip 22.3 to 23.1 (Debian 12's among them)
        # fail outright on the old "dist-info-metadata" key in JSON
        entry["core-metadata"] = metadata
        files.append(entry)
    return dumps({"meta": {"api-version": API_VERSION},
                  "name": project.package,
                  "versions": sorted(set(project.versions), key=_version_key),
                  "files": files})


def _version_key(version):
    from packaging.version import InvalidVersion, Version
    try:
        return (0, Version(version), "")
    except InvalidVersion:
        return (1, None, version)


def _build_json(cell):
    """One cell of the project JSON: a failure says its class and hint, a
    rescued build its remedy."""
    facts = {"status": cell.status, "build_id": cell.build_id,
             "log_url": cell.log_url, "reason": cell.reason}
    if cell.status == "failure":
        facts["failure_class"] = cell.failure_class
        facts["failure_hint"] = cell.failure_hint
    if cell.rescued:
        facts["rescued"] = cell.rescued
    return facts


def project_json(project):
    """``project/<package>/json/index.json``: the project page's facts."""
    releases = {}
    for release in project.releases:
        releases[release.version] = {
            "released": utc_iso(release.released),
            "prerelease": release.prerelease,
            "yanked": release.yanked,
            "yank_reason": release.yank_reason,
            "skip_reason": release.skip,
            "requires_python": release.requires_python,
            "builds": {
                abi: _build_json(cell) for abi, cell in release.cells.items()
            },
            "files": {
                f.filename: {
                    "url": f"/simple/{project.package}/{f.filename}",
                    "filesize": f.size, "filehash": f.sha256,
                    "builder_abi": f.builder_abi, "file_abi_tag": f.abi_tag,
                    "platform": f.platform_tag,
                    "requires_python": f.requires_python,
                    "build_id": f.build_id, "upload_time": f.upload_time,
                    "apt_dependencies": list(f.apt_dependencies),
                    "pip_dependencies": list(f.pip_dependencies),
                    "unresolved_dependencies":
                        list(f.unresolved_dependencies),
                }
                for f in release.files
            },
        }
    return dumps({
        "package": project.package,
        "description": project.description,
        "skip_reason": project.skip,
        "aliases": list(project.aliases),
        "project_url": f"/project/{project.package}/",
        "simple_url": f"/simple/{project.package}/",
        "downloads": {"last_30_days": project.downloads_recent,
                      "all_time": project.downloads_all},
        "abis": list(project.abis),
        "install": {
            "version": project.install_version,
            "pip": f"pip3 install {project.package}",
            "apt": {abi: list(names)
                    for abi, names in project.apt_install.items()},
            "pip_dependencies": list(project.pip_dependencies),
            "unresolved_dependencies": list(project.unresolved_dependencies),
        },
        "releases": releases,
    })


def simple_root_links(packages):
    return "\n".join(
        f'<a href="{html.escape(p)}/">{html.escape(p)}</a><br>'
        for p in packages)


def simple_root_json(packages):
    return dumps({"meta": {"api-version": API_VERSION},
                  "projects": [{"name": p} for p in packages]})


def packages_json(entries):
    """The search index: ``[package, description, downloads in the last
    30 days, downloads all time]``, most downloaded first."""
    return dumps([[e.package, e.description, e.downloads_recent,
                   e.downloads_all] for e in entries])


def simple_root_link_pieces(pages):
    """:func:`simple_root_links` of the names in *pages* (lists of names,
    in order) as UTF-8 pieces, one a page: no single step works on the
    whole list, so the thread doing it lets the reactor in between."""
    pieces = []
    for page in pages:
        text = simple_root_links(page)
        pieces.append(("\n" + text if pieces else text).encode("utf-8"))
    return pieces


def simple_root_json_pieces(pages):
    """:func:`simple_root_json` of the names in *pages*, in pieces (see
    :func:`simple_root_link_pieces`)."""
    pieces = [dumps({"meta": {"api-version": API_VERSION}})[:-1]
              + b',"projects":[']
    for page in pages:
        entries = dumps([{"name": p} for p in page])[1:-1]
        if entries:
            pieces.append(entries if len(pieces) == 1 else b"," + entries)
    pieces.append(b"]}")
    return pieces


def packages_json_pieces(chunks):
    """``packages.json`` from the text PostgreSQL made of it
    (``get_search_index_chunks``: comma-separated rows), in pieces."""
    pieces = [b"["]
    for text in chunks:
        if text:
            data = text.encode("utf-8")
            pieces.append(data if len(pieces) == 1 else b"," + data)
    pieces.append(b"]")
    return pieces


#: Stands for a PyPI-sized list while the page around it is rendered; the
#: list's pieces take its place in a thread (:func:`splice`), so neither
#: the template engine nor the reactor ever handles the list.
LIST_PLACEHOLDER = "<!--piwtwist:list-->"


def splice(page, pieces, placeholder=LIST_PLACEHOLDER):
    """*page* (bytes) with *pieces* in place of *placeholder*: the pieces
    of the whole file, to be written one after another."""
    head, found, tail = page.partition(placeholder.encode("utf-8"))
    if not found:
        raise ValueError(f"the page has no {placeholder} to fill in")
    return [head, *pieces, tail]


SITE_PAGES = ("", "packages.html", "stats.html", "faq.html")


def sitemaps(site_url, packages, now=None):
    """``{file name: bytes}``: ``sitemap.xml``, and when there are more
    packages than one sitemap may list, ``sitemap.xml`` becomes an index of
    ``sitemap-N.xml`` files."""
    now = now or datetime.now(timezone.utc)
    stamp = now.strftime("%Y-%m-%d")
    urls = [site_url + page for page in SITE_PAGES] + [
        f"{site_url}project/{p}/" for p in packages]
    parts = [urls[i:i + SITEMAP_LIMIT]
             for i in range(0, len(urls), SITEMAP_LIMIT)] or [[]]
    header = '<?xml version="1.0" encoding="UTF-8"?>\n'
    namespace = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'

    def urlset(part):
        body = "".join(f"<url><loc>{html.escape(u)}</loc>"
                       f"<lastmod>{stamp}</lastmod></url>\n" for u in part)
        return (f"{header}<urlset {namespace}>\n{body}</urlset>\n").encode()

    if len(parts) == 1:
        return {"sitemap.xml": urlset(parts[0])}
    files = {f"sitemap-{n}.xml": urlset(part)
             for n, part in enumerate(parts, 1)}
    index = "".join(f"<sitemap><loc>{html.escape(site_url + name)}</loc>"
                    f"<lastmod>{stamp}</lastmod></sitemap>\n"
                    for name in files)
    files["sitemap.xml"] = (f"{header}<sitemapindex {namespace}>\n{index}"
                            f"</sitemapindex>\n").encode()
    return files
