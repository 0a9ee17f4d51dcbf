"""The schema scripts: which version this software expects, and how to get
an existing database there.

``sql/create_piwheels.sql`` creates the current schema;
``sql/update_piwheels_X_to_Y.sql`` moves a database from X to Y.  Scripts
name the master's role as ``@MASTER_ROLE@``; it is replaced by the quoted
role name before they run.
"""

import re

from ..resources import sql_dir

SCHEMA_VERSION = "0.2"
ROLE_PLACEHOLDER = "@MASTER_ROLE@"
_UPDATE_NAME = re.compile(
    r"^update_piwheels_(?P<old>\d+(?:\.\d+)*)_to_(?P<new>\d+(?:\.\d+)*)\.sql$")


#: What describes a schema in PostgreSQL's catalog, part by part: two
#: databases whose answers are equal have the same schema (an upgraded one
#: and a fresh one in the tests; a kept benchmark database and the current
#: script in bench/build_queue.py).
CATALOG_QUERIES = {
    "columns": """
        SELECT table_name, ordinal_position, column_name, data_type,
               character_maximum_length, column_default, is_nullable
        FROM information_schema.columns WHERE table_schema = 'public'
        ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' ORDER BY 1, 2""",
    "functions": """
        SELECT proname, pg_get_function_identity_arguments(oid),
               pg_get_function_result(oid), prosrc, prosecdef, provolatile,
               proconfig, proacl::text
        FROM pg_proc WHERE pronamespace = 'public'::regnamespace
        ORDER BY 1, 2""",
    "views": """
        SELECT viewname, definition FROM pg_views
        WHERE schemaname = 'public' ORDER BY 1""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid)
        FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2""",
    "table grants": """
        SELECT relname, relkind, relpersistence, relacl::text FROM pg_class
        WHERE relnamespace = 'public'::regnamespace ORDER BY 1""",
    "schema grants": """
        SELECT nspacl::text FROM pg_namespace WHERE nspname = 'public'""",
    "database grants": """
        SELECT replace(datacl::text, current_database(), '?')
        FROM pg_database WHERE datname = current_database()""",
}


class SchemaError(Exception):
    """The database's schema cannot be created or upgraded as asked."""


def version_key(version):
    """``'0.10'`` sorts after ``'0.9'``."""
    try:
        return tuple(int(part) for part in version.split("."))
    except (AttributeError, ValueError):
        raise SchemaError(f"{version!r} is not a schema version") from None


def quote_identifier(name):
    """Quote a role name for SQL the way PostgreSQL's quote_ident does."""
    if not name or "\0" in name:
        raise SchemaError(f"{name!r} is not a usable role name")
    return '"' + name.replace('"', '""') + '"'


def render(script, role):
    return script.replace(ROLE_PLACEHOLDER, quote_identifier(role))


def create_script(role, directory=None):
    """The SQL that creates the current schema for *role*."""
    path = (directory or sql_dir()) / "create_piwheels.sql"
    return render(path.read_text(encoding="utf-8"), role)


def update_scripts(directory=None):
    """Every upgrade step shipped: ``{old_version: (new_version, path)}``."""
    steps = {}
    for path in sorted((directory or sql_dir()).glob("update_piwheels_*.sql")):
        match = _UPDATE_NAME.match(path.name)
        if match:
            steps[match["old"]] = (match["new"], path)
    return steps


def upgrade_path(current, target=SCHEMA_VERSION, directory=None):
    """The scripts that take a database from *current* to *target*, in order.

    Raises :class:`SchemaError` for a downgrade or a version no chain of
    scripts starts from.
    """
    if version_key(current) > version_key(target):
        raise SchemaError(
            f"the database's schema is version {current}, newer than this "
            f"piwtwist's {target}; refusing to downgrade it (install a newer "
            f"piwtwist instead)")
    steps = update_scripts(directory)
    path = []
    version = current
    while version != target:
        try:
            version, script = steps[version]
        except KeyError:
            raise SchemaError(
                f"the database's schema is version {current}, and no upgrade "
                f"script leads from {version} towards {target}") from None
        path.append(script)
    return path


def upgrade_script(current, role, target=SCHEMA_VERSION, directory=None):
    """The SQL of every step from *current* to *target*, joined."""
    return "\n".join(render(script.read_text(encoding="utf-8"), role)
                     for script in upgrade_path(current, target, directory))
