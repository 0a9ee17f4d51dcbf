"""Every SQL function other than the build queue's, through the master's
database client, against a real PostgreSQL server."""

from datetime import datetime, timedelta, timezone

import attrs
import psycopg2
import pytest
import pytest_twisted

from piwtwist.db.records import (
    ClientDetails, Dependency, DownloadHit, PageHit,
    RewritePending, SearchHit,
)
from tests.test_db_queue import T0, failure, release, success, wheel


@pytest_twisted.ensureDeferred
async def test_packages(db):
    assert await db.add_new_package("foo", description="x" * 300) is True
    assert await db.add_new_package("foo") is False
    assert await db.test_package("foo") is True
    assert await db.test_package("bar") is False
    assert await db.get_package_description("foo") == "x" * 200
    await db.set_package_description("foo", "A foo")
    assert await db.get_package_description("foo") == "A foo"
    await db.add_new_package("bar", skip="nope")
    assert await db.get_package_skip("bar") == "nope"
    await db.skip_package("bar", "")
    assert await db.get_package_skip("bar") == ""
    assert await db.get_all_packages() == ["bar", "foo"]


@pytest_twisted.ensureDeferred
async def test_aliases_keep_latest_sighting(db):
    await db.add_new_package("foo-bar")
    await db.add_package_name("foo-bar", "Foo_Bar", T0)
    await db.add_package_name("foo-bar", "Foo_Bar", T0 - timedelta(days=1))
    await db.add_package_name("foo-bar", "foo.bar", T0 + timedelta(days=1))
    await db.add_package_name("foo-bar", "foo-bar", T0)
    aliases = await db.get_package_aliases("foo-bar")
    assert [(a.name, a.seen) for a in aliases] == [
        ("foo.bar", T0 + timedelta(days=1)), ("Foo_Bar", T0)]


@pytest_twisted.ensureDeferred
async def test_naive_datetimes_are_refused(db):
    await db.add_new_package("foo")
    with pytest.raises(ValueError):
        await db.add_package_name("foo", "Foo", datetime(2024, 1, 1))


@pytest_twisted.ensureDeferred
async def test_versions(db):
    await db.add_new_package("foo")
    assert await db.add_new_package_version(
        "foo", "1.0", T0, requires_python=">=3.9") is True
    assert await db.add_new_package_version("foo", "1.0") is False
    assert await db.add_new_package_version("foo", "2.0") is True
    assert await db.test_package_version("foo", "1.0") is True
    assert await db.test_package_version("foo", "3.0") is False
    assert await db.get_all_package_versions() == [("foo", "1.0"),
                                                   ("foo", "2.0")]
    await db.skip_package_version("foo", "1.0", "binary only")
    assert await db.get_version_skip("foo", "1.0") == "binary only"
    await db.yank_version("foo", "1.0", "broken metadata")
    await db.update_version_details("foo", "1.0", requires_python=">=3.10")
    versions = {v.version: v for v in await db.get_project_versions("foo")}
    assert versions["1.0"].yanked is True
    assert versions["1.0"].yank_reason == "broken metadata"
    assert versions["1.0"].requires_python == ">=3.10"
    assert versions["1.0"].released == T0
    # a release with no time given is stamped now
    assert versions["2.0"].released > T0 + timedelta(days=365)
    await db.unyank_version("foo", "1.0")
    versions = {v.version: v for v in await db.get_project_versions("foo")}
    assert (versions["1.0"].yanked, versions["1.0"].yank_reason) == (False, "")


@pytest_twisted.ensureDeferred
async def test_a_release_of_an_unknown_package_is_an_error(db):
    with pytest.raises(psycopg2.IntegrityError):
        await db.add_new_package_version("ghost", "1.0")


@pytest_twisted.ensureDeferred
async def test_pypi_serial_only_moves_forward(db):
    assert await db.get_pypi_serial() == 0
    assert await db.set_pypi_serial(100) == 100
    assert await db.set_pypi_serial(50) == 100
    assert await db.get_pypi_serial() == 100


@pytest_twisted.ensureDeferred
async def test_build_abis_configured_and_skipped(db):
    await db.set_build_abis(["cp39", "cp311"])
    await db.skip_build_abi("cp311", "no builders")
    await db.set_build_abis(["cp39", "cp311", "cp313"])
    abis = {a.abi_tag: a.skip for a in
            await db.get_build_abis(include_skipped=True)}
    # an operator's reason is kept; a dropped ABI is "not configured"
    assert abis == {"cp39": "", "cp311": "no builders", "cp313": ""}
    await db.set_build_abis(["cp313"])
    assert [a.abi_tag for a in await db.get_build_abis()] == ["cp313"]
    abis = {a.abi_tag: a.skip for a in
            await db.get_build_abis(include_skipped=True)}
    assert abis["cp39"] == "not configured"
    with pytest.raises(psycopg2.Error, match="unknown ABI"):
        await db.skip_build_abi("cp27", "x")


@pytest_twisted.ensureDeferred
async def test_successful_build_records_files_and_dependencies(db):
    await db.set_build_abis(["cp39"])
    await release(db, "foo", "1.0")
    native = wheel("foo", "1.0", "cp39", "cp39", "linux_armv7l")
    build = success("foo", "1.0", "cp39", native, built_by=3)
    build = attrs.evolve(
        build,
        output="line\x00one\x1b[31mred\n",
        builder_label="pi4-01",
        dependencies={native.filename: [Dependency("apt", "libfoo1"),
                                        Dependency("unresolved", "libx.so"),
                                        Dependency("apt", "libfoo1")]},
    )
    build_id = await db.log_build(build)
    recorded = await db.get_build(build_id)
    assert (recorded.package, recorded.version, recorded.abi_tag,
            recorded.status, recorded.built_by, recorded.builder_label) == (
        "foo", "1.0", "cp39", True, 3, "pi4-01")
    assert recorded.duration == timedelta(seconds=5)
    output = await db.get_build_output(build_id)
    assert "\x00" not in output and "\x1b" not in output
    assert output.startswith("line\N{REPLACEMENT CHARACTER}one")
    assert await db.get_build_files(build_id) == [native]
    assert await db.get_file_dependencies(native.filename) == [
        Dependency("apt", "libfoo1"), Dependency("unresolved", "libx.so")]
    assert await db.get_version_files("foo", "1.0") == [native.filename]
    files = await db.get_project_files("foo")
    assert [(f.filename, f.filesize, f.build_id) for f in files] == [
        (native.filename, 1234, build_id)]


@pytest_twisted.ensureDeferred
async def test_rebuilt_file_replaces_the_earlier_record(db):
    await db.set_build_abis(["cp39"])
    await release(db, "foo", "1.0")
    first = await db.log_build(success(
        "foo", "1.0", "cp39", wheel("foo", "1.0", "py3", "none", "any")))
    await db.delete_build("foo", "1.0")
    second = await db.log_build(success(
        "foo", "1.0", "cp39", wheel("foo", "1.0", "py3", "none", "any")))
    assert second != first
    assert [f.build_id for f in await db.get_project_files("foo")] == [second]


@pytest_twisted.ensureDeferred
async def test_success_without_files_is_refused(db):
    await db.set_build_abis(["cp39"])
    await release(db, "foo", "1.0")
    with pytest.raises(psycopg2.Error, match="must have files"):
        await db.log_build(success("foo", "1.0", "cp39"))
    assert await db.get_project_versions("foo") != []
    assert (await db.get_statistics()).builds_count == 0


@pytest_twisted.ensureDeferred
async def test_failed_build_records_log_and_reason(db):
    await db.set_build_abis(["cp39", "cp311"])
    await release(db, "foo", "1.0")
    build_id = await db.log_build(failure("foo", "1.0", "cp39",
                                          reason="timed out after 3h"))
    build = await db.get_build(build_id)
    assert (build.status, build.reason) == (False, "timed out after 3h")
    assert await db.get_build_output(build_id) == "boom"
    versions = await db.get_project_versions("foo")
    assert versions[0].builds_failed == ("cp39",)
    assert versions[0].builds_succeeded == ()
    assert await db.get_build(build_id + 1000) is None


@pytest_twisted.ensureDeferred
async def test_a_build_with_a_token_is_recorded_once(db, test_db):
    await db.set_build_abis(["cp39"])
    await release(db, "foo", "1.0")
    await release(db, "foo", "2.0")
    one = wheel("foo", "1.0", "cp39", "cp39", "linux_armv7l")
    built = attrs.evolve(success("foo", "1.0", "cp39", one), token="a" * 64)
    first = await db.log_build(built)
    # reported again (a reconnection, a retried commit): the same build
    assert await db.log_build(built) == first
    failed = attrs.evolve(failure("foo", "2.0", "cp39"), token="b" * 64)
    second = await db.log_build(failed)
    assert await db.log_build(failed) == second != first
    assert test_db.sql("SELECT build_id, build_token FROM builds "
                       "ORDER BY build_id") == [(first, "a" * 64),
                                                (second, "b" * 64)]
    assert (await db.get_statistics()).builds_count == 2
    # without a token every report is a build of its own, as before
    await db.log_build(failure("foo", "2.0", "cp39"))
    await db.log_build(failure("foo", "2.0", "cp39"))
    assert (await db.get_statistics()).builds_count == 4


@pytest_twisted.ensureDeferred
async def test_deleting_returns_the_files_to_remove(db):
    await db.set_build_abis(["cp39"])
    await release(db, "foo", "1.0")
    await release(db, "foo", "2.0")
    one = wheel("foo", "1.0", "py3", "none", "any")
    two = wheel("foo", "2.0", "py3", "none", "any")
    await db.log_build(success("foo", "1.0", "cp39", one))
    await db.log_build(success("foo", "2.0", "cp39", two))
    assert await db.delete_version("foo", "1.0") == [one.filename]
    assert await db.test_package_version("foo", "1.0") is False
    assert await db.delete_package("foo") == [two.filename]
    assert await db.test_package("foo") is False
    assert (await db.get_statistics()).files_count == 0


@pytest_twisted.ensureDeferred
async def test_preinstalled_apt_packages(db):
    await db.set_build_abis(["cp39"])
    await db.add_preinstalled_apt_packages("cp39", ["libc6", "zlib1g"])
    await db.add_preinstalled_apt_packages("cp39", ["libc6"])
    assert await db.get_preinstalled_apt_packages("cp39") == ["libc6",
                                                              "zlib1g"]


@pytest_twisted.ensureDeferred
async def test_statistics_and_search_index(db, test_db):
    await db.set_build_abis(["cp39"])
    await release(db, "foo", "1.0")
    await release(db, "bar", "1.0")
    await db.set_package_description("foo", "The foo")
    pure = wheel("foo", "1.0", "py3", "none", "any")
    await db.log_build(success("foo", "1.0", "cp39", pure))
    await db.log_build(failure("bar", "1.0", "cp39"))
    now = datetime.now(timezone.utc)
    client = ClientDetails(arch="armv7l", py_name="CPython", py_version="3.9",
                           installer_name="pip", installer_version="24.0")
    await db.log_download(DownloadHit(pure.filename, "192.0.2.1", now, client))
    await db.log_download(DownloadHit(pure.filename, "2001:db8::1",
                                      now - timedelta(days=40)))
    await db.log_search(SearchHit("foo", "192.0.2.1", now, client))
    await db.log_project(PageHit("foo", "192.0.2.1", now, "Mozilla/5.0"))
    await db.log_json(PageHit("foo", "192.0.2.1", now, "curl/8", bot=True))
    await db.log_page(PageHit("index.html", "192.0.2.1", now, None))
    stats = await db.get_statistics()
    assert (stats.packages_count, stats.packages_built, stats.versions_count,
            stats.versions_tried, stats.builds_count,
            stats.builds_count_success, stats.builds_count_last_hour,
            stats.files_count, stats.builds_size,
            stats.downloads_last_month, stats.downloads_all) == (
        2, 1, 2, 2, 2, 1, 2, 1, 1234, 1, 2)
    assert stats.builds_time == timedelta(seconds=10)
    index = await db.get_search_index()
    assert [(e.package, e.description, e.downloads_recent, e.downloads_all)
            for e in index] == [("foo", "The foo", 1, 2), ("bar", "", 0, 0)]
    # every hit landed in its own table, as given
    assert test_db.sql("SELECT arch, installer_name FROM downloads "
                       "WHERE accessed_by = '192.0.2.1'") == [
        ("armv7l", "pip")]
    assert test_db.sql("SELECT count(*) FROM searches")[0][0] == 1
    assert test_db.sql("SELECT bot FROM project_json_downloads") == [(True,)]
    assert test_db.sql("SELECT page FROM web_page_hits") == [("index.html",)]


@pytest_twisted.ensureDeferred
async def test_malformed_address_is_an_error_not_a_row(db, test_db):
    with pytest.raises(psycopg2.DataError):
        await db.log_page(PageHit("index.html", "not-an-address",
                                  datetime.now(timezone.utc)))
    assert test_db.sql("SELECT count(*) FROM web_page_hits")[0][0] == 0


@pytest_twisted.ensureDeferred
async def test_rewrites_pending_change_row_by_row(db):
    first = [RewritePending("foo", T0, "BOTH"),
             RewritePending("bar", T0 + timedelta(seconds=1), "PROJECT")]
    await db.update_rewrites_pending((), first)
    assert await db.load_rewrites_pending() == first
    # loading does not consume: a crash after loading loses nothing
    assert await db.load_rewrites_pending() == first
    # a later request widens a waiting one and keeps its time; a narrower
    # one leaves it as it is
    await db.update_rewrites_pending((), [
        RewritePending("bar", T0 + timedelta(seconds=5), "BOTH"),
        RewritePending("foo", T0 + timedelta(seconds=5), "PROJECT"),
        RewritePending("baz", T0 + timedelta(seconds=5), "PROJECT")])
    assert await db.load_rewrites_pending() == [
        RewritePending("foo", T0, "BOTH"),
        RewritePending("bar", T0 + timedelta(seconds=1), "BOTH"),
        RewritePending("baz", T0 + timedelta(seconds=5), "PROJECT")]
    # written ones go; one written and asked for again in the same save
    # stays
    await db.update_rewrites_pending(
        ["foo", "bar", "nothing"],
        [RewritePending("bar", T0 + timedelta(seconds=9), "PROJECT")])
    assert await db.load_rewrites_pending() == [
        RewritePending("baz", T0 + timedelta(seconds=5), "PROJECT"),
        RewritePending("bar", T0 + timedelta(seconds=9), "PROJECT")]
    await db.update_rewrites_pending(["bar", "baz"], [])
    assert await db.load_rewrites_pending() == []


def test_master_role_can_only_call_functions(test_db):
    conn = psycopg2.connect(test_db.master_dsn)
    try:
        for statement in (
            "SELECT * FROM packages",
            "INSERT INTO packages (package) VALUES ('evil')",
            "UPDATE configuration SET pypi_serial = 0",
            "DELETE FROM build_queue",
            "CREATE TABLE mine (x integer)",
        ):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                with conn.cursor() as cursor:
                    cursor.execute(statement)
            conn.rollback()
        with conn.cursor() as cursor:
            cursor.execute("SELECT add_new_package('fine')")
            assert cursor.fetchone() == (True,)
        conn.commit()
    finally:
        conn.close()
    roles = test_db.sql("SELECT rolsuper, rolcreaterole, rolcreatedb "
                        "FROM pg_roles WHERE rolname = 'piwheels'")
    assert roles == [(False, False, False)]
