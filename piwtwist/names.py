"""What a project name, a version and a file name may be, in one place.

Names reach piwtwist from PyPI's journal, from admins, from builders (which
may be compromised) and from the database, and leave it in file paths, URLs
and ``pip`` command lines.  Every rule about their shape lives here, so that
the master, the builders and the admin tools agree.

There are two strengths of rule:

* **Recorded as PyPI spells it** (:func:`check_recorded`,
  :func:`check_pypi_filename`): PyPI is the authority on what exists, and
  its older releases include names and versions no current tool accepts.
  The database keeps them (bounded, without control characters) so that
  the pages tell the truth.

* **Acted upon** (everything else): a name that becomes a path, a URL or an
  argument must be plain ASCII from a small safe set.  Non-ASCII letters are
  refused outright, so a Cyrillic "а" can never pose as a Latin "a"; a
  leading dash is refused, so ``pip`` cannot read a name as an option.

Versions: :func:`check_version` accepts legacy (non-PEP 440) versions such
as ``0.1dev-r1234`` as long as they are safe text, because they exist on
PyPI and an admin may name them.  Building them is another matter: pip 24.1
and later refuse any version that is not PEP 440, so
:func:`pip_requirement` refuses them too, and a builder can report a clean
failure instead of running pip to no purpose.

Every refusal is an :class:`InvalidName` (a :class:`ValueError`) whose
message names the value and says what is wrong with it.
"""

import re

from packaging.utils import (
    InvalidWheelFilename,
    canonicalize_name,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

#: The database's column sizes for project names and versions.
MAX_NAME_LENGTH = 200
MAX_VERSION_LENGTH = 200
#: NAME_MAX of the file systems the output tree lives on.
MAX_PATH_COMPONENT = 255
#: The longest wheel file name accepted: the file receiver keeps a file
#: being received as ``<name>.ranges.tmp``, which must fit in NAME_MAX.
MAX_FILENAME_LENGTH = MAX_PATH_COMPONENT - len(".ranges.tmp")

#: The characters of anything acted upon, as a person would read them.
SAFE_CHARACTERS = "A-Z a-z 0-9 . _ + ! -"

# PEP 508's name: ASCII letters and digits, with . _ - inside only.
_PROJECT_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?",
                           re.ASCII)
_CANONICAL_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?", re.ASCII)
_SAFE_TEXT = re.compile(r"[A-Za-z0-9._+!-]+", re.ASCII)
# what may begin a version or a path component: never "-", never "."
_SAFE_START = re.compile(r"[A-Za-z0-9]", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidName(ValueError):
    """A project name, version or file name piwtwist will not use; the
    message names it and says why."""


def _shown(value, limit=60):
    """*value* quoted for a message, cut short: a hostile name may be
    megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _as_text(value, what):
    if not isinstance(value, str):
        raise InvalidName(f"{what} {_shown(value)} is not a string")
    if not value:
        raise InvalidName(f"{what} is empty")
    return value


# -- project names -----------------------------------------------------------

def check_project_name(name):
    """*name* if it is a project name piwtwist may act upon.

    PEP 508 syntax (ASCII letters and digits, with ``.``, ``_`` and ``-``
    only between them), at most :data:`MAX_NAME_LENGTH` characters.  Being
    ASCII only refuses look-alike letters from other scripts; starting with
    a letter or digit means ``pip`` never reads the name as an option."""
    _as_text(name, "project name")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"{_shown(name)} is not a valid project name: "
                          f"longer than {MAX_NAME_LENGTH} characters")
    if not _PROJECT_NAME.fullmatch(name):
        raise InvalidName(f"{_shown(name)} is not a valid project name: "
                          f"only ASCII letters and digits, with . _ - "
                          f"between them")
    return name


def is_project_name(name):
    """Whether :func:`check_project_name` accepts *name*."""
    try:
        check_project_name(name)
    except InvalidName:
        return False
    return True


def canonical(name):
    """The PEP 503 canonical form of a valid project *name* (``Foo_Bar``
    becomes ``foo-bar``): the form directories and the database use."""
    return canonicalize_name(check_project_name(name))


def is_canonical(name):
    """Whether *name* is a valid project name already in canonical form,
    as every name the master puts in a path must be."""
    return isinstance(name, str) and len(name) <= MAX_NAME_LENGTH and \
        _CANONICAL_NAME.fullmatch(name) is not None


def project_name_prefix(text):
    """The project name at the start of *text* (after blanks), or None:
    what a person would take as the name of a requirement line that does
    not otherwise parse."""
    match = _PROJECT_NAME.match(text.lstrip())
    return match.group(0) if match else None


# -- versions ----------------------------------------------------------------

def check_version(version):
    """*version* if it is safe to record, show and pass to ``pip``.

    At most :data:`MAX_VERSION_LENGTH` ASCII characters from
    :data:`SAFE_CHARACTERS`, starting with a letter or digit: no blanks,
    commas, semicolons or quotes that would turn ``NAME==VERSION`` into
    something else, no leading dash that ``pip`` would read as an option.
    Legacy (non-PEP 440) versions pass; see :func:`pip_requirement`."""
    _as_text(version, "version")
    if len(version) > MAX_VERSION_LENGTH:
        raise InvalidName(f"{_shown(version)} is not a valid version: "
                          f"longer than {MAX_VERSION_LENGTH} characters")
    if not _SAFE_TEXT.fullmatch(version):
        raise InvalidName(f"{_shown(version)} is not a valid version: "
                          f"characters outside {SAFE_CHARACTERS}")
    if not _SAFE_START.match(version):
        raise InvalidName(f"{_shown(version)} is not a valid version: "
                          f"it must start with a letter or a digit")
    return version


def is_pep440(version):
    """Whether *version* is a PEP 440 version (``1.0``, ``2!1.0rc1``,
    ``1.0+local``), the only kind current pips install."""
    try:
        Version(version)
    except (InvalidVersion, TypeError):
        return False
    return True


def pip_requirement(name, version):
    """``NAME==VERSION`` for ``pip wheel``, or :class:`InvalidName` when pip
    must not or will not take it: an unsafe name or version, or a legacy
    version (pip 24.1 and later refuse anything that is not PEP 440)."""
    check_project_name(name)
    check_version(version)
    if not is_pep440(version):
        raise InvalidName(f"{_shown(version)} is not a valid version for "
                          f"pip: not a PEP 440 version, which pip 24.1 and "
                          f"later will not install")
    return f"{name}=={version}"


# -- file names --------------------------------------------------------------

def is_safe_path_component(name):
    """Whether *name* can be one component of a path in the output tree:
    at most :data:`MAX_PATH_COMPONENT` characters from
    :data:`SAFE_CHARACTERS`, starting with a letter or digit, so it holds
    no separator, is never ``.`` or ``..`` or a hidden file, and nothing a
    shell or a URL would choke on."""
    return isinstance(name, str) and 0 < len(name) <= MAX_PATH_COMPONENT \
        and _SAFE_TEXT.fullmatch(name) is not None \
        and _SAFE_START.match(name) is not None


def check_wheel_filename(filename):
    """The (name, version, build, tags) of a wheel's file name that may be
    written to disk and published, as :func:`packaging.utils.
    parse_wheel_filename` gives them; :class:`InvalidName` otherwise.

    The name must be a plain file name (no ``/``, ``\\``, NUL or ``..``,
    not hidden), at most :data:`MAX_FILENAME_LENGTH` characters from
    :data:`SAFE_CHARACTERS`, a well-formed wheel name whose project name
    passes :func:`check_project_name`."""
    _as_text(filename, "file name")
    for bad in ("/", "\\", "\0", ".."):
        if bad in filename:
            raise InvalidName(f"file name {_shown(filename)} contains "
                              f"{bad!r}")
    if filename.startswith("."):
        raise InvalidName(f"file name {_shown(filename)} starts with '.'")
    if len(filename) > MAX_FILENAME_LENGTH:
        raise InvalidName(f"file name {_shown(filename, 40)} is longer "
                          f"than {MAX_FILENAME_LENGTH} characters")
    if not _SAFE_TEXT.fullmatch(filename):
        raise InvalidName(f"file name {_shown(filename)} has characters "
                          f"outside {SAFE_CHARACTERS}")
    try:
        parsed = parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        raise InvalidName(f"{filename!r} is not a wheel's file name: "
                          f"{exc}") from None
    if not is_project_name(parsed[0]):
        raise InvalidName(f"{filename!r} has no valid project name")
    return parsed


# -- as PyPI spells them -----------------------------------------------------

def check_recorded(value, what, limit):
    """*value* (a *what*: a name, version or file name as PyPI's journal
    spells it) if the database can record it: text, not blank, at most
    *limit* characters and free of control characters.  Nothing more is
    asked, because PyPI's history holds spellings no current tool takes."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidName(f"{what} {_shown(value)} is not a name")
    if len(value) > limit:
        raise InvalidName(f"{what} is longer than {limit} characters")
    if _CONTROL.search(value):
        raise InvalidName(f"{what} holds control characters")
    return value


def check_pypi_filename(filename):
    """A file name as PyPI's journal spells it (stripped) if it is a plain
    name: recordable, and neither a path nor ``.`` or ``..``."""
    filename = check_recorded(filename, "file name",
                              MAX_PATH_COMPONENT).strip()
    if "/" in filename or "\\" in filename or filename in (".", ".."):
        raise InvalidName(f"file name {_shown(filename)} is not a plain "
                          f"name")
    return filename
