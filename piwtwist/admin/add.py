"""``piw-add PACKAGE [VERSION]``: add a package or release as PyPI's JSON
API describes it (the master asks PyPI), with the operator's overrides;
``--requirements FILE`` adds exactly the releases a file pins."""

import sys
from datetime import datetime
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from twisted.python import usage

from ..protocol import admin as proto
from .client import AdminOptions, ToolFailure, call_master, run_admin_tool


def _released(value):
    try:
        return datetime.fromisoformat(value.strip()).isoformat()
    except ValueError:
        raise ValueError(f"{value!r} is not a date like 2024-05-01 or "
                         f"2024-05-01T12:30:00") from None


class Options(AdminOptions):
    """piw-add [options] PACKAGE [VERSION]"""

    config_section = "add"
    synopsis = ("Usage: piw-add [options] PACKAGE [VERSION]\n"
                "       piw-add [options] --requirements FILE")
    longdesc = ("Add a package (every release with a source distribution) "
                "or one release to the database, from PyPI's JSON API.")
    optFlags = [
        ["unskip", None, "Build the package or version again after a skip."],
        ["yank", None, "Mark the version as yanked."],
        ["unyank", None, "Mark the version as not yanked."],
    ]
    optParameters = [
        ["skip", None, None, "Add it, but skip building it, for REASON."],
        ["description", "d", None,
         "The package's description (instead of PyPI's summary)."],
        ["alias", "a", None, "Another name the package is known by."],
        ["released", "r", None,
         "When the version was released (instead of PyPI's date).",
         _released],
        ["requirements", None, None,
         "Add the pinned releases (name==version) this file names."],
    ]

    def parseArgs(self, package=None, version=None):
        self["package"], self["version"] = package, version

    def postOptions(self):
        if self["requirements"]:
            if self["package"]:
                raise usage.UsageError(
                    "give a PACKAGE or --requirements, not both")
        elif not self["package"]:
            raise usage.UsageError("name a PACKAGE (or --requirements FILE)")
        if self["skip"] is not None and self["unskip"]:
            raise usage.UsageError("--skip and --unskip contradict each "
                                   "other")
        if self["yank"] and self["unyank"]:
            raise usage.UsageError("--yank and --unyank contradict each "
                                   "other")
        if (self["yank"] or self["unyank"]) and not (
                self["version"] or self["requirements"]):
            raise usage.UsageError("--yank and --unyank need a VERSION")


def read_requirements(path):
    """The (name, version) pairs a requirements file pins, in order."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ToolFailure(f"cannot read {path}: {e.strerror}")
    except UnicodeDecodeError:
        raise ToolFailure(f"{path} is not UTF-8 text")
    pins = []
    for number, line in enumerate(lines, 1):
        text = line.split(" #", 1)[0].strip()
        if not text or text.startswith("#"):
            continue
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            raise ToolFailure(f"{path}, line {number}: {text!r} is not a "
                              f"requirement")
        specifiers = list(requirement.specifier)
        if len(specifiers) != 1 or specifiers[0].operator not in (
                "==", "===") or specifiers[0].version.endswith(".*"):
            raise ToolFailure(f"{path}, line {number}: {text!r} does not "
                              f"pin one version (use NAME==VERSION)")
        pins.append((requirement.name, specifiers[0].version))
    if not pins:
        raise ToolFailure(f"{path} pins no release")
    return pins


def _arguments(options, package, version):
    arguments = dict(package=package, version=version or "",
                     unskip=bool(options["unskip"]),
                     yank=bool(options["yank"]),
                     unyank=bool(options["unyank"]))
    for key in ("skip", "description", "alias", "released"):
        if options[key] is not None:
            arguments[key] = options[key]
    return arguments


def prepare(options, say):
    if options["requirements"]:
        pins = read_requirements(options["requirements"])
        question = (f"Add {len(pins)} release(s) pinned in "
                    f"{options['requirements']} from PyPI?")
    else:
        pins = [(options["package"], options["version"])]
        what = (f"{options['package']} {options['version']}"
                if options["version"] else
                f"{options['package']} (every release with a source "
                f"distribution)")
        question = f"Add {what} from PyPI?"

    async def request(reactor):
        failures = []
        for package, version in pins:
            try:
                answer = await call_master(
                    reactor, options, proto.AddPackage,
                    **_arguments(options, package, version))
            except ToolFailure as e:
                if len(pins) == 1:
                    raise
                failures.append(str(e))
                say(f"failed: {e}")
                continue
            say(answer["message"])
        if failures:
            raise ToolFailure(f"{len(failures)} of {len(pins)} could not "
                              f"be added")
        return None

    return question, request


def main(argv=None, ask=input, out=None, err=None):
    return run_admin_tool("piw-add", Options, prepare, argv, ask, out, err)


if __name__ == "__main__":
    sys.exit(main())
