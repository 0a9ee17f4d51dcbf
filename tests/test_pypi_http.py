"""The polite HTTP client and the XML-RPC client, with treq's StubTreq and
a fake clock: no sockets, no reactor."""

import xmlrpc.client
from email.utils import formatdate

import pytest
from twisted.internet import defer, task
from twisted.web import resource, server
from twisted.web.http_headers import Headers
from treq.testing import StubTreq

from piwtwist import __version__
from piwtwist.pypi.http import (
    USER_AGENT, BackOff, Malformed, Overloaded, PoliteClient, RateLimited,
    Refused, Reply, Unreachable, seconds_to_wait,
)
from piwtwist.pypi.xmlrpc import PyPIXmlRpc, XmlRpcFault

NOW = 1_800_000_000.0


def reply(**headers):
    return Reply(200, Headers({k: [v] for k, v in headers.items()}), b"")


@pytest.mark.parametrize("headers, wait", [
    ({}, None),
    ({"Retry-After": "30"}, 30),
    ({"Retry-After": formatdate(NOW + 30, usegmt=True)}, 30),
    ({"Retry-After": "soon"}, None),
    ({"RateLimit": "limit=100, remaining=0, reset=7"}, 7),
    ({"RateLimit": "limit=100, remaining=5, reset=7"}, None),
    ({"RateLimit": '"default";r=0;t=12'}, 12),
    ({"RateLimit-Remaining": "0", "RateLimit-Reset": "9"}, 9),
    ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(NOW + 20)}, 20),
    ({"Retry-After": "5", "RateLimit": "remaining=0, reset=50"}, 50),
])
def test_how_long_pypi_asks_us_to_wait(headers, wait):
    assert seconds_to_wait(reply(**headers), NOW) == wait


def test_back_off_doubles_up_to_a_maximum_and_honours_requests():
    backoff = BackOff(initial=1, maximum=10)
    assert [backoff.failed() for _ in range(5)] == [1, 2, 4, 8, 10]
    backoff.succeeded()
    assert backoff.failed() == 1
    assert backoff.failed(requested=60) == 60


class Scripted(resource.Resource):
    """Answers each request with the next (status, headers, body); a
    ``None`` answer never comes."""

    isLeaf = True

    def __init__(self, *answers):
        super().__init__()
        self.answers = list(answers)
        self.requests = []
        self.bodies = []

    def render(self, request):
        self.requests.append(request)
        self.bodies.append(request.content.read())
        answer = self.answers.pop(0)
        if answer is None:
            return server.NOT_DONE_YET
        status, headers, body = answer
        request.setResponseCode(status)
        for key, value in headers.items():
            request.setHeader(key, value)
        return body


def run(stub, coroutine):
    d = defer.Deferred.fromCoroutine(coroutine)
    stub.flush()
    return d


def result(d):
    failures = []
    values = []
    d.addCallbacks(values.append, failures.append)
    if failures:
        failures[0].raiseException()
    assert values, "not finished"
    return values[0]


def test_requests_say_who_we_are():
    site = Scripted((200, {}, b"ok"))
    stub = StubTreq(site)
    client = PoliteClient(stub, task.Clock())
    answer = result(run(stub, client.request("GET", "http://pypi.test/x")))
    assert answer.body == b"ok"
    agent = site.requests[0].getHeader("user-agent")
    assert agent == USER_AGENT and agent.startswith(f"piwtwist/{__version__}")


@pytest.mark.parametrize("status, problem", [
    (429, Overloaded), (500, Overloaded), (503, Overloaded),
    (405, Refused), (403, Refused), (404, Refused),
])
def test_error_statuses_become_problems(status, problem):
    stub = StubTreq(Scripted((status, {}, b"no")))
    client = PoliteClient(stub, task.Clock())
    with pytest.raises(problem, match=str(status)):
        result(run(stub, client.request("GET", "http://pypi.test/x")))


def test_accepted_statuses_are_returned():
    stub = StubTreq(Scripted((404, {}, b"gone")))
    client = PoliteClient(stub, task.Clock())
    answer = result(run(stub, client.request(
        "GET", "http://pypi.test/x", accept_statuses=(404,))))
    assert answer.status == 404


def test_a_request_without_an_answer_times_out():
    clock = task.Clock()
    stub = StubTreq(Scripted(None))
    client = PoliteClient(stub, clock, timeout=5)
    d = run(stub, client.request("GET", "http://pypi.test/x"))
    clock.advance(4.9)
    assert not d.called
    clock.advance(0.2)
    with pytest.raises(Unreachable, match="within 5 s"):
        result(d)
    assert not clock.getDelayedCalls()


def test_answers_too_large_are_refused():
    stub = StubTreq(Scripted((200, {}, b"x" * 2000)))
    client = PoliteClient(stub, task.Clock(), max_bytes=1000)
    with pytest.raises(Malformed, match="larger than 1000 bytes"):
        result(run(stub, client.request("GET", "http://pypi.test/x")))


def test_a_requested_pause_keeps_the_gate_shut():
    clock = task.Clock()
    site = Scripted((429, {"Retry-After": "30"}, b""), (200, {}, b"ok"))
    stub = StubTreq(site)
    client = PoliteClient(stub, clock)
    with pytest.raises(Overloaded) as caught:
        result(run(stub, client.request("GET", "http://pypi.test/x")))
    assert caught.value.retry_after == 30
    clock.advance(29)
    with pytest.raises(RateLimited):
        result(run(stub, client.request("GET", "http://pypi.test/x")))
    assert len(site.requests) == 1  # nothing was sent
    clock.advance(1)
    assert result(run(stub, client.request(
        "GET", "http://pypi.test/x"))).body == b"ok"


def xmlrpc_answer(value):
    return (200, {"Content-Type": "text/xml"},
            xmlrpc.client.dumps((value,), methodresponse=True,
                                allow_none=True).encode())


def test_changelog_since_serial():
    entries = [["foo", None, 1700000000, "create", 5],
               ["foo", "1.0", 1700000001, "new release", 6]]
    site = Scripted(xmlrpc_answer(entries))
    stub = StubTreq(site)
    client = PyPIXmlRpc(stub, task.Clock(), "http://pypi.test/pypi")
    assert result(run(stub, client.changelog_since_serial(4))) == entries
    sent = site.requests[0]
    assert sent.method == b"POST"
    assert sent.getHeader("content-type") == "text/xml"
    params, method = xmlrpc.client.loads(site.bodies[0])
    assert (method, params) == ("changelog_since_serial", (4,))


@pytest.mark.parametrize("answer, problem, message", [
    ((200, {}, b"<html>Oops</html>"), Malformed, "not XML-RPC"),
    ((200, {}, b"\x00\x01garbage"), Malformed, "not XML-RPC"),
    (xmlrpc_answer("serial"), Malformed, "gave a str, not a list"),
    ((200, {}, xmlrpc.client.dumps(xmlrpc.client.Fault(
        -32500, "HTTPTooManyRequests"), methodresponse=True).encode()),
     XmlRpcFault, "HTTPTooManyRequests"),
])
def test_bad_xmlrpc_answers_say_what_was_wrong(answer, problem, message):
    stub = StubTreq(Scripted(answer))
    client = PyPIXmlRpc(stub, task.Clock(), "http://pypi.test/pypi")
    with pytest.raises(problem, match=message):
        result(run(stub, client.changelog_since_serial(4)))


def test_last_serial_and_package_list():
    stub = StubTreq(Scripted(
        xmlrpc_answer(1234), xmlrpc_answer(True),
        xmlrpc_answer({"Foo": 12, "bar": 13, "odd": "x"})))
    client = PyPIXmlRpc(stub, task.Clock(), "http://pypi.test/pypi")
    assert result(run(stub, client.changelog_last_serial())) == 1234
    with pytest.raises(Malformed, match="not a serial"):
        result(run(stub, client.changelog_last_serial()))
    assert result(run(stub, client.list_packages_with_serial())) == {
        "Foo": 12, "bar": 13}
