"""Tree effects: the output tree follows what the database committed.

Three jobs, all here so that there is one set of rules for touching the
published tree (docs/crash-consistency.md states the invariant they keep):

**Deletions.**  Deleting a package, a release or a build in the database
records, in the same transaction, what the tree must lose (triggers fill
``pending_deletions``).  :meth:`TreeEffects.carry_out_deletions` is the
only code that deletes published wheels, their metadata, build logs and a
deleted project's pages and alias links; it removes a row only once its
files are gone, so a restart finishes what a crash interrupted.  It
refuses anything outside the tree's layout and never deletes a file that a
``files`` row names again (a file recorded anew under the same name).

**The incoming sweep** (hourly, and at the start of each audit): verified
wheels waiting in ``.incoming/verified`` whose build is committed are
published (the master died between the commit and the publish); staged
files no row wants and partial transfers untouched for a day are purged.

**The audit** (at start, and on demand through ``piw-rebuild audit``)
walks ``simple/`` and ``project/`` in chunks, in the thread pool, asking
the database about one chunk of projects at a time, and repairs: wheels
no row names and the directories of deleted projects are removed, missing
or stale index pages are queued with the page writer, recorded files that
are missing or have other bytes are reported.  It logs one summary line.
"""

import json
import os
import time
from pathlib import Path

import attrs
from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import names
from ..db.pool import DatabaseUnavailable
from ..transfer.receiver import file_sha256
from ..web import layout
from ..web.metadata import METADATA_SUFFIX
from .published_wheels import alias_names

#: Partial transfers and staged wheels untouched this long are purged.
DEFAULT_STALE_AGE = 24 * 3600.0
DEFAULT_SWEEP_INTERVAL = 3600.0
#: Project directories looked at per database query in an audit.
DEFAULT_CHUNK = 500
#: Pending deletions fetched at a time.
DELETION_BATCH = 500


@attrs.define
class AuditReport:
    """What an audit found and did."""

    deletions: int = 0
    published: int = 0
    purged: int = 0
    projects: int = 0
    wheels: int = 0
    orphan_wheels: int = 0
    deleted_projects: int = 0
    dangling_links: int = 0
    pages_queued: int = 0
    missing: list = attrs.Factory(list)
    damaged: list = attrs.Factory(list)
    hashes_checked: bool = False
    pages_requested: bool = True
    seconds: float = 0.0

    def summary(self):
        return (
            f"tree audit: {self.projects} project directories and "
            f"{self.wheels} wheels checked"
            f"{' with their hashes' if self.hashes_checked else ''} in "
            f"{self.seconds:.1f}s; {self.deletions} pending deletions "
            f"carried out, {self.published} staged wheels published, "
            f"{self.purged} stale incoming files purged, "
            f"{self.orphan_wheels} orphaned wheels and "
            f"{self.deleted_projects} deleted projects removed, "
            f"{self.dangling_links} dangling links removed, "
            f"{self.pages_queued} projects' pages missing or stale "
            f"({self._pages_fate()}); "
            f"{len(self.missing)} recorded files missing, "
            f"{len(self.damaged)} with other bytes")

    def _pages_fate(self):
        return ("queued for rewriting" if self.pages_requested
                else "left to the full rewrite")


# -- the safety checks, for everything that deletes from the tree ------------

def _package_directory(output, top, package):
    """``<output>/<top>/<package>`` when *package* is a safe name and the
    path stays inside the tree (no symbolic link on the way up), else
    None."""
    if not layout.is_safe_name(package):
        return None
    root = Path(output) / top
    if os.path.realpath(root) != os.path.join(os.path.realpath(output), top):
        return None
    return root / package


def remove_wheel(output, package, filename):
    """Remove one wheel and its ``.metadata`` from ``simple/<package>/``;
    refuse names that are not wheels of the tree's layout.  Returns the
    number of files removed."""
    directory = _package_directory(output, "simple", package)
    if directory is None or directory.is_symlink():
        raise ValueError(f"refusing to delete from simple/{package!r}")
    try:
        names.check_wheel_filename(filename)
    except names.InvalidName:
        raise ValueError(f"refusing to delete {filename!r}: not a wheel "
                         f"file name") from None
    removed = 0
    for name in (filename, filename + METADATA_SUFFIX):
        removed += layout.remove_file(directory / name)
    return removed


def remove_log(output, build_id):
    if not isinstance(build_id, int) or build_id < 0:
        raise ValueError(f"refusing to delete the log of build {build_id!r}")
    return layout.remove_file(layout.log_path(output, build_id))


def remove_project_tree(output, package):
    """Remove everything of a deleted *package*: ``simple/<package>``,
    ``project/<package>`` and the alias links to it its project JSON
    lists.  Its wheels and logs are removed by their own deletions."""
    simple = _package_directory(output, "simple", package)
    project = _package_directory(output, "project", package)
    if simple is None or project is None:
        raise ValueError(f"refusing to delete the project {package!r}")
    try:
        facts = json.loads((project / "json" / "index.json").read_bytes())
        aliases = facts.get("aliases") or ()
    except (OSError, ValueError, AttributeError):
        aliases = ()
    for alias in aliases:
        path = _package_directory(output, "project", alias) \
            if isinstance(alias, str) else None
        if path is not None and path.is_symlink() and \
                os.readlink(path) == package:
            layout.remove_file(path)
    removed = layout.remove_tree(simple)
    removed = layout.remove_tree(project) or removed
    return removed


def _carry_out(output, pending):
    """Thread: carry out *pending* deletions of one package; the ids done
    and the problems of the others."""
    done, problems = [], []
    for item in pending:
        try:
            if item.what == "file" and not item.recorded:
                remove_wheel(output, item.package, item.filename)
            elif item.what == "log" and not item.recorded:
                remove_log(output, item.build_id)
            elif item.what == "project" and not item.recorded:
                remove_project_tree(output, item.package)
        except (OSError, ValueError) as e:
            problems.append(f"deletion {item.deletion_id} ({item.what} of "
                            f"{item.package}): {e}")
            if isinstance(e, ValueError):
                done.append(item.deletion_id)  # never possible: forget it
            continue
        done.append(item.deletion_id)
    return done, problems


# -- the audit's look at the tree (threads) ----------------------------------

def _list_entries(path):
    """The directories and the symbolic links (aliases) of *path*, sorted,
    leaving out hidden names (temporary files, directories being
    removed)."""
    directories, links = [], []
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_symlink():
                    links.append(entry.name)
                elif entry.is_dir(follow_symlinks=False):
                    directories.append(entry.name)
    except FileNotFoundError:
        pass
    return sorted(directories), sorted(links)


def _scan_project(output, package):
    """What is on disk of one project: its wheels with their sizes, what
    its index JSON lists, and whether its pages are there."""
    directory = Path(output) / "simple" / package
    wheels = {}
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith(".whl") and \
                        entry.is_file(follow_symlinks=False):
                    wheels[entry.name] = entry.stat(
                        follow_symlinks=False).st_size
    except (FileNotFoundError, NotADirectoryError):
        pass
    listed = None
    try:
        index = json.loads((directory / "index.json").read_bytes())
        listed = {f["filename"]: f["hashes"]["sha256"]
                  for f in index["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return {
        "wheels": wheels,
        "metadata": {name[:-len(METADATA_SUFFIX)] for name in
                     _names_ending(directory, ".whl" + METADATA_SUFFIX)},
        "listed": listed,
        "pages": (directory / "index.html").is_file() and
                 (Path(output) / "project" / package /
                  "index.html").is_file(),
    }


def _names_ending(directory, suffix):
    try:
        with os.scandir(directory) as entries:
            return [e.name for e in entries if e.name.endswith(suffix)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _repair_chunk(output, scanned, facts, verify_hashes):
    """Thread: compare one chunk of projects with the database's *facts*
    (asked after the scan, so a wheel seen without a row has lost it) and
    repair what needs no lock; returns what was found."""
    found = {"wheels": 0, "orphans": [], "rewrite": [], "missing": [],
             "damaged": [], "gone": []}
    for package, disk in scanned.items():
        recorded = facts.get(package)
        if recorded is None:
            found["gone"].append(package)
            continue
        found["wheels"] += len(disk["wheels"])
        for filename in sorted(disk["wheels"]):
            if filename not in recorded:
                remove_wheel(output, package, filename)
                found["orphans"].append(f"{package}/{filename}")
        for filename in sorted(disk["metadata"] - set(recorded)):
            if filename not in disk["wheels"]:
                remove_wheel(output, package, filename)
        for filename, (size, sha256) in sorted(recorded.items()):
            path = Path(output) / "simple" / package / filename
            try:
                on_disk = os.lstat(path).st_size
            except FileNotFoundError:
                found["missing"].append(f"{package}/{filename}")
                continue
            if on_disk != size or (verify_hashes and
                                   file_sha256(path) != (size, sha256)):
                found["damaged"].append(f"{package}/{filename}")
        wanted = {name: sha256 for name, (_, sha256) in recorded.items()}
        if not disk["pages"] or disk["listed"] != wanted:
            found["rewrite"].append(package)
    return found


def _remove_dangling_links(output, candidates):
    removed = 0
    for name in candidates:
        path = _package_directory(output, "project", name)
        if path is not None and path.is_symlink() and not path.exists():
            removed += layout.remove_file(path)
    return removed


def _purge_staged(staged, wanted, limit):
    """Thread: remove staged files no row wants and older than *limit*."""
    purged = 0
    for sha256, filename, path, mtime in staged:
        if (sha256, filename) in wanted or mtime > limit:
            continue
        layout.remove_file(path)
        try:
            path.parent.rmdir()
        except OSError:
            pass
        purged += 1
    return purged


def _chunks(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


class TreeEffects(service.Service):
    """Carries out deletions, sweeps the incoming directory and audits the
    tree; see the module's docstring."""

    log = Logger()
    name = "tree effects"

    def __init__(self, db, output_path, reactor, receiver, page_writer, *,
                 threadpool=None, platform_aliases=None,
                 sweep_interval=DEFAULT_SWEEP_INTERVAL,
                 stale_age=DEFAULT_STALE_AGE, chunk_size=DEFAULT_CHUNK,
                 audit_at_start=True, pages_at_start=True):
        self.db = db
        self.output = Path(output_path)
        self.reactor = reactor
        self.receiver = receiver
        self.page_writer = page_writer
        self.threadpool = threadpool
        self.platform_aliases = platform_aliases or {}
        self.sweep_interval = sweep_interval
        self.stale_age = stale_age
        self.chunk_size = chunk_size
        self.audit_at_start = audit_at_start
        #: whether the audit at start queues pages (not when the page
        #: writer rewrites every page at start anyway)
        self.pages_at_start = pages_at_start
        self._deleting = None
        self._deletions_wanted = False
        self._audit = None
        self._loop = None
        self._loop_done = None
        self._started = None
        #: the latest audit's report (monitors, tests)
        self.last_report = None

    # service ------------------------------------------------------------

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self._sweep)
        self._loop.clock = self.reactor
        self._loop_done = self._loop.start(self.sweep_interval, now=False)
        if self.audit_at_start:
            self._started = self.audit(rewrite_pages=self.pages_at_start)
        else:
            self._started = self.request_deletions()

    async def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        waiting = [d for d in (self._started, self._audit, self._deleting)
                   if d is not None and not d.called]
        if waiting:
            await defer.DeferredList(waiting, consumeErrors=True)

    def _sweep(self):
        """Hourly: finish deletions, then the incoming sweep (errors are
        logged: a LoopingCall that fails stops for good)."""
        async def sweep():
            await self.request_deletions()
            published, purged = await self.sweep_incoming()
            if published or purged:
                self.log.info("incoming sweep: {published} staged wheels "
                              "published, {purged} stale files purged",
                              published=published, purged=purged)
        d = defer.Deferred.fromCoroutine(sweep())
        d.addErrback(self._log_failure, "the incoming sweep failed")
        return d

    def _log_failure(self, failure, message):
        if failure.check(DatabaseUnavailable, OSError):
            self.log.warn("{message}: {why}", message=message,
                          why=failure.getErrorMessage())
        else:
            self.log.failure(message, failure)

    # deletions ----------------------------------------------------------

    def request_deletions(self):
        """Carry out the pending deletions soon (after a commit that
        deleted something); a Deferred firing when done, with the number
        carried out.  Requests during a run make one more run."""
        if self._deleting is not None:
            self._deletions_wanted = True
            return _follow(self._deleting)
        self._deleting = defer.Deferred.fromCoroutine(
            self.carry_out_deletions())
        self._deleting.addErrback(
            lambda f: (self._log_failure(f, "carrying out deletions "
                                            "failed"), 0)[1])
        self._deleting.addBoth(self._deletions_done)
        return _follow(self._deleting)

    def _deletions_done(self, result):
        self._deleting = None
        if self._deletions_wanted and self.running:
            self._deletions_wanted = False
            self.request_deletions()
        return result

    async def carry_out_deletions(self):
        """Carry out every pending deletion; returns how many."""
        count = 0
        while True:
            pending = await self.db.get_pending_deletions(DELETION_BATCH)
            if not pending:
                return count
            by_package = {}
            for item in pending:
                by_package.setdefault(item.package, []).append(item)
            finished, stuck = [], False
            for package, items in by_package.items():
                if not self.running and self.parent is not None:
                    stuck = True   # the rest is carried out at the next start
                    break
                done, problems = await self._locked(
                    package, lambda items=items: self._in_thread(
                        _carry_out, self.output, items))
                for problem in problems:
                    self.log.warn("cannot carry out {problem}",
                                  problem=problem)
                stuck = stuck or len(done) < len(items)
                finished.extend(done)
                # the pages say what the database says now (or go, with a
                # package that is gone)
                await self.page_writer.write_project(package)
                if any(i.what == "project" for i in items):
                    self.page_writer.rewrite_index()
                    self.page_writer.rewrite_search()
            if finished:
                await self.db.finish_deletions(finished)
                count += len(finished)
            if stuck:
                return count   # tried again by the next request or sweep

    def _locked(self, package, work):
        """*work* while the page writer writes nothing of *package*."""
        return self.page_writer.locked(package, work)

    # the incoming directory -----------------------------------------------

    async def sweep_incoming(self, max_age=None):
        """Publish staged wheels whose build is committed; purge staged
        wheels nobody wants and partial transfers untouched for *max_age*
        seconds.  Returns (published, purged)."""
        max_age = self.stale_age if max_age is None else max_age
        limit = time.time() - max_age
        staged = await self._in_thread(self.receiver.staged_files)
        published, wanted = 0, set()
        for chunk in _chunks(staged, self.chunk_size):
            rows = await self.db.get_files_by_name(
                {filename for _, filename, _, _ in chunk})
            for sha256, filename, path, _ in chunk:
                row = rows.get(filename)
                if row is None or row[3] != sha256:
                    continue
                package, build_id, size, _ = row
                wanted.add((sha256, filename))
                try:
                    await self.receiver.publish_staged(
                        package, filename, size, sha256,
                        alias_names(filename, self.platform_aliases))
                except Exception as e:
                    self.log.error("cannot publish the staged {filename}: "
                                   "{why}", filename=filename, why=str(e))
                    continue
                published += 1
                self.page_writer.request_rewrite(package)
        purged = await self._in_thread(_purge_staged, staged, wanted, limit)
        purged += len(await self.receiver.purge_stale(max_age))
        return published, purged

    # the audit ------------------------------------------------------------

    def audit(self, verify_hashes=False, rewrite_pages=True):
        """Audit and repair the tree (one at a time: a request during an
        audit gets that audit's report); a Deferred firing with the
        :class:`AuditReport`.  Without *rewrite_pages*, projects whose
        pages are missing or stale are counted but not queued."""
        if self._audit is None:
            self._audit = defer.Deferred.fromCoroutine(
                self._run_audit(verify_hashes, rewrite_pages))
            self._audit.addBoth(self._audit_done)
        return _follow(self._audit)

    def _audit_done(self, result):
        self._audit = None
        if isinstance(result, Failure):
            self._log_failure(result, "the tree audit failed")
            return None
        return result

    async def _run_audit(self, verify_hashes, rewrite_pages=True):
        started = self.reactor.seconds()
        report = AuditReport(hashes_checked=verify_hashes,
                             pages_requested=rewrite_pages)
        report.deletions = await self.request_deletions()
        report.published, report.purged = await self.sweep_incoming()
        seen = set()
        for top in ("simple", "project"):
            directories, links = await self._in_thread(_list_entries,
                                                       self.output / top)
            for chunk in _chunks(directories, self.chunk_size):
                if not self.running and self.parent is not None:
                    return report
                fresh = [name for name in chunk if name not in seen]
                seen.update(fresh)
                await self._audit_chunk(fresh, verify_hashes, report,
                                        rewrite_pages)
            for chunk in _chunks(links, self.chunk_size):
                report.dangling_links += await self._in_thread(
                    _remove_dangling_links, self.output, chunk)
        # projects the database knows with no directory at all, a chunk
        # at a time so that the reactor turns in between
        async for names in self.db.package_name_pages(self.chunk_size):
            unseen = [p for p in names if p not in seen]
            if rewrite_pages:
                for package in unseen:
                    self.page_writer.request_rewrite(package)
            report.pages_queued += len(unseen)
            await task.deferLater(self.reactor, 0, lambda: None)
        report.seconds = self.reactor.seconds() - started
        self.last_report = report
        self.log.info("{summary}", summary=report.summary())
        for what, files in (("missing", report.missing),
                            ("with other bytes than recorded",
                             report.damaged)):
            for name in files[:20]:
                self.log.warn("recorded file {what}: {name}", what=what,
                              name=name)
        return report

    async def _audit_chunk(self, chunk, verify_hashes, report,
                           rewrite_pages=True):
        safe = [name for name in chunk if layout.is_safe_name(name)]
        if not safe:
            return
        scanned = {}

        def scan():
            for name in safe:
                scanned[name] = _scan_project(self.output, name)
        await self._in_thread(scan)
        facts = await self.db.get_audit_facts(safe)
        found = await self._in_thread(_repair_chunk, self.output, scanned,
                                      facts, verify_hashes)
        report.projects += len(safe)
        report.wheels += found["wheels"]
        report.orphan_wheels += len(found["orphans"])
        for orphan in found["orphans"]:
            self.log.info("removed {orphan}: no build records it",
                          orphan=orphan)
        report.missing.extend(found["missing"])
        report.damaged.extend(found["damaged"])
        for package in found["rewrite"]:
            if rewrite_pages:
                self.page_writer.request_rewrite(package)
            report.pages_queued += 1
        for package in found["gone"]:
            if await self._remove_if_gone(package):
                report.deleted_projects += 1

    async def _remove_if_gone(self, package):
        """Remove a deleted project's tree, under the page writer's lock of
        that package and after asking the database once more."""
        async def work():
            if await self.db.test_package(package):
                return False
            return await self._in_thread(remove_project_tree, self.output,
                                         package)
        removed = await self._locked(package, work)
        if removed:
            self.log.info("removed the pages and wheels of {package}: the "
                          "database does not know it", package=package)
            self.page_writer.rewrite_index()
            self.page_writer.rewrite_search()
        return removed

    # helpers --------------------------------------------------------------

    def _in_thread(self, function, *args):
        pool = self.threadpool or self.reactor.getThreadPool()
        return deferToThreadPool(self.reactor, pool, function, *args)


def _follow(d):
    """A Deferred with *d*'s result, leaving *d* to its other callers."""
    follower = defer.Deferred()

    def relay(result):
        if isinstance(result, Failure):
            follower.errback(result)
        else:
            follower.callback(result)
        return result
    d.addBoth(relay)
    return follower
