"""Telling systemd: readiness and the builder's watchdog, against a real
notification socket and a fake clock; and the unit files in systemd/ with
the example configuration they rely on."""

import configparser
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet import task
from twisted.logger import LogLevel, globalLogPublisher

from piwtwist import systemd
from piwtwist.builder import tap as builder_tap
from piwtwist.master import tap as master_tap

UNITS = Path(__file__).parent.parent / "systemd"
PID = 4242


class NotifySocket:
    """A datagram socket standing in for systemd's end of NOTIFY_SOCKET."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)

    def messages(self):
        """Every datagram received so far."""
        received = []
        while True:
            try:
                received.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return received

    def close(self):
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    listener = NotifySocket(str(tmp_path / "notify"))
    yield listener
    listener.close()


def watchdog_environ(notify_socket, tmp_path, usec="2000000", pid=PID):
    environ = {"NOTIFY_SOCKET": str(tmp_path / "notify"),
               "WATCHDOG_USEC": usec}
    if pid is not None:
        environ["WATCHDOG_PID"] = str(pid)
    return environ


# the notification helpers -------------------------------------------------

def test_ready_with_status_and_stopping(notify_socket, tmp_path):
    environ = {"NOTIFY_SOCKET": str(tmp_path / "notify")}
    assert systemd.notify_ready(environ, status="building")
    assert systemd.notify_stopping(environ)
    assert systemd.notify_watchdog(environ)
    assert notify_socket.messages() == [
        "READY=1\nSTATUS=building", "STOPPING=1", "WATCHDOG=1"]


def test_abstract_socket_address():
    name = f"piwtwist-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        assert systemd.notify_ready({"NOTIFY_SOCKET": "@" + name})
        assert listener.recv(100) == b"READY=1"


def test_nothing_to_tell_without_systemd(tmp_path):
    assert systemd.notify_ready({}) is False
    assert systemd.notify_watchdog(
        {"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


@pytest.mark.parametrize("environ, pid, interval", [
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "7"}, 7, 1.0),
    ({"WATCHDOG_USEC": "120000000"}, 7, 60.0),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "8"}, 7, None),
    ({"WATCHDOG_PID": "7"}, 7, None),
    ({"WATCHDOG_USEC": "0"}, 7, None),
    ({"WATCHDOG_USEC": "soon"}, 7, None),
])
def test_watchdog_interval(environ, pid, interval):
    environ = {"NOTIFY_SOCKET": "/run/notify", **environ}
    assert systemd.watchdog_interval(environ, pid) == interval


def test_no_watchdog_without_notify_socket():
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "2000000"}, 7) is None


# the watchdog service -----------------------------------------------------

def test_ready_then_pings_at_half_the_limit(notify_socket, tmp_path):
    clock = task.Clock()
    watchdog = systemd.WatchdogService(
        clock, watchdog_environ(notify_socket, tmp_path), pid=PID,
        status="builder pi-7 running")
    watchdog.startService()
    # ready once the reactor turns, not before
    assert notify_socket.messages() == []
    clock.advance(0)
    assert notify_socket.messages() == ["READY=1\nSTATUS=builder pi-7 running"]
    clock.advance(0.99)
    assert notify_socket.messages() == []
    clock.advance(0.01)
    assert notify_socket.messages() == ["WATCHDOG=1"]
    clock.pump([1.0] * 3)
    assert notify_socket.messages() == ["WATCHDOG=1"] * 3
    watchdog.stopService()
    assert notify_socket.messages() == ["STOPPING=1"]
    assert not clock.getDelayedCalls()
    clock.advance(10)
    assert notify_socket.messages() == []


def test_no_pings_for_another_process(notify_socket, tmp_path):
    clock = task.Clock()
    watchdog = systemd.WatchdogService(
        clock, watchdog_environ(notify_socket, tmp_path, pid=PID + 1),
        pid=PID)
    watchdog.startService()
    clock.advance(0)
    assert notify_socket.messages() == ["READY=1"]
    assert not clock.getDelayedCalls()
    clock.advance(10)
    assert notify_socket.messages() == []
    watchdog.stopService()
    assert notify_socket.messages() == ["STOPPING=1"]


def test_ready_without_watchdog(notify_socket, tmp_path):
    clock = task.Clock()
    environ = {"NOTIFY_SOCKET": str(tmp_path / "notify")}
    watchdog = systemd.WatchdogService(clock, environ, pid=PID)
    watchdog.startService()
    clock.advance(0)
    assert notify_socket.messages() == ["READY=1"]
    assert not clock.getDelayedCalls()
    watchdog.stopService()


def test_nothing_without_systemd():
    clock = task.Clock()
    watchdog = systemd.WatchdogService(
        clock, {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(PID)},
        pid=PID)
    watchdog.startService()
    assert not clock.getDelayedCalls()
    clock.advance(10)
    watchdog.stopService()
    assert not clock.getDelayedCalls()


def test_stopped_before_the_reactor_turned(notify_socket, tmp_path):
    clock = task.Clock()
    watchdog = systemd.WatchdogService(
        clock, watchdog_environ(notify_socket, tmp_path), pid=PID)
    watchdog.startService()
    watchdog.stopService()
    assert not clock.getDelayedCalls()
    assert notify_socket.messages() == ["STOPPING=1"]


def test_pings_survive_a_vanished_socket(notify_socket, tmp_path):
    warnings = []

    def observer(event):
        if event.get("log_level") == LogLevel.warn:
            warnings.append(event)

    clock = task.Clock()
    watchdog = systemd.WatchdogService(
        clock, watchdog_environ(notify_socket, tmp_path), pid=PID)
    watchdog.startService()
    clock.advance(0)
    notify_socket.close()
    os.unlink(tmp_path / "notify")
    globalLogPublisher.addObserver(observer)
    try:
        clock.pump([1.0] * 3)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert len(warnings) == 1  # said once, not every second
    assert watchdog._pinger.running
    replacement = NotifySocket(str(tmp_path / "notify"))
    try:
        clock.advance(1.0)
        assert replacement.messages() == ["WATCHDOG=1"]
    finally:
        watchdog.stopService()
        replacement.close()
    assert not clock.getDelayedCalls()


def test_builder_tree_tells_systemd(not_root, secret_file):
    options = builder_tap.Options()
    options.parseOptions(["-c", os.devnull, "--secret-file", str(secret_file),
                          "-L", "pi-7"])
    top = builder_tap.makeService(options)
    children = list(top)
    assert isinstance(children[0], builder_tap.BuilderService)
    # last to start, so first to stop: STOPPING=1 before the build is killed
    assert isinstance(children[-1], systemd.WatchdogService)
    assert children[-1].status == "builder pi-7 running"


def test_pings_only_without_lifecycle(notify_socket, tmp_path):
    clock = task.Clock()
    watchdog = systemd.WatchdogService(
        clock, watchdog_environ(notify_socket, tmp_path), pid=PID,
        lifecycle=False)
    watchdog.startService()
    clock.advance(0)
    assert notify_socket.messages() == []   # its owner says READY=1
    clock.pump([1.0] * 2)
    assert notify_socket.messages() == ["WATCHDOG=1"] * 2
    watchdog.stopService()
    assert notify_socket.messages() == []
    assert not clock.getDelayedCalls()


def test_master_tree_pings_systemd(not_root, secret_file):
    from piwtwist.master.stall_detector import StallDetector
    options = master_tap.Options()
    options.parseOptions(["-c", os.devnull, "--secret-file", str(secret_file),
                          "--build-abi", "cp311", "-o", "/nonexistent"])
    top = master_tap.makeService(options)
    children = list(top)
    # first to start, last to stop; the master says READY=1 itself, once
    # its database answers
    assert isinstance(children[0], systemd.WatchdogService)
    assert children[0].lifecycle is False
    assert any(isinstance(c, StallDetector) for c in children)


# the unit files and the example configuration -----------------------------

def read_unit(name):
    path = UNITS / name
    assert path.is_file(), f"{path} is missing"
    parser = configparser.ConfigParser(
        strict=False, interpolation=None, delimiters=("=",),
        comment_prefixes=("#", ";"), empty_lines_in_values=False)
    parser.optionxform = str  # systemd's keys are case-sensitive
    parser.read(path)
    return parser


def exec_start(unit):
    return shlex.split(unit["Service"]["ExecStart"].lstrip("-@:+!"))


def seconds(value):
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0
    for number, unit in re.findall(r"(\d+)\s*([a-z]*)", value):
        total += int(number) * units[unit]
    return total


def twistd_plugin(command):
    """The twistd plugin a unit's ExecStart runs, checking twistd's own
    options on the way."""
    assert Path(command[0]).name == "twistd"
    assert "-n" in command or "--nodaemon" in command
    plugins = [word for word in command if word.startswith("piwheels-")]
    return plugins[0]


def example_config():
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(UNITS / "piwheels.conf")
    return parser


def test_master_unit():
    unit = read_unit("piwheels-master.service")
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["User"] == "piwheels"
    command = exec_start(unit)
    assert twistd_plugin(command) == "piwheels-master"
    assert "--pidfile=" in command
    assert command[command.index("-c") + 1] == "/etc/piwheels.conf"
    assert service["Restart"] in ("on-failure", "always")
    # a hung reactor stops the pings: systemd kills and restarts it
    assert 0 < seconds(service["WatchdogSec"]) <= 600
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    # the sockets live where every tool can reach them, not in a private /tmp
    assert service["RuntimeDirectory"] == "piwheels"
    assert service["RuntimeDirectoryMode"] == "0750"
    assert service["RuntimeDirectoryPreserve"] == "yes"
    config = example_config()
    for key in ("import-queue", "control-queue", "log-queue"):
        assert config["DEFAULT"][key].startswith("unix:/run/piwheels/")
    output = config["master"]["output-path"]
    assert output in service["ReadWritePaths"].split()


def test_builder_unit():
    unit = read_unit("piwheels-builder.service")
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert 0 < seconds(service["WatchdogSec"]) <= 600
    assert service["Restart"] in ("always", "on-failure")
    assert seconds(service["RestartSec"]) > 0
    assert service["PrivateTmp"] == "yes"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["User"] == "piwheels"
    command = exec_start(unit)
    assert twistd_plugin(command) == "piwheels-builder"
    if "-d" in command:
        build_dir = command[command.index("-d") + 1]
    else:
        build_dir = example_config()["builder"]["build-dir"]
    writable = service.get("ReadWritePaths", "").split()
    for key, root in (("CacheDirectory", "/var/cache"),
                      ("StateDirectory", "/var/lib"),
                      ("RuntimeDirectory", "/run")):
        writable += [f"{root}/{d}" for d in service.get(key, "").split()]
    assert any(build_dir == w or build_dir.startswith(w.rstrip("/") + "/")
               for w in writable), f"{build_dir} is not writable"
    # these cover parts of /proc, and bubblewrap then cannot mount its own
    for key in ("ProtectKernelTunables", "ProtectKernelLogs", "ProtectProc"):
        assert key not in service


def test_sense_unit():
    unit = read_unit("piwheels-sense.service")
    service = unit["Service"]
    assert twistd_plugin(exec_start(unit)) == "piwheels-sense"
    assert service["User"] == "piwheels"
    assert {"input", "i2c", "video"} <= set(
        service["SupplementaryGroups"].split())
    # sense_hat writes its sensor settings under ~/.config/sense_hat
    assert service["Environment"] == "HOME=/var/lib/piwheels-sense"
    assert service["StateDirectory"] == "piwheels-sense"


def test_units_start_plugins_that_exist():
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins
    plugins = {plugin.tapname for plugin in getPlugins(IServiceMaker)}
    for path in UNITS.glob("*.service"):
        assert twistd_plugin(exec_start(read_unit(path.name))) in plugins


def test_units_install_somewhere():
    for path in UNITS.glob("*.service"):
        unit = read_unit(path.name)
        assert unit["Install"]["WantedBy"] == "multi-user.target"
        assert unit["Unit"]["Description"]


def test_example_config_has_real_option_names(not_root, secret_file, tmp_path,
                                              monkeypatch):
    text = (UNITS / "piwheels.conf").read_text()
    config = tmp_path / "piwheels.conf"
    config.write_text(text.replace("/etc/piwheels/secret", str(secret_file)))
    warnings = []

    class Collect:
        def write(self, text):
            warnings.append(text)

    for options_class in (master_tap.Options, builder_tap.Options):
        options = options_class()
        options.warning_stream = Collect()
        options.parseOptions(["-c", str(config)])
    assert warnings == []
    options = master_tap.Options()
    options.parseOptions(["-c", str(config)])
    assert options["import-queue"] == "unix:/run/piwheels/import.sock"
    assert options["build-abi"] == ["cp311", "cp313"]


def test_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart's program exists: use this checkout's
    twistd = Path(sys.executable).with_name("twistd")
    names = sorted(p.name for p in UNITS.glob("*.service"))
    for name in names:
        text = (UNITS / name).read_text()
        (tmp_path / name).write_text(
            re.sub(r"(?m)^(ExecStart=)\S*/twistd ", rf"\g<1>{twistd} ", text))
    result = subprocess.run(
        [analyze, "verify", "--man=no", *(str(tmp_path / n) for n in names)],
        capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    # systemd reports a bad key or value as a warning and exits 0
    about_ours = [line for line in output.splitlines()
                  if str(tmp_path) in line or any(n in line for n in names)]
    assert about_ours == [], output
    if result.returncode != 0:
        pytest.skip(f"systemd-analyze cannot run here: {output.strip()}")
