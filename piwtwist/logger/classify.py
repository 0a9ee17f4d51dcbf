"""Which requests count, and as what: the rules shared by ``piw-logger``
and the master's own web server.

A **download** is a ``GET`` answered 200 of ``/simple/<project>/<file>.whl``
by any client; a **search** is a ``GET`` of ``/simple/<project>/`` by pip
or uv (answered 200, 304 or 404: a search for a project piwheels lacks is
worth knowing about); a **project** page hit is ``/project/<project>/``, a
**json** hit ``/project/<project>/json/`` and a **page** hit ``/`` or
``/<page>.html``, each answered 200.  ``HEAD``, the PEP 658 ``.metadata``
files, redirects, errors and everything else are ignored.

A hit is a list, as it travels to the master (CBOR) and into the database:

* ``[DOWNLOAD, time, address, filename, client]``
* ``[SEARCH, time, address, project, client]``
* ``[PROJECT | JSON | PAGE, time, address, name, user_agent, bot]``

``time`` is seconds since the epoch, ``client`` is ``None`` or a list of
:data:`CLIENT_FIELDS` values read from the User-Agent: pip's and uv's JSON
through ``linehaul``; for any other client its first product token, bounded
and without control characters.  Text that came from the network never
carries a control character and never exceeds the database's columns.
"""

import functools
import ipaddress
import re
from urllib.parse import unquote

from linehaul.ua import parser as ua_parser

DOWNLOAD, SEARCH, PROJECT, JSON, PAGE = range(5)
KIND_NAMES = ("download", "search", "project", "json", "page")

#: What a client list holds, in order; the short names are the keys
#: ``log_hits()`` reads (see ``sql/create_piwheels.sql``).
CLIENT_FIELDS = (
    ("in", "installer_name", 20), ("iv", "installer_version", 100),
    ("pn", "py_name", 100), ("pv", "py_version", 100),
    ("dn", "distro_name", 100), ("dv", "distro_version", 100),
    ("di", "distro_id", 100), ("ln", "libc_name", 100),
    ("lv", "libc_version", 100), ("on", "os_name", 100),
    ("ov", "os_version", 100), ("a", "arch", 100),
    ("o", "openssl_version", 200), ("s", "setuptools_version", 100),
    ("c", "ci", None),
)
CLIENT_KEYS = tuple(key for key, _, _ in CLIENT_FIELDS)

MAX_AGENT = 2000       # the page hit tables' user_agent column
MAX_NAME = 200         # project names
MAX_FILENAME = 255
MAX_TOKEN = 100        # a non-installer's first product token

_CONTROL = {code: None for code in (*range(0x00, 0x20), 0x7F,
                                    *range(0x80, 0xA0))}
_BOT = re.compile(r"bot|crawl|spider|slurp|curl|wget|python-requests",
                  re.IGNORECASE)
_SEPARATORS = re.compile(r"[-_.]+")
_PAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.html")


def clean(text, limit):
    """*text* without control characters, at most *limit* characters;
    ``None`` for nothing."""
    if not text:
        return None
    if not text.isprintable():
        text = text.translate(_CONTROL)
    return text[:limit] or None


def is_bot(user_agent):
    return bool(user_agent) and _BOT.search(user_agent) is not None


def canonical(name):
    """PEP 503's normal form of a project name taken from a URL."""
    return _SEPARATORS.sub("-", name).lower()


def _text(value, limit):
    return clean(value, limit) if isinstance(value, str) else None


@functools.lru_cache(maxsize=8192)
def client_details(user_agent):
    """A client list (see :data:`CLIENT_FIELDS`) for *user_agent*, or None.

    Real logs repeat a few thousand agents endlessly, hence the cache.
    """
    if not user_agent:
        return None
    if user_agent.startswith(("pip/", "uv/")):
        details = _installer_details(user_agent)
        if details is not None:
            return details
    token = clean(user_agent.split(None, 1)[0] if user_agent.strip() else "",
                  MAX_TOKEN)
    if not token:
        return None
    name, _, version = token.partition("/")
    return [clean(name, 20), clean(version, 100)] + \
        [None] * (len(CLIENT_FIELDS) - 2)


def _installer_details(user_agent):
    """pip's or uv's facts through linehaul; None when it cannot read them
    (a forged or broken agent)."""
    try:
        agent = ua_parser.parse(user_agent)
    except Exception:
        return None
    if agent is None or agent.installer is None or \
            agent.installer.name not in ("pip", "uv"):
        return None
    impl, distro, system = agent.implementation, agent.distro, agent.system
    libc = distro.libc if distro is not None else None
    values = {
        "in": agent.installer.name, "iv": agent.installer.version,
        "pn": impl.name if impl else None, "pv": agent.python,
        "dn": distro.name if distro else None,
        "dv": distro.version if distro else None,
        "di": distro.id if distro else None,
        "ln": libc.lib if libc else None,
        "lv": libc.version if libc else None,
        "on": system.name if system else None,
        "ov": system.release if system else None,
        "a": agent.cpu, "o": agent.openssl_version,
        "s": agent.setuptools_version,
    }
    details = [_text(values.get(key), limit)
               for key, _, limit in CLIENT_FIELDS[:-1]]
    details.append(agent.ci if isinstance(agent.ci, bool) else None)
    return details


def is_installer(client):
    """Whether a client list is pip's or uv's, as linehaul read it."""
    return client is not None and client[0] in ("pip", "uv") and \
        any(value is not None for value in client[2:])


_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                   r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")


def address(text):
    """*text* as the database stores an address; ``0.0.0.0`` when the log
    holds a host name (``HostnameLookups On``) or nothing usable."""
    if _IPV4.fullmatch(text):
        return text        # already in the form ipaddress would give
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return "0.0.0.0"


def classify(method, path, status, user_agent, host, timestamp):
    """The hit a request makes (see the module's docstring), or None.

    *path* is the request's path as sent (query string allowed),
    *timestamp* seconds since the epoch.
    """
    if method != "GET" or not path.startswith("/"):
        return None
    path = path.partition("?")[0]
    if "%" in path:
        path = unquote(path, errors="replace")
    parts = path.split("/")[1:]
    count = len(parts)
    if count >= 2 and parts[0] == "simple":
        project = parts[1]
        if not project or project.startswith("."):
            return None
        if count == 3:
            name = parts[2]
            if name.endswith(".whl") and status == 200 and \
                    not name.startswith("."):
                return [DOWNLOAD, timestamp, address(host),
                        clean(name, MAX_FILENAME),
                        client_details(user_agent)]
            if name in ("", "index.html", "index.json") and \
                    status in (200, 304, 404):
                client = client_details(user_agent)
                if is_installer(client):
                    return [SEARCH, timestamp, address(host),
                            clean(canonical(project), MAX_NAME), client]
        return None
    if status != 200:
        return None
    if count >= 2 and parts[0] == "project" and parts[1] and \
            not parts[1].startswith("."):
        rest = parts[2:]
        if rest in ([""], ["index.html"]):
            kind = PROJECT
        elif rest in (["json", ""], ["json", "index.json"]):
            kind = JSON
        else:
            return None
        return _page_hit(kind, canonical(parts[1]), user_agent, host,
                         timestamp)
    if count == 1:
        page = parts[0] or "index.html"
        if _PAGE.fullmatch(page):
            return _page_hit(PAGE, page, user_agent, host, timestamp)
    return None


def _page_hit(kind, name, user_agent, host, timestamp):
    agent = clean(user_agent, MAX_AGENT)
    return [kind, timestamp, address(host), clean(name, MAX_NAME), agent,
            is_bot(agent)]
