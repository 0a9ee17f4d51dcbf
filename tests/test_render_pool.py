"""Project pages rendered by worker processes: the same bytes as in the
master, and a worker killed mid-rewrite costs no page."""

import os
import signal
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.test_web_pages import example_project
from tests.web_support import add_release, page_writer

PAGES = ("project/foo-bar/index.html", "simple/foo-bar/index.html",
         "project/foo-bar/json/index.json", "simple/foo-bar/index.json")


@pytest.fixture
def output(tmp_path):
    path = tmp_path / "www"
    path.mkdir()
    return path


def read_pages(output):
    return {name: (output / name).read_bytes() for name in PAGES}


async def pooled_writer(db, output, reactor, names):
    """A page writer with one render worker, and a release of each of
    *names* to write."""
    for name in names:
        await add_release(db, name, "1.0")
    return page_writer(db, output, reactor, render_processes=1)


@pytest_twisted.ensureDeferred
async def test_worker_pages_are_the_masters_pages(db, output, tmp_path,
                                                  reactor):
    await example_project(db, output, tmp_path)
    here = page_writer(db, output, reactor)
    assert here.render_pool is None
    assert await here.write_project("foo-bar")
    expected = read_pages(output)
    for name in PAGES:
        (output / name).unlink()
    pooled = page_writer(db, output, reactor, render_processes=1)
    try:
        assert await pooled.write_project("foo-bar")
        assert read_pages(output) == expected
        # rendered over there: the master holds no renderer's work
        assert pooled.render_pool.fallbacks == 0
        workers = list(pooled.render_pool._executor._processes)
        assert workers and os.getpid() not in workers
    finally:
        pooled.render_pool.stop()


@pytest_twisted.ensureDeferred
async def test_a_killed_worker_costs_no_page(db, output, reactor):
    writer = await pooled_writer(db, output, reactor,
                                 ("one", "two", "three"))
    try:
        assert await writer.write_project("one")
        [worker] = list(writer.render_pool._executor._processes)
        os.kill(worker, signal.SIGKILL)
        # the page in hand when the worker died is rendered in the master
        assert await writer.write_project("two")
        assert b"two" in (output / "project" / "two" / "index.html"
                          ).read_bytes()
        assert writer.render_pool.fallbacks == 1
        # and the next one by a new worker
        assert await writer.write_project("three")
        assert writer.render_pool.fallbacks == 1
        [replacement] = list(writer.render_pool._executor._processes)
        assert replacement != worker
        assert (output / "simple" / "three" / "index.html").is_file()
    finally:
        writer.render_pool.stop()


@pytest_twisted.ensureDeferred
async def test_workers_outlive_a_terminal_signal(db, output, reactor):
    """systemd (and a terminal) signal the master's whole group when it is
    to stop: the workers leave it to the master to say when they go, so
    the pages in hand are still theirs to finish."""
    writer = await pooled_writer(db, output, reactor, ("one", "two"))
    try:
        assert await writer.write_project("one")
        [worker] = list(writer.render_pool._executor._processes)
        os.kill(worker, signal.SIGTERM)
        os.kill(worker, signal.SIGINT)
        assert await writer.write_project("two")
        assert writer.render_pool.fallbacks == 0
        assert list(writer.render_pool._executor._processes) == [worker]
    finally:
        writer.render_pool.stop()


@pytest_twisted.ensureDeferred
async def test_workers_that_cannot_start_are_given_up(db, output, tmp_path,
                                                      reactor,
                                                      observe_errors):
    """Workers whose renderer cannot even be made (templates gone) would
    be started again for every page: after a few broken pools the master
    renders everything itself, and says so once."""
    from piwtwist.web import render_pool
    names = ("one", "two", "three", "four", "five")
    writer = await pooled_writer(db, output, reactor, names)
    writer.render_pool.renderer = render_pool.render.Renderer(
        directory=tmp_path / "no-templates-here")
    try:
        for name in names:
            assert await writer.write_project(name)
            assert (output / "project" / name / "index.html").is_file()
        assert writer.render_pool.given_up
        assert writer.render_pool.fallbacks == render_pool.GIVE_UP_AFTER
        # said once, as an error: the operator has something to fix
        [said] = observe_errors
        assert "renders every page itself" in said["log_format"]
        observe_errors.clear()
    finally:
        writer.render_pool.stop()


@pytest_twisted.ensureDeferred
async def test_a_pool_broken_under_several_projects_counts_once(db, output,
                                                                reactor):
    names = ("one", "two", "three", "four")
    writer = await pooled_writer(db, output, reactor, names)
    try:
        assert await writer.write_project("one")
        [worker] = list(writer.render_pool._executor._processes)
        os.kill(worker, signal.SIGKILL)
        results = await defer.gatherResults(
            [defer.Deferred.fromCoroutine(writer.write_project(name))
             for name in names[1:]])
        assert results == [True, True, True]
        for name in names:
            assert (output / "project" / name / "index.html").is_file()
        # every project in hand was made in the master, but one pool broke
        assert writer.render_pool.fallbacks >= 1
        assert writer.render_pool._broken_in_a_row <= 1
        assert not writer.render_pool.given_up
    finally:
        writer.render_pool.stop()


@pytest_twisted.ensureDeferred
async def test_a_project_the_worker_cannot_write_is_not_a_broken_pool(
        db, output, reactor):
    """A worker's error writing one project (here its directory is a file)
    is that project's: said as a warning, the pool stays."""
    (output / "project").mkdir()
    (output / "project" / "blocked").write_text("in the way")
    writer = await pooled_writer(db, output, reactor, ("blocked", "fine"))
    try:
        assert not await writer.write_project("blocked")
        assert await writer.write_project("fine")
        assert writer.render_pool.fallbacks == 0
        assert writer.render_pool._broken_in_a_row == 0
        (output / "project" / "blocked").unlink()
        assert await writer.write_project("blocked")
        assert (output / "project" / "blocked" / "index.html").is_file()
    finally:
        writer.render_pool.stop()


def niceness(pid):
    fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(
        ")", 1)[1].split()
    return int(fields[16])          # field 19 of proc(5)


@pytest_twisted.ensureDeferred
async def test_workers_yield_the_cores_to_the_master(db, output, reactor):
    """Workers take what the master and PostgreSQL leave idle: they run
    niced, so the reactor is never behind them for a core."""
    from piwtwist.web.render_pool import WORKER_NICENESS
    writer = await pooled_writer(db, output, reactor, ["one"])
    try:
        assert await writer.write_project("one")
        [worker] = list(writer.render_pool._executor._processes)
        assert niceness(worker) == min(19, niceness(os.getpid()) +
                                       WORKER_NICENESS)
    finally:
        writer.render_pool.stop()
