"""The example web-server configurations in docs/, run for real: nginx and
Apache serve a written output tree with PEP 691 negotiation, gzip logs sent
verbatim, nothing hidden, and pip installs through them.  Each test is
skipped when its server is not installed (apt-get install nginx-light
apache2)."""

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import endpoints, threads

from piwtwist.master.hit_recorder import HitRecorder
from piwtwist.web.layout import log_relative_path
from tests.e2e import free_port, wait_for
from tests.web_support import page_writer, published_site, run

DOCS = Path(__file__).parent.parent / "docs"
JSON_TYPE = "application/vnd.pypi.simple.v1+json"


@pytest.fixture
def site_root():
    """A world-readable directory (the servers' workers are not root)."""
    root = Path(tempfile.mkdtemp(prefix="piwtwist-www-"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


async def write_site(db, output, wheels, reactor):
    build_id, filename = await published_site(db, output, wheels, reactor,
                                              log_lines=50)
    (output / ".incoming").mkdir(mode=0o755)
    (output / ".incoming" / "x.whl.part").write_bytes(b"partial")
    os.chmod(output / ".incoming" / "x.whl.part", 0o644)
    return build_id, filename


def fetch(url, accept="*/*"):
    request = urllib.request.Request(url, headers={
        "Accept": accept, "Accept-Encoding": "identity"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def wait_for_port(port, process, log):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {log.read_text()}")
        try:
            fetch(f"http://127.0.0.1:{port}/")
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the server never answered")


def check_server(url, output, build_id, filename):
    """What both configurations must do; runs in a thread."""
    status, headers, body = fetch(f"{url}/simple/foo/")
    assert status == 200
    assert body == (output / "simple" / "foo" / "index.html").read_bytes()
    for accept in (JSON_TYPE, f"{JSON_TYPE}, text/html;q=0.1"):
        status, headers, body = fetch(f"{url}/simple/foo/", accept)
        assert status == 200, accept
        assert headers["Content-Type"] == JSON_TYPE, accept
        assert json.loads(body)["name"] == "foo"
        assert "Accept" in headers.get_all("Vary")
    status, headers, body = fetch(f"{url}/simple/", JSON_TYPE)
    assert json.loads(body)["projects"] == [{"name": "foo"}]
    status, headers, body = fetch(
        f"{url}/simple/?format=application/vnd.pypi.simple.v1%2Bjson")
    assert json.loads(body)["projects"] == [{"name": "foo"}]

    status, headers, body = fetch(f"{url}/{log_relative_path(build_id)}")
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"].startswith("text/plain")
    assert gzip.decompress(body) == b"the whole log\n" * 50

    status, headers, body = fetch(f"{url}/simple/foo/{filename}")
    assert status == 200 and headers["Content-Type"] == "application/zip"
    status, headers, body = fetch(f"{url}/project/foo/json/")
    assert status == 200 and json.loads(body)["package"] == "foo"
    status, _, body = fetch(f"{url}/project/Foo/")
    assert status == 200 and b"<h1>foo</h1>" in body
    for hidden in ("/.incoming/x.whl.part", "/.incoming/",
                   "/simple/foo/.index.html.tmp"):
        status, _, body = fetch(url + hidden)
        assert status in (403, 404), hidden
        assert b"partial" not in body
    status, _, body = fetch(f"{url}/no-such-page.html")
    assert status == 404 and b"Not found" in body


async def install_with_pip(url, tmp_path):
    result = await run([
        sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
        "--root-user-action=ignore", "--index-url", f"{url}/simple/",
        "--target", tmp_path / "target", "foo"])
    assert result.returncode == 0, result.stdout
    assert (tmp_path / "target" / "foo-1.0.dist-info").is_dir()


async def install_with_uv(url, tmp_path):
    uv = Path(sys.executable).with_name("uv")
    result = await run([
        uv, "pip", "install", "--quiet", "--no-deps", "--python",
        sys.executable, "--index-url", f"{url}/simple/", "--target",
        tmp_path / "uv-target", "foo"])
    assert result.returncode == 0, result.stdout
    assert (tmp_path / "uv-target" / "foo-1.0.dist-info").is_dir()


@pytest.mark.skipif(shutil.which("nginx") is None,
                    reason="needs nginx (apt-get install nginx-light)")
@pytest_twisted.ensureDeferred
async def test_the_nginx_example(db, test_db, site_root, tmp_path, reactor):
    """nginx with docs/nginx.conf; its access log followed by tail -F into
    the real piw-logger, as the example says (nginx cannot pipe a log)."""
    output = site_root / "www"
    build_id, filename = await write_site(db, output, tmp_path / "w", reactor)
    port = free_port()
    socket = site_root / "logger.sock"
    recorder = HitRecorder(db, reactor)
    listening = await endpoints.serverFromString(
        reactor, f"unix:{socket}").listen(recorder.factory())
    access_log = site_root / "access.log"
    access_log.touch()
    follow = subprocess.Popen(["tail", "-n", "+1", "-F", str(access_log)],
                              stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    logger = subprocess.Popen(
        [Path(sys.executable).with_name("piw-logger"), "-c", os.devnull,
         "--drop", "--log-queue", f"unix:{socket}"],
        stdin=follow.stdout, stderr=open(site_root / "logger.err", "wb"))
    follow.stdout.close()
    config = (DOCS / "nginx.conf").read_text()
    config = config.replace("/var/www/piwheels", str(output))
    config = config.replace("listen 80;", f"listen 127.0.0.1:{port};")
    config = config.replace("listen [::]:80;", "")
    config = config.replace("/var/log/nginx/piwheels.log",
                            str(site_root / "access.log"))
    temp = site_root / "temp"
    temp.mkdir()
    main = site_root / "nginx.conf"
    main.write_text(
        f"daemon off;\nworker_processes 1;\npid {site_root}/nginx.pid;\n"
        f"error_log {site_root}/error.log;\nevents {{}}\nhttp {{\n"
        f"include /etc/nginx/mime.types;\n"
        f"default_type application/octet-stream;\n"
        + "".join(f"{kind}_temp_path {temp}/{kind};\n" for kind in (
            "client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        + config + "\n}\n")
    process = subprocess.Popen(["nginx", "-c", str(main), "-p",
                                str(site_root)],
                               stdout=subprocess.DEVNULL,
                               stderr=open(site_root / "stderr", "wb"))
    try:
        await threads.deferToThread(wait_for_port, port, process,
                                    site_root / "stderr")
        url = f"http://127.0.0.1:{port}"
        await threads.deferToThread(check_server, url, output, build_id,
                                    filename)
        await install_with_pip(url, tmp_path)
        await install_with_uv(url, tmp_path)
        await wait_for(reactor, lambda: test_db.sql(
            "SELECT count(*) FROM downloads")[0][0] >= 3, 30,
            "the downloads", interval=0.2)
    finally:
        process.send_signal(signal.SIGQUIT)
        await threads.deferToThread(process.wait, 20)
        follow.terminate()
        await threads.deferToThread(logger.wait, 30)
        await listening.stopListening()
    assert "GET /simple/foo/" in access_log.read_text()
    assert logger.returncode == 0
    assert sorted(test_db.sql("SELECT installer_name FROM downloads")) == [
        ("Python-urllib",), ("pip",), ("uv",)]
    assert {row[0] for row in test_db.sql(
        "SELECT installer_name FROM searches")} == {"pip", "uv"}


#: What the example needs beyond what Debian's apache2 has built in
APACHE_MODULES = ("mpm_event", "authz_core", "mime", "dir", "rewrite",
                  "headers", "env", "setenvif", "alias")


@pytest.mark.skipif(shutil.which("apache2") is None,
                    reason="needs Apache (apt-get install apache2)")
@pytest_twisted.ensureDeferred
async def test_the_apache_example(db, test_db, site_root, tmp_path, reactor):
    """Apache with docs/apache.conf, its log piped into the real
    piw-logger, which feeds a hit recorder: pip's and uv's installs are
    counted in the database and in packages.json."""
    output = site_root / "www"
    build_id, filename = await write_site(db, output, tmp_path / "w", reactor)
    port = free_port()
    socket = site_root / "logger.sock"
    recorder = HitRecorder(db, reactor)
    listening = await endpoints.serverFromString(
        reactor, f"unix:{socket}:mode=666").listen(recorder.factory())
    # piw-logger's place in the pipe: a script keeping a copy of what it is
    # fed, then the real piw-logger
    piped = site_root / "piped.log"
    logger = site_root / "logger.sh"
    logger.write_text(
        f"#!/bin/sh\nexec tee -a {piped} | "
        f"{Path(sys.executable).with_name('piw-logger')} -c /dev/null "
        f"--log-queue unix:{socket} \"$@\" 2>>{site_root}/logger.err\n")
    os.chmod(logger, 0o755)
    config = (DOCS / "apache.conf").read_text()
    config = config.replace("/var/www/piwheels", str(output))
    config = config.replace("<VirtualHost *:80>",
                            f"<VirtualHost 127.0.0.1:{port}>")
    config = config.replace("${APACHE_LOG_DIR}", str(site_root))
    config = config.replace('"|/usr/local/bin/piw-logger --drop"',
                            f'"|{logger} --drop"')
    assert f'"|{logger} --drop" combined' in config
    modules = "".join(
        f"LoadModule {m}_module /usr/lib/apache2/modules/mod_{m}.so\n"
        for m in APACHE_MODULES)
    main = site_root / "apache2.conf"
    main.write_text(
        f"ServerRoot /etc/apache2\nServerName localhost\n"
        f"Listen 127.0.0.1:{port}\nPidFile {site_root}/apache2.pid\n"
        f"DefaultRuntimeDir {site_root}\nErrorLog {site_root}/error.log\n"
        f"Mutex file:{site_root}\n{modules}"
        f"TypesConfig /etc/mime.types\n"
        f'LogFormat "%h %l %u %t \\"%r\\" %>s %O \\"%{{Referer}}i\\" '
        f'\\"%{{User-Agent}}i\\"" combined\n'
        + ("User www-data\nGroup www-data\n" if os.geteuid() == 0 else "")
        + config)
    process = subprocess.Popen(
        ["apache2", "-f", str(main), "-DFOREGROUND"],
        stdout=subprocess.DEVNULL, stderr=open(site_root / "stderr", "wb"),
        env={**os.environ, "APACHE_RUN_DIR": str(site_root)})
    try:
        await threads.deferToThread(wait_for_port, port, process,
                                    site_root / "stderr")
        url = f"http://127.0.0.1:{port}"
        await threads.deferToThread(check_server, url, output, build_id,
                                    filename)
        await install_with_pip(url, tmp_path)
        await install_with_uv(url, tmp_path)
    finally:
        process.send_signal(signal.SIGWINCH)   # graceful stop
        try:
            await threads.deferToThread(process.wait, 20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # the combined log went through the pipe, and piw-logger (whose input
    # ended with Apache) sent what counts before it exited
    lines = piped.read_text().splitlines()
    assert any('"GET /simple/foo/ HTTP/1.1" 200' in line for line in lines)
    await wait_for(reactor, lambda: test_db.sql(
        "SELECT count(*) FROM downloads")[0][0] >= 3, 30,
        "the downloads", interval=0.2)
    await listening.stopListening()
    downloads = test_db.sql(
        "SELECT filename, installer_name FROM downloads ORDER BY 2")
    # urllib's fetch in check_server counts too: any client's download does
    assert downloads == [(filename, "Python-urllib"), (filename, "pip"),
                         (filename, "uv")], downloads
    installers = {row[0] for row in test_db.sql(
        "SELECT installer_name FROM searches")}
    assert installers == {"pip", "uv"}
    assert test_db.sql("SELECT installer, downloads FROM "
                       "download_clients_daily ORDER BY 1") == [
        ("other", 1), ("pip", 1), ("uv", 1)]
    assert test_db.sql("SELECT count(*) FROM project_page_hits")[0][0] == 1
    assert test_db.sql("SELECT count(*) FROM project_json_downloads"
                       )[0][0] == 1
    writer = page_writer(db, output, reactor)
    writer.startService()
    await writer.rewrite_all()
    await writer.wait_until_idle()
    await writer.stopService()
    assert json.loads((output / "packages.json").read_text()) == [
        ["foo", "Foo", 3, 3]]
    project = json.loads(
        (output / "project" / "foo" / "json" / "index.json").read_text())
    assert project["downloads"] == {"last_30_days": 3, "all_time": 3}
    assert "Downloads: 3 in the last 30 days, 3 all time" in (
        output / "project" / "foo" / "index.html").read_text()
    assert " 0 broken lines" in (site_root / "logger.err").read_text()
