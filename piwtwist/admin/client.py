"""What every admin tool shares: its options, the question before a
change, the connection to the master's admin socket, and exit codes.

A tool is a ``prepare`` step that runs before the reactor (reading files,
checking arguments, asking the operator) and returns the request to send;
the request runs on the reactor and returns the line to print.
"""

import errno
import getopt
import os
import sys

from twisted.internet import defer, endpoints, error, task
from twisted.protocols import amp
from twisted.python import usage
from twisted.python.failure import Failure

from ..config import (EXIT_FAILURE, EXIT_SUCCESS, EXIT_USAGE, ToolOptions,
                      confirm, run_tool)
from ..logs import start_logging
from ..protocol.admin import AdminError
from ..transfer.sender import FileSender, FileSenderResponders

DEFAULT_IMPORT_QUEUE = "unix:/tmp/piw-import"


class ToolFailure(Exception):
    """The tool could not do its job; the text says why in one line."""


class Declined(Exception):
    """The operator said no."""


class AdminOptions(ToolOptions):
    """Options every admin tool has.  Options may follow the arguments
    (``piw-add foo 1.0 --skip REASON``), as operators expect."""

    optFlags = [["yes", "y", "Answer yes to every question."]]
    optParameters = [
        ["import-queue", None, DEFAULT_IMPORT_QUEUE,
         "The master's admin socket (an endpoint description)."],
    ]

    def parseOptions(self, options=None):
        if options is None:
            options = sys.argv[1:]
        return super().parseOptions(options_first(
            options, self.shortOpt, self.longOpt))


def options_first(argv, short, long):
    """*argv* with every option moved before the first argument (what
    getopt's GNU mode accepts, for the plain getopt twisted uses)."""
    try:
        opts, args = getopt.gnu_getopt(argv, short, long)
    except getopt.error:
        return argv  # the real parse says what is wrong
    ordered = []
    for option, value in opts:
        if option.startswith("--"):
            takes_value = f"{option[2:]}=" in long
        else:
            takes_value = f"{option[1]}:" in short
        ordered += [option, value] if takes_value else [option]
    return [*ordered, "--", *args] if args else ordered


class AdminClient(amp.AMP, FileSenderResponders):
    """The tool's end of the connection; it answers the master's
    FetchChunks for the files it offers (piw-import)."""

    def __init__(self):
        super().__init__()
        self.file_sender = FileSender()


def _connection_problem(description, failure):
    reason = failure.value
    code = getattr(reason, "osError", None) or getattr(reason, "errno", None)
    if isinstance(code, int):
        text = os.strerror(code)
    else:
        text = getattr(reason, "strerror", None) or str(reason) or \
            type(reason).__name__
    if code == errno.EACCES:
        hint = "you must be in the master's group to use its socket"
    else:
        hint = "is piwheels-master running, with this --import-queue?"
    return f"cannot reach the master at {description}: {text} ({hint})"


async def connect(reactor, description):
    """An :class:`AdminClient` connected to the master."""
    try:
        endpoint = endpoints.clientFromString(reactor, description)
    except (ValueError, KeyError, TypeError) as e:
        raise ToolFailure(f"{description!r} is not an endpoint: {e}")
    try:
        return await endpoints.connectProtocol(endpoint, AdminClient())
    except Exception:
        raise ToolFailure(_connection_problem(description, Failure()))


async def call_master(reactor, options, command, **arguments):
    """Send one command; return the master's answer."""
    client = await connect(reactor, options["import-queue"])
    try:
        return await client.callRemote(command, **arguments)
    except AdminError as e:
        raise ToolFailure(str(e))
    except (error.ConnectionDone, error.ConnectionLost) as e:
        raise ToolFailure(f"the master went away: {e}")
    finally:
        if client.transport is not None:
            client.transport.loseConnection()


def run_admin_tool(prog, options_class, prepare, argv=None, ask=input,
                   out=None, err=None):
    """Run a tool: parse, ``prepare(options, say)`` (which returns the
    question to ask, or None, and an ``async request(reactor)`` returning
    the line to print; ``say`` prints a line at once), ask, run the
    request; return the exit code."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    argv = sys.argv[1:] if argv is None else argv

    def main(options):
        if options["verbose"] or options["log-file"]:
            start_logging(options, stream=err)
        try:
            question, request = prepare(
                options, lambda line: out.write(line + "\n"))
            if question and not confirm(question, options["yes"], ask=ask,
                                        out=out):
                raise Declined()
            message = run_on_reactor(request)
        except Declined:
            out.write("Nothing was changed.\n")
            return EXIT_USAGE
        except ToolFailure as e:
            err.write(f"{prog}: {e}\n")
            return EXIT_FAILURE
        if message:
            out.write(message.rstrip("\n") + "\n")
        return EXIT_SUCCESS

    return run_tool(options_class, [prog, *argv], main, stderr=err)


def run_on_reactor(request):
    """Run ``request(reactor)`` to its end on a fresh reactor run; return
    its result, or raise what it raised."""
    outcome = {}

    def start(reactor):
        d = defer.Deferred.fromCoroutine(request(reactor))
        d.addCallbacks(lambda result: outcome.update(result=result),
                       lambda failure: outcome.update(failure=failure))
        return d

    try:
        task.react(start)
    except SystemExit:
        pass
    if "failure" in outcome:
        failure = outcome["failure"]
        if failure.check(ToolFailure, usage.UsageError, Declined):
            failure.raiseException()
        raise ToolFailure(f"unexpected error: {failure.getErrorMessage()}"
                          f" ({failure.type.__name__})")
    return outcome.get("result")


def exit_with(code):
    """Leave the process with *code* once twistd has cleaned up (twistd
    itself always exits 0)."""
    import atexit

    def leave():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    atexit.register(leave)
