"""Tell systemd (``Type=notify`` units) when the master is ready or
stopping; a no-op when not started by systemd."""

import os
import socket


def _notify(message, environ=os.environ):
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode("ascii"))
        except OSError:
            return False
    return True


def notify_ready(environ=os.environ):
    return _notify("READY=1\nSTATUS=serving builders", environ)


def notify_stopping(environ=os.environ):
    return _notify("STOPPING=1", environ)


def notify_watchdog(environ=os.environ):
    return _notify("WATCHDOG=1", environ)
