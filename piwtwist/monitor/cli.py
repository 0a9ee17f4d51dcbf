"""``piw-monitor``: the master and its builders, live, in a terminal.

urwid draws on Twisted's reactor; the connection to the master's
``--control-queue`` reconnects by itself, so the monitor may start before
the master and outlive its restarts.  While urwid owns the terminal
nothing else may write to it: log messages go only to ``-l FILE``.
"""

import sys

import urwid
from twisted.internet import defer, endpoints
from twisted.logger import globalLogBeginner
from twisted.python import usage

from ..config import EXIT_FAILURE, EXIT_SUCCESS, ToolOptions, run_tool
from ..logs import add_log_observers
from ..shared_secret import SecretError, read_secret
from .app import MonitorApp
from .connection import MasterConnection
from .model import Model
from .widgets import PALETTE

DEFAULT_CONTROL_QUEUE = "unix:/tmp/piw-control"
NETWORK_PREFIXES = ("tcp:", "tcp6:", "ssl:", "tls:")


class Options(ToolOptions):
    """piw-monitor [options]"""

    config_section = "monitor"
    synopsis = "Usage: piw-monitor [options]"
    longdesc = ("Watch the master and its builders, and steer them: pause, "
                "resume, sleep, wake, skip, kill, terminate.  Press ? in "
                "the monitor for its keys.")
    optParameters = [
        ["control-queue", None, DEFAULT_CONTROL_QUEUE,
         "The master's control queue (an endpoint description; tcp:, ssl: "
         "and tls: need --secret-file)."],
        ["secret-file", None, None,
         "The builders' shared secret, for a master reached over the "
         "network (tcp:, ssl:, tls:)."],
    ]

    def postOptions(self):
        self["secret"] = None
        if self["control-queue"].startswith(NETWORK_PREFIXES) and \
                self["secret-file"]:
            try:
                self["secret"] = read_secret(self["secret-file"])
            except SecretError as e:
                raise usage.UsageError(str(e))


def start_logging(options):
    """Log to the -l file only (nothing at all without it): the terminal
    belongs to urwid."""
    observers = add_log_observers(options)
    globalLogBeginner.beginLoggingTo([], redirectStandardIO=False)
    return observers


def run(options, reactor=None, screen=None):
    if reactor is None:
        from twisted.internet import reactor
    address = options["control-queue"]
    try:
        endpoint = endpoints.clientFromString(reactor, address)
    except (ValueError, KeyError, TypeError) as e:
        raise usage.UsageError(f"{address!r} is not an endpoint "
                               f"description: {e}")
    observers = start_logging(options)
    model = Model(reactor)
    connection = MasterConnection(reactor, endpoint, address, model,
                                  secret=options["secret"])
    stopping = []

    def quit():
        if stopping:
            return
        stopping.append(True)
        d = defer.maybeDeferred(connection.stopService)
        d.addBoth(lambda _: reactor.stop())

    app = MonitorApp(model, connection, reactor, on_quit=quit,
                     waiting=connection.waiting_text())
    connection.on_state = app.set_waiting

    def unhandled(key):
        if key == "ctrl c":
            app.quit()
            return True
        return app.handle_key(key)

    loop = urwid.MainLoop(
        app.top, PALETTE, screen=screen, handle_mouse=True,
        unhandled_input=unhandled,
        event_loop=urwid.TwistedEventLoop(reactor=reactor,
                                          manage_reactor=False))
    try:
        loop.start()
    except Exception as e:
        observers.remove()
        sys.stderr.write(f"piw-monitor: cannot use this terminal: {e}\n")
        return EXIT_FAILURE
    try:
        app.start(loop)
        reactor.callWhenRunning(connection.startService)
        reactor.run()
    finally:
        app.stop()
        loop.stop()
        observers.remove()
    return EXIT_SUCCESS


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    return run_tool(Options, ["piw-monitor", *argv], run)


if __name__ == "__main__":
    sys.exit(main())
