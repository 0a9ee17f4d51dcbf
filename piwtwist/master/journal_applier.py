"""What PyPI's journal events do to the database, one transaction at a
time.

The follower (:mod:`piwtwist.master.pypi_follower`) decides when to read
the journal and in what order to apply it; an :class:`Applier` carries the
events of one chunk out through one transaction's
:class:`~piwtwist.db.client.Database`, and its :class:`Outcome` says what
the world outside the database must hear once the transaction commits.

What the journal's actions do:

==================  =====================================================
create              the package (canonical name), its description
new release         the package; a release without files is not recorded
add ... file        the release; skipped as "binary only" until it has a
                    source file, and as "pure-Python wheel on PyPI" once
                    PyPI has a py3-none-any wheel (``skip_pure_wheels``)
remove file         the release's skip is worked out again from its files
remove release      the release, its builds and its files on disk
remove project      the package, everything of it, its files on disk
yank / unyank       the release's yanked flag and PyPI's reason
rename              the old package is removed, the new one recorded with
                    the releases PyPI lists for it
==================  =====================================================

Every spelling of a name is kept as an alias with the time it was last seen.

"""

import attrs
from twisted.internet import defer

from ..db.client import Database
from ..pypi.journal import FileKind, utc_from_timestamp

SKIP_BINARY_ONLY = "binary only"
SKIP_PURE_WHEEL = "pure-Python wheel on PyPI"
SKIP_NO_FILES = "no files on PyPI"
#: the skip reasons the follower sets and may change again; any other
#: reason was set by an operator and is left alone
AUTOMATIC_SKIPS = frozenset({"", SKIP_BINARY_ONLY, SKIP_PURE_WHEEL,
                             SKIP_NO_FILES})


class PageChange:
    """The *what_changed* values page listeners receive."""

    PACKAGE_ADDED = "package added"
    PACKAGE_DELETED = "package deleted"
    DESCRIPTION = "description"
    NEW_NAME = "new name"  # a spelling not seen before: project/<alias>
    VERSION_ADDED = "version added"
    VERSION_DELETED = "version deleted"
    VERSION_SKIP = "version skip"  # now skipped, or no longer
    YANK = "yank"  # yanked, unyanked, or a new reason
    DETAILS = "details"  # release time or Requires-Python learned later


# What a prefetch could not find out (as opposed to None: PyPI does not
# know the release or project any more).
FAILED = object()
# What PyPI's document was too large to tell (the JSON client logged it):
# done without, and not asked again.
TOO_LARGE = object()
_UNKNOWN = (FAILED, TOO_LARGE)


def skip_for(kinds, skip_pure_wheels=True):
    """The automatic skip reason of a release whose files are of *kinds*."""
    if skip_pure_wheels and FileKind.PURE_WHEEL in kinds:
        return SKIP_PURE_WHEEL
    if FileKind.SOURCE in kinds:
        return ""
    return SKIP_BINARY_ONLY if kinds else SKIP_NO_FILES


# What an automatic skip reason says about a release's files.
_IMPLIED_KINDS = {
    "": {FileKind.SOURCE},
    SKIP_BINARY_ONLY: {FileKind.BINARY},
    SKIP_PURE_WHEEL: {FileKind.PURE_WHEEL},
    SKIP_NO_FILES: set(),
}


class _TransactionRunner:
    """Stands in for the connection pool inside one transaction, so that a
    :class:`Database` built on it runs every call on the same cursor."""

    def __init__(self, cursor):
        self.cursor = cursor

    async def run_query(self, sql, params=None):
        await self.cursor.execute(sql, params)
        return self.cursor.fetchall()


async def in_transaction(db, work):
    """``await work(tx)`` with *tx* a :class:`Database` whose calls all run
    in one transaction: committed when *work* returns, rolled back when it
    raises.  *work* may run twice if the connection is lost (the pool
    retries once), so it must keep its results to itself until it returns.
    """
    def interaction(cursor):
        return defer.Deferred.fromCoroutine(
            work(Database(_TransactionRunner(cursor))))
    return await db.pool.run_interaction(interaction)


@attrs.define
class Outcome:
    """What a committed transaction asks of the world outside the
    database."""

    pages: dict = attrs.Factory(dict)  # (package, version, what) -> None
    dropped: list = attrs.Factory(list)  # (package, version or None)
    queue_changed: bool = False
    repairs: dict = attrs.Factory(dict)  # (kind, package, x) -> serial
    names: list = attrs.Factory(list)  # (package, name) recorded
    descriptions: dict = attrs.Factory(dict)  # package -> written
    deleted: list = attrs.Factory(list)  # packages
    existing: list = attrs.Factory(list)  # packages known to exist
    applied: int = 0

    def page(self, package, version, what):
        self.pages[(package, version, what)] = None

    def repair(self, key, serial):
        """Ask the JSON API about *key* again later, for an answer that
        covers the journal up to *serial*."""
        self.repairs[key] = max(serial, self.repairs.get(key, 0))


class Details:
    """What the JSON API said about the releases and projects of a chunk."""

    def __init__(self, releases=None, projects=None):
        self.releases = releases or {}
        self.projects = projects or {}

    def release(self, package, version):
        found = self.releases.get((package, version))
        return None if found in _UNKNOWN else found

    def release_failed(self, package, version):
        return self.releases.get((package, version)) is FAILED

    def project(self, package):
        found = self.projects.get(package)
        return None if found in _UNKNOWN else found

    def project_failed(self, package):
        return self.projects.get(package) is FAILED


class Applier:
    """Applies events through one transaction's :class:`Database`,
    remembering what it learnt about the database on the way so that the
    many events of one release cost few queries."""

    def __init__(self, tx, details, outcome, skip_pure_wheels,
                 descriptions=None, known_packages=()):
        self.tx = tx
        self.details = details
        self.outcome = outcome
        self.skip_pure_wheels = skip_pure_wheels
        #: package -> the description the database has (as far as known)
        self.descriptions = {} if descriptions is None else descriptions
        # packages an earlier transaction recorded are taken to exist
        # still (if an operator removed one meanwhile, the transaction
        # fails and is retried without this knowledge)
        self.known_packages = known_packages
        self.packages = {}  # package -> exists
        self.versions = {}  # (package, version) -> skip, or None if absent
        self.names = {}  # (package, name) -> last seen (journal time)

    async def apply(self, event):
        handler = getattr(self, "_" + event.action.name.lower())
        await handler(event)
        self.outcome.applied += 1

    async def finish(self):
        """Record the spellings seen, with the latest sighting of each."""
        for (package, name), seen in self.names.items():
            if await self._package_exists(package):
                await self.tx.add_package_name(package, name,
                                               utc_from_timestamp(seen))
                self.outcome.names.append((package, name))
        self.names.clear()

    # the database's state, cached for the transaction ----------------------

    def _known_to_exist(self, package):
        exists = self.packages.get(package)
        if exists is None and package in self.known_packages:
            exists = self.packages[package] = True
        return exists

    async def _package_exists(self, package):
        if self._known_to_exist(package) is None:
            self.packages[package] = await self.tx.test_package(package)
        return self.packages[package]

    async def _version_skip(self, package, version):
        key = (package, version)
        if key not in self.versions:
            self.versions[key] = await self.tx.get_version_skip(package,
                                                                version)
        return self.versions[key]

    def _saw_name(self, package, name, timestamp):
        key = (package, name)
        self.names[key] = max(timestamp, self.names.get(key, timestamp))

    async def _ensure_package(self, package, name, timestamp,
                              description=""):
        self._saw_name(package, name, timestamp)
        if self._known_to_exist(package):
            created = False
        else:
            created = await self.tx.add_new_package(package, "", description)
            self.packages[package] = True
        if created:
            self.outcome.page(package, None, PageChange.PACKAGE_ADDED)
            self.outcome.descriptions[package] = description
        else:
            await self._describe(package, description)
        return created

    async def _describe(self, package, description):
        """Set *package*'s description unless it is known to be that."""
        if not description:
            return
        known = self.outcome.descriptions.get(
            package, self.descriptions.get(package))
        if known == description:
            return
        await self.tx.set_package_description(package, description)
        self.outcome.descriptions[package] = description
        self.outcome.page(package, None, PageChange.DESCRIPTION)

    async def _set_skip(self, package, version, skip):
        await self.tx.skip_package_version(package, version, skip)
        self.versions[(package, version)] = skip
        self.outcome.page(package, version, PageChange.VERSION_SKIP)
        if skip:
            self.outcome.dropped.append((package, version))
        else:
            self.outcome.queue_changed = True

    async def _add_version(self, package, version, kinds, release, timestamp):
        skip = skip_for(kinds, self.skip_pure_wheels)
        released = release.released if release and release.released \
            else utc_from_timestamp(timestamp)
        requires = release.requires_python if release else ""
        added = await self.tx.add_new_package_version(
            package, version, released, skip, requires)
        if not added:  # recorded already: its skip is not known here
            self.versions.pop((package, version), None)
            return False
        self.versions[(package, version)] = skip
        self.outcome.page(package, version, PageChange.VERSION_ADDED)
        if not skip:
            self.outcome.queue_changed = True
        if release is not None:
            await self._describe(package, release.summary)
            if release.yanked:
                await self.tx.yank_version(package, version,
                                           release.yank_reason)
        return True

    def _needs_repair(self, event):
        """Remember to ask the JSON API again when it failed or lagged."""
        release = self.details.release(event.package, event.version)
        if self.details.release_failed(event.package, event.version) or (
                release is not None and release.as_of < event.serial):
            self.outcome.repair(("release", event.package, event.version),
                                event.serial)

    # the actions -----------------------------------------------------------

    async def _create(self, event):
        project = self.details.project(event.package)
        if self.details.project_failed(event.package):
            self.outcome.repair(("description", event.package, None),
                                event.serial)
        await self._ensure_package(event.package, event.name,
                                   event.timestamp,
                                   project.summary if project else "")

    async def _new_release(self, event):
        await self._ensure_package(event.package, event.name,
                                   event.timestamp)

    async def _add_file(self, event):
        await self._ensure_package(event.package, event.name,
                                   event.timestamp)
        release = self.details.release(event.package, event.version)
        kinds = {event.file_kind}
        if release is not None:
            kinds |= release.kinds()
        skip = self.versions.get((event.package, event.version))
        if skip is None:
            # absent or not known: trying to add it is how to find out
            if await self._add_version(event.package, event.version, kinds,
                                       release, event.timestamp):
                self._needs_repair(event)
                return
            skip = await self._version_skip(event.package, event.version)
        if skip is None or skip not in AUTOMATIC_SKIPS:
            return
        wanted = skip_for(kinds | _IMPLIED_KINDS[skip],
                          self.skip_pure_wheels)
        if wanted != skip:
            await self._set_skip(event.package, event.version, wanted)

    async def _remove_file(self, event):
        skip = await self._version_skip(event.package, event.version)
        if skip is None or skip not in AUTOMATIC_SKIPS:
            return
        self._needs_repair(event)
        release = self.details.release(event.package, event.version)
        if release is None:
            # not known (the repair will see to it) or the whole release is
            # gone (its "remove release" is on its way)
            return
        kinds = {f.kind for f in release.files
                 if f.filename != event.filename}
        wanted = skip_for(kinds, self.skip_pure_wheels)
        if wanted != skip:
            await self._set_skip(event.package, event.version, wanted)

    async def _remove_release(self, event):
        if await self._version_skip(event.package, event.version) is None:
            return
        await self.tx.delete_version(event.package, event.version)
        self.versions[(event.package, event.version)] = None
        self.outcome.dropped.append((event.package, event.version))
        self.outcome.page(event.package, event.version,
                          PageChange.VERSION_DELETED)

    async def _delete_package(self, package):
        if not await self._package_exists(package):
            return
        await self.tx.delete_package(package)
        self.packages[package] = False
        self.outcome.deleted.append(package)
        for key in [k for k in self.versions if k[0] == package]:
            self.versions[key] = None
        for key in [k for k in self.names if k[0] == package]:
            del self.names[key]
        self.outcome.dropped.append((package, None))
        self.outcome.page(package, None, PageChange.PACKAGE_DELETED)

    async def _remove_project(self, event):
        await self._delete_package(event.package)

    async def _yank(self, event):
        if await self._version_skip(event.package, event.version) is None:
            return
        self._needs_repair(event)
        release = self.details.release(event.package, event.version)
        reason = release.yank_reason if release and release.yanked else ""
        await self.tx.yank_version(event.package, event.version, reason)
        self.outcome.page(event.package, event.version, PageChange.YANK)

    async def _unyank(self, event):
        if await self._version_skip(event.package, event.version) is None:
            return
        await self.tx.unyank_version(event.package, event.version)
        self.outcome.page(event.package, event.version, PageChange.YANK)

    async def _rename(self, event):
        if event.old_package == event.package:
            # only the spelling changed: one more alias
            await self._ensure_package(event.package, event.name,
                                       event.timestamp)
            return
        await self._delete_package(event.old_package)
        project = self.details.project(event.package)
        if project is None:
            if self.details.project_failed(event.package):
                self.outcome.repair(("project", event.package, event.name),
                                    event.serial)
            await self._ensure_package(event.package, event.name,
                                       event.timestamp)
            return
        await self.add_project(event.package, event.name, project,
                               event.timestamp)

    # whole projects (population, renames, repairs) --------------------------

    async def add_project(self, package, name, project, timestamp):
        """Record *package* with every release PyPI lists with files."""
        await self._ensure_package(package, name, timestamp,
                                   project.summary)
        for version, release in project.releases.items():
            if release.files and \
                    self.versions.get((package, version)) is None:
                # (a release recorded already is left as it is)
                await self._add_version(package, version, release.kinds(),
                                        attrs.evolve(release, summary=""),
                                        timestamp)

    async def sync_release(self, package, version, release):
        """Bring a recorded release in line with what the JSON API says
        now (after a failed or stale answer)."""
        skip = await self._version_skip(package, version)
        if skip is None:
            return
        await self.tx.update_version_details(
            package, version, release.released, release.requires_python)
        self.outcome.page(package, version, PageChange.DETAILS)
        if skip in AUTOMATIC_SKIPS and release.files:
            wanted = skip_for(release.kinds(), self.skip_pure_wheels)
            if wanted != skip:
                await self._set_skip(package, version, wanted)
        if release.yanked:
            await self.tx.yank_version(package, version, release.yank_reason)
            self.outcome.page(package, version, PageChange.YANK)
