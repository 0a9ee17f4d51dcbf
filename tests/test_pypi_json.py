"""The JSON API client: what it reads from PyPI's documents and when it
asks again.  The fake PyPI's resource is served through treq's StubTreq with
a fake clock; one test reads the real PyPI."""

import json
import threading
from datetime import datetime, timezone

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.web import resource, server
from treq.testing import StubTreq

from piwtwist.master.journal_applier import (
    SKIP_PURE_WHEEL, Applier, Details, Outcome, in_transaction, skip_for,
)
from piwtwist.pypi import json_api
from piwtwist.pypi.http import (
    Malformed, TooLarge, Unreachable, new_http_client,
)
from piwtwist.pypi.journal import FileKind
from piwtwist.pypi.json_api import PyPIJson, loads_in_steps
from tests.fake_pypi import T0, FakePyPI
from tests.test_pypi_http import Scripted, result, run


@pytest.fixture
def clock():
    return task.Clock()


@pytest.fixture
def fake(clock):
    return FakePyPI(clock)


@pytest.fixture
def stub(fake):
    return StubTreq(fake.resource())


@pytest.fixture
def client(stub, clock):
    return PyPIJson(stub, clock, "http://pypi.test/pypi")


def test_a_release(fake, stub, client):
    fake.release("Foo.Bar", "1.0", files=["sdist", "pure"],
                 requires_python=">=3.9", summary="  Foo\nbars  ",
                 timestamp=T0 + 10)
    fake.yank("Foo.Bar", "1.0", reason="Broken")
    release = result(run(stub, client.release("foo-bar", "1.0")))
    assert release.requires_python == ">=3.9"
    assert release.released == datetime.fromtimestamp(T0 + 10, timezone.utc)
    assert (release.yanked, release.yank_reason) == (True, "Broken")
    assert release.summary == "Foo bars"
    assert release.kinds() == {FileKind.SOURCE, FileKind.PURE_WHEEL}
    assert release.as_of == fake.last_serial()
    assert skip_for(release.kinds()) == SKIP_PURE_WHEEL
    assert [r["path"] for r in fake.requests] == ["/pypi/foo-bar/1.0/json"]


def test_a_project(fake, stub, client):
    fake.release("foo", "1.0", files=["binary"], summary="Foo")
    fake.release("foo", "2.0", files=["sdist", "binary"],
                 requires_python=">=3.10")
    project = result(run(stub, client.project("Foo")))
    assert (project.name, project.summary) == ("foo", "Foo")
    assert project.releases["1.0"].kinds() == {FileKind.BINARY}
    assert project.releases["2.0"].requires_python == ">=3.10"
    assert project.last_serial == fake.last_serial()


def test_answers_are_good_for_events_up_to_their_serial(fake, stub, client,
                                                        clock):
    serial = fake.release("foo", "1.0")
    result(run(stub, client.release("foo", "1.0", serial)))
    result(run(stub, client.release("foo", "1.0", serial)))
    assert len(fake.requests) == 1
    later = fake.yank("foo", "1.0", reason="Oops")
    # a newer event wants a newer answer, unless one was just fetched...
    assert not result(run(stub, client.release("foo", "1.0",
                                               later))).yanked
    # ...or the caller insists
    assert result(run(stub, client.release(
        "foo", "1.0", later, allow_stale=False))).yank_reason == "Oops"
    assert len(fake.requests) == 2
    fake.unyank("foo", "1.0")
    clock.advance(client.refetch_interval)
    assert not result(run(stub, client.release(
        "foo", "1.0", fake.last_serial()))).yanked
    assert len(fake.requests) == 3


def test_catching_up_reads_whole_projects(fake, stub, client):
    for version in ("1.0", "2.0", "3.0"):
        fake.release("foo", version)
    client.prefer_projects = True
    found = [result(run(stub, client.release("foo", v, 1)))
             for v in ("1.0", "2.0", "3.0", "4.0")]
    assert [f and f.version for f in found] == ["1.0", "2.0", "3.0", None]
    assert [r["path"] for r in fake.requests] == ["/pypi/foo/json"]
    # and a cached project answers for its releases however asked
    client.prefer_projects = False
    assert result(run(stub, client.release("foo", "2.0", 1))).version == "2.0"
    assert len(fake.requests) == 1


def test_without_release_documents_projects_answer(fake, stub, client):
    fake.release_documents = False
    fake.release("foo", "1.0", requires_python=">=3.12")
    fake.release("foo", "2.0")
    release = result(run(stub, client.release("foo", "1.0")))
    assert release.requires_python == ">=3.12"
    assert client.release_documents is False
    assert result(run(stub, client.release("foo", "2.0"))).version == "2.0"
    assert [r["path"] for r in fake.requests] == [
        "/pypi/foo/1.0/json", "/pypi/foo/json"]


def test_unknown_projects_are_remembered_for_a_while(fake, stub, client,
                                                     clock):
    assert result(run(stub, client.project("nothing"))) is None
    assert result(run(stub, client.release("nothing", "1.0"))) is None
    assert result(run(stub, client.project("nothing"))) is None
    assert len(fake.requests) == 2
    clock.advance(client.not_found_ttl)
    fake.release("nothing", "1.0")
    assert result(run(stub, client.project("nothing"))).releases.keys() == \
        {"1.0"}


def test_many_callers_share_one_request(fake, stub, client):
    fake.release("foo", "1.0")
    first = defer.Deferred.fromCoroutine(client.release("foo", "1.0"))
    second = defer.Deferred.fromCoroutine(client.release("foo", "1.0"))
    stub.flush()
    assert result(first) == result(second)
    assert len(fake.requests) == 1


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "no 'info' object"),
    (b'{"info": {}, "last_serial": "x"}', "last_serial"),
    (b'{"info": {}, "urls": [{"size": 3}]}', "without a file name"),
    (b'{"info": {}, "urls": "none"}', "file list"),
])
def test_malformed_documents_say_what_is_wrong(clock, body, message):
    stub = StubTreq(Scripted((200, {}, body)))
    client = PyPIJson(stub, clock, "http://pypi.test/pypi")
    with pytest.raises(Malformed, match=message):
        result(run(stub, client.release("foo", "1.0")))


def test_odd_values_are_made_safe(clock):
    stub = StubTreq(Scripted((200, {}, (
        b'{"info": {"summary": "' + b"x" * 300 + b'\\u0000", '
        b'"requires_python": ">=3.8' + b",!=3.9.1" * 30 + b'", '
        b'"yanked": true, "yanked_reason": null}, '
        b'"urls": [], "last_serial": 7}'))))
    client = PyPIJson(stub, clock, "http://pypi.test/pypi")
    release = result(run(stub, client.release("foo", "1.0")))
    assert len(release.summary) == 200 and "\x00" not in release.summary
    assert release.requires_python == ""  # too long to keep whole
    assert (release.yanked, release.yank_reason) == (True, "")
    assert (release.files, release.released) == ((), None)


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def big_project(fake, name="big", releases=40):
    for index in range(releases):
        fake.release(name, f"1.{index}", files=["sdist", "binary"])


def test_a_document_over_the_limit_is_refused_once_and_done_without(
        fake, stub, clock, logged, observe_errors):
    big_project(fake)
    client = PyPIJson(stub, clock, "http://pypi.test/pypi", max_bytes=4000)
    with pytest.raises(TooLarge, match="larger than 4000 bytes"):
        result(run(stub, client.project("big")))
    errors = [formatEvent(e) for e in logged
              if e.get("log_level") == LogLevel.error]
    assert len(errors) == 1
    assert "http://pypi.test/pypi/big/json is larger than 4000 bytes" in \
        errors[0]
    # remembered: not fetched again, however it is asked for
    with pytest.raises(TooLarge):
        result(run(stub, client.project("big")))
    # while catching up, a release comes from its own small document
    client.prefer_projects = True
    release = result(run(stub, client.release("big", "1.7", 1)))
    assert release.kinds() == {FileKind.SOURCE, FileKind.BINARY}
    assert [r["path"] for r in fake.requests] == [
        "/pypi/big/json", "/pypi/big/1.7/json"]
    assert len([e for e in logged
                if e.get("log_level") == LogLevel.error]) == 1
    observe_errors.clear()  # the error is what this test expects


class Endless(resource.Resource):
    """Declares a large body, sends a little of it and never the rest."""

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"Content-Length", b"50000000")
        request.write(b'{"info": {}, "releases": {' + b" " * 1000)
        return server.NOT_DONE_YET


@pytest_twisted.ensureDeferred
async def test_a_declared_length_over_the_limit_is_refused_before_reading(
        reactor, observe_errors):
    port = reactor.listenTCP(0, server.Site(Endless()),
                             interface="127.0.0.1")
    http, pool = new_http_client(reactor)
    try:
        client = PyPIJson(
            http, reactor, f"http://127.0.0.1:{port.getHost().port}/pypi",
            timeout=10.0, max_bytes=100_000)
        started = reactor.seconds()
        with pytest.raises(TooLarge):
            await client.project("foo")
        # at the first piece, not after the timeout
        assert reactor.seconds() - started < 5
    finally:
        await pool.closeCachedConnections()
        await port.stopListening()
    observe_errors.clear()


@pytest.mark.parametrize("text", [
    '{"info": {"a": [1, 2, {"b": null}]}, "releases": {"1.0": [], '
    '"2.0": [{"x": "\\u00e9\\"q"}]}, "last_serial": 3}',
    ' { } ', '[1, {"a": 2}]', '"text"', '{"a": {"b": {"c": {}}}}',
    '{"\\u0061" : 1 , "b":{ } }',
])
def test_stepwise_decoding_is_json_loads(text):
    assert loads_in_steps(text.encode()) == json.loads(text)
    assert loads_in_steps(text.encode("utf-16")) == json.loads(text)


@pytest.mark.parametrize("text", [
    '{"a": 1} x', '{"a" 1}', '{"a": 1,}', '{a: 1}', '{"a": {"b": 1 "c"}}',
    '{"a": [1, 2}', '',
])
def test_stepwise_decoding_refuses_what_json_loads_refuses(text):
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        loads_in_steps(text.encode())


@pytest_twisted.ensureDeferred
async def test_large_documents_are_read_in_the_thread_pool(reactor,
                                                           monkeypatch):
    """A project's document over 256 KiB is decoded and made into records
    off the reactor's thread."""
    fake = FakePyPI(reactor)
    big_project(fake, releases=1500)
    fake.listen()
    threads = []
    parse_project = json_api.parse_project

    def watched(data, where):
        threads.append(threading.current_thread())
        return parse_project(data, where)

    monkeypatch.setattr(json_api, "parse_project", watched)
    http, pool = new_http_client(reactor)
    try:
        client = PyPIJson(http, reactor, fake.url + "/pypi")
        project = await client.project("big")
        assert len(project.releases) == 1500
        assert threads and threads[0] is not threading.main_thread()
        fake.release("small", "1.0")
        await client.project("small")
        assert threads[1] is threading.main_thread()  # a small one inline
    finally:
        await pool.closeCachedConnections()
        await fake.stop()


async def pypi_or_skip(reactor, query):
    try:
        return await query
    except Unreachable as e:
        pytest.skip(f"PyPI cannot be reached: {e}")


async def record_project(db, package, project):
    """Record *project* in the database as the follower's population
    does."""
    async def work(tx):
        outcome = Outcome()
        applier = Applier(tx, Details(), outcome, skip_pure_wheels=True)
        await applier.add_project(package, project.name, project, T0)
        await applier.finish()
        return outcome
    return await in_transaction(db, work)


@pytest.mark.pypi
@pytest_twisted.ensureDeferred
async def test_real_pypi_json(reactor, db):
    http, pool = new_http_client(reactor)
    try:
        client = PyPIJson(http, reactor, "https://pypi.org/pypi",
                          timeout=20)
        release = await pypi_or_skip(reactor,
                                     client.release("treq", "23.11.0"))
        # (release documents 404 from some networks: then the project's
        # document answers, and it is used from then on)
        assert release.version == "23.11.0"
        assert {"treq-23.11.0.tar.gz",
                "treq-23.11.0-py3-none-any.whl"} <= \
            {f.filename for f in release.files}
        assert release.kinds() == {FileKind.SOURCE, FileKind.PURE_WHEEL}
        assert release.requires_python.startswith(">=3.")
        assert datetime(2023, 11, 1, tzinfo=timezone.utc) < \
            release.released < datetime(2023, 12, 1, tzinfo=timezone.utc)
        assert "HTTP" in release.summary
        assert release.as_of > 20_000_000
        project = await pypi_or_skip(reactor, client.project("Twisted"))
        assert project.name == "Twisted"
        assert "22.10.0" in project.releases
        assert project.releases["22.10.0"].kinds() == {
            FileKind.SOURCE, FileKind.PURE_WHEEL}
        assert project.last_serial >= release.as_of - 10_000_000
        assert await client.release("no-such-project-piwtwist-xyz",
                                    "1.0") is None
        # and into the database, as a population would
        treq = await client.project("treq")
        await record_project(db, "treq", treq)
        recorded = {v.version: v for v in await db.get_project_versions(
            "treq")}
        assert recorded["23.11.0"].skip == SKIP_PURE_WHEEL
        assert recorded["23.11.0"].released == release.released
        assert recorded["23.11.0"].requires_python == \
            release.requires_python
        assert await db.get_package_description("treq") == treq.summary
        assert len(recorded) >= 20
    finally:
        await pool.closeCachedConnections()
