"""The connection pool: schema check, concurrency, and surviving a database
that goes away, against the real server."""

from datetime import datetime, timedelta, timezone

import attrs
import psycopg2
import pytest
import pytest_twisted
from twisted.internet import defer, task

from piwtwist.db.client import Database
from piwtwist.db.records import BuildResult
from piwtwist.db.pool import (
    ConnectionPool, DatabaseUnavailable, SchemaMismatch, resolve_dsn,
)
from piwtwist.db.schema import SCHEMA_VERSION

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


async def started_pool(dsn, reactor, pool_class=ConnectionPool, **kwargs):
    pool = pool_class(dsn, reactor, retry_delays=(0.1, 0.2), **kwargs)
    pool.startService()
    await pool.ready
    return pool


@pytest_twisted.ensureDeferred
async def test_refuses_a_database_of_another_version(test_db, reactor):
    test_db.sql("UPDATE configuration SET version = '0.1'")
    pool = ConnectionPool(test_db.master_dsn, reactor)
    pool.startService()
    with pytest.raises(SchemaMismatch) as caught:
        await pool.ready
    message = str(caught.value)
    assert "0.1" in message and SCHEMA_VERSION in message
    assert "piw-initdb" in message
    await pool.stopService()


@pytest_twisted.ensureDeferred
async def test_refuses_a_database_without_schema(empty_db, reactor):
    pool = ConnectionPool(empty_db.superuser_dsn, reactor)
    pool.startService()
    with pytest.raises(SchemaMismatch, match="run piw-initdb"):
        await pool.ready
    await pool.stopService()


@pytest_twisted.ensureDeferred
async def test_queries_wait_for_a_free_connection(test_db, reactor):
    pool = await started_pool(test_db.master_dsn, reactor, size=2)
    try:
        results = await defer.gatherResults([
            defer.Deferred.fromCoroutine(
                pool.run_query("SELECT pg_backend_pid() FROM pg_sleep(0.2)"))
            for _ in range(6)
        ])
        backends = {rows[0][0] for rows in results}
        assert len(backends) == 2
        assert pool._open == 2
    finally:
        await pool.stopService()


async def _timed(reactor, work):
    started = reactor.seconds()
    result = await work
    return result, reactor.seconds() - started


@pytest_twisted.ensureDeferred
async def test_a_saturated_bulk_lane_leaves_a_connection(test_db, reactor):
    pool = await started_pool(test_db.master_dsn, reactor, size=3)
    bulk = Database(pool.bulk())
    try:
        # a full rewrite's worth of slow page reads
        slow = [defer.Deferred.fromCoroutine(bulk.pool.run_query(
            "SELECT pg_backend_pid() FROM pg_sleep(0.4)")) for _ in range(8)]
        await task.deferLater(reactor, 0.05, lambda: None)
        assert pool._bulk_lent == 2 and len(pool._bulk_waiting) == 6
        # recording a build does not wait behind them
        _, took = await _timed(reactor, defer.Deferred.fromCoroutine(
            pool.run_query("SELECT 1")))
        assert took < 0.2
        results = await defer.gatherResults(slow)
        assert len({rows[0][0] for rows in results}) <= 2
        assert pool._bulk_lent == 0
    finally:
        await pool.stopService()


@pytest_twisted.ensureDeferred
async def test_ordinary_waiters_go_before_bulk_ones(test_db, reactor):
    pool = await started_pool(test_db.master_dsn, reactor, size=2)
    bulk = pool.bulk()
    order = []

    async def run(lane, name):
        await lane.run_query("SELECT pg_sleep(0.2)")
        order.append(name)

    try:
        work = [defer.Deferred.fromCoroutine(run(bulk, f"bulk{i}"))
                for i in range(3)]
        work.append(defer.Deferred.fromCoroutine(run(pool, "ordinary0")))
        await task.deferLater(reactor, 0.05, lambda: None)
        # both connections are busy now; the ordinary statement asked
        # last, yet runs before the two bulk ones still waiting
        work.append(defer.Deferred.fromCoroutine(run(pool, "ordinary1")))
        await defer.gatherResults(work)
        assert order.index("ordinary1") < order.index("bulk2")
        assert order[-1] == "bulk2"
        assert pool._bulk_lent == 0
    finally:
        await pool.stopService()


@pytest_twisted.ensureDeferred
async def test_bulk_lane_survives_killed_connections(
        test_db, reactor):
    pool = await started_pool(test_db.master_dsn, reactor, size=2)
    db = Database(pool.bulk())
    try:
        assert await db.get_schema_version() == SCHEMA_VERSION
        test_db.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE usename = 'piwheels' AND datname = %s",
                    (test_db.name,))
        await backends_gone(test_db, reactor)
        assert await db.get_schema_version() == SCHEMA_VERSION
        assert pool._bulk_lent == 0
    finally:
        await pool.stopService()


@pytest_twisted.ensureDeferred
async def test_the_reactor_keeps_running_during_a_slow_query(test_db, reactor):
    pool = await started_pool(test_db.master_dsn, reactor, size=1)
    ticks = []
    loop = task.LoopingCall(ticks.append, None)
    loop.clock = reactor
    loop.start(0.05)
    try:
        await pool.run_query("SELECT pg_sleep(0.5)")
    finally:
        loop.stop()
        await pool.stopService()
    assert len(ticks) >= 5


@pytest_twisted.ensureDeferred
async def test_survives_killed_connections(test_db, reactor):
    pool = await started_pool(test_db.master_dsn, reactor, size=2)
    db = Database(pool)
    try:
        assert await db.add_new_package("before") is True
        test_db.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE usename = 'piwheels' AND datname = %s",
                    (test_db.name,))
        await backends_gone(test_db, reactor)
        # closed while idle: noticed before use, so even a statement that
        # is not safe to repeat goes through on a new connection
        assert await db.add_new_package("after") is True
        assert await db.get_all_packages() == ["after", "before"]
    finally:
        await pool.stopService()


async def backends_gone(test_db, reactor):
    for _ in range(100):
        if not test_db.sql("SELECT 1 FROM pg_stat_activity WHERE usename = "
                           "'piwheels' AND datname = %s", (test_db.name,)):
            return
        await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError("the terminated backends did not go away")


class AnswerLosingPool(ConnectionPool):
    """Its connections run the next *lose* statements (committing them,
    as every statement outside a transaction does) and then fail as if the
    connection had died before the answer came back."""

    lose = 0

    async def _connect(self):
        connection = await super()._connect()
        run_query = connection.runQuery

        async def losing(*args, **kwargs):
            result = await run_query(*args, **kwargs)
            if self.lose:
                self.lose -= 1
                connection.close()
                raise psycopg2.OperationalError(
                    "server closed the connection unexpectedly")
            return result

        connection.runQuery = lambda *args, **kwargs: \
            defer.Deferred.fromCoroutine(losing(*args, **kwargs))
        return connection


@pytest_twisted.ensureDeferred
async def test_a_lost_answer_is_asked_again_only_when_that_is_safe(
        test_db, reactor):
    pool = await started_pool(test_db.master_dsn, reactor, size=1,
                              pool_class=AnswerLosingPool)
    db = Database(pool)
    try:
        await db.set_build_abis(["cp39"])
        await db.add_new_package("foo")
        await db.add_new_package_version("foo", "1.0", T0)
        # a read is simply asked again
        pool.lose = 1
        assert await db.test_package("foo") is True
        # a build with a token committed, its answer lost: asked again, it
        # answers with the build it recorded, once
        build = BuildResult(
            package="foo", version="1.0", abi_tag="cp39", built_by=1,
            duration=timedelta(seconds=5), status=False, output="boom",
            reason="it broke", token="c" * 64)
        pool.lose = 1
        build_id = await db.log_build(build)
        assert test_db.sql("SELECT build_id FROM builds") == [(build_id,)]
        # a write that is not safe to repeat is not repeated: the caller
        # learns that it may or may not have happened
        pool.lose = 1
        with pytest.raises(DatabaseUnavailable, match="may have taken"):
            await db.add_new_package("bar")
        assert await db.test_package("bar") is True
        pool.lose = 1
        with pytest.raises(DatabaseUnavailable):
            await db.log_build(attrs.evolve(build, token=None))
        assert len(test_db.sql("SELECT build_id FROM builds")) == 2
        assert pool.lose == 0
    finally:
        await pool.stopService()


@pytest_twisted.ensureDeferred
async def test_survives_a_database_restart(test_db, pg_cluster, reactor):
    pool = await started_pool(test_db.master_dsn, reactor, size=2)
    db = Database(pool)
    try:
        await db.add_new_package("before")
        pg_cluster.restart()
        assert await db.test_package("before") is True
        assert await db.add_new_package("after") is True
    finally:
        await pool.stopService()


@pytest_twisted.ensureDeferred
async def test_dead_database_gives_a_clear_error_then_recovers(
        test_db, pg_cluster, reactor):
    pool = await started_pool(test_db.master_dsn, reactor, size=1)
    db = Database(pool)
    try:
        pg_cluster.stop()
        try:
            with pytest.raises(DatabaseUnavailable,
                               match="cannot connect to the database"):
                await db.get_pypi_serial()
        finally:
            pg_cluster.start()
        # nothing was lost and the pool works again without a restart
        assert await db.get_pypi_serial() == 0
    finally:
        await pool.stopService()


@pytest_twisted.ensureDeferred
async def test_query_errors_are_the_callers_and_keep_the_connection(
        test_db, reactor):
    pool = await started_pool(test_db.master_dsn, reactor, size=1)
    try:
        with pytest.raises(psycopg2.errors.UndefinedFunction):
            await pool.run_query("SELECT no_such_function()")
        rows = await pool.run_query("SELECT 1 AS one")
        assert rows[0].one == 1
        assert pool._open == 1
    finally:
        await pool.stopService()


@pytest_twisted.ensureDeferred
async def test_queries_after_stop_fail_clearly(test_db, reactor):
    pool = await started_pool(test_db.master_dsn, reactor)
    await pool.stopService()
    with pytest.raises(DatabaseUnavailable, match="shutting down"):
        await pool.run_query("SELECT 1")


class FakeResolver:
    def __init__(self):
        self.asked = []

    def resolve(self, name):
        self.asked.append(name)
        return defer.succeed("192.0.2.7")


@pytest_twisted.ensureDeferred
async def test_host_names_are_resolved_before_libpq_sees_them():
    resolver = FakeResolver()
    params = await resolve_dsn("host=db.example dbname=piwheels", resolver)
    assert params["hostaddr"] == "192.0.2.7"
    assert params["host"] == "db.example"  # kept for TLS name checks
    for dsn in ("host=/run/postgresql dbname=piwheels",
                "host=127.0.0.1 dbname=piwheels",
                "postgresql:///piwheels",
                "host=db.example hostaddr=192.0.2.9 dbname=piwheels"):
        params = await resolve_dsn(dsn, resolver)
    assert resolver.asked == ["db.example"]
