"""A real builder whose real master is killed (SIGKILL) and started again at
a moment the builder did not choose: it reconnects by itself, reports what
it holds exactly once, and goes on building."""

import os
import signal

import pytest
import pytest_twisted
from twisted.internet import task

from tests import hostile, sdists
from tests.e2e import Deployment, serve_directory, wait_for

# each release is built in a second or so, "slow" ones take a while
QUICK = 'say("quick")'
SLOW = 'say("slow"); time.sleep(8); say("done")'


@pytest.fixture
def index(tmp_path, reactor):
    root = tmp_path / "index"
    root.mkdir()
    os.chmod(tmp_path, 0o755)
    url, port = serve_directory(reactor, root)
    yield root, url + "/"
    port.stopListening()


@pytest.fixture
def deployment(test_db, index):
    deployed = Deployment(test_db, index[1])
    yield deployed
    deployed.close()


def add_releases(deployment, index_root, sdist_dir, releases):
    """Publish sdists of *releases* ((version, attack, released) of
    piw-survivor) in the index and queue them."""
    files = [hostile.make_sdist(sdist_dir, "piw-survivor", version, attack)
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
