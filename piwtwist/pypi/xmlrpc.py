"""PyPI's XML-RPC API, the three calls the follower needs, over treq.

Bodies are built and read by the standard library (``xmlrpc.client.dumps``
and ``loads``); a large answer is parsed in the reactor's thread pool so
that 50,000 events never stall the reactor.  Every way an answer can be
wrong becomes a :class:`~piwtwist.pypi.http.PyPIProblem` that says what was
wrong.
"""

import xmlrpc.client
from xml.parsers.expat import ExpatError

from .http import Malformed, PoliteClient, PyPIProblem, in_thread

#: Answers larger than this are parsed in a thread.
PARSE_INLINE_BYTES = 256 * 1024


class XmlRpcFault(PyPIProblem):
    """PyPI answered with an XML-RPC fault (often: too many requests)."""


def _parse(body, check=None):
    """(result,) of an XML-RPC answer, or an exception describing it."""
    try:
        params, _ = xmlrpc.client.loads(body, use_builtin_types=True)
    except xmlrpc.client.Fault as fault:
        return XmlRpcFault(f"XML-RPC fault {fault.faultCode}: "
                           f"{fault.faultString}")
    except (ExpatError, xmlrpc.client.ResponseError, ValueError,
            TypeError, IndexError, KeyError, AttributeError) as e:
        return Malformed(f"the answer is not XML-RPC ({type(e).__name__}: "
                         f"{e})")
    if len(params) != 1:
        return Malformed(f"the answer holds {len(params)} values, not one")
    if check is not None:
        try:
            return (check(params[0]),)
        except Malformed as e:
            return e
    return params


class PyPIXmlRpc:
    """``changelog_since_serial``, ``changelog_last_serial`` and
    ``list_packages_with_serial`` at *url*."""

    def __init__(self, http, reactor, url="https://pypi.org/pypi",
                 timeout=60.0):
        self.url = url
        self.reactor = reactor
        self.client = PoliteClient(http, reactor, timeout=timeout)

    async def call(self, method, *args, check=None):
        """The result of *method*; *check* (result -> result, raising
        Malformed) runs with the parsing, in the thread for a large answer.
        """
        body = xmlrpc.client.dumps(args, method, allow_none=True)
        reply = await self.client.request(
            "POST", self.url, data=body.encode("utf-8"),
            headers={"Content-Type": ["text/xml"]})
        if len(reply.body) > PARSE_INLINE_BYTES:
            parsed = await in_thread(self.reactor, _parse, reply.body, check)
        else:
            parsed = _parse(reply.body, check)
        if isinstance(parsed, Exception):
            raise parsed
        return parsed[0]

    async def changelog_since_serial(self, serial):
        """The raw journal entries after *serial*, oldest first: lists of
        (name, version, timestamp, action, serial); at most PyPI's batch
        size (50,000) of them."""
        entries = await self.call("changelog_since_serial", serial)
        if not isinstance(entries, list):
            raise Malformed(f"changelog_since_serial gave a "
                            f"{type(entries).__name__}, not a list")
        return entries

    async def changelog_last_serial(self):
        serial = await self.call("changelog_last_serial")
        if not isinstance(serial, int) or isinstance(serial, bool) \
                or serial < 0:
            raise Malformed(f"changelog_last_serial gave {serial!r}, not a "
                            f"serial number")
        return serial

    async def list_packages_with_serial(self):
        """Every project's name (as PyPI spells it) -> its last serial."""
        return await self.call("list_packages_with_serial",
                               check=_package_serials)


def _package_serials(packages):
    """list_packages_with_serial's answer (740,000 names on PyPI), checked
    with the parsing rather than on the reactor."""
    if not isinstance(packages, dict):
        raise Malformed(f"list_packages_with_serial gave a "
                        f"{type(packages).__name__}, not a struct")
    return {name: serial for name, serial in packages.items()
            if isinstance(name, str) and isinstance(serial, int)}
