"""Admin actions are single transactions: an action that fails half-way
changes nothing (against the real server)."""

from datetime import datetime, timezone

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import task

from piwtwist.master.admin_hub import AdminHub
from piwtwist.pypi.journal import FileKind
from piwtwist.pypi.json_api import ProjectDetails, PublishedFile, ReleaseDetails

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


class FakeJsonApi:
    def __init__(self, *projects):
        self.projects = {p.name.lower(): p for p in projects}

    async def project(self, name, allow_stale=True):
        return self.projects.get(name.lower())


class Recorder:
    """Stands in for the page writer and the build queue."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append(name)


def release(version, requires_python=""):
    return ReleaseDetails(
        version=version, requires_python=requires_python, released=T0,
        files=(PublishedFile(f"demo-{version}.tar.gz", FileKind.SOURCE, T0),))


def admin_hub(db, tmp_path, *projects):
    return AdminHub(db, Recorder(), None, Recorder(), task.Clock(), tmp_path,
                    json_api=FakeJsonApi(*projects))


@pytest_twisted.ensureDeferred
async def test_a_transaction_commits_all_or_nothing(db):
    async def half(tx):
        await tx.add_new_package("half")
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError):
        await db.transaction(half)
    assert await db.test_package("half") is False

    async def whole(tx):
        await tx.add_new_package("whole")
        await tx.add_new_package_version("whole", "1.0", T0)
        return await tx.test_package_version("whole", "1.0")

    assert await db.transaction(whole) is True
    assert await db.get_all_package_versions() == [("whole", "1.0")]


@pytest_twisted.ensureDeferred
async def test_an_add_that_fails_half_way_changes_nothing(db, tmp_path):
    # the second release cannot be stored (its Requires-Python is longer
    # than the database keeps): the package and the first must not stay
    broken = ProjectDetails(name="Demo", summary="a demo", last_serial=1,
                            releases={"1.0": release("1.0"),
                                      "2.0": release("2.0", "x" * 300)})
    hub = admin_hub(db, tmp_path, broken)
    with pytest.raises(psycopg2.DataError):
        await hub.add_package("Demo", "", unskip=False, yank=False,
                              unyank=False)
    assert await db.test_package("demo") is False
    assert await db.get_all_package_versions() == []
    assert hub.page_writer.calls == [] and hub.queue.calls == []

    fine = ProjectDetails(name="Demo", summary="a demo", last_serial=1,
                          releases={"1.0": release("1.0"),
                                    "2.0": release("2.0", ">=3.9")})
    hub = admin_hub(db, tmp_path, fine)
    answer = await hub.add_package("Demo", "", unskip=False, yank=False,
                                   unyank=False, alias="demo.py")
    assert sorted(answer["added"]) == ["1.0", "2.0"]
    assert await db.get_all_package_versions() == [("demo", "1.0"),
                                                   ("demo", "2.0")]
    assert {a.name for a in await db.get_package_aliases("demo")} == {
        "Demo", "demo.py"}
    assert "request_refresh" in hub.queue.calls
