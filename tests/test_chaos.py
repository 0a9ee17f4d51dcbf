"""Chaos: a real master, builder and PostgreSQL following a fake PyPI's
journal (creates, releases with multi-megabyte wheels, yanks, release and
project removals), the master SIGKILLed at random moments and started
again, PostgreSQL stopped hard once and started again; then everything
settles and the tree, the index and the database must agree with each
other and with the journal.

The seed is printed (``PIWTWIST_CHAOS_SEED`` repeats a run).
"""

import os
import random
import signal
import time

import pytest_twisted
from packaging.utils import canonicalize_name
from twisted.internet import task

from tests import hostile, sdists
from tests.e2e import Deployment, serve_directory, wait_for
from tests.fake_pypi import FakePyPI
from tests.tree_support import check_invariant

KILLS = 10
PAYLOADS = (0, 0, 2 << 20, 5 << 20)


class Journal:
    """Scripts the fake PyPI at random and keeps the sdists the releases
    point at in the builders' index."""

    def __init__(self, rng, fake, index_root, sdist_dir):
        self.rng = rng
        self.fake = fake
        self.index_root = index_root
        self.sdist_dir = sdist_dir
        self.count = 0
        self.log = []

    def _release(self, name, version):
        sdist = hostile.make_sdist(
            self.sdist_dir, name, version, 'say("chaos")',
            payload=self.rng.choice(PAYLOADS))
        sdists.make_simple_index(self.index_root, [sdist])
        self.fake.release(name, version)

    def step(self):
        projects = sorted(self.fake.projects)
        releases = [(p, v) for p in projects
                    for v in self.fake.projects[p].releases]
        choices = ["new project"] * 4 + ["new release"] * 3
        if releases:
            choices += ["yank"] + ["remove release"] * 2 + ["unyank"]
        if projects:
            choices += ["remove project"]
        action = self.rng.choice(choices)
        if action == "new project":
            self.count += 1
            name = f"piw-chaos-{self.count}"
            self._release(name, "1.0")
        elif action == "new release" and projects:
            name = self.rng.choice(projects)
            version = f"{len(self.fake.projects[name].releases) + 1}.0"
            while version in self.fake.projects[name].releases:
                version += ".1"
            self._release(self.fake.projects[name].name, version)
        elif action == "yank":
            self.fake.yank(*self.rng.choice(releases), reason="chaos")
        elif action == "unyank":
            self.fake.unyank(*self.rng.choice(releases))
        elif action == "remove release":
            self.fake.remove_release(*self.rng.choice(releases))
        elif action == "remove project":
            self.fake.remove_project(self.rng.choice(projects))
        self.log.append(action)


def journal_state(fake):
    """{canonical project: {version: yanked}} as the journal leaves it."""
    return {canonicalize_name(name): {
        version: release.yanked
        for version, release in project.releases.items()}
        for name, project in fake.projects.items()}


def database_state(database):
    state = {package: {} for (package,) in database.sql(
        "SELECT package FROM packages")}
    for package, version, yanked in database.sql(
            "SELECT package, version, yanked FROM versions"):
        state.setdefault(package, {})[version] = yanked
    return state


def unbuilt(database):
    """Live releases with no build at all: still to be built."""
    return database.sql(
        "SELECT v.package, v.version FROM versions v WHERE v.skip = '' "
        "AND NOT EXISTS (SELECT 1 FROM builds b WHERE b.package = v.package "
        "AND b.version = v.version)")


@pytest_twisted.ensureDeferred
async def test_the_tree_agrees_after_random_kills(reactor, test_db, tmp_path,
                                                  pg_cluster):
    seed = int(os.environ.get("PIWTWIST_CHAOS_SEED") or time.time())
    print(f"chaos seed {seed}")
    rng = random.Random(seed)
    fake = FakePyPI(reactor, batch_size=5)
    fake.listen()
    index_root = tmp_path / "index"
    index_root.mkdir()
    os.chmod(tmp_path, 0o755)
    index_url, index_port = serve_directory(reactor, index_root)
    deployment = Deployment(test_db, index_url + "/")
    journal = Journal(rng, fake, index_root, tmp_path / "sdists")

    def start_master():
        return deployment.start_master(
            "--pypi-xmlrpc", f"{fake.url}/pypi",
            "--pypi-json", f"{fake.url}/pypi", follow_pypi=True)

    async def sleep(seconds):
        await task.deferLater(reactor, seconds, lambda: None)

    try:
        master = start_master()
        await wait_for(reactor, lambda: "master ready" in master.log(), 60,
                       "the master to start")
        # the follower starts from PyPI's newest event: let it see it
        # before the journal moves
        await wait_for(reactor, lambda: test_db.sql(
            "SELECT get_pypi_serial()")[0][0] >= fake.last_serial(), 60,
            "the follower to start following")
        deployment.start_builder("pi-1")
        deployment.start_builder("pi-2")
        kills, database_stopped = 0, False
        while kills < KILLS:
            for _ in range(rng.randint(1, 3)):
                journal.step()
            await sleep(rng.uniform(0.5, 4.0))
            if kills == KILLS // 2 and not database_stopped:
                # PostgreSQL goes down hard under the running master and
                # comes back: the master keeps serving, builders wait
                pg_cluster.stop(mode="immediate")
                await sleep(rng.uniform(0.5, 3.0))
                pg_cluster.start()
                database_stopped = True
                for _ in range(rng.randint(1, 3)):
                    journal.step()
                await sleep(rng.uniform(1.0, 4.0))
                assert master.process.poll() is None, deployment.logs()
            if rng.random() < 0.6:
                master.signal(signal.SIGKILL)
                master.process.wait()
                deployment.services.remove(master)
                kills += 1
                await sleep(rng.uniform(0.2, 2.0))
                master = start_master()
                await wait_for(
                    reactor, lambda: master.log().count("master ready") > 0
                    or master.process.poll() is not None, 60,
                    "the master to start again")
                assert master.process.poll() is None, deployment.logs()
        # let everything settle: the journal read to its end, every live
        # release built, and the tree agreeing with the database
        last = fake.last_serial()

        def settled():
            serial = test_db.sql("SELECT get_pypi_serial()")[0][0]
            return serial >= last and not unbuilt(test_db) and \
                not check_invariant(deployment.output, test_db)

        try:
            await wait_for(reactor, settled, 240, "everything to settle",
                           interval=2.0)
        except AssertionError:
            raise AssertionError(
                f"seed {seed}; serial {last}; unbuilt {unbuilt(test_db)}; "
                f"disagreements {check_invariant(deployment.output, test_db)}"
                f"\nactions {journal.log}")
        assert check_invariant(deployment.output, test_db) == []
        assert database_state(test_db) == journal_state(fake), \
            f"seed {seed}; actions {journal.log}"
        # every live release has its wheel
        for package, versions in journal_state(fake).items():
            for version in versions:
                wheel = (deployment.output / "simple" / package /
                         f"{package.replace('-', '_')}-{version}-py3-none-"
                         f"any.whl")
                assert wheel.is_file(), (wheel, f"seed {seed}")
        # what the audit at each start found (for the record)
        audits = [line.split("] ", 1)[-1] for line in
                  deployment.logs().splitlines() if "tree audit:" in line]
        print("\n".join(audits))
        assert len(audits) >= KILLS
        print(f"chaos: {kills} kills of the master, PostgreSQL stopped once, "
              f"{len(journal.log)} journal actions, "
              f"{len(journal_state(fake))} projects left; 0 disagreements")
    finally:
        deployment.close()
        await index_port.stopListening()
        await fake.stop()
