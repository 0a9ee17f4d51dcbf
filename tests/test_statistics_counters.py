"""get_statistics() reads counters that triggers keep up to date; against a
real PostgreSQL, after every kind of change (cascades, skips, status
updates, downloads, transactions racing on one package), its figures must
equal what plain scans of the tables count."""

import threading
from datetime import datetime, timedelta, timezone

import attrs
import psycopg2
import pytest
import pytest_twisted

from piwtwist.db.records import ClientDetails, DownloadHit
from tests.test_db_queue import failure, release, success, wheel
from tests.test_initdb import load_old_schema, run_initdb

#: get_statistics() as it was before the counters: every figure a scan
SCANNED = """
    SELECT
        (SELECT COUNT(*) FROM packages WHERE skip = ''),
        (SELECT COUNT(DISTINCT b.package) FROM builds b WHERE b.status),
        (SELECT COUNT(*) FROM packages p JOIN versions v USING (package)
         WHERE p.skip = '' AND v.skip = ''),
        (SELECT COUNT(*) FROM (SELECT DISTINCT package, version
                               FROM builds) t),
        (SELECT COUNT(*) FROM builds),
        (SELECT COUNT(*) FROM builds WHERE status),
        (SELECT COUNT(*) FROM builds
         WHERE built_at > CURRENT_TIMESTAMP - INTERVAL '1 hour'),
        (SELECT COALESCE(SUM(duration), INTERVAL '0') FROM builds),
        (SELECT COUNT(*) FROM files),
        (SELECT COALESCE(SUM(filesize), 0)::BIGINT FROM files),
        (SELECT COALESCE(SUM(d.downloads), 0)::BIGINT FROM downloads_daily d
         WHERE d.day > (CURRENT_TIMESTAMP AT TIME ZONE 'UTC')::DATE - 30),
        (SELECT COALESCE(SUM(t.downloads), 0)::BIGINT FROM download_totals t)
"""

FIGURES = ("packages_count", "packages_built", "versions_count",
           "versions_tried", "builds_count", "builds_count_success",
           "builds_count_last_hour", "builds_time", "files_count",
           "builds_size", "downloads_last_month", "downloads_all")


def scanned(database):
    return dict(zip(FIGURES, database.sql(SCANNED)[0]))


async def kept(db):
    return attrs.asdict(await db.get_statistics())


async def assert_counted(db, test_db, step):
    counted, expected = await kept(db), scanned(test_db)
    assert counted == expected, step


def download(filename, when):
    client = ClientDetails(arch="armv7l", py_name="CPython",
                           py_version="3.11", installer_name="pip")
    return DownloadHit(filename, "192.0.2.7", when, client)


@pytest_twisted.ensureDeferred
async def test_every_kind_of_change_keeps_the_figures_exact(db, test_db):
    now = datetime.now(timezone.utc)
    await db.set_build_abis(["cp39", "cp311"])
    await assert_counted(db, test_db, "empty")

    await release(db, "foo", "1.0")
    await release(db, "foo", "2.0")
    await release(db, "foo", "3.0", skip="binary only")
    await release(db, "bar", "1.0")
    await release(db, "bar", "2.0")
    await db.add_new_package("quiet", skip="excluded")
    await db.add_new_package_version("quiet", "1.0")
    await assert_counted(db, test_db, "releases")
    assert (await kept(db))["versions_count"] == 4

    foo1 = wheel("foo", "1.0", "cp39", "cp39", "linux_armv7l")
    foo1_none = wheel("foo", "1.0", "py3", "none", "any")
    await db.log_build(success("foo", "1.0", "cp39", foo1, foo1_none))
    await db.log_build(failure("foo", "1.0", "cp311"))
    await db.log_build(failure("foo", "2.0", "cp39"))
    await db.log_build(failure("foo", "2.0", "cp39"))
    await db.log_build(success("bar", "1.0", "cp39",
                               wheel("bar", "1.0", "py3", "none", "any")))
    await db.log_build(success("quiet", "1.0", "cp39",
                               wheel("quiet", "1.0", "py3", "none", "any")))
    await assert_counted(db, test_db, "builds")
    figures = await kept(db)
    assert (figures["packages_built"], figures["versions_tried"],
            figures["builds_count"], figures["files_count"]) == (3, 4, 6, 4)

    # the same token reported twice is one build
    again = attrs.evolve(failure("bar", "2.0", "cp39"), token="c" * 64)
    await db.log_build(again)
    await db.log_build(again)
    await assert_counted(db, test_db, "a build reported twice")

    # skips: a skipped package's versions leave versions_count and come back
    await db.skip_package("foo", "operator says no")
    await assert_counted(db, test_db, "package skipped")
    await db.skip_package("foo", "still no")
    await db.skip_package_version("foo", "1.0", "binary only")
    await assert_counted(db, test_db, "version skipped in a skipped package")
    await db.skip_package("foo", "")
    await db.skip_package("quiet", "")
    await db.skip_package_version("foo", "3.0", "")
    await assert_counted(db, test_db, "unskipped")

    # a file replaced by an operator's rebuild, failure classes, a status
    # changed by hand
    await db.log_build(success("bar", "1.0", "cp39",
                               attrs.evolve(wheel("bar", "1.0", "py3",
                                                  "none", "any"),
                                            filesize=999,
                                            filehash="cd" * 32)),
                       replace_files=True)
    await assert_counted(db, test_db, "file replaced")
    failed = [row[0] for row in test_db.sql(
        "SELECT build_id FROM builds WHERE NOT status ORDER BY 1")]
    await db.set_failure_classes([(failed[0], "missing-header", "apt")])
    await assert_counted(db, test_db, "failure classes")
    test_db.sql("UPDATE builds SET status = NOT status, "
                "duration = duration * 3 WHERE package = 'bar'")
    await assert_counted(db, test_db, "status updated")
    test_db.sql("UPDATE builds SET status = NOT status "
                "WHERE package = 'bar'")
    await assert_counted(db, test_db, "status updated back")

    # downloads: today, last week, two months ago, and a batch of several
    await db.log_download(download(foo1.filename, now))
    await db.log_download(download(foo1.filename, now - timedelta(days=6)))
    await db.log_download(download(foo1_none.filename,
                                   now - timedelta(days=60)))
    for _ in range(3):
        await db.log_download(download(foo1_none.filename, now))
    await assert_counted(db, test_db, "downloads")
    figures = await kept(db)
    assert (figures["downloads_last_month"], figures["downloads_all"]) == (
        5, 6)

    # deletions, each cascading: builds of a release, failures of a class,
    # a release, a package with everything under it
    await db.delete_build("foo", "2.0")
    await assert_counted(db, test_db, "builds of a release deleted")
    await db.log_build(failure("foo", "2.0", "cp39"))
    await db.log_build(failure("bar", "2.0", "cp311"))
    await db.set_failure_classes([
        (row[0], "timeout", "") for row in test_db.sql(
            "SELECT build_id FROM builds WHERE NOT status")])
    assert await db.delete_failures_of_class("timeout") != []
    await assert_counted(db, test_db, "failures of a class deleted")
    await db.delete_version("foo", "1.0")
    await assert_counted(db, test_db, "release deleted")
    await db.log_build(success("foo", "2.0", "cp39",
                               wheel("foo", "2.0", "py3", "none", "any")))
    await db.delete_package("foo")
    await assert_counted(db, test_db, "package deleted")
    await db.delete_package("quiet")
    await db.delete_package("bar")
    await assert_counted(db, test_db, "everything deleted")
    figures = await kept(db)
    assert figures["packages_count"] == figures["builds_count"] == 0
    assert figures["downloads_all"] == 6, "downloads outlive their packages"

    # the counters kept agree with a count from scratch
    assert test_db.sql("SELECT recount_statistics()") == [(True,)]


def test_many_rows_in_one_statement(test_db):
    """Statements that change many rows of one release at once, as a
    hand edit or a cascade does, count each release once."""
    test_db.sql("""
        INSERT INTO packages (package, skip)
            VALUES ('foo', ''), ('bar', ''), ('baz', 'no');
        INSERT INTO versions (package, version, skip)
            SELECT p, v, CASE WHEN v = '3' THEN 'binary only' ELSE '' END
            FROM unnest(ARRAY['foo', 'bar', 'baz']) AS p,
                 unnest(ARRAY['1', '2', '3']) AS v;
        INSERT INTO builds (package, version, built_by, duration, status,
                            abi_tag)
            SELECT p, v, 1, INTERVAL '1 minute', s, a
            FROM unnest(ARRAY['foo', 'bar', 'baz']) AS p,
                 unnest(ARRAY['1', '2']) AS v,
                 unnest(ARRAY[true, false]) AS s,
                 unnest(ARRAY['cp39', 'cp311']) AS a;
        INSERT INTO files (filename, build_id, filesize, filehash,
                           package_tag, package_version_tag, py_version_tag,
                           abi_tag, platform_tag)
            SELECT 'f' || build_id || '.whl', build_id, 100,
                   repeat('a', 64), package, version, 'py3', 'none', 'any'
            FROM builds WHERE status;
    """)
    figures = scanned(test_db)
    assert (figures["versions_count"], figures["versions_tried"],
            figures["builds_count"]) == (4, 6, 24)
    assert test_db.sql("SELECT recount_statistics()") == [(True,)]
    test_db.sql("DELETE FROM builds WHERE abi_tag = 'cp39' "
                "AND package <> 'bar'")
    test_db.sql("DELETE FROM builds WHERE package = 'bar' AND version = '1'")
    test_db.sql("UPDATE versions SET skip = 'gone' WHERE version = '2'")
    test_db.sql("DELETE FROM packages WHERE package IN ('baz', 'foo')")
    assert test_db.sql("SELECT recount_statistics()") == [(True,)]
    assert test_db.sql("SELECT versions_tried, builds_count "
                       "FROM get_statistics()") == [(1, 4)]


def test_a_counter_gone_wrong_is_found_and_mended(test_db):
    test_db.sql("INSERT INTO packages (package) VALUES ('foo'), ('bar')")
    assert test_db.sql("SELECT recount_statistics()") == [(True,)]
    test_db.sql("UPDATE statistics_counters SET packages = packages + 5 "
                "WHERE slot = 3")
    assert test_db.sql("SELECT packages_count FROM get_statistics()") == [
        (7,)]
    assert test_db.sql("SELECT recount_statistics()") == [(False,)]
    assert test_db.sql("SELECT packages_count FROM get_statistics()") == [
        (2,)]
    test_db.sql("UPDATE package_counters SET builds_success = 1 "
                "WHERE package = 'foo'")
    assert test_db.sql("SELECT recount_statistics()") == [(False,)]
    assert test_db.sql("SELECT recount_statistics()") == [(True,)]


def test_the_master_cannot_add_to_the_counters(test_db):
    conn = psycopg2.connect(test_db.master_dsn)
    try:
        with conn, conn.cursor() as cursor:
            with pytest.raises(psycopg2.errors.InsufficientPrivilege,
                               match="only the statistics triggers"):
                cursor.execute("SELECT add_statistics(0::SMALLINT, "
                               "packages => 1000)")
        with conn, conn.cursor() as cursor:
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cursor.execute("UPDATE statistics_counters SET packages = 1")
    finally:
        conn.close()


class Racer:
    """A transaction on a connection of the master's role, whose statements
    run in a thread so that one may wait for another's lock."""

    def __init__(self, test_db):
        self.conn = psycopg2.connect(test_db.master_dsn)
        self.thread = None
        self.error = None

    def run(self, sql, params=None):
        with self.conn.cursor() as cursor:
            cursor.execute(sql, params)

    def start(self, sql, params=None):
        def target():
            try:
                self.run(sql, params)
            except Exception as e:  # reported by finish()
                self.error = e
        self.thread = threading.Thread(target=target)
        self.thread.start()

    def waiting(self):
        """Whether the thread's statement is still blocked."""
        self.thread.join(0.5)
        return self.thread.is_alive()

    def finish(self):
        self.thread.join(10)
        assert not self.thread.is_alive()
        if self.error:
            raise self.error
        self.conn.commit()

    def close(self):
        self.conn.close()


LOG_FAILURE = ("SELECT log_build_failure(%s, %s, 1, INTERVAL '5 seconds', "
               "'cp39', 'boom')")


@pytest.mark.parametrize("first_commits", [True, False])
def test_racing_transactions_on_one_release(test_db, first_commits):
    """Two transactions record the first builds of one release and of one
    package at once; then one deletes the release's builds while the other
    records another.  The second waits for the first's lock on the
    package's counters and counts after it, so nothing is counted twice or
    lost."""
    test_db.sql("""
        INSERT INTO build_abis (abi_tag) VALUES ('cp39');
        INSERT INTO packages (package) VALUES ('foo');
        INSERT INTO versions (package, version) VALUES ('foo', '1.0');
    """)
    one, two = Racer(test_db), Racer(test_db)
    try:
        one.run(LOG_FAILURE, ("foo", "1.0"))
        two.start(LOG_FAILURE, ("foo", "1.0"))
        assert two.waiting(), "the second build should wait for the first"
        if first_commits:
            one.conn.commit()
        else:
            one.conn.rollback()
        two.finish()
        expected_builds = 2 if first_commits else 1
        assert test_db.sql("SELECT versions_tried, builds_count "
                           "FROM get_statistics()") == [(1, expected_builds)]

        one.run("SELECT delete_build('foo', '1.0')")
        two.start(LOG_FAILURE, ("foo", "1.0"))
        assert two.waiting()
        one.conn.commit()
        two.finish()
        assert test_db.sql("SELECT versions_tried, builds_count "
                           "FROM get_statistics()") == [(1, 1)]
        assert test_db.sql("SELECT recount_statistics()") == [(True,)]
    finally:
        one.close()
        two.close()


def test_builds_of_other_packages_do_not_wait(test_db):
    """Per-package rows and slots: a transaction recording a build of one
    package does not hold up a build of another."""
    test_db.sql("""
        INSERT INTO build_abis (abi_tag) VALUES ('cp39');
        INSERT INTO packages (package) VALUES ('foo'), ('bar');
        INSERT INTO versions (package, version)
            VALUES ('foo', '1.0'), ('bar', '1.0');
    """)
    slots = test_db.sql("SELECT statistics_slot('foo'), "
                        "statistics_slot('bar')")[0]
    assert slots[0] != slots[1], "pick two packages in different slots"
    one, two = Racer(test_db), Racer(test_db)
    try:
        one.run(LOG_FAILURE, ("foo", "1.0"))
        two.start(LOG_FAILURE, ("bar", "1.0"))
        assert not two.waiting()
        two.finish()
        one.conn.commit()
        assert test_db.sql("SELECT versions_tried FROM get_statistics()") \
            == [(2,)]
    finally:
        one.close()
        two.close()


def test_upgrade_from_0_1_fills_the_counters(empty_db):
    load_old_schema(empty_db)
    empty_db.sql("""
        INSERT INTO downloads (filename, accessed_by, accessed_at)
        VALUES ('foo-1.0-cp39-cp39-linux_armv7l.whl', '192.0.2.1',
                CURRENT_TIMESTAMP),
               ('foo-1.0-cp39-cp39-linux_armv7l.whl', '192.0.2.1',
                CURRENT_TIMESTAMP - INTERVAL '90 days')
    """)
    code, _, err = run_initdb("-d", empty_db.superuser_dsn, "-y")
    assert (code, err) == (0, "")
    counted = dict(zip(FIGURES, empty_db.sql(
        "SELECT * FROM get_statistics()")[0]))
    assert counted == scanned(empty_db)
    assert (counted["packages_count"], counted["versions_count"],
            counted["packages_built"], counted["files_count"],
            counted["downloads_last_month"], counted["downloads_all"]) == (
        2, 2, 1, 1, 1, 2)
    assert empty_db.sql("SELECT recount_statistics()") == [(True,)]
