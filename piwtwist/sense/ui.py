"""The Sense HAT's screens and what the joystick does on them; pure, so
tests drive it with a fake clock.

Screens:

status
    the master at a glance (see :mod:`piwtwist.sense.render`) with a
    pulsing white cursor.  Up, down, left and right move the cursor;
    pressing on a builder opens its details; moving off the top opens the
    statistics, off the bottom the quit menu.  While there is no master
    (not yet, or no longer) a "waiting" message scrolls under a pulsing
    red row 0 instead.
details
    the builder's label, ABI and current task scroll over its colour.
    Right shows the kill choice (press to kill it after its current
    build), left goes back to the text; pressing on the text, or up or
    down, goes back to the status screen.
statistics
    one figure at a time scrolls over a background fill that shows it:
    time since the master's last message, its free disk, the build queue,
    builds in the last hour, total build time, total size of the built
    files.  Left and right change the figure; down goes back.
menu
    quit this monitor, or terminate the master; left and right choose,
    press does it, up goes back.

:meth:`SenseUI.press` answers a push of the stick with what the caller
should do, if anything: ``("control", ACTION, BUILDER_ID)`` or
``("quit",)``.  :meth:`SenseUI.frame` is what to show now.
"""

from ..monitor.model import duration, fraction, size
from ..protocol import control as proto
from . import render as r

STATUS, DETAILS, STATISTICS, MENU = "status", "details", "statistics", \
    "menu"
INFO, KILL = 0, 1
QUIT, TERMINATE = 0, 1
STATISTICS_NAMES = ("ping", "disk", "queue", "rate", "time", "size")


class SenseUI:

    def __init__(self, model, clock):
        self.model = model
        self.clock = clock
        self.screen = STATUS
        self.cursor = (0, r.FIRST_BUILDER_ROW)
        self.builder_id = None
        self.choice = 0
        self.statistic = 0
        self.since = clock.seconds()
        self.message = None

    @property
    def waiting(self):
        return not self.model.connected or self.model.master is None

    def _go(self, screen, choice=0):
        self.screen = screen
        self.choice = choice
        self.since = self.clock.seconds()

    def say(self, text, colour=r.WHITE, background=r.BLACK):
        """Scroll *text* once over *background*, over whatever screen is
        shown, then carry on."""
        columns = r.text_columns(text)
        until = self.clock.seconds() + (len(columns) + 8) / \
            r.SCROLL_COLUMNS_PER_SECOND
        self.message = (text, colour, background, self.clock.seconds(),
                        until)

    # the joystick ---------------------------------------------------------

    def press(self, direction):
        """*direction*: up, down, left, right or middle (in the picture's
        orientation)."""
        self.message = None
        if self.screen == MENU:
            return self._press_menu(direction)
        if self.waiting:
            # only the menu is of use without a master
            if direction == "down":
                self._go(MENU)
            return None
        if self.screen == STATUS:
            return self._press_status(direction)
        if self.screen == DETAILS:
            return self._press_details(direction)
        if self.screen == STATISTICS:
            return self._press_statistics(direction)
        return None

    def _press_status(self, direction):
        x, y = self.cursor
        if direction == "up":
            if y == 0:
                self._go(STATISTICS)
                return None
            y -= 1
        elif direction == "down":
            if y == 7:
                self._go(MENU)
                return None
            y += 1
        elif direction == "left":
            x = max(x - 1, 0)
        elif direction == "right":
            x = min(x + 1, 7)
        elif direction == "middle":
            row = r.builder_at(self.model, self.clock.seconds(), self.cursor)
            if row is not None:
                self.builder_id = row.key
                self._go(DETAILS, INFO)
        self.cursor = (x, y)
        return None

    def _press_details(self, direction):
        if direction == "right" and self.choice == INFO:
            self._go(DETAILS, KILL)
        elif direction == "left" and self.choice == KILL:
            self._go(DETAILS, INFO)
        elif direction in ("up", "down"):
            self._go(STATUS)
        elif direction == "middle":
            builder_id = self.builder_id
            kill = self.choice == KILL
            self._go(STATUS)
            if kill:
                return ("control", proto.KILL, builder_id)
        return None

    def _press_statistics(self, direction):
        count = len(STATISTICS_NAMES)
        if direction == "down":
            self._go(STATUS)
        elif direction == "left":
            self.statistic = (self.statistic - 1) % count
            self.since = self.clock.seconds()
        elif direction == "right":
            self.statistic = (self.statistic + 1) % count
            self.since = self.clock.seconds()
        return None

    def _press_menu(self, direction):
        if direction in ("left", "right"):
            self._go(MENU, TERMINATE if self.choice == QUIT else QUIT)
        elif direction == "up":
            self._go(STATUS)
        elif direction == "middle":
            if self.choice == QUIT:
                return ("quit",)
            self._go(STATUS)
            return ("control", proto.TERMINATE, None)
        return None

    # the picture ----------------------------------------------------------

    def frame(self):
        """The 64 pixels to show now, in the picture's orientation."""
        now = self.clock.seconds()
        if self.message is not None:
            text, colour, background, since, until = self.message
            if now < until:
                return r.text_screen(text, now - since, colour,
                                     [background] * 64)
            self.message = None
        elapsed = now - self.since
        if self.screen == MENU:
            if self.choice == QUIT:
                return r.text_screen("Quit", elapsed, r.WHITE,
                                     [r.scale(r.BLUE, 0.3)] * 64)
            return r.text_screen("Terminate master", elapsed, r.WHITE,
                                 [r.scale(r.RED, 0.3)] * 64)
        if self.waiting:
            return r.text_screen("Waiting", elapsed, r.WHITE,
                                 row0=r.silence_row(self.model, now))
        if self.screen == DETAILS:
            row = self.model.builders.get(self.builder_id)
            if row is None or row not in r.shown_builders(self.model, now):
                self._go(STATUS)
            elif self.choice == INFO:
                colour = r.BUILDER_COLOURS[r.builder_state(self.model, row,
                                                           now)]
                return r.text_screen(details_text(self.model, row), elapsed,
                                     r.WHITE, [r.scale(colour, 0.3)] * 64)
            else:
                return r.text_screen(f"Kill {row.get('label', '')}?",
                                     elapsed, r.WHITE,
                                     [r.scale(r.RED, 0.4)] * 64)
        if self.screen == STATISTICS:
            text, amount, colour = statistic(
                self.model, now, STATISTICS_NAMES[self.statistic])
            return r.text_screen(text, elapsed, r.WHITE,
                                 r.fill(amount, r.scale(colour, 0.4)))
        return r.status_pixels(self.model, now, self.cursor)


def details_text(model, row):
    return " ".join(part for part in (
        row.get("label", ""), row.get("abi", ""), model.task_text(row))
        if part)


def statistic(model, now, name):
    """The statistic *name* as (text, share of the background to fill,
    colour)."""
    master = model.master.data if model.master is not None else {}
    if name == "ping":
        quiet = r.silence(model, now) or 0.0
        return (f"Ping {duration(quiet)}", quiet / r.SILENT_SECONDS,
                r.GREEN)
    if name == "disk":
        share = fraction(master.get("disk_free"), master.get("disk_total"))
        if share is None:
            return "Disk free ?", 0.0, r.BLUE
        return (f"Disk free {share:.0%} {size(master.get('disk_free'))}",
                share, r.BLUE)
    if name == "queue":
        queued = sum((master.get("queue") or {}).values())
        return (f"Queue {queued}", queued / (8 * r.BUILDS_PER_PIXEL),
                r.YELLOW)
    if name == "rate":
        built = sum((master.get("builds_last_hour") or {}).values())
        good = sum((master.get("successes_last_hour") or {}).values())
        return (f"Built {built}/h ok {good}", fraction(good, built) or 0.0,
                r.GREEN)
    if name == "time":
        seconds = master.get("builds_time")
        text = "?" if seconds is None else duration(seconds)
        return (f"Build time {text}", 0.0 if seconds is None else 1.0,
                r.PURPLE)
    if name == "size":
        built = master.get("builds_size")
        return (f"Build size {size(built)}",
                0.0 if built is None else 1.0, r.BLUE)
    raise ValueError(name)
