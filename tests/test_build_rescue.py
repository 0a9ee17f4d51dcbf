"""Rescue (issue 16): a build that fails in a way with a known, safe
remedy is built once more with it, through the real sandbox, and its log
shows both attempts."""

import shutil
import subprocess
import venv

import pytest
import pytest_twisted

from piwtwist import failures
from piwtwist.builder import sandbox
from piwtwist.builder.sandbox import run_build, run_build_with_rescue
from tests import rescue_sdists, sdists

BWRAP = shutil.which("bwrap")


@pytest.fixture(params=["bwrap", "plain"])
def bwrap(request):
    if request.param == "plain":
        return None
    if BWRAP is None:
        pytest.skip("bubblewrap (bwrap) is not installed")
    return BWRAP


@pytest.fixture(scope="module")
def pip23(tmp_path_factory):
    """A Python whose pip is 23 (constraints reach the build environment
    through PIP_CONSTRAINT there, through PIP_BUILD_CONSTRAINT in 26)."""
    directory = tmp_path_factory.mktemp("pip23")
    venv.create(directory, with_pip=True)
    python = str(directory / "bin" / "python")
    installed = subprocess.run(
        [python, "-m", "pip", "install", "-q", "pip==23.3.2",
         "--disable-pip-version-check"], capture_output=True, text=True)
    if installed.returncode:
        pytest.skip(f"cannot install pip 23: {installed.stderr[-300:]}")
    return python


def _pkg_resources_index(tmp_path):
    sdist = rescue_sdists.make_pkg_resources_sdist(tmp_path / "sdists",
                                                   "oldsetup", "1.0")
    root = rescue_sdists.make_setuptools_index(
        tmp_path / "index", [sdist], tmp_path / "wheels")
    return sdists.index_url(root)


async def _rescued(reactor, tmp_path, bwrap, url, package, python=None):
    build_dir = tmp_path / "build"
    options = {"python": python} if python else {}
    return await run_build_with_rescue(
        reactor, package, "1.0", url, build_dir, timeout=120, bwrap=bwrap,
        **options)


@pytest_twisted.ensureDeferred
async def test_pkg_resources_is_rescued_with_a_build_constraint(
        reactor, tmp_path, bwrap):
    url = _pkg_resources_index(tmp_path)
    outcome = await _rescued(reactor, tmp_path, bwrap, url, "oldsetup")
    assert outcome.status, outcome.output
    assert outcome.remedy == "setuptools<82"
    assert [w.name for w in outcome.wheels] == [
        "oldsetup-1.0-py3-none-any.whl"]
    first, second = outcome.output.split(
        failures.retry_marker("setuptools<82"))
    assert "No module named 'pkg_resources'" in first
    assert "(the first attempt failed: pkg-resources)" in second
    assert "# piwtwist: with setuptools<82" in second
    assert "pkg_resources from" in second
    shutil.rmtree(outcome.output_dir)


@pytest_twisted.ensureDeferred
async def test_cython3_is_rescued_with_a_build_constraint(
        reactor, tmp_path, bwrap):
    sdist = rescue_sdists.make_cython3_sdist(tmp_path / "sdists",
                                             "oldyaml", "1.0")
    root = rescue_sdists.make_setuptools_index(
        tmp_path / "index", [sdist], tmp_path / "wheels")
    outcome = await _rescued(reactor, tmp_path, bwrap,
                             sdists.index_url(root), "oldyaml")
    assert outcome.status, outcome.output
    assert outcome.remedy == "Cython<3"
    first, second = outcome.output.split(failures.retry_marker("Cython<3"))
    assert "Cython 3.0.0" in first
    assert "no attribute 'cython_sources'" in first
    assert "(the first attempt failed: build-dependency)" in second
    assert "Cython 0.29.37" in second
    shutil.rmtree(outcome.output_dir)


@pytest_twisted.ensureDeferred
async def test_pkg_resources_rescue_with_pip_23(reactor, tmp_path, pip23):
    url = _pkg_resources_index(tmp_path)
    outcome = await _rescued(reactor, tmp_path, None, url, "oldsetup",
                             python=pip23)
    assert outcome.status, outcome.output
    assert outcome.remedy == "setuptools<82"
    shutil.rmtree(outcome.output_dir)


@pytest_twisted.ensureDeferred
async def test_without_the_remedy_it_fails(reactor, tmp_path):
    url = _pkg_resources_index(tmp_path)
    outcome = await run_build(reactor, "oldsetup", "1.0", url,
                              tmp_path / "build", 120, bwrap=None)
    assert not outcome.status
    assert failures.classify(outcome.output, outcome.reason) \
        .failure_class == "pkg-resources"


@pytest_twisted.ensureDeferred
async def test_gcc14_errors_are_rescued_with_relaxing_flags(
        reactor, tmp_path, bwrap):
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    sdist = rescue_sdists.make_gcc14_sdist(tmp_path / "sdists", "oldc", "1.0")
    url = sdists.index_url(sdists.make_simple_index(tmp_path / "index",
                                                    [sdist]))
    outcome = await _rescued(reactor, tmp_path, bwrap, url, "oldc")
    assert outcome.status, outcome.output
    assert outcome.remedy == ("CFLAGS=-Wno-error=incompatible-pointer-types "
                              "-Wno-error=int-conversion")
    first, second = outcome.output.split(failures.retry_marker(
        outcome.remedy))
    assert "[-Werror=incompatible-pointer-types]" in first
    assert "-Wno-error=int-conversion old.c" in second
    shutil.rmtree(outcome.output_dir)


@pytest_twisted.ensureDeferred
async def test_a_failure_without_remedy_is_not_retried(reactor, tmp_path):
    sdist = sdists.make_pure_sdist(tmp_path / "sdists", "broken", "1.0",
                                   fail="nothing to be done")
    url = sdists.index_url(sdists.make_simple_index(tmp_path / "index",
                                                    [sdist]))
    outcome = await run_build_with_rescue(reactor, "broken", "1.0", url,
                                          tmp_path / "build", 60, bwrap=None)
    assert not outcome.status
    assert outcome.remedy == ""
    assert failures.retry_marker("") not in outcome.output
    assert outcome.failure_class


@pytest_twisted.ensureDeferred
async def test_a_retry_that_fails_again_is_classified_by_the_retry(
        reactor, tmp_path, monkeypatch):
    # the remedy does not help: the constraint cannot be met
    monkeypatch.setattr(failures, "SETUPTOOLS_CONSTRAINT", "setuptools<80")
    url = _pkg_resources_index(tmp_path)
    outcome = await _rescued(reactor, tmp_path, None, url, "oldsetup")
    assert not outcome.status
    assert outcome.remedy == "setuptools<80"
    assert outcome.failure_class == "build-dependency"
    assert failures.classify(outcome.output, outcome.reason) \
        .failure_class == "build-dependency"


@pytest_twisted.ensureDeferred
async def test_no_retry_without_time_left(reactor, tmp_path, monkeypatch):
    from piwtwist.builder import sandbox
    monkeypatch.setattr(sandbox, "MIN_RETRY_SECONDS", 1000.0)
    url = _pkg_resources_index(tmp_path)
    outcome = await _rescued(reactor, tmp_path, None, url, "oldsetup")
    assert not outcome.status
    assert outcome.remedy == ""
    assert outcome.failure_class == "pkg-resources"


def _honest_index(tmp_path):
    """The URL of an index with one release that builds."""
    sdist = rescue_sdists._sdist(tmp_path / "sdists", "honest", "1.0",
                                 'say("built honestly")')
    return sdists.index_url(rescue_sdists.make_setuptools_index(
        tmp_path / "index", [sdist], tmp_path / "wheels"))


@pytest_twisted.ensureDeferred
async def test_a_sandbox_refused_for_a_moment_is_started_again(
        reactor, tmp_path, monkeypatch):
    """Right after a fork bomb the kernel may refuse bubblewrap its
    namespaces (EAGAIN: the bomb's processes still count against the
    user's limit): the build starts again instead of failing an honest
    release."""
    if BWRAP is None:
        pytest.skip("bubblewrap (bwrap) is not installed")
    refused = tmp_path / "refused"
    fake = tmp_path / "bwrap"
    fake.write_text(
        f"#!/bin/sh\n"
        f"if [ ! -e {refused}2 ]; then\n"
        f"  if [ -e {refused}1 ]; then touch {refused}2;"
        f" else touch {refused}1; fi\n"
        f"  echo 'bwrap: Creating new namespace failed: Resource "
        f"temporarily unavailable' >&2; exit 1\n"
        f"fi\n"
        f"exec {BWRAP} \"$@\"\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sandbox, "SANDBOX_START_WAIT", 0.1)
    outcome = await _rescued(reactor, tmp_path, str(fake),
                             _honest_index(tmp_path), "honest")
    assert outcome.status, outcome.output
    assert outcome.output.count("# piwtwist: the sandbox could not start "
                                "(Creating new namespace failed") == 2
    assert "starting it again in 0.2s" in outcome.output
    assert "built honestly" in outcome.output
    shutil.rmtree(outcome.output_dir)


@pytest_twisted.ensureDeferred
async def test_a_sandbox_refused_for_good_is_a_failed_build(
        reactor, tmp_path, monkeypatch):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: Creating new namespace "
                    "failed: Resource temporarily unavailable' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sandbox, "SANDBOX_START_WAIT", 0.01)
    outcome = await _rescued(reactor, tmp_path, str(fake),
                             _honest_index(tmp_path), "honest")
    assert not outcome.status
    assert outcome.output.count("the sandbox could not start") == \
        sandbox.SANDBOX_START_TRIES - 1
