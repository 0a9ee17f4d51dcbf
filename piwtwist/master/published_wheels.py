"""Wheels a build brings to the master, checked and recorded the same way
whether a builder built them or an admin imported them.

What is recorded of a wheel (its name and version, its tags) comes from its
file name, which the transfer verified with the file's bytes; what the
sender said about it only has to agree.
"""

import os

import attrs
from packaging.utils import canonicalize_name, canonicalize_version

from .. import names
from ..records import BuildFile, Dependency
from ..transfer.receiver import check_same_bytes

#: One armv7l build serves armv6l too: Raspberry Pi OS runs the same
#: binaries on both (piwheels does the same).
DEFAULT_PLATFORM_ALIASES = {"linux_armv7l": ("linux_armv6l",)}


#: The facts of a wheel that its file name states.
NAME_FACTS = ("package_tag", "package_version_tag", "py_version_tag",
              "abi_tag", "platform_tag")


def filename_facts(filename):
    """The :data:`NAME_FACTS` of a wheel's *filename*, or None when it is
    a wheel file name piwtwist refuses
    (:func:`piwtwist.names.check_wheel_filename`)."""
    try:
        names.check_wheel_filename(filename)
    except names.InvalidName:
        return None
    parts = filename[:-len(".whl")].split("-")
    return dict(zip(NAME_FACTS, (parts[0], parts[1], *parts[-3:])))


def alias_names(filename, platform_aliases):
    """The names under which the wheel *filename* is also published (one
    per alias of its platform)."""
    facts = filename_facts(filename)
    if facts is None:
        return []
    platform = facts["platform_tag"]
    stem = filename[:-len(".whl")]
    return [stem[:-len(platform)] + alias + ".whl"
            for alias in platform_aliases.get(platform, ())]


def wheel_problem(package, version, wheel, abi=None):
    """Why *wheel* (the facts a builder or importer sent) cannot belong to
    *package* *version*, or None when it can.  With *abi*, its ABI tags
    must also be that ABI's, ``none`` or ``abi3``."""
    filename = wheel["filename"]
    facts = filename_facts(filename)
    if facts is None:
        return f"{filename!r} is not a valid wheel file name"
    if canonicalize_name(facts["package_tag"]) != package:
        return f"{filename} is not a wheel of {package}"
    if canonicalize_version(facts["package_version_tag"]) != \
            canonicalize_version(version):
        return f"{filename} is not a wheel of version {version}"
    for key in NAME_FACTS:
        if wheel[key] != facts[key]:
            return (f"the facts sent with {filename} disagree with its "
                    f"name: {key} {wheel[key]!r}, but the name says "
                    f"{facts[key]!r}")
    if abi is not None:
        for tag in facts["abi_tag"].split("."):
            if tag not in (abi, "none", "abi3"):
                return f"{filename} is built for {tag}, not for {abi}"
    return None


def wheel_records(wheel, path, output_path, platform_aliases,
                  replace=False, created=True):
    """The wheel's :class:`BuildFile`, dependencies and *created* (whether
    the caller published the wheel itself, or found it published), then
    the same per platform alias (published as a hard link in the same
    directory), each with whether this call created its link.  An alias
    already published with the same bytes is kept; with other bytes it
    raises :class:`~piwtwist.transfer.receiver.AlreadyPublished`, unless
    *replace*.  The tags come from the file name."""
    deps = []
    for item in wheel["dependencies"]:
        tool, _, name = item.partition(":")
        if tool in ("apt", "pip", "unresolved") and name:
            deps.append(Dependency(tool, name))
    facts = filename_facts(wheel["filename"])
    if facts is None:
        raise ValueError(f"{wheel['filename']!r} is not a valid wheel "
                         f"file name")
    base = BuildFile(
        filename=wheel["filename"], filesize=wheel["filesize"],
        filehash=wheel["filehash"], **facts,
        requires_python=wheel["requires_python"],
        location=os.path.relpath(path, output_path))
    yield base, deps, created
    aliases = platform_aliases.get(facts["platform_tag"], ())
    for alias, alias_name in zip(
            aliases, alias_names(wheel["filename"], platform_aliases)):
        alias_path = path.with_name(alias_name)
        created = _link(path, alias_path, alias_name, wheel, replace)
        yield attrs.evolve(
            base, filename=alias_name, platform_tag=alias,
            location=os.path.relpath(alias_path, output_path)), deps, created


def _link(path, alias_path, alias_name, wheel, replace):
    """Publish *alias_path* as a hard link to *path*; whether it was
    created."""
    if replace:
        temporary = path.with_name(f".{alias_name}.link")
        temporary.unlink(missing_ok=True)
        os.link(path, temporary)
        os.replace(temporary, alias_path)
        return True
    try:
        os.link(path, alias_path)  # never replaces
    except FileExistsError:
        if not os.path.samefile(path, alias_path):
            # rare (the receiver found no conflict): hash it here
            check_same_bytes(alias_path, alias_name, wheel["filesize"],
                             wheel["filehash"])
        return False
    return True


def unpublish(output_path, build_files):
    """Remove published files of a build that will not be recorded."""
    for build_file in build_files:
        path = output_path / build_file.location
        if build_file.location and path.is_file():
            path.unlink()
