"""The whole build path with real processes: PostgreSQL, ``twistd
piwheels-master``, ``twistd piwheels-builder``s, a package index served over
HTTP, and pip installing from the output tree."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import pytest_twisted

from tests import sdists
from tests.e2e import Deployment, serve_directory, sha256_of, wait_for


@pytest.fixture
def package_index(tmp_path, reactor):
    """A local PEP 503 index, served over HTTP; add sdists with .add()."""
    root = tmp_path / "index"

    class Index:
        def add(self, *sdist_paths):
            sdists.make_simple_index(
                root, sdist_paths, sdists.shared_build_requirements())

    index = Index()
    index.add()
    url, port = serve_directory(reactor, root)
    index.url = url + "/"
    index.sdist_dir = tmp_path / "sdists"
    yield index
    port.stopListening()


@pytest.fixture
def deployment(test_db, package_index):
    deployed = Deployment(test_db, package_index.url)
    yield deployed
    deployed.close()


def queue_release(database, package, version, released):
    database.sql("SELECT add_new_package(%s)", (package,))
    database.sql("SELECT add_new_package_version(%s, %s, %s)",
                 (package, version, released))


async def wait_for_builds(reactor, deployment, count, timeout=300):
    def enough():
        builds = deployment.builds()
        return builds if len(builds) >= count else None
    try:
        return await wait_for(reactor, enough, timeout,
                              f"{count} builds to be recorded")
    except AssertionError:
        raise AssertionError(f"{deployment.builds()}\n{deployment.logs()}")


@pytest_twisted.ensureDeferred
async def test_builds_land_in_the_output_tree_and_install(
        reactor, deployment, package_index, tmp_path):
    package_index.add(
        sdists.make_pure_sdist(package_index.sdist_dir, "piw-pure", "1.0"),
        sdists.make_c_extension_sdist(package_index.sdist_dir,
                                      "piw-speedups", "1.0"))
    queue_release(deployment.database, "piw-pure", "1.0", "2024-01-01Z")
    queue_release(deployment.database, "piw-speedups", "1.0", "2024-01-02Z")
    master = deployment.start_master()
    deployment.start_builder("builder-1")
    deployment.start_builder("builder-2")

    builds = await wait_for_builds(reactor, deployment, 2)
    assert all(status for _, _, status, _, _ in builds), deployment.logs()
    assert {label for *_, label, _ in builds} <= {"builder-1", "builder-2"}

    files = deployment.database.sql(
        "SELECT f.filename, f.filesize, f.filehash, b.package, f.location "
        "FROM files f JOIN builds b USING (build_id)")
    assert len(files) == 2
    for filename, size, filehash, package, location in files:
        path = deployment.output / "simple" / package / filename
        assert location == f"simple/{package}/{filename}"
        assert path.stat().st_size == size
        assert sha256_of(path) == filehash
    assert not list((deployment.output / "simple").glob("*/.*"))
    native = [f for f, *_ in files if f.startswith("piw_speedups")]
    assert native and "-none-any" not in native[0]
    assert ("apt", "libc6") in deployment.database.sql(
        "SELECT tool, dependency FROM dependencies")
    logs = deployment.database.sql("SELECT output FROM output")
    assert all("pip wheel" in text for (text,) in logs)

    # the pages follow the commit a moment later: wait until the index
    # lists both wheels, as a user would see it
    def listed():
        try:
            root = (deployment.output / "simple" / "index.html").read_text()
            return all(
                package in root and filename in (
                    deployment.output / "simple" / package /
                    "index.html").read_text()
                for filename, _, _, package, _ in files)
        except FileNotFoundError:
            return False
    await wait_for(reactor, listed, 60, "the index to list both wheels")

    # pip installs both, wheels only, from the output tree over HTTP
    url, port = serve_directory(reactor, deployment.output)
    try:
        target = tmp_path / "installed"
        result = await _run([
            sys.executable, "-m", "pip", "install", "--quiet",
            "--only-binary=:all:", "--no-deps", "--root-user-action=ignore",
            "--disable-pip-version-check", "--index-url", f"{url}/simple/",
            "--target", str(target), "piw-pure", "piw-speedups"])
        assert result.returncode == 0, result.stdout
    finally:
        port.stopListening()
    check = subprocess.run(
        [sys.executable, "-c", "import piw_pure, piw_speedups._speedups as s;"
         " print(s.length('four'))"],
        env={**os.environ, "PYTHONPATH": str(target)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert check.stdout.strip() == "4", check.stdout

    assert master.stop(), master.output() + master.log()
    assert "Traceback" not in master.log(), master.log()


@pytest_twisted.ensureDeferred
async def test_a_killed_builders_job_is_built_by_another(
        reactor, deployment, package_index):
    package_index.add(sdists.make_pure_sdist(
        package_index.sdist_dir, "piw-slow", "1.0", sleep=20))
    queue_release(deployment.database, "piw-slow", "1.0", "2024-01-01Z")
    deployment.start_master()
    first = deployment.start_builder("first", "--busy-timeout", "3s")
    started = await wait_for(
        reactor, lambda: "building piw-slow 1.0" in first.log(), 120,
        "the first builder to start")
    assert started
    second = deployment.start_builder("second", "--busy-timeout", "3s")
    first.kill()
    builds = await wait_for_builds(reactor, deployment, 1, timeout=180)
    assert builds[0][:4] == ("piw-slow", "1.0", True, "second")
    assert "goes back to the queue" in deployment.services[0].log()
    assert second.stop()


@pytest_twisted.ensureDeferred
async def test_master_restarted_mid_transfer_completes_it(
        reactor, deployment, package_index):
    package_index.add(sdists.make_pure_sdist(
        package_index.sdist_dir, "piw-large", "1.0",
        payload_bytes=96 * 1024 * 1024))
    queue_release(deployment.database, "piw-large", "1.0", "2024-01-01Z")
    master = deployment.start_master()
    deployment.start_builder("builder", "--busy-timeout", "30s")
    incoming = deployment.output / ".incoming"

    def part_way():
        # the received ranges have been saved at least once
        if not incoming.is_dir():
            return False
        for ranges in incoming.glob("*.ranges"):
            try:
                record = json.loads(ranges.read_text())
            except ValueError:
                continue
            if record["ranges"]:
                return True
        return False

    await wait_for(reactor, part_way, 300, "the transfer to be part-way",
                   interval=0.005)
    master.signal(signal.SIGSTOP)
    master.kill()
    partial = [p for p in incoming.iterdir() if p.suffix == ".part"]
    assert partial, "the master finished before it could be stopped"
    assert deployment.builds() == []

    restarted = deployment.start_master()
    builds = await wait_for_builds(reactor, deployment, 1, timeout=180)
    assert builds[0][:3] == ("piw-large", "1.0", True), deployment.logs()
    ((filename, filehash),) = deployment.database.sql(
        "SELECT filename, filehash FROM files")
    assert sha256_of(
        deployment.output / "simple" / "piw-large" / filename) == filehash
    assert not [p for p in incoming.iterdir() if p.suffix == ".part"]
    # only what had not arrived before the restart was fetched again
    received = re.search(r"received \S+ \((\d+) bytes, (\d+) fetched\)",
                         restarted.log())
    assert received, restarted.log()
    assert int(received.group(2)) < int(received.group(1))
    assert restarted.stop()


@pytest_twisted.ensureDeferred
async def test_home_is_fresh_and_timeouts_are_enforced(
        reactor, deployment, package_index):
    package_index.add(
        sdists.make_pure_sdist(package_index.sdist_dir, "piw-writer", "1.0",
                               write_home="marker"),
        sdists.make_pure_sdist(package_index.sdist_dir, "piw-checker", "1.0",
                               require_empty_home=True),
        sdists.make_pure_sdist(package_index.sdist_dir, "piw-sleeper", "1.0",
                               sleep=120))
    # newest first: the writer, then the checker, then the sleeper
    queue_release(deployment.database, "piw-writer", "1.0", "2024-01-03Z")
    queue_release(deployment.database, "piw-checker", "1.0", "2024-01-02Z")
    queue_release(deployment.database, "piw-sleeper", "1.0", "2024-01-01Z")
    deployment.start_master()
    deployment.start_builder("builder", "-t", "10s")
    started = time.monotonic()
    builds = await wait_for_builds(reactor, deployment, 3, timeout=300)
    outcome = {package: (status, reason)
               for package, _, status, _, reason in builds}
    assert outcome["piw-writer"] == (True, ""), deployment.logs()
    assert outcome["piw-checker"] == (True, ""), deployment.logs()
    status, reason = outcome["piw-sleeper"]
    assert status is False
    assert "timed out" in reason
    assert time.monotonic() - started < 120


async def _run(command):
    """Run *command* without blocking the reactor (pip fetches from it)."""
    from twisted.internet import threads
    return await threads.deferToThread(
        subprocess.run, command, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)


@pytest_twisted.ensureDeferred
async def test_master_refuses_a_database_of_another_version(
        reactor, deployment):
    deployment.database.sql("UPDATE configuration SET version = '0.1'")
    master = deployment.start_master()
    await wait_for(reactor, lambda: master.process.poll() is not None, 60,
                   "the master to give up")
    said = master.output() + master.log()
    assert "cannot start" in said
    assert "version 0.1" in said and "piw-initdb" in said
    assert "Traceback" not in said
