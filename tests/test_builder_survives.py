"""A real builder whose real master is killed (SIGKILL) and started again at
a moment the builder did not choose: it reconnects by itself, reports what
it holds exactly once, and goes on building."""

import hashlib
import json
import signal

import pytest
import pytest_twisted
from twisted.internet import task

from tests import hostile, sdists
from tests.e2e import wait_for

# each release is built in a second or so, "slow" ones take a while
QUICK = 'say("quick")'
SLOW = 'say("slow"); time.sleep(8); say("done")'


@pytest.fixture
def index(served_index):
    return served_index


@pytest.fixture
def deployment(served_deployment):
    return served_deployment


def add_releases(deployment, index_root, sdist_dir, releases, payload=0):
    """Publish sdists of *releases* ((version, attack, released) of
    piw-survivor, wheels of *payload* random bytes more) in the index and
    queue them."""
    files = [hostile.make_sdist(sdist_dir, "piw-survivor", version, attack,
                                payload=payload)
             for version, attack, _ in releases]
    sdists.make_simple_index(index_root, files)
    database = deployment.database
    database.sql("SELECT add_new_package(%s)", ("piw-survivor",))
    for version, _, released in releases:
        database.sql("SELECT add_new_package_version(%s, %s, %s)",
                     ("piw-survivor", version, released))


def builds(deployment):
    return deployment.database.sql(
        "SELECT version, status, reason FROM builds ORDER BY build_id")


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("moment", ["idle", "building", "finished-away"])
async def test_a_builder_outlives_its_masters_death(
        reactor, deployment, index, tmp_path, moment):
    root, _ = index
    first = [("1.0", QUICK if moment == "idle" else SLOW,
              "2024-01-02Z")]
    add_releases(deployment, root, tmp_path / "sdists", first)
    master = deployment.start_master()
    builder = deployment.start_builder("pi")

    if moment == "idle":
        await wait_for(reactor, lambda: len(builds(deployment)) == 1, 120,
                       "the first build")
        # and the builder is idle again, asking for more now and then
        await task.deferLater(reactor, 2, lambda: None)
    else:
        await wait_for(reactor, lambda: "building piw-survivor 1.0" in
                       builder.log(), 120, "the build to start")
    master.signal(signal.SIGKILL)
    master.process.wait()
    # the master comes back after a while, as systemd would restart it
    await wait_for(reactor, lambda: "lost" in builder.log(), 30,
                   "the builder to notice")
    if moment == "finished-away":
        # the build ends while nobody listens; it is reported once the
        # master is back
        await task.deferLater(reactor, 10, lambda: None)
    add_releases(deployment, root, tmp_path / "sdists",
                 [("2.0", QUICK, "2024-01-01Z")])
    deployment.services.remove(master)
    deployment.start_master()
    try:
        await wait_for(reactor, lambda: {v for v, _, _ in builds(deployment)}
                       >= {"1.0", "2.0"}, 180, "both builds recorded")
    except AssertionError:
        raise AssertionError(f"{builds(deployment)}\n{deployment.logs()}")
    recorded = builds(deployment)
    versions = [v for v, _, _ in recorded]
    # each exactly once, and both built
    assert sorted(versions) == ["1.0", "2.0"], recorded
    assert all(status for _, status, _ in recorded), recorded


#: a wheel big enough to be caught on its way
BIG = 48 * 1024 * 1024


def partial_transfer(deployment):
    """Whether the master has saved some but not all of a wheel in its
    incoming directory (the received ranges it keeps for resuming)."""
    for path in (deployment.output / ".incoming").rglob("*.ranges"):
        try:
            record = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        received = sum(end - start for start, end in record["ranges"])
        if 0 < received < record["size"]:
            return True
    return False


def recorded_wheels(deployment):
    return deployment.database.sql(
        "SELECT f.filename, f.filehash FROM files f "
        "JOIN builds b ON b.build_id = f.build_id ORDER BY f.filename")


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("moment", ["mid-transfer", "mid-recording"])
async def test_a_builder_outlives_its_masters_death_with_a_big_wheel(
        reactor, deployment, index, tmp_path, moment):
    root, _ = index
    add_releases(deployment, root, tmp_path / "sdists",
                 [("1.0", QUICK, "2024-01-02Z")], payload=BIG)
    master = deployment.start_master()
    builder = deployment.start_builder("pi")

    def caught():
        if moment == "mid-transfer":
            # some of the wheel is on the master's disk, not all of it
            return partial_transfer(deployment)
        # the build is committed; the builder is (most likely) still
        # waiting for Done
        return builds(deployment)

    await wait_for(reactor, caught, 180, moment, interval=0.005)
    master.signal(signal.SIGKILL)
    master.process.wait()
    await wait_for(reactor, lambda: "lost" in builder.log(), 30,
                   "the builder to notice")
    add_releases(deployment, root, tmp_path / "sdists",
                 [("2.0", QUICK, "2024-01-01Z")])
    deployment.services.remove(master)
    master = deployment.start_master()
    try:
        await wait_for(reactor, lambda: {v for v, _, _ in builds(deployment)}
                       >= {"1.0", "2.0"}, 240, "both builds recorded")
    except AssertionError:
        raise AssertionError(f"{builds(deployment)}\n{deployment.logs()}")
    recorded = builds(deployment)
    # each exactly once, and both built
    assert sorted(v for v, _, _ in recorded) == ["1.0", "2.0"], recorded
    assert all(status for _, status, _ in recorded), recorded
    # the big wheel is published whole, with the bytes recorded
    (big,) = [(name, digest) for name, digest in recorded_wheels(deployment)
              if "-1.0-" in name]
    published = deployment.output / "simple" / "piw-survivor" / big[0]
    await wait_for(reactor, published.exists, 60, "the big wheel published")
    digest = hashlib.sha256()
    with published.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    assert digest.hexdigest() == big[1].strip()
    assert published.stat().st_size > BIG
    # what the master said since its restart (both write one log)
    since = master.log().rsplit("starting up.", 1)[-1]
    if moment == "mid-transfer":
        # what had arrived was kept: the transfer resumed
        assert "resuming piw_survivor-1.0-" in since, since
    else:
        # recorded already: the wheel is not fetched again (the master
        # may say it already has it)
        assert "received piw_survivor-1.0-" not in since, since
        assert "resuming piw_survivor-1.0-" not in since, since
