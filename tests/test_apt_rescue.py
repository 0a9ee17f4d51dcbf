"""Missing headers and libraries on a builder (issue 16): what dpkg and the
curated maps say about them, the hint a builder's finding becomes (cleaned
and bounded, whoever wrote it), and a missing package the operator allowed
installed before the one retry, through the real sandbox."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
from twisted.python import usage

from piwtwist import failures
from piwtwist.builder import apt as apt_module
from piwtwist.builder import tap as builder_tap
from piwtwist.builder.apt import AptHelper, Finding, parse_dpkg_search
from piwtwist.builder.sandbox import run_build_with_rescue
from tests import rescue_sdists, sdists
from tests.web_support import T0, add_release, log_failure, page_writer

#: Headers this machine does not have, and the packages the curated map
#: names for them.
ALLOWED_HEADER, ALLOWED_PACKAGE = "i2c/smbus.h", "libi2c-dev"
REFUSED_HEADER, REFUSED_PACKAGE = "gpiod.h", "libgpiod-dev"
#: Where the stand-in install command puts the allowed header.
INSTALLED_HEADER = Path("/usr/local/include") / ALLOWED_HEADER

FOOTER = "# exit status 1; duration 1.2s\n"


def make_header_sdist(directory, name, version, header):
    """An sdist whose build compiles a file that includes *header*."""
    return rescue_sdists._sdist(directory, name, version, f"""
        import subprocess
        source = os.path.join(os.environ["TMPDIR"], "needs.c")
        with open(source, "w") as f:
            f.write("#include <{header}>\\nint needs(void) {{ return 0; }}\\n")
        command = ["gcc", "-c", source, "-o", source + ".o"]
        say(" ".join(command))
        if subprocess.call(command, stdout=sys.stderr) != 0:
            say("error: command '/usr/bin/gcc' failed with exit code 1")
            sys.exit(1)
    """)


def header_missing(header):
    return not any((Path(d) / header).exists() for d in (
        "/usr/include", "/usr/local/include",
        "/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu",
        "/usr/include/arm-linux-gnueabihf"))


needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None,
                               reason="needs gcc")
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg") is None,
                                reason="needs dpkg")


@pytest.fixture
def header_home(tmp_path):
    """/usr/local/include/i2c for the stand-in install command, removed
    afterwards; the header must not be on this machine already."""
    if not header_missing(ALLOWED_HEADER) or \
            INSTALLED_HEADER.parent.exists():
        pytest.skip(f"{ALLOWED_HEADER} is on this machine")
    if os.geteuid() != 0:
        pytest.skip("needs root to write /usr/local/include")
    INSTALLED_HEADER.parent.mkdir(parents=True)
    try:
        yield INSTALLED_HEADER
    finally:
        shutil.rmtree(INSTALLED_HEADER.parent, ignore_errors=True)


def install_script(directory):
    """A stand-in for ``sudo apt-get install``: says what it installs and
    writes the allowed header where the compiler looks."""
    script = Path(directory) / "fake-apt-get"
    script.write_text(
        "#!/bin/sh\n"
        'echo "Setting up $* (stand-in) ..."\n'
        f"printf '#define PIWTWIST_STAND_IN 1\\n' > {INSTALLED_HEADER}\n")
    script.chmod(0o755)
    return script


# dpkg and the maps ---------------------------------------------------------

def test_dpkg_output_is_parsed():
    text = ("zlib1g-dev:amd64: /usr/include/zlib.h\n"
            "diversion by foo from: /usr/include/x.h\n"
            "libc6-dev:amd64, libc6-dev:i386: /usr/include/stdio.h\n"
            "dpkg-query: no path found matching pattern */nothing.h\n"
            "not a line\n")
    assert parse_dpkg_search(text) == [
        ("zlib1g-dev", "/usr/include/zlib.h"),
        ("libc6-dev", "/usr/include/stdio.h"),
        ("libc6-dev", "/usr/include/stdio.h")]


@needs_dpkg
@pytest_twisted.ensureDeferred
async def test_dpkg_finds_an_installed_header(reactor):
    header = next((h for h in ("/usr/include/zlib.h",
                               "/usr/include/stdio.h") if Path(h).exists()),
                  None)
    if header is None:
        pytest.skip("no -dev package with a known header is installed")
    owner = subprocess.run(["dpkg", "-S", header], capture_output=True,
                           text=True, check=True).stdout
    package = owner.split(":", 1)[0]
    finding = await AptHelper().look_up(reactor, "header",
                                        Path(header).name)
    assert (finding.package, finding.installed_at) == (package, header)
    assert finding.describe() == (
        f"{Path(header).name} is in Debian package {package}, installed on "
        f"this builder as {header}, but not where the build looked for it")


@needs_dpkg
@pytest_twisted.ensureDeferred
async def test_a_header_nobody_has_falls_back_to_the_map(reactor):
    if not header_missing(REFUSED_HEADER):
        pytest.skip(f"{REFUSED_HEADER} is installed here")
    helper = AptHelper(allowed=[ALLOWED_PACKAGE])
    finding = await helper.look_up(reactor, "header", REFUSED_HEADER)
    assert finding == Finding("header", REFUSED_HEADER, REFUSED_PACKAGE)
    assert not helper.should_install(finding)
    assert finding.describe() == (
        f"gpiod.h is in Debian package {REFUSED_PACKAGE} (not installed on "
        f"this builder; not in its --apt-allow list)")
    unknown = await helper.look_up(reactor, "header", "piwtwist/none.h")
    assert unknown.package == ""
    assert "the curated map names none" in unknown.describe()


def test_library_findings_say_what_is_missing():
    assert Finding("library", "ffi", "libffi-dev").describe().startswith(
        "-lffi is in Debian package libffi-dev (not installed")
    refused = Finding("pkg-config", "libxml-2.0", "libxml2-dev",
                      allowed=True,
                      install=apt_module.CommandResult(1, "", "exit status 1"))
    assert refused.describe() == (
        "pkg-config's libxml-2.0 is in Debian package libxml2-dev (not "
        "installed on this builder; installing it failed: exit status 1)")


# the hint a finding becomes ------------------------------------------------

def failed_log(header, printed=""):
    return ("# piwtwist: pip wheel x==1.0\n" + printed +
            f"needs.c:1:10: fatal error: {header}: No such file or "
            f"directory\n" + FOOTER)


def test_the_builders_finding_is_the_hint():
    log = failed_log("ffi.h")
    assert failures.classify(log).hint == \
        "install libffi-dev (it provides ffi.h)"
    finding = Finding("header", "ffi.h", "libffi-dev").line()
    assert failures.classify(log + finding) == failures.Diagnosis(
        "missing-header", "ffi.h is in Debian package libffi-dev (not "
        "installed on this builder; not in its --apt-allow list)")
    assert failures.missing_file(log + finding, "missing-header") == (
        "header", "ffi.h")


def test_a_finding_about_another_file_is_ignored():
    log = failed_log("ffi.h") + failures.finding_line(
        "header", "zlib.h", "zlib.h is fine")
    assert failures.classify(log).hint == \
        "install libffi-dev (it provides ffi.h)"


def test_a_build_cannot_print_the_finding():
    # the build's own output comes before the footer: not the builder's
    printed = failures.finding_line("header", "ffi.h", "trust me")
    assert failures.classify(failed_log("ffi.h", printed)).hint == \
        "install libffi-dev (it provides ffi.h)"
    assert failures.split_builder_lines(failed_log("ffi.h", printed))[1] \
        == []


def test_a_lying_builders_hint_is_one_bounded_line():
    lie = ("<script>alert(1)</script>\x1b[31m\u202e" + "spam " * 400)
    hint = failures.classify(failed_log("ffi.h") + failures.finding_line(
        "header", "ffi.h", lie)).hint
    assert len(hint) == failures.HINT_LIMIT
    assert hint.startswith("<script>alert(1)</script> [31m")
    assert hint.endswith("\u2026")
    assert hint.isprintable()


@pytest_twisted.ensureDeferred
async def test_a_lying_hint_is_escaped_on_the_page(db, tmp_path, reactor):
    output = tmp_path / "www"
    output.mkdir()
    hint = failures.classify(failed_log("ffi.h") + failures.finding_line(
        "header", "ffi.h", '<img src=x onerror="alert(1)"> ' + "x" * 500)
    ).hint
    await add_release(db, "liar", "1.0", T0)
    await log_failure(db, "liar", "1.0", "cp311", reason="exit status 1",
                      failure_class="missing-header", failure_hint=hint)
    assert await page_writer(db, output, reactor).write_project("liar")
    html = (output / "project" / "liar" / "index.html").read_text()
    assert "<img" not in html
    assert "&lt;img src=x onerror=" in html
    data = json.loads((output / "project" / "liar" / "json" /
                       "index.json").read_text())
    shown = data["releases"]["1.0"]["builds"]["cp311"]["failure_hint"]
    assert shown == hint and len(shown) == failures.HINT_LIMIT


def test_apt_remedies_the_master_accepts():
    assert failures.known_remedy("apt:libffi-dev")
    assert failures.known_remedy("apt:libstdc++-12-dev")
    for bad in ("apt:", "apt:Libffi", "apt:a b", "apt:x;rm", "apt:-x"):
        assert not failures.known_remedy(bad), bad
    with pytest.raises(ValueError):
        failures.apt_remedy("<b>")


# the builder's options -------------------------------------------------------

def parse(*args):
    options = builder_tap.Options()
    options.parseOptions(["-c", os.devnull, *args])
    return options


def test_apt_options(not_root, secret_file, tmp_path):
    listed = tmp_path / "allowed"
    listed.write_text("# what builders may install\nlibxml2-dev  # lxml\n"
                      "libxslt1-dev, zlib1g-dev\n\n")
    options = parse("--secret-file", str(secret_file), "--no-sandbox",
                    "--apt-allow", "libffi-dev,libssl-dev",
                    "--apt-allow", "libffi-dev",
                    "--apt-allow-file", str(listed),
                    "--apt-install-command", "/usr/local/bin/fake -y")
    helper = options["apt"]
    assert helper.allowed == {"libffi-dev", "libssl-dev", "libxml2-dev",
                              "libxslt1-dev", "zlib1g-dev"}
    assert helper.command_for("libffi-dev") == [
        "/usr/local/bin/fake", "-y", "libffi-dev"]
    templated = parse("--secret-file", str(secret_file), "--no-sandbox",
                      "--apt-install-command",
                      "systemctl start piwheels-apt@{package}.service")
    assert templated["apt"].command_for("libffi-dev") == [
        "systemctl", "start", "piwheels-apt@libffi-dev.service"]
    default = parse("--secret-file", str(secret_file), "--no-sandbox")["apt"]
    assert default.allowed == frozenset()
    assert default.command_for("zlib1g-dev") == [
        "sudo", "-n", "apt-get", "install", "-y",
        "--no-install-recommends", "zlib1g-dev"]


@pytest.mark.parametrize("args, message", [
    (["--apt-allow", "libffi-dev;reboot"], "is not a Debian package name"),
    (["--apt-allow", "LibFFI"], "is not a Debian package name"),
    (["--apt-allow-file", "/nonexistent/allowed"],
     "cannot read --apt-allow-file"),
    (["--apt-install-command", ""], "--apt-install-command is empty"),
    (["--apt-install-command", "sudo 'apt-get"], "--apt-install-command"),
])
def test_bad_apt_options(not_root, secret_file, args, message):
    with pytest.raises(usage.UsageError, match=message):
        parse("--secret-file", str(secret_file), "--no-sandbox", *args)


def test_a_bad_line_in_the_allow_file(not_root, secret_file, tmp_path):
    listed = tmp_path / "allowed"
    listed.write_text("libffi-dev\nrm -rf /\n")
    with pytest.raises(usage.UsageError, match=r"allowed:2: '-rf' is not a Debian package name"):
        parse("--secret-file", str(secret_file), "--no-sandbox",
              "--apt-allow-file", str(listed))


# through the real sandbox ----------------------------------------------------

@pytest.fixture(params=["bwrap", "plain"])
def bwrap(request):
    if request.param == "plain":
        return None
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed")
    return shutil.which("bwrap")


def header_index(tmp_path, name, header):
    sdist = make_header_sdist(tmp_path / "sdists", name, "1.0", header)
    return sdists.index_url(sdists.make_simple_index(tmp_path / "index",
                                                     [sdist]))


@needs_gcc
@needs_dpkg
@pytest_twisted.ensureDeferred
async def test_an_allowed_package_is_installed_and_the_build_retried(
        reactor, tmp_path, bwrap, header_home):
    url = header_index(tmp_path, "needs-i2c", ALLOWED_HEADER)
    helper = AptHelper(allowed=[ALLOWED_PACKAGE],
                       install_command=[str(install_script(tmp_path))])
    outcome = await run_build_with_rescue(
        reactor, "needs-i2c", "1.0", url, tmp_path / "build", timeout=120,
        bwrap=bwrap, apt=helper)
    assert outcome.status, outcome.output
    assert outcome.remedy == "apt:libi2c-dev"
    assert failures.known_remedy(outcome.remedy)
    first, second = outcome.output.split(
        failures.retry_marker("apt:libi2c-dev"))
    assert f"fatal error: {ALLOWED_HEADER}: No such file" in first
    assert f"# piwtwist: $ {install_script(tmp_path)} libi2c-dev" in first
    assert "# piwtwist: | Setting up libi2c-dev (stand-in) ..." in first
    assert "# piwtwist: installing libi2c-dev: exit status 0" in first
    assert "(the first attempt failed: missing-header)" in second
    assert "fatal error" not in second
    shutil.rmtree(outcome.output_dir)


@needs_gcc
@needs_dpkg
@pytest_twisted.ensureDeferred
async def test_a_package_not_allowed_is_only_named(reactor, tmp_path):
    if not header_missing(REFUSED_HEADER):
        pytest.skip(f"{REFUSED_HEADER} is installed here")
    url = header_index(tmp_path, "needs-gpiod", REFUSED_HEADER)
    ran = tmp_path / "ran"
    helper = AptHelper(allowed=[ALLOWED_PACKAGE],
                       install_command=["touch", str(ran)])
    outcome = await run_build_with_rescue(
        reactor, "needs-gpiod", "1.0", url, tmp_path / "build",
        timeout=120, bwrap=None, apt=helper)
    assert not outcome.status and not outcome.remedy
    assert not ran.exists()
    assert outcome.output.endswith(
        "# piwtwist: lookup: header gpiod.h: gpiod.h is in Debian package "
        "libgpiod-dev (not installed on this builder; not in its "
        "--apt-allow list)\n")
    assert failures.classify(outcome.output, outcome.reason) == \
        failures.Diagnosis("missing-header", (
            "gpiod.h is in Debian package libgpiod-dev (not installed on "
            "this builder; not in its --apt-allow list)"))


@needs_gcc
@needs_dpkg
@pytest_twisted.ensureDeferred
async def test_a_failed_installation_is_said(reactor, tmp_path):
    if not header_missing(ALLOWED_HEADER):
        pytest.skip(f"{ALLOWED_HEADER} is installed here")
    url = header_index(tmp_path, "needs-i2c", ALLOWED_HEADER)
    helper = AptHelper(allowed=[ALLOWED_PACKAGE],
                       install_command=["sh", "-c",
                                        "echo no sudo for you >&2; exit 3",
                                        "apt"])
    outcome = await run_build_with_rescue(
        reactor, "needs-i2c", "1.0", url, tmp_path / "build", timeout=120,
        bwrap=None, apt=helper)
    assert not outcome.status and not outcome.remedy
    assert failures.retry_marker("") not in outcome.output
    assert "# piwtwist: | no sudo for you" in outcome.output
    diagnosis = failures.classify(outcome.output, outcome.reason)
    assert diagnosis == failures.Diagnosis("missing-header", (
        "i2c/smbus.h is in Debian package libi2c-dev (not installed on "
        "this builder; installing it failed: exit status 3)"))


def test_apt_allow_in_the_configuration_file(not_root, secret_file, tmp_path):
    config = tmp_path / "piwheels.conf"
    config.write_text("[builder]\napt-allow = libffi-dev libxml2-dev,"
                      " zlib1g-dev\n")
    options = builder_tap.Options()
    options.parseOptions(["-c", str(config), "--secret-file",
                          str(secret_file), "--no-sandbox"])
    assert options["apt"].allowed == {"libffi-dev", "libxml2-dev",
                                      "zlib1g-dev"}


@needs_gcc
@needs_dpkg
@pytest_twisted.ensureDeferred
async def test_no_retry_when_the_installation_used_up_the_timeout(
        reactor, tmp_path, header_home):
    url = header_index(tmp_path, "needs-i2c", ALLOWED_HEADER)
    script = install_script(tmp_path)
    slow = tmp_path / "slow-apt-get"
    slow.write_text(f"#!/bin/sh\nsleep 3\nexec {script} \"$@\"\n")
    slow.chmod(0o755)
    helper = AptHelper(allowed=[ALLOWED_PACKAGE], install_command=[str(slow)])
    # MIN_RETRY_SECONDS (30) of a 33-second timeout are gone once the
    # build and the 3-second installation have run
    outcome = await run_build_with_rescue(
        reactor, "needs-i2c", "1.0", url, tmp_path / "build", timeout=33,
        bwrap=None, apt=helper)
    assert not outcome.status and not outcome.remedy
    assert header_home.exists()
    assert failures.retry_marker("") not in outcome.output
    assert failures.classify(outcome.output, outcome.reason).hint == (
        "i2c/smbus.h is in Debian package libi2c-dev, which this builder "
        "installed after the build failed, too late to retry it: build it "
        "again")
