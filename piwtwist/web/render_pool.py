"""A project's pages made and written in worker processes.

In the master's process, genshi alone was about half of a project's CPU,
and the rest (decoding the database's answer, the JSON, publishing wheels'
metadata, writing four files) shared the same core and GIL with the
reactor: a full rewrite of PyPI's 740,000 projects took hours.  Workers
take a project's row as the database gave it (plain text, cheap to pickle)
and do all of that (:func:`~piwtwist.web.project_files.write_project`),
returning only what the master must log or act on.  Build logs stay with
the master, which has the database.

Workers come from a ``forkserver`` (never a fork of the threaded master),
started in a thread when the first page is asked for, and are replaced when
one dies: the page in hand is then made in the master, as without a pool,
so a dying worker costs time, never a page.
"""

import multiprocessing
import os
import select
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import project_files, render

#: New pools broken in a row (without a page rendered) before the pool
#: gives up: workers that cannot even start would be started for ever.
GIVE_UP_AFTER = 3

#: How much nicer than the master workers are (nice(2)): they get the
#: cores the master, its reactor and PostgreSQL leave idle.
WORKER_NICENESS = 10

#: The renderer of this worker process, made once by :func:`_start_worker`.
_renderer = None


def _end_with(master_pid):
    """Leave as soon as the master's process ends.  A worker ignores
    SIGTERM and waits on its queue, and multiprocessing's forkserver lives
    as long as its children do, so a master killed outright (the OOM
    killer, ``kill -9``), or gone before telling its workers, would leave
    them running for ever.  A thread waits on the master's pidfd."""
    try:
        pidfd = os.pidfd_open(master_pid)
    except ProcessLookupError:
        os._exit(0)
    except (AttributeError, OSError):    # no pidfd here: the master's stop
        return

    def watch():
        select.select([pidfd], [], [])
        os._exit(0)

    threading.Thread(target=watch, name="master watch", daemon=True).start()


def _start_worker(master_pid, site_name, site_url, directory):
    global _renderer
    _end_with(master_pid)
    os.nice(WORKER_NICENESS)
    # the master says when to go (systemd and a terminal signal the whole
    # group): a worker killed mid-page would cost the master its render
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _renderer = render.Renderer(site_name=site_name, site_url=site_url,
                                directory=directory)


def _write_project(output, package, both, row, build_abis, preinstalled,
                   logs):
    """Worker: a project's logs and pages, made and written."""
    return project_files.write_project(_renderer, output, package, both, row,
                                       build_abis, preinstalled, logs)


class PoolStopped(Exception):
    """The pool was stopped while its workers started."""


def _ready():
    """Worker: nothing; answered once the worker has started."""
    return True


def _start_all(executor, processes):
    """Thread: start the forkserver and every worker of *executor* (each
    submit finding no idle worker starts one), so that no later submit on
    the reactor starts a process."""
    for future in [executor.submit(_ready) for _ in range(processes)]:
        future.result()
    return executor


class RenderPool:
    """*processes* workers writing projects with a renderer like
    *renderer*."""

    log = Logger()

    def __init__(self, reactor, renderer, processes):
        if processes < 1:
            raise ValueError("a render pool needs at least one process")
        self.reactor = reactor
        self.renderer = renderer
        self.processes = processes
        self._executor = None
        #: callers waiting for a pool being started
        self._waiting = None
        #: projects made in the master because a worker died
        self.fallbacks = 0
        #: pools broken since a project was last made by a worker
        self._broken_in_a_row = 0
        #: set when workers keep dying: every page is rendered in the master
        self.given_up = False
        #: counts the stops: a pool started before a stop is not kept
        self._stops = 0

    def _new_executor(self):
        return ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=_start_worker,
            initargs=(os.getpid(), self.renderer.site_name,
                      self.renderer.site_url, self.renderer.directory))

    def _ready_pool(self):
        """A Deferred firing with a pool whose workers run; they start in
        a thread (the forkserver and a process each: tens of ms)."""
        if self._executor is not None:
            return defer.succeed(self._executor)
        waiter = defer.Deferred()
        if self._waiting is not None:
            self._waiting.append(waiter)
            return waiter
        self._waiting = [waiter]
        executor = self._new_executor()
        stops = self._stops

        def started(result):
            waiting, self._waiting = self._waiting, None
            if stops != self._stops and not isinstance(result, Failure):
                result = Failure(PoolStopped())
            if isinstance(result, Failure):
                executor.shutdown(wait=False, cancel_futures=True)
                if not result.check(PoolStopped):
                    self._count_broken()
            else:
                self._executor = executor
            for each in waiting:
                each.callback(result) if not isinstance(result, Failure) \
                    else each.errback(result)

        threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), _start_all,
            executor, self.processes).addBoth(started)
        return waiter

    async def write_project(self, output, package, both, row, build_abis,
                            preinstalled, logs):
        """The worker's :class:`~piwtwist.web.project_files.Written`, or
        None when the caller must do the work itself (a worker died: the
        next project gets a new pool)."""
        if self.given_up:
            return None
        executor = None
        try:
            executor = await self._ready_pool()
            future = executor.submit(_write_project, output, package, both,
                                     row, build_abis, preinstalled, logs)
        except PoolStopped:
            return None
        except (BrokenProcessPool, RuntimeError) as e:
            # RuntimeError: a pool shut down (by a stop, or broken)
            return self._broken(package, e, executor)
        try:
            written = await self._completed(future)
        except BrokenProcessPool as e:
            return self._broken(package, e, executor)
        self._broken_in_a_row = 0
        return written

    def _completed(self, future):
        """A Deferred of *future*'s result, fired on the reactor."""
        result = defer.Deferred()

        def relay(future):
            try:
                result.callback(future.result())
            except BaseException:
                result.errback()

        # the future completes in a thread of the executor's
        future.add_done_callback(
            lambda future: self.reactor.callFromThread(relay, future))
        return result

    def _broken(self, package, why, executor):
        """The pool *executor* (None: one that did not start) failed the
        project *package*; every project it had in hand comes here, but a
        pool counts once."""
        self.log.warn("a page-rendering process failed ({why}); the pages "
                      "of {package} are rendered in the master",
                      why=str(why) or why.__class__.__name__,
                      package=package)
        self.fallbacks += 1
        if executor is not None and executor is self._executor:
            self._executor = None
            executor.shutdown(wait=False, cancel_futures=True)
            self._count_broken()
        return None

    def _count_broken(self):
        self._broken_in_a_row += 1
        if self._broken_in_a_row >= GIVE_UP_AFTER and not self.given_up:
            self.given_up = True
            self.log.error("page-rendering processes failed {count} times "
                           "in a row; the master renders every page itself "
                           "from now on (restart it to try them again)",
                           count=self._broken_in_a_row)

    def stop(self):
        """Let the workers go (pages in hand are finished first by the
        caller: the page writer stops its own work before this)."""
        self._stops += 1
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
