"""The builder's start-up check of its build frontend: the real pip of this
virtual environment and of one without pip, and fake interpreters that
report an old pip, nonsense, or fail."""

import os
import stat
import subprocess
import sys

import pip
import pytest
from packaging.version import Version
from twisted.python import usage

from piwtwist.builder import frontend
from piwtwist.builder import tap as builder_tap
from piwtwist.builder.frontend import (
    MINIMUM_PIP, BuildFrontendError, check_build_frontend, parse_pip_version)


def fake_python(tmp_path, script):
    """An executable ``<tmp>/venv/bin/python`` that runs the shell
    *script*; it insists on being asked ``-m pip --version`` from /."""
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(
        "#!/bin/sh\n"
        'if [ "$*" != "-m pip --version" ] || [ "$(pwd)" != / ] || '
        '[ "$PIP_CONFIG_FILE" != /dev/null ]; then\n'
        '    echo "unexpected: $* in $(pwd)" >&2; exit 99\nfi\n' + script)
    python.chmod(python.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP
                 | stat.S_IXOTH)
    return str(python)


def pip_says(version):
    return (f'echo "pip {version} from /somewhere/site-packages/pip '
            f'(python 3.11)"\n')


def test_this_environments_pip_is_accepted():
    found = check_build_frontend(sys.executable)
    assert found.version == Version(pip.__version__)
    assert found.python == sys.executable
    assert found.location == os.path.dirname(pip.__file__)
    assert str(found) == f"pip {pip.__version__} (PEP 517, isolated builds)"


def test_a_venv_without_pip_is_refused_with_the_fix(tmp_path):
    venv = tmp_path / "nopip"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip",
                    str(venv)], check=True)
    python = str(venv / "bin" / "python")
    with pytest.raises(BuildFrontendError) as raised:
        check_build_frontend(python)
    assert str(raised.value).startswith(
        f"pip is not installed in {venv}, and builds need it: run "
        f"{python} -m ensurepip")


@pytest.mark.parametrize("old", ["9.0.1", "18.1", "19.0", "19.0.2"])
def test_a_pip_too_old_for_isolated_pep_517_builds_is_refused(tmp_path, old):
    python = fake_python(tmp_path, pip_says(old))
    with pytest.raises(BuildFrontendError) as raised:
        check_build_frontend(python)
    assert str(raised.value) == (
        f"pip {old} in {tmp_path / 'venv'} is too old to build every sdist "
        f"through PEP 517 in isolation (19.0.3 or later is needed): run "
        f"{python} -m pip install --upgrade pip")


@pytest.mark.parametrize("version", ["19.0.3", "23.0.1", "25.3.dev0"])
def test_pip_from_the_floor_up_is_accepted(tmp_path, version):
    found = check_build_frontend(fake_python(tmp_path, pip_says(version)))
    assert found.version == Version(version)
    assert found.location == "/somewhere/site-packages/pip"


def test_the_floor_is_19_0_3():
    assert MINIMUM_PIP == Version("19.0.3")


def test_a_broken_pip_is_reported_with_its_last_words(tmp_path):
    python = fake_python(tmp_path, (
        'echo "Traceback (most recent call last):" >&2\n'
        'echo "ImportError: cannot import name main" >&2\nexit 1\n'))
    with pytest.raises(BuildFrontendError) as raised:
        check_build_frontend(python)
    assert str(raised.value) == (
        f"{python} -m pip --version failed (exit status 1: ImportError: "
        f"cannot import name main); repair pip in {tmp_path / 'venv'} with "
        f"{python} -m ensurepip --upgrade")


def test_nonsense_instead_of_a_version_is_refused(tmp_path):
    python = fake_python(tmp_path, 'echo "hello"\n')
    with pytest.raises(BuildFrontendError, match=r"cannot make out pip's "
                       r"version from .* \(hello\); repair pip"):
        check_build_frontend(python)


def test_a_missing_interpreter_is_refused(tmp_path):
    python = str(tmp_path / "gone" / "bin" / "python")
    with pytest.raises(BuildFrontendError, match=r"^cannot run .*/gone/bin/"
                       r"python, the Python that builds use: No such file"):
        check_build_frontend(python)


def test_a_hanging_interpreter_is_given_up_on(tmp_path):
    python = fake_python(tmp_path, "exec sleep 30\n")
    with pytest.raises(BuildFrontendError,
                       match=r"did not answer within 0.5 seconds"):
        check_build_frontend(python, timeout=0.5)


@pytest.mark.parametrize("output, expected", [
    ("pip 23.0.1 from /usr/lib/python3/dist-packages/pip (python 3.11)\n",
     ("23.0.1", "/usr/lib/python3/dist-packages/pip")),
    ("pip 24.1.dev0 from /a b/pip (python 3.13)", ("24.1.dev0", "/a b/pip")),
    ("pip x.y from /p (python 3.11)", None),
    ("", None),
])
def test_parse_pip_version(output, expected):
    found = parse_pip_version(output)
    if expected is None:
        assert found is None
    else:
        assert found == (Version(expected[0]), expected[1])


def test_environment_of_an_interpreter():
    assert frontend.environment_of(sys.executable) == sys.prefix
    assert frontend.environment_of("/opt/piwtwist/bin/python") == \
        "/opt/piwtwist"


def test_builder_options_carry_the_frontend(not_root, secret_file):
    options = builder_tap.Options()
    options.parseOptions(["-c", os.devnull, "--secret-file",
                          str(secret_file)])
    assert str(options["build-frontend"]) == \
        f"pip {pip.__version__} (PEP 517, isolated builds)"


def test_builder_refuses_to_start_without_a_usable_pip(
        not_root, secret_file, tmp_path, monkeypatch):
    python = fake_python(tmp_path, pip_says("18.1"))
    monkeypatch.setattr(builder_tap, "check_build_frontend",
                        lambda: check_build_frontend(python))
    options = builder_tap.Options()
    with pytest.raises(usage.UsageError, match=r"^pip 18.1 in .* is too old"
                       r" .*: run .* -m pip install --upgrade pip$"):
        options.parseOptions(["-c", os.devnull, "--secret-file",
                              str(secret_file)])
