"""The real ``piw-logger`` into a real master (twistd) and PostgreSQL: log
files (gzip too) counted in the database, and a master restarted (cleanly,
then killed) while the logger streams: every hit arrives exactly once.  And
the statistics page made of what was recorded."""

import gzip
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from datetime import timedelta

import pytest
import pytest_twisted

from piwtwist.logger.classify import classify
from piwtwist.master.hit_recorder import HitRecorder
from piwtwist.web.statistics import SiteStatistics
from tests.e2e import Deployment
from tests.web_support import page_writer, published_site

LOGGER = Path(sys.executable).with_name("piw-logger")
PIP = ('pip/24.0 {"cpu":"armv7l","distro":{"name":"Raspbian GNU/Linux",'
       '"version":"12"},"implementation":{"name":"CPython","version":'
       '"3.11.2"},"installer":{"name":"pip","version":"24.0"},"python":'
       '"3.11.2"}')


def line(n, path=None, agent=PIP, status=200):
    host = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
    path = path or "/simple/foo/foo-1.0-py3-none-any.whl"
    agent = agent.replace('"', '\\"')
    now = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
    return (f'{host} - - [{now}] "GET {path} HTTP/1.1" '
            f'{status} 100 "-" "{agent}"\n')


@pytest.fixture
def deployment(test_db):
    deployed = Deployment(test_db, "http://127.0.0.1:9/simple/")
    yield deployed
    deployed.close()


def start_master(deployment):
    socket = deployment.root / "master" / "logger.sock"
    master = deployment.start_master("--log-queue", f"unix:{socket}")
    deadline = time.monotonic() + 60
    while not socket.exists() or "piwtwist master ready" not in master.log():
        assert master.process.poll() is None, deployment.logs()
        assert time.monotonic() < deadline, deployment.logs()
        time.sleep(0.2)
    return master, socket


def test_log_files_into_the_database(deployment, test_db, tmp_path):
    master, socket = start_master(deployment)
    test_db.sql("INSERT INTO packages (package) VALUES ('foo'), ('bar')")
    plain = tmp_path / "access.log"
    plain.write_text(
        "".join(line(n) for n in range(30))
        + line(30, "/simple/bar/bar-2.0-py3-none-any.whl", agent="Wget/1.21")
        + line(31, "/simple/foo/") + line(32, "/project/foo/", "Mozilla/5.0")
        + line(33, "/project/foo/json/") + line(34, "/")
        + line(35, "/simple/foo/foo-1.0-py3-none-any.whl", status=304)
        + "this is not a log line\n")
    packed = tmp_path / "access.log.1.gz"
    packed.write_bytes(gzip.compress(
        "".join(line(n) for n in range(100, 110)).encode()))
    result = subprocess.run(
        [str(LOGGER), "-c", os.devnull, "--log-queue", f"unix:{socket}",
         str(plain), str(packed)], capture_output=True, text=True,
        timeout=120)
    assert result.returncode == 0, result.stderr
    assert "skipped 1 broken log lines" in result.stderr
    assert test_db.sql("SELECT count(*) FROM downloads")[0][0] == 41
    assert test_db.sql(
        "SELECT package, sum(downloads)::INT FROM downloads_daily "
        "GROUP BY 1 ORDER BY 1") == [("bar", 1), ("foo", 40)]
    assert test_db.sql(
        "SELECT installer, python, distro, arch, downloads::INT "
        "FROM download_clients_daily ORDER BY 1") == [
        ("other", "", "", "", 1),
        ("pip", "3.11", "Raspbian GNU/Linux 12", "armv7l", 40)]
    assert [tuple(r) for r in test_db.sql(
        "SELECT package, downloads_recent, downloads_all "
        "FROM get_search_index()")] == [("foo", 40, 40), ("bar", 1, 1)]
    for table in ("searches", "project_page_hits", "project_json_downloads",
                  "web_page_hits"):
        assert test_db.sql(f"SELECT count(*) FROM {table}")[0][0] == 1, table
    assert master.stop()


def test_a_master_restarted_while_the_logger_streams(deployment, test_db):
    master, socket = start_master(deployment)
    total = 6000
    logger = subprocess.Popen(
        [str(LOGGER), "-c", os.devnull, "--log-queue", f"unix:{socket}",
         "--batch-size", "100", "-v"],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    fed = threading.Event()
    progress = [0]

    def feed():
        for first in range(0, total, 100):
            logger.stdin.write("".join(
                line(n) for n in range(first, first + 100)).encode())
            logger.stdin.flush()
            progress[0] = first + 100
            time.sleep(0.1)
        logger.stdin.close()
        fed.set()

    def stored():
        return test_db.sql("SELECT count(*) FROM downloads")[0][0]

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        for share, how in ((1, signal.SIGTERM), (2, signal.SIGKILL)):
            deadline = time.monotonic() + 60
            while progress[0] < total * share // 3:
                assert time.monotonic() < deadline, deployment.logs()
                time.sleep(0.05)
            assert not fed.is_set()
            if how == signal.SIGTERM:
                assert master.stop()
            else:
                master.kill()
            time.sleep(1.0)       # the logger keeps reading meanwhile
            master, socket = start_master(deployment)
        assert fed.wait(120)
        try:
            logger.wait(timeout=120)
        except subprocess.TimeoutExpired:
            logger.kill()
            raise AssertionError(
                f"the logger never finished ({stored()} hits stored): "
                f"{logger.stderr.read().decode()}")
        errors = logger.stderr.read()
    finally:
        if logger.poll() is None:
            logger.kill()
    assert logger.returncode == 0, errors.decode()
    assert test_db.sql(
        "SELECT count(*), count(DISTINCT accessed_by) FROM downloads") == [
        (total, total)]
    assert test_db.sql("SELECT downloads FROM download_totals") == [(total,)]
    master.stop()


@pytest_twisted.ensureDeferred
async def test_the_statistics_page_shows_the_downloads(db, reactor, tmp_path):
    """Batches from the recorder end up in stats.html: by installer, Python,
    distribution and CPU, the top projects and the build time saved."""
    output = tmp_path / "www"
    _, filename = await published_site(db, output, tmp_path / "w", reactor)
    uv = PIP.replace("pip/24.0", "uv/0.4.18").replace(
        '"name":"pip","version":"24.0"', '"name":"uv","version":"0.4.18"')
    now = time.time()
    hits = [classify("GET", f"/simple/foo/{filename}", 200, agent,
                     "192.0.2.1", now)
            for agent in [PIP] * 3 + [uv] * 2 + ["Wget/1.21.3"]]
    recorder = HitRecorder(db, reactor)
    assert await recorder.store("test:1", hits) == (True, 6)
    assert await recorder.store("test:1", hits) == (False, 6)   # once only
    statistics = SiteStatistics(db, reactor)
    await statistics.refresh()
    writer = page_writer(db, output, reactor, statistics=statistics)
    writer.startService()
    await writer.rewrite_all()
    await writer.wait_until_idle()
    await writer.stopService()
    page = (output / "stats.html").read_text()
    for text in ("<td>pip</td><td>3</td>", "<td>uv</td><td>2</td>",
                 "<td>other</td><td>1</td>", "<td>3.11</td><td>5</td>",
                 "<td>Raspbian GNU/Linux 12</td><td>5</td>",
                 "<td>armv7l</td><td>5</td>", "<td>unknown</td><td>1</td>",
                 '<a href="/project/foo/">foo</a></td><td>6</td>',
                 "Build time saved"):
        assert text in page, text
    # six downloads of a wheel whose build took 12 seconds
    assert (await db.get_download_statistics(30))["saved"] == [
        ("", 6, timedelta(seconds=72))]
