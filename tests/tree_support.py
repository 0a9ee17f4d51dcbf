"""The crash-consistency invariant as a test helper (docs/crash-consistency.md)
and a stand-in page writer for tests of the tree effects.

``check_invariant(output, database)`` compares an output tree with a
database (a :class:`tests.conftest.TestDatabase`, or a superuser DSN) and
returns the disagreements, each one sentence; an empty list means they
agree.  Call it once the master is quiet (its page writer idle): a page
that is still to be rewritten counts as a disagreement.
"""

import hashlib
import json
import os
from pathlib import Path

from .conftest import run_sql


def _sql(database, query, params=None):
    if isinstance(database, str):
        return run_sql(database, query, params) or []
    return database.sql(query, params) or []


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_json(path):
    try:
        return json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return None


def check_invariant(output, database, *, pages=True):
    """The disagreements between the tree at *output* and *database*.

    Every wheel under ``simple/`` belongs to a recorded build of a live
    release, has the recorded sha256 and is listed with it in its
    project's index; every recorded file exists with its hash; nothing of
    a deleted project is on disk or in an index page; no deletion is left
    pending; with *pages*, every project's pages say what the database
    says."""
    output = Path(output)
    problems = []
    packages = {row[0] for row in _sql(database,
                                       "SELECT package FROM packages")}
    recorded = {}   # package -> {filename: sha256}
    for package, filename, filehash in _sql(
            database,
            "SELECT b.package, f.filename, f.filehash FROM files f "
            "JOIN builds b ON b.build_id = f.build_id "
            "JOIN versions v ON v.package = b.package "
            "AND v.version = b.version"):
        recorded.setdefault(package, {})[filename] = filehash.strip()
    builds = {row[0] for row in _sql(database,
                                     "SELECT build_id FROM builds")}
    pending = _sql(database, "SELECT what, package, filename "
                             "FROM pending_deletions")
    for what, package, filename in pending:
        problems.append(f"deletion pending: {what} {package} {filename}")

    simple = output / "simple"
    on_disk = sorted(p.name for p in simple.iterdir()
                     if p.is_dir() and not p.name.startswith(".")) \
        if simple.is_dir() else []
    for package in on_disk:
        directory = simple / package
        if package not in packages:
            problems.append(f"simple/{package}/ is on disk but the "
                            f"project is not recorded")
            continue
        index = _load_json(directory / "index.json")
        listed = None if index is None else {
            f["filename"]: f["hashes"]["sha256"] for f in index["files"]}
        wanted = recorded.get(package, {})
        for path in sorted(directory.glob("*.whl")):
            if path.name not in wanted:
                problems.append(f"simple/{package}/{path.name} has no "
                                f"recorded build")
                continue
            if _sha256(path) != wanted[path.name]:
                problems.append(f"simple/{package}/{path.name} does not "
                                f"have the recorded bytes")
            if pages and (listed is None or
                          listed.get(path.name) != wanted[path.name]):
                problems.append(f"simple/{package}/{path.name} is not "
                                f"listed with its sha256 in its index")
        if pages and listed is not None and listed != wanted:
            extra = sorted(set(listed) - set(wanted))
            if extra:
                problems.append(f"simple/{package}/index.json lists "
                                f"unrecorded files: {', '.join(extra)}")
    for package, files in sorted(recorded.items()):
        for filename in sorted(files):
            if not (simple / package / filename).is_file():
                problems.append(f"recorded file simple/{package}/"
                                f"{filename} is missing")
        if pages:
            index = _load_json(simple / package / "index.json")
            listed = set() if index is None else {
                f["filename"] for f in index["files"]}
            missing = sorted(set(files) - listed)
            if missing:
                problems.append(f"simple/{package}/index.json does not "
                                f"list {', '.join(missing)}")
    project = output / "project"
    if project.is_dir():
        for path in sorted(project.iterdir()):
            if path.name.startswith("."):
                continue
            if path.is_symlink():
                if not path.exists():
                    problems.append(f"project/{path.name} is a dangling "
                                    f"link")
            elif path.name not in packages:
                problems.append(f"project/{path.name}/ is on disk but the "
                                f"project is not recorded")
    root = _load_json(simple / "index.json")
    if pages and root is not None:
        for name in sorted({p["name"] for p in root["projects"]}
                           - packages):
            problems.append(f"simple/index.json lists the deleted "
                            f"project {name}")
    logs = output / "logs"
    if logs.is_dir():
        for path in sorted(logs.rglob("*.txt.gz")):
            digits = "".join(path.relative_to(logs).with_suffix("")
                             .with_suffix("").parts)
            if digits.isdigit() and int(digits) not in builds:
                problems.append(f"{path.relative_to(output)} is the log "
                                f"of a build that is not recorded")
    return problems


class FakePageWriter:
    """What the tree effects ask of the page writer, remembered."""

    def __init__(self):
        self.rewrites = []
        self.written = []
        self.index_rewrites = 0

    def locked(self, package, work):
        from twisted.internet import defer
        return defer.ensureDeferred(work())

    async def write_project(self, package, both=True):
        self.written.append(package)
        return True

    def request_rewrite(self, package, both=True):
        self.rewrites.append(package)

    def rewrite_index(self):
        self.index_rewrites += 1

    def rewrite_search(self):
        pass


def relative_files(output):
    """Every file and link under *output*, relative, as strings (hidden
    ones included)."""
    found = []
    for directory, dirnames, filenames in os.walk(output):
        for name in filenames + [d for d in dirnames
                                 if os.path.islink(os.path.join(directory,
                                                                d))]:
            found.append(os.path.relpath(os.path.join(directory, name),
                                         output))
    return sorted(found)

