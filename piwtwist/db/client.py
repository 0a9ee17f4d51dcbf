"""The master's view of the database: one ``async`` method per SQL function.

Every method calls exactly one function of ``sql/create_piwheels.sql`` (the
master's role may do nothing else) and turns its rows into the plain values
of :mod:`piwtwist.db.records`; the few that read something PyPI-sized
(``get_search_index_chunks``, ``get_build_outputs``, ``package_name_pages``)
call theirs several times, so that no single answer is large.
"""

import copy
import functools
import json
from datetime import timezone

import attrs
from twisted.internet import defer

from .project_page import ProjectPageRow
from .records import (
    Alias, Build, BuildAbi, BuildFile, DailyBuilds, DailyDownloads,
    Dependency, PendingDeletion, ProjectBuild, ProjectFile, ProjectVersion,
    QueueEntry, QueueSample, RewritePending, SearchEntry, Statistics,
)

# Build logs are full of terminal escapes and the odd NUL byte, which
# PostgreSQL's text type cannot hold at all.
_CONTROL_CHARACTERS = {
    code: "\N{REPLACEMENT CHARACTER}"
    for code in (*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F)
}


def sanitize(text):
    """*text* without the control characters a log must not carry."""
    return None if text is None else text.translate(_CONTROL_CHARACTERS)


def _utc(moment):
    """Refuse naive datetimes: they are how time zones get lost."""
    if moment is not None and moment.tzinfo is None:
        raise ValueError(f"{moment!r} has no time zone")
    return None if moment is None else moment.astimezone(timezone.utc)


def _record(cls, row):
    return cls(**row._asdict())


def retry_safe(method):
    """Mark a :class:`Database` method whose statement may run twice: a
    read, or a write whose second run changes nothing and answers as the
    first did.  Only these are repeated when the connection is lost in the
    middle of a statement; any other may have committed before its answer
    was lost, and fails with ``DatabaseUnavailable`` instead."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return method(self._retrying, *args, **kwargs)
    call.retry_safe = True
    return call


class _CursorRunner:
    """Stands in for the pool inside one transaction: every statement runs
    on the same cursor."""

    def __init__(self, cursor):
        self.cursor = cursor

    async def run_query(self, sql, params=None):
        await self.cursor.execute(sql, params)
        return self.cursor.fetchall()


class Database:
    """Asynchronous calls of piwtwist's SQL functions through *pool*."""

    def __init__(self, pool):
        self.pool = pool
        # the same calls through a pool that repeats a statement once after
        # a lost connection (inside a transaction nothing is repeated)
        retrying = getattr(pool, "retrying", None)
        self._retrying = self
        if retrying is not None:
            self._retrying = copy.copy(self)
            self._retrying.pool = retrying()
            self._retrying._retrying = self._retrying

    async def transaction(self, work):
        """``await work(tx)``, *tx* a :class:`Database` whose calls all run
        in one transaction on one connection: committed when *work*
        returns (its result is returned), rolled back when it raises.  It
        is never run twice: a connection lost meanwhile raises
        ``DatabaseUnavailable`` (the commit may or may not have landed)."""
        def interaction(cursor):
            return defer.Deferred.fromCoroutine(
                work(Database(_CursorRunner(cursor))))
        return await self.pool.run_interaction(interaction)

    async def _rows(self, sql, params=()):
        return await self.pool.run_query(sql, params)

    async def _scalar(self, sql, params=()):
        rows = await self.pool.run_query(sql, params)
        return rows[0][0] if rows else None

    async def _column(self, sql, params=()):
        return [row[0] for row in await self.pool.run_query(sql, params)]

    # configuration -------------------------------------------------------

    @retry_safe
    async def get_schema_version(self):
        return await self._scalar("SELECT get_schema_version()")

    @retry_safe
    async def get_pypi_serial(self):
        return await self._scalar("SELECT get_pypi_serial()")

    @retry_safe
    async def set_pypi_serial(self, serial):
        """Save *serial*; the saved value never goes backwards."""
        return await self._scalar("SELECT set_pypi_serial(%s)", (serial,))

    @retry_safe
    async def get_build_abis(self, include_skipped=False):
        rows = await self._rows("SELECT * FROM get_build_abis(%s)",
                                (include_skipped,))
        return [_record(BuildAbi, row) for row in rows]

    async def set_build_abis(self, abis):
        """Record the ABIs to build; True when the active set changed."""
        return await self._scalar("SELECT set_build_abis(%s::VARCHAR[])",
                                  (sorted(set(abis)),))

    @retry_safe
    async def skip_build_abi(self, abi, reason):
        await self._rows("SELECT skip_build_abi(%s, %s)", (abi, reason))

    # packages and versions -----------------------------------------------

    async def add_new_package(self, package, skip="", description=""):
        return await self._scalar("SELECT add_new_package(%s, %s, %s)",
                                  (package, skip, description))

    @retry_safe
    async def add_package_name(self, package, name, seen):
        await self._rows("SELECT add_package_name(%s, %s, %s)",
                         (package, name, _utc(seen)))

    @retry_safe
    async def get_package_aliases(self, package):
        rows = await self._rows("SELECT * FROM get_package_aliases(%s)",
                                (package,))
        return [_record(Alias, row) for row in rows]

    @retry_safe
    async def set_package_description(self, package, description):
        await self._rows("SELECT set_package_description(%s, %s)",
                         (package, description))

    @retry_safe
    async def get_package_description(self, package):
        return await self._scalar("SELECT get_package_description(%s)",
                                  (package,))

    @retry_safe
    async def skip_package(self, package, reason):
        await self._rows("SELECT skip_package(%s, %s)", (package, reason))

    @retry_safe
    async def get_package_skip(self, package):
        return await self._scalar("SELECT get_package_skip(%s)", (package,))

    async def add_new_package_version(self, package, version, released=None,
                                      skip="", requires_python=""):
        return await self._scalar(
            "SELECT add_new_package_version(%s, %s, %s, %s, %s)",
            (package, version, _utc(released), skip, requires_python))

    @retry_safe
    async def update_version_details(self, package, version, released=None,
                                     requires_python=None):
        await self._rows("SELECT update_version_details(%s, %s, %s, %s)",
                         (package, version, _utc(released), requires_python))

    @retry_safe
    async def skip_package_version(self, package, version, reason):
        await self._rows("SELECT skip_package_version(%s, %s, %s)",
                         (package, version, reason))

    @retry_safe
    async def get_version_skip(self, package, version):
        return await self._scalar("SELECT get_version_skip(%s, %s)",
                                  (package, version))

    @retry_safe
    async def yank_version(self, package, version, reason=""):
        await self._rows("SELECT yank_version(%s, %s, %s)",
                         (package, version, reason))

    @retry_safe
    async def unyank_version(self, package, version):
        await self._rows("SELECT unyank_version(%s, %s)", (package, version))

    async def delete_package(self, package):
        """Forget *package*; returns the names of its files to remove."""
        return await self._column("SELECT * FROM delete_package(%s)",
                                  (package,))

    async def delete_version(self, package, version):
        """Forget a release; returns the names of its files to remove."""
        return await self._column("SELECT * FROM delete_version(%s, %s)",
                                  (package, version))

    @retry_safe
    async def test_package(self, package):
        return await self._scalar("SELECT test_package(%s)", (package,))

    @retry_safe
    async def test_package_version(self, package, version):
        return await self._scalar("SELECT test_package_version(%s, %s)",
                                  (package, version))

    @retry_safe
    async def get_all_packages(self):
        return await self._column("SELECT * FROM get_all_packages()")

    @retry_safe
    async def get_all_package_versions(self):
        rows = await self._rows("SELECT * FROM get_all_package_versions()")
        return [(row.package, row.version) for row in rows]

    @retry_safe
    async def get_project_versions(self, package):
        rows = await self._rows("SELECT * FROM get_project_versions(%s)",
                                (package,))
        return [
            ProjectVersion(**{**row._asdict(),
                              "builds_succeeded": tuple(row.builds_succeeded),
                              "builds_failed": tuple(row.builds_failed)})
            for row in rows
        ]

    @retry_safe
    async def get_project_files(self, package):
        rows = await self._rows("SELECT * FROM get_project_files(%s)",
                                (package,))
        return [_record(ProjectFile, row) for row in rows]

    @retry_safe
    async def get_version_files(self, package, version):
        return await self._column("SELECT * FROM get_version_files(%s, %s)",
                                  (package, version))

    @retry_safe
    async def get_file_dependencies(self, filename):
        rows = await self._rows("SELECT * FROM get_file_dependencies(%s)",
                                (filename,))
        return [_record(Dependency, row) for row in rows]

    @retry_safe
    async def get_project_builds(self, package):
        rows = await self._rows("SELECT * FROM get_project_builds(%s)",
                                (package,))
        return [_record(ProjectBuild, row) for row in rows]

    @retry_safe
    async def get_project_dependencies(self, package):
        """Every published file's dependencies: file name -> tuple of
        :class:`Dependency` (files without any are left out)."""
        rows = await self._rows("SELECT * FROM get_project_dependencies(%s)",
                                (package,))
        found = {}
        for row in rows:
            found.setdefault(row.filename, []).append(
                Dependency(row.tool, row.dependency))
        return {name: tuple(deps) for name, deps in found.items()}

    @retry_safe
    async def get_preinstalled_apt_packages(self, abi):
        return await self._column(
            "SELECT * FROM get_preinstalled_apt_packages(%s)", (abi,))

    @retry_safe
    async def add_preinstalled_apt_packages(self, abi, packages):
        await self._rows(
            "SELECT add_preinstalled_apt_packages(%s, %s::VARCHAR[])",
            (abi, list(packages)))

    # builds ---------------------------------------------------------------

    @retry_safe
    async def get_build_queue(self, limit, exclude=()):
        """Up to *limit* releases per ABI that want a build, newest first,
        leaving out the (abi, package, version) triples in *exclude*."""
        exclude = list(exclude)
        rows = await self._rows(
            "SELECT * FROM get_build_queue(%s, %s::VARCHAR[], "
            "%s::VARCHAR[], %s::VARCHAR[])",
            (limit, [e[0] for e in exclude], [e[1] for e in exclude],
             [e[2] for e in exclude]))
        return [_record(QueueEntry, row) for row in rows]

    @retry_safe
    async def get_queue_lengths(self):
        rows = await self._rows("SELECT * FROM get_queue_lengths()")
        return {row.abi_tag: row.queued for row in rows}

    async def log_build(self, build, replace_files=False):
        """Record a finished build (with its files and dependencies when it
        succeeded) in one transaction; returns the new build id.  A file
        recorded earlier with other bytes is refused (unique violation)
        unless *replace_files*.  A build with a ``token`` is recorded once:
        the same token again returns the build recorded for it, so such a
        call is safe to repeat."""
        db = self._retrying if build.token else self
        if build.status:
            files = [attrs.asdict(f) for f in build.files]
            dependencies = [
                {"filename": filename, "tool": d.tool,
                 "dependency": d.dependency}
                for filename, deps in build.dependencies.items()
                for d in deps
            ]
            return await db._scalar(
                "SELECT log_build_success(%s, %s, %s, %s, %s, %s, "
                "%s::JSONB, %s::JSONB, %s, %s, %s, %s)",
                (build.package, build.version, build.built_by,
                 build.duration, build.abi_tag, sanitize(build.output),
                 json.dumps(files), json.dumps(dependencies),
                 build.builder_label, bool(replace_files), build.token,
                 build.rescued))
        return await db._scalar(
            "SELECT log_build_failure(%s, %s, %s, %s, %s, %s, %s, %s, %s, "
            "%s, %s, %s)",
            (build.package, build.version, build.built_by, build.duration,
             build.abi_tag, sanitize(build.output), build.reason,
             build.builder_label, build.token, build.failure_class,
             sanitize(build.failure_hint), build.rescued))

    @retry_safe
    async def get_unclassified_failures(self, after_id, limit, every=False):
        """Up to *limit* failed builds after *after_id* without a failure
        class (or, *every*, all of them): ``(build_id, reason, output)``
        rows, oldest first."""
        function = "get_failures_to_reclassify" if every else \
            "get_unclassified_failures"
        return await self._rows(f"SELECT * FROM {function}(%s, %s)",
                                (after_id, limit))

    async def set_failure_classes(self, classes):
        """Record ``(build_id, failure_class, hint)`` triples; returns the
        packages whose builds changed."""
        classes = list(classes)
        return await self._column(
            "SELECT DISTINCT * FROM set_failure_classes(%s::INTEGER[], "
            "%s::VARCHAR[], %s::VARCHAR[])",
            ([c[0] for c in classes], [c[1] for c in classes],
             [sanitize(c[2]) for c in classes]))

    @retry_safe
    async def get_failures_by_class(self, days):
        """``(failure_class, failures)`` of the last *days* days, most
        first."""
        rows = await self._rows("SELECT * FROM get_failures_by_class(%s)",
                                (days,))
        return [(row.failure_class, row.failures) for row in rows]

    async def delete_failures_of_class(self, failure_class):
        """Forget every failed build of *failure_class*, so that each is
        built again; returns the ``(package, version)`` pairs."""
        rows = await self._rows(
            "SELECT * FROM delete_failures_of_class(%s)", (failure_class,))
        return [(row.package, row.version) for row in rows]

    async def delete_build(self, package, version):
        """Forget a release's builds; returns the names of the files."""
        return await self._column("SELECT * FROM delete_build(%s, %s)",
                                  (package, version))

    @retry_safe
    async def get_build(self, build_id):
        rows = await self._rows("SELECT * FROM get_build(%s)", (build_id,))
        return _record(Build, rows[0]) if rows else None

    @retry_safe
    async def get_build_output(self, build_id):
        return await self._scalar("SELECT get_build_output(%s)", (build_id,))

    @retry_safe
    async def get_build_files(self, build_id):
        rows = await self._rows("SELECT * FROM get_build_files(%s)",
                                (build_id,))
        return [_record(BuildFile, row) for row in rows]

    # statistics, search and hits -----------------------------------------

    @retry_safe
    async def get_statistics(self):
        rows = await self._rows("SELECT * FROM get_statistics()")
        return _record(Statistics, rows[0])

    @retry_safe
    async def record_queue_lengths(self):
        """get_queue_lengths, also saved as this hour's sample."""
        rows = await self._rows("SELECT * FROM record_queue_lengths()")
        return {row.abi_tag: row.queued for row in rows}

    @retry_safe
    async def get_queue_history(self, days):
        rows = await self._rows("SELECT * FROM get_queue_history(%s)",
                                (days,))
        return [_record(QueueSample, row) for row in rows]

    @retry_safe
    async def get_builds_per_day(self, days):
        rows = await self._rows("SELECT * FROM get_builds_per_day(%s)",
                                (days,))
        return [_record(DailyBuilds, row) for row in rows]

    @retry_safe
    async def get_downloads_per_day(self, days):
        rows = await self._rows("SELECT * FROM get_downloads_per_day(%s)",
                                (days,))
        return [_record(DailyDownloads, row) for row in rows]

    @retry_safe
    async def get_monitor_figures(self):
        """({abi: pending builds}, downloads in the last hour)."""
        rows = await self._rows("SELECT * FROM get_monitor_figures()")
        queue = rows[0].queue
        if isinstance(queue, str):
            queue = json.loads(queue)
        return ({abi: int(n) for abi, n in queue.items()},
                rows[0].downloads_last_hour)

    @retry_safe
    async def get_recent_builds(self):
        """(abi, built_at, status) of every build of the last hour."""
        rows = await self._rows("SELECT * FROM get_recent_builds()")
        return [(row.abi_tag, row.built_at, row.status) for row in rows]

    @retry_safe
    async def get_search_index(self):
        rows = await self._rows("SELECT * FROM get_search_index()")
        return [_record(SearchEntry, row) for row in rows]

    async def _log_client_hit(self, function, name, hit):
        c = hit.client
        await self._rows(
            f"SELECT {function}(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
            f"%s, %s, %s)",
            (sanitize(name), hit.host, _utc(hit.timestamp), sanitize(c.arch),
             sanitize(c.distro_name), sanitize(c.distro_version),
             sanitize(c.os_name), sanitize(c.os_version),
             sanitize(c.py_name), sanitize(c.py_version),
             sanitize(c.installer_name), sanitize(c.installer_version),
             sanitize(c.setuptools_version)))

    async def log_download(self, hit):
        await self._log_client_hit("log_download", hit.filename, hit)

    async def log_search(self, hit):
        await self._log_client_hit("log_search", hit.package, hit)

    async def _log_page_hit(self, function, hit):
        await self._rows(
            f"SELECT {function}(%s, %s, %s, %s, %s)",
            (sanitize(hit.name), hit.host, _utc(hit.timestamp),
             sanitize(hit.user_agent), hit.bot))

    async def log_project(self, hit):
        await self._log_page_hit("log_project", hit)

    async def log_json(self, hit):
        await self._log_page_hit("log_json", hit)

    async def log_page(self, hit):
        await self._log_page_hit("log_page", hit)

    @retry_safe
    async def log_hits(self, batch_id, clients, downloads, searches,
                       project_hits, json_hits, page_hits):
        """Store a batch of hits in one transaction (rows as
        :func:`piwtwist.master.hit_recorder.database_rows` makes them);
        False when a batch of this id was stored before."""
        return await self._scalar(
            "SELECT log_hits(%s, %s::JSON, %s::JSON, %s::JSON, %s::JSON, "
            "%s::JSON, %s::JSON)",
            (batch_id, *(json.dumps(rows, separators=(",", ":"))
                         for rows in (clients, downloads, searches,
                                      project_hits, json_hits, page_hits))))

    async def prune_hits(self, days):
        """Forget raw hits older than *days* days (none for 0); returns how
        many went."""
        return await self._scalar("SELECT prune_hits(%s)", (days,))

    @retry_safe
    async def get_project_downloads(self, package):
        """(downloads in the last 30 days, downloads of all time)."""
        rows = await self._rows("SELECT * FROM get_project_downloads(%s)",
                                (package,))
        return (rows[0].downloads_recent, rows[0].downloads_all)

    @retry_safe
    async def get_download_statistics(self, days):
        """The statistics page's download tables for the last *days*
        days: {kind: [(name, downloads, time_saved), ...]}."""
        rows = await self._rows("SELECT * FROM get_download_statistics(%s)",
                                (days,))
        tables = {}
        for row in rows:
            tables.setdefault(row.kind, []).append(
                (row.name, row.downloads, row.time_saved))
        return tables

    # the page writer's reads ----------------------------------------------

    @retry_safe
    async def get_project_page(self, package):
        """Everything the pages of *package* show, in one round trip: a
        :class:`~piwtwist.db.project_page.ProjectPageRow` (decode it in a
        thread), or None when the package is not known."""
        rows = await self._rows("SELECT * FROM get_project_page(%s)",
                                (package,))
        if not rows:
            return None
        row = rows[0]
        return ProjectPageRow(
            package=package, description=row.description, skip=row.skip,
            downloads=(row.downloads_recent, row.downloads_all),
            versions_json=row.versions, files_json=row.files,
            builds_json=row.builds, dependencies_json=row.dependencies,
            aliases_json=row.aliases)

    @retry_safe
    async def get_build_outputs(self, build_ids, max_bytes=1024 * 1024):
        """{build id: log} of those of *build_ids* that have a log, read
        about *max_bytes* of logs a query (a log longer than that alone),
        so that the reactor never receives a large answer."""
        wanted = sorted(set(build_ids))
        logs = {}
        while wanted:
            rows = await self._rows(
                "SELECT * FROM get_build_outputs(%s, %s)",
                (wanted, max_bytes))
            if not rows:
                break
            logs.update((row.build_id, row.output) for row in rows)
            wanted = [b for b in wanted if b > rows[-1].build_id]
        return logs

    @retry_safe
    async def get_package_names(self, after="", limit=10_000,
                                with_skipped=True):
        """Up to *limit* package names that sort after *after*, in the
        database's order (skipped packages only when *with_skipped*)."""
        if limit < 1:
            raise ValueError(f"a page of package names holds at least one "
                             f"name, not {limit}")
        rows = await self._rows("SELECT * FROM get_package_names(%s, %s, %s)",
                                (after, limit, bool(with_skipped)))
        return rows[0].names.split("\n") if rows[0].names_count else []

    async def package_name_pages(self, page_size=10_000, with_skipped=True):
        """Every package name, in pages of up to *page_size* (an async
        iterator of lists): one short query per page, so that PyPI's
        740,000 names never arrive (and are decoded on the reactor) at
        once."""
        after = ""
        while True:
            names = await self.get_package_names(after, page_size,
                                                 with_skipped)
            if not names:
                return
            yield names
            if len(names) < page_size:
                return
            after = names[-1]

    @retry_safe
    async def get_search_index_chunks(self, chunk_size=10_000, per_query=2):
        """The text of ``packages.json`` as PostgreSQL makes it: a list of
        ``(entries, text)``, *text* holding *entries* comma-separated JSON
        arrays in the search index's order.  PostgreSQL makes it once and
        keeps it; it is read back *per_query* chunks a query, so that the
        reactor never receives (and decodes) much in one answer, and no
        transaction spans the reading."""
        if chunk_size < 1 or per_query < 1:
            raise ValueError("chunk_size and per_query must be at least 1")
        prepared = await self._rows("SELECT * FROM prepare_search_index(%s)",
                                    (chunk_size,))
        chunks = []
        while len(chunks) < prepared[0].chunks:
            rows = await self._rows(
                "SELECT * FROM get_search_index_text(%s, %s)",
                (len(chunks), per_query))
            if not rows:
                break       # made anew meanwhile, with fewer chunks
            chunks.extend((row.entries, row.packages_json) for row in rows)
        return chunks

    # the page writer's queue ---------------------------------------------

    @retry_safe
    async def load_rewrites_pending(self):
        rows = await self._rows("SELECT * FROM load_rewrites_pending()")
        return [_record(RewritePending, row) for row in rows]

    @retry_safe
    async def update_rewrites_pending(self, done, added):
        """Forget the pending rewrites of the packages *done*; save *added*
        (:class:`RewritePending`, one per package), merged with any saved
        request of the same package."""
        data = [{"package": r.package, "added_at": _utc(r.added_at).isoformat(),
                 "command": r.command} for r in added]
        await self._rows("SELECT update_rewrites_pending(%s::JSONB, "
                         "%s::JSONB)", (json.dumps(sorted(done)),
                                        json.dumps(data)))

    # effects on the output tree ------------------------------------------

    @retry_safe
    async def get_pending_deletions(self, limit=500):
        """The oldest deletions the output tree owes the database, as
        :class:`PendingDeletion` records."""
        rows = await self._rows("SELECT * FROM get_pending_deletions(%s)",
                                (limit,))
        return [_record(PendingDeletion, row) for row in rows]

    @retry_safe
    async def finish_deletions(self, deletion_ids):
        """Forget deletions that have been carried out."""
        await self._rows("SELECT finish_deletions(%s::BIGINT[])",
                         (list(deletion_ids),))

    @retry_safe
    async def get_files_by_name(self, filenames):
        """{filename: (package, build_id, filesize, filehash)} of the
        recorded files among *filenames*."""
        rows = await self._rows("SELECT * FROM get_files_by_name(%s)",
                                (list(filenames),))
        return {row.filename: (row.package, row.build_id, row.filesize,
                               row.filehash.strip()) for row in rows}

    @retry_safe
    async def get_audit_facts(self, packages):
        """{package: {filename: (filesize, filehash)}} for those of
        *packages* the database knows."""
        facts = {}
        for row in await self._rows("SELECT * FROM get_audit_facts(%s)",
                                    (list(packages),)):
            files = facts.setdefault(row.package, {})
            if row.filename is not None:
                files[row.filename] = (row.filesize, row.filehash.strip())
        return facts
