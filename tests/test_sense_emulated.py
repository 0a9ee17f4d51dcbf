"""piwheels-sense as a person uses it, on the Sense HAT emulator's
library without its window: this test holds the emulator's lock, owns its
shared-memory screen and serves its joystick socket, the way
``sense_emu_gui`` would, and drives a real ``twistd piwheels-sense
--emulate`` against a real master and builders.  Pictures of the screen
are kept in tests/artifacts/sense/."""

import os
import signal
import socket
import struct
import time

import pytest
import pytest_twisted
from twisted.internet import endpoints, task

from piwtwist.monitor.connection import MasterConnection
from piwtwist.monitor.model import Model
from piwtwist.sense import render as r
from tests.e2e import Deployment, Service, serve_slow_release
from tests.test_end_to_end import queue_release
from tests.test_sense import save_png

sense_emu = pytest.importorskip("sense_emu")
from sense_emu.lock import EmulatorLock  # noqa: E402
from sense_emu.screen import init_screen, screen_filename  # noqa: E402
from sense_emu.stick import stick_address  # noqa: E402
from piwtwist.service_user import own  # noqa: E402

KEYS = {"up": 103, "down": 108, "left": 105, "right": 106, "middle": 28}
EV_KEY = 1


def quantised(colour):
    """*colour* as it comes back from the emulator's RGB565 screen."""
    red, green, blue = colour
    return ((red >> 3) << 3, (green >> 2) << 2, (blue >> 3) << 3)


class Emulator:
    """What sense_emu_gui provides: the lock, the screen, the stick."""

    def __init__(self):
        self.lock = EmulatorLock("piwtwist tests")
        if self.lock.wait(0) and not self.lock.mine:
            pytest.skip("a Sense HAT emulator is running on this machine")
        self.lock.acquire()
        screen = init_screen()
        screen.seek(0)
        screen.write(b"\0" * 128)
        screen.close()
        # the monitor may run as another user (the services refuse root)
        os.chmod(screen_filename(), 0o666)
        family, kind, self.address = stick_address()
        try:
            os.unlink(self.address)
        except FileNotFoundError:
            pass
        self.stick = socket.socket(family, kind)
        self.stick.bind(self.address)
        os.chmod(self.address, 0o666)
        self.stick.setblocking(False)
        self.clients = set()

    def close(self):
        self.stick.close()
        for path in (self.address,):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.lock.release()

    def _hellos(self):
        while True:
            try:
                data, address = self.stick.recvfrom(64)
            except BlockingIOError:
                return
            if data == b"hello":
                self.clients.add(address)

    def has_client(self):
        self._hellos()
        return bool(self.clients)

    def press(self, direction):
        self._hellos()
        now = time.time()
        for value in (1, 0):   # pressed, released
            event = struct.pack("llHHI", int(now), int(now % 1 * 1e6),
                                EV_KEY, KEYS[direction], value)
            for client in list(self.clients):
                try:
                    self.stick.sendto(event, client)
                except (FileNotFoundError, ConnectionRefusedError):
                    self.clients.discard(client)

    def pixels(self):
        """The screen as sense_hat's get_pixels reads it."""
        with open(screen_filename(), "rb") as f:
            data = f.read(128)
        pixels = []
        for (value,) in struct.iter_unpack("H", data):
            pixels.append((((value >> 11) & 0x1F) << 3,
                           ((value >> 5) & 0x3F) << 2, (value & 0x1F) << 3))
        return pixels


def colour_at(pixels, x, y):
    return pixels[y * 8 + x]


def row(pixels, y):
    return pixels[y * 8:y * 8 + 8]


def is_red(pixel):
    red, green, blue = pixel
    return red > 0 and green == 0 and blue == 0


@pytest.fixture
def emulator():
    emulator = Emulator()
    yield emulator
    emulator.close()


@pytest.fixture
def package_index(tmp_path, reactor):
    url, port = serve_slow_release(tmp_path, reactor, seconds=30)
    yield url
    port.stopListening()


@pytest.fixture
def deployment(test_db, package_index):
    deployed = Deployment(test_db, package_index)
    yield deployed
    deployed.close()


class Person:
    """Looks at the emulator's screen and pushes its stick."""

    def __init__(self, reactor, emulator):
        self.reactor = reactor
        self.emulator = emulator
        self.cursor = (0, r.FIRST_BUILDER_ROW)
        self.pictures = []

    async def wait_for(self, check, what, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            pixels = self.emulator.pixels()
            if check(pixels):
                return pixels
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the "
                                     f"screen: {pixels}")
            await task.deferLater(self.reactor, 0.05, lambda: None)

    async def push(self, *directions):
        for direction in directions:
            self.emulator.press(direction)
            x, y = self.cursor
            if direction in ("left", "right"):
                x = min(max(x + (1 if direction == "right" else -1), 0), 7)
            elif direction in ("up", "down"):
                y += 1 if direction == "down" else -1
            self.cursor = (x, y)
            await task.deferLater(self.reactor, 0.2, lambda: None)

    async def cursor_to(self, x, y):
        cx, cy = self.cursor
        await self.push(*(["left"] * (cx - x) + ["right"] * (x - cx) +
                          ["up"] * (cy - y) + ["down"] * (y - cy)))

    def picture(self, name, pixels=None):
        pixels = pixels or self.emulator.pixels()
        path = save_png(pixels, f"{len(self.pictures) + 1:02d}-{name}.png")
        self.pictures.append(path)
        return path


def builder_colour(pixels, index):
    column, y = divmod(index, r.BUILDER_ROWS)
    return colour_at(pixels, column, r.FIRST_BUILDER_ROW + y)


Q = {name: quantised(colour) for name, colour in (
    ("idle", r.GREY), ("building", r.GREEN), ("stopped", r.RED),
    ("long", r.YELLOW), ("sending", r.BLUE), ("cleaning", r.PURPLE),
    ("sleeping", r.DIM_GREY), ("black", r.BLACK), ("white", r.WHITE))}


@pytest_twisted.ensureDeferred
async def test_a_person_steers_the_master_with_the_joystick(
        reactor, emulator, deployment):
    directory = deployment.root / "sense"
    directory.mkdir()
    own(directory, deployment.user)
    sense = Service("sense", [
        "piwheels-sense", "-c", os.devnull, "--emulate",
        "--control-queue", f"unix:{deployment.control_socket}", "-v",
    ], directory, deployment.user)
    deployment.services.append(sense)
    watcher = None
    person = Person(reactor, emulator)
    try:
        watcher = await _session(reactor, emulator, deployment, sense,
                                 person)
    except BaseException:
        person.picture("failure")
        print(deployment.logs())
        raise
    finally:
        if watcher is not None:
            await watcher.stopService()
        print(f"Sense HAT pictures: {[str(p) for p in person.pictures]}")
    assert "Traceback" not in sense.log(), sense.log()


async def _session(reactor, emulator, deployment, sense, person):
    # before the master: row 0 pulses red over a scrolling "waiting"
    await person.wait_for(lambda p: all(is_red(x) for x in row(p, 0)) and
                          Q["white"] in p[r.TEXT_TOP * 8:],
                          "the waiting screen")
    person.picture("waiting")
    from tests.e2e import wait_for
    await wait_for(reactor, emulator.has_client, 30,
                   "the monitor to ask for the joystick's events")

    deployment.start_master()
    deployment.start_builder("pi-one")
    deployment.start_builder("pi-two")
    await person.wait_for(lambda p: not is_red(colour_at(p, 0, 0)) and
                          row(p, 1)[0] == Q["white"], "the status screen",
                          60)
    # the cursor out of the way, at the bottom right
    await person.cursor_to(7, 7)
    pixels = await person.wait_for(
        lambda p: builder_colour(p, 0) == builder_colour(p, 1) == Q["idle"]
        and not is_red(colour_at(p, 0, 0)), "two idle builders", 90)
    assert row(pixels, 1)[0] == Q["white"]    # its disk is not full
    assert row(pixels, 2) == [Q["black"]] * 8    # nothing to build

    # someone watching the master's own state, as piw-monitor would
    model = Model(reactor)
    address = f"unix:{deployment.control_socket}"
    watcher = MasterConnection(
        reactor, endpoints.clientFromString(reactor, address), address,
        model)
    watcher.startService()
    try:
        await _steer(reactor, deployment, person, model)
    except BaseException:
        await watcher.stopService()
        raise
    return watcher


async def _steer(reactor, deployment, person, model):
    from tests.e2e import wait_for
    await wait_for(reactor, lambda: len(model.builders) == 2, 30,
                   "the watcher to see both builders")
    queue_release(deployment.database, "piw-slow", "1.0", "2024-01-01Z")
    pixels = await person.wait_for(
        lambda p: Q["building"] in (builder_colour(p, 0),
                                    builder_colour(p, 1)),
        "a builder to build", 120)
    building = 0 if builder_colour(pixels, 0) == Q["building"] else 1
    idle = 1 - building
    assert builder_colour(pixels, idle) == Q["idle"]
    person.picture("one-building-one-idle", pixels)

    # the statistics, off the top
    await person.cursor_to(0, 0)
    await person.push("up")
    pixels = await person.wait_for(
        lambda p: Q["white"] in p[r.TEXT_TOP * 8:(r.TEXT_TOP + 5) * 8],
        "the ping statistic")
    await person.push("right")
    pixels = await person.wait_for(
        lambda p: colour_at(p, 0, 0) == quantised(r.scale(r.BLUE, 0.4)),
        "the disk statistic")
    person.picture("statistics-disk", pixels)
    await person.push("down")
    person.cursor = (0, 0)

    # the idle builder's details, then kill it
    labels = sorted(row.get("label") for row in model.builders.values())
    label = labels[idle]
    await person.cursor_to(0, r.FIRST_BUILDER_ROW + idle)
    await person.push("middle")
    await person.wait_for(
        lambda p: colour_at(p, 0, 0) == quantised(r.scale(r.GREY, 0.3)),
        "the idle builder's details")
    person.picture("details", None)
    await person.push("right")
    pixels = await person.wait_for(
        lambda p: colour_at(p, 0, 0) == quantised(r.scale(r.RED, 0.4)),
        "the kill choice")
    person.picture("kill-choice", pixels)
    await person.push("middle")
    await person.wait_for(
        lambda p: colour_at(p, 0, 0) == quantised(r.scale(r.GREEN, 0.4)),
        "'Kill sent'")
    killed = next(row for row in model.builders.values()
                  if row.get("label") == label)
    await wait_for(reactor, lambda: killed.get("kill_requested") or
                   killed.gone_at is not None, 10,
                   "the master to record the kill")
    # the builder leaves at its next Idle: red, then gone
    await person.cursor_to(7, 7)
    pixels = await person.wait_for(
        lambda p: builder_colour(p, idle) == Q["stopped"] or
        builder_colour(p, 1) == Q["stopped"], "the killed builder in red",
        90)
    person.picture("building-and-killed", pixels)
    await person.wait_for(
        lambda p: builder_colour(p, 1) == Q["black"] and
        builder_colour(p, 0) in (Q["building"], Q["sending"],
                                 Q["cleaning"], Q["idle"]),
        "the killed builder gone", 30)

    # silence: the master stopped, row 0 pulses red within 35 s
    master = next(s for s in deployment.services if s.name == "master")
    master.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        await person.wait_for(
            lambda p: all(is_red(x) for x in row(p, 0)),
            "row 0 to turn red", 35)
        assert time.monotonic() - stopped_at > 25
        await person.wait_for(
            lambda p: len({x for x in row(p, 0)}) == 1 and
            row(p, 0)[0] == Q["stopped"], "row 0 at its brightest", 5)
        person.picture("silent-master")
    finally:
        master.signal(signal.SIGCONT)
    await person.wait_for(lambda p: not is_red(colour_at(p, 0, 0)) and
                          not is_red(colour_at(p, 7, 0)),
                          "the display to come back", 15)

    # terminate it through the menu, off the bottom
    await person.push("down")
    await person.push("right")
    await person.wait_for(
        lambda p: colour_at(p, 0, 0) == quantised(r.scale(r.RED, 0.3)),
        "the terminate choice")
    person.picture("terminate-choice")
    await person.push("middle")
    for _ in range(120):
        if master.process.poll() is not None:
            break
        await task.deferLater(reactor, 0.25, lambda: None)
    assert master.process.returncode == 0, master.log()
    assert "Server Shut Down." in master.log()
    await person.wait_for(lambda p: all(is_red(x) for x in row(p, 0)),
                          "waiting again")
    person.cursor = (7, 7)

    # the master again: the display returns without a restart
    deployment.start_master()
    await person.wait_for(
        lambda p: builder_colour(p, 0) in (Q["idle"], Q["building"]) and
        not is_red(colour_at(p, 0, 0)), "the master and builder again", 90)
    person.picture("master-again")

    # quit, through the menu
    sense = next(s for s in deployment.services if s.name == "sense")
    await person.push("down", "middle")
    for _ in range(80):
        if sense.process.poll() is not None:
            break
        await task.deferLater(reactor, 0.25, lambda: None)
    assert sense.process.returncode == 0, sense.log()
    assert person.emulator.pixels() == [Q["black"]] * 64
