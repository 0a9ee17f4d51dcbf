"""The Sense HAT monitor as a service: about 20 times a second (a
``LoopingCall`` on the reactor) it reads the joystick, lets
:class:`~piwtwist.sense.ui.SenseUI` answer, does what it asks (controls go
to the master through the shared
:class:`~piwtwist.monitor.connection.MasterConnection`), and shows the
frame, turned for the HAT's mounting."""

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

from ..monitor.connection import NotConnected, run
from ..protocol import control as proto
from . import render as r

FRAMES_PER_SECOND = 20
#: How often builders gone long ago are forgotten.
EXPIRE_SECONDS = 10.0

_DONE = {proto.KILL: "Kill sent", proto.TERMINATE: "Terminating"}


class SenseService(service.Service):

    log = Logger()

    def __init__(self, clock, hat, ui, connection, rotation=0,
                 on_quit=None, fps=FRAMES_PER_SECOND):
        self.clock = clock
        self.hat = hat
        self.ui = ui
        self.connection = connection
        self.rotation = rotation
        self.on_quit = on_quit or (lambda: None)
        self.interval = 1.0 / fps
        self._loop = None
        self._expired_at = None

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self.frame)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        try:
            self.hat.close()
        except Exception:
            self.log.failure("could not blank the Sense HAT")

    def frame(self):
        """One frame; never raises (a LoopingCall stops on a failure)."""
        try:
            for direction, action in self.hat.events():
                if action != "pressed":
                    continue
                self.do(self.ui.press(
                    r.unrotate_direction(direction, self.rotation)))
            now = self.clock.seconds()
            if self._expired_at is None or \
                    now - self._expired_at > EXPIRE_SECONDS:
                self._expired_at = now
                self.ui.model.expire()
            self.hat.show(r.rotate(self.ui.frame(), self.rotation))
        except Exception:
            self.log.failure("drawing on the Sense HAT failed")

    def do(self, what):
        if what is None:
            return
        if what[0] == "quit":
            self.log.info("quitting, as asked on the joystick")
            self.on_quit()
            return
        _, action, builder_id = what
        run(self._control(action, builder_id), self.log,
            f"asking the master to {action}")

    async def _control(self, action, builder_id):
        self.log.info("asking the master to {action} (builder {builder})",
                      action=action, builder=builder_id)
        try:
            await self.connection.control(action, builder_id)
        except (proto.ControlRefused, NotConnected) as e:
            self.log.warn("the master did not {action}: {why}",
                          action=action, why=str(e))
            self.ui.say(str(e), r.WHITE, r.scale(r.RED, 0.4))
        else:
            self.ui.say(_DONE.get(action, "Done"), r.WHITE,
                        r.scale(r.GREEN, 0.4))
