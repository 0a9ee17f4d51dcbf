"""Wheels a build brings to the master, checked and recorded the same way
whether a builder built them or an admin imported them."""

import os

import attrs
from packaging.utils import canonicalize_name, canonicalize_version

from ..db.records import BuildFile, Dependency

#: One armv7l build serves armv6l too: Raspberry Pi OS runs the same
#: binaries on both (piwheels does the same).
DEFAULT_PLATFORM_ALIASES = {"linux_armv7l": ("linux_armv6l",)}


def wheel_problem(package, version, wheel):
    """Why *wheel* (the facts a builder or importer sent) cannot belong to
    *package* *version*, or None when it can."""
    if canonicalize_name(wheel["package_tag"]) != package:
        return f"{wheel['filename']} is not a wheel of {package}"
    if canonicalize_version(wheel["package_version_tag"]) != \
            canonicalize_version(version):
        return f"{wheel['filename']} is not a wheel of version {version}"
    return None


def wheel_records(wheel, path, output_path, platform_aliases):
    """The wheel's :class:`BuildFile` and dependencies, then one pair per
    platform alias (published as a hard link in the same directory)."""
    deps = []
    for item in wheel["dependencies"]:
        tool, _, name = item.partition(":")
        if tool in ("apt", "pip", "unresolved") and name:
            deps.append(Dependency(tool, name))
    base = BuildFile(
        filename=wheel["filename"], filesize=wheel["filesize"],
        filehash=wheel["filehash"], package_tag=wheel["package_tag"],
        package_version_tag=wheel["package_version_tag"],
        py_version_tag=wheel["py_version_tag"],
        abi_tag=wheel["abi_tag"], platform_tag=wheel["platform_tag"],
        requires_python=wheel["requires_python"],
        location=os.path.relpath(path, output_path))
    yield base, deps
    for alias in platform_aliases.get(wheel["platform_tag"], ()):
        stem = wheel["filename"][:-len(".whl")]
        alias_name = stem[:-len(wheel["platform_tag"])] + alias + ".whl"
        alias_path = path.with_name(alias_name)
        temporary = path.with_name(f".{alias_name}.link")
        if temporary.exists():
            temporary.unlink()
        os.link(path, temporary)
        os.replace(temporary, alias_path)
        yield attrs.evolve(
            base, filename=alias_name, platform_tag=alias,
            location=os.path.relpath(alias_path, output_path)), deps


def unpublish(output_path, build_files):
    """Remove published files of a build that will not be recorded."""
    for build_file in build_files:
        path = output_path / build_file.location
        if build_file.location and path.is_file():
            path.unlink()
