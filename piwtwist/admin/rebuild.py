"""``piw-rebuild home|search|project|index [PACKAGE]``: have the master
rewrite pages of its output tree (cooperatively, while it keeps serving).
``piw-rebuild audit``: have it compare the whole tree with the database,
hashes included, repair what it can and say what it found.
``piw-rebuild reclassify``: have it classify every failed build again from
its stored log (after the rules in piwtwist.failures changed)."""

import sys

from twisted.python import usage

from ..protocol import admin as proto
from .client import AdminOptions, call_master, run_admin_tool


class Options(AdminOptions):
    """piw-rebuild [options] PART [PACKAGE]"""

    config_section = "rebuild"
    synopsis = ("Usage: piw-rebuild [options] home|search|project|index "
                "[PACKAGE] | audit | reclassify")
    longdesc = ("Rewrite the home page, the search index, or one or every "
                "package's project page (project) or index and project "
                "pages (index); or audit the output tree against the "
                "database (audit): orphaned files and deleted projects are "
                "removed, missing pages rewritten, missing or damaged "
                "wheels reported; or classify every failed build again "
                "from its log (reclassify).")

    def parseArgs(self, part, package=None):
        if part not in proto.REBUILD_PARTS:
            raise usage.UsageError(
                f"{part!r} is not one of {', '.join(proto.REBUILD_PARTS)}")
        if package and part in ("home", "search", "audit", "reclassify"):
            raise usage.UsageError(f"{part} takes no PACKAGE")
        self["part"], self["package"] = part, package


def prepare(options, say):
    question = None
    if options["part"] in ("project", "index") and not options["package"]:
        question = (f"Rewrite the {options['part']} pages of every "
                    f"package?")

    async def request(reactor):
        answer = await call_master(reactor, options, proto.Rebuild,
                                   part=options["part"],
                                   package=options["package"] or "")
        return answer["message"]

    return question, request


def main(argv=None, ask=input, out=None, err=None):
    return run_admin_tool("piw-rebuild", Options, prepare, argv, ask, out,
                          err)


if __name__ == "__main__":
    sys.exit(main())
