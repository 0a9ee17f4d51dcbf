"""The master's own web server (``--http-endpoint``): PEP 691 negotiation,
gzip logs sent verbatim, nothing hidden served, 404 pages, and hits recorded
without ever getting in the way of serving."""

import gzip
import json
import os

import pytest
import pytest_twisted
import treq
from twisted.internet import defer
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from piwtwist.web.layout import log_relative_path
from piwtwist.web.server import negotiate
from tests.web_support import published_site as support_published_site
from tests.web_support import serve

PIP_AGENT = ('pip/24.0 {"ci":null,"cpu":"armv7l","distro":{"id":"bookworm",'
             '"libc":{"lib":"glibc","version":"2.36"},"name":"Raspbian GNU/'
             'Linux","version":"12"},"implementation":{"name":"CPython",'
             '"version":"3.11.2"},"installer":{"name":"pip","version":"24.0"},'
             '"python":"3.11.2","setuptools_version":"66.1.1","system":'
             '{"name":"Linux","release":"6.1.0-rpi7-rpi-v7"}}')


@pytest.fixture
def output(tmp_path):
    path = tmp_path / "www"
    path.mkdir()
    return path


@pytest.fixture
def http(reactor):
    pool = HTTPConnectionPool(reactor, persistent=False)
    return treq.client.HTTPClient(Agent(reactor, pool=pool))


async def published_site(db, output, tmp_path, reactor):
    return await support_published_site(db, output, tmp_path / "wheels",
                                        reactor)


async def get(http, url, **headers):
    response = await http.get(url, headers={k.replace("_", "-"): [v]
                                            for k, v in headers.items()},
                              allow_redirects=False)
    return response, await response.content()


@pytest_twisted.ensureDeferred
async def test_negotiation_logs_and_hidden_files(db, output, tmp_path,
                                                 reactor, http):
    build_id, filename = await published_site(db, output, tmp_path, reactor)
    (output / ".incoming").mkdir()
    (output / ".incoming" / "foo.whl.part").write_bytes(b"partial")
    os.symlink("/etc", output / "escape")
    url, port = serve(reactor, output)
    try:
        simple = output / "simple" / "foo"
        response, body = await get(http, f"{url}/simple/foo/")
        assert response.code == 200
        assert body == (simple / "index.html").read_bytes()
        assert response.headers.getRawHeaders("content-type") == [
            "text/html; charset=utf-8"]
        for accept in ("application/vnd.pypi.simple.v1+json",
                       "application/vnd.pypi.simple.v1+json, text/html;q=0.5",
                       "text/html;q=0.2, "
                       "application/vnd.pypi.simple.latest+json"):
            response, body = await get(http, f"{url}/simple/foo/",
                                       accept=accept)
            assert body == (simple / "index.json").read_bytes(), accept
            assert response.headers.getRawHeaders("content-type") == [
                "application/vnd.pypi.simple.v1+json"]
            assert "Accept" in response.headers.getRawHeaders("vary")
        response, body = await get(
            http, f"{url}/simple/?format=application/vnd.pypi.simple.v1+json")
        assert json.loads(body)["projects"] == [{"name": "foo"}]
        response, body = await get(http, f"{url}/simple/foo")
        assert response.code in (301, 302)
        assert response.headers.getRawHeaders("location")[0].endswith(
            "/simple/foo/")

        # logs: the gzip bytes as they are, marked as such
        log = output / log_relative_path(build_id)
        # (treq would inflate it: ask with a bare Agent)
        response = await Agent(reactor, pool=HTTPConnectionPool(
            reactor, persistent=False)).request(
            b"GET", f"{url}/{log_relative_path(build_id)}".encode())
        body = await readBody(response)
        assert response.code == 200
        assert body == log.read_bytes()
        assert gzip.decompress(body) == b"the whole log\n" * 100
        assert response.headers.getRawHeaders("content-encoding") == ["gzip"]
        assert response.headers.getRawHeaders("content-type")[0].startswith(
            "text/plain")

        response, body = await get(http, f"{url}/simple/foo/{filename}")
        assert response.code == 200
        assert body == (simple / filename).read_bytes()
        response, body = await get(http, f"{url}/project/foo/json/")
        assert json.loads(body)["package"] == "foo"
        response, body = await get(http, f"{url}/project/Foo/")
        assert response.code == 200 and b"<h1>foo</h1>" in body

        for hidden in ("/.incoming/foo.whl.part", "/.incoming/",
                       "/simple/../.incoming/foo.whl.part", "/escape/passwd",
                       "/simple/%2e%2e/%2e%2e/etc/passwd", "/missing.html",
                       "/logs/"):
            response, body = await get(http, url + hidden)
            assert response.code == 404, hidden
            assert b"partial" not in body and b"root:" not in body
        assert b"Not found" in body
    finally:
        await port.stopListening()


def test_negotiate_follows_pep_691():
    json_type = "application/vnd.pypi.simple.v1+json"
    assert negotiate("") == "html"
    assert negotiate("*/*") == "html"
    assert negotiate(json_type) == "json"
    assert negotiate(f"text/html, {json_type};q=0.9") == "html"
    assert negotiate(f"text/html;q=0.1, {json_type}") == "json"
    assert negotiate("application/vnd.pypi.simple.v1+html") == "html"
    assert negotiate("image/png") == "html"
    assert negotiate("garbage;;q=x,,") == "html"
    assert negotiate("text/html", query_format=json_type) == "json"


@pytest_twisted.ensureDeferred
async def test_hits_are_recorded(db, test_db, output, tmp_path, reactor,
                                 http):
    _, filename = await published_site(db, output, tmp_path, reactor)
    url, port = serve(reactor, output, db=db)
    try:
        await get(http, f"{url}/simple/foo/{filename}", user_agent=PIP_AGENT)
        await get(http, f"{url}/simple/foo/", user_agent=PIP_AGENT)
        await get(http, f"{url}/project/foo/", user_agent="Mozilla/5.0")
        await get(http, f"{url}/project/foo/json/", user_agent="curl/8.0")
        await get(http, f"{url}/stats.html", user_agent="Googlebot/2.1")
        await get(http, f"{url}/", user_agent="Mozilla/5.0")
        await get(http, f"{url}/simple/nothing-here/", user_agent=PIP_AGENT)
        from tests.web_support import settle
        await settle(reactor, 0.3)
    finally:
        await port.stopListening()
    assert test_db.sql(
        "SELECT filename, host(accessed_by), arch, distro_name, "
        "distro_version, os_name, os_version, py_name, py_version, "
        "installer_name, installer_version, setuptools_version "
        "FROM downloads") == [(
            filename, "127.0.0.1", "armv7l", "Raspbian GNU/Linux", "12",
            "Linux", "6.1.0-rpi7-rpi-v7", "CPython", "3.11.2", "pip", "24.0",
            "66.1.1")]
    assert test_db.sql("SELECT package, installer_name FROM searches") == [
        ("foo", "pip")]
    assert test_db.sql("SELECT package, bot FROM project_page_hits") == [
        ("foo", False)]
    assert test_db.sql("SELECT package, bot FROM project_json_downloads") == [
        ("foo", True)]
    assert sorted(test_db.sql("SELECT page, bot FROM web_page_hits")) == [
        ("index.html", False), ("stats.html", True)]


class BrokenDatabase:
    """Storing hits fails, one way or another."""

    def __init__(self):
        self.calls = 0

    def __getattr__(self, name):
        if name != "log_hits":
            raise AttributeError(name)

        def fail(*args):
            self.calls += 1
            if self.calls % 2:
                raise RuntimeError("synchronously broken")
            return defer.fail(ConnectionError("database gone"))
        return fail


@pytest_twisted.ensureDeferred
async def test_failing_hit_loggers_do_not_break_serving(
        db, output, tmp_path, reactor, http):
    _, filename = await published_site(db, output, tmp_path, reactor)
    broken = BrokenDatabase()
    url, port = serve(reactor, output, db=broken)
    try:
        for round in range(2):
            response, body = await get(http, f"{url}/simple/foo/{filename}",
                                       user_agent=PIP_AGENT)
            assert response.code == 200
            assert body == (output / "simple" / "foo" / filename).read_bytes()
            response, _ = await get(http, f"{url}/project/foo/",
                                    user_agent="{not json")
            assert response.code == 200
            from tests.web_support import settle
            await settle(reactor, 0.3)
    finally:
        await port.stopListening()
    # one batch a round, each failing its own way
    assert broken.calls == 2
