"""Real processes for end-to-end tests: a master and builders started with
twistd, as an ordinary user (the services refuse root), a package index and
the output tree served over HTTP, and waiting on the database."""

import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import task
from twisted.web import server, static

from piwtwist.demo import free_port, local_abi
from piwtwist.service_user import as_user, own

SERVICE_USER = "piwheels"
TWISTD = Path(sys.executable).with_name("twistd")


def service_user():
    """Who the services run as: ourselves, or the piwheels user as root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group",
                        "--home-dir", "/nonexistent", "--no-create-home",
                        "--shell", "/usr/sbin/nologin", SERVICE_USER],
                       check=True)
    probe = subprocess.run([str(TWISTD), "--version"], cwd="/",
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, **as_user(SERVICE_USER))
    if probe.returncode != 0:
        raise RuntimeError(
            f"the {SERVICE_USER} user cannot run {TWISTD} (is the checkout "
            f"readable by other users?): {probe.stdout}")
    return SERVICE_USER


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def serve_directory(reactor, root):
    """Serve *root* over HTTP on loopback; returns (url, port object)."""
    port = reactor.listenTCP(0, server.Site(static.File(str(root))),
                             interface="127.0.0.1")
    return f"http://127.0.0.1:{port.getHost().port}", port


async def wait_for(reactor, condition, timeout, what, interval=0.5):
    """Poll *condition* until it returns something true."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for "
                                 f"{what}")
        await task.deferLater(reactor, interval, lambda: None)


class Service:
    """One twistd process, its log and its exit."""

    def __init__(self, name, args, directory, user, twistd=TWISTD):
        self.name = name
        self.directory = Path(directory)
        self.log_path = self.directory / f"{name}.log"
        command = [str(twistd), "-n", "--pidfile=",
                   f"--logfile={self.log_path}", *args]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "HOME": str(self.directory), "LANG": "C.UTF-8"}
        self.process = subprocess.Popen(
            command, cwd=self.directory, env=env, start_new_session=True,
            **as_user(user),
            stdout=open(self.directory / f"{name}.out", "wb"),
            stderr=subprocess.STDOUT)

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def output(self):
        return (self.directory / f"{self.name}.out").read_text(
            errors="replace")

    def signal(self, number):
        try:
            os.killpg(self.process.pid, number)
        except ProcessLookupError:
            pass

    def stop(self, timeout=30):
        """SIGTERM, wait; True when the service shut down cleanly (twistd
        reports a SIGTERM shutdown by exiting with that signal)."""
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait()
        return (self.process.returncode in (0, -signal.SIGTERM)
                and "Server Shut Down." in self.log())

    def kill(self):
        self.signal(signal.SIGKILL)
        self.process.wait()


class Deployment:
    """A master, its builders, and the places they share."""

    def __init__(self, database, index_url, abi=None):
        self.user = service_user()
        self.root = Path(tempfile.mkdtemp(prefix="piwtwist-e2e-"))
        os.chmod(self.root, 0o755)
        self.output = self.root / "www"
        self.output.mkdir()
        self.secret = self.root / "secret"
        self.secret.write_text(os.urandom(24).hex() + "\n")
        os.chmod(self.secret, 0o640)
        own(self.root, self.user)
        self.database = database
        self.index_url = index_url
        self.abi = abi or local_abi()
        self.port = free_port()
        self.import_socket = self.root / "master" / "import.sock"
        self.control_socket = self.root / "master" / "control.sock"
        self.services = []

    def start_master(self, *extra, dev_mode=True, follow_pypi=False):
        """The master; without *dev_mode* it rewrites every page at
        start, as in production; with *follow_pypi* it follows the
        journal at its ``--pypi-xmlrpc`` (give one in *extra*)."""
        directory = self.root / "master"
        directory.mkdir(exist_ok=True)
        own(directory, self.user)
        master = Service("master", [
            "piwheels-master", "-c", os.devnull,
            "-d", self.database.master_dsn, "-o", str(self.output),
            "--build-abi", self.abi,
            "--builder-queue", f"tcp:{self.port}:interface=127.0.0.1",
            "--pypi-simple", self.index_url,
            "--secret-file", str(self.secret),
            *([] if follow_pypi else ["--no-pypi-follow"]),
            "--import-queue", f"unix:{self.import_socket}",
            "--control-queue", f"unix:{self.control_socket}",
            # its own (a later --log-queue in *extra* wins): the default
            # /tmp/piw-logger is locked by any other master running here
            "--log-queue", f"unix:{directory / 'logger.sock'}",
            *(["--dev-mode"] if dev_mode else []), *extra,
        ], directory, self.user)
        self.services.append(master)
        return master

    def start_builder(self, label, *extra, twistd=TWISTD):
        """A builder; *twistd* may be another installation's."""
        directory = self.root / label
        directory.mkdir(exist_ok=True)
        own(directory, self.user)
        builder = Service(label, [
            "piwheels-builder", "-c", os.devnull,
            "-m", f"127.0.0.1:{self.port}", "-d", str(directory / "build"),
            "-L", label, "--secret-file", str(self.secret), *extra,
        ], directory, self.user, twistd)
        self.services.append(builder)
        return builder

    def builds(self):
        return self.database.sql(
            "SELECT b.package, b.version, b.status, b.builder_label, "
            "b.reason FROM builds b ORDER BY b.build_id")

    def close(self):
        for service in self.services:
            if service.process.poll() is None:
                service.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def logs(self):
        """Every service's log, for assertion messages."""
        return "\n".join(f"===== {s.name}\n{s.output()}\n{s.log()}"
                         for s in self.services)


def serve_slow_release(tmp_path, reactor, seconds):
    """An index holding piw-slow 1.0, whose build sleeps *seconds*, served
    over HTTP: its URL and the listening port."""
    from tests import sdists
    root = tmp_path / "index"
    sdists.make_simple_index(root, [sdists.make_pure_sdist(
        tmp_path / "sdists", "piw-slow", "1.0", sleep=seconds)],
        sdists.shared_build_requirements())
    url, port = serve_directory(reactor, root)
    return url + "/", port
