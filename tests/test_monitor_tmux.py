"""piw-monitor in a real terminal, as a person uses it: tmux runs it at a
fixed size against a real master and builder; the test reads the screen
with ``capture-pane``, types with ``send-keys`` and checks what a person
would see.  The text captures are kept in tests/artifacts/monitor/."""

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import task

from tests.e2e import Deployment, serve_slow_release
from tests.test_end_to_end import queue_release

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None,
    reason="tmux is not installed (make test installs it)")

ARTIFACTS = Path(__file__).parent / "artifacts" / "monitor"
MONITOR = Path(sys.executable).with_name("piw-monitor")
COLS, ROWS = 140, 40


class Terminal:
    """One program in a detached tmux session on a private tmux server."""

    def __init__(self, reactor, command, directory):
        self.reactor = reactor
        self.server = f"piw-monitor-test-{os.getpid()}"
        self.exit_file = Path(directory) / "exit-code"
        self.captures = []
        shell = (f"{command}; echo $? > {shlex.quote(str(self.exit_file))};"
                 f" sleep 600")
        self._tmux("new-session", "-d", "-s", "monitor", "-x", str(COLS),
                   "-y", str(ROWS), "-e", "TERM=screen-256color",
                   "-e", "LANG=C.UTF-8", shell)

    def _tmux(self, *args):
        return subprocess.run(["tmux", "-L", self.server, *args],
                              check=True, stdout=subprocess.PIPE,
                              text=True).stdout

    def screen(self):
        return self._tmux("capture-pane", "-p", "-t", "monitor")

    def keys(self, *keys):
        self._tmux("send-keys", "-t", "monitor", *keys)

    def save(self, name):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{len(self.captures) + 1:02d}-{name}.txt"
        path.write_text(self.screen())
        self.captures.append(path)
        return path

    async def wait_for(self, check, what, timeout=60):
        """Poll the screen until ``check(screen)`` is true."""
        if isinstance(check, str):
            text = check
            check = lambda screen: text in screen  # noqa: E731
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if check(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the "
                                     f"screen:\n{screen}")
            await task.deferLater(self.reactor, 0.25, lambda: None)

    def exit_code(self):
        try:
            return int(self.exit_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def close(self):
        subprocess.run(["tmux", "-L", self.server, "kill-server"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def row_of(screen, label):
    return next((line for line in screen.splitlines() if f" {label} " in
                 line), "")


@pytest.fixture
def package_index(tmp_path, reactor):
    url, port = serve_slow_release(tmp_path, reactor, seconds=20)
    yield url
    port.stopListening()


@pytest.fixture
def deployment(test_db, package_index):
    deployed = Deployment(test_db, package_index)
    yield deployed
    deployed.close()


@pytest_twisted.ensureDeferred
async def test_a_person_watches_and_steers_the_master(
        reactor, deployment, tmp_path):
    # the deployment's master listens there
    control = ["--control-queue", f"unix:{deployment.control_socket}"]
    log_file = tmp_path / "monitor.log"
    terminal = Terminal(reactor, shlex.join([
        str(MONITOR), "-c", os.devnull, *control, "-l", str(log_file)]),
        tmp_path)
    try:
        await _session(reactor, deployment, terminal)
    except BaseException:
        terminal.save("failure")
        print(f"monitor log:\n{_read(log_file)}\n{deployment.logs()}")
        raise
    finally:
        terminal.close()
        print(f"terminal captures: {ARTIFACTS}")
    assert "Traceback" not in _read(log_file)


def _read(path):
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


async def _session(reactor, deployment, terminal):
    abi = deployment.abi
    # started before the master: it says it waits
    screen = await terminal.wait_for("Waiting for the master at unix:",
                                     "the monitor to wait for the master")
    terminal.save("waiting-before-the-master")

    master = deployment.start_master()
    deployment.start_builder("pi-one")
    deployment.start_builder("pi-two")
    screen = await terminal.wait_for(
        lambda s: all("Idle" in row_of(s, label)
                      for label in ("pi-one", "pi-two")),
        "the builders' rows")
    for label in ("pi-one", "pi-two"):
        assert abi in row_of(screen, label), screen
    assert "piw-monitor: master" in screen.splitlines()[0]
    terminal.save("master-and-idle-builders")

    # paused: the header says so, and the builders get no work
    terminal.keys("p")
    screen = await terminal.wait_for(
        lambda s: s.splitlines()[0].startswith(" PAUSED"), "PAUSED")
    assert "The master is paused" in screen
    queue_release(deployment.database, "piw-slow", "1.0", "2024-01-01Z")
    # the dev-mode build queue reads the database every 10 s
    await task.deferLater(reactor, 14, lambda: None)
    screen = terminal.screen()
    assert "Building" not in screen, screen
    assert deployment.builds() == []
    terminal.save("paused")

    terminal.keys("r")
    screen = await terminal.wait_for(
        "Building piw-slow 1.0", "the build to start after resuming",
        timeout=90)
    assert not screen.splitlines()[0].startswith(" PAUSED")
    label = next(label for label in ("pi-one", "pi-two")
                 if "Building" in row_of(screen, label))
    # select its row (the master's is first): its details and build log
    terminal.keys(*["Down"] * (1 + ("pi-one", "pi-two").index(label)))

    def log_shown(screen):
        lines = screen.splitlines()
        titles = [n for n, line in enumerate(lines)
                  if line.startswith("Build log of builder")]
        return titles and f"({label})" in lines[titles[0]] and any(
            line.strip() for line in lines[titles[0] + 1:-2])
    screen = await terminal.wait_for(log_shown, "the build log tail")
    assert "Doing: Building piw-slow 1.0" in screen
    terminal.save("building")

    # sleep and wake the selected builder
    await terminal.wait_for(lambda s: "Idle" in row_of(s, label),
                            "the build to finish", timeout=120)
    terminal.keys("s")
    screen = await terminal.wait_for(
        lambda s: "Sleeping" in row_of(s, label), "the builder to sleep")
    assert f"({label}) will sleep." in screen
    other = "pi-two" if label == "pi-one" else "pi-one"
    assert "Idle" in row_of(screen, other), screen
    terminal.save("builder-sleeping")
    terminal.keys("w")
    screen = await terminal.wait_for(
        lambda s: "Idle" in row_of(s, label) and "woke up." in s,
        "the builder to wake")

    # terminate, after a question; the monitor then waits again
    terminal.keys("t")
    await terminal.wait_for("Terminate the master?", "the question")
    terminal.save("terminate-question")
    terminal.keys("y")
    screen = await terminal.wait_for("Waiting for the master at unix:",
                                     "the monitor to wait again")
    terminal.save("waiting-after-terminate")
    assert await _exited(reactor, master), master.output() + master.log()
    assert "Server Shut Down." in master.log()
    assert "Traceback" not in master.log(), master.log()

    # the master comes back; the monitor shows it without a restart
    deployment.start_master()
    screen = await terminal.wait_for(
        lambda s: "piw-monitor: master" in s.splitlines()[0] and
        row_of(s, "pi-one") and row_of(s, "pi-two") and "x " not in
        row_of(s, "pi-one")[:2], "the master and builders again",
        timeout=90)
    terminal.save("master-again")

    terminal.keys("q")
    for _ in range(40):
        if terminal.exit_code() is not None:
            break
        await task.deferLater(reactor, 0.25, lambda: None)
    assert terminal.exit_code() == 0, terminal.screen()


async def _exited(reactor, service, timeout=30):
    for _ in range(int(timeout / 0.25)):
        if service.process.poll() is not None:
            return service.process.returncode in (0, -15)
        await task.deferLater(reactor, 0.25, lambda: None)
    return False
