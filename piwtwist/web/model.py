"""What the pages of one project say, worked out from the database's rows.

Pure functions and plain values: :func:`project_facts` takes what the page
writer read and decides every cell of the releases table, the install
instructions and the index entries, so the HTML and JSON renderers (and the
tests) share one answer.
"""

from datetime import timezone

import attrs
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from ..failures import CLASSES
from .layout import log_relative_path

SUCCESS, FAILURE, PENDING, SKIPPED, YANKED = (
    "success", "failure", "pending", "skipped", "yanked")


def abi_order(tag):
    """Sort key of an ABI tag: CPython by version (cp39 before cp310), the
    rest after, by name; the same order as the database's abi_order."""
    digits = ""
    rest = tag.lstrip("abcdefghijklmnopqrstuvwxyz")
    for char in rest:
        if not char.isdigit():
            break
        digits += char
    if len(digits) >= 2:
        return (0, int(digits[0]) * 100 + int(digits[1:]), tag)
    return (1, 0, tag)


def is_prerelease(version):
    try:
        return Version(version).is_prerelease
    except InvalidVersion:
        return False


def utc_iso(moment):
    """PEP 700's ``yyyy-mm-ddThh:mm:ss.ffffffZ``."""
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@attrs.frozen
class Cell:
    """One (release, ABI) of the releases table."""

    status: str
    build_id: int | None = None
    reason: str = ""
    #: a failure's class (piwtwist.failures) and the hint at its fix
    failure_class: str = ""
    failure_hint: str = ""
    #: the remedy a rescued build was retried with
    rescued: str = ""

    @property
    def explanation(self):
        """What the failure class means, in a line."""
        return CLASSES.get(self.failure_class, "")

    @property
    def log_url(self):
        return None if self.build_id is None else \
            "/" + log_relative_path(self.build_id)


@attrs.frozen
class IndexFile:
    """One wheel, as the simple index and the project page list it."""

    filename: str
    version: str
    build_id: int
    builder_abi: str
    abi_tag: str
    platform_tag: str
    size: int
    sha256: str
    requires_python: str
    yanked: bool
    yank_reason: str
    upload_time: str | None
    metadata_sha256: str | None
    apt_dependencies: tuple = ()
    pip_dependencies: tuple = ()
    unresolved_dependencies: tuple = ()


@attrs.frozen
class Release:
    version: str
    released: object
    skip: str
    yanked: bool
    yank_reason: str
    requires_python: str
    prerelease: bool
    cells: dict
    files: tuple


@attrs.frozen
class Project:
    package: str
    description: str
    skip: str
    aliases: tuple
    abis: tuple
    releases: tuple
    files: tuple
    #: ABI -> apt packages to install, for the newest stable release
    apt_install: dict
    pip_dependencies: tuple
    unresolved_dependencies: tuple
    install_version: str | None
    #: downloads in the last 30 days and of all time
    downloads_recent: int = 0
    downloads_all: int = 0

    @property
    def versions(self):
        return tuple(r.version for r in self.releases)


def _file_tags(filename):
    """(interpreter tags, ABI tags, platform tags) of a wheel's name."""
    try:
        _, _, _, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return set(), set(), set()
    return ({t.interpreter for t in tags}, {t.abi for t in tags},
            {t.platform for t in tags})


def covers(filename, file_abi, abi):
    """Whether a wheel serves *abi*: built for it, for no ABI at all, or an
    abi3 wheel for cpXY serving every later CPython of the same major."""
    if file_abi in (abi, "none"):
        return True
    if file_abi == "abi3" and abi.startswith("cp"):
        interpreters, _, _ = _file_tags(filename)
        wanted = abi_order(abi)
        for interpreter in interpreters:
            have = abi_order(interpreter)
            same_major = have[1] // 100 == wanted[1] // 100
            if have[0] == 0 and wanted[0] == 0 and same_major and \
                    have[1] <= wanted[1]:
                return True
    return False


def _cell(abi, release, builds, files_by_build, skip_reasons, package_skip):
    own = [b for b in builds if b.abi_tag == abi]
    if own:
        latest = own[-1]
        if latest.status:
            return Cell(SUCCESS, latest.build_id,
                        rescued=getattr(latest, "rescued", ""))
        return Cell(FAILURE, latest.build_id, latest.reason,
                    failure_class=getattr(latest, "failure_class", "")
                    or "unknown",
                    failure_hint=getattr(latest, "failure_hint", ""),
                    rescued=getattr(latest, "rescued", ""))
    for build in builds:
        files = files_by_build.get(build.build_id, ())
        if build.status and any(covers(f.filename, f.abi_tag, abi)
                                for f in files):
            return Cell(SUCCESS, build.build_id)
    if package_skip:
        return Cell(SKIPPED, reason=package_skip)
    if release.skip:
        return Cell(SKIPPED, reason=release.skip)
    if skip_reasons.get(abi):
        return Cell(SKIPPED, reason=f"{abi}: {skip_reasons[abi]}")
    if release.yanked:
        return Cell(YANKED, reason=release.yank_reason)
    return Cell(PENDING)


def project_facts(package, *, description="", skip="", versions=(),
                  files=(), builds=(), dependencies=None, aliases=(),
                  build_abis=(), preinstalled=None, metadata_hashes=None,
                  downloads=(0, 0)):
    """Everything the pages of *package* show.

    *build_abis* are :class:`~piwtwist.db.records.BuildAbi` values (skipped
    ones included); *preinstalled* maps an ABI to the apt packages its OS
    image ships; *metadata_hashes* maps a wheel's name to the sha256 of its
    published ``.metadata``; *downloads* is (last 30 days, all time).
    """
    dependencies = dependencies or {}
    preinstalled = preinstalled or {}
    metadata_hashes = metadata_hashes or {}
    skip_reasons = {a.abi_tag: a.skip for a in build_abis}
    abis = {a.abi_tag for a in build_abis if not a.skip}
    abis.update(b.abi_tag for b in builds)
    abis = tuple(sorted(abis, key=abi_order))

    builds_by_version, built_at = {}, {}
    for build in sorted(builds, key=lambda b: b.build_id):
        builds_by_version.setdefault(build.version, []).append(build)
        built_at[build.build_id] = build.built_at
    builder_abi = {b.build_id: b.abi_tag for b in builds}
    release_python = {v.version: v.requires_python for v in versions}

    index_files, files_by_build, files_by_version = [], {}, {}
    for f in files:
        deps = dependencies.get(f.filename, ())
        _, _, platforms = _file_tags(f.filename)
        entry = IndexFile(
            filename=f.filename, version=f.version, build_id=f.build_id,
            builder_abi=builder_abi.get(f.build_id, ""), abi_tag=f.abi_tag,
            platform_tag=",".join(sorted(platforms)), size=f.filesize,
            sha256=f.filehash.strip(),
            requires_python=f.requires_python
            or release_python.get(f.version, ""),
            yanked=f.yanked, yank_reason=f.yank_reason,
            upload_time=utc_iso(built_at.get(f.build_id)),
            metadata_sha256=metadata_hashes.get(f.filename),
            apt_dependencies=tuple(d.dependency for d in deps
                                   if d.tool == "apt"),
            pip_dependencies=tuple(d.dependency for d in deps
                                   if d.tool == "pip"),
            unresolved_dependencies=tuple(d.dependency for d in deps
                                          if d.tool == "unresolved"))
        index_files.append(entry)
        files_by_build.setdefault(f.build_id, []).append(entry)
        files_by_version.setdefault(f.version, []).append(entry)

    releases = []
    for v in versions:
        version_builds = builds_by_version.get(v.version, [])
        cells = {abi: _cell(abi, v, version_builds, files_by_build,
                            skip_reasons, skip)
                 for abi in abis}
        releases.append(Release(
            version=v.version, released=v.released, skip=v.skip,
            yanked=v.yanked, yank_reason=v.yank_reason,
            requires_python=v.requires_python,
            prerelease=is_prerelease(v.version), cells=cells,
            files=tuple(sorted(files_by_version.get(v.version, ()),
                               key=lambda f: f.filename))))

    # install instructions: the newest release a plain "pip install" picks
    install = next((r for r in releases
                    if r.files and not r.yanked and not r.prerelease), None)
    apt_install, pip_deps, unresolved = {}, set(), set()
    if install is not None:
        for f in install.files:
            abi = f.builder_abi or f.abi_tag
            wanted = set(f.apt_dependencies) - set(preinstalled.get(abi, ()))
            apt_install.setdefault(abi, set()).update(wanted)
            pip_deps.update(f.pip_dependencies)
            unresolved.update(f.unresolved_dependencies)
    apt_install = {abi: tuple(sorted(names))
                   for abi, names in sorted(apt_install.items(),
                                            key=lambda i: abi_order(i[0]))
                   if names}

    return Project(
        package=package, description=description or "", skip=skip or "",
        aliases=tuple(a.name for a in aliases), abis=abis,
        releases=tuple(releases),
        files=tuple(index_files), apt_install=apt_install,
        pip_dependencies=tuple(sorted(pip_deps)),
        unresolved_dependencies=tuple(sorted(unresolved)),
        install_version=install.version if install else None,
        downloads_recent=downloads[0], downloads_all=downloads[1])


def apt_install_lines(project):
    """``[(abis, "sudo apt install ...")]``: one line for each distinct set
    of packages, with the ABIs that need it."""
    groups = {}
    for abi, names in project.apt_install.items():
        groups.setdefault(names, []).append(abi)
    return [(tuple(abis), "sudo apt install " + " ".join(names))
            for names, abis in groups.items()]
