"""Render workers end with the master.  They ignore SIGTERM (the master
says when they go, so that a stop does not kill pages in hand), so a
master that is stopped, or killed outright (the OOM killer, ``kill -9``),
must leave none behind: real master processes, real workers."""

import os
import signal
from pathlib import Path

import pytest
import pytest_twisted

from tests.e2e import Deployment, wait_for
from tests.web_support import generate_site

WORKERS = 2


def children(pid):
    """The processes whose parent is *pid*."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def command_line(pid):
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


def workers_of(master_pid):
    """The master's render workers: children of its forkserver."""
    return [worker for child in children(master_pid)
            if b"multiprocessing.forkserver" in command_line(child)
            for worker in children(child)]


def alive(pid):
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return state.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("how", ["stopped", "killed"])
@pytest_twisted.ensureDeferred
async def test_no_worker_outlives_the_master(reactor, test_db, how):
    generate_site(test_db, 6, versions=2, files=1)
    deployment = Deployment(test_db, "http://127.0.0.1:9/simple/",
                            abi="cp311")
    try:
        master = deployment.start_master(
            "--render-processes", str(WORKERS), dev_mode=False)
        await wait_for(reactor, lambda: "wrote the pages of" in master.log()
                       or master.process.poll() is not None, 120,
                       "the master's full rewrite")
        assert master.process.poll() is None, deployment.logs()
        workers = workers_of(master.process.pid)
        assert len(workers) == WORKERS, deployment.logs()
        if how == "stopped":
            assert master.stop(), deployment.logs()
        else:
            os.kill(master.process.pid, signal.SIGKILL)
            master.process.wait()
        await wait_for(reactor, lambda: not any(map(alive, workers)), 30,
                       f"the workers {workers} to end")
    finally:
        deployment.close()
