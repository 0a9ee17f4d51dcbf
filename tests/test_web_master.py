"""The page writer and the web server inside the real master: a builder
builds, the master writes the pages as the build lands and serves them on
its own --http-endpoint, pip installs from it, and the download is
recorded."""

import gzip
import sys
import urllib.request

import pytest_twisted
from twisted.internet import threads

from tests import sdists
from tests.e2e import free_port, wait_for
from tests.test_end_to_end import (  # noqa: F401 (fixtures)
    deployment, package_index, queue_release, wait_for_builds)
from tests.web_support import run


def fetch(url, accept=None):
    request = urllib.request.Request(url, headers={
        "Accept": accept or "*/*", "Accept-Encoding": "identity"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, dict(response.headers), response.read()


@pytest_twisted.ensureDeferred
async def test_master_writes_and_serves_the_pages_of_a_build(
        reactor, deployment, package_index, tmp_path):
    package_index.add(sdists.make_pure_sdist(package_index.sdist_dir,
                                             "piw-served", "1.0"))
    queue_release(deployment.database, "piw-served", "1.0", "2024-01-01Z")
    port = free_port()
    master = deployment.start_master(
        "--http-endpoint", f"tcp:{port}:interface=127.0.0.1")
    deployment.start_builder("builder-1")
    builds = await wait_for_builds(reactor, deployment, 1)
    assert builds[0][2] is True, deployment.logs()
    output = deployment.output
    project_json = output / "project" / "piw-served" / "json" / "index.json"
    simple_json = output / "simple" / "piw-served" / "index.json"
    # the audit at start may write the project's pages before its build:
    # wait for the pages that list the wheel
    await wait_for(reactor, lambda: project_json.is_file() and (
        output / "simple" / "piw-served" / "index.html").is_file() and
        simple_json.is_file() and b'"core-metadata":{"sha256"' in
        simple_json.read_bytes(), 60, "the pages of the build")
    url = f"http://127.0.0.1:{port}"

    status, headers, body = await threads.deferToThread(
        fetch, f"{url}/simple/piw-served/",
        "application/vnd.pypi.simple.v1+json")
    assert headers["Content-Type"] == "application/vnd.pypi.simple.v1+json"
    assert b'"core-metadata":{"sha256"' in body
    status, headers, body = await threads.deferToThread(
        fetch, f"{url}/project/piw-served/")
    assert status == 200 and b"piw-served" in body
    log_link = body.split(b'href="/logs/')[1].split(b'"')[0].decode()
    status, headers, body = await threads.deferToThread(
        fetch, f"{url}/logs/{log_link}")
    assert headers["Content-Encoding"] == "gzip"
    assert b"pip wheel" in gzip.decompress(body)

    target = tmp_path / "installed"
    result = await run([
        sys.executable, "-m", "pip", "install", "--quiet",
        "--only-binary=:all:", "--no-deps", "--root-user-action=ignore",
        "--index-url", f"{url}/simple/", "--target", target, "piw-served"])
    assert result.returncode == 0, result.stdout
    assert (target / "piw_served").is_dir()
    downloads = await wait_for(
        reactor, lambda: deployment.database.sql(
            "SELECT filename, installer_name FROM downloads"), 30,
        "the download to be recorded")
    assert downloads[0][0].startswith("piw_served-1.0-")
    assert downloads[0][1] == "pip"

    assert master.stop(), master.output() + master.log()
    assert "Traceback" not in master.log(), master.log()


@pytest_twisted.ensureDeferred
async def test_the_master_saves_pending_rewrites_when_it_stops(
        reactor, test_db, tmp_path, monkeypatch):
    """The page writer saves its queue before the database pool closes."""
    import gc
    import os

    from piwtwist.db.client import Database
    from piwtwist.master import tap

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    secret = tmp_path / "secret"
    secret.write_text("s" * 40)
    os.chmod(secret, 0o600)
    options = tap.Options()
    options.parseOptions([
        "-c", os.devnull, "-d", test_db.master_dsn, "-o",
        str(tmp_path / "www"), "--build-abi", "cp311", "--secret-file",
        str(secret), "--builder-queue", "tcp:0:interface=127.0.0.1",
        "--dev-mode", "--no-pypi-follow",
        "--import-queue", f"unix:{tmp_path}/import.sock",
        "--control-queue", f"unix:{tmp_path}/control.sock"])
    master = tap.MasterService(options, reactor)
    master.page_writer.rewrite_delay = 3600
    before = gc.get_threshold()
    master.startService()
    await master.started
    # the collector tuned for short pauses while the master runs
    from piwtwist.master.collector import GC_THRESHOLDS
    assert gc.get_threshold() == GC_THRESHOLDS != before
    await master.page_writer.wait_until_idle()
    await master.db.add_new_package("late-bloomer")
    master.page_writer.request_rewrite("late-bloomer")
    await master.stopService()
    assert not master.pool.running
    assert gc.get_threshold() == before
    from piwtwist.db.pool import ConnectionPool
    pool = ConnectionPool(test_db.master_dsn, reactor)
    pool.startService()
    await pool.ready
    try:
        saved = await Database(pool).load_rewrites_pending()
    finally:
        await pool.stopService()
    assert [(r.package, r.command) for r in saved] == [
        ("late-bloomer", "BOTH")]
