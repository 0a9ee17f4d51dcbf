"""Check, before a builder takes any work, that it can build at all.

Every build runs ``python -m pip wheel --use-pep517 ...`` with the Python
that runs the builder, so pip is the builder's build frontend. With
``--use-pep517`` pip builds every sdist, a legacy ``setup.py``-only one
included, in an isolated environment into which it installs the build
requirements from the index; nothing but pip itself has to be in the
builder's own virtual environment. A venv made by Debian's ``python3 -m
venv`` has pip 23.0.1 and setuptools but no ``wheel``: without PEP 517 that
pip ran a legacy ``setup.py bdist_wheel`` there and every such build failed
with "invalid command 'bdist_wheel'".

The oldest pip accepted is 19.0.3. PEP 517 and ``--use-pep517`` arrived in
19.0, but 19.0 and 19.0.1 crash on PEP 517 builds with ``--no-cache-dir``
(which builds always pass); 19.0.2 fixed that and made the backend of a
project without ``pyproject.toml`` setuptools' ``build_meta:__legacy__``,
which runs ``setup.py`` the way it expects to be run; 19.0.3 fixed a
regression of 19.0.2 in the wheels it installs, build requirements
included.

The check runs once at start-up, before the reactor runs, so a builder that
cannot build refuses to start instead of failing every build it is given.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
from packaging.version import InvalidVersion, Version

MINIMUM_PIP = Version("19.0.3")
CHECK_TIMEOUT = 60

_PIP_VERSION = re.compile(r"^pip (\S+) from (.+) \(python [^)]+\)\s*$",
                          re.MULTILINE)


class BuildFrontendError(Exception):
    """The builder cannot build; the message says why and what to do."""


@attrs.frozen
class BuildFrontend:
    """What builds will run: pip *version* (from *location*) in *python*."""

    python: str
    version: Version
    location: str

    def __str__(self):
        return f"pip {self.version} (PEP 517, isolated builds)"


def environment_of(python):
    """The virtual environment (or installation) *python* belongs to."""
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        return sys.prefix
    path = Path(python)
    return str(path.parent.parent if path.parent.name == "bin"
               else path.parent)


def parse_pip_version(output):
    """``pip 23.0.1 from /x/pip (python 3.11)`` -> (Version, location), or
    None when *output* says no such thing."""
    match = _PIP_VERSION.search(output)
    if match is None:
        return None
    try:
        return Version(match.group(1)), match.group(2)
    except InvalidVersion:
        return None


def check_build_frontend(python=sys.executable, timeout=CHECK_TIMEOUT):
    """Ask *python*'s pip for its version and return the
    :class:`BuildFrontend` builds will use, or raise
    :class:`BuildFrontendError` with one sentence that says what is
    missing and how to put it right.

    pip runs as builds run it: no configuration file, no user site (a
    build's HOME is empty), from a neutral directory.
    """
    where = environment_of(python)
    environment = {
        "PATH": os.environ.get("PATH") or "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHONNOUSERSITE": "1",
    }
    try:
        result = subprocess.run(
            [python, "-m", "pip", "--version"], cwd="/", env=environment,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, errors="replace",
            timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BuildFrontendError(
            f"{python} -m pip --version did not answer within {timeout} "
            f"seconds, so builds could not run either") from None
    except OSError as error:
        raise BuildFrontendError(
            f"cannot run {python}, the Python that builds use: "
            f"{error.strerror or error}") from None
    said = (result.stderr.strip() or result.stdout.strip())
    last_line = said.splitlines()[-1] if said else "no output"
    if result.returncode != 0:
        if "No module named pip" in said:
            raise BuildFrontendError(
                f"pip is not installed in {where}, and builds need it: run "
                f"{python} -m ensurepip (on Debian, python3-venv provides "
                f"ensurepip)")
        raise BuildFrontendError(
            f"{python} -m pip --version failed (exit status "
            f"{result.returncode}: {last_line}); repair pip in {where} with "
            f"{python} -m ensurepip --upgrade")
    found = parse_pip_version(result.stdout)
    if found is None:
        raise BuildFrontendError(
            f"cannot make out pip's version from {python} -m pip --version "
            f"({last_line}); repair pip in {where} with "
            f"{python} -m ensurepip --upgrade")
    version, location = found
    if version < MINIMUM_PIP:
        raise BuildFrontendError(
            f"pip {version} in {where} is too old to build every sdist "
            f"through PEP 517 in isolation ({MINIMUM_PIP} or later is "
            f"needed): run {python} -m pip install --upgrade pip")
    return BuildFrontend(python=python, version=version, location=location)
