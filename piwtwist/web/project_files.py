"""A project's files in the output tree, made from ``get_project_page``'s
row: plain functions that never touch the reactor.

The page writer runs them in the thread pool, or hands a whole project to
a render worker process (:func:`write_project`): decoding the row,
publishing wheels' metadata, the JSON, the pages and their writes then all
happen outside the master, whose one core (and GIL) was the limit of a
full rewrite.  The master fetches the build logs the tree lacks
(:func:`missing_logs` says which) and hands them over with the row; they
are written before the pages that link to them.
"""

import gzip

import attrs
from packaging.utils import canonicalize_name

from . import layout, render
from .metadata import publish_core_metadata
from .model import project_facts


@attrs.frozen
class Prepared:
    """A project's facts and the files that need no template."""

    project: object
    #: warnings for the log (impossible file names, unreadable wheels)
    problems: tuple
    #: whether its simple page was there before this write
    indexed: bool
    project_json: bytes
    simple_html: bytes | None
    simple_json: bytes | None


@attrs.frozen
class Written:
    """What writing a project's files found and did."""

    problems: tuple
    indexed: bool
    pages: int


def missing_logs(output, row):
    """The build ids of *row* whose logs are not in the tree yet."""
    return [build_id for build_id in row.build_ids()
            if not layout.log_path(output, build_id).exists()]


def write_logs(output, logs):
    """Compress and write *logs* (build id -> text)."""
    for build_id, text in logs.items():
        layout.write_atomically(
            layout.log_path(output, build_id),
            gzip.compress(text.encode("utf-8", "replace"),
                          compresslevel=6, mtime=0))


def prepare(output, package, both, row, build_abis, preinstalled):
    """Decode the database's answer, publish wheels' metadata, work out the
    facts, the JSON and (when *both*) the simple page."""
    facts = row.decode()
    facts.update(build_abis=build_abis, preinstalled=preinstalled)
    directory = layout.simple_dir(output, package)
    problems = [f"left out a file with an impossible name: "
                f"{f.filename!r}" for f in facts["files"]
                if not layout.is_safe_name(f.filename)]
    facts["files"] = [f for f in facts["files"]
                      if layout.is_safe_name(f.filename)]
    hashes, unreadable = publish_core_metadata(
        directory, [f.filename for f in facts["files"]])
    problems += unreadable
    project = project_facts(package, metadata_hashes=hashes, **facts)
    return Prepared(
        project=project, problems=tuple(problems),
        indexed=(directory / "index.html").exists(),
        project_json=render.project_json(project),
        simple_html=render.simple_project_html(project) if both else None,
        simple_json=render.simple_project_json(project) if both else None)


def write_pages(output, package, prepared, project_page, logs):
    """Write the project's missing build *logs* (build id -> text), then
    its pages (its simple pages when prepared), which link to them, and
    its aliases' links; the number of pages written."""
    write_logs(output, logs)
    project_dir = layout.project_dir(output, package)
    pages = {project_dir / "index.html": project_page,
             project_dir / "json" / "index.json": prepared.project_json}
    if prepared.simple_html is not None:
        directory = layout.simple_dir(output, package)
        pages[directory / "index.html"] = prepared.simple_html
        pages[directory / "index.json"] = prepared.simple_json
    for path, data in pages.items():
        layout.write_atomically(path, data)
    for alias in prepared.project.aliases:
        if alias != package and layout.is_safe_name(alias) and \
                canonicalize_name(alias) == package:
            layout.link_atomically(layout.project_dir(output, alias),
                                   package)
    return len(pages)


def write_project(renderer, output, package, both, row, build_abis,
                  preinstalled, logs):
    """Everything of a project at once (a render worker's job):
    :func:`prepare`, the project page by *renderer*, the writes."""
    prepared = prepare(output, package, both, row, build_abis, preinstalled)
    page = render.serialize(renderer.project_page(prepared.project))
    count = write_pages(output, package, prepared, page, logs)
    return Written(problems=prepared.problems, indexed=prepared.indexed,
                   pages=count)
