"""Plain values that go into and come out of the database functions.

Services pass these around instead of rows, so nothing outside ``piwtwist.db``
depends on column order or on the database driver.  The values builders and
admin tools send too (:class:`BuildFile`, :class:`Dependency`) live in
:mod:`piwtwist.records` and are re-exported here.
"""

from datetime import date, datetime, timedelta

import attrs

from ..records import BuildFile, Dependency  # noqa: F401 (re-exported)


@attrs.frozen
class BuildAbi:
    abi_tag: str
    skip: str = ""


@attrs.frozen
class QueueEntry:
    """One (ABI, release) that wants a build."""

    abi_tag: str
    package: str
    version: str
    released: datetime


@attrs.frozen
class Alias:
    name: str
    seen: datetime


@attrs.frozen
class BuildResult:
    """A finished build attempt, ready to be logged.

    ``dependencies`` maps a file name to the :class:`Dependency` values of
    that file.
    """

    package: str
    version: str
    abi_tag: str
    built_by: int
    duration: timedelta
    status: bool
    output: str
    files: tuple = ()
    dependencies: dict = attrs.Factory(dict)
    reason: str = ""
    builder_label: str = ""
    #: who reported it (a builder's token for this build): recorded once
    #: however often it is reported or its commit retried
    token: str | None = None
    #: why it failed (:mod:`piwtwist.failures`), and the hint at a fix
    failure_class: str = ""
    failure_hint: str = ""
    #: the remedy that rescued it (a success whose first attempt failed)
    rescued: str = ""


@attrs.frozen
class Build:
    build_id: int
    package: str
    version: str
    built_by: int
    builder_label: str
    built_at: datetime
    duration: timedelta
    status: bool
    abi_tag: str
    reason: str


@attrs.frozen
class ProjectVersion:
    version: str
    released: datetime
    skip: str
    yanked: bool
    yank_reason: str
    requires_python: str
    builds_succeeded: tuple
    builds_failed: tuple


@attrs.frozen
class ProjectFile:
    version: str
    build_id: int
    abi_tag: str
    filename: str
    filesize: int
    filehash: str
    requires_python: str
    yanked: bool
    yank_reason: str


@attrs.frozen
class ProjectBuild:
    """One build of a package, as the project page shows it."""

    build_id: int
    version: str
    abi_tag: str
    status: bool
    built_at: datetime
    duration: timedelta
    reason: str
    failure_class: str = ""
    failure_hint: str = ""
    rescued: str = ""


@attrs.frozen
class DailyBuilds:
    day: date
    abi_tag: str
    builds: int
    successes: int


@attrs.frozen
class DailyDownloads:
    day: date
    downloads: int


@attrs.frozen
class QueueSample:
    recorded_at: datetime
    abi_tag: str
    queued: int


@attrs.frozen
class Statistics:
    packages_count: int
    packages_built: int
    versions_count: int
    versions_tried: int
    builds_count: int
    builds_count_success: int
    builds_count_last_hour: int
    builds_time: timedelta
    files_count: int
    builds_size: int
    downloads_last_month: int
    downloads_all: int


@attrs.frozen
class SearchEntry:
    package: str
    description: str
    downloads_recent: int
    downloads_all: int


@attrs.frozen
class RewritePending:
    """A page rewrite the page writer still owes; command is PROJECT (the
    project page) or BOTH (project page and the package's index)."""

    package: str
    added_at: datetime
    command: str


@attrs.frozen
class PendingDeletion:
    """Something the output tree must lose because the database lost it
    (see ``pending_deletions`` in the schema); *recorded* says whether what
    it names is recorded again meanwhile, so its files must stay."""

    deletion_id: int
    what: str
    package: str
    filename: str
    location: str
    build_id: int | None
    recorded: bool


@attrs.frozen
class ClientDetails:
    """What pip's user agent says about the machine making a request."""

    arch: str | None = None
    distro_name: str | None = None
    distro_version: str | None = None
    os_name: str | None = None
    os_version: str | None = None
    py_name: str | None = None
    py_version: str | None = None
    installer_name: str | None = None
    installer_version: str | None = None
    setuptools_version: str | None = None


@attrs.frozen
class DownloadHit:
    filename: str
    host: str
    timestamp: datetime
    client: ClientDetails = ClientDetails()


@attrs.frozen
class SearchHit:
    package: str
    host: str
    timestamp: datetime
    client: ClientDetails = ClientDetails()


@attrs.frozen
class PageHit:
    """A view of a project page, a project's JSON, or another page; ``name``
    is the package or the page."""

    name: str
    host: str
    timestamp: datetime
    user_agent: str | None = None
    bot: bool = False
