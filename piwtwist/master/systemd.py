"""The master's words to systemd; the helpers live in :mod:`piwtwist.systemd`
(the builder uses them too)."""

import os

from .. import systemd as _systemd
from ..systemd import notify, notify_stopping, notify_watchdog

__all__ = ["notify", "notify_ready", "notify_stopping", "notify_watchdog"]


def notify_ready(environ=os.environ):
    return _systemd.notify_ready(environ, status="serving builders")
