"""``twistd -n piwheels-import FILE...``: ``piw-import`` as a one-shot
twistd service; it runs the import, prints the outcome, stops the reactor
and exits 0, 1 or 2 as ``piw-import`` does."""

import sys

from twisted.application import service
from twisted.internet import defer

from ..config import EXIT_FAILURE, EXIT_SUCCESS, EXIT_USAGE, confirm
from .client import ToolFailure, exit_with
from .importer import Options as ImportOptions
from .importer import prepare


class Options(ImportOptions):
    synopsis = "Usage: twistd [twistd options] piwheels-import [options] FILE..."


class ImportOnce(service.Service):
    """Runs one import when the reactor starts, then stops it."""

    def __init__(self, request, reactor, out=None, err=None):
        self.request = request
        self.reactor = reactor
        self.out = sys.stdout if out is None else out
        self.err = sys.stderr if err is None else err
        self.exit_code = None

    def startService(self):
        super().startService()
        d = defer.Deferred.fromCoroutine(self.request(self.reactor))
        d.addCallbacks(self._succeeded, self._failed)
        d.addBoth(lambda _: self.reactor.stop())

    def _succeeded(self, message):
        self.out.write(f"{message}\n")
        self._finish(EXIT_SUCCESS)

    def _failed(self, failure):
        if failure.check(ToolFailure):
            self.err.write(f"piwheels-import: {failure.value}\n")
        else:
            self.err.write(f"piwheels-import: unexpected error: "
                           f"{failure.getErrorMessage()}\n")
        self._finish(EXIT_FAILURE)

    def _finish(self, code):
        self.exit_code = code
        exit_with(code)


class _Declined(service.Service):
    def __init__(self, reactor):
        self.reactor = reactor

    def startService(self):
        super().startService()
        sys.stdout.write("Nothing was changed.\n")
        exit_with(EXIT_USAGE)
        self.reactor.callWhenRunning(self.reactor.stop)


def makeService(options):
    from twisted.internet import reactor
    try:
        question, request = prepare(
            options, lambda line: sys.stdout.write(line + "\n"))
    except ToolFailure as e:
        sys.stderr.write(f"piwheels-import: {e}\n")
        sys.stderr.flush()
        sys.exit(EXIT_FAILURE)
    if not confirm(question, options["yes"]):
        return _Declined(reactor)
    return ImportOnce(request, reactor)
