"""Missing Debian packages through a real master and a real builder (issue
16): a header whose package the builder may install (``--apt-allow``, with
a stand-in install command) is installed and the build rescued as
``apt:PKG``; one whose package it may not install fails with a hint that
says so; one installed outside the compiler's path fails with the package
dpkg names.  The project JSON and page show each."""

import json
import os
import shutil
from pathlib import Path

import pytest
import pytest_twisted

from piwtwist.service_user import own
from tests.e2e import wait_for
from tests.sdists import make_simple_index
from tests.test_apt_rescue import (ALLOWED_HEADER, INSTALLED_HEADER,
                                   REFUSED_HEADER, header_missing,
                                   install_script, make_header_sdist)

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None or shutil.which("gcc") is None or
    shutil.which("dpkg") is None, reason="needs bubblewrap, gcc and dpkg")

#: Installed here by libxml2-dev, outside the compiler's default path.
ELSEWHERE = Path("/usr/include/libxml2/libxml/xmlversion.h")


@pytest.fixture
def header_home(served_deployment):
    """/usr/local/include/i2c, writable by the builder's user for the
    stand-in install command, removed afterwards."""
    if not header_missing(ALLOWED_HEADER) or \
            not header_missing(REFUSED_HEADER) or \
            INSTALLED_HEADER.parent.exists():
        pytest.skip("the test's headers are on this machine")
    if os.geteuid() != 0:
        pytest.skip("needs root to write /usr/local/include")
    INSTALLED_HEADER.parent.mkdir(parents=True)
    own(INSTALLED_HEADER.parent, served_deployment.user)
    try:
        yield INSTALLED_HEADER
    finally:
        shutil.rmtree(INSTALLED_HEADER.parent, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_apt_rescue_and_hints_through_master_and_builder(
        reactor, served_deployment, served_index, header_home, tmp_path):
    deployment = served_deployment
    root, _ = served_index
    releases = {"needs-i2c": ALLOWED_HEADER, "needs-gpiod": REFUSED_HEADER}
    if ELSEWHERE.exists():
        releases["needs-libxml"] = "libxml/xmlversion.h"
    made = tmp_path / "sdists"
    make_simple_index(root, [make_header_sdist(made, name, "1.0", header)
                             for name, header in releases.items()])
    database = deployment.database
    for number, name in enumerate(releases):
        database.sql("SELECT add_new_package(%s)", (name,))
        database.sql("SELECT add_new_package_version(%s, %s, %s)",
                     (name, "1.0", f"2024-01-0{number + 1}Z"))
    script = install_script(deployment.root)
    deployment.start_master()
    builder = deployment.start_builder(
        "pi", "-t", "120s", "--apt-allow", "libi2c-dev,libfoo-dev",
        "--apt-install-command", str(script))

    def all_built():
        rows = database.sql(
            "SELECT package, status, failure_class, failure_hint, rescued "
            "FROM builds ORDER BY build_id")
        return rows if len(rows) >= len(releases) else None

    try:
        rows = await wait_for(reactor, all_built, 300, "every release built")
    except AssertionError:
        raise AssertionError(deployment.logs())
    builds = {row[0]: tuple(row[1:]) for row in rows}
    assert builds["needs-i2c"] == (True, "", "", "apt:libi2c-dev"), \
        deployment.logs()
    assert builds["needs-gpiod"] == (
        False, "missing-header",
        "gpiod.h is in Debian package libgpiod-dev (not installed on this "
        "builder; not in its --apt-allow list)", "")
    if "needs-libxml" in releases:
        assert builds["needs-libxml"][:2] == (False, "missing-header")
        assert builds["needs-libxml"][2] == (
            f"libxml/xmlversion.h is in Debian package libxml2-dev, "
            f"installed on this builder as {ELSEWHERE}, but not where the "
            f"build looked for it")
    assert "may install libfoo-dev libi2c-dev for builds that miss them" \
        in builder.log()
    (log,) = database.sql(
        "SELECT o.output FROM output o JOIN builds b USING (build_id) "
        "WHERE b.package = 'needs-i2c'")[0]
    assert f"fatal error: {ALLOWED_HEADER}: No such file" in log
    assert "# piwtwist: | Setting up libi2c-dev (stand-in) ..." in log
    assert "# piwtwist: retrying once with apt:libi2c-dev" in log
    assert INSTALLED_HEADER.exists()

    project = deployment.output / "project"

    def cell(name):
        page = project / name / "json" / "index.json"
        if page.exists():
            found = json.loads(page.read_text())["releases"]["1.0"][
                "builds"].get(deployment.abi)
            if found and found["status"] != "pending":
                return found
        return None

    rescued = await wait_for(reactor, lambda: cell("needs-i2c"), 60,
                             "needs-i2c's JSON")
    assert rescued["status"] == "success"
    assert rescued["rescued"] == "apt:libi2c-dev"
    refused = await wait_for(reactor, lambda: cell("needs-gpiod"), 60,
                             "needs-gpiod's JSON")
    assert refused["failure_class"] == "missing-header"
    assert refused["failure_hint"].endswith("not in its --apt-allow list)")
    await wait_for(reactor, lambda: "rescued with apt:libi2c-dev" in (
        project / "needs-i2c" / "index.html").read_text(), 60,
        "the rescued page")
    html = (project / "needs-gpiod" / "index.html").read_text()
    assert "gpiod.h is in Debian package libgpiod-dev" in html
