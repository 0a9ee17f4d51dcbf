"""A real master (twistd) SIGKILLed right after it records a build and right
after a ``piw-remove``, then started again: once it is quiet, the output tree
agrees with the database (tests/tree_support.check_invariant), and
``piw-rebuild audit`` says so."""

import signal
import time

import pytest_twisted
from twisted.internet.defer import ensureDeferred

from tests.e2e import wait_for
from tests.test_admin_tools import (  # noqa: F401 (fixtures)
    add_release, deployment, fake_pypi, imported, pure_wheel, tool,
)
from tests.tree_support import check_invariant


def start_master(deployment, fake_pypi):
    return deployment.start_master(
        "--build-abi", "cp312", "--pypi-json", f"{fake_pypi.url}/pypi")


async def kill_when(reactor, master, condition, what):
    """SIGKILL *master* as soon as *condition* holds (polled every few
    milliseconds)."""
    await wait_for(reactor, condition, 60, what, interval=0.005)
    master.signal(signal.SIGKILL)
    master.process.wait()


async def restarted(reactor, deployment, fake_pypi, killed):
    """The master started again after *killed*; waits for its audit."""
    deployment.services.remove(killed)
    master = start_master(deployment, fake_pypi)
    await wait_for(reactor, lambda: "tree audit:" in master.log()
                   or master.process.poll() is not None, 60,
                   "the audit at start")
    assert master.process.poll() is None, deployment.logs()
    return master


async def agreeing(reactor, deployment):
    """Wait for the tree to agree with the database; the disagreements
    left (none)."""
    problems = []

    def agree():
        problems[:] = check_invariant(deployment.output, deployment.database)
        return not problems
    try:
        await wait_for(reactor, agree, 60, "the tree to agree")
    except AssertionError:
        pass
    return problems


@pytest_twisted.ensureDeferred
async def test_a_master_killed_after_recording_and_after_removing(
        reactor, deployment, fake_pypi, tmp_path):
    master = start_master(deployment, fake_pypi)
    await wait_for(reactor, lambda: deployment.import_socket.exists(), 60,
                   "the admin socket")
    first = await imported(deployment, tmp_path, "1.0")
    assert await agreeing(reactor, deployment) == []

    # killed the moment the next build is recorded (before or after its
    # wheel is published, whichever it was)
    add_release(deployment, "piw-demo", "2.0")
    wheel = pure_wheel(tmp_path / "w2.0", version="2.0")
    importing = ensureDeferred(tool(deployment, "piw-import", "-y",
                                    str(wheel)))
    await kill_when(reactor, master, lambda: deployment.database.sql(
        "SELECT 1 FROM builds WHERE version = '2.0'"), "the build's row")
    await importing
    master = await restarted(reactor, deployment, fake_pypi, master)
    assert await agreeing(reactor, deployment) == [], deployment.logs()
    second = deployment.output / "simple" / "piw-demo" / wheel.name
    assert second.exists() and first.exists()

    # killed the moment piw-remove's deletion is committed
    removing = ensureDeferred(tool(deployment, "piw-remove", "-y",
                                   "piw-demo", "1.0"))
    await kill_when(reactor, master, lambda: not deployment.database.sql(
        "SELECT 1 FROM versions WHERE version = '1.0'"), "the removal")
    await removing
    master = await restarted(reactor, deployment, fake_pypi, master)
    assert await agreeing(reactor, deployment) == [], deployment.logs()
    assert not first.exists() and second.exists()
    assert not deployment.database.sql("SELECT * FROM pending_deletions")

    started = time.monotonic()
    result = await tool(deployment, "piw-rebuild", "audit")
    assert result.returncode == 0, result.stderr
    assert "tree audit:" in result.stdout
    assert "0 recorded files missing, 0 with other bytes" in result.stdout
    assert time.monotonic() - started < 60
    assert master.process.poll() is None
