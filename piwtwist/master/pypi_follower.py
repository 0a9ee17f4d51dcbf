"""The PyPI follower: keeps the database in step with PyPI's journal.

Every ``poll_interval`` seconds the follower asks PyPI's XML-RPC API for the
journal after the last serial it saved (``changelog_since_serial``), and
keeps asking while the answers are full batches.  Each batch is put in a
safe order (:class:`~piwtwist.pypi.journal.JournalSequencer`), enriched with
what the JSON API knows about the releases it touches, and applied in
chunks: one database transaction a chunk, which also saves the serial the
chunk brings the database up to.  A crash therefore never skips an event;
at worst a stretch of the journal is applied again, which changes nothing.

What each of the journal's actions does to the database is
:mod:`piwtwist.master.journal_applier`'s.

**Page listeners.**  The page writer (and anything else that shows what the
database holds) learns of changes through ``follower.page_listeners``: a
list of callables, each called after the change is committed as
``listener(package, version, what_changed)``, where *package* is the
canonical name, *version* is None for package-wide changes, and
*what_changed* is one of the :class:`PageChange` values.  A listener must
not block; what it raises is logged and otherwise ignored.  The master
subscribes the page writer through :func:`page_writer_listener`.

Deletions also reach the build queue at once (``build_queue.drop``).  What
they take from the output tree (wheels, logs, pages) is recorded by the
database in the same transaction (``pending_deletions``) and carried out by
:mod:`piwtwist.master.tree_effects`, which the page listener of
:func:`page_writer_listener` wakes; after a crash the master finishes it.

The JSON API is asked a few requests at a time, for the next chunk while
the current one is written; when it fails the events are applied with what
the journal says, and the release or project is asked about again after the
follower has caught up ("repairs").  A fresh database (serial 0) is
followed from PyPI's latest serial, or with ``populate`` first filled from
``list_packages_with_serial`` and each project's JSON.  ``pause()`` and
``resume()`` stop and restart polling; ``status()`` has figures for
monitors.
"""

from collections import Counter, OrderedDict
from pathlib import Path

import psycopg2
from packaging.utils import canonicalize_name
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from ..db.pool import CONNECTION_ERRORS, DatabaseUnavailable
from ..pypi.http import (
    BackOff, Malformed, PyPIProblem, TooLarge, in_thread, new_http_client,
)
from ..pypi.journal import (
    Action, JournalSequencer, MalformedEntry, parse_entry,
)
from ..pypi.json_api import PyPIJson
from ..pypi.xmlrpc import PyPIXmlRpc
from .journal_applier import (  # noqa: F401  (SKIP_*, skip_for: for others)
    AUTOMATIC_SKIPS, FAILED, SKIP_BINARY_ONLY, SKIP_NO_FILES,
    SKIP_PURE_WHEEL, TOO_LARGE, Applier, Details, Outcome, PageChange,
    in_transaction, skip_for,
)

#: What PyPI's XML-RPC API returns at most per call.
PYPI_BATCH_LIMIT = 50_000


class PyPIFollower(service.Service):
    """Keeps the database in step with PyPI; see the module docstring.

    *xmlrpc* and *json_api* are :class:`~piwtwist.pypi.xmlrpc.PyPIXmlRpc`
    and :class:`~piwtwist.pypi.json_api.PyPIJson` clients; *http_pool*, if
    given, is the connection pool behind them, closed when the service
    stops.
    """

    log = Logger()
    name = "pypi follower"

    def __init__(self, db, clock, xmlrpc, json_api, output_path, *,
                 build_queue=None, page_listeners=(), populate=False,
                 skip_pure_wheels=True, poll_interval=10.0,
                 batch_limit=PYPI_BATCH_LIMIT, chunk_size=1000,
                 backoff=None, sequencer=None, http_pool=None,
                 repairs_per_poll=50, max_repairs=10_000,
                 populate_group=50):
        self.db = db
        self.clock = clock
        self.xmlrpc = xmlrpc
        self.json = json_api
        self.output_path = Path(output_path)
        self.build_queue = build_queue
        self.page_listeners = list(page_listeners)
        self.populate = populate
        self.skip_pure_wheels = skip_pure_wheels
        self.poll_interval = poll_interval
        self.batch_limit = batch_limit
        self.chunk_size = chunk_size
        self.backoff = backoff or BackOff()
        self.json_backoff = BackOff(initial=poll_interval, maximum=600.0)
        self.sequencer = sequencer or JournalSequencer()
        self.http_pool = http_pool
        self.repairs_per_poll = repairs_per_poll
        self.max_repairs = max_repairs
        self.populate_group = populate_group
        self.paused = False
        self.caught_up = False
        self.saved_serial = None
        self.events_applied = 0
        #: wall time spent in each stage of following (for monitors)
        self.seconds_spent = Counter()
        self.last_problem = None
        # (kind, package, version or name) -> [attempts, serial needed]
        self._repairs = OrderedDict()
        self._names_seen = OrderedDict()
        self._descriptions = OrderedDict()  # package -> as recorded
        self._known_packages = OrderedDict()  # recorded packages
        self._next_poll = None
        self._cycle = None
        self._interruptible_work = set()
        self._stopping = False
        self._problem_kind = None
        self._json_trouble = None
        self._json_retry_at = 0.0

    # service ---------------------------------------------------------------

    def startService(self):
        super().startService()
        self._stopping = False
        self._poll_in(0)

    def stopService(self):
        super().stopService()
        self._stopping = True
        self._cancel_poll()
        # requests to PyPI are given up; a database transaction finishes
        for work in list(self._interruptible_work):
            work.cancel()
        return defer.Deferred.fromCoroutine(self._wind_down(self._cycle))

    async def _wind_down(self, cycle):
        if cycle is not None:
            await cycle
        if self.http_pool is not None:
            await self.http_pool.closeCachedConnections()

    def pause(self):
        """Stop polling PyPI (a batch being applied is finished first)."""
        self.paused = True
        self._cancel_poll()
        self.log.info("following PyPI paused")

    def resume(self):
        if self.paused:
            self.paused = False
            self.log.info("following PyPI resumed")
            self._poll_in(0)

    def status(self):
        """Figures for monitors and the statistics page."""
        return {
            "serial": self.saved_serial,
            "caught_up": self.caught_up,
            "paused": self.paused,
            "events_applied": self.events_applied,
            "parked_deletions": self.sequencer.parked_count(),
            "repairs_pending": len(self._repairs),
            "problem": self.last_problem,
        }

    # scheduling ------------------------------------------------------------

    def _cancel_poll(self):
        if self._next_poll is not None and self._next_poll.active():
            self._next_poll.cancel()
        self._next_poll = None

    def _poll_in(self, seconds):
        self._cancel_poll()
        if self.paused or self._stopping or not self.running:
            return
        if self._cycle is not None:
            return  # the running cycle schedules the next one
        self._next_poll = self.clock.callLater(seconds, self._start_cycle)

    def _start_cycle(self):
        self._next_poll = None
        cycle = defer.Deferred.fromCoroutine(self._cycle_once())
        if not cycle.called:
            self._cycle = cycle

    async def _interruptible(self, work):
        """Await *work* (a coroutine), cancelled if the service stops."""
        running = defer.Deferred.fromCoroutine(work)
        self._interruptible_work.add(running)
        try:
            return await running
        finally:
            self._interruptible_work.discard(running)

    async def _cycle_once(self):
        """One poll, with every error caught and logged: the next poll is
        always scheduled."""
        failed = True
        try:
            delay = await self._follow()
            failed = False
            self.backoff.succeeded()
            if self._problem_kind is not None:
                self.log.info("PyPI's journal can be read again")
                self.last_problem = self._problem_kind = None
        except PyPIProblem as problem:
            delay = self._reading_failed(problem)
        except defer.CancelledError:
            delay = self.backoff.failed()
        except (DatabaseUnavailable, *CONNECTION_ERRORS) as e:
            delay = self.backoff.failed()
            if not self._stopping:
                self.log.warn("the database is unavailable ({error}); "
                              "following PyPI again in {delay:.0f} s",
                              error=str(e).strip(), delay=delay)
        except Exception:
            delay = self.backoff.failed()
            self.log.failure("following PyPI failed; trying again in "
                             "{delay:.0f} s", delay=delay)
        finally:
            self._cycle = None
        if failed and self.saved_serial is not None:
            # whatever was read but not applied is read again
            self.sequencer.start_at(self.saved_serial)
        self._poll_in(delay)

    def _reading_failed(self, problem):
        delay = self.backoff.failed(problem.retry_after)
        kind = type(problem).__name__
        if isinstance(problem, Malformed) or kind != self._problem_kind:
            self.log.warn(
                "cannot read PyPI's journal at {url} ({problem}); trying "
                "again with back-off, next in {delay:.0f} s",
                url=self.xmlrpc.url, problem=problem, delay=delay)
        else:
            self.log.debug("still cannot read PyPI's journal ({problem}); "
                           "next try in {delay:.0f} s",
                           problem=problem, delay=delay)
        self._problem_kind = kind
        self.last_problem = f"{kind}: {problem}"
        return delay

    # following -------------------------------------------------------------

    async def _follow(self):
        """Read and apply the journal until caught up; the seconds to wait
        before the next poll."""
        if self.saved_serial is None:
            self.saved_serial = await self._starting_serial()
            self.sequencer.start_at(self.saved_serial)
        while not self._stopping:
            wait = self.xmlrpc.client.waiting()
            if wait > 0:
                # PyPI asked for a pause (RateLimit, Retry-After): not a
                # problem worth a warning
                return wait
            started = self.clock.seconds()
            entries = await self._interruptible(
                self.xmlrpc.changelog_since_serial(self.sequencer.high_water))
            self.seconds_spent["reading the journal"] += \
                self.clock.seconds() - started
            full = len(entries) >= self.batch_limit
            self.caught_up = not full
            self.json.prefer_projects = full
            ordered = await self._sequence_batch(entries)
            self.sequencer.expire(None if full else self.clock.seconds())
            await self._apply(ordered)
            if not ordered and not self._stopping:
                await self._save_serial(self.sequencer.safe_serial())
            if not full or self.paused:
                break
        if not self._stopping and not self.paused:
            await self._repair_some()
        return self.poll_interval

    async def _turn(self):
        """Let the reactor see to everything else before going on."""
        await task.deferLater(self.clock, 0, lambda: None)

    async def _sequence_batch(self, entries):
        """The events of a batch of raw entries, in the order to apply
        them.  A batch is up to 50,000 entries, about 0.75 s of parsing and
        sequencing: done ``chunk_size`` entries at a time, with a turn of
        the reactor after each.  Feeding the sequencer serial-ordered
        slices gives what one call with the whole batch would."""
        events, through, problems = [], None, []
        for start in range(0, len(entries), self.chunk_size):
            if start:
                await self._turn()
            more, last = self._parse(entries[start:start + self.chunk_size],
                                     problems)
            events += more
            if last is not None:
                through = last if through is None else max(through, last)
        if problems:
            self.log.warn("skipped {count} journal entries that make no "
                          "sense, for example: {example}",
                          count=len(problems), example=problems[0])
        # PyPI sends them in serial order, which this sort only checks
        events.sort(key=lambda event: event.serial)
        if not events:
            return self.sequencer.sequence([], through)
        ordered = []
        for start in range(0, len(events), self.chunk_size):
            if start:
                await self._turn()
            end = start + self.chunk_size
            ordered += self.sequencer.sequence(
                events[start:end], through if end >= len(events) else None)
        return ordered

    def _parse(self, entries, problems):
        """The events among *entries* and the last serial they reach;
        what makes no sense is described in *problems*."""
        events = []
        through = None
        for entry in entries:
            try:
                event = parse_entry(entry)
            except MalformedEntry as e:
                problems.append(str(e))
                serial = entry[4] if isinstance(entry, (list, tuple)) and \
                    len(entry) == 5 else None
            else:
                if event is not None:
                    events.append(event)
                serial = entry[4]
            if isinstance(serial, int) and not isinstance(serial, bool):
                through = serial if through is None else max(through, serial)
        return events, through

    async def _save_serial(self, serial):
        if serial > self.saved_serial:
            self.saved_serial = await self.db.set_pypi_serial(serial)

    async def _starting_serial(self):
        serial = await self.db.get_pypi_serial()
        if serial:
            self.log.info("following PyPI's journal from serial {serial}",
                          serial=serial)
            return serial
        if self.populate:
            serial = await self._populate()
        else:
            serial = await self._interruptible(
                self.xmlrpc.changelog_last_serial())
            self.log.info("a fresh database: following PyPI's journal from "
                          "its latest serial, {serial} (the master's "
                          "--pypi-populate records every existing package "
                          "first)", serial=serial)
        return await self.db.set_pypi_serial(serial)

    async def _apply(self, ordered):
        """Apply *ordered* in chunks, each in one transaction that also
        saves the serial it brings the database up to."""
        starts = range(0, len(ordered), self.chunk_size)
        chunks = [ordered[start:start + self.chunk_size] for start in starts]
        # the next chunk's details are asked for while this one is written
        upcoming = self._prefetch_soon(chunks[0]) if chunks else None
        try:
            for index, (start, chunk) in enumerate(zip(starts, chunks)):
                started = self.clock.seconds()
                details = await upcoming
                upcoming = None
                if self._stopping:
                    return
                if index + 1 < len(chunks):
                    upcoming = self._prefetch_soon(chunks[index + 1])
                fetched = self.clock.seconds()
                await self._commit(chunk, details,
                                   ordered[start + self.chunk_size:])
                self.seconds_spent["waiting for the JSON API"] += \
                    fetched - started
                self.seconds_spent["writing the database"] += \
                    self.clock.seconds() - fetched
        finally:
            if upcoming is not None:
                upcoming.addErrback(lambda failure: failure.trap(
                    defer.CancelledError))
                upcoming.cancel()

    def _prefetch_soon(self, chunk):
        return defer.Deferred.fromCoroutine(self._prefetch(chunk))

    async def _commit(self, chunk, details, rest):
        serial = self.sequencer.safe_serial(rest)
        try:
            outcome = await self._transaction(chunk, details, serial)
        except psycopg2.Error as e:
            if isinstance(e, CONNECTION_ERRORS):
                raise
            # one event the database refuses must not stop the journal:
            # apply the chunk one event at a time and skip the culprit
            self.log.warn("the database refused a chunk of PyPI's journal "
                          "({error}); applying it event by event",
                          error=str(e).strip())
            for index, event in enumerate(chunk):
                serial = self.sequencer.safe_serial(chunk[index + 1:] +
                                                    list(rest))
                try:
                    outcome = await self._transaction([event], details,
                                                      serial)
                except psycopg2.Error as e:
                    if isinstance(e, CONNECTION_ERRORS):
                        raise
                    self.log.warn("skipping {event}: the database refused "
                                  "it ({error})", event=event.describe(),
                                  error=str(e).strip())
                    continue
                await self._after_commit(outcome, serial)
            return
        await self._after_commit(outcome, serial)

    async def _transaction(self, events, details, serial):
        async def work(tx):
            outcome = Outcome()
            applier = Applier(tx, details, outcome, self.skip_pure_wheels,
                               self._descriptions, self._known_packages)
            for event in events:
                await applier.apply(event)
            await applier.finish()
            if serial > self.saved_serial:
                await tx.set_pypi_serial(serial)
            outcome.existing = [p for p, exists in applier.packages.items()
                                if exists]
            return outcome
        try:
            return await in_transaction(self.db, work)
        except Exception:
            self._known_packages.clear()
            raise

    async def _after_commit(self, outcome, serial=None):
        """Tell the build queue, the output tree and the page listeners."""
        if serial is not None:
            self.saved_serial = max(self.saved_serial, serial)
        self.events_applied += outcome.applied
        for key, serial in outcome.repairs.items():
            self._want_repair(key, serial)
        for package, description in outcome.descriptions.items():
            self._descriptions[package] = description
            self._descriptions.move_to_end(package)
            if len(self._descriptions) > 50_000:
                self._descriptions.popitem(last=False)
        for package in outcome.existing:
            self._known_packages[package] = None
            self._known_packages.move_to_end(package)
        while len(self._known_packages) > 50_000:
            self._known_packages.popitem(last=False)
        for package in outcome.deleted:
            self._descriptions.pop(package, None)
            self._known_packages.pop(package, None)
        for package, name in outcome.names:
            if (package, name) in self._names_seen:
                self._names_seen.move_to_end((package, name))
                continue
            self._names_seen[(package, name)] = None
            if len(self._names_seen) > 50_000:
                self._names_seen.popitem(last=False)
            if name != package:
                outcome.page(package, None, PageChange.NEW_NAME)
        if self.build_queue is not None:
            for package, version in outcome.dropped:
                self.build_queue.drop(package, version)
            if outcome.queue_changed:
                self.build_queue.request_refresh()
        for package, version, what in outcome.pages:
            self._tell_listeners(package, version, what)

    def _tell_listeners(self, package, version, what):
        for listener in self.page_listeners:
            try:
                listener(package, version, what)
            except Exception:
                self.log.failure("page listener {listener!r} failed on "
                                 "{package} {version} ({what})",
                                 listener=listener, package=package,
                                 version=version, what=what)

    # the JSON API ----------------------------------------------------------

    def _json_usable(self):
        return self.clock.seconds() >= self._json_retry_at

    async def _prefetch(self, chunk):
        """Ask the JSON API, a few requests at a time, about the releases
        and projects *chunk* touches.  Failures are recorded, never raised.
        """
        releases, projects = {}, {}
        stale_will_do = {}
        for event in chunk:
            if event.action in (Action.ADD_FILE, Action.YANK,
                                Action.REMOVE_FILE):
                key = (event.package, event.version)
                releases[key] = max(releases.get(key, 0), event.serial)
                # a yank's reason and a removal's remaining files must be
                # current; a new file's release details can be a bit old
                stale_will_do[key] = stale_will_do.get(key, True) and \
                    event.action is Action.ADD_FILE
            elif event.action is Action.CREATE or (
                    event.action is Action.RENAME and
                    event.old_package != event.package):
                projects[event.package] = max(projects.get(event.package, 0),
                                              event.serial)
        details = Details()
        if not self._json_usable():
            details.releases = dict.fromkeys(releases, FAILED)
            details.projects = dict.fromkeys(projects, FAILED)
            return details

        async def fetch(store, key, query):
            try:
                store[key] = await self._interruptible(query)
            except defer.CancelledError:
                store[key] = FAILED
            except TooLarge:
                store[key] = TOO_LARGE
            except PyPIProblem as problem:
                store[key] = FAILED
                self._json_failed(problem)
            else:
                self._json_worked()

        work = [defer.Deferred.fromCoroutine(fetch(
                    details.releases, key,
                    self.json.release(key[0], key[1], serial,
                                      allow_stale=stale_will_do[key])))
                for key, serial in releases.items()]
        work += [defer.Deferred.fromCoroutine(fetch(
                     details.projects, package,
                     self.json.project(package, serial)))
                 for package, serial in projects.items()]
        if work:
            await defer.gatherResults(work, consumeErrors=True)
        return details

    def _json_failed(self, problem):
        if isinstance(problem, Malformed):
            self.log.warn("PyPI's JSON API gave a malformed answer "
                          "({problem}); the release details will be asked "
                          "for again later", problem=problem)
            return
        delay = self.json_backoff.failed(problem.retry_after)
        self._json_retry_at = self.clock.seconds() + delay
        if self._json_trouble is None:
            self.log.warn("PyPI's JSON API failed ({problem}); going on "
                          "without release details for {delay:.0f} s, they "
                          "will be filled in later",
                          problem=problem, delay=delay)
        else:
            self.log.debug("PyPI's JSON API failed again ({problem})",
                           problem=problem)
        self._json_trouble = str(problem)

    def _json_worked(self):
        self.json_backoff.succeeded()
        if self._json_trouble is not None:
            self.log.info("PyPI's JSON API answers again")
            self._json_trouble = None

    def _want_repair(self, key, serial):
        wanted = self._repairs.get(key)
        if wanted is None:
            if len(self._repairs) >= self.max_repairs:
                return
            self._repairs[key] = wanted = [0, serial]
        wanted[1] = max(wanted[1], serial)

    async def _repair_some(self):
        """Ask the JSON API again about releases and projects it failed on,
        or answered about before PyPI's CDN had caught up with the journal,
        and bring the database in line with the answer."""
        for key in list(self._repairs)[:self.repairs_per_poll]:
            if self._stopping or not self._json_usable():
                return
            kind, package, extra = key
            attempt = self._repairs[key]
            try:
                if kind == "release":
                    found = await self._interruptible(self.json.release(
                        package, extra, attempt[1], allow_stale=False))
                else:
                    found = await self._interruptible(self.json.project(
                        package, attempt[1], allow_stale=False))
            except defer.CancelledError:
                return
            except TooLarge:
                # logged by the JSON client; asking again fetches the same
                del self._repairs[key]
                continue
            except PyPIProblem as problem:
                self._json_failed(problem)
                found = FAILED
            else:
                self._json_worked()
            as_of = getattr(found, "as_of", getattr(found, "last_serial", 0))
            if found is FAILED or (found is not None and
                                    as_of < attempt[1]):
                attempt[0] += 1
                if attempt[0] >= 5:
                    del self._repairs[key]
                    self.log.warn("giving up on the details of {package} "
                                  "{what} from PyPI's JSON API",
                                  package=package, what=extra or "")
                else:
                    self._repairs.move_to_end(key)
                continue
            del self._repairs[key]
            if found is not None:
                await self._repair(kind, package, extra, found)

    async def _repair(self, kind, package, extra, found):
        async def work(tx):
            outcome = Outcome()
            applier = Applier(tx, Details(), outcome,
                               self.skip_pure_wheels, self._descriptions)
            if kind == "release":
                await applier.sync_release(package, extra, found)
            elif await applier._package_exists(package):
                if kind == "project":
                    await applier.add_project(package, extra, found,
                                              self.clock.seconds())
                else:
                    await applier._describe(package, found.summary)
            await applier.finish()
            return outcome
        await self._after_commit(await in_transaction(self.db, work))

    # population ------------------------------------------------------------

    async def _populate(self):
        """Record every package PyPI has, with its releases; the serial to
        follow the journal from.  Resumable: packages already recorded are
        left alone, and the serial is saved only at the end."""
        serial = await self._interruptible(
            self.xmlrpc.changelog_last_serial())
        names = await self._interruptible(
            self.xmlrpc.list_packages_with_serial())
        # PyPI has ~740,000 projects: about a second of canonical names
        # and sorting, done where the reactor does not wait
        recorded = []
        async for page in self.db.package_name_pages():
            recorded.extend(page)
        todo = await in_thread(self.clock, _unrecorded, names, recorded)
        self.log.info("populating the database from PyPI: {todo} of "
                      "{total} packages to record (journal serial {serial})",
                      todo=len(todo), total=len(names), serial=serial)
        self.json.prefer_projects = True
        failed = []
        for start in range(0, len(todo), self.populate_group):
            if self._stopping:
                raise defer.CancelledError("stopping while populating")
            group = todo[start:start + self.populate_group]
            failed += await self._populate_group(group, retry_failures=False)
            if self._stopping:
                raise defer.CancelledError("stopping while populating")
            if start and start % (self.populate_group * 100) == 0:
                self.log.info("populated {done} of {todo} packages",
                              done=start, todo=len(todo))
        if failed:
            # a second chance; then the bare package, details later
            await self._populate_group(failed, retry_failures=True)
        self.log.info("population done: following PyPI's journal from "
                      "serial {serial}", serial=serial)
        return serial

    async def _populate_group(self, names, retry_failures):
        found = {}

        async def fetch(name):
            try:
                found[name] = await self._interruptible(
                    self.json.project(name))
            except defer.CancelledError:
                found[name] = FAILED
            except TooLarge:
                found[name] = TOO_LARGE
            except PyPIProblem as problem:
                found[name] = FAILED
                self._json_failed(problem)

        await defer.gatherResults(
            [defer.Deferred.fromCoroutine(fetch(n)) for n in names],
            consumeErrors=True)
        now = self.clock.seconds()
        failed = [n for n in names if found[n] is FAILED]

        async def work(tx):
            outcome = Outcome()
            applier = Applier(tx, Details(), outcome,
                               self.skip_pure_wheels, self._descriptions)
            for name in names:
                package = canonicalize_name(name)
                project = found[name]
                if project is TOO_LARGE:
                    # its releases come with their journal events
                    self.log.warn("recorded {name} without its releases: "
                                  "PyPI's document of it is too large",
                                  name=name)
                    await applier._ensure_package(package, name, now)
                elif project is FAILED:
                    if not retry_failures:
                        continue
                    outcome.repair(("project", package, name), 0)
                    await applier._ensure_package(package, name, now)
                elif project is not None:
                    await applier.add_project(package, name, project, now)
            await applier.finish()
            return outcome

        await self._after_commit(await in_transaction(self.db, work))
        return failed


def _unrecorded(names, recorded):
    """The *names* whose canonical form is not among *recorded*, sorted."""
    recorded = set(recorded)
    return sorted(name for name in names
                  if canonicalize_name(name) not in recorded)


def new_pypi_follower(db, reactor, output_path, *, xmlrpc_url, json_url,
                      **options):
    """A :class:`PyPIFollower` with its own HTTP connection pool (closed
    when it stops) shared by its XML-RPC and JSON clients."""
    http, pool = new_http_client(reactor)
    return PyPIFollower(
        db, reactor, PyPIXmlRpc(http, reactor, xmlrpc_url),
        PyPIJson(http, reactor, json_url), output_path, http_pool=pool,
        **options)


def page_writer_listener(page_writer, tree_effects):
    """A page listener that turns the follower's changes into the page
    writer's requests; deletions wake *tree_effects*
    (:class:`~piwtwist.master.tree_effects.TreeEffects`), which removes
    what the database recorded as deleted and rewrites the pages."""
    def changed(package, version, what):
        if what in (PageChange.PACKAGE_DELETED, PageChange.VERSION_DELETED):
            tree_effects.request_deletions()
        elif what in (PageChange.DESCRIPTION, PageChange.NEW_NAME):
            page_writer.request_rewrite(package, both=False)
            page_writer.rewrite_search()
        else:
            page_writer.request_rewrite(package, both=True)
            if what == PageChange.PACKAGE_ADDED:
                page_writer.rewrite_index()
                page_writer.rewrite_search()
    return changed
