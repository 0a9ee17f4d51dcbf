"""Wheels a build brings to the master, checked and recorded the same way
whether a builder built them or an admin imported them.

What is recorded of a wheel (its name and version, its tags) comes from its
file name, which the transfer verified with the file's bytes; what the
sender said about it only has to agree.
"""

import attrs
from packaging.utils import canonicalize_name, canonicalize_version

from .. import names
from ..records import BuildFile, Dependency

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


def wheel_records(package, wheel, platform_aliases):
    """The wheel's :class:`BuildFile` and dependencies, then the same for
    each alias of its platform (the same bytes under another name, in the
    same directory).  The tags come from the file name; every location is
    ``simple/<package>/<name>``, where :func:`publish_build` puts them
    once the build is committed."""
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
        filehash=wheel["filehash"].lower(), **facts,
        requires_python=wheel["requires_python"],
        location=f"simple/{package}/{wheel['filename']}")
    yield base, deps
    aliases = platform_aliases.get(facts["platform_tag"], ())
    for alias, alias_name in zip(
            aliases, alias_names(wheel["filename"], platform_aliases)):
        yield attrs.evolve(base, filename=alias_name, platform_tag=alias,
                           location=f"simple/{package}/{alias_name}"), deps


async def publish_build(receiver, package, wheels, platform_aliases,
                        replace=False):
    """Publish the staged *wheels* (the facts sent with them) of a build
    that is committed, each with its platform aliases; see
    :meth:`~piwtwist.transfer.receiver.FileReceiver.publish_staged`.  A
    wheel that cannot be published now stays staged: the tree audit
    publishes it later.  Returns the problems."""
    problems = []
    for wheel in wheels:
        try:
            await receiver.publish_staged(
                package, wheel["filename"], wheel["filesize"],
                wheel["filehash"].lower(),
                alias_names(wheel["filename"], platform_aliases),
                replace=replace)
        except Exception as e:
            problems.append(f"cannot publish {wheel['filename']}: {e}")
    return problems
