"""A real builder (``BuilderService``) against a real builder hub and
database: whatever stops a build from starting becomes a failed build with
a one-line reason, recorded by the master, and the builder asks for the
next job instead of holding this one forever."""

import os
from datetime import datetime, timezone

import attrs
import pytest
import pytest_twisted

from piwtwist.builder.client import BuilderService
from piwtwist.builder.sandbox import FIND_BWRAP
from tests.test_builder_trust import (  # noqa: F401 - fixtures
    ABI, SECRET, events, master)
from tests.test_db_queue import release

#: newer than the releases the master fixture adds: offered first
NEWEST = datetime(2030, 1, 1, tzinfo=timezone.utc)


async def run_builder(master, reactor, build_dir, label, bwrap=None,
                      before_start=None):
    """Start a builder; return it and the labels of every Idle the hub
    answered."""
    asked = []
    next_action = master.hub.next_action

    def spy(connection):
        asked.append(connection.info.label)
        return next_action(connection)

    master.hub.next_action = spy
    builder = BuilderService(reactor, master.endpoint(), SECRET, build_dir,
                             label=label, busy_timeout=60.0, bwrap=bwrap)
    builder.facts = attrs.evolve(builder.facts, abi_tag=ABI)
    return builder, asked


async def stop(builder):
    await builder.stopService()


async def failed_build_of(master, package, version):
    def recorded():
        builds, _ = master.rows()
        return [b for b in builds if b[:2] == (package, version)]
    await master.wait(recorded, f"the failed build of {package} {version}",
                      timeout=30)
    return recorded()[0]


async def assert_wedge_becomes_a_failure(master, reactor, builder, asked,
                                         package, version, reason_words):
    if not builder.running:
        builder.startService()
    try:
        _, _, abi, status, label, reason = await failed_build_of(
            master, package, version)
        assert (abi, status, label) == (ABI, False, builder.label)
        for words in reason_words:
            assert words in reason, reason
        assert "\n" not in reason
        # and it asked for the next job
        await master.wait(lambda: asked.count(builder.label) >= 2,
                          "the builder asking for more work")
        builds, _ = master.rows()
        assert [b for b in builds if b[:2] == (package, version)] == [
            (package, version, ABI, False, builder.label, reason)]
    finally:
        await stop(builder)


@pytest_twisted.ensureDeferred
async def test_a_version_pip_will_not_take(master, reactor, db, tmp_path):
    # legacy PyPI versions with spaces and commas exist; the newest is
    # offered first
    await release(db, "legacy", "1.0 beta, 2", released=NEWEST)
    builder, asked = await run_builder(master, reactor, tmp_path / "build",
                                       "pi-legacy")
    await assert_wedge_becomes_a_failure(
        master, reactor, builder, asked, "legacy", "1.0 beta, 2",
        ["could not start the build"])
    assert os.listdir(tmp_path / "build") == []


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("bwrap, missing", [(None, "setsid"),
                                            (FIND_BWRAP, "bubblewrap")])
async def test_a_missing_tool(master, reactor, db, tmp_path, monkeypatch,
                              bwrap, missing):
    await release(db, "needy", "1.0", released=NEWEST)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    builder, asked = await run_builder(master, reactor, tmp_path / "build",
                                       "pi-bare", bwrap=bwrap)
    await assert_wedge_becomes_a_failure(
        master, reactor, builder, asked, "needy", "1.0",
        ["could not start the build", missing])


@pytest_twisted.ensureDeferred
async def test_a_build_directory_that_is_not_one(master, reactor, db,
                                                  tmp_path):
    await release(db, "homeless", "1.0", released=NEWEST)
    build_dir = tmp_path / "build"
    builder, asked = await run_builder(master, reactor, build_dir,
                                       "pi-broken-disk")
    # the hub hands out nothing until the directory is broken
    master.hub.pause()
    builder.startService()
    await master.wait(lambda: "pi-broken-disk" in asked, "a first Idle")
    # the directory is replaced by a file while the builder runs (a disk
    # remounted, a careless operator): no build can make its folders
    build_dir.rmdir()
    build_dir.write_text("not a directory")
    asked.clear()
    master.hub.resume_all()
    await assert_wedge_becomes_a_failure(
        master, reactor, builder, asked, "homeless", "1.0",
        ["could not start the build"])
