"""The master's and builder's command lines, and telling systemd."""

import os
import socket

import pytest
from twisted.python import usage

from piwtwist.builder import tap as builder_tap
from piwtwist.master import systemd
from piwtwist.master import tap as master_tap


def parse(options_class, *args):
    options = options_class()
    options.parseOptions(["-c", os.devnull, *args])
    return options


def test_master_defaults_and_spellings(not_root, secret_file):
    options = parse(master_tap.Options, "--build-abi", "cp311",
                    "--build-abi", "cp313", "--secret-file", str(secret_file),
                    "--slave-queue", "tcp:6000")
    assert options["build-abi"] == ["cp311", "cp313"]
    assert options["builder-queue"] == "tcp:6000"
    assert options["import-queue"] == "unix:/tmp/piw-import"
    assert options["control-queue"] == "unix:/tmp/piw-control"
    assert options["log-queue"] == "unix:/tmp/piw-logger"
    assert options["pypi-simple"] == "https://pypi.org/simple/"
    assert options["platform-aliases"] == {"linux_armv7l": ("linux_armv6l",)}
    assert options["secret"] == b"x" * 40
    assert options["output-path"].is_absolute()
    assert options["db-pool-size"] >= 4


def test_master_pool_size(not_root, secret_file):
    options = parse(master_tap.Options, "--build-abi", "cp311",
                    "--secret-file", str(secret_file), "--db-pool-size", "8")
    service = master_tap.makeService(options)
    assert service.pool.size == 8
    assert service.pool.bulk_limit == 7
    # page writing and statistics use the bulk lane, the rest does not
    assert service.page_writer.db.pool.lane == "bulk"
    assert service.statistics.db.pool.lane == "bulk"
    assert service.hub.db.pool is service.pool


def test_master_reads_its_ini_section(not_root, secret_file, tmp_path):
    config = tmp_path / "piwheels.conf"
    config.write_text(f"[master]\nbuild_abi = cp39 cp311\n"
                      f"secret_file = {secret_file}\n"
                      f"dsn = postgresql:///other\n")
    options = master_tap.Options()
    options.parseOptions(["-c", str(config), "-d", "postgresql:///cli"])
    assert options["build-abi"] == ["cp39", "cp311"]
    assert options["dsn"] == "postgresql:///cli"


@pytest.mark.parametrize("args, message", [
    ([], "at least one --build-abi"),
    (["--build-abi", "none"], "not an ABI"),
    (["--build-abi", "cp311", "--platform-aliases", "junk"],
     "PLATFORM=ALIAS"),
    (["--build-abi", "cp311", "--db-pool-size", "1"], "at least 2"),
])
def test_master_explains_bad_options(not_root, secret_file, args, message):
    with pytest.raises(usage.UsageError, match=message):
        parse(master_tap.Options, "--secret-file", str(secret_file), *args)


def test_master_needs_a_private_secret(not_root, tmp_path):
    with pytest.raises(usage.UsageError, match="cannot read"):
        parse(master_tap.Options, "--build-abi", "cp311",
              "--secret-file", str(tmp_path / "missing"))
    open_secret = tmp_path / "open"
    open_secret.write_text("y" * 40)
    os.chmod(open_secret, 0o644)
    with pytest.raises(usage.UsageError, match="readable by every user"):
        parse(master_tap.Options, "--build-abi", "cp311",
              "--secret-file", str(open_secret))
    short = tmp_path / "short"
    short.write_text("abc")
    os.chmod(short, 0o600)
    with pytest.raises(usage.UsageError, match="shorter than"):
        parse(master_tap.Options, "--build-abi", "cp311",
              "--secret-file", str(short))


def test_master_and_builder_refuse_root(monkeypatch, secret_file):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(usage.UsageError, match="refusing to run as root"):
        parse(master_tap.Options, "--build-abi", "cp311",
              "--secret-file", str(secret_file))
    with pytest.raises(usage.UsageError, match="refusing to run as root"):
        parse(builder_tap.Options, "--secret-file", str(secret_file))


def test_builder_options(not_root, secret_file):
    options = parse(builder_tap.Options, "-m", "master.example:6000",
                    "-t", "1h30m", "-d", "/srv/build", "-L", "pi-7",
                    "--memory-limit", "2G", "--secret-file", str(secret_file))
    assert options["endpoint"] == "tcp:host=master.example:port=6000"
    assert options["timeout"] == 5400.0
    assert options["busy-timeout"] == 300.0
    assert options["memory-limit"] == 2 * 1024 ** 3
    assert (options["build-dir"], options["label"]) == ("/srv/build", "pi-7")
    assert parse(builder_tap.Options, "--secret-file",
                 str(secret_file))["timeout"] == 3 * 3600.0


@pytest.mark.parametrize("master, endpoint", [
    ("pi-master", "tcp:host=pi-master:port=5555"),
    ("[::1]:7000", r"tcp:host=\:\:1:port=7000"),
    ("tls:pi-master:5555", "tls:pi-master:5555"),
])
def test_master_addresses(master, endpoint):
    assert builder_tap.master_endpoint_description(master) == endpoint


@pytest.mark.parametrize("bad", ["", "host:port", "host:70000"])
def test_bad_master_address(bad):
    with pytest.raises(ValueError):
        builder_tap.master_endpoint_description(bad)


@pytest.mark.parametrize("text, seconds", [
    ("3h", 10800), ("90m", 5400), ("45s", 45), ("45", 45), ("1d", 86400),
])
def test_durations(text, seconds):
    assert builder_tap.parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "0", "3x"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        builder_tap.parse_duration(bad)


def test_builder_explains_bad_timeout(not_root, secret_file):
    with pytest.raises(usage.UsageError, match="not a duration"):
        parse(builder_tap.Options, "-t", "forever",
              "--secret-file", str(secret_file))


def test_systemd_hears_ready_and_stopping(tmp_path):
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        environ = {"NOTIFY_SOCKET": address}
        assert systemd.notify_ready(environ)
        assert listener.recv(100).startswith(b"READY=1")
        assert systemd.notify_stopping(environ)
        assert listener.recv(100) == b"STOPPING=1"
    assert systemd.notify_ready({}) is False
    assert systemd.notify_ready({"NOTIFY_SOCKET": str(tmp_path / "gone")}) \
        is False
