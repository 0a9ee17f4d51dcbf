"""Shared fixtures: one real PostgreSQL server for the whole run, a fresh
database with the current schema for every test that asks, and a check that
nothing logged a failure behind a test's back."""

import itertools
import os
import tempfile

import psycopg2
import pytest
import pytest_twisted
from twisted.logger import LogLevel, globalLogPublisher

from piwtwist.db import schema
from piwtwist.db.client import Database
from piwtwist.db.pool import ConnectionPool
from piwtwist.devcluster import PrivateCluster

MASTER_ROLE = "piwheels"
TEMPLATE = "piwtwist_template"
_database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def pg_cluster():
    """A private PostgreSQL cluster on a UNIX socket, for the whole run."""
    cluster = PrivateCluster(tempfile.mkdtemp(prefix="piwtwist-test-pg-"))
    cluster.start()
    cluster.psql(f"CREATE ROLE {MASTER_ROLE} LOGIN")
    cluster.psql(f"CREATE DATABASE {TEMPLATE}")
    run_sql(cluster.dsn(TEMPLATE), schema.create_script(MASTER_ROLE))
    yield cluster
    cluster.destroy()


def run_sql(dsn, sql, params=None):
    """Run *sql* synchronously in one transaction; for test set-up only."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute(sql, params)
            if cursor.description:
                return cursor.fetchall()
            return None
    finally:
        conn.close()


class TestDatabase:
    """A database of the test's own, with the dsn of the superuser and of
    the master's role."""

    def __init__(self, cluster, name):
        self.cluster = cluster
        self.name = name
        self.superuser_dsn = cluster.dsn(name)
        self.master_dsn = cluster.dsn(name, MASTER_ROLE)

    def sql(self, sql, params=None):
        """Run *sql* as the superuser (to arrange or inspect state)."""
        return run_sql(self.superuser_dsn, sql, params)


def _create_database(cluster, template):
    name = f"piwtwist_test_{next(_database_numbers)}"
    cluster.psql(f"CREATE DATABASE {name} TEMPLATE {template}")
    # database-level privileges are not copied from a template
    cluster.psql(f"REVOKE ALL ON DATABASE {name} FROM PUBLIC; "
                 f"GRANT CONNECT, TEMPORARY ON DATABASE {name} "
                 f"TO {MASTER_ROLE}")
    return TestDatabase(cluster, name)


@pytest.fixture
def test_db(pg_cluster):
    """A fresh database with the current schema."""
    database = _create_database(pg_cluster, TEMPLATE)
    yield database
    pg_cluster.psql(f"DROP DATABASE {database.name} WITH (FORCE)")


@pytest.fixture
def empty_db(pg_cluster):
    """A fresh database with nothing in it."""
    database = _create_database(pg_cluster, "template0")
    yield database
    pg_cluster.psql(f"DROP DATABASE {database.name} WITH (FORCE)")


@pytest_twisted.async_yield_fixture
async def pool(test_db, reactor):
    """A started connection pool, as the master's role."""
    connection_pool = ConnectionPool(test_db.master_dsn, reactor,
                                     retry_delays=(0.1, 0.2, 0.5, 1, 2))
    connection_pool.startService()
    await connection_pool.ready
    yield connection_pool
    await connection_pool.stopService()


@pytest.fixture
def db(pool):
    """The master's database client over a started pool."""
    return Database(pool)


@pytest.fixture
def reactor():
    from twisted.internet import reactor as global_reactor
    return global_reactor


@pytest.fixture(autouse=True)
def observe_errors():
    """Fail any test during which something logged an error or failure."""
    errors = []

    def observer(event):
        if event.get("log_failure") is not None or \
                event.get("log_level") in (LogLevel.error, LogLevel.critical):
            errors.append(event)

    globalLogPublisher.addObserver(observer)
    yield errors
    globalLogPublisher.removeObserver(observer)
    if errors:
        from twisted.logger import formatEventAsClassicLogText
        raise AssertionError("errors were logged:\n" + "".join(
            formatEventAsClassicLogText(e) for e in errors))


@pytest.fixture
def not_root(monkeypatch):
    """The services refuse root; option tests pretend not to be."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)


@pytest.fixture
def secret_file(tmp_path):
    """A shared secret file the services accept."""
    path = tmp_path / "secret"
    path.write_text("x" * 40 + "\n")
    os.chmod(path, 0o640)
    return path


@pytest.fixture
def served_index(tmp_path, reactor):
    """An empty PEP 503 index served over HTTP: (root, url). Tests put
    sdists in it with :func:`tests.sdists.make_simple_index`."""
    root = tmp_path / "index"
    root.mkdir()
    os.chmod(tmp_path, 0o755)
    from tests.e2e import serve_directory
    url, port = serve_directory(reactor, root)
    yield root, url + "/"
    port.stopListening()


@pytest.fixture
def served_deployment(test_db, served_index):
    """A :class:`tests.e2e.Deployment` whose builders build from *served_index*."""
    from tests.e2e import Deployment
    deployed = Deployment(test_db, served_index[1])
    yield deployed
    deployed.close()
