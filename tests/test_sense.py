"""piwheels-sense without hardware: the pixels for a snapshot of the
master, rotation, text, the screens and the joystick (fake clock), the
service's frames and controls, and the command line.  A picture of the
status screen with builders in every state is kept in
tests/artifacts/sense/."""

import os
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
from twisted.internet import task
from twisted.python import usage

from piwtwist.monitor.model import Model
from piwtwist.protocol import control as proto
from piwtwist.sense import render as r
from piwtwist.sense import tap
from piwtwist.sense.app import SenseService
from piwtwist.sense.ui import SenseUI

ARTIFACTS = Path(__file__).parent / "artifacts" / "sense"
TWISTD = Path(sys.executable).with_name("twistd")

LEGEND = {
    ".": r.BLACK, "W": r.WHITE, "1": (85, 85, 85), "3": (96, 96, 96),
    "4": (102, 102, 102), "g": r.GREY, "d": r.DIM_GREY, "G": r.GREEN,
    "Y": r.YELLOW, "b": r.BLUE, "p": r.PURPLE, "R": r.RED,
}


def picture(*rows):
    assert len(rows) == 8 and all(len(row) == 8 for row in rows)
    return [LEGEND[symbol] for row in rows for symbol in row]


def save_png(pixels, name, scale=40):
    """The 8x8 *pixels* enlarged, with dark gaps between the LEDs."""
    from PIL import Image, ImageDraw
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (8 * scale, 8 * scale), (20, 20, 20))
    draw = ImageDraw.Draw(image)
    for index, colour in enumerate(pixels):
        y, x = divmod(index, 8)
        draw.rectangle([x * scale + 3, y * scale + 3,
                        (x + 1) * scale - 4, (y + 1) * scale - 4],
                       fill=tuple(colour))
    path = ARTIFACTS / name
    image.save(path)
    print(f"Sense HAT picture: {path}")
    return path


def builder(builder_id, label, status, abi="cp311", **extra):
    data = {"builder_id": builder_id, "label": label, "abi": abi,
            "status": status, "sleeping": False, "last_seen": 985.0,
            "busy_timeout": 300.0, "task_started": None,
            "package": None, "package_version": None}
    data.update(extra)
    return data


def master(now, **extra):
    data = {"now": now, "started": 0.0, "disk_total": 1000,
            "disk_free": 550, "queue": {"cp311": 13, "cp39": 6},
            "builds_last_hour": {"cp311": 10}, "paused": False,
            "successes_last_hour": {"cp311": 8}, "abis": ["cp311", "cp39"]}
    data.update(extra)
    return data


@pytest.fixture
def clock():
    clock = task.Clock()
    clock.advance(990)
    return clock


@pytest.fixture
def model(clock):
    """A master with builders in every state, 5 s after its last message,
    at 1005."""
    model = Model(clock)
    model.apply({"type": "snapshot", "master": master(990.0), "builders": [
        builder(1, "a-idle", "idle"),
        builder(2, "b-sleep", "idle", sleeping=True),
        builder(3, "c-build", "building", task_started=945.0,
                package="numpy", package_version="2.0"),
        builder(4, "d-long", "building", task_started=5.0),
        builder(5, "e-send", "sending"),
        builder(6, "f-record", "recording"),
        builder(7, "g-clean", "cleaning"),
        builder(8, "h-stop", "stopping"),
        builder(9, "i-timeout", "building", last_seen=605.0,
                task_started=600.0),
        builder(10, "j-connect", "connecting"),
        builder(11, "a-gone", "idle", abi="cp39"),
        builder(12, "b-gone-long", "idle", abi="cp39"),
        builder(13, "c-leave", "leaving", abi="cp39"),
    ]})
    model.apply({"type": "builder_gone", "builder_id": 12})
    clock.advance(10)
    model.apply({"type": "master", "master": master(1000.0)})
    clock.advance(3)
    model.apply({"type": "builder_gone", "builder_id": 11})
    clock.advance(2)
    return model


STATUS_PICTURE = (
    "W1......",   # 5 s since the master's last message
    "WWWW4...",   # 55% of its disk free
    "WW3.....",   # 19 builds pending
    "gbR.....",   # builders, by ABI then label, column by column
    "dpR.....",
    "GR......",
    "YR......",
    "bg......",
)


def test_status_pixels_for_every_builder_state(model, clock):
    pixels = r.status_pixels(model, clock.seconds())
    assert pixels == picture(*STATUS_PICTURE)
    save_png(pixels, "status-every-state.png")


def test_gone_builders_disappear_after_a_few_seconds(model, clock):
    clock.advance(r.GONE_SECONDS)
    pixels = r.status_pixels(model, clock.seconds())
    # a-gone went at 1003: gone from the picture, c-leave moves up
    assert pixels[3 * 8 + 2] == r.RED and pixels[4 * 8 + 2] == r.BLACK


def test_row_0_pulses_red_when_the_master_is_silent_or_gone(model, clock):
    clock.advance(r.SILENT_SECONDS - 5 - 0.01)
    assert r.status_pixels(model, clock.seconds())[:8] == \
        [r.WHITE] * 7 + [r.scale(r.WHITE, (29.99 - 7 * 3.75) / 3.75)]
    clock.advance(0.01)   # silent for 30 s, at 1030.0: the pulse's lowest
    assert r.status_pixels(model, clock.seconds())[:8] == \
        [r.scale(r.RED, 0.25)] * 8
    clock.advance(0.5)    # its brightest
    assert r.status_pixels(model, clock.seconds())[:8] == [r.RED] * 8
    model.apply({"type": "master", "master": master(1030.5)})
    assert r.status_pixels(model, clock.seconds())[:8] == \
        [r.BLACK] * 8
    model.connection_lost()
    assert r.status_pixels(model, clock.seconds())[:8] == [r.RED] * 8


def test_the_cursor_pulses_white(model, clock):
    at_rest = r.status_pixels(model, clock.seconds(), cursor=(0, 5))
    assert at_rest == picture(*STATUS_PICTURE)
    clock.advance(0.5)
    lit = r.status_pixels(model, clock.seconds(), cursor=(0, 5))
    assert lit[5 * 8] == r.WHITE
    clock.advance(0.25)
    half = r.status_pixels(model, clock.seconds(), cursor=(0, 5))
    assert half[5 * 8] == (128, 255, 128)


def test_rotation_matches_sense_hat_for_every_angle():
    pixels = [(index, 0, 0) for index in range(64)]
    # sense_hat (and sense_emu) turn with numpy's rot90 of a pixel map:
    # logical pixel i goes to physical pixel map[i // 8][i % 8]
    pixel_map = numpy.arange(64).reshape(8, 8)
    for degrees in (0, 90, 180, 270):
        turned = numpy.rot90(pixel_map, degrees // 90)
        physical = [None] * 64
        for index in range(64):
            physical[turned[index // 8][index % 8]] = pixels[index]
        assert r.rotate(pixels, degrees) == physical, degrees
    # the top left corner, as a person sees the matrix turn clockwise
    assert [r.rotate(pixels, d).index((0, 0, 0)) for d in
            (0, 90, 180, 270)] == [0, 7, 63, 56]
    with pytest.raises(ValueError):
        r.rotate(pixels, 45)


def test_the_stick_turns_with_the_picture():
    assert [r.unrotate_direction(d, 0) for d in r.DIRECTIONS] == \
        list(r.DIRECTIONS)
    # turned 90 degrees clockwise, the picture's top is the board's right
    assert r.unrotate_direction("right", 90) == "up"
    assert r.unrotate_direction("up", 90) == "left"
    assert r.unrotate_direction("down", 180) == "up"
    assert r.unrotate_direction("left", 270) == "up"
    assert r.unrotate_direction("middle", 90) == "middle"


def test_text_scrolls_in_from_the_right():
    assert all(len(glyph) and all(len(column) == 5 for column in glyph)
               for glyph in r.FONT.values())
    assert r.text_columns("Hi") == r.text_columns("HI")
    assert r.text_columns("\u00e9") == r.FONT["?"]
    columns = r.text_columns("HI")
    assert len(columns) == 3 + 1 + 3
    assert r.text_screen("HI", 0.0) == [r.BLACK] * 64
    # after 0.8 s, eight columns have moved in: H at the left
    pixels = r.text_screen("HI", 0.8, colour=r.GREEN,
                           background=[r.BLUE] * 64)
    rows = ["".join("#" if p == r.GREEN else "." for p in
                    pixels[y * 8:y * 8 + 8]) for y in range(8)]
    assert rows == ["........", "........",
                    "#.#.###.", "#.#..#..", "###..#..", "#.#..#..",
                    "#.#.###.", "........"]
    assert pixels[0] == r.BLUE
    # and starts over once it has left
    assert r.text_screen("HI", (len(columns) + 8) / 10) == [r.BLACK] * 64


class FakeConnection:
    def __init__(self, model, refuse=None):
        self.model = model
        self.refuse = refuse
        self.controls = []

    async def control(self, action, builder_id=None):
        self.controls.append((action, builder_id))
        if self.refuse:
            raise proto.ControlRefused(self.refuse)
        return {}


class FakeHat:
    def __init__(self):
        self.shown = []
        self.pending = []
        self.closed = False

    def show(self, pixels):
        self.shown.append(list(pixels))

    def events(self):
        events, self.pending = self.pending, []
        return events

    def close(self):
        self.closed = True


def test_the_joystick_walks_the_screens(model, clock):
    ui = SenseUI(model, clock)
    assert ui.screen == "status" and ui.cursor == (0, 3)
    for _ in range(4):
        ui.press("up")
    assert ui.screen == "statistics"
    texts = []
    for _ in range(6):
        texts.append(_statistic_text(ui))
        ui.press("right")
    assert texts == ["Ping 5s", "Disk free 55% 550B", "Queue 19",
                     "Built 10/h ok 8", "Build time ?", "Build size ?"]
    ui.press("left")
    assert _statistic_text(ui) == "Build size ?"
    model.apply({"type": "master", "master": master(
        1005.0, builds_time=7205.0, builds_size=3 << 29)})
    assert _statistic_text(ui) == "Build size 1.5G"
    ui.press("left")
    assert _statistic_text(ui) == "Build time 2h00m"
    ui.press("down")
    assert ui.screen == "status" and ui.cursor == (0, 0)
    # to c-build (column 0, row 5) and press: its details
    ui.press("down"), ui.press("down"), ui.press("down"), ui.press("down")
    ui.press("down")
    assert ui.cursor == (0, 5)
    assert ui.press("middle") is None
    assert ui.screen == "details" and ui.builder_id == 3
    from piwtwist.sense.ui import details_text
    assert details_text(model, model.builders[3]) == \
        "c-build cp311 Building numpy 2.0"
    background = ui.frame()[0]
    assert background == r.scale(r.GREEN, 0.3)
    ui.press("right")
    assert ui.frame()[0] == r.scale(r.RED, 0.4)
    assert ui.press("middle") == ("control", proto.KILL, 3)
    assert ui.screen == "status"
    # the same, turned down by going back to the text
    ui.press("middle"), ui.press("right"), ui.press("left")
    assert ui.press("middle") is None and ui.screen == "status"
    # nothing under the cursor: nothing opens
    ui.cursor = (7, 7)
    assert ui.press("middle") is None and ui.screen == "status"
    ui.press("down")
    assert ui.screen == "menu" and ui.frame()[0] == r.scale(r.BLUE, 0.3)
    ui.press("right")
    assert ui.frame()[0] == r.scale(r.RED, 0.3)
    assert ui.press("middle") == ("control", proto.TERMINATE, None)
    ui.press("down")
    assert ui.press("middle") == ("quit",)


def _statistic_text(ui):
    from piwtwist.sense.ui import STATISTICS_NAMES, statistic
    return statistic(ui.model, ui.clock.seconds(),
                     STATISTICS_NAMES[ui.statistic])[0]


def test_waiting_scrolls_and_only_the_menu_works(clock):
    model = Model(clock)
    ui = SenseUI(model, clock)
    clock.advance(1.5)   # "Waiting" part way in, row 0 at its brightest
    pixels = ui.frame()
    assert pixels[:8] == [r.RED] * 8
    assert r.WHITE in pixels[8:] and set(pixels[8:]) <= {r.WHITE, r.BLACK}
    assert ui.press("up") is None and ui.screen == "status"
    ui.press("down")
    assert ui.screen == "menu"
    assert ui.press("middle") == ("quit",)


def test_the_service_draws_and_sends_controls(model, clock):
    hat = FakeHat()
    connection = FakeConnection(model)
    ui = SenseUI(model, clock)
    quits = []
    sense = SenseService(clock, hat, ui, connection, rotation=180,
                         on_quit=lambda: quits.append(True))
    sense.startService()
    assert hat.shown[-1] == r.rotate(r.status_pixels(
        model, clock.seconds(), ui.cursor), 180)
    # on the board turned upside down, "up" is the picture's "down"
    hat.pending = [("up", "pressed"), ("up", "released"),
                   ("up", "pressed"), ("up", "held")]
    clock.advance(0.05)
    assert ui.cursor == (0, 5)
    hat.pending = [("middle", "pressed"), ("left", "pressed"),
                   ("middle", "pressed")]
    clock.advance(0.05)
    assert connection.controls == [(proto.KILL, 3)]
    assert ui.message[0] == "Kill sent"
    connection.refuse = "builder 3 is gone"
    sense.do(("control", proto.KILL, 3))
    assert ui.message[0] == "builder 3 is gone"
    sense.do(("quit",))
    assert quits == [True]
    sense.stopService()
    assert hat.closed
    assert not clock.getDelayedCalls()


def test_a_broken_frame_is_logged_and_the_next_one_drawn(
        model, clock, observe_errors):
    hat = FakeHat()
    ui = SenseUI(model, clock)
    sense = SenseService(clock, hat, ui, FakeConnection(model))
    broken = [True]

    def events():
        if broken:
            broken.pop()
            raise OSError("the stick went away")
        return []
    hat.events = events
    sense.startService()
    clock.advance(0.05)
    sense.stopService()
    assert len(hat.shown) == 1
    assert len(observe_errors) == 1
    observe_errors.pop()["log_failure"].trap(OSError)


def test_options(not_root):
    options = tap.Options()
    options.parseOptions(["-c", os.devnull])
    assert options["control-queue"] == "unix:/tmp/piw-control"
    assert options["rotate"] == 0 and not options["emulate"]
    options = tap.Options()
    options.parseOptions(["-c", os.devnull, "-r", "270", "--emulate",
                          "--control-queue", "unix:/run/x.sock", "-v"])
    assert options["rotate"] == 270 and options["emulate"]
    for args, message in ((["-r", "45"], "must be 0, 90, 180 or 270"),
                          (["--rotate", "up"], "invalid literal"),
                          (["--control-queue", "nonsense:x"],
                           "not an endpoint description")):
        with pytest.raises(usage.UsageError, match=message):
            tap.Options().parseOptions(["-c", os.devnull, *args])


def test_the_sense_section_of_the_configuration(not_root, tmp_path):
    config = tmp_path / "piwheels.conf"
    config.write_text("[DEFAULT]\ncontrol_queue = unix:/run/c.sock\n"
                      "[sense]\nrotate = 90\n")
    options = tap.Options()
    options.parseOptions(["-c", str(config)])
    assert options["rotate"] == 90
    assert options["control-queue"] == "unix:/run/c.sock"


def test_without_a_hat_it_says_so_in_one_sentence(tmp_path):
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    done = subprocess.run(
        [str(TWISTD), "-n", "--pidfile=", "piwheels-sense", "-c",
         os.devnull], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("piwheels-sense: no Sense HAT was found")
    assert "--emulate" in lines[0] and lines[0].count(". ") == 0
