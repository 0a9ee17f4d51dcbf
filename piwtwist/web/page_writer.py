"""The page writer: keeps the output tree true to the database.

Other services tell it what changed; it works out which pages that touches,
renders them and writes them atomically:

``request_rewrite(package, both=True)``
    rewrite a project's pages (``both``: its simple index too).  Requests
    are buffered for ``rewrite_delay`` seconds and de-duplicated, so a
    burst of files for one release writes each page once.  Each request is
    saved in the database as it comes (all those of one turn of the
    reactor in one ``update_rewrites_pending``) and forgotten there once
    written, so a crash loses none: they are loaded again at start.  A
    save the database refused is tried again after ``save_interval``
    seconds.
``build_finished(build)``
    a :class:`~piwtwist.db.records.BuildResult` was recorded; subscribe
    this to ``BuilderHub.build_listeners``.  The project's pages are
    rewritten and the release's build logs written.
``write_project(package)``
    rewrite one project's pages now (deletions do, once their files are
    gone: see :mod:`piwtwist.master.tree_effects`, the only code that
    deletes from the tree); a package the database no longer knows loses
    its pages.
``rewrite_all()``
    every project, then the site pages (a Deferred firing with the number
    of projects).  Runs at start when ``rewrite_all_at_start`` is true
    (the master decides: see :mod:`piwtwist.web.generation`).  Given a
    ``generation``, a full rewrite removes ``<output>/.generation`` as it
    begins and writes it once it has finished, so an interrupted one is
    done again at the next start; a start without a full rewrite leaves
    the root of the simple index alone when it is there (a project added
    since asks for it).
``rewrite_home()``, ``rewrite_search()``, ``rewrite_index()``
    the home and statistics pages; the search index (``packages.json``)
    and sitemap; the root of the simple index.  Each is rate-limited: at
    most one write per interval, however often it is asked for.

Nothing here blocks the reactor: database reads are asynchronous; a
project's files (:mod:`~piwtwist.web.project_files`) are made and written
by a render worker process when there are some (the master's default:
:mod:`~piwtwist.web.render_pool`), else the file work (metadata
extraction, gzip, writes) and the CPU-heavy assembly of its facts and JSON
run in a thread pool and genshi's output is serialised through a
:class:`~twisted.internet.task.Cooperator` a few chunks at a time.  Bad
input (an unsafe name, a broken wheel, a vanished
package) is logged as a warning and skipped.

At PyPI's size (740,000 projects) two more rules hold.  A project's pages
cost one query (``get_project_page``; missing build logs one more per MiB),
whose lists arrive as text and are decoded in the thread pool.  No
PyPI-sized list is ever made on the reactor: the root of the simple index,
the sitemap and a full rewrite read names in keyset pages of
``names_per_page``, ``packages.json`` arrives as text PostgreSQL made, a
few chunks a query, and these files are rendered a page or chunk at a time
in a thread and written in pieces, never joined into one value.
"""

import os
import tempfile
from collections import OrderedDict, deque
from itertools import chain, islice
from datetime import datetime, timezone
from pathlib import Path

from packaging.utils import canonicalize_name
from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from ..db.pool import DatabaseUnavailable
from ..db.records import RewritePending
from ..master.tree_effects import remove_project_tree
from ..resources import templates_dir
from . import layout, project_files, render
from .generation import forget_generation, write_generation
from .render_pool import RenderPool

#: Files copied as they are from templates/ to the top of the output tree.
STATIC_FILES = ("site.css", "search.js")
#: Missing build logs read in one query, in bytes (a longer log alone).
LOG_BYTES_PER_QUERY = 1024 * 1024
#: Package names read in one query for the root of the simple index, the
#: sitemap and a full rewrite; search index entries in one chunk.
NAMES_PER_PAGE = 10_000
SEARCH_ENTRIES_PER_CHUNK = 10_000


#: Requests saved (or forgotten) by one query of the saved queue.
SAVE_PIECE = 5_000


class RateLimitedJob:
    """Run an async *job* when asked, at most once per *interval* seconds;
    requests that arrive meanwhile become one later run."""

    log = Logger()

    def __init__(self, clock, interval, job, name):
        self.clock = clock
        self.interval = interval
        self.job = job
        self.name = name
        self._last = None
        self._call = None
        self._running = None
        self._wanted = False
        self.stopped = False

    def request(self):
        self._wanted = True
        if self.stopped or self._running is not None or self._call is not None:
            return
        delay = 0.0 if self._last is None else \
            max(0.0, self._last + self.interval - self.clock.seconds())
        self._call = self.clock.callLater(delay, self._run)

    def run_now(self):
        """Run at once; a Deferred of the run.  When a run is under way
        already, that one is returned and another follows it."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._running is None:
            self._run()
        else:
            self._wanted = True
        return self._running if self._running is not None else \
            defer.succeed(None)

    def _run(self):
        self._call = None
        self._wanted = False
        self._last = self.clock.seconds()
        d = defer.Deferred.fromCoroutine(self.job())
        d.addErrback(_log_failure, self.log, f"writing {self.name} failed")
        d.addBoth(self._finished)
        if not d.called:
            self._running = d

    def _finished(self, result):
        self._running = None
        if self._wanted and not self.stopped:
            self.request()
        return result

    def stop(self):
        self.stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return self._running or defer.succeed(None)


def _log_failure(failure, log, message):
    if failure.check(DatabaseUnavailable, defer.CancelledError, OSError):
        log.warn("{message}: {why}", message=message,
                 why=failure.getErrorMessage())
    else:
        log.failure(message, failure)


class PackageLocks:
    """One DeferredLock per package in use, so that two writes of the same
    package never interleave (the older data could land last)."""

    def __init__(self):
        self._locks = {}

    async def run(self, package, work):
        lock = self._locks.setdefault(package, defer.DeferredLock())
        await lock.acquire()
        try:
            return await work()
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(package, None)


class PageWriter(service.Service):
    """Renders and writes the output tree; see the module's docstring."""

    log = Logger()
    name = "page writer"

    def __init__(self, db, output_path, reactor, *, statistics=None,
                 cooperator=None, threadpool=None, renderer=None,
                 site_url="http://localhost/", rewrite_delay=2.0,
                 home_interval=60.0, search_interval=300.0,
                 index_interval=10.0, save_interval=60.0, concurrency=4,
                 rewrite_all_at_start=True, abi_refresh_interval=300.0,
                 generation=None, render_processes=0,
                 names_per_page=NAMES_PER_PAGE,
                 search_entries_per_chunk=SEARCH_ENTRIES_PER_CHUNK):
        self.db = db
        self.output = output_path
        self.reactor = reactor
        self.statistics = statistics
        self._own_cooperator = cooperator is None
        self.cooperator = cooperator or self._new_cooperator()
        self.threadpool = threadpool
        self.renderer = renderer or render.Renderer(site_url=site_url)
        self.site_url = self.renderer.site_url
        #: worker processes for the project pages (None: in the master)
        self.render_pool = RenderPool(reactor, self.renderer,
                                      render_processes) \
            if render_processes else None
        self.rewrite_delay = rewrite_delay
        self.save_interval = save_interval
        self.concurrency = concurrency
        self.rewrite_all_at_start = rewrite_all_at_start
        self.generation = generation
        self.abi_refresh_interval = abi_refresh_interval
        self.names_per_page = names_per_page
        self.search_entries_per_chunk = search_entries_per_chunk
        self._pending = OrderedDict()
        self._in_progress = {}
        #: what the saved queue lacks: requests to add, packages written
        self._unsaved_added = {}
        self._unsaved_done = set()
        self._save_call = None
        self._saving = None
        self._drain_call = None
        self._draining = None
        self._full_rewrite = None
        self._locks = PackageLocks()
        self._abis = None
        self._abis_at = None
        self._preinstalled = {}
        self._started = None
        #: set from stopService on: writes asked for then wait for a start
        self._stopping = False
        self._jobs = {
            "home": RateLimitedJob(reactor, home_interval, self._write_home,
                                   "the home and statistics pages"),
            "search": RateLimitedJob(reactor, search_interval,
                                     self._write_search,
                                     "the search index and sitemap"),
            "index": RateLimitedJob(reactor, index_interval,
                                    self._write_index,
                                    "the root of the simple index"),
        }
        #: writes done, for monitors and the benchmark
        self.pages_written = 0

    # service ----------------------------------------------------------

    def _new_cooperator(self):
        return task.Cooperator(
            scheduler=lambda work: self.reactor.callLater(0, work))

    def startService(self):
        super().startService()
        self._stopping = False
        if self._own_cooperator and self.cooperator._stopped:
            self.cooperator = self._new_cooperator()   # started again
        for job in self._jobs.values():
            job.stopped = False
        if self.statistics is not None:
            self.statistics.listeners.append(self._statistics_changed)
        self._started = defer.Deferred.fromCoroutine(self._start())
        self._started.addErrback(_log_failure, self.log,
                                 "the page writer could not start")

    async def _start(self):
        await self._in_thread(layout.make_directories, self.output)
        await self._write_static_pages()
        try:
            for saved in await self.db.load_rewrites_pending():
                self._add(saved.package, saved.command, saved.added_at,
                          save=False)
        except DatabaseUnavailable as e:
            self.log.warn("could not load the saved page rewrites: {why}",
                          why=str(e))
        if not self.running:
            return   # stopped while starting
        if self.rewrite_all_at_start:
            self.rewrite_all()
        else:
            for name, job in self._jobs.items():
                if name == "index" and self.generation is not None and \
                        (self.output / "simple" / "index.html").exists():
                    continue
                job.request()
        self._schedule_drain()

    async def stopService(self):
        super().stopService()
        self._stopping = True
        if self.statistics is not None and \
                self._statistics_changed in self.statistics.listeners:
            self.statistics.listeners.remove(self._statistics_changed)
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
        self._drain_call = None
        waiting = [job.stop() for job in self._jobs.values()]
        for work in (self._started, self._draining, self._full_rewrite):
            if work is not None:
                waiting.append(work)
        # every worker finishes the package in hand, then stops
        await defer.DeferredList(
            [_quiet(d) for d in waiting], consumeErrors=True)
        # what is not saved yet, saved now
        if self._save_call is not None and self._save_call.active():
            self._save_call.cancel()
        self._save_call = None
        if self._saving is not None:
            await _quiet(self._saving)
        if self._unsaved_added or self._unsaved_done:
            self._save()
            await _quiet(self._saving)
        if self._own_cooperator:
            self.cooperator.stop()
        if self.render_pool is not None:
            self.render_pool.stop()

    # what other services call ------------------------------------------

    def request_rewrite(self, package, both=True):
        """Rewrite *package*'s project pages (and its simple index when
        *both*) soon; repeated requests are merged."""
        package = self._checked_name(package)
        if package is None:
            return
        self._add(package, "BOTH" if both else "PROJECT")
        self._schedule_drain()

    def build_finished(self, build):
        """A listener for ``BuilderHub.build_listeners``."""
        self.request_rewrite(build.package, both=bool(build.status))

    def rewrite_home(self):
        self._jobs["home"].request()

    def rewrite_search(self):
        self._jobs["search"].request()

    def rewrite_index(self):
        self._jobs["index"].request()

    def rewrite_all(self):
        """Rewrite every project and site page; a Deferred firing with the
        number of projects written (the same one while a rewrite runs)."""
        if self._full_rewrite is None:
            self._full_rewrite = defer.Deferred.fromCoroutine(
                self._rewrite_all())
            self._full_rewrite.addErrback(
                _log_failure, self.log, "rewriting every page failed")
            self._full_rewrite.addBoth(self._full_rewrite_done)
        return _shared(self._full_rewrite)

    def _full_rewrite_done(self, result):
        self._full_rewrite = None
        return result

    def locked(self, package, work):
        """Run *work* (an async callable) while no page of *package* is
        being written; a Deferred of its result.  Deletions use it, so
        a page written from older data never lands after them."""
        return defer.ensureDeferred(self._locks.run(package, work))

    async def wait_until_idle(self, poll=0.01):
        """Return once nothing is queued, scheduled or being written (for
        tests and the benchmark)."""
        while True:
            jobs = self._jobs.values()
            busy = [d for d in (self._started, self._draining,
                                self._full_rewrite)
                    if d is not None and not d.called]
            busy += [job._running for job in jobs if job._running is not None]
            if busy:
                await defer.DeferredList([_quiet(d) for d in busy])
            elif self._drain_call is not None or \
                    (self._pending and self.running) or \
                    any(job._call is not None for job in jobs):
                await task.deferLater(self.reactor, poll, lambda: None)
            else:
                return

    # the queue ----------------------------------------------------------

    def _checked_name(self, package):
        canonical = canonicalize_name(package or "")
        if not layout.is_safe_name(canonical):
            self.log.warn("ignoring a page rewrite for {package!r}: not a "
                          "package name", package=package)
            return None
        return canonical

    def _add(self, package, command, added_at=None, save=True):
        """Queue *command* for *package*.  The queue holds plain ``(command,
        added_at)`` tuples, which the garbage collector stops tracking: a
        full rebuild queues every project (PyPI has 740,000), and records
        it tracked would lengthen every full collection, a reactor stall."""
        existing = self._pending.get(package)
        if existing is not None:
            existing_command, existing_added_at = existing
            if existing_command == "BOTH" or command == existing_command:
                return
            command = "BOTH"
        self._pending[package] = (
            command, existing_added_at if existing is not None
            else added_at or datetime.now(timezone.utc))
        if save:
            self._unsaved_added[package] = self._pending[package]
            self._unsaved_done.discard(package)
            self._schedule_save(0)

    def _schedule_drain(self):
        if not self.running or not self._pending or \
                self._draining is not None or self._drain_call is not None:
            return
        self._drain_call = self.reactor.callLater(self.rewrite_delay,
                                                  self._start_drain)

    def _start_drain(self):
        self._drain_call = None
        workers = [defer.Deferred.fromCoroutine(self._drain_worker())
                   for _ in range(max(1, min(self.concurrency,
                                             len(self._pending))))]
        self._draining = defer.DeferredList(workers, consumeErrors=True)
        self._draining.addBoth(self._drained)

    def _drained(self, _):
        self._draining = None
        self._schedule_drain()

    async def _drain_worker(self):
        while self._pending and self.running:
            package, request = self._pending.popitem(last=False)
            self._in_progress[package] = request
            command, _ = request
            try:
                await self.write_project(package, both=command == "BOTH")
            finally:
                del self._in_progress[package]
                if package not in self._pending:
                    # written (or gone): its saved request goes too
                    self._unsaved_added.pop(package, None)
                    self._unsaved_done.add(package)
                    self._schedule_save(0)

    def _schedule_save(self, delay):
        """Save what changed in the queue after *delay* seconds (0: once
        this turn of the reactor is over, with whatever else it adds),
        one save at a time, in order."""
        if self._save_call is None and self._saving is None and \
                self.running:
            self._save_call = self.reactor.callLater(delay, self._save)

    def _save(self):
        self._save_call = None
        added, self._unsaved_added = self._unsaved_added, {}
        done, self._unsaved_done = self._unsaved_done, set()
        if not added and not done:
            return
        self._saving = defer.Deferred.fromCoroutine(
            self._save_changes(added, done))
        self._saving.addErrback(_log_failure, self.log,
                                "saving the pending page rewrites failed")

    async def _save_changes(self, added, done):
        """Save in pieces of at most :data:`SAVE_PIECE` rows, each made as
        it is sent: a rebuild of every project queues 740,000 requests in
        one turn, and one query carrying them all (or sorting them) would
        hold the reactor."""
        delay = 0
        added, done = iter(added.items()), iter(done)
        piece_added = piece_done = ()
        try:
            while True:
                piece_added = [
                    RewritePending(package=package, command=command,
                                   added_at=added_at)
                    for package, (command, added_at)
                    in islice(added, SAVE_PIECE)]
                piece_done = list(islice(done, SAVE_PIECE))
                if not piece_added and not piece_done:
                    break
                await self.db.update_rewrites_pending(piece_done, piece_added)
        except DatabaseUnavailable as e:
            self.log.warn("could not save the pending page rewrites: {why}",
                          why=str(e))
            # back into the next save, unless superseded meanwhile
            unsaved = chain(((r.package, (r.command, r.added_at))
                             for r in piece_added), added)
            for package, request in unsaved:
                if package not in self._unsaved_done:
                    self._unsaved_added.setdefault(package, request)
            self._unsaved_done.update(p for p in chain(piece_done, done)
                                      if p not in self._unsaved_added)
            delay = self.save_interval
        finally:
            self._saving = None
        if self._unsaved_added or self._unsaved_done:
            self._schedule_save(delay)

    # projects ---------------------------------------------------------

    async def write_project(self, package, both=True):
        """Rewrite one project's pages now; True when written, False when
        the package is gone (its pages are removed then), or when the
        writer is stopping (the rewrite is saved for the next start)."""
        if self._stopping:
            return self._keep_for_next_start(package, both)
        try:
            return await self._locks.run(
                package, lambda: self._write_project(package, both))
        except task.SchedulerStopped:
            return self._keep_for_next_start(package, both)
        except (DatabaseUnavailable, OSError) as e:
            self.log.warn("could not write the pages of {package}: {why}",
                          package=package, why=str(e))
        except Exception:
            self.log.failure("writing the pages of {package} failed",
                             package=package)
        return False

    def _keep_for_next_start(self, package, both):
        """A write asked for while stopping: queued and saved, not lost."""
        self.log.info("stopping: the pages of {package} are written at the "
                      "next start", package=package)
        self._add(package, "BOTH" if both else "PROJECT")
        if self._saving is None and self._save_call is None:
            self._save()   # no save is scheduled once stopped
        return False

    async def _write_project(self, package, both):
        await self._refresh_abis()
        row = await self._read_project(package)
        if row is None:
            # gone from the database: nothing of it may stay published
            self.log.info("{package} is no longer known; removing its pages",
                          package=package)
            await self._in_thread(remove_project_tree, self.output, package)
            self.rewrite_index()
            return False
        missing = await self._in_thread(project_files.missing_logs,
                                        self.output, row)
        logs = await self.db.get_build_outputs(missing, LOG_BYTES_PER_QUERY) \
            if missing else {}
        written = None
        if self.render_pool is not None:
            written = await self.render_pool.write_project(
                self.output, package, both, row, self._abis,
                self._preinstalled, logs)
        if written is None:
            written = await self._write_here(package, both, row, logs)
        self.pages_written += written.pages
        for problem in written.problems:
            self.log.warn("{package}: {problem}", package=package,
                          problem=problem)
        if both and not written.indexed:
            self.rewrite_index()
            self.rewrite_search()
        return True

    def _read_project(self, package):
        """What the pages of *package* show, in one round trip (None when
        the package is gone); anything with ``decode()`` giving
        :func:`~piwtwist.web.model.project_facts`' database arguments and
        ``build_ids()``."""
        return self.db.get_project_page(package)

    async def _write_here(self, package, both, row, logs):
        """A project's pages made in the master (without render workers,
        or when one died): the CPU work in the thread pool, genshi through
        the cooperator."""
        prepared = await self._in_thread(
            project_files.prepare, self.output, package, both, row,
            self._abis, self._preinstalled)
        page = await render.render_cooperatively(
            self.cooperator, self.renderer.project_page(prepared.project))
        pages = await self._in_thread(project_files.write_pages, self.output,
                                      package, prepared, page, logs)
        return project_files.Written(problems=prepared.problems,
                                     indexed=prepared.indexed, pages=pages)

    async def _refresh_abis(self):
        now = self.reactor.seconds()
        if self._abis is not None and \
                now - self._abis_at < self.abi_refresh_interval:
            return
        abis = await self.db.get_build_abis(include_skipped=True)
        preinstalled = {}
        for abi in abis:
            preinstalled[abi.abi_tag] = frozenset(
                await self.db.get_preinstalled_apt_packages(abi.abi_tag))
        self._abis, self._preinstalled, self._abis_at = \
            tuple(abis), preinstalled, now

    # the site ---------------------------------------------------------

    async def _rewrite_all(self):
        started = self.reactor.seconds()
        self._abis = None
        await self._refresh_abis()
        await self._write_static_pages()
        if self.generation is not None:
            await self._in_thread(forget_generation, self.output)
        # the names come in keyset pages as the workers use them up
        remaining = _SharedNames(
            self.db.package_name_pages(self.names_per_page))
        count = 0

        async def worker():
            nonlocal count
            while self.running:
                package = await remaining.next()
                if package is None:
                    return
                count += 1
                await self.write_project(package, both=True)

        await _gather(*[worker() for _ in range(self.concurrency)])
        if self.running:
            await _gather(*[job.run_now() for job in self._jobs.values()])
        if self.running and self.generation is not None:
            await self._in_thread(write_generation, self.output,
                                  self.generation)
        self.log.info("wrote the pages of {count} projects in {seconds:.1f}s",
                      count=count, seconds=self.reactor.seconds() - started)
        return count

    async def _write_static_pages(self):
        pages = {
            self.output / "faq.html": await render.render_cooperatively(
                self.cooperator, self.renderer.faq()),
            self.output / "404.html": await render.render_cooperatively(
                self.cooperator, self.renderer.not_found()),
        }
        await self._in_thread(self._write_static_files, pages)

    def _write_static_files(self, pages):
        """Thread: pages and files that change only with an upgrade,
        written only when they differ (a restart leaves their mtimes, so
        mirrors and caches see nothing new)."""
        for path, data in pages.items():
            layout.write_if_changed(path, data)
        for name in STATIC_FILES:
            layout.write_if_changed(self.output / name,
                                    (templates_dir() / name).read_bytes())

    def _statistics_changed(self, figures):
        self.rewrite_home()

    def _figures(self):
        if self.statistics is not None:
            return self.statistics.figures, self.statistics.series
        from .charts import ChartSeries
        from .statistics import SiteFigures
        return SiteFigures(), ChartSeries()

    async def _write_home(self):
        figures, series = self._figures()
        pages = {
            self.output / "index.html": await render.render_cooperatively(
                self.cooperator, self.renderer.home(figures)),
            self.output / "stats.html": await render.render_cooperatively(
                self.cooperator, self.renderer.stats_page(figures, series)),
        }
        await self._in_thread(self._write_files, pages)

    async def _write_search(self):
        """``packages.json`` as PostgreSQL writes it (read in chunks
        through a cursor), the sitemap from keyset pages of names: no
        PyPI-sized list of records is ever made, and the reactor only
        receives text a chunk at a time."""
        chunks = await self.db.get_search_index_chunks(
            self.search_entries_per_chunk)
        names = [page async for page in self.db.package_name_pages(
            self.names_per_page, with_skipped=False)]
        page = await render.render_cooperatively(
            self.cooperator,
            self.renderer.packages_page(sum(n for n, _ in chunks)))
        await self._in_thread(self._write_search_files,
                              [text for _, text in chunks], names, page)

    def _write_search_files(self, chunks, names, page):
        """Thread: the search index, its page and the sitemap."""
        _write_pieces_atomically(self.output / "packages.json",
                                 render.packages_json_pieces(chunks))
        packages = [name for part in names for name in part]
        files = {self.output / "packages.html": page}
        for name, data in render.sitemaps(self.site_url, packages).items():
            files[self.output / name] = data
        self._write_files(files)

    async def _write_index(self):
        """The root of the simple index from keyset pages of names,
        rendered and written in a thread a page at a time; the template
        renders only the page around the links."""
        pages = [page async for page in self.db.package_name_pages(
            self.names_per_page)]
        page = await render.render_cooperatively(
            self.cooperator,
            self.renderer.simple_root(render.LIST_PLACEHOLDER))
        await self._in_thread(self._write_index_files, pages, page)

    def _write_index_files(self, pages, page):
        """Thread: the root of the simple index in HTML and JSON."""
        simple = self.output / "simple"
        _write_pieces_atomically(
            simple / "index.html",
            render.splice(page, render.simple_root_link_pieces(pages)))
        _write_pieces_atomically(simple / "index.json",
                                 render.simple_root_json_pieces(pages))

    @staticmethod
    def _write_files(files):
        for path, data in files.items():
            layout.write_atomically(path, data)

    # helpers --------------------------------------------------------------

    def _in_thread(self, function, *args):
        pool = self.threadpool or self.reactor.getThreadPool()
        return deferToThreadPool(self.reactor, pool, function, *args)


def _write_pieces_atomically(path, pieces):
    """:func:`layout.write_atomically` of the bytes *pieces* one after
    another: a PyPI-sized file is never joined into one value (a copy of
    tens of megabytes that holds the GIL, and so the reactor)."""
    path = Path(path)
    layout.make_directories(path.parent)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                     suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for piece in pieces:
                f.write(piece)
            os.fchmod(f.fileno(), layout.FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


class _SharedNames:
    """The names of an async iterator of pages (lists), handed one at a
    time to several workers; the next page is read only once the last is
    used up, by one worker while the others wait."""

    def __init__(self, pages):
        self._pages = pages.__aiter__()
        self._names = deque()
        self._lock = defer.DeferredLock()
        self._finished = False

    async def next(self):
        """The next name, or None after the last."""
        while not self._names:
            if self._finished:
                return None
            await self._lock.acquire()
            try:
                if not self._names and not self._finished:
                    try:
                        self._names.extend(await self._pages.__anext__())
                    except StopAsyncIteration:
                        self._finished = True
            finally:
                self._lock.release()
        return self._names.popleft()


def _gather(*awaitables):
    """Await several coroutines or Deferreds at once; the first failure
    wins (and the others' failures are not left unhandled)."""
    deferreds = [defer.ensureDeferred(a) for a in awaitables]
    d = defer.gatherResults(deferreds, consumeErrors=True)
    d.addErrback(lambda f: f.value.subFailure
                 if isinstance(f.value, defer.FirstError) else f)
    return d


def _quiet(d):
    """A Deferred that follows *d* without taking its result away."""
    follower = defer.Deferred()
    d.addBoth(lambda result: (follower.callback(None), result)[1])
    return follower


def _shared(d):
    """A new Deferred with *d*'s result, leaving *d* for other callers."""
    follower = defer.Deferred()

    def relay(result):
        if isinstance(result, Exception) or hasattr(result, "raiseException"):
            follower.errback(result)
        else:
            follower.callback(result)
        return result
    d.addBoth(relay)
    return follower
