"""The admin hub: what ``piw-import``, ``piw-add``, ``piw-remove`` and
``piw-rebuild`` ask of the master, over its ``--import-queue`` socket.

Every request is checked in full before anything changes, so a refusal
(an unknown release, an ABI the master does not build for, a file that is
not a wheel of the release) leaves the database and the output tree as they
were.  Imported wheels travel through the same verified transfer as
builders' wheels and are published and recorded the same way.
"""

from datetime import datetime, timedelta, timezone

import attrs
import psycopg2
from packaging.utils import canonicalize_version
from twisted.application import service
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols import amp

from .. import failures, names
from ..db.pool import DatabaseUnavailable
from ..db.records import BuildResult
from ..protocol import admin as proto
from ..pypi.http import new_http_client
from ..pypi.journal import FileKind
from ..pypi.json_api import PyPIJson
from ..transfer.receiver import AlreadyPublished, TransferError
from .published_wheels import publish_build, wheel_problem, wheel_records
from .pypi_follower import skip_for

#: Builds imported by an admin are recorded as built by this builder id.
IMPORTED_BY = 0
IMPORT_LABEL = "import"

#: The largest imported build log.
MAX_LOG_BYTES = 64 * 1024 * 1024


def admin_listen_description(description):
    """The admin socket's endpoint description, with the defaults a UNIX
    socket needs: mode 0660 (only the master's group may use it) and a
    lock file, so a socket left behind by a crash is replaced."""
    if description.startswith("unix:"):
        options = description.split(":")[2:]
        if not any(o.startswith("mode=") for o in options):
            description += ":mode=660"
        if not any(o.startswith("lockfile=") for o in options):
            description += ":lockfile=1"
    return description


def _refuse(message):
    raise proto.AdminError(message)


def _checked_name(name):
    """The canonical form of a valid project *name*; refused otherwise."""
    try:
        return names.canonical(name)
    except names.InvalidName as e:
        _refuse(str(e))


def same_version(version, candidates):
    """The one of *candidates* spelt as *version*, else one equal to it
    once normalised (1.0 and 1.0.0), else None."""
    if version in candidates:
        return version
    wanted = canonicalize_version(version)
    return next((known for known in candidates
                 if canonicalize_version(known) == wanted), None)


#: Page rewrites a rebuild of every project asks for in one reactor turn.
REQUESTS_PER_TURN = 1000


class AdminConnection(amp.AMP):
    """One admin tool's connection.  An importing tool offers its wheels;
    the master fetches them through this connection's ``callRemote``."""

    def __init__(self, hub):
        super().__init__()
        self.hub = hub
        self.import_log = bytearray()

    @proto.ImportLog.responder
    def receive_log(self, offset, data):
        if offset != len(self.import_log):
            _refuse(f"log piece at {offset} out of order (expected "
                    f"{len(self.import_log)})")
        if len(self.import_log) + len(data) > MAX_LOG_BYTES:
            _refuse(f"the log is larger than {MAX_LOG_BYTES} bytes")
        self.import_log += data
        return {}

    @proto.ImportBuild.responder
    def import_build(self, **request):
        return self.hub.run(self.hub.import_build(self, **request))

    @proto.AddPackage.responder
    def add_package(self, **request):
        return self.hub.run(self.hub.add_package(**request))

    @proto.RemovePackage.responder
    def remove_package(self, **request):
        return self.hub.run(self.hub.remove_package(**request))

    @proto.Rebuild.responder
    def rebuild(self, **request):
        return self.hub.run(self.hub.rebuild(**request))


class AdminHub(service.Service):
    """The admin tools' requests, carried out against the master's
    database, build queue, file receiver and page writer."""

    log = Logger()
    name = "admin hub"

    def __init__(self, db, queue, receiver, page_writer, clock, output_path,
                 *, json_url="https://pypi.org/pypi", platform_aliases=None,
                 build_listeners=None, json_api=None, tree_effects=None,
                 reclassifier=None):
        self.db = db
        #: classifies stored failures again (piw-rebuild reclassify)
        self.reclassifier = reclassifier
        #: carries out what deletions take from the output tree, and audits
        #: it (:class:`~piwtwist.master.tree_effects.TreeEffects`)
        self.tree_effects = tree_effects
        self.queue = queue
        self.receiver = receiver
        self.page_writer = page_writer
        self.clock = clock
        self.output_path = output_path
        self.platform_aliases = platform_aliases or {}
        self.build_listeners = (build_listeners if build_listeners is not None
                                else [])
        self._http_pool = None
        if json_api is None:
            http, self._http_pool = new_http_client(clock)
            json_api = PyPIJson(http, clock, json_url)
        self.json_api = json_api

    def factory(self):
        return Factory.forProtocol(lambda: AdminConnection(self))

    def stopService(self):
        super().stopService()
        if self._http_pool is not None:
            return self._http_pool.closeCachedConnections()

    def run(self, coroutine):
        """Turn every unexpected failure into one line for the tool (and a
        traceback in the master's log)."""
        d = defer.Deferred.fromCoroutine(coroutine)

        def unexpected(failure):
            if failure.check(proto.AdminError):
                self.log.info("refused an admin request: {why}",
                              why=failure.getErrorMessage())
                return failure
            if failure.check(DatabaseUnavailable):
                raise proto.AdminError(
                    f"the database is unavailable: "
                    f"{failure.getErrorMessage()}")
            self.log.failure("an admin request failed", failure)
            raise proto.AdminError(
                f"the master failed: {failure.getErrorMessage()}")

        return d.addErrback(unexpected)

    # lookups ---------------------------------------------------------------

    async def _known_package(self, name):
        package = _checked_name(name)
        if not await self.db.test_package(package):
            _refuse(f"{package} is not in the database")
        return package

    async def _database_version(self, package, version):
        """The release of *package* equal to *version*, as the database
        spells it, or None."""
        return same_version(version, [
            v.version for v in await self.db.get_project_versions(package)])

    async def _known_version(self, package, version):
        found = await self._database_version(package, version)
        if found is None:
            _refuse(f"{package} has no version {version} in the database")
        return found

    # piw-import --------------------------------------------------------------

    async def _import_abi(self, abi_tag, files):
        abis = [abi.abi_tag for abi in await self.db.get_build_abis()]
        if not abis:
            _refuse("the master builds for no ABI")
        if abi_tag:
            if abi_tag not in abis:
                _refuse(f"{abi_tag} is not an ABI this master builds for "
                        f"({', '.join(abis)})")
            return abi_tag
        for wheel in files:
            if wheel["abi_tag"] in abis:
                return wheel["abi_tag"]
            if wheel["abi_tag"] not in ("none", "abi3"):
                _refuse(f"{wheel['filename']} is built for "
                        f"{wheel['abi_tag']}, which this master does not "
                        f"build for ({', '.join(abis)}); give --abi to "
                        f"record it under another")
        # pure and abi3 wheels go where the build queue would put them
        return abis[0]

    async def import_build(self, connection, package, version, abi_tag,
                           duration, files, replace=False):
        package = await self._known_package(package)
        version = await self._known_version(package, version)
        if not files:
            _refuse("nothing to import: no files")
        names = [wheel["filename"] for wheel in files]
        if len(set(names)) != len(names):
            _refuse("the same file name appears twice")
        for wheel in files:
            problem = wheel_problem(package, version, wheel)
            if problem:
                _refuse(problem)
            try:
                self.receiver.check_request(package, wheel["filename"],
                                            wheel["filesize"],
                                            wheel["filehash"])
            except TransferError as e:
                _refuse(str(e))
        abi_tag = await self._import_abi(abi_tag, files)
        output = bytes(connection.import_log).decode("utf-8", "replace")
        connection.import_log = bytearray()
        build = BuildResult(
            package=package, version=version, abi_tag=abi_tag,
            built_by=IMPORTED_BY, builder_label=IMPORT_LABEL,
            duration=timedelta(seconds=max(duration, 0.0)), status=True,
            output=output)
        recorded, dependencies = [], {}
        for wheel in files:
            try:
                # verified into the incoming directory; published below
                # once the build is committed, as a builder's are
                await self.receiver.receive(
                    connection.callRemote, package, wheel["filename"],
                    wheel["filesize"], wheel["filehash"],
                    replace=bool(replace), publish=False)
            except AlreadyPublished as e:
                _refuse(f"{e}; piw-import --replace replaces it")
            except TransferError as e:
                _refuse(f"{wheel['filename']} did not arrive intact: {e}")
            for build_file, deps in wheel_records(package, wheel,
                                                  self.platform_aliases):
                recorded.append(build_file)
                dependencies[build_file.filename] = deps
        build = attrs.evolve(build, files=tuple(recorded),
                             dependencies=dependencies)
        try:
            build_id = await self.db.log_build(
                build, replace_files=bool(replace))
        except psycopg2.errors.UniqueViolation as e:
            _refuse(f"{str(e).strip().splitlines()[0]}; piw-import "
                    f"--replace replaces it")
        except psycopg2.IntegrityError:
            _refuse(f"{package} {version} was removed meanwhile")
        problems = await publish_build(self.receiver, package, files,
                                       self.platform_aliases,
                                       replace=bool(replace))
        if problems:
            for problem in problems:
                self.log.error("{problem}", problem=problem)
            _refuse(f"recorded as build {build_id}, but "
                    f"{'; '.join(problems)} (the tree audit publishes it "
                    f"later)")
        self.log.info("imported {count} file(s) as build {id} of {package} "
                      "{version} for {abi}", count=len(files), id=build_id,
                      package=package, version=version, abi=abi_tag)
        if replace:
            self.log.warn("piw-import --replace: {names} replaced any "
                          "published file of the same name",
                          names=", ".join(f.filename for f in recorded))
        for listener in list(self.build_listeners):
            try:
                listener(build)
            except Exception:
                self.log.failure("a build listener failed")
        self.queue.request_refresh()
        message = (f"imported {len(files)} file(s) as build {build_id} of "
                   f"{package} {version} for {abi_tag}")
        if replace:
            message += ("; files of the same names were replaced if they "
                        "were published")
        return {"build_id": build_id, "abi_tag": abi_tag,
                "message": message}

    # piw-add -----------------------------------------------------------------

    async def _ask_pypi(self, name):
        try:
            project = await self.json_api.project(name, allow_stale=False)
        except Exception as e:
            _refuse(f"cannot ask PyPI about {name}: {e}")
        if project is None:
            _refuse(f"PyPI does not know {name}")
        return project

    @staticmethod
    def _pypi_release(project, version):
        found = same_version(version, project.releases)
        if found is None:
            _refuse(f"PyPI has no release {version} of {project.name}")
        return found, project.releases[found]

    async def add_package(self, package, version, unskip, yank, unyank,
                          skip=None, description=None, alias=None,
                          released=None):
        name = package.strip()
        package = _checked_name(name)
        released_at = None
        if released:
            try:
                released_at = datetime.fromisoformat(released)
            except ValueError:
                _refuse(f"{released!r} is not a date and time")
            if released_at.tzinfo is None:
                released_at = released_at.replace(tzinfo=timezone.utc)
        if (yank or unyank) and not version:
            _refuse("--yank and --unyank need a version")
        known_package = await self.db.test_package(package)
        known_version = None
        if known_package and version:
            known_version = await self._database_version(package, version)
        project = None
        if not known_package or not version or known_version is None:
            project = await self._ask_pypi(name)
        releases = {}
        if version and known_version is not None:
            releases[known_version] = None
        elif version:
            found, release = self._pypi_release(project, version)
            releases[found] = release
        else:
            releases = {v: r for v, r in project.releases.items()
                        if FileKind.SOURCE in r.kinds()}
            if not releases and not known_package:
                _refuse(f"PyPI has no release of {project.name} with a "
                        f"source distribution")

        now = datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
        summary = description if description is not None else (
            project.summary if project is not None else None)
        package_skip = skip if (skip is not None and not version) else ""
        if alias:
            _checked_name(alias)

        async def write(db):
            # one transaction: an add that fails half-way leaves nothing
            added = []
            if not known_package:
                await db.add_new_package(package, package_skip,
                                         summary or "")
            elif summary is not None and (description is not None or summary):
                await db.set_package_description(package, summary)
            if project is not None:
                await db.add_package_name(package, project.name, now)
            if name != package:
                await db.add_package_name(package, name, now)
            if alias:
                await db.add_package_name(package, alias, now)
            if not version and known_package:
                if skip is not None:
                    await db.skip_package(package, skip)
                elif unskip:
                    await db.skip_package(package, "")
            for found, release in releases.items():
                if release is None:
                    # known already: only the operator's overrides apply
                    if released_at is not None:
                        await db.update_version_details(
                            package, found, released=released_at)
                else:
                    auto_skip = skip_for(release.kinds(),
                                         skip_pure_wheels=False)
                    version_skip = skip if (skip is not None and version) \
                        else auto_skip
                    is_new = await db.add_new_package_version(
                        package, found, released_at or release.released,
                        version_skip, release.requires_python)
                    if is_new:
                        added.append(found)
                    else:
                        await db.update_version_details(
                            package, found, released_at or release.released,
                            release.requires_python)
                    if release.yanked and not unyank:
                        await db.yank_version(package, found,
                                              release.yank_reason)
                if version:
                    if skip is not None:
                        await db.skip_package_version(package, found, skip)
                    elif unskip:
                        await db.skip_package_version(package, found, "")
                    if yank:
                        await db.yank_version(package, found, "")
                    elif unyank:
                        await db.unyank_version(package, found)
            return added

        added = await self.db.transaction(write)

        self.page_writer.request_rewrite(package)
        self.page_writer.rewrite_index()
        self.page_writer.rewrite_search()
        self.queue.request_refresh()
        if added:
            what = (f"added {package} " + ", ".join(added) if len(added) <= 5
                    else f"added {len(added)} versions of {package}")
        elif version:
            what = f"updated {package} {next(iter(releases))}"
        else:
            what = f"updated {package}"
        self.log.info("piw-add: {what}", what=what)
        return {"package": package, "added": added, "message": what}

    # piw-remove --------------------------------------------------------------

    async def remove_package(self, package, version, builds, yank,
                             skip=None, failure_class=None):
        if failure_class is not None:
            return await self._remove_failures_of_class(
                failure_class, package, version, builds, yank, skip)
        package = await self._known_package(package)
        if version:
            version = await self._known_version(package, version)
        if yank:
            if not version:
                _refuse("--yank needs a version")
            await self.db.yank_version(package, version, "")
            self.page_writer.request_rewrite(package)
            return {"message": f"yanked {package} {version}"}
        if builds or skip is not None:
            versions = [version] if version else [
                v.version for v in await self.db.get_project_versions(package)]

            async def remove_builds(db):
                # one transaction: the skip and every release's builds
                if skip is not None:
                    if version:
                        await db.skip_package_version(package, version, skip)
                    else:
                        await db.skip_package(package, skip)
                return sum([len(await db.delete_build(package, found))
                            for found in versions])

            count = await self.db.transaction(remove_builds)
            if skip is not None:
                self.queue.drop(package, version or None)
            await self._tree_follows(package)
            self.queue.request_refresh()
            target = f"{package} {version}" if version else package
            what = f"removed the builds of {target} ({count} file(s))"
            if skip is not None:
                what += f" and skipped it: {skip}"
            return {"message": what}
        if version:
            filenames = await self.db.delete_version(package, version)
            self.queue.drop(package, version)
            await self._tree_follows(package)
            return {"message": f"removed {package} {version} "
                               f"({len(filenames)} file(s))"}
        filenames = await self.db.delete_package(package)
        self.queue.drop(package)
        await self._tree_follows(package)
        return {"message": f"removed {package} ({len(filenames)} file(s))"}

    async def _remove_failures_of_class(self, failure_class, package,
                                        version, builds, yank, skip):
        """piw-remove -b --class: every failed build of *failure_class* goes
        (in one transaction), so that each release is built again."""
        if failure_class not in failures.CLASSES:
            _refuse(f"{failure_class!r} is not a failure class (one of "
                    f"{', '.join(failures.CLASSES)})")
        if package or version or yank or skip is not None or not builds:
            _refuse("--class removes the failed builds of a class: it "
                    "takes --builds and no PACKAGE, --skip or --yank")
        releases = await self.db.transaction(
            lambda db: db.delete_failures_of_class(failure_class))
        await self.tree_effects.request_deletions()
        for name in sorted({name for name, _ in releases}):
            self.page_writer.request_rewrite(name)
        self.queue.request_refresh()
        return {"message": f"removed the {failure_class} failures of "
                           f"{len(releases)} release(s), which will be "
                           f"built again"}

    async def _tree_follows(self, package):
        """Carry out the deletions the database recorded with a removal
        (files, logs, pages); refuse, so that the tool's exit code says
        so, when some of *package*'s files could not be removed yet (the
        master tries again every hour and at start)."""
        await self.tree_effects.request_deletions()
        left = [p for p in await self.db.get_pending_deletions(10_000)
                if p.package == package]
        if left:
            _refuse(f"removed from the database, but {len(left)} of its "
                    f"files or pages could not be removed yet (see the "
                    f"master's log); the master tries again")

    # piw-rebuild -------------------------------------------------------------

    async def rebuild(self, part, package):
        if part not in proto.REBUILD_PARTS:
            _refuse(f"{part!r} is not one of "
                    f"{', '.join(proto.REBUILD_PARTS)}")
        if part == "home":
            self.page_writer.rewrite_home()
            return {"message": "the home page will be rewritten"}
        if part == "search":
            self.page_writer.rewrite_search()
            return {"message": "the search index will be rewritten"}
        if part == "reclassify":
            if self.reclassifier is None:
                _refuse("this master does not classify stored failures")
            while self.reclassifier.busy:
                # the pass at start (or another request) is still running
                await deferLater(self.clock, 0.5, lambda: None)
            count = await self.reclassifier.start(every=True)
            if count is None:
                _refuse("classifying the stored failures failed; see the "
                        "master's log")
            return {"message": f"classified {count} failed build(s)"}
        if part == "audit":
            report = await self.tree_effects.audit(verify_hashes=True)
            if report is None:
                _refuse("the audit failed; see the master's log")
            return {"message": report.summary()}
        both = part == "index"
        if package:
            package = await self._known_package(package)
            self.page_writer.request_rewrite(package, both=both)
            return {"message": f"{package}'s pages will be rewritten"}
        if both:
            # the page writer's full rewrite: it walks the names a page at
            # a time and queues nothing per project (PyPI's 740,000 queued
            # were a 710 ms stall in bench/scale.py), and one interrupted by
            # a stop is done again at the next start (the site generation
            # is forgotten as it begins)
            count = (await self.db.get_statistics()).packages_count
            self.page_writer.rewrite_all()
            return {"message": f"{count} projects' pages will be rewritten"}
        count = 0
        # a page of names at a time: PyPI's 740,000 at once would hold the
        # reactor while they are decoded and queued
        async for names in self.db.package_name_pages():
            for start in range(0, len(names), REQUESTS_PER_TURN):
                for name in names[start:start + REQUESTS_PER_TURN]:
                    self.page_writer.request_rewrite(name, both=both)
                # the reactor turns in between: 10,000 requests in one
                # turn were a 172 ms stall
                await deferLater(self.clock, 0, lambda: None)
            count += len(names)
        return {"message": f"{count} projects' pages will be rewritten"}
