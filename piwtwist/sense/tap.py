"""``twistd -n piwheels-sense``: options, and the monitor on a Sense HAT
as a service tree (log observers, the connection to the master's control
queue, the display)."""

import sys

from twisted.application import service
from twisted.internet import endpoints
from twisted.python import usage

from ..logs import add_log_observers
from ..monitor.cli import Options as MonitorOptions
from ..monitor.connection import MasterConnection
from ..monitor.model import Model
from .app import SenseService
from .hat import NoSenseHat, open_hat
from .ui import SenseUI

ROTATIONS = (0, 90, 180, 270)


class Options(MonitorOptions):
    """twistd piwheels-sense [options]"""

    config_section = "sense"
    synopsis = "Usage: twistd [twistd options] piwheels-sense [options]"
    longdesc = ("The master's status on a Raspberry Pi Sense HAT's LED "
                "matrix, steered with its joystick.")
    optParameters = [
        ["rotate", "r", 0,
         "Turn the picture by 0, 90, 180 or 270 degrees clockwise, for a "
         "HAT mounted sideways or upside down.", int],
    ]
    optFlags = [
        ["emulate", None,
         "Draw on the Sense HAT emulator (sense_emu_gui, from the "
         "sense-emu package) instead of the hardware."],
    ]

    def postOptions(self):
        super().postOptions()
        if self["rotate"] not in ROTATIONS:
            raise usage.UsageError(
                f"--rotate must be 0, 90, 180 or 270 (degrees), not "
                f"{self['rotate']}")
        try:
            from twisted.internet import reactor
            endpoints.clientFromString(reactor, self["control-queue"])
        except (ValueError, KeyError, TypeError) as e:
            raise usage.UsageError(f"{self['control-queue']!r} is not an "
                                   f"endpoint description: {e}")


class _LogObservers(service.Service):
    """The -l file (filtered by -q/-v) while the monitor runs."""

    def __init__(self, options):
        self.options = options
        self.observers = None

    def startService(self):
        super().startService()
        self.observers = add_log_observers(self.options)

    def stopService(self):
        super().stopService()
        if self.observers is not None:
            self.observers.remove()
            self.observers = None


def makeService(options, reactor=None, hat=None):
    """The service tree; without a HAT (or emulator), one sentence on
    stderr and exit status 1."""
    if reactor is None:
        from twisted.internet import reactor
    if hat is None:
        try:
            hat = open_hat(emulate=options["emulate"])
        except NoSenseHat as e:
            sys.stderr.write(f"{e}\n")
            raise SystemExit(1)
    address = options["control-queue"]
    model = Model(reactor)
    connection = MasterConnection(
        reactor, endpoints.clientFromString(reactor, address), address,
        model, secret=options["secret"])
    ui = SenseUI(model, reactor)
    top = service.MultiService()
    _LogObservers(options).setServiceParent(top)
    connection.setServiceParent(top)
    SenseService(reactor, hat, ui, connection, rotation=options["rotate"],
                 on_quit=reactor.stop).setServiceParent(top)
    return top
