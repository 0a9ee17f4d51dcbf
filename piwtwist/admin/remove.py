"""``piw-remove PACKAGE [VERSION]``: forget a package or release (its
files and pages go at once), only its builds (so it is built again), or
skip or yank it instead.  ``piw-remove -b --class CLASS``: remove every
failed build of a failure class (say ``missing-header`` once the builders
have the headers), so that each is built again."""

import sys

from twisted.python import usage

from .. import failures
from ..protocol import admin as proto
from .client import AdminOptions, call_master, run_admin_tool


class Options(AdminOptions):
    """piw-remove [options] PACKAGE [VERSION]"""

    config_section = "remove"
    synopsis = ("Usage: piw-remove [options] PACKAGE [VERSION] | "
                "-b --class CLASS")
    longdesc = ("Remove a package or version from the database and the "
                "output tree.")
    optFlags = [
        ["builds", "b", "Remove only the builds and their files, so it is "
                        "built again."],
        ["yank", None, "Mark the version as yanked instead of removing it."],
    ]
    optParameters = [
        ["skip", "s", None,
         "Remove the builds and skip building it again, for REASON."],
        ["class", None, None,
         "With --builds and no PACKAGE: remove every failed build of this "
         "failure class (missing-header, network, timeout, ...), so that "
         "each is built again."],
    ]

    def parseArgs(self, package=None, version=None):
        self["package"], self["version"] = package, version

    def postOptions(self):
        if self["class"] is not None:
            if self["class"] not in failures.CLASSES:
                raise usage.UsageError(
                    f"{self['class']!r} is not a failure class; they are "
                    f"{', '.join(failures.CLASSES)}")
            if not self["builds"] or self["package"] or self["yank"] or \
                    self["skip"] is not None:
                raise usage.UsageError(
                    "--class goes with --builds (-b) and no PACKAGE, "
                    "--skip or --yank")
            return
        if not self["package"]:
            raise usage.UsageError("give a PACKAGE (or -b --class CLASS)")
        if self["yank"] and not self["version"]:
            raise usage.UsageError("--yank needs a VERSION")
        if self["yank"] and (self["builds"] or self["skip"] is not None):
            raise usage.UsageError("--yank keeps everything; it cannot be "
                                   "combined with --builds or --skip")


def prepare(options, say):
    target = " ".join(filter(None, (options["package"], options["version"])))
    if options["class"] is not None:
        question = (f"Remove every failed build of class {options['class']} "
                    f"so that each is built again?")
    elif options["yank"]:
        question = f"Mark {target} as yanked?"
    elif options["skip"] is not None:
        question = (f"Remove the builds of {target} and skip it "
                    f"({options['skip']})?")
    elif options["builds"]:
        question = f"Remove the builds of {target} so it is built again?"
    else:
        question = f"Remove {target} with all its builds and files?"
    arguments = dict(package=options["package"],
                     version=options["version"] or "",
                     builds=bool(options["builds"]),
                     yank=bool(options["yank"]))
    if options["skip"] is not None:
        arguments["skip"] = options["skip"]
    if options["class"] is not None:
        arguments.update(package="", failure_class=options["class"])

    async def request(reactor):
        answer = await call_master(reactor, options, proto.RemovePackage,
                                   **arguments)
        return answer["message"]

    return question, request


def main(argv=None, ask=input, out=None, err=None):
    return run_admin_tool("piw-remove", Options, prepare, argv, ask, out, err)


if __name__ == "__main__":
    sys.exit(main())
