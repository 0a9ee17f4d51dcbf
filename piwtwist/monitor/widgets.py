"""The monitor's urwid widgets: the header, the table of the master and its
builders, the detail pane of the selected row, the build log tail and the
dialogs.  They draw a :class:`~piwtwist.monitor.model.Model` and know
nothing of the connection, so tests render them at fixed sizes."""

import urwid

from . import model as m

BLOCKS = "▁▂▃▄▅▆▇█"

#: One character per display state, so states read without colour too.
MARKERS = {m.IDLE: " ", m.BUILDING: "*", m.SENDING: ">", m.CLEANING: "~",
           m.SLEEPING: "z", m.ALERT: "!", m.DEAD: "x"}

PALETTE = [
    ("header", "white,bold", "dark blue"),
    ("paused", "white,bold", "dark red"),
    ("waiting", "black", "yellow"),
    ("titles", "light gray,underline", "default"),
    ("status", "light gray", "default"),
    ("refused", "light red,bold", "default"),
    ("keys", "black", "light gray"),
    ("pane title", "white,bold", "default"),
    ("dialog", "black", "light gray"),
    ("dialog focus", "white,bold", "dark blue"),
    (m.IDLE, "light gray", "default"),
    (m.BUILDING, "light green", "default"),
    (m.SENDING, "light cyan", "default"),
    (m.CLEANING, "yellow", "default"),
    (m.SLEEPING, "light blue", "default"),
    (m.ALERT, "light red,bold", "default"),
    (m.DEAD, "dark gray", "default"),
] + [(f"{state} focus", "black,bold", background) for state, background in (
    (m.IDLE, "light gray"), (m.BUILDING, "light green"),
    (m.SENDING, "light cyan"), (m.CLEANING, "yellow"),
    (m.SLEEPING, "light blue"), (m.ALERT, "light red"),
    (m.DEAD, "dark gray"))]

KEYS = ("p pause  r resume  s sleep  w wake  x skip  k kill  K kill now  "
        "t terminate  Enter menu  ? help  q quit")

HELP = """\
Keys

  Up/Down, mouse   select a row
  p                pause the master (no new builds; builders sleep)
  r                resume the master
  s / w            sleep / wake the selected builder (every builder
                   when the master's row is selected)
  x                skip the selected builder's current build
  k                kill the selected builder after its current build
  K                kill the selected builder now (asks first)
  t                terminate the master (asks first)
  Enter            every action for the selected row
  ?                this help
  q                quit the monitor (the master keeps running)
  Esc              close a dialog

Markers: * building  > sending  ~ cleaning  z sleeping  ! alert  x gone
"""

COLUMNS = (("", 1), ("id", 4), ("label", 14), ("abi", 8), ("up", 7),
           ("task", 7))


def sparkline(values, width, low=None, high=None):
    """*values* (None for gaps) as at most *width* block characters, the
    newest on the right; *low* and *high* fix the scale (else the data's
    own range)."""
    values = list(values)[-width:]
    known = [v for v in values if v is not None]
    if not known:
        return " " * width
    low = min(known) if low is None else low
    high = max(known) if high is None else max(high, max(known))
    span = high - low
    line = []
    for value in values:
        if value is None:
            line.append(" ")
        elif span <= 0:
            line.append(BLOCKS[0])
        else:
            share = min(max((value - low) / span, 0.0), 1.0)
            line.append(BLOCKS[round(share * (len(BLOCKS) - 1))])
    return "".join(line).rjust(width)


class RowWidget(urwid.WidgetWrap):
    """One line of the table; selectable, so arrows and clicks choose it."""

    def __init__(self, key, cells, state):
        self.key = key
        columns = urwid.Columns(
            [(width, urwid.Text(text, wrap="clip"))
             for (_, width), text in zip(COLUMNS, cells)] +
            [urwid.Text(cells[-1], wrap="clip")], dividechars=1)
        super().__init__(urwid.AttrMap(columns, state, f"{state} focus"))

    def selectable(self):
        return True

    def keypress(self, size, key):
        return key


def row_cells(model, row):
    """The table's cells for *row*: marker, id, label, ABI, up time, task
    time, task text."""
    state = model.state(row)
    if row.is_master:
        ident, label = "", "master"
        abi = ",".join(row.get("abis", []))
    else:
        ident, label, abi = str(row.key), row.get("label", ""), \
            row.get("abi", "")
    text = model.task_text(row)
    alerts = model.alerts(row)
    if alerts:
        text = f"{text} [{'; '.join(alerts)}]"
    return [MARKERS[state], ident, label, abi,
            m.duration(model.up_time(row)), m.duration(model.task_time(row)),
            text], state


class Table(urwid.WidgetWrap):
    """Column titles over a list of the rows; the selection survives
    updates."""

    def __init__(self):
        self.walker = urwid.SimpleFocusListWalker([])
        self.listbox = urwid.ListBox(self.walker)
        titles = urwid.Columns(
            [(width, urwid.Text(title, wrap="clip"))
             for title, width in COLUMNS] + [urwid.Text("doing")],
            dividechars=1)
        super().__init__(urwid.Frame(
            self.listbox, header=urwid.AttrMap(titles, "titles")))

    @property
    def selected(self):
        """(True, key) for the selected row (key None: the master), or
        (False, None) when the table is empty."""
        if not self.walker:
            return False, None
        return True, self.walker.get_focus()[0].key

    def update(self, model):
        _, selected = self.selected
        focus = 0
        widgets = []
        for index, row in enumerate(model.rows()):
            cells, state = row_cells(model, row)
            widgets.append(RowWidget(row.key, cells, state))
            if row.key == selected:
                focus = index
        self.walker[:] = widgets
        if widgets:
            self.walker.set_focus(focus)

    def select(self, key):
        for index, widget in enumerate(self.walker):
            if widget.key == key:
                self.walker.set_focus(index)
                return True
        return False


def _when(model, seconds):
    if seconds is None:
        return "?"
    return f"{m.duration(max(model.master_now() - seconds, 0))} ago"


def _percent(free, total):
    share = m.fraction(free, total)
    return "?" if share is None else f"{share:.0%} free"


def _per_abi(counts):
    counts = counts or {}
    if not counts:
        return "none"
    return ", ".join(f"{abi} {count}" for abi, count in sorted(
        counts.items()))


def detail_lines(model, row):
    """The facts of *row*, as lines of text."""
    if row is None:
        return ["Nothing to show yet."]
    data = row.data
    if row.is_master:
        built = data.get("builds_last_hour") or {}
        good = data.get("successes_last_hour") or {}
        total, ok = sum(built.values()), sum(good.values())
        rate = f" ({ok / total:.0%} succeeded)" if total else ""
        behind = data.get("pypi_behind")
        lines = [
            f"master {row.get('host', '?')}, piwtwist "
            f"{row.get('version', '?')}, up {m.duration(model.up_time(row))}"
            + (", PAUSED" if data.get("paused") else ""),
            f"ABIs: {', '.join(row.get('abis', [])) or 'none'}",
            f"PyPI serial {row.get('pypi_serial', '?')}"
            + ("" if behind is None else f", {behind} events behind"),
            f"Queue: {_per_abi(data.get('queue'))}",
            f"Builds last hour: {_per_abi(built)}{rate}",
            f"Downloads last hour: {row.get('downloads_last_hour', '?')}",
            f"Output disk: {m.size(data.get('disk_free'))} of "
            f"{m.size(data.get('disk_total'))} free",
            _machine_line(data.get("load"), data.get("cpu_count"),
                          data.get("mem_free"), data.get("mem_total"),
                          data.get("swap_free"), data.get("swap_total"),
                          data.get("cpu_temperature")),
            _stall_line(model, data),
        ]
    else:
        stats = data.get("stats") or {}
        failure = data.get("last_failure")
        board = " ".join(str(v) for v in (
            data.get("board_revision"), data.get("board_serial")) if v)
        lines = [
            f"builder {row.key} {row.get('label', '')} at "
            f"{row.get('address', '?')}, piwtwist {row.get('version', '?')}",
            f"{row.get('abi', '?')} {row.get('platform', '?')} "
            f"{row.get('python', '?')}, {row.get('os_name', '?')} "
            f"{row.get('os_version', '')}" + (f", board {board}" if board
                                               else ""),
            f"Connected {_when(model, data.get('connected_at'))}, last "
            f"seen {_when(model, data.get('last_seen'))}; timeouts: busy "
            f"{m.duration(data.get('busy_timeout'))}, build "
            f"{m.duration(data.get('build_timeout'))}",
            f"Doing: {model.task_text(row)}",
            f"Disk: {m.size(stats.get('disk_free'))} of "
            f"{m.size(stats.get('disk_total'))} free",
            _machine_line(stats.get("load_average"), None,
                          stats.get("mem_free"), stats.get("mem_total"),
                          stats.get("swap_free"), stats.get("swap_total"),
                          stats.get("cpu_temperature")),
            "Last failure: " + (
                f"{failure.get('package')} {failure.get('version')}: "
                + (f"[{failure['failure_class']}] "
                   if failure.get("failure_class") else "")
                + f"{failure.get('reason')}" if failure else "none"),
        ]
    alerts = model.alerts(row)
    if alerts:
        lines.append("ALERT: " + "; ".join(alerts))
    return lines


def _stall_line(model, data):
    """How long the master's reactor was held up (every builder, monitor
    and admin tool waits meanwhile)."""
    recent = data.get("reactor_stall")
    if recent is None:
        return "Reactor stalls: not measured"
    line = f"Reactor stalls: {m.milliseconds(recent)} last minute"
    worst = data.get("reactor_stall_worst")
    if worst is not None:
        line += f", worst {m.milliseconds(worst)}"
        worst_at = data.get("reactor_stall_worst_at")
        if worst_at is not None and worst > recent:
            line += f" ({_when(model, worst_at)})"
    gc_pause = data.get("gc_pause")
    if gc_pause is not None:
        line += f", GC {m.milliseconds(gc_pause)}"
    return line


def _machine_line(load, cores, mem_free, mem_total, swap_free, swap_total,
                  temperature):
    if isinstance(load, (list, tuple)):
        load = " ".join(f"{value:.2f}" for value in load)
    elif load is not None:
        load = f"{load:.2f}"
    parts = [f"load {load or '?'}" + (f" on {cores} cores" if cores
                                      else ""),
             f"memory {_percent(mem_free, mem_total)}"]
    if swap_total:
        parts.append(f"swap {_percent(swap_free, swap_total)}")
    if temperature is not None:
        parts.append(f"{temperature:.0f}°C")
    return ", ".join(parts)


def graph_lines(row, width):
    """Sparklines of *row*'s history, each labelled."""
    if row is None:
        return []
    history = row.history
    cores = row.get("cpu_count") or m.BUILDER_CORES
    lines = []
    for label, name, low, high in (("load", "load", 0.0, float(cores)),
                                   ("mem ", "memory", 0.0, 1.0),
                                   ("disk", "disk", 0.0, 1.0),
                                   ("temp", "temperature", 30.0, 85.0)):
        series = history.series(name)
        latest = next((v for v in reversed(series) if v is not None), None)
        if latest is None:
            shown = "  ?"
        elif name in ("memory", "disk"):
            shown = f"{latest:4.0%}"
        elif name == "load":
            shown = f"{latest:4.1f}"
        else:
            shown = f"{latest:3.0f}°"
        lines.append(f"{label} {sparkline(series, width, low, high)} "
                     f"{shown}")
    return lines


class Detail(urwid.WidgetWrap):
    """The facts of the selected row beside its history graphs."""

    GRAPH_WIDTH = 30

    def __init__(self):
        self.facts = urwid.Text("")
        self.graphs = urwid.Text("", wrap="clip")
        self.title = urwid.Text(("pane title", "Details"))
        super().__init__(urwid.Pile([
            self.title,
            urwid.Columns([self.facts,
                           (self.GRAPH_WIDTH + 11, self.graphs)],
                          dividechars=2)]))

    def update(self, model, row):
        self.facts.set_text("\n".join(detail_lines(model, row)))
        self.graphs.set_text("\n".join(
            ["last 10 min (mem, disk used)"] + graph_lines(row, self.GRAPH_WIDTH))
            if row is not None else "")


class LogTail(urwid.WidgetWrap):
    """The last lines of a build log that fit, newest at the bottom."""

    def __init__(self):
        self.title = urwid.Text(("pane title", ""), wrap="clip")
        self.body = urwid.Text("", wrap="clip")
        self.lines = []
        super().__init__(urwid.Frame(
            urwid.Filler(self.body, valign="bottom"), header=self.title))
        self.show(None, [])

    def show(self, title, lines):
        self.title.set_text(("pane title", title or
                             "Select a builder to follow its build log"))
        self.lines = list(lines)

    def render(self, size, focus=False):
        cols, rows = size
        self.body.set_text("\n".join(self.lines[-max(rows - 1, 1):]))
        return super().render(size, focus)


class Dialog(urwid.WidgetWrap):
    """A question or a page of text in a box."""

    def __init__(self, text, title=""):
        super().__init__(urwid.AttrMap(urwid.LineBox(
            urwid.Filler(urwid.Text(text), valign="top"), title=title),
            "dialog"))


class Menu(urwid.WidgetWrap):
    """Actions to choose from: ``choices`` are (label, callback)."""

    def __init__(self, title, choices):
        buttons = []
        for label, callback in choices:
            button = urwid.Button(label)
            urwid.connect_signal(button, "click",
                                 lambda _, cb=callback: cb())
            buttons.append(urwid.AttrMap(button, "dialog", "dialog focus"))
        super().__init__(urwid.AttrMap(urwid.LineBox(
            urwid.ListBox(urwid.SimpleFocusListWalker(buttons)),
            title=title), "dialog"))


def header_markup(model, waiting):
    """The header line: what the master is, plainly PAUSED, or that we
    wait for it."""
    if waiting:
        return ("waiting", f" {waiting} ")
    master = model.master
    if master is None:
        return ("header", " Connected; waiting for the master's status ")
    facts = (f" piw-monitor: master {master.get('host', '?')}, piwtwist "
             f"{master.get('version', '?')}, up "
             f"{m.duration(model.up_time(master))}, "
             f"{len(model.builders)} builder(s) ")
    if model.bye:
        return ("paused", f" The master is shutting down: {model.bye} ")
    if master.get("terminating"):
        return ("paused", " The master is shutting down ")
    if model.paused:
        return [("paused", " PAUSED "), ("header", facts)]
    return ("header", facts)

