"""docs/deployment.md followed literally, on Debian's own Python: a fresh
``python3 -m venv`` (its bundled pip, nothing upgraded, no ``wheel``),
``pip install`` of the checkout into it, and a builder started from that
venv's ``twistd`` against a real master. The builder builds old, legacy
``setup.py``-only sdists (no ``pyproject.toml``) from the real PyPI, one of
them a C extension, and a second fresh venv installs the wheels from the
master's index and imports them.

This is the installation in which every such build once failed with
"invalid command 'bdist_wheel'" (issue 10): the test suite's own venv has
``wheel`` installed and never saw it.
"""

import os
import re
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted

from piwtwist.demo import free_port
from tests.e2e import Deployment, wait_for

CHECKOUT = Path(__file__).resolve().parent.parent
DEBIAN_PYTHON = "/usr/bin/python3"
PYPI_SIMPLE = "https://pypi.org/simple/"

# Old releases with only an sdist and no pyproject.toml, whose setup.py
# must run the way it expects to: termcolor imports itself from the source
# tree and uses distutils, docopt uses setuptools, and crcmod compiles a C
# extension (with distutils; it silently falls back to pure Python when the
# extension does not build, so the test imports the extension itself).
# name, version, module to import, whether the wheel is for this platform
RELEASES = [
    ("termcolor", "1.1.0", "termcolor", False),
    ("docopt", "0.6.2", "docopt", False),
    ("crcmod", "1.7", "crcmod._crcfunext", True),
]

# what the guide's readers run on a fresh machine: no pip configuration of
# this one (indexes, find-links) and no trace of the test run's own venv
_NOT_INHERITED = re.compile(r"^(PIP_|PYTHON|VIRTUAL_ENV$)")


def operator_environment():
    environment = {name: value for name, value in os.environ.items()
                   if not _NOT_INHERITED.match(name)}
    environment["PIP_CONFIG_FILE"] = os.devnull
    environment["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return environment


def run(*command, **options):
    """Run a command as the operator would; fail the test with its output
    when it fails."""
    result = subprocess.run(
        [str(part) for part in command], cwd="/", env=operator_environment(),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, **options)
    assert result.returncode == 0, f"{command}:\n{result.stdout}"
    return result.stdout


def debian_venv_or_skip(directory):
    """``python3 -m venv`` with Debian's Python, skipping the test only
    when that Python or its venv module is missing."""
    if not os.access(DEBIAN_PYTHON, os.X_OK):
        pytest.skip(f"{DEBIAN_PYTHON} is not installed")
    probe = subprocess.run([DEBIAN_PYTHON, "-c", "import venv, ensurepip"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if probe.returncode != 0:
        pytest.skip(f"{DEBIAN_PYTHON} has no venv module "
                    f"(apt-get install python3-venv)")
    run(DEBIAN_PYTHON, "-m", "venv", directory)
    return Path(directory)


def pypi_reachable():
    try:
        with urllib.request.urlopen(PYPI_SIMPLE + "pip/",
                                    timeout=10) as response:
            return response.status == 200
    except OSError:
        return False


def copy_checkout(destination):
    """The checkout as an operator would have it: without this machine's
    venv, git data, demo data or build leftovers."""
    shutil.copytree(CHECKOUT, destination, symlinks=True,
                    ignore=shutil.ignore_patterns(
                        ".venv", ".git", "demo", "var", "build", "dist",
                        "*.egg-info", "__pycache__", ".pytest_cache",
                        "artifacts", "dropin.cache"))
    return destination


@pytest.fixture
def root():
    """A world-readable directory outside /root: the builder runs as the
    piwheels user and must be able to execute the venv made here."""
    path = Path(tempfile.mkdtemp(prefix="piwtwist-guide-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def deployment(test_db):
    deployed = Deployment(test_db, PYPI_SIMPLE)
    yield deployed
    deployed.close()


def queue_release(database, package, version):
    database.sql("SELECT add_new_package(%s)", (package,))
    database.sql("SELECT add_new_package_version(%s, %s, %s)",
                 (package, version, "2010-01-01Z"))


@pytest.mark.pypi
@pytest.mark.timeout(600)
@pytest_twisted.ensureDeferred
async def test_a_builder_installed_as_the_guide_says_builds_legacy_sdists(
        reactor, root, deployment):
    if not pypi_reachable():
        pytest.skip(f"{PYPI_SIMPLE} cannot be reached")
    guide = (CHECKOUT / "docs" / "deployment.md").read_text()
    assert "sudo python3 -m venv /opt/piwtwist\n" in guide
    assert "sudo /opt/piwtwist/bin/pip install /path/to/piwtwist-checkout" \
        in guide

    # section 1, with root/opt/piwtwist for /opt/piwtwist
    venv = debian_venv_or_skip(root / "opt" / "piwtwist")
    pip_version = run(venv / "bin" / "python", "-m", "pip", "--version")
    pip_version = pip_version.split()[1]
    missing = subprocess.run([venv / "bin" / "python", "-c", "import wheel"],
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, cwd="/")
    assert missing.returncode != 0, "the fresh venv has wheel already"
    checkout = copy_checkout(root / "piwtwist-checkout")
    run(venv / "bin" / "pip", "install", checkout, timeout=400)

    for name, version, _, _ in RELEASES:
        queue_release(deployment.database, name, version)
    http_port = free_port()
    deployment.start_master(
        "--http-endpoint", f"tcp:{http_port}:interface=127.0.0.1")
    builder = deployment.start_builder(
        "guide-builder", "-t", "5m", twistd=venv / "bin" / "twistd")

    def all_built():
        builds = deployment.builds()
        return builds if len(builds) >= len(RELEASES) else None

    try:
        builds = await wait_for(reactor, all_built, 300,
                                f"{len(RELEASES)} builds")
    except AssertionError:
        raise AssertionError(f"{deployment.builds()}\n{deployment.logs()}")
    logs = "\n".join(text for (text,) in deployment.database.sql(
        "SELECT output FROM output"))
    assert all(status for _, _, status, _, _ in builds), \
        f"{builds}\n{logs}\n{deployment.logs()}"
    assert f"build frontend: pip {pip_version} (PEP 517, isolated builds)" \
        in builder.log(), builder.log()
    assert "invalid command 'bdist_wheel'" not in logs
    if shutil.which("bwrap"):
        # the guide's install works inside the build sandbox
        assert logs.count("sandbox bubblewrap") == len(RELEASES), logs

    files = {filename for (filename,) in deployment.database.sql(
        "SELECT filename FROM files")}
    for name, version, _, native in RELEASES:
        (wheel,) = [f for f in files if f.startswith(f"{name}-{version}-")]
        assert ("-none-any.whl" not in wheel) == native, wheel

    # a second fresh venv installs them, wheels only, from the master's
    # index, and imports them
    client = debian_venv_or_skip(root / "client")
    run(client / "bin" / "pip", "install", "--only-binary", ":all:",
        "--no-deps", "--index-url", f"http://127.0.0.1:{http_port}/simple/",
        *(f"{name}=={version}" for name, version, _, _ in RELEASES),
        timeout=120)
    said = run(client / "bin" / "python", "-c",
               "import crcmod._crcfunext, crcmod.predefined, docopt, "
               "termcolor; print(docopt.docopt('usage: x <a>', ['1'])['<a>'],"
               " hex(crcmod.predefined.mkCrcFun('crc-32')(b'123456789')))")
    assert said.split() == ["1", "0xcbf43926"], said
    assert builder.stop(), builder.output() + builder.log()
