"""Talk to systemd's service manager: ``Type=notify`` readiness, stopping
and the watchdog.

Everything here is a no-op unless systemd started us (``NOTIFY_SOCKET`` is
set), so the same code runs from a shell, a test and a unit.  Messages go
over a fresh ``AF_UNIX`` datagram socket each time, which never blocks for
long: the manager reads its end promptly or the kernel drops the datagram.

:class:`WatchdogService` pings from the reactor, on purpose: a reactor that
hangs (a blocking call, a busy loop) stops the pings, and systemd then
restarts the process (``WatchdogSec=`` with ``Restart=``).
"""

import os
import socket

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger


def notify(message, environ=os.environ):
    """Send ``message`` (``KEY=VALUE`` lines) to the service manager; return
    whether it was sent."""
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
        except OSError:
            return False
    return True


def notify_ready(environ=os.environ, status=None):
    message = "READY=1"
    if status:
        message += f"\nSTATUS={status}"
    return notify(message, environ)


def notify_stopping(environ=os.environ):
    return notify("STOPPING=1", environ)


def notify_watchdog(environ=os.environ):
    return notify("WATCHDOG=1", environ)


def watchdog_interval(environ=os.environ, pid=None):
    """Seconds between watchdog pings, or ``None`` when systemd expects
    none from this process.

    systemd sets ``WATCHDOG_USEC`` (the limit) and ``WATCHDOG_PID`` (the
    process it is meant for; a child that inherited the environment must not
    ping).  Pinging at half the limit leaves room for one late ping.
    """
    if not environ.get("NOTIFY_SOCKET"):
        return None
    expected_pid = environ.get("WATCHDOG_PID")
    if expected_pid:
        if pid is None:
            pid = os.getpid()
        if expected_pid.strip() != str(pid):
            return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1e6


class WatchdogService(service.Service):
    """Say READY=1 once the reactor runs, WATCHDOG=1 while it keeps running,
    and STOPPING=1 when the service stops.

    ``clock`` is the reactor (or a ``task.Clock`` in tests); ``environ`` and
    ``pid`` stand in for ``os.environ`` and ``os.getpid()``.  With
    ``lifecycle=False`` it only pings: the owner says READY=1 and
    STOPPING=1 itself (the master is ready only once its database answers).
    """

    name = "systemd"
    log = Logger()

    def __init__(self, clock, environ=os.environ, pid=None, status=None,
                 lifecycle=True):
        self.clock = clock
        self.lifecycle = lifecycle
        self.environ = environ
        self.pid = os.getpid() if pid is None else pid
        self.status = status
        self.interval = watchdog_interval(environ, self.pid)
        self._ready_call = None
        self._pinger = None
        self._ping_failed = False

    def startService(self):
        super().startService()
        if not self.environ.get("NOTIFY_SOCKET"):
            return
        # startService runs before the reactor does; readiness (and the
        # watchdog's first interval) begin with the reactor's first turn
        self._ready_call = self.clock.callLater(0, self._ready)

    def _ready(self):
        self._ready_call = None
        if self.lifecycle:
            notify_ready(self.environ, self.status)
        if self.interval is None:
            return
        self.log.info("telling systemd's watchdog every {interval:.1f}s",
                      interval=self.interval)
        self._pinger = task.LoopingCall(self._ping)
        self._pinger.clock = self.clock
        self._pinger.start(self.interval, now=False).addErrback(
            lambda f: self.log.failure("the watchdog pinger failed", f))

    def _ping(self):
        try:
            sent = notify_watchdog(self.environ)
        except Exception:
            self.log.failure("cannot ping systemd's watchdog")
            return
        if not sent and not self._ping_failed:
            self.log.warn("cannot reach systemd at {address} to ping its "
                          "watchdog",
                          address=self.environ.get("NOTIFY_SOCKET"))
        self._ping_failed = not sent

    def stopService(self):
        super().stopService()
        if self._ready_call is not None and self._ready_call.active():
            self._ready_call.cancel()
        self._ready_call = None
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        self._pinger = None
        if self.lifecycle:
            notify_stopping(self.environ)
