"""Who asked for what: turning an HTTP request into a hit the database keeps.

pip and uv put a JSON document about the machine in their User-Agent
(``pip/24.0 {"installer":{"name":"pip",...},"cpu":"armv7l",...}``);
:func:`client_details` reads it, and anything else, malformed or hostile,
gives empty details rather than an error.
"""

import ipaddress
import json
import re

from ..db.records import ClientDetails

_BOT = re.compile(r"bot|crawl|spider|slurp|curl|wget|python-requests",
                  re.IGNORECASE)


def is_bot(user_agent):
    return bool(user_agent) and _BOT.search(user_agent) is not None


def _text(value):
    return value if isinstance(value, str) and value else None


def client_details(user_agent):
    """:class:`~piwtwist.db.records.ClientDetails` from an installer's
    User-Agent header."""
    if not user_agent:
        return ClientDetails()
    start = user_agent.find("{")
    if start == -1:
        name, _, version = user_agent.partition(" ")[0].partition("/")
        return ClientDetails(installer_name=_text(name)[:20] if name else None,
                             installer_version=_text(version))
    try:
        facts = json.loads(user_agent[start:])
    except ValueError:
        return ClientDetails()
    if not isinstance(facts, dict):
        return ClientDetails()

    def part(key):
        value = facts.get(key)
        return value if isinstance(value, dict) else {}

    installer, distro = part("installer"), part("distro")
    implementation, system = part("implementation"), part("system")
    return ClientDetails(
        arch=_text(facts.get("cpu")),
        distro_name=_text(distro.get("name")),
        distro_version=_text(distro.get("version")),
        os_name=_text(system.get("name")),
        os_version=_text(system.get("release")),
        py_name=_text(implementation.get("name")),
        py_version=_text(facts.get("python")),
        installer_name=_text(installer.get("name")),
        installer_version=_text(installer.get("version")),
        setuptools_version=_text(facts.get("setuptools_version")))


def client_address(text):
    """*text* when it is an IP address the database can store, else None."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None
