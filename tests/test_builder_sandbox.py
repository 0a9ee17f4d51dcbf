"""Real builds of generated sdists through the sandbox, from a local file://
index; and the sandbox's edges with a fake "python" that needs no index.

Tests that matter for containment run twice: with bubblewrap (skipped only
when bwrap is not installed) and without it.
"""

import os
import shutil
import signal
import sys
import time
import uuid
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater

from piwtwist.builder import sandbox
from piwtwist.builder.sandbox import (
    BuildOutcome, format_duration, run_build, start_build)
from piwtwist.records import Dependency
from piwtwist.wheels import inspect_wheel
from tests import sdists

BWRAP = shutil.which("bwrap")


@pytest.fixture(params=["bwrap", "plain"])
def bwrap(request):
    """The bwrap argument for start_build: bubblewrap, or none at all."""
    if request.param == "plain":
        return None
    if BWRAP is None:
        pytest.skip("bubblewrap (bwrap) is not installed")
    return BWRAP


@pytest.fixture(scope="module")
def build_requirements():
    try:
        return sdists.shared_build_requirements()
    except Exception as error:  # noqa: BLE001 - any way the download fails
        pytest.skip(f"cannot fetch setuptools and wheel from PyPI for build "
                    f"isolation: {error}")


@pytest.fixture
def build_dir(tmp_path):
    path = tmp_path / "build"
    path.mkdir()
    return path


@pytest.fixture
def index(tmp_path, build_requirements):
    """Make sdists and put them in a local index: ``index(*sdists)`` returns
    the index URL."""
    root = tmp_path / "index"

    def add(*files):
        return sdists.index_url(sdists.make_simple_index(
            root, files, build_requirements))

    return add


async def wait_for(condition, reactor, timeout=30.0, interval=0.05):
    """Poll *condition* without blocking the reactor; fail after
    *timeout*."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting after {timeout}s")
        await deferLater(reactor, interval, lambda: None)


def fake_python(directory, script):
    """A "python" that ignores pip's arguments and runs *script* (sh)."""
    path = directory / "fake-python"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    return str(path)


def assert_cleaned_up(build_dir, outcome):
    left = sorted(p.name for p in build_dir.iterdir())
    if outcome.status:
        assert left == [outcome.output_dir.name]
        assert sorted(p.name for p in outcome.output_dir.iterdir()) == [
            w.name for w in outcome.wheels]
    else:
        assert left == []
        assert outcome.output_dir is None


# -- real builds -------------------------------------------------------------

@pytest.mark.pypi
@pytest_twisted.ensureDeferred
async def test_a_pure_wheel(reactor, tmp_path, build_dir, index, bwrap):
    url = index(sdists.make_pure_sdist(
        tmp_path / "src", "Pure.Package", "1.2", python_requires=">=3.8",
        install_requires=["attrs>=20", "Packaging"]))
    outcome = await run_build(reactor, "pure-package", "1.2", url, build_dir,
                              timeout=120, bwrap=bwrap)
    assert isinstance(outcome, BuildOutcome)
    assert outcome.status, outcome.output
    assert outcome.reason == ""
    assert [w.name for w in outcome.wheels] == [
        "pure_package-1.2-py3-none-any.whl"]
    assert outcome.wheels[0].parent == outcome.output_dir
    assert outcome.output_dir.parent == build_dir.resolve()
    assert timedelta(0) < outcome.duration < timedelta(seconds=120)
    first, command = outcome.output.splitlines()[:2]
    assert first.startswith("# piwtwist: pip wheel pure-package==1.2")
    assert ("sandbox bubblewrap" if bwrap else "sandbox none") in first
    assert command.startswith("$ ")
    assert "-m pip wheel pure-package==1.2 --no-deps --no-cache-dir " \
           f"--no-binary pure-package --index-url {url}" in command
    assert "--use-pep517" in command.split()
    assert "Successfully built pure-package" in outcome.output
    assert outcome.output.endswith(
        "; built pure_package-1.2-py3-none-any.whl\n")
    assert outcome.output.splitlines()[-1].startswith(
        "# exit status 0; duration")
    assert_cleaned_up(build_dir, outcome)

    build_file, dependencies = inspect_wheel(outcome.wheels[0])
    assert (build_file.package_tag, build_file.package_version_tag,
            build_file.py_version_tag, build_file.abi_tag,
            build_file.platform_tag) == ("pure_package", "1.2", "py3",
                                         "none", "any")
    assert build_file.requires_python == ">=3.8"
    assert dependencies == [Dependency("pip", "attrs"),
                            Dependency("pip", "packaging")]


@pytest.mark.pypi
@pytest_twisted.ensureDeferred
async def test_a_c_extension(reactor, tmp_path, build_dir, index):
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("no C compiler installed")
    url = index(sdists.make_c_extension_sdist(tmp_path / "src", "speedy",
                                              "0.3"))
    outcome = await run_build(reactor, "speedy", "0.3", url, build_dir,
                              timeout=300)
    assert outcome.status, outcome.output
    assert len(outcome.wheels) == 1
    build_file, dependencies = inspect_wheel(outcome.wheels[0])
    python_tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert build_file.py_version_tag == python_tag
    assert build_file.abi_tag.startswith(python_tag)
    assert build_file.platform_tag.startswith("linux_")
    if shutil.which("dpkg"):
        assert Dependency("apt", "libc6") in dependencies
        assert [d for d in dependencies if d.tool == "unresolved"] == []
    else:
        assert Dependency("unresolved", "libc.so.6") in dependencies
    # the compiler's output is in the log
    assert "_speedups.c" in outcome.output


@pytest.mark.pypi
@pytest_twisted.ensureDeferred
async def test_home_is_fresh_and_nothing_escapes(reactor, tmp_path, build_dir,
                                                 index, bwrap, monkeypatch):
    monkeypatch.setenv("PIWTWIST_TEST_SECRET", "do-not-leak")
    outside = tmp_path / "outside"
    outside.mkdir()
    url = index(
        sdists.make_pure_sdist(tmp_path / "src", "messy", "1.0",
                               write_home="left-behind.txt",
                               write_paths=[outside / "escaped.txt"],
                               print_environment=True),
        sdists.make_pure_sdist(tmp_path / "src", "tidy", "1.0",
                               require_empty_home=True))
    real_home = Path(os.path.expanduser("~"))
    home_before = set(os.listdir(real_home))

    messy = await run_build(reactor, "messy", "1.0", url, build_dir,
                            timeout=120, bwrap=bwrap)
    assert messy.status, messy.output
    assert_cleaned_up(build_dir, messy)
    assert "PIWTWIST_TEST_SECRET" not in messy.output
    environment = [line.split("=", 1) for line in messy.output.splitlines()
                   if line.strip().startswith("ENV ")]
    assert environment
    home = {name.split()[-1]: value for name, value in environment}["HOME"]
    if bwrap:
        # its own directory at a fixed place: nothing of the host's layout
        assert home == sandbox.INSIDE_HOME
    else:
        assert Path(home).parent.parent == build_dir.resolve()
        assert not Path(home).exists()  # deleted with the sandbox
    if bwrap:
        assert f"COULD NOT WRITE {outside / 'escaped.txt'}" in messy.output
        assert list(outside.iterdir()) == []
    else:
        # without bubblewrap only HOME and TMPDIR are private
        assert f"WROTE {outside / 'escaped.txt'}" in messy.output

    tidy = await run_build(reactor, "tidy", "1.0", url, build_dir,
                           timeout=120, bwrap=bwrap)
    assert tidy.status, tidy.output
    assert "HOME is not empty" not in tidy.output
    assert set(os.listdir(real_home)) == home_before
    assert not (real_home / "left-behind.txt").exists()


@pytest.mark.pypi
@pytest_twisted.ensureDeferred
async def test_a_timeout_kills_the_whole_process_group(reactor, tmp_path,
                                                       build_dir, index,
                                                       bwrap):
    marker = f"piwtwist-sleeper-{uuid.uuid4()}"
    # the build ignores SIGTERM, so only the SIGKILL after the grace ends it
    url = index(sdists.make_pure_sdist(
        tmp_path / "src", "sleepy", "1.0", spawn_sleeper=marker,
        ignore_sigterm=True, sleep=3600))
    build = start_build(reactor, "sleepy", "1.0", url, build_dir, timeout=10,
                        bwrap=bwrap, kill_grace=1)
    await wait_for(lambda: sdists.processes_with_marker(marker) or
                   build.finished, reactor)
    sleepers = sdists.processes_with_marker(marker)
    assert sleepers, "the build never started its sleeper"
    outcome = await build.wait()
    assert not outcome.status
    assert outcome.reason == "timed out after 10s"
    assert timedelta(seconds=10) <= outcome.duration < timedelta(seconds=20)
    assert outcome.output.splitlines()[-1].startswith(
        "# timed out after 10s; duration ")
    assert "started sleeper" in outcome.output
    await wait_for(lambda: not sdists.processes_with_marker(marker), reactor,
                   timeout=5)
    assert_cleaned_up(build_dir, outcome)


@pytest.mark.pypi
@pytest_twisted.ensureDeferred
async def test_stop_kills_a_running_build(reactor, tmp_path, build_dir,
                                          index, bwrap):
    marker = f"piwtwist-sleeper-{uuid.uuid4()}"
    url = index(sdists.make_pure_sdist(tmp_path / "src", "endless", "1.0",
                                       spawn_sleeper=marker, sleep=3600))
    build = start_build(reactor, "endless", "1.0", url, build_dir,
                        timeout=3600, bwrap=bwrap)
    await wait_for(lambda: sdists.processes_with_marker(marker) or
                   build.finished, reactor)
    assert sdists.processes_with_marker(marker)
    waiting = build.wait()
    outcome = await build.stop()
    assert not outcome.status
    assert outcome.reason == "stopped"
    assert outcome.duration < timedelta(seconds=60)
    assert (await waiting) is outcome
    assert (await build.stop()) is outcome  # stopping again is harmless
    await wait_for(lambda: not sdists.processes_with_marker(marker), reactor,
                   timeout=5)
    assert_cleaned_up(build_dir, outcome)


@pytest.mark.pypi
@pytest_twisted.ensureDeferred
async def test_a_failing_build_keeps_its_whole_log(reactor, tmp_path,
                                                   build_dir, index):
    url = index(sdists.make_pure_sdist(
        tmp_path / "src", "broken", "1.0", noise=20000,
        fail="this build fails on purpose"))
    outcome = await run_build(reactor, "broken", "1.0", url, build_dir,
                              timeout=120)
    assert not outcome.status
    assert outcome.reason == "exit status 1"
    assert outcome.wheels == ()
    lines = outcome.output.splitlines()
    assert lines[-1].startswith("# exit status 1; duration ")
    assert "noise line 1" in outcome.output
    assert "noise line 20000" in outcome.output
    assert sum("noise line" in line for line in lines) >= 20000
    assert "this build fails on purpose" in outcome.output
    assert_cleaned_up(build_dir, outcome)


@pytest.mark.pypi
@pytest_twisted.ensureDeferred
async def test_a_memory_limit_fails_a_hungry_build(reactor, tmp_path,
                                                   build_dir, index):
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    url = index(sdists.make_pure_sdist(tmp_path / "src", "hungry", "1.0",
                                       allocate=2 << 30))
    outcome = await run_build(reactor, "hungry", "1.0", url, build_dir,
                              timeout=120, memory_limit=1 << 30)
    assert not outcome.status
    assert outcome.reason == "out of memory?"
    assert "MemoryError" in outcome.output
    assert "memory limit 1.0 GiB" in outcome.output.splitlines()[0]
    assert "prlimit --as=1073741824" in outcome.output.splitlines()[1]
    assert_cleaned_up(build_dir, outcome)


@pytest.mark.pypi
@pytest_twisted.ensureDeferred
async def test_a_tiny_memory_limit_fails_the_build(reactor, tmp_path,
                                                   build_dir, index):
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    url = index(sdists.make_pure_sdist(tmp_path / "src", "small", "1.0"))
    outcome = await run_build(reactor, "small", "1.0", url, build_dir,
                              timeout=120, memory_limit=16 << 20)
    assert not outcome.status
    assert outcome.reason, outcome.output
    assert_cleaned_up(build_dir, outcome)


@pytest.mark.pypi
@pytest_twisted.ensureDeferred
async def test_cancelling_run_build_stops_it(reactor, tmp_path, build_dir,
                                             index):
    marker = f"piwtwist-sleeper-{uuid.uuid4()}"
    url = index(sdists.make_pure_sdist(tmp_path / "src", "cancelled", "1.0",
                                       spawn_sleeper=marker, sleep=3600))
    running = Deferred.fromCoroutine(run_build(
        reactor, "cancelled", "1.0", url, build_dir, timeout=3600))
    await wait_for(lambda: sdists.processes_with_marker(marker) or
                   running.called, reactor)
    running.cancel()
    with pytest.raises(CancelledError):
        await running
    await wait_for(lambda: not sdists.processes_with_marker(marker) and
                   not list(build_dir.iterdir()), reactor, timeout=15)


# -- edges, with a fake python ------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_success_without_a_wheel_is_a_failure(reactor, tmp_path,
                                                    build_dir):
    python = fake_python(tmp_path, "echo pretending to build; exit 0")
    outcome = await run_build(reactor, "nothing", "1.0", "file:///nowhere/",
                              build_dir, timeout=30, python=python)
    assert not outcome.status
    assert outcome.reason == "no wheel produced"
    assert "pretending to build" in outcome.output
    assert outcome.output.splitlines()[-1].startswith(
        "# no wheel produced; duration ")
    assert_cleaned_up(build_dir, outcome)


@pytest_twisted.ensureDeferred
async def test_a_wheel_made_by_anything_is_reported(reactor, tmp_path,
                                                    build_dir):
    # the fake finds --wheel-dir among its arguments
    python = fake_python(tmp_path, (
        'while [ "$1" != --wheel-dir ]; do shift; done\n'
        'touch "$2/x-1.0-py3-none-any.whl"; ln -s /etc/passwd '
        '"$2/y-1.0-py3-none-any.whl"; printf "no newline at the end"'))
    outcome = await run_build(reactor, "x", "1.0", "file:///nowhere/",
                              build_dir, timeout=30, python=python)
    assert outcome.status
    assert [w.name for w in outcome.wheels] == ["x-1.0-py3-none-any.whl"]
    assert "no newline at the end\n# exit status 0;" in outcome.output
    shutil.rmtree(outcome.output_dir)


@pytest_twisted.ensureDeferred
async def test_a_signal_is_reported(reactor, tmp_path, build_dir, bwrap):
    python = fake_python(tmp_path, "kill -SEGV $$")
    outcome = await run_build(reactor, "x", "1.0", "file:///nowhere/",
                              build_dir, timeout=30, python=python,
                              bwrap=bwrap)
    assert not outcome.status
    assert outcome.reason == f"killed by signal {signal.SIGSEGV}"


@pytest_twisted.ensureDeferred
async def test_output_is_captured_in_order_and_nuls_survive(reactor,
                                                            tmp_path,
                                                            build_dir):
    python = fake_python(tmp_path, (
        "echo one; echo two >&2; echo three; printf 'nul\\000byte\\n' >&2; "
        "printf '\\377 bad utf-8\\n'; exit 3"))
    outcome = await run_build(reactor, "x", "1.0", "file:///nowhere/",
                              build_dir, timeout=30, python=python)
    assert outcome.reason == "exit status 3"
    body = outcome.output.splitlines()[2:-1]
    assert body == ["one", "two", "three", "nul\\x00byte",
                    "\ufffd bad utf-8"]


@pytest_twisted.ensureDeferred
async def test_stop_at_once_after_start(reactor, tmp_path, build_dir, bwrap):
    python = fake_python(tmp_path, "sleep 3600")
    build = start_build(reactor, "x", "1.0", "file:///nowhere/", build_dir,
                        timeout=3600, python=python, bwrap=bwrap)
    outcome = await build.stop()
    assert outcome.reason == "stopped"
    assert outcome.duration < timedelta(seconds=30)
    assert_cleaned_up(build_dir, outcome)


@pytest_twisted.ensureDeferred
async def test_sigterm_is_tried_before_sigkill(reactor, tmp_path, build_dir):
    # without bubblewrap (whose monitor dies of SIGTERM and takes the
    # sandbox with it), a build that cleans up on SIGTERM gets to do it
    python = fake_python(tmp_path, (
        "trap 'echo got SIGTERM; exit 143' TERM\n"
        "echo ready\n"
        "while true; do sleep 0.1; done"))
    build = start_build(reactor, "x", "1.0", "file:///nowhere/", build_dir,
                        timeout=3600, python=python, kill_grace=30,
                        bwrap=None)
    log = build_dir.glob("build-*/build.log")
    log_path = next(log)
    await wait_for(lambda: b"ready" in log_path.read_bytes(), reactor)
    outcome = await build.stop("shutting down")
    assert outcome.reason == "shutting down"
    assert "got SIGTERM" in outcome.output
    assert outcome.duration < timedelta(seconds=25)


@pytest_twisted.ensureDeferred
async def test_the_environment_is_clean(reactor, tmp_path, build_dir,
                                        monkeypatch):
    monkeypatch.setenv("PIWTWIST_TEST_SECRET", "do-not-leak")
    python = fake_python(tmp_path,
                         'env | sort; echo "mode $(stat -c %a "$HOME")"')
    outcome = await run_build(reactor, "x", "1.0", "file:///nowhere/",
                              build_dir, timeout=30, python=python)
    names = {line.split("=", 1)[0] for line in outcome.output.splitlines()
             if "=" in line and not line.startswith(("#", "$"))}
    # sh itself adds PWD (and maybe SHLVL, _)
    assert names - {"PWD", "SHLVL", "_", "OLDPWD"} == {
        "PATH", "LANG", "HOME", "TMPDIR", "PIP_CONFIG_FILE",
        "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_NO_INPUT", "PIP_NO_CACHE_DIR",
        "PIP_PROGRESS_BAR", "PIP_ROOT_USER_ACTION"}
    assert f"PIP_CONFIG_FILE={os.devnull}" in outcome.output
    assert "PIWTWIST_TEST_SECRET" not in outcome.output
    # other users cannot look into a build's HOME
    assert "mode 700" in outcome.output


@pytest_twisted.ensureDeferred
async def test_a_read_only_machine_under_bwrap(reactor, tmp_path, build_dir):
    if BWRAP is None:
        pytest.skip("bubblewrap (bwrap) is not installed")
    python = fake_python(tmp_path, (
        f"touch {tmp_path}/escaped || echo read-only outside; "
        'touch "$HOME/ok" "$TMPDIR/ok" && echo writable inside; '
        "echo pid $$"))
    outcome = await run_build(reactor, "x", "1.0", "file:///nowhere/",
                              build_dir, timeout=30, python=python,
                              bwrap=BWRAP)
    assert "read-only outside" in outcome.output
    assert "writable inside" in outcome.output
    assert not (tmp_path / "escaped").exists()
    # a pid namespace of its own
    assert "pid 1\n" in outcome.output or "pid 2\n" in outcome.output


@pytest_twisted.ensureDeferred
async def test_a_build_that_locks_its_own_home_is_still_removed(
        reactor, tmp_path, build_dir):
    python = fake_python(tmp_path, (
        'mkdir -p "$HOME/a/b" && touch "$HOME/a/b/f" && chmod 0 "$HOME/a/b" '
        '"$HOME/a"'))
    outcome = await run_build(reactor, "x", "1.0", "file:///nowhere/",
                              build_dir, timeout=30, python=python)
    assert outcome.reason == "no wheel produced"
    assert list(build_dir.iterdir()) == []


def test_bad_arguments_are_refused(reactor, tmp_path):
    with pytest.raises(ValueError, match="not a valid project name"):
        start_build(reactor, "--index-url=evil", "1.0", "file:///x/",
                    tmp_path, 10)
    with pytest.raises(ValueError, match="not a valid version"):
        start_build(reactor, "foo", "1.0; rm -rf /", "file:///x/",
                    tmp_path, 10)
    assert list(tmp_path.iterdir()) == []


def test_missing_tools_are_named(reactor, tmp_path):
    with pytest.raises(FileNotFoundError, match="setsid"):
        start_build(reactor, "foo", "1.0", "file:///x/", tmp_path, 10,
                    bwrap=None, path=str(tmp_path))


def test_a_missing_bwrap_refuses_the_build(reactor, tmp_path):
    """No silent fallback to no sandbox: the builder must say
    --no-sandbox."""
    build_dir = tmp_path / "build"
    with pytest.raises(sandbox.SandboxUnavailable, match="--no-sandbox"):
        start_build(reactor, "foo", "1.0", "file:///x/", build_dir, 10,
                    path=str(tmp_path))
    assert list(build_dir.iterdir()) == []


@pytest.mark.parametrize("seconds,text", [
    (10800, "3h"), (5400, "1h 30m"), (15, "15s"), (2.5, "2.5s"),
    (90.25, "1m 30.2s"), (0, "0s"), (timedelta(hours=2, seconds=1), "2h 1s"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.pypi
@pytest_twisted.ensureDeferred
async def test_a_wheel_on_the_index_is_not_taken_for_a_build(
        reactor, tmp_path, build_dir, index, bwrap):
    from tests.test_wheel_info import make_wheel
    prebuilt = tmp_path / "prebuilt"
    prebuilt.mkdir()
    wheel = make_wheel(
        prebuilt, "both_ways-1.0-py3-none-any.whl",
        {"both_ways/__init__.py": b"PREBUILT = True\n"},
        "Metadata-Version: 2.1\nName: both-ways\nVersion: 1.0\n")
    url = index(sdists.make_pure_sdist(tmp_path / "src", "both-ways", "1.0"),
                wheel)
    outcome = await run_build(reactor, "both-ways", "1.0", url, build_dir,
                              timeout=120, bwrap=bwrap)
    assert outcome.status, outcome.output
    assert "Successfully built both-ways" in outcome.output
    with zipfile.ZipFile(outcome.wheels[0]) as built:
        assert b"PREBUILT" not in built.read("both_ways/__init__.py")
