"""Plain values that travel between builders, admin tools and the master.

A wheel's facts are read on a builder (or by ``piw-import``), sent over
AMP and recorded by the master's database layer.  They live here, outside
:mod:`piwtwist.db`, so that a builder never imports anything of the
database; :mod:`piwtwist.db.records` re-exports them for the database
functions.
"""

import attrs


@attrs.frozen
class BuildFile:
    """A wheel a build produced, as recorded (and as a builder reports it)."""

    filename: str
    filesize: int
    filehash: str
    package_tag: str
    package_version_tag: str
    py_version_tag: str
    abi_tag: str
    platform_tag: str
    requires_python: str = ""
    location: str = ""


@attrs.frozen
class Dependency:
    """Something a wheel needs: ``tool`` is apt, pip or unresolved."""

    tool: str
    dependency: str
