"""Rescue and failure classes through a real master and a real builder
(issue 16): releases that fail the way old sdists do are rebuilt with
their remedy and recorded as rescued; one that no remedy fixes is
recorded with its class, which the project JSON and page show."""

import json
import shutil

import pytest
import pytest_twisted

from tests import rescue_sdists
from tests.e2e import wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None or shutil.which("gcc") is None,
    reason="needs bubblewrap and gcc")

RELEASES = [("oldsetup", "2024-01-03Z"), ("oldc", "2024-01-02Z"),
            ("py2only", "2024-01-01Z")]


@pytest.fixture
def index(served_index):
    return served_index


@pytest.fixture
def deployment(served_deployment):
    return served_deployment


@pytest_twisted.ensureDeferred
async def test_rescued_and_classified_through_master_and_builder(
        reactor, deployment, index, tmp_path):
    root, _ = index
    made = tmp_path / "sdists"
    files = [
        rescue_sdists.make_pkg_resources_sdist(made, "oldsetup", "1.0"),
        rescue_sdists.make_gcc14_sdist(made, "oldc", "1.0"),
        rescue_sdists._sdist(made, "py2only", "1.0",
                             'exec("print \'hello\'")'),
    ]
    rescue_sdists.make_setuptools_index(root, files, tmp_path / "wheels")
    database = deployment.database
    for name, released in RELEASES:
        database.sql("SELECT add_new_package(%s)", (name,))
        database.sql("SELECT add_new_package_version(%s, %s, %s)",
                     (name, "1.0", released))
    deployment.start_master()
    deployment.start_builder("pi", "-t", "120s")

    def all_built():
        rows = database.sql(
            "SELECT package, status, failure_class, failure_hint, rescued "
            "FROM builds ORDER BY build_id")
        return rows if len(rows) >= len(RELEASES) else None

    try:
        rows = await wait_for(reactor, all_built, 300, "every release built")
    except AssertionError:
        raise AssertionError(deployment.logs())
    builds = {row[0]: tuple(row[1:]) for row in rows}
    assert builds["oldsetup"] == (True, "", "", "setuptools<82"), \
        deployment.logs()
    assert builds["oldc"] == (
        True, "", "", "CFLAGS=-Wno-error=incompatible-pointer-types "
                      "-Wno-error=int-conversion")
    assert builds["py2only"][:2] == (False, "python2-only")
    (log,) = database.sql(
        "SELECT o.output FROM output o JOIN builds b USING (build_id) "
        "WHERE b.package = 'oldsetup'")[0]
    assert "# piwtwist: retrying once with setuptools<82" in log
    assert "No module named 'pkg_resources'" in log

    page = deployment.output / "project" / "py2only" / "json" / "index.json"

    def page_written():
        if page.exists():
            data = json.loads(page.read_text())
            cell = data["releases"]["1.0"]["builds"].get(deployment.abi)
            if cell and cell["status"] == "failure":
                return cell
        return None

    cell = await wait_for(reactor, page_written, 60, "the project JSON")
    assert cell["failure_class"] == "python2-only"
    html = (deployment.output / "project" / "py2only" /
            "index.html").read_text()
    assert "python2-only" in html
    rescued = deployment.output / "project" / "oldsetup" / "index.html"
    await wait_for(reactor, lambda: rescued.exists() and "rescued with"
                   in rescued.read_text(), 60, "the rescued page")
