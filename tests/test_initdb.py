"""piw-initdb against the real server: create, nothing to do, upgrade,
refusals, prompts and exit codes."""

import io
import os
import subprocess
import sys
from pathlib import Path

from piwtwist import initdb
from piwtwist.db import schema
from tests.conftest import MASTER_ROLE, run_sql

OLD_SCHEMA = Path(__file__).parent / "data" / "create_piwheels_0.1.sql"


def run_initdb(*args, answers=()):
    """piw-initdb's main with canned answers; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    replies = iter(answers)

    def ask(prompt):
        out.write(prompt)
        try:
            return next(replies)
        except StopIteration:
            raise EOFError from None

    code = initdb.main(["-c", os.devnull, *args], ask=ask, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def schema_version(database):
    return database.sql("SELECT version FROM configuration")[0][0]


def test_creates_then_reports_current(empty_db):
    code, out, err = run_initdb("-d", empty_db.superuser_dsn, "-y")
    assert (code, err) == (0, "")
    assert f"Created schema version {schema.SCHEMA_VERSION}" in out
    assert schema_version(empty_db) == schema.SCHEMA_VERSION
    code, out, err = run_initdb("-d", empty_db.superuser_dsn, "-y")
    assert code == 0
    assert "nothing to do" in out


def test_asks_first_and_changes_nothing_when_declined(empty_db):
    code, out, _ = run_initdb("-d", empty_db.superuser_dsn, answers=["n"])
    assert code == 2
    assert "Create the piwtwist schema" in out and "[y/N]" in out
    assert "Nothing was changed" in out
    assert empty_db.sql("SELECT to_regclass('configuration')") == [(None,)]
    # no terminal to answer at all counts as "no"
    code, _, _ = run_initdb("-d", empty_db.superuser_dsn)
    assert code == 2
    code, out, _ = run_initdb("-d", empty_db.superuser_dsn, answers=["yes"])
    assert code == 0
    assert schema_version(empty_db) == schema.SCHEMA_VERSION


def test_master_role_must_exist_and_not_be_superuser(empty_db, pg_cluster):
    code, _, err = run_initdb("-d", empty_db.superuser_dsn, "-u", "nobody",
                              "-y")
    assert code == 1
    assert "role 'nobody' does not exist" in err
    code, _, err = run_initdb("-d", empty_db.superuser_dsn, "-u", "postgres",
                              "-y")
    assert code == 1
    assert "is a superuser" in err
    assert empty_db.sql("SELECT to_regclass('configuration')") == [(None,)]


def test_must_connect_as_superuser(empty_db):
    dsn = empty_db.cluster.dsn(empty_db.name, MASTER_ROLE)
    code, _, err = run_initdb("-d", dsn, "-y")
    assert code == 1
    assert "must connect as a superuser" in err


def test_unreachable_database_is_one_clear_line(tmp_path):
    code, _, err = run_initdb("-d", f"host={tmp_path} dbname=x", "-y")
    assert code == 1
    assert err.startswith("piw-initdb: cannot connect to the database")
    assert "Traceback" not in err


def test_refuses_a_newer_schema(test_db):
    test_db.sql("UPDATE configuration SET version = '9.0'")
    code, _, err = run_initdb("-d", test_db.superuser_dsn, "-y")
    assert code == 1
    assert "9.0" in err and "refusing to downgrade" in err
    assert schema_version(test_db) == "9.0"


def test_refuses_a_version_with_no_upgrade_path(test_db):
    test_db.sql("UPDATE configuration SET version = '0.0.1'")
    code, _, err = run_initdb("-d", test_db.superuser_dsn, "-y")
    assert code == 1
    assert "no upgrade script leads from 0.0.1" in err


def test_refuses_a_database_that_is_not_piwtwists(empty_db):
    empty_db.sql("CREATE TABLE customers (id integer)")
    code, _, err = run_initdb("-d", empty_db.superuser_dsn, "-y")
    assert code == 1
    assert "not a piwtwist schema" in err


def test_usage_errors_exit_2(empty_db):
    code, _, err = run_initdb("--no-such-option")
    assert code == 2
    assert "piw-initdb:" in err and "--help" in err


def load_old_schema(database):
    sql = schema.render(OLD_SCHEMA.read_text(), MASTER_ROLE)
    run_sql(database.superuser_dsn, sql)
    database.sql("""
        INSERT INTO packages (package) VALUES ('foo'), ('bar');
        INSERT INTO versions (package, version, released)
            VALUES ('foo', '1.0', '2020-01-01Z'), ('bar', '1.0', '2021-01-01Z');
        INSERT INTO build_abis (abi_tag) VALUES ('cp39'), ('cp311');
        INSERT INTO builds (package, version, built_by, duration, status,
                            abi_tag)
            VALUES ('foo', '1.0', 1, '5 seconds', true, 'cp39');
        INSERT INTO files VALUES ('foo-1.0-cp39-cp39-linux_armv7l.whl', 1, 10,
            repeat('a', 64), 'foo', '1.0', 'cp39', 'cp39', 'linux_armv7l');
        INSERT INTO dependencies VALUES
            ('foo-1.0-cp39-cp39-linux_armv7l.whl', '', 'libodd.so.1'),
            ('foo-1.0-cp39-cp39-linux_armv7l.whl', 'apt', 'libc6');
    """)




def catalog(database):
    return {name: database.sql(query)
            for name, query in schema.CATALOG_QUERIES.items()}


def test_upgrade_from_the_first_release_equals_a_fresh_create(
        empty_db, test_db):
    load_old_schema(empty_db)
    code, out, err = run_initdb("-d", empty_db.superuser_dsn, "-y")
    assert (code, err) == (0, "")
    assert f"Upgraded {empty_db.name} from 0.1 to {schema.SCHEMA_VERSION}" in out
    upgraded, fresh = catalog(empty_db), catalog(test_db)
    for part in schema.CATALOG_QUERIES:
        assert upgraded[part] == fresh[part], part
    # the data came along and was brought up to date
    assert empty_db.sql("SELECT tool, dependency FROM dependencies "
                        "ORDER BY 1") == [("apt", "libc6"),
                                          ("unresolved", "libodd.so.1")]
    assert empty_db.sql("SELECT abi_tag, package FROM build_queue "
                        "ORDER BY 1, 2") == [("cp311", "foo"), ("cp39", "bar")]
    assert empty_db.sql("SELECT package, name FROM package_names "
                        "ORDER BY 1") == [("bar", "bar"), ("foo", "foo")]


def test_upgrade_prompt_names_both_versions(empty_db):
    load_old_schema(empty_db)
    code, out, _ = run_initdb("-d", empty_db.superuser_dsn, answers=["n"])
    assert code == 2
    assert f"from schema version 0.1 to {schema.SCHEMA_VERSION}?" in out
    assert schema_version(empty_db) == "0.1"


def test_failed_script_changes_nothing(empty_db, tmp_path, monkeypatch):
    broken = tmp_path / "sql"
    broken.mkdir()
    (broken / "create_piwheels.sql").write_text(
        "CREATE TABLE configuration (id integer);\nTHIS IS NOT SQL;\n")
    monkeypatch.setattr(schema, "sql_dir", lambda: broken)
    code, _, err = run_initdb("-d", empty_db.superuser_dsn, "-y")
    assert code == 1
    assert "nothing was changed" in err
    assert empty_db.sql("SELECT to_regclass('configuration')") == [(None,)]


def test_installed_console_script(empty_db):
    """The real ``piw-initdb`` command, as an operator runs it."""
    script = Path(sys.executable).with_name("piw-initdb")
    result = subprocess.run(
        [str(script), "-c", os.devnull, "-d", empty_db.superuser_dsn, "-y"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert result.returncode == 0, result.stderr
    assert schema_version(empty_db) == schema.SCHEMA_VERSION
