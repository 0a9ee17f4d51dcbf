"""Project pages, their JSON, build logs, deletions, and the page writer's
queue: de-duplicated, persisted across restarts, tolerant of bad input."""

import gzip
import json
import os
from datetime import timedelta

import pytest
import pytest_twisted

from piwtwist.db.records import BuildResult, Dependency
from piwtwist.master.tree_effects import TreeEffects
from piwtwist.web.layout import log_relative_path
from tests.web_support import (
    T0, add_release, apt, build_file, log_failure, log_success, make_wheel,
    page_writer, settle)


@pytest.fixture
def output(tmp_path):
    path = tmp_path / "www"
    path.mkdir()
    return path


async def example_project(db, output, tmp_path):
    """foo-bar on cp39 and cp311 (cp313 configured but skipped):

    * 1.0: a cp39 wheel needing libfoo1 and libc6 (libc6 ships with the
      cp39 image); the cp311 build failed
    * 1.1: a "none" wheel built on cp39, serving every ABI
    * 2.0rc1: a pre-release, not built yet
    * 0.9: skipped ("binary only"); 0.8: yanked, never built
    """
    await db.set_build_abis(["cp39", "cp311", "cp313"])
    await db.skip_build_abi("cp313", "no builders")
    await db.add_preinstalled_apt_packages("cp39", ["libc6"])
    wheels = tmp_path / "wheels"
    pkg = "foo-bar"
    await add_release(db, pkg, "0.8", T0, description="Foo, and bar")
    await add_release(db, pkg, "0.9", T0 + timedelta(days=1),
                      skip="binary only")
    await add_release(db, pkg, "1.0", T0 + timedelta(days=2))
    await add_release(db, pkg, "1.1", T0 + timedelta(days=3))
    await add_release(db, pkg, "2.0rc1", T0 + timedelta(days=4))
    await db.yank_version(pkg, "0.8", "")
    await db.add_package_name(pkg, "Foo_Bar", T0)
    native = build_file(make_wheel(wheels, "foo_bar", "1.0",
                                   "cp39-cp39-linux_armv7l"), output, pkg)
    ids = {}
    ids["1.0 cp39"], _ = await log_success(
        db, pkg, "1.0", "cp39", [native],
        {native.filename: apt("libfoo1", "libc6") + (
            Dependency("pip", "numpy"),)},
        output="line\n" * 300_000 + "the end\n")
    ids["1.0 cp311"], _ = await log_failure(db, pkg, "1.0", "cp311",
                                            reason="compiler exploded")
    pure = build_file(make_wheel(wheels, "foo_bar", "1.1"), output, pkg)
    ids["1.1 cp39"], _ = await log_success(db, pkg, "1.1", "cp39", [pure])
    return ids


@pytest_twisted.ensureDeferred
async def test_project_page_and_json_say_what_happened(
        db, output, tmp_path, reactor):
    ids = await example_project(db, output, tmp_path)
    writer = page_writer(db, output, reactor)
    assert await writer.write_project("foo-bar")

    data = json.loads(
        (output / "project" / "foo-bar" / "json" / "index.json").read_text())
    assert data["description"] == "Foo, and bar"
    # a skipped ABI nothing was built for gets no column
    assert data["abis"] == ["cp39", "cp311"]
    cells = {(version, abi): (cell["status"], cell["build_id"], cell["reason"])
             for version, release in data["releases"].items()
             for abi, cell in release["builds"].items()}
    assert cells[("1.0", "cp39")] == ("success", ids["1.0 cp39"], "")
    assert cells[("1.0", "cp311")] == ("failure", ids["1.0 cp311"],
                                       "compiler exploded")
    # a "none" wheel serves the ABIs it was not built on
    assert cells[("1.1", "cp311")] == ("success", ids["1.1 cp39"], "")
    assert cells[("2.0rc1", "cp39")] == ("pending", None, "")
    assert cells[("0.9", "cp311")] == ("skipped", None, "binary only")
    assert cells[("0.8", "cp39")][0] == "yanked"
    assert list(data["releases"]) == ["2.0rc1", "1.1", "1.0", "0.9", "0.8"]
    assert data["releases"]["2.0rc1"]["prerelease"] is True
    # install instructions: 1.1 is the newest stable release with files, and
    # a pure wheel needs nothing from apt
    assert data["install"]["version"] == "1.1"
    assert data["install"]["apt"] == {}
    files = data["releases"]["1.0"]["files"]
    (native,) = files.values()
    assert native["apt_dependencies"] == ["libc6", "libfoo1"]
    assert native["pip_dependencies"] == ["numpy"]

    html = (output / "project" / "foo-bar" / "index.html").read_text()
    assert "Foo, and bar" in html
    assert f'href="/{log_relative_path(ids["1.0 cp311"])}"' in html
    assert "compiler exploded" in html
    assert "pip3 install foo-bar" in html
    for filename, facts in files.items():
        assert filename in html and facts["filehash"][:16] in html

    # the alias points at the canonical directory
    alias = output / "project" / "Foo_Bar"
    assert alias.is_symlink() and os.readlink(alias) == "foo-bar"
    assert (alias / "index.html").read_text() == html


@pytest_twisted.ensureDeferred
async def test_failure_class_hint_and_rescue_on_page_and_json(
        db, output, tmp_path, reactor):
    pkg = "classy"
    await add_release(db, pkg, "1.0", T0)
    await add_release(db, pkg, "2.0", T0 + timedelta(days=1))
    failed, _ = await log_failure(
        db, pkg, "1.0", "cp311", reason="exit status 1",
        failure_class="missing-header",
        failure_hint="install libffi-dev (it provides ffi.h)")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = build_file(make_wheel(wheels, "classy", "2.0"), output, pkg)
    rescued, _ = await log_success(db, pkg, "2.0", "cp311", [wheel],
                                   rescued="setuptools<82")
    writer = page_writer(db, output, reactor)
    assert await writer.write_project(pkg)
    data = json.loads(
        (output / "project" / pkg / "json" / "index.json").read_text())
    failure = data["releases"]["1.0"]["builds"]["cp311"]
    assert failure["failure_class"] == "missing-header"
    assert failure["failure_hint"] == "install libffi-dev (it provides ffi.h)"
    success = data["releases"]["2.0"]["builds"]["cp311"]
    assert "failure_class" not in success
    assert success["rescued"] == "setuptools<82"
    html = (output / "project" / pkg / "index.html").read_text()
    assert '<span class="failure-class" title="a C/C++ header the build ' \
        'includes is not installed">missing-header</span>' in html
    assert "install libffi-dev (it provides ffi.h)" in html
    assert "rescued with setuptools&lt;82" in html


@pytest_twisted.ensureDeferred
async def test_apt_lines_leave_out_what_the_abi_ships(
        db, output, tmp_path, reactor):
    await example_project(db, output, tmp_path)
    # 1.1 yanked: the newest stable release is 1.0 now
    await db.yank_version("foo-bar", "1.1", "oops")
    writer = page_writer(db, output, reactor)
    assert await writer.write_project("foo-bar")
    data = json.loads(
        (output / "project" / "foo-bar" / "json" / "index.json").read_text())
    assert data["install"]["version"] == "1.0"
    assert data["install"]["apt"] == {"cp39": ["libfoo1"]}
    assert data["install"]["pip_dependencies"] == ["numpy"]
    html = (output / "project" / "foo-bar" / "index.html").read_text()
    assert "sudo apt install libfoo1\n" in html
    assert "libc6\n" not in html.split("<pre")[1].split("</pre>")[0]


@pytest_twisted.ensureDeferred
async def test_build_logs_are_complete_and_compressed(
        db, test_db, output, tmp_path, reactor):
    ids = await example_project(db, output, tmp_path)
    writer = page_writer(db, output, reactor)
    assert await writer.write_project("foo-bar")
    for build_id in ids.values():
        path = output / log_relative_path(build_id)
        assert path.parent.parent.parent.name == "logs"
        (recorded,) = test_db.sql(
            "SELECT output FROM output WHERE build_id = %s", (build_id,))[0]
        assert gzip.decompress(path.read_bytes()).decode() == recorded
        assert path.stat().st_mode & 0o777 == 0o644
    long_log = gzip.decompress(
        (output / log_relative_path(ids["1.0 cp39"])).read_bytes())
    assert long_log.endswith(b"the end\n") and len(long_log) == 300_000 * 5 + 8
    assert log_relative_path(123456789012) == "logs/1234/5678/9012.txt.gz"
    assert log_relative_path(7) == "logs/0000/0000/0007.txt.gz"


@pytest_twisted.ensureDeferred
async def test_a_burst_of_requests_writes_each_page_once(
        db, output, tmp_path, reactor):
    await example_project(db, output, tmp_path)
    await add_release(db, "other", "1.0", T0)
    writer = page_writer(db, output, reactor, rewrite_delay=0.2)
    writes = []
    original = writer._write_project

    async def counting(package, both):
        writes.append((package, both))
        return await original(package, both)

    writer._write_project = counting
    writer.startService()
    try:
        build = BuildResult(package="foo-bar", version="1.0",
                            abi_tag="cp311", built_by=1,
                            duration=timedelta(seconds=1), status=True,
                            output="")
        for _ in range(10):
            writer.build_finished(build)
        writer.request_rewrite("other", both=False)
        writer.request_rewrite("Other", both=False)
        await writer.wait_until_idle()
    finally:
        await writer.stopService()
    assert sorted(writes) == [("foo-bar", True), ("other", False)]
    assert (output / "simple" / "foo-bar" / "index.html").is_file()
    assert (output / "project" / "other" / "index.html").is_file()
    assert not (output / "simple" / "other" / "index.html").exists()


@pytest_twisted.ensureDeferred
async def test_pending_rewrites_survive_a_restart(
        db, output, tmp_path, reactor):
    await example_project(db, output, tmp_path)
    await add_release(db, "other", "1.0", T0)
    first = page_writer(db, output, reactor, rewrite_delay=3600)
    first.startService()
    first.request_rewrite("foo-bar", both=False)
    first.request_rewrite("other")
    first.request_rewrite("foo-bar", both=True)
    await settle(reactor, 0.1)
    await first.stopService()
    saved = await db.load_rewrites_pending()
    assert {(r.package, r.command) for r in saved} == {
        ("foo-bar", "BOTH"), ("other", "BOTH")}
    assert not (output / "project" / "other").exists()

    second = page_writer(db, output, reactor)
    second.startService()
    await settle(reactor, 0.2)
    await second.wait_until_idle()
    await second.stopService()
    assert (output / "project" / "other" / "index.html").is_file()
    assert (output / "simple" / "foo-bar" / "index.json").is_file()
    assert await db.load_rewrites_pending() == []


@pytest_twisted.ensureDeferred
async def test_deleting_a_version_and_a_package(
        db, output, tmp_path, reactor):
    ids = await example_project(db, output, tmp_path)
    writer = page_writer(db, output, reactor)
    writer.startService()
    try:
        await writer.wait_until_idle()
        assert await writer.write_project("foo-bar")
        writer.rewrite_index()
        await writer.wait_until_idle()
        simple = output / "simple" / "foo-bar"
        native = "foo_bar-1.0-cp39-cp39-linux_armv7l.whl"
        assert (simple / native).is_file()
        assert (simple / (native + ".metadata")).is_file()

        # the database records what the tree loses; the tree effects carry
        # it out and have the pages rewritten
        effects = TreeEffects(db, output, reactor, None, writer)
        await db.delete_version("foo-bar", "1.0")
        assert await effects.carry_out_deletions() > 0
        assert not (simple / native).exists()
        assert not (simple / (native + ".metadata")).exists()
        assert not (output / log_relative_path(ids["1.0 cp39"])).exists()
        assert not (output / log_relative_path(ids["1.0 cp311"])).exists()
        assert (output / log_relative_path(ids["1.1 cp39"])).exists()
        assert native not in (simple / "index.html").read_text()
        data = json.loads((output / "project" / "foo-bar" / "json" /
                           "index.json").read_text())
        assert "1.0" not in data["releases"]

        await db.delete_package("foo-bar")
        await effects.carry_out_deletions()
        assert await db.get_pending_deletions() == []
        assert not simple.exists()
        assert not (output / "project" / "foo-bar").exists()
        assert not os.path.lexists(output / "project" / "Foo_Bar")
        assert not (output / log_relative_path(ids["1.1 cp39"])).exists()
        await writer.wait_until_idle()
        assert "foo-bar" not in (output / "simple" / "index.html").read_text()
    finally:
        await writer.stopService()


@pytest_twisted.ensureDeferred
async def test_bad_input_is_a_warning_not_a_crash(
        db, test_db, output, tmp_path, reactor):
    ids = await example_project(db, output, tmp_path)
    # a file name no builder could have sent, recorded by hand
    test_db.sql(
        "INSERT INTO files (filename, build_id, filesize, filehash, "
        "package_tag, package_version_tag, py_version_tag, abi_tag, "
        "platform_tag) VALUES ('../../evil.whl', %s, 1, %s, 'x', '1', "
        "'py3', 'none', 'any')", (ids["1.1 cp39"], "0" * 64))
    # a wheel that is not a zip file at all
    (output / "simple" / "foo-bar" /
     "foo_bar-1.1-py3-none-any.whl").write_bytes(b"garbage")
    warnings = []
    from twisted.logger import globalLogPublisher

    def watch(event):
        if event.get("log_level") is not None and \
                event["log_level"].name == "warn":
            warnings.append(event)

    globalLogPublisher.addObserver(watch)
    writer = page_writer(db, output, reactor)
    try:
        writer.request_rewrite("../../etc")
        writer.request_rewrite("")
        assert await writer.write_project("foo-bar")
        # a package nobody knows: its pages (if any) go
        (output / "project" / "ghost").mkdir(parents=True)
        assert await writer.write_project("ghost") is False
        assert not (output / "project" / "ghost").exists()
    finally:
        globalLogPublisher.removeObserver(watch)
    texts = " ".join(str(e.get("log_format", "")) + str(e.get("problem", ""))
                     for e in warnings)
    assert "not a package name" in texts
    assert "not a readable wheel" in texts
    assert "impossible name" in texts
    assert "evil" not in (output / "simple" / "foo-bar" /
                          "index.html").read_text()
    index = json.loads(
        (output / "simple" / "foo-bar" / "index.json").read_text())
    metadata = {f["filename"]: f["core-metadata"] for f in index["files"]}
    assert metadata["foo_bar-1.1-py3-none-any.whl"] is False
    assert metadata["foo_bar-1.0-cp39-cp39-linux_armv7l.whl"] is not False


@pytest_twisted.ensureDeferred
async def test_the_writer_can_be_started_again(db, output, reactor):
    await add_release(db, "again", "1.0", T0)
    writer = page_writer(db, output, reactor)
    writer.startService()
    await writer.wait_until_idle()
    await writer.stopService()
    (output / "index.html").unlink()
    writer.startService()
    writer.request_rewrite("again")
    await settle(reactor, 0.1)
    await writer.wait_until_idle()
    await writer.stopService()
    assert (output / "project" / "again" / "index.html").is_file()
    assert (output / "index.html").is_file()
