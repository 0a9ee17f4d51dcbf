"""What the Sense HAT shows, as pixels: pure functions from what the
monitor knows (:class:`~piwtwist.monitor.model.Model`) and a time to 64
``(r, g, b)`` tuples, row by row from the top left, plus the rotation that
turns the picture for a HAT mounted sideways or upside down.  Nothing
here touches hardware, so every pixel can be checked in a unit test.

The status screen, row by row:

0. Time since the last message from the master: one white pixel per
   :data:`SILENCE_STEP` seconds (a partial shade for the rest); after
   :data:`SILENT_SECONDS` of silence, and while disconnected, the whole
   row pulses red.
1. Free space on the master's output disk: all white is 100%.
2. Pending builds: one white pixel per :data:`BUILDS_PER_PIXEL` builds, a
   partial shade for the remainder.
3-7. One pixel per builder, column by column (five a column), sorted by
   ABI, then label: see :data:`BUILDER_COLOURS`.
"""

import math

from ..monitor.model import fraction

BLACK = (0, 0, 0)
WHITE = (255, 255, 255)
GREY = (128, 128, 128)
DIM_GREY = (40, 40, 40)
GREEN = (0, 255, 0)
BLUE = (0, 64, 255)
PURPLE = (160, 0, 255)
YELLOW = (255, 200, 0)
RED = (255, 0, 0)

#: A master silent this long (or disconnected) turns row 0 red.
SILENT_SECONDS = 30.0
SILENCE_STEP = SILENT_SECONDS / 8
BUILDS_PER_PIXEL = 8
#: A build running longer than this shows yellow.
LONG_BUILD_SECONDS = 15 * 60.0
#: A builder that left stays red this long, then disappears.
GONE_SECONDS = 5.0
#: Pulses (the cursor, row 0 when silent) last this long.
PULSE_SECONDS = 1.0
#: Scrolling text moves this many columns a second.
SCROLL_COLUMNS_PER_SECOND = 10.0
#: Scrolling text occupies rows TEXT_TOP to TEXT_TOP + 4.
TEXT_TOP = 2
BUILDER_ROWS = 5
FIRST_BUILDER_ROW = 3
MAX_BUILDERS = 8 * BUILDER_ROWS

#: Builder display states and their colours.
IDLE, SLEEPING, BUILDING, LONG_BUILD, SENDING, CLEANING, STOPPED = (
    "idle", "sleeping", "building", "long_build", "sending", "cleaning",
    "stopped")
BUILDER_COLOURS = {
    IDLE: GREY,            # waiting for work (or connecting)
    SLEEPING: DIM_GREY,    # told to sleep, or the master is paused
    BUILDING: GREEN,
    LONG_BUILD: YELLOW,    # building for more than 15 minutes
    SENDING: BLUE,         # sending wheels, or having them recorded
    CLEANING: PURPLE,      # cleaning up after a build
    STOPPED: RED,          # timed out, killed, or gone
}


# pixels ------------------------------------------------------------------

def scale(colour, amount):
    """*colour* at *amount* (0..1) of its brightness."""
    amount = min(max(amount, 0.0), 1.0)
    return tuple(int(round(c * amount)) for c in colour)


def blend(colour, other, amount):
    """*amount* (0..1) of the way from *colour* to *other*."""
    amount = min(max(amount, 0.0), 1.0)
    return tuple(int(round(a + (b - a) * amount))
                 for a, b in zip(colour, other))


def pulse(now, period=PULSE_SECONDS):
    """0 .. 1 .. 0 once every *period* seconds (0 at whole periods)."""
    return 0.5 - 0.5 * math.cos(2 * math.pi * (now % period) / period)


def bar(value, unit, colour=WHITE, width=8):
    """*width* pixels: one full *colour* pixel per *unit* of *value*, the
    remainder as a partial shade, then black."""
    value = max(value or 0.0, 0.0)
    pixels = []
    for column in range(width):
        pixels.append(scale(colour, (value - column * unit) / unit))
    return pixels


def rotate(pixels, degrees):
    """The 64 *pixels* as the physical LED matrix needs them to appear
    turned by *degrees* (0, 90, 180, 270) clockwise, as ``sense_hat``'s
    own ``rotation`` does: at 90 the picture's top row runs down the
    matrix's right-hand column."""
    if degrees not in (0, 90, 180, 270):
        raise ValueError("the rotation must be 0, 90, 180 or 270 degrees")
    out = [None] * 64
    for row in range(8):
        for column in range(8):
            r, c = row, column
            for _ in range(degrees // 90):
                r, c = c, 7 - r
            out[r * 8 + c] = pixels[row * 8 + column]
    return out


#: The joystick's directions, clockwise.
DIRECTIONS = ("up", "right", "down", "left")


def unrotate_direction(direction, degrees):
    """Where a push of the stick towards *direction* (on the board) points
    in the picture turned by *degrees*."""
    if direction not in DIRECTIONS:
        return direction
    turns = degrees // 90
    return DIRECTIONS[(DIRECTIONS.index(direction) - turns) % 4]


# text --------------------------------------------------------------------

# a 3x5 font (M, N, W wider; punctuation narrower); lower case is shown
# as upper case
_GLYPHS = {
    "A": ".#. #.# ### #.# #.#", "B": "##. #.# ##. #.# ##.",
    "C": ".## #.. #.. #.. .##", "D": "##. #.# #.# #.# ##.",
    "E": "### #.. ##. #.. ###", "F": "### #.. ##. #.. #..",
    "G": ".## #.. #.# #.# .##", "H": "#.# #.# ### #.# #.#",
    "I": "### .#. .#. .#. ###", "J": "..# ..# ..# #.# .#.",
    "K": "#.# #.# ##. #.# #.#", "L": "#.. #.. #.. #.. ###",
    "M": "#...# ##.## #.#.# #...# #...#", "N": "#..# ##.# #.## #..# #..#",
    "O": ".#. #.# #.# #.# .#.", "P": "##. #.# ##. #.. #..",
    "Q": ".#. #.# #.# ##. .##", "R": "##. #.# ##. #.# #.#",
    "S": ".## #.. .#. ..# ##.", "T": "### .#. .#. .#. .#.",
    "U": "#.# #.# #.# #.# ###", "V": "#.# #.# #.# #.# .#.",
    "W": "#...# #...# #.#.# ##.## #...#", "X": "#.# #.# .#. #.# #.#",
    "Y": "#.# #.# .#. .#. .#.", "Z": "### ..# .#. #.. ###",
    "0": "### #.# #.# #.# ###", "1": ".#. ##. .#. .#. ###",
    "2": "##. ..# .#. #.. ###", "3": "##. ..# .#. ..# ##.",
    "4": "#.# #.# ### ..# ..#", "5": "### #.. ##. ..# ##.",
    "6": ".## #.. ### #.# ###", "7": "### ..# .#. .#. .#.",
    "8": "### #.# ### #.# ###", "9": "### #.# ### ..# ##.",
    " ": ".. .. .. .. ..", ".": ". . . . #", ",": ". . . # #",
    ":": ". # . # .", "!": "# # # . #", "?": "##. ..# .#. ... .#.",
    "-": "... ... ### ... ...", "/": "..# ..# .#. #.. #..",
    "%": "#.# ..# .#. #.. #.#", "(": ".# #. #. #. .#", ")": "#. .# .# .# #.",
    "'": "# # . . .", "_": "... ... ... ... ###", "+": "... .#. ### .#. ...",
    "=": "... ### ... ### ...", ">": "#.. .#. ..# .#. #..",
    "<": "..# .#. #.. .#. ..#",
}


def _columns(glyph):
    rows = glyph.split()
    return [tuple(row[column] == "#" for row in rows)
            for column in range(len(rows[0]))]


FONT = {char: _columns(glyph) for char, glyph in _GLYPHS.items()}


def text_columns(text):
    """*text* as columns of five booleans (top first), one blank column
    between characters; unknown characters show as '?'."""
    columns = []
    for char in text.upper():
        if columns:
            columns.append((False,) * 5)
        columns.extend(FONT.get(char, FONT["?"]))
    return columns


def scroll_offset(columns, elapsed):
    """Which column of the strip is at the left edge *elapsed* seconds
    after the text started: it enters from the right, leaves on the left,
    and starts again."""
    length = len(columns) + 8
    return int(elapsed * SCROLL_COLUMNS_PER_SECOND) % length - 8


def draw_text(pixels, columns, offset, colour, top=TEXT_TOP):
    """Draw the text *columns* over *pixels* (changed in place and
    returned), strip column *offset* at the left edge."""
    for x in range(8):
        index = offset + x
        if 0 <= index < len(columns):
            for y, lit in enumerate(columns[index]):
                if lit:
                    pixels[(top + y) * 8 + x] = colour
    return pixels


def text_screen(text, elapsed, colour=WHITE, background=None, row0=None):
    """A screen of scrolling *text* over *background* (64 pixels; black
    when None), with *row0* (8 pixels) on top when given."""
    pixels = list(background) if background is not None else [BLACK] * 64
    if row0 is not None:
        pixels[:8] = row0
    columns = text_columns(text)
    return draw_text(pixels, columns, scroll_offset(columns, elapsed),
                     colour)


def fill(amount, colour):
    """A background filled from the left: *amount* (0..1) of the 64
    pixels' columns in *colour* (a partial shade at the edge)."""
    row = bar((amount or 0.0) * 8, 1.0, colour)
    return row * 8


# the status screen -------------------------------------------------------

def builder_state(model, row, now):
    """How the builder *row* of *model* is shown (one of the states in
    :data:`BUILDER_COLOURS`) when the monitor's clock says *now*."""
    data = row.data
    if row.gone_at is not None:
        return STOPPED
    status = data.get("status")
    if status in ("stopping", "leaving"):
        return STOPPED
    master_now = model.master_now()
    last_seen = data.get("last_seen")
    busy_timeout = data.get("busy_timeout")
    if last_seen is not None and busy_timeout and \
            master_now - last_seen > busy_timeout:
        return STOPPED
    if status == "building":
        started = data.get("task_started")
        if started is not None and \
                master_now - started > LONG_BUILD_SECONDS:
            return LONG_BUILD
        return BUILDING
    if status in ("sending", "recording"):
        return SENDING
    if status == "cleaning":
        return CLEANING
    if status == "sleeping" or data.get("sleeping") or model.paused:
        return SLEEPING
    return IDLE


def shown_builders(model, now):
    """The builders on screen, in order: by ABI, label and id, without
    those gone for more than :data:`GONE_SECONDS`; at most
    :data:`MAX_BUILDERS`."""
    rows = [row for row in model.rows() if not row.is_master and (
        row.gone_at is None or now - row.gone_at <= GONE_SECONDS)]
    return rows[:MAX_BUILDERS]


def silence(model, now):
    """Seconds since the master last said anything (None: never)."""
    if model.master is None:
        return None
    return max(now - model.master.received_at, 0.0)


def silence_row(model, now):
    """Row 0."""
    quiet = silence(model, now)
    if not model.connected or quiet is None or quiet >= SILENT_SECONDS:
        return [scale(RED, 0.25 + 0.75 * pulse(now))] * 8
    return bar(quiet, SILENCE_STEP)


def status_pixels(model, now, cursor=None):
    """The status screen: 64 pixels.  *cursor* ``(x, y)`` pulses white over
    whatever is under it."""
    master = model.master.data if model.master is not None else {}
    pixels = list(silence_row(model, now))
    disk = fraction(master.get("disk_free"), master.get("disk_total"))
    pixels += bar((disk or 0.0) * 8, 1.0)
    queued = sum((master.get("queue") or {}).values())
    pixels += bar(queued, BUILDS_PER_PIXEL)
    grid = [BLACK] * (8 * BUILDER_ROWS)
    for index, row in enumerate(shown_builders(model, now)):
        column, y = divmod(index, BUILDER_ROWS)
        grid[y * 8 + column] = BUILDER_COLOURS[builder_state(model, row,
                                                             now)]
    pixels += grid
    if cursor is not None:
        x, y = cursor
        pixels[y * 8 + x] = blend(pixels[y * 8 + x], WHITE, pulse(now))
    return pixels


def builder_at(model, now, cursor):
    """The builder row under *cursor*, or None."""
    x, y = cursor
    if y < FIRST_BUILDER_ROW:
        return None
    index = x * BUILDER_ROWS + (y - FIRST_BUILDER_ROW)
    builders = shown_builders(model, now)
    return builders[index] if index < len(builders) else None
