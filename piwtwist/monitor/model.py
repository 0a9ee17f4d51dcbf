"""What the monitor knows: the master and its builders as the control hub
describes them (see :mod:`piwtwist.protocol.control` for the messages), a
short history of each machine's load, memory, disk and temperature, and
the rules that turn a row into an alert.

Pure Python and driven by a clock (anything with ``seconds()``), so tests
can move time by hand.  Times the master sends are on the master's clock;
the model estimates the master's "now" from its latest message, so a
monitor whose clock differs from the master's still shows right ages.
"""

from collections import deque

#: How far back the sparklines reach.
HISTORY_SECONDS = 600.0
#: A master that said nothing for this long is in trouble.
MASTER_SILENT_SECONDS = 30.0
#: No build finished for this long while work waits: something is wrong.
NO_BUILDS_SECONDS = 3600.0
#: A master whose reactor was held up this long recently: every builder
#: and monitor waited (systemd's watchdog restarts it at a minute or so).
REACTOR_STALL_ALERT_SECONDS = 1.0
#: A disconnected builder stays on screen (as dead) this long.
GONE_SHOWN_SECONDS = 300.0
#: Alert thresholds.
MIN_DISK_FREE = 0.10
MIN_MEM_FREE = 0.10
MIN_SWAP_FREE = 0.50
MAX_TEMPERATURE = 78.0
#: Cores assumed for a builder, which does not say how many it has.
BUILDER_CORES = 4
#: A builder that does not say its busy timeout has the builder's default.
DEFAULT_BUSY_TIMEOUT = 300.0

#: The display states rows are coloured by.
IDLE, BUILDING, SENDING, CLEANING, SLEEPING, ALERT, DEAD = (
    "idle", "building", "sending", "cleaning", "sleeping", "alert", "dead")

_STATUS_STATES = {
    "connecting": IDLE, "idle": IDLE, "building": BUILDING,
    "sending": SENDING, "recording": SENDING, "cleaning": CLEANING,
    "sleeping": SLEEPING, "stopping": CLEANING, "leaving": CLEANING,
}


def fraction(part, whole):
    """*part* / *whole*, or None when either is unknown or *whole* is 0."""
    if part is None or not whole:
        return None
    return part / whole


class History:
    """Samples of one machine over the last :data:`HISTORY_SECONDS`."""

    NAMES = ("load", "memory", "disk", "temperature")

    def __init__(self, span=HISTORY_SECONDS):
        self.span = span
        self.samples = deque()
        self.last_key = None

    def add(self, at, key=None, **values):
        """Record *values* (see :data:`NAMES`; memory and disk as used
        fractions) taken at *at*; a repeated *key* (the stats' own
        timestamp) is the same sample again and is ignored."""
        if key is not None and key == self.last_key:
            return
        self.last_key = key
        self.samples.append((at, {name: values.get(name)
                                  for name in self.NAMES}))
        while self.samples and self.samples[0][0] < at - self.span:
            self.samples.popleft()

    def series(self, name):
        return [values[name] for _, values in self.samples]


class Row:
    """The master or one builder."""

    def __init__(self, kind, key, data, at):
        self.kind = kind
        self.key = key
        self.data = data
        self.received_at = at
        self.gone_at = None
        self.history = History()

    @property
    def is_master(self):
        return self.kind == "master"

    def get(self, name, default=None):
        value = self.data.get(name)
        return default if value is None else value


class Model:
    """The master and builders, fed by :meth:`apply` with each decoded
    status message; ``listeners`` are called with no arguments after every
    change."""

    def __init__(self, clock):
        self.clock = clock
        self.master = None
        self.builders = {}
        self.connected = False
        self.bye = None
        self.listeners = []

    # feeding ------------------------------------------------------------

    def apply(self, message):
        kind = message.get("type")
        now = self.clock.seconds()
        if kind == "snapshot":
            self.connected = True
            self.bye = None
            self._set_master(message.get("master") or {}, now)
            old, self.builders = self.builders, {}
            for data in message.get("builders") or ():
                self._set_builder(data, now, old)
        elif kind == "master":
            self._set_master(message.get("master") or {}, now)
        elif kind == "builder":
            self._set_builder(message.get("builder") or {}, now,
                              self.builders)
        elif kind == "builder_gone":
            row = self.builders.get(message.get("builder_id"))
            if row is not None and row.gone_at is None:
                row.gone_at = now
        elif kind == "bye":
            self.bye = message.get("reason") or "the master is shutting down"
        else:
            return
        self._changed()

    def apply_state(self, state):
        """The answer to a control: ``{"master": ...}`` or
        ``{"builders": [...]}``."""
        now = self.clock.seconds()
        if state.get("master"):
            self._set_master(state["master"], now)
        for data in state.get("builders") or ():
            self._set_builder(data, now, self.builders)
        self._changed()

    def connection_lost(self):
        """The master went away: everything shown is now stale."""
        now = self.clock.seconds()
        self.connected = False
        for row in [self.master, *self.builders.values()]:
            if row is not None and row.gone_at is None:
                row.gone_at = now
        self._changed()

    def expire(self):
        """Forget builders gone for longer than :data:`GONE_SHOWN_SECONDS`;
        return whether any was forgotten."""
        now = self.clock.seconds()
        old = [key for key, row in self.builders.items()
               if row.gone_at is not None
               and now - row.gone_at > GONE_SHOWN_SECONDS]
        for key in old:
            del self.builders[key]
        if old:
            self._changed()
        return bool(old)

    def _changed(self):
        for listener in list(self.listeners):
            listener()

    def _set_master(self, data, now):
        if self.master is None:
            self.master = Row("master", None, data, now)
        else:
            self.master.data = data
            self.master.received_at = now
            self.master.gone_at = None
        load = data.get("load") or [None]
        self.master.history.add(
            now, key=data.get("now"), load=load[0],
            memory=_used(data.get("mem_free"), data.get("mem_total")),
            disk=_used(data.get("disk_free"), data.get("disk_total")),
            temperature=data.get("cpu_temperature"))

    def _set_builder(self, data, now, previous):
        key = data.get("builder_id")
        if key is None:
            return
        row = previous.get(key)
        if row is None or row.get("label") != data.get("label"):
            row = Row("builder", key, data, now)
        row.data = data
        row.received_at = now
        row.gone_at = None
        self.builders[key] = row
        stats = data.get("stats") or {}
        if stats:
            row.history.add(
                now, key=stats.get("timestamp"),
                load=stats.get("load_average"),
                memory=_used(stats.get("mem_free"), stats.get("mem_total")),
                disk=_used(stats.get("disk_free"), stats.get("disk_total")),
                temperature=stats.get("cpu_temperature"))

    # reading ------------------------------------------------------------

    def master_now(self):
        """The master's clock now, as well as we can tell."""
        now = self.clock.seconds()
        if self.master is None or self.master.data.get("now") is None:
            return now
        elapsed = (self.master.gone_at or now) - self.master.received_at
        return self.master.data["now"] + max(elapsed, 0.0)

    def rows(self):
        """The master, then the builders by ABI, label and id."""
        builders = sorted(self.builders.values(), key=lambda row: (
            row.get("abi", ""), row.get("label", ""), row.key))
        return ([self.master] if self.master is not None else []) + builders

    def row(self, key):
        """The master for None, else the builder with id *key*."""
        return self.master if key is None else self.builders.get(key)

    @property
    def paused(self):
        return bool(self.master and self.master.data.get("paused"))

    def state(self, row):
        """How *row* is coloured: one of the display states above."""
        if row.gone_at is not None or (row.is_master and not self.connected):
            return DEAD
        if self.alerts(row):
            return ALERT
        if row.is_master:
            return SLEEPING if row.data.get("paused") else IDLE
        if row.data.get("sleeping") and row.data.get("status") in (
                "idle", "sleeping", None):
            return SLEEPING
        return _STATUS_STATES.get(row.data.get("status"), IDLE)

    def alerts(self, row):
        """Why *row* deserves attention, as short phrases (empty: it is
        fine)."""
        if row.gone_at is not None:
            return []
        if row.is_master:
            return self._master_alerts(row)
        return self._builder_alerts(row)

    def _master_alerts(self, row):
        data = row.data
        alerts = []
        silent = self.clock.seconds() - row.received_at
        if silent > MASTER_SILENT_SECONDS:
            alerts.append(f"silent for {duration(silent)}")
        waiting = sum((data.get("queue") or {}).values())
        built = sum((data.get("builds_last_hour") or {}).values())
        since = data.get("last_build_at") or data.get("started")
        if waiting and not built and since is not None and \
                self.master_now() - since > NO_BUILDS_SECONDS:
            alerts.append("no build finished in the last hour")
        stall = data.get("reactor_stall")
        if stall is not None and stall >= REACTOR_STALL_ALERT_SECONDS:
            alerts.append(f"reactor held up {milliseconds(stall)}")
        alerts += _machine_alerts(
            disk=(data.get("disk_free"), data.get("disk_total")),
            memory=(data.get("mem_free"), data.get("mem_total")),
            swap=(data.get("swap_free"), data.get("swap_total")),
            load=(data.get("load") or [None])[0],
            cores=data.get("cpu_count") or BUILDER_CORES,
            temperature=data.get("cpu_temperature"))
        return alerts

    def _builder_alerts(self, row):
        data = row.data
        alerts = []
        busy_timeout = data.get("busy_timeout") or DEFAULT_BUSY_TIMEOUT
        last_seen = data.get("last_seen")
        if last_seen is not None and self.connected:
            silent = self.master_now() - last_seen
            if silent > busy_timeout / 2:
                alerts.append(f"silent for {duration(silent)}")
        stats = data.get("stats") or {}
        alerts += _machine_alerts(
            disk=(stats.get("disk_free"), stats.get("disk_total")),
            memory=(stats.get("mem_free"), stats.get("mem_total")),
            swap=(stats.get("swap_free"), stats.get("swap_total")),
            load=stats.get("load_average"), cores=BUILDER_CORES,
            temperature=stats.get("cpu_temperature"))
        return alerts

    def up_time(self, row):
        since = row.get("started" if row.is_master else "connected_at")
        return None if since is None else max(self.master_now() - since, 0)

    def task_time(self, row):
        if row.is_master:
            return None
        since = row.get("task_started")
        if since is None or row.get("status") in ("idle", "sleeping"):
            return None
        return max(self.master_now() - since, 0)

    def task_text(self, row):
        """What the row is doing, in a few words."""
        data = row.data
        if row.is_master:
            if not self.connected:
                return "Not connected"
            if self.bye:
                return f"Shutting down: {self.bye}"
            if data.get("terminating"):
                return "Terminating"
            waiting = sum((data.get("queue") or {}).values())
            built = sum((data.get("builds_last_hour") or {}).values())
            text = f"{waiting} queued, {built} built in the last hour"
            return ("Paused; " if data.get("paused") else "Running; ") + text
        if row.gone_at is not None:
            return "Disconnected"
        status = data.get("status")
        release = " ".join(str(part) for part in (
            data.get("package"), data.get("package_version")) if part)
        sending = data.get("sending") or {}
        if status == "building":
            text = f"Building {release}"
        elif status == "sending":
            if sending.get("filename"):
                percent = fraction(sending.get("received"),
                                   sending.get("size"))
                text = f"Sending {sending['filename']}"
                if percent is not None:
                    text += f" {int(percent * 100)}%"
            else:
                text = f"Sending {release}"
        elif status == "recording":
            text = f"Recording {release}"
        elif status == "cleaning":
            text = "Cleaning up"
        elif status == "stopping":
            text = "Stopping"
        elif status == "leaving":
            text = "Leaving"
        elif status == "connecting":
            text = "Connecting"
        elif status == "sleeping" or data.get("sleeping"):
            text = "Sleeping"
        else:
            text = "Idle"
        if data.get("kill_now") and status not in ("stopping", "leaving"):
            text += " (being stopped now)"
        elif data.get("kill_requested") and status not in ("stopping",
                                                           "leaving"):
            text += " (stops after this build)"
        return text


def _used(free, total):
    share = fraction(free, total)
    return None if share is None else 1.0 - share


def _machine_alerts(disk, memory, swap, load, cores, temperature):
    alerts = []
    for name, (free, total), minimum in (("disk", disk, MIN_DISK_FREE),
                                         ("memory", memory, MIN_MEM_FREE),
                                         ("swap", swap, MIN_SWAP_FREE)):
        share = fraction(free, total)
        if share is not None and share < minimum:
            alerts.append(f"{name} {share:.0%} free")
    if load is not None and load > cores:
        alerts.append(f"load {load:.1f} on {cores} cores")
    if temperature is not None and temperature > MAX_TEMPERATURE:
        alerts.append(f"{temperature:.0f}°C")
    return alerts


def milliseconds(seconds):
    """A short time that may be under a second: 12 ms, 1.25 s."""
    if seconds is None:
        return "?"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def duration(seconds):
    """A short human duration: 45s, 12m, 3h05m, 2d04h."""
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def size(value):
    """Bytes for people: 512B, 1.5K, 20.0M, 3.2G, 1.1T."""
    if value is None:
        return "?"
    value = float(value)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else \
                f"{value:.1f}{unit}"
        value /= 1024
