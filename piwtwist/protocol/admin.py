"""The conversation between the admin tools and the master's admin hub.

The tools (``piw-import``, ``piw-add``, ``piw-remove``, ``piw-rebuild``)
connect to the master's ``--import-queue`` (a UNIX socket only the master's
group may use), send one command and print its answer.  Every command is
answered with a ``message`` for the operator; anything the master refuses
comes back as :class:`AdminError` whose text is the one line the tool
prints.

Tool -> master:

``ImportBuild``  one build made elsewhere: its release, ABI, duration, log
                 and every wheel's facts.  While the command is outstanding
                 the master pulls each wheel from the tool with
                 ``FetchChunks`` (:mod:`piwtwist.protocol.transfer`), exactly
                 as it does from builders; the answer comes once every file
                 is verified and the build recorded, so a tool may delete
                 its sources then and not before.
``AddPackage``   a package, or one release of it, as PyPI's JSON API
                 describes it, with the operator's overrides.
``RemovePackage`` forget a package or release, or only its builds; or skip
                 or yank it instead.
``Rebuild``      rewrite pages of the output tree.
"""

from twisted.protocols import amp

from .builder import WHEEL_FACTS


class AdminError(Exception):
    """The master refused or could not do what was asked; the text says
    why in one line."""


_ERRORS = {AdminError: b"ADMIN_ERROR"}


class ImportBuild(amp.Command):
    commandName = b"import-build"
    arguments = [
        (b"package", amp.Unicode()),
        (b"version", amp.Unicode()),
        # "" lets the master choose from the wheels' tags
        (b"abi_tag", amp.Unicode()),
        (b"duration", amp.Float()),
        (b"files", amp.AmpList(WHEEL_FACTS)),
        # the operator lets these files replace published ones of the same
        # name (a published file otherwise never changes its bytes)
        (b"replace", amp.Boolean(optional=True)),
    ]
    response = [
        (b"build_id", amp.Integer()),
        (b"abi_tag", amp.Unicode()),
        (b"message", amp.Unicode()),
    ]
    errors = dict(_ERRORS)


class ImportLog(amp.Command):
    """One piece of the imported build's log, before ``ImportBuild`` (logs
    are larger than one AMP value may be)."""

    commandName = b"import-log"
    arguments = [(b"offset", amp.Integer()), (b"data", amp.String())]
    response = []
    errors = dict(_ERRORS)


class AddPackage(amp.Command):
    commandName = b"add-package"
    arguments = [
        (b"package", amp.Unicode()),
        # "" for every release with a source distribution
        (b"version", amp.Unicode()),
        (b"skip", amp.Unicode(optional=True)),
        (b"unskip", amp.Boolean()),
        (b"description", amp.Unicode(optional=True)),
        (b"alias", amp.Unicode(optional=True)),
        # ISO 8601
        (b"released", amp.Unicode(optional=True)),
        (b"yank", amp.Boolean()),
        (b"unyank", amp.Boolean()),
    ]
    response = [
        (b"package", amp.Unicode()),
        (b"added", amp.ListOf(amp.Unicode())),
        (b"message", amp.Unicode()),
    ]
    errors = dict(_ERRORS)


class RemovePackage(amp.Command):
    commandName = b"remove-package"
    arguments = [
        (b"package", amp.Unicode()),
        (b"version", amp.Unicode()),
        (b"builds", amp.Boolean()),
        (b"skip", amp.Unicode(optional=True)),
        (b"yank", amp.Boolean()),
        # with builds and no package: every failed build of this class
        # (piwtwist.failures) is removed, so that each is built again
        (b"failure_class", amp.Unicode(optional=True)),
    ]
    response = [(b"message", amp.Unicode())]
    errors = dict(_ERRORS)


#: What ``Rebuild`` rewrites.
REBUILD_PARTS = ("home", "search", "project", "index", "audit",
                 "reclassify")


class Rebuild(amp.Command):
    commandName = b"rebuild"
    arguments = [
        (b"part", amp.Unicode()),
        # "" for every package (project, index)
        (b"package", amp.Unicode()),
    ]
    response = [(b"message", amp.Unicode())]
    errors = dict(_ERRORS)
