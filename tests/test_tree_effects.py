"""The output tree follows the database (docs/crash-consistency.md): wheels
are published only once their build is committed, deletions are recorded
with the change that causes them and carried out after a crash, and the
audit repairs what else went wrong.  Real PostgreSQL, a temporary output
tree; a "crash" is a new TreeEffects over the same database and tree, the
effects of the old one never carried out."""

import hashlib
import os
import random
import time
from datetime import timedelta

import pytest
import pytest_twisted
from twisted.internet.defer import succeed
from twisted.logger import globalLogPublisher, formatEvent

from piwtwist.db.records import BuildResult
from piwtwist.master import tree_effects as tree_effects_module
from piwtwist.master.published_wheels import publish_build, wheel_records
from piwtwist.master.tree_effects import TreeEffects
from piwtwist.protocol.transfer import DATA_NAMES, MAX_CHUNK_SIZE
from piwtwist.transfer.receiver import FileReceiver
from piwtwist.web import layout
from tests.tree_support import FakePageWriter, check_invariant

ALIASES = {"linux_armv7l": ("linux_armv6l",)}


@pytest.fixture
def output(tmp_path):
    path = tmp_path / "www"
    path.mkdir()
    return path


def wheel_facts(package, version, data, platform="linux_armv7l"):
    """What a builder says of a wheel of *package* with bytes *data*."""
    tag = package.replace("-", "_")
    filename = f"{tag}-{version}-cp311-cp311-{platform}.whl"
    return {"filename": filename, "filesize": len(data),
            "filehash": hashlib.sha256(data).hexdigest(),
            "package_tag": tag, "package_version_tag": version,
            "py_version_tag": "cp311", "abi_tag": "cp311",
            "platform_tag": platform, "requires_python": "",
            "dependencies": []}


def sender(data):
    """A call_remote that serves *data* as the builder's file."""
    def call_remote(command, filename, offset, length):
        piece = data[offset:offset + length]
        return succeed({name: piece[start:start + MAX_CHUNK_SIZE]
                        for name, start in zip(
                            DATA_NAMES, range(0, len(piece),
                                              MAX_CHUNK_SIZE))})
    return call_remote


def receiver_for(output, reactor):
    return FileReceiver(output, reactor, durable=False)


def build_of(package, version, wheel):
    files, dependencies = [], {}
    for build_file, deps in wheel_records(package, wheel, ALIASES):
        files.append(build_file)
        dependencies[build_file.filename] = deps
    return BuildResult(package=package, version=version, abi_tag="cp311",
                       built_by=1, duration=timedelta(seconds=3),
                       status=True, output="built", files=tuple(files),
                       dependencies=dependencies)


async def release(db, package, version):
    await db.set_build_abis(["cp311"])
    await db.add_new_package(package)
    await db.add_new_package_version(package, version)


async def built(db, output, reactor, package, version, seed=1):
    """A build of *package* *version* received, recorded, published, with
    its metadata and log beside it, as the master leaves them; returns
    (build id, wheel facts)."""
    await release(db, package, version)
    data = random.Random(seed).randbytes(3000)
    wheel = wheel_facts(package, version, data)
    receiver = receiver_for(output, reactor)
    await receiver.receive(sender(data), package, wheel["filename"],
                           len(data), wheel["filehash"], publish=False)
    build_id = await db.log_build(build_of(package, version, wheel))
    assert await publish_build(receiver, package, [wheel], ALIASES) == []
    directory = output / "simple" / package
    (directory / (wheel["filename"] + ".metadata")).write_text("meta")
    layout.write_atomically(layout.log_path(output, build_id), b"log")
    return build_id, wheel


def effects_for(db, output, reactor, pages=None, **kw):
    return TreeEffects(db, output, reactor, receiver_for(output, reactor),
                       pages or FakePageWriter(), platform_aliases=ALIASES,
                       **kw)


def pending(test_db):
    return test_db.sql("SELECT what, package, filename, build_id "
                       "FROM pending_deletions ORDER BY deletion_id")


def tree(output):
    found = set()
    for directory, _, filenames in os.walk(output):
        for name in filenames:
            found.add(os.path.relpath(os.path.join(directory, name), output))
    return found


# publishing after the commit -------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_wheel_is_seen_only_once_its_build_is_committed(
        db, test_db, output, reactor):
    await release(db, "foo", "1.0")
    data = random.Random(7).randbytes(5000)
    wheel = wheel_facts("foo", "1.0", data)
    receiver = receiver_for(output, reactor)
    staged = await receiver.receive(sender(data), "foo", wheel["filename"],
                                    len(data), wheel["filehash"],
                                    publish=False)
    assert staged == receiver.staged_path(wheel["filename"],
                                          wheel["filehash"])
    assert staged.read_bytes() == data
    assert not (output / "simple").exists()

    # the master dies before the commit: after the restart nothing of it is
    # published (and the staged file waits for its builder to report again)
    effects = effects_for(db, output, reactor)
    assert await effects.sweep_incoming() == (0, 0)
    assert not (output / "simple").exists() and staged.exists()

    # the builder reports again: the staged file is taken as it is
    again = await receiver.receive(
        lambda *a, **kw: pytest.fail("fetched again"), "foo",
        wheel["filename"], len(data), wheel["filehash"], publish=False)
    assert again == staged

    # committed, and the master dies before publishing: the restart's sweep
    # publishes it, with its platform alias
    await db.log_build(build_of("foo", "1.0", wheel))
    assert not (output / "simple").exists()
    effects = effects_for(db, output, reactor)
    assert await effects.sweep_incoming() == (1, 0)
    directory = output / "simple" / "foo"
    native = directory / wheel["filename"]
    alias = directory / wheel["filename"].replace("armv7l", "armv6l")
    assert native.read_bytes() == data and alias.read_bytes() == data
    assert os.path.samefile(native, alias)
    assert not staged.exists() and not staged.parent.exists()
    assert effects.page_writer.rewrites == ["foo"]
    assert check_invariant(output, test_db, pages=False) == []
    # a second sweep has nothing to do
    assert await effects_for(db, output, reactor).sweep_incoming() == (0, 0)


@pytest_twisted.ensureDeferred
async def test_publishing_never_changes_a_recorded_files_bytes(
        db, test_db, output, reactor):
    build_id, wheel = await built(db, output, reactor, "foo", "1.0")
    path = output / "simple" / "foo" / wheel["filename"]
    before = path.read_bytes()
    # a build of the same file name with other bytes is refused before
    # anything is fetched, and whatever follows leaves the file alone
    other = random.Random(99).randbytes(3000)
    receiver = receiver_for(output, reactor)
    with pytest.raises(Exception, match="already published"):
        await receiver.receive(sender(other), "foo", wheel["filename"],
                               len(other),
                               hashlib.sha256(other).hexdigest(),
                               publish=False)
    assert path.read_bytes() == before
    # a release deleted while it was built: its build is never recorded,
    # and the earlier build's file stays where its row says
    await release(db, "foo", "2.0")
    assert check_invariant(output, test_db, pages=False) == []


@pytest_twisted.ensureDeferred
async def test_stale_incoming_files_are_purged(db, test_db, output, reactor):
    await release(db, "foo", "1.0")
    data = random.Random(3).randbytes(2000)
    wheel = wheel_facts("foo", "1.0", data)
    receiver = receiver_for(output, reactor)
    staged = await receiver.receive(sender(data), "foo", wheel["filename"],
                                    len(data), wheel["filehash"],
                                    publish=False)
    partial = output / ".incoming" / "bar-1.0-py3-none-any.whl.part"
    partial.write_bytes(b"half")
    effects = effects_for(db, output, reactor)
    # young: kept (a builder may come back with them)
    assert await effects.sweep_incoming(max_age=3600) == (0, 0)
    old = time.time() - 7200
    os.utime(partial, (old, old))
    os.utime(staged, (old, old))
    # a builder that reports again makes its staged wheel young again
    assert await receiver.receive(
        lambda *a, **kw: pytest.fail("fetched again"), "foo",
        wheel["filename"], len(data), wheel["filehash"],
        publish=False) == staged
    assert await effects.sweep_incoming(max_age=3600) == (0, 1)
    assert not partial.exists() and staged.exists()
    os.utime(staged, (old, old))
    assert await effects.sweep_incoming(max_age=3600) == (0, 1)
    assert not staged.parent.exists()


# deletions: recorded with the commit, carried out after a crash --------------

@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("removal", ["package", "version", "builds"])
async def test_each_deletion_is_recorded_and_replayed(
        db, test_db, output, reactor, removal):
    one, wheel_1 = await built(db, output, reactor, "foo", "1.0", seed=1)
    two, wheel_2 = await built(db, output, reactor, "foo", "2.0", seed=2)
    directory = output / "simple" / "foo"
    layout.write_atomically(output / "project" / "foo" / "index.html", b"p")
    before = tree(output)
    if removal == "package":
        await db.delete_package("foo")
    elif removal == "version":
        await db.delete_version("foo", "1.0")
    else:
        await db.delete_build("foo", "1.0")
    # the master dies now: the database says what the tree owes it
    owed = pending(test_db)
    assert ("file", "foo", wheel_1["filename"], None) in owed
    assert ("log", "foo", "", one) in owed
    assert tree(output) == before

    pages = FakePageWriter()
    effects = effects_for(db, output, reactor, pages)
    assert await effects.carry_out_deletions() == len(owed)
    assert pending(test_db) == []
    assert not (directory / wheel_1["filename"]).exists()
    assert not (directory / (wheel_1["filename"] + ".metadata")).exists()
    assert not layout.log_path(output, one).exists()
    if removal == "package":
        assert not directory.exists()
        assert not (output / "project" / "foo").exists()
        assert not layout.log_path(output, two).exists()
    else:
        assert (directory / wheel_2["filename"]).exists()
        assert layout.log_path(output, two).exists()
    assert pages.written == ["foo"]
    assert check_invariant(output, test_db, pages=False) == []
    # carried out once: nothing more to do
    assert await effects.carry_out_deletions() == 0


@pytest_twisted.ensureDeferred
async def test_a_file_recorded_again_is_never_deleted(
        db, test_db, output, reactor):
    _, wheel = await built(db, output, reactor, "foo", "1.0")
    await db.delete_build("foo", "1.0")
    # rebuilt with the same bytes before the deletion was carried out
    await db.log_build(build_of("foo", "1.0", wheel))
    effects = effects_for(db, output, reactor)
    assert await effects.carry_out_deletions() > 0
    assert (output / "simple" / "foo" / wheel["filename"]).exists()
    assert pending(test_db) == []
    assert check_invariant(output, test_db, pages=False) == []


@pytest_twisted.ensureDeferred
async def test_a_deletion_stays_pending_until_its_files_are_gone(
        db, test_db, output, reactor, monkeypatch):
    _, wheel = await built(db, output, reactor, "foo", "1.0")
    await db.delete_version("foo", "1.0")
    owed = len(pending(test_db))
    real_remove = layout.remove_file

    def refuse(path):
        raise PermissionError(f"cannot remove {path}")
    monkeypatch.setattr(tree_effects_module.layout, "remove_file", refuse)
    effects = effects_for(db, output, reactor)
    done = await effects.carry_out_deletions()
    assert len(pending(test_db)) == owed - done > 0
    assert (output / "simple" / "foo" / wheel["filename"]).exists()
    monkeypatch.setattr(tree_effects_module.layout, "remove_file",
                        real_remove)
    await effects_for(db, output, reactor).carry_out_deletions()
    assert pending(test_db) == []
    assert not (output / "simple" / "foo" / wheel["filename"]).exists()


@pytest_twisted.ensureDeferred
async def test_deletions_stay_inside_the_tree(db, test_db, output, reactor,
                                              tmp_path):
    _, wheel = await built(db, output, reactor, "foo", "1.0")
    elsewhere = tmp_path / "elsewhere"
    directory = output / "simple" / "foo"
    directory.rename(elsewhere)
    directory.symlink_to(elsewhere)
    await db.delete_version("foo", "1.0")
    await effects_for(db, output, reactor).carry_out_deletions()
    assert (elsewhere / wheel["filename"]).exists()
    # refused deletions are not tried for ever
    assert pending(test_db) == []


# the audit --------------------------------------------------------------------

@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest_twisted.ensureDeferred
async def test_the_audit_repairs_the_tree(db, test_db, output, reactor,
                                          logged):
    one, wheel = await built(db, output, reactor, "foo", "1.0")
    _, damaged = await built(db, output, reactor, "foo", "2.0", seed=2)
    _, lost = await built(db, output, reactor, "foo", "3.0", seed=3)
    directory = output / "simple" / "foo"
    # foo's pages were never written; an orphan wheel lies beside its own
    orphan = directory / "foo-0.9-py3-none-any.whl"
    orphan.write_bytes(b"no build records me")
    (directory / (orphan.name + ".metadata")).write_text("meta")
    # a recorded file with other bytes, and one missing
    (directory / damaged["filename"]).unlink()
    (directory / damaged["filename"]).write_bytes(b"x" * 3000)
    for name in (lost["filename"],
                 lost["filename"].replace("armv7l", "armv6l")):
        (directory / name).unlink()
    # a project the database knows but the tree does not
    await db.add_new_package("bar")
    # a deleted project still on disk, with an alias link to it
    gone = output / "simple" / "gone"
    gone.mkdir()
    (gone / "gone-1.0-py3-none-any.whl").write_bytes(b"malware")
    (gone / "index.html").write_text("gone")
    layout.write_atomically(output / "project" / "gone" / "index.html", b"g")
    (output / "project" / "Gone").symlink_to("gone")
    # a pending deletion the master never carried out
    _, removed = await built(db, output, reactor, "baz", "1.0", seed=4)
    await db.delete_package("baz")
    # a stale partial transfer
    partial = output / ".incoming" / "qux-1.0-py3-none-any.whl.part"
    partial.parent.mkdir(exist_ok=True)
    partial.write_bytes(b"half")
    old = time.time() - 3 * 86400
    os.utime(partial, (old, old))

    pages = FakePageWriter()
    effects = effects_for(db, output, reactor, pages, chunk_size=2)
    report = await effects.audit(verify_hashes=True)

    assert report.deletions > 0
    assert not (output / "simple" / "baz").exists()
    assert report.purged == 1 and not partial.exists()
    assert report.orphan_wheels == 1 and not orphan.exists()
    assert not (directory / (orphan.name + ".metadata")).exists()
    assert report.deleted_projects == 1
    assert not gone.exists() and not (output / "project" / "gone").exists()
    assert not os.path.lexists(output / "project" / "Gone")
    assert sorted(report.damaged) == [f"foo/{damaged['filename']}"]
    assert sorted(report.missing) == sorted(
        f"foo/{name}" for name in (lost["filename"], lost["filename"]
                                   .replace("armv7l", "armv6l")))
    assert "foo" in pages.rewrites and "bar" in pages.rewrites
    assert report.pages_queued == len(pages.rewrites)
    assert (directory / wheel["filename"]).exists()
    summaries = [formatEvent(e) for e in logged
                 if formatEvent(e).startswith("tree audit:")]
    assert summaries == [report.summary()]
    assert "1 orphaned wheels and 1 deleted projects removed" in \
        summaries[0]
    assert "2 recorded files missing, 1 with other bytes" in summaries[0]
    # what is left are the recorded files the audit could only report
    problems = check_invariant(output, test_db, pages=False)
    assert problems and all(damaged["filename"] in p or lost["filename"]
                            in p or "armv6l" in p for p in problems)


@pytest_twisted.ensureDeferred
async def test_an_audit_of_an_agreeing_tree_changes_nothing(
        db, test_db, output, reactor):
    await built(db, output, reactor, "foo", "1.0")
    effects = effects_for(db, output, reactor)
    first = await effects.audit()
    before = tree(output)
    second = await effects.audit()
    assert tree(output) == before
    assert (second.orphan_wheels, second.deleted_projects, second.missing,
            second.damaged, second.purged, second.deletions) == (
        0, 0, [], [], 0, 0)
    assert first.wheels == second.wheels == 2
    # foo's pages were never written (the page writer is a stand-in): an
    # audit at start beside a full rewrite counts them and queues nothing
    queued = list(effects.page_writer.rewrites)
    third = await effects.audit(rewrite_pages=False)
    assert third.pages_queued == 1 and effects.page_writer.rewrites == queued
    assert "(left to the full rewrite)" in third.summary()


@pytest_twisted.ensureDeferred
async def test_the_sweep_runs_on_its_own(db, test_db, output, reactor):
    """The master's hourly sweep, an hour made short: a stale partial
    transfer goes without anyone asking (purge_stale was called only by
    tests once)."""
    from twisted.internet import task
    partial = output / ".incoming" / "qux-1.0-py3-none-any.whl.part"
    partial.parent.mkdir()
    partial.write_bytes(b"half")
    old = time.time() - 60
    os.utime(partial, (old, old))
    effects = effects_for(db, output, reactor, sweep_interval=0.2,
                          stale_age=30, audit_at_start=False)
    effects.startService()
    try:
        for _ in range(50):
            if not partial.exists():
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        assert not partial.exists()
    finally:
        await effects.stopService()
