"""``make demo``: the pieces on their own, then the whole demo as a user
runs it (a subprocess, services as the ``piwheels`` user when root), first
against a local package index and a fake PyPI, then against the real one."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import threads

from piwtwist import demo
from piwtwist.devcluster import PrivateCluster
from tests import sdists
from tests.e2e import free_port, serve_directory, wait_for
from tests.fake_pypi import FakePyPI

INSTALL_LINE = "pip install --index-url"


# the pieces -----------------------------------------------------------------

def test_the_shipped_list_pins_pure_and_compiled_packages():
    pairs = demo.read_packages(demo.DEFAULT_PACKAGES)
    names = {name for name, _ in pairs}
    assert len(pairs) >= 4
    assert {"six", "markupsafe"} <= names


def test_package_lists_are_pinned_lines(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("# a comment\n\nsix==1.17.0  # trailing\n"
                    "MarkupSafe == 3.0.2\nsix==1.17.0\n")
    assert demo.read_packages(good) == [("six", "1.17.0"),
                                        ("MarkupSafe", "3.0.2")]
    loose = tmp_path / "loose.txt"
    loose.write_text("six\n")
    with pytest.raises(demo.DemoError, match="line 1: expected NAME==VERSION"):
        demo.read_packages(loose)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(demo.DemoError, match="lists no packages"):
        demo.read_packages(empty)
    with pytest.raises(demo.DemoError, match="cannot read"):
        demo.read_packages(tmp_path / "missing.txt")


def test_release_states_wait_for_the_index_page():
    pairs = [("Six", "1.17"), ("docopt", "0.6.2"), ("broken", "1.0"),
             ("binary", "2.0"), ("new", "1.0"), ("fresh", "1.0")]
    rows = [
        ("six", "1.17.0", "", True, "six-1.17.0-py3-none-any.whl"),
        ("docopt", "0.6.2", "", True, "docopt-0.6.2-py3-none-any.whl"),
        ("broken", "1.0", "", False, None),
        ("binary", "2.0", "binary only", None, None),
        ("fresh", "1.0", "", None, None),
    ]
    published = {("six", "six-1.17.0-py3-none-any.whl")}
    states = demo.release_states(
        rows, lambda package, filename: (package, filename) in published,
        pairs)
    assert states == {
        ("Six", "1.17"): demo.BUILT,
        ("docopt", "0.6.2"): demo.PENDING,  # built, not in the index yet
        ("broken", "1.0"): demo.FAILED,
        ("binary", "2.0"): demo.SKIPPED,
        ("new", "1.0"): demo.PENDING,  # not added yet
        ("fresh", "1.0"): demo.PENDING,  # queued
    }
    assert demo.progress_line(states) == \
        "[##########----------] 1/6 built, 1 failed, 1 skipped"


def test_progress_is_redrawn_on_a_terminal_and_listed_elsewhere(tmp_path):
    class Terminal(list):
        def write(self, text):
            self.append(text)

        def flush(self):
            pass

        def isatty(self):
            return True

    class Pipe(Terminal):
        def isatty(self):
            return False

    for stream, expected in (
            (Terminal(), ["\r[a\033[K", "\r\033[K", "\r[a\033[K",
                          "\r[b\033[K", "\n"]),
            (Pipe(), ["[a\n", "[b\n"])):
        progress = demo.Progress(stream)
        progress.show("[a")
        progress.show("[a")
        progress.clear()  # a message goes here, then the line is back
        progress.show("[a")
        progress.show("[b")
        progress.end()
        progress.end()
        assert stream == expected


def test_a_taken_port_is_noticed():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert demo.port_in_use(port)
    assert not demo.port_in_use(free_port())


def test_a_taken_port_stops_the_demo_before_it_starts_anything(tmp_path):
    os.chmod(tmp_path, 0o755)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "piwtwist.demo", "--dir",
             str(tmp_path / "demo"), "--http-port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=60)
    assert result.returncode == 1
    assert f"port {port} of 127.0.0.1 is in use" in result.stdout
    assert "Traceback" not in result.stdout
    assert not (tmp_path / "demo").exists()


# the whole demo -------------------------------------------------------------

class DemoRun:
    """``python -m piwtwist.demo`` as a subprocess whose output goes to a
    file (the test's reactor keeps serving the package index meanwhile)."""

    def __init__(self, root, *args):
        self.out_path = root / f"demo-{time.monotonic_ns()}.out"
        self.started = time.monotonic()
        with open(self.out_path, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "piwtwist.demo", *args],
                cwd=root, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT)

    def output(self):
        return self.out_path.read_text(errors="replace")

    def install_line(self):
        for line in self.output().splitlines():
            if INSTALL_LINE in line:
                return line.strip()
        return None

    async def wait(self, reactor, condition, timeout, what):
        def ready():
            if condition():
                return True
            if self.process.poll() is not None:
                code = self.process.returncode
                raise AssertionError(f"the demo exited ({code}) before "
                                     f"{what}:\n{self.output()}")
            return False
        await wait_for(reactor, ready, timeout, f"{what}:\n{self.output()}")

    async def exited(self, reactor, timeout):
        await wait_for(reactor, lambda: self.process.poll() is not None,
                       timeout, f"the demo to exit:\n{self.output()}")
        return self.process.returncode

    def kill(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def demo_root():
    """A folder the service user can reach (tmp_path's parents are
    private to root)."""
    root = Path(tempfile.mkdtemp(prefix="piwtwist-demo-"))
    os.chmod(root, 0o755)
    yield root
    cluster_dir = root / "demo" / "postgres"
    if (cluster_dir / "data").exists():
        PrivateCluster(cluster_dir).stop(mode="immediate")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def local_pypi(reactor, demo_root):
    """Two releases (one pure, one with a C extension) on a fake PyPI whose
    XML-RPC API refuses everyone, as pypi.org's does from some networks;
    their sdists (and setuptools) in a local index served over HTTP."""
    sdist_dir = demo_root / "sdists"
    files = [sdists.make_pure_sdist(sdist_dir, "demo-pure", "1.0"),
             sdists.make_c_extension_sdist(sdist_dir, "demo-speedups", "1.0")]
    index = sdists.make_simple_index(
        demo_root / "index", files, sdists.shared_build_requirements())
    index_url, index_port = serve_directory(reactor, index)
    fake = FakePyPI(reactor)
    fake.release("demo-pure", "1.0", files=("sdist",))
    fake.release("demo-speedups", "1.0", files=("sdist",))
    fake.block("xmlrpc", 405)
    fake.listen()
    packages = demo_root / "packages.txt"
    packages.write_text("# the test's list\ndemo-pure==1.0\n"
                        "Demo_Speedups==1.0\n")
    yield {"args": ["--packages", str(packages),
                    "--pypi-simple", f"{index_url}/",
                    "--pypi-json", f"{fake.url}/pypi",
                    "--pypi-xmlrpc", f"{fake.url}/pypi"],
           "fake": fake}
    index_port.stopListening()
    fake.port.stopListening()


async def pip_install(install_line, target):
    """Run the demo's own ``pip install`` line (wheels only, none of this
    machine's pip configuration) into *target*."""
    words = install_line.split()
    assert words[:2] == ["pip", "install"], install_line
    command = [sys.executable, "-m", "pip", *words[1:2], "--isolated",
               "--quiet", "--only-binary=:all:", "--no-deps",
               "--root-user-action=ignore", "--disable-pip-version-check",
               "--target", str(target), *words[2:]]
    return await threads.deferToThread(
        subprocess.run, command, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=300)


def imports(target, code):
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(target)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def assert_reads_well(output):
    assert "Traceback" not in output, output
    assert len(output.splitlines()) < 30, output


@pytest_twisted.ensureDeferred
async def test_demo_builds_the_list_serves_it_and_stops_on_ctrl_c(
        reactor, demo_root, local_pypi):
    port = free_port()
    args = ["--dir", str(demo_root / "demo"), "--http-port", str(port),
            *local_pypi["args"]]
    first = DemoRun(demo_root, *args)
    try:
        await first.wait(reactor, first.install_line, 280,
                         "the list to be built")
        await first.wait(reactor, lambda: "Serving until Ctrl+C" in
                         first.output(), 30, "it to serve")
        line = first.install_line()
        assert line == (f"pip install --index-url http://127.0.0.1:{port}"
                        f"/simple/ demo-pure Demo_Speedups")
        target = demo_root / "installed"
        installed = await pip_install(line, target)
        assert installed.returncode == 0, installed.stdout
        check = imports(target, "import demo_pure, demo_speedups._speedups "
                                "as s; print(s.length('four'))")
        assert check.stdout.strip() == "4", check.stdout
        assert list(target.glob("demo_speedups/_speedups*.so"))

        first.process.send_signal(signal.SIGINT)
        assert await first.exited(reactor, 90) == 0, first.output()
    finally:
        first.kill()
    said = first.output()
    assert_reads_well(said)
    assert said.count("XML-RPC API is unreachable") == 1, said
    assert "adding 2 packages from packages.txt" in said
    assert "[####################] 2/2 built, 0 failed" in said
    assert said.rstrip().endswith("stopped; data kept in demo/ for the "
                                  "next run."), said
    assert not PrivateCluster(demo_root / "demo" / "postgres").running()
    assert not demo.port_in_use(port)

    # again: everything is reused and counts as built at once
    second = DemoRun(demo_root, *args, "--exit-when-built")
    try:
        assert await second.exited(reactor, 120) == 0, second.output()
    finally:
        second.kill()
    said = second.output()
    assert_reads_well(said)
    assert "adding" not in said
    assert "2/2 built" in said and line in said
    assert "Serving until Ctrl+C" not in said
    assert said.rstrip().endswith("for the next run."), said
    assert not PrivateCluster(demo_root / "demo" / "postgres").running()


@pytest_twisted.ensureDeferred
async def test_a_service_that_dies_is_reported_with_its_log(
        reactor, demo_root, local_pypi):
    run = DemoRun(demo_root, "--dir", str(demo_root / "demo"),
                  "--http-port", str(free_port()), *local_pypi["args"])
    try:
        master_log = demo_root / "demo" / "master.log"
        await run.wait(reactor, lambda: master_log.exists() and
                       "(demo, " in master_log.read_text(), 120,
                       "the builder to connect")
        pids = json.loads(
            (demo_root / "demo" / "run" / "pids.json").read_text())
        builder_pid = pids["builder"]
        os.kill(builder_pid, signal.SIGKILL)
        assert await run.exited(reactor, 90) == 1
    finally:
        run.kill()
    said = run.output()
    assert "the builder stopped unexpectedly (killed by signal 9); the " \
        "last lines of its log (demo/builder.log):" in said, said
    assert "Traceback" not in said
    assert not PrivateCluster(demo_root / "demo" / "postgres").running()


@pytest_twisted.ensureDeferred
async def test_services_left_by_a_killed_demo_are_stopped_next_time(
        reactor, demo_root, local_pypi):
    args = ["--dir", str(demo_root / "demo"), "--http-port",
            str(free_port()), *local_pypi["args"]]
    killed = DemoRun(demo_root, *args)
    try:
        await killed.wait(reactor, lambda: "Serving until Ctrl+C" in
                          killed.output(), 280, "the list to be built")
        pids = json.loads(
            (demo_root / "demo" / "run" / "pids.json").read_text())
        killed.process.kill()
        killed.process.wait()
        assert all(Path(f"/proc/{pid}").exists() for pid in pids.values())
    finally:
        killed.kill()
    again = DemoRun(demo_root, *args, "--exit-when-built")
    try:
        assert await again.exited(reactor, 120) == 0, again.output()
    finally:
        again.kill()
    said = again.output()
    assert (f"stopped what an earlier run left running: builder (pid "
            f"{pids['builder']}), master (pid {pids['master']})") in said
    assert "2/2 built" in said
    assert_reads_well(said)
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists()


def pypi_reachable():
    try:
        with urllib.request.urlopen("https://pypi.org/simple/six/",
                                    timeout=10) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.pypi
@pytest.mark.timeout(900)
@pytest_twisted.ensureDeferred
async def test_demo_builds_the_shipped_list_from_pypi(reactor, demo_root):
    if not pypi_reachable():
        pytest.skip("https://pypi.org/simple/ cannot be reached")
    port = free_port()
    run = DemoRun(demo_root, "--dir", str(demo_root / "demo"),
                  "--http-port", str(port))
    try:
        await run.wait(reactor, lambda: "Serving until Ctrl+C" in
                       run.output(), 800, "the list to be built")
        line = run.install_line()
        installed = await pip_install(line, demo_root / "installed")
        assert installed.returncode == 0, installed.stdout
        run.process.send_signal(signal.SIGINT)
        assert await run.exited(reactor, 90) == 0
    finally:
        run.kill()
    said = run.output()
    assert_reads_well(said)
    assert "all built" in said, said
    names = [name for name, _ in demo.read_packages(demo.DEFAULT_PACKAGES)]
    assert line.split()[4:] == names
    check = imports(demo_root / "installed",
                    "import six, markupsafe, markupsafe._speedups")
    assert check.returncode == 0, check.stdout
