"""The LED matrix and joystick: the ``sense-hat`` library on a Raspberry
Pi with the HAT, or ``sense_emu`` drawing on the Sense HAT emulator.

Both are quick: a picture is 128 bytes written to a framebuffer (or the
emulator's shared-memory file), and the joystick is read without waiting
(``select`` with no timeout), so both run on the reactor's thread.
"""

NO_HAT = ("piwheels-sense: no Sense HAT was found ({why}); to try it "
          "without one, start the emulator (sense_emu_gui, from "
          "pip install sense-emu) and add --emulate.")
NO_EMULATOR = ("piwheels-sense: the Sense HAT emulator is not running "
               "({why}); start sense_emu_gui first, or drop --emulate on "
               "a Pi with the HAT.")


class NoSenseHat(Exception):
    """Neither the HAT nor the emulator can be used; the text says so in
    one sentence."""


class Hat:
    """What the monitor needs of a ``SenseHat``: show 64 pixels, read the
    joystick's events."""

    def __init__(self, sense):
        self.sense = sense
        self._shown = None

    def show(self, pixels):
        """Show *pixels* (64 ``(r, g, b)``, already rotated); the same
        picture twice is written once."""
        pixels = [tuple(pixel) for pixel in pixels]
        if pixels != self._shown:
            self.sense.set_pixels([list(pixel) for pixel in pixels])
            self._shown = pixels

    def events(self):
        """The joystick's events since the last call, as (direction,
        action) pairs: up, down, left, right, middle; pressed, held,
        released."""
        return [(event.direction, event.action)
                for event in self.sense.stick.get_events()]

    def close(self):
        try:
            self.show([(0, 0, 0)] * 64)
        finally:
            self.sense.stick.close()


def open_hat(emulate=False):
    """A :class:`Hat` on the hardware, or on the emulator with *emulate*;
    :class:`NoSenseHat` when there is none."""
    if emulate:
        return Hat(_emulator())
    try:
        from sense_hat import SenseHat
    except ImportError:
        raise NoSenseHat(NO_HAT.format(
            why="the sense-hat library is not installed"))
    try:
        return Hat(SenseHat())
    except Exception as e:
        raise NoSenseHat(NO_HAT.format(why=str(e) or type(e).__name__))


def _emulator():
    try:
        from sense_emu import SenseHat
        from sense_emu.lock import EmulatorLock
    except ImportError:
        raise NoSenseHat(NO_EMULATOR.format(
            why="the sense-emu library is not installed"))
    # without a running emulator, sense_emu would wait and then start its
    # GTK window itself; we would rather say so
    lock = EmulatorLock("piwheels-sense")
    if not lock.wait(0):
        raise NoSenseHat(NO_EMULATOR.format(why="no emulator holds its lock"))
    try:
        return SenseHat()
    except Exception as e:
        raise NoSenseHat(NO_EMULATOR.format(why=str(e) or type(e).__name__))
