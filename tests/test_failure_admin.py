"""Stored failures get classes (issue 16): the master classifies failed
builds recorded without a class at start, ``piw-rebuild reclassify``
classifies every failure again, and ``piw-remove -b --class CLASS``
removes every failed build of a class so that each is built again."""

import pytest_twisted

from tests.e2e import wait_for
from tests.test_admin_tools import (  # noqa: F401 - fixtures
    add_release, deployment, fake_pypi, master, tool)

MISSING_FFI = ("building '_cffi_backend' extension\n"
               "src/c/_cffi_backend.c:15:10: fatal error: ffi.h: No such "
               "file or directory\ncompilation terminated.\n"
               "# exit status 1; duration 4s\n")
OFFLINE = ("WARNING: Retrying after connection broken by 'NewConnectionError"
           "(... Failed to establish a new connection: [Errno -3] Temporary "
           "failure in name resolution)'\n# exit status 1; duration 9s\n")


def record_failure(deployment, package, version, log):
    add_release(deployment, package, version)
    deployment.database.sql(
        "SELECT log_build_failure(%s, %s, 1, '4 seconds', 'cp311', %s, "
        "'exit status 1')", (package, version, log))


def classes(deployment):
    return dict(deployment.database.sql(
        "SELECT package, failure_class FROM builds ORDER BY build_id"))


@pytest_twisted.ensureDeferred
async def test_classified_at_start_again_on_request_and_removed_by_class(
        reactor, deployment):
    record_failure(deployment, "needs-ffi", "1.0", MISSING_FFI)
    record_failure(deployment, "offline", "1.0", OFFLINE)
    assert classes(deployment) == {"needs-ffi": "", "offline": ""}
    deployment.start_master("--build-abi", "cp312")
    await wait_for(reactor, lambda: classes(deployment) == {
        "needs-ffi": "missing-header", "offline": "network"}, 60,
        "the failures classified at start")
    (hint,) = deployment.database.sql(
        "SELECT failure_hint FROM builds WHERE package = 'needs-ffi'")[0]
    assert hint == "install libffi-dev (it provides ffi.h)"
    page = deployment.output / "project" / "needs-ffi" / "json" / \
        "index.json"
    await wait_for(reactor, lambda: page.exists() and "missing-header" in
                   page.read_text(), 60, "the project JSON with the class")

    # the rules changed (here: the stored class is wrong)
    deployment.database.sql(
        "UPDATE builds SET failure_class = 'unknown' "
        "WHERE package = 'offline'")
    result = await tool(deployment, "piw-rebuild", "reclassify")
    assert result.returncode == 0, result.stderr + deployment.logs()
    assert "classified 2 failed build(s)" in result.stdout
    assert classes(deployment)["offline"] == "network"

    result = await tool(deployment, "piw-remove", "-y", "-b", "--class",
                        "missing-header")
    assert result.returncode == 0, result.stderr
    assert "missing-header failures of 1 release(s)" in result.stdout
    assert classes(deployment) == {"offline": "network"}
    assert deployment.database.sql(
        "SELECT package, version FROM build_queue WHERE abi_tag = 'cp311'"
    ) == [("needs-ffi", "1.0")]


@pytest_twisted.ensureDeferred
async def test_remove_by_class_refuses_nonsense(master, deployment):
    for args in (("-b", "--class", "no-such-class"),
                 ("--class", "network"),
                 ("-b", "--class", "network", "some-package"),
                 ()):
        result = await tool(deployment, "piw-remove", "-y", *args)
        assert result.returncode == 2, (args, result.stderr)
