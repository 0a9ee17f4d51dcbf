"""``piw-initdb``: create piwtwist's database schema, or upgrade it.

Run as the cluster superuser.  It looks at the database first (empty,
current, older, newer, or not piwtwist's), says what it is about to do and
asks before changing anything; the whole create or upgrade runs in one
transaction, so a failure leaves the database as it was.  This is a one-shot
command-line tool, so it talks to PostgreSQL synchronously.
"""

import sys

import attrs
import psycopg2

from .config import (EXIT_FAILURE, EXIT_SUCCESS, EXIT_USAGE, ToolOptions,
                     confirm, run_tool)
from .db import schema


class Options(ToolOptions):
    """piw-initdb [options]"""

    config_section = "initdb"
    synopsis = "Usage: piw-initdb [options]"
    longdesc = ("Create the piwtwist database schema in an empty database, or "
                "upgrade an older one to this version. Connect as the "
                "cluster superuser; the master's role must already exist.")
    optParameters = [
        ["dsn", "d", "dbname=piwheels",
         "The database to initialize, as a libpq connection string or URI; "
         "connect as a superuser."],
        ["user", "u", "piwheels",
         "The (non-superuser) role the master connects as."],
    ]
    optFlags = [
        ["yes", "y", "Answer yes to every question."],
    ]


@attrs.frozen
class DatabaseState:
    """What piw-initdb found: ``kind`` is empty, current, older, newer or
    foreign; ``version`` the schema version when there is one."""

    kind: str
    version: str | None = None


class InitError(Exception):
    """A problem piw-initdb reports in one sentence and exits 1 for."""


def inspect_database(cursor, target=schema.SCHEMA_VERSION):
    cursor.execute(
        "SELECT count(*) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'm', 'p')")
    (relations,) = cursor.fetchone()
    if relations == 0:
        return DatabaseState("empty")
    cursor.execute("SELECT to_regclass('public.configuration') IS NOT NULL")
    if not cursor.fetchone()[0]:
        return DatabaseState("foreign")
    try:
        cursor.execute("SELECT version FROM configuration WHERE id = 1")
        row = cursor.fetchone()
    except psycopg2.Error:
        cursor.connection.rollback()
        return DatabaseState("foreign")
    if row is None:
        return DatabaseState("foreign")
    version = row[0]
    try:
        key = schema.version_key(version)
    except schema.SchemaError:
        return DatabaseState("foreign", version)
    if key == schema.version_key(target):
        return DatabaseState("current", version)
    if key > schema.version_key(target):
        return DatabaseState("newer", version)
    return DatabaseState("older", version)


def check_roles(cursor, user):
    """The connecting role must be a superuser, the master's role must exist
    and must not be one."""
    cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    row = cursor.fetchone()
    if not (row and row[0]):
        raise InitError("piw-initdb must connect as a superuser (for example "
                        "the postgres role); the role it connected as is not "
                        "one")
    cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (user,))
    row = cursor.fetchone()
    if row is None:
        raise InitError(f"the master's role {user!r} does not exist; create it "
                        f"first (createuser {user})")
    if row[0]:
        raise InitError(f"the master's role {user!r} is a superuser; it must be "
                        f"an ordinary role so that it can only use piwtwist's "
                        f"functions")


def initialize(options, ask=input, out=sys.stdout):
    """Do piw-initdb's work; returns the exit code."""
    try:
        conn = psycopg2.connect(options["dsn"])
    except psycopg2.Error as e:
        raise InitError(f"cannot connect to the database: "
                        f"{str(e).strip()}") from None
    try:
        with conn.cursor() as cursor:
            check_roles(cursor, options["user"])
            state = inspect_database(cursor)
            conn.rollback()
            database = conn.info.dbname
            target = schema.SCHEMA_VERSION
            if state.kind == "current":
                out.write(f"Database {database} is already at schema version "
                          f"{target}; nothing to do.\n")
                return EXIT_SUCCESS
            if state.kind == "newer":
                raise InitError(
                    f"database {database} is at schema version "
                    f"{state.version}, newer than this piwtwist's {target}; "
                    f"refusing to downgrade it")
            if state.kind == "foreign":
                found = f" (version {state.version!r})" if state.version else ""
                raise InitError(
                    f"database {database} holds tables that are not a "
                    f"piwtwist schema{found}; use an empty database")
            if state.kind == "empty":
                script = schema.create_script(options["user"])
                question = (f"Create the piwtwist schema version {target} in "
                            f"database {database} for role "
                            f"{options['user']}?")
                done = f"Created schema version {target} in {database}.\n"
            else:
                try:
                    script = schema.upgrade_script(state.version,
                                                   options["user"])
                except schema.SchemaError as e:
                    raise InitError(str(e)) from None
                question = (f"Upgrade database {database} from schema "
                            f"version {state.version} to {target}?")
                done = (f"Upgraded {database} from {state.version} to "
                        f"{target}.\n")
            if not confirm(question, options["yes"], ask=ask, out=out):
                out.write("Nothing was changed.\n")
                return EXIT_USAGE
            try:
                cursor.execute(script)
                conn.commit()
            except psycopg2.Error as e:
                conn.rollback()
                raise InitError(f"the schema script failed and nothing was "
                                f"changed: {str(e).strip()}") from None
            out.write(done)
            return EXIT_SUCCESS
    finally:
        conn.close()


def main(argv=None, ask=input, out=None, err=None):
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err

    def run(options):
        try:
            return initialize(options, ask=ask, out=out)
        except InitError as e:
            err.write(f"piw-initdb: {e}\n")
            return EXIT_FAILURE

    return run_tool(Options, ["piw-initdb", *(sys.argv[1:] if argv is None
                                              else argv)], run, stderr=err)


if __name__ == "__main__":
    sys.exit(main())
