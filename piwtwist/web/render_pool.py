"""Project pages rendered in worker processes.

genshi is about half of the CPU a project's pages cost, and in the master's
process it shares one core (and the GIL) with the reactor, the database
answers and the file writes.  A full rewrite of PyPI's 740,000 projects is
then hours long.  Worker processes render the two HTML pages of a project
from its facts (plain attrs records, pickled to them) on the other cores,
and hand the bytes back; the master keeps everything else.

Workers come from a ``forkserver`` (never a fork of the threaded master),
start on the first page and are replaced when one dies: the page in hand is
then rendered in the master, cooperatively, as without a pool, so a dying
worker costs time, never a page.
"""

import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from twisted.internet import defer
from twisted.logger import Logger

from . import render

#: New pools broken in a row (without a page rendered) before the pool
#: gives up: workers that cannot even start would be started for ever.
GIVE_UP_AFTER = 3

#: The renderer of this worker process, made once by :func:`_start_worker`.
_renderer = None


def _start_worker(site_name, site_url, directory):
    global _renderer
    # the master says when to go (systemd and a terminal signal the whole
    # group): a worker killed mid-page would cost the master its render
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _renderer = render.Renderer(site_name=site_name, site_url=site_url,
                                directory=directory)


def _render_project(project, both):
    """Worker: the project page's bytes, and the simple page's when
    *both*."""
    page = render.serialize(_renderer.project_page(project))
    simple = render.serialize(_renderer.simple_project(project)) \
        if both else None
    return page, simple


class RenderPool:
    """*processes* workers rendering with a renderer like *renderer*."""

    log = Logger()

    def __init__(self, reactor, renderer, processes):
        if processes < 1:
            raise ValueError("a render pool needs at least one process")
        self.reactor = reactor
        self.renderer = renderer
        self.processes = processes
        self._executor = None
        #: pages rendered in the master because a worker died
        self.fallbacks = 0
        #: pools broken since a page was last rendered by a worker
        self._broken_in_a_row = 0
        #: set when workers keep dying: every page is rendered in the master
        self.given_up = False

    def _pool(self):
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.processes,
                mp_context=multiprocessing.get_context("forkserver"),
                initializer=_start_worker,
                initargs=(self.renderer.site_name, self.renderer.site_url,
                          self.renderer.directory))
        return self._executor

    def render_project(self, project, both):
        """A Deferred firing with ``(project_page, simple_page or None)``
        as bytes, or with None when the caller must render them itself (a
        worker died: the next page gets a new pool)."""
        if self.given_up:
            return defer.succeed(None)
        result = defer.Deferred()
        try:
            future = self._pool().submit(_render_project, project, both)
        except (BrokenProcessPool, RuntimeError) as e:
            return defer.succeed(self._broken(project, e))

        def relay(future):
            try:
                pages = future.result()
                self._broken_in_a_row = 0
                result.callback(pages)
            except BrokenProcessPool as e:
                result.callback(self._broken(project, e))
            except BaseException:
                result.errback()

        # the future completes in a thread of the executor's
        future.add_done_callback(
            lambda future: self.reactor.callFromThread(relay, future))
        return result

    def _broken(self, project, why):
        self.log.warn("a page-rendering process failed ({why}); the pages "
                      "of {package} are rendered in the master",
                      why=str(why) or why.__class__.__name__,
                      package=project.package)
        self.fallbacks += 1
        broken, self._executor = self._executor, None
        if broken is not None:
            self._broken_in_a_row += 1
            broken.shutdown(wait=False, cancel_futures=True)
        if self._broken_in_a_row >= GIVE_UP_AFTER and not self.given_up:
            self.given_up = True
            self.log.error("page-rendering processes failed {count} times "
                           "in a row; the master renders every page itself "
                           "from now on (restart it to try them again)",
                           count=self._broken_in_a_row)
        return None

    def stop(self):
        """Let the workers go (pages in hand are finished first by the
        caller: the page writer stops its own work before this)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

