#!/usr/bin/env python3
"""Benchmark the build queue at PyPI scale.

Generates a PyPI-sized piwtwist database in a private PostgreSQL cluster
(everything set-based inside PostgreSQL, repeatable through setseed), fills
the derived build_queue table with rebuild_build_queue(), and times
get_build_queue() the way the master calls it: as the master's role, cold
(right after a server restart, with the OS page cache dropped when we may)
and warm, with and without a list of in-flight builds to leave out.

    .venv/bin/python bench/build_queue.py --scale 0.01
    .venv/bin/python bench/build_queue.py --dir /var/tmp/piwtwist-bench

See bench/README.md.
"""

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from piwtwist.db.schema import CATALOG_QUERIES, create_script  # noqa: E402
from piwtwist.devcluster import PrivateCluster  # noqa: E402

MASTER_ROLE = "piwheels"
DBNAME = "piwheels_bench"
META_FILE = "bench-meta.json"
# Bump when the generator changes so that a kept cluster is regenerated.
GENERATOR_VERSION = 1
ABIS = ["cp311", "cp313"]
TARGET_SECONDS = 1.0
TARGET_LIMIT = 1000

FULL_PACKAGES = 740_000
FULL_VERSIONS = 8_200_000

# Resource settings for a 2-core, 24 GiB machine.  Planner settings are left
# at PostgreSQL's defaults.  Autovacuum is off so that nothing runs behind
# the measurements' back; the script runs VACUUM ANALYZE itself where
# autovacuum would have (after the bulk load, after the queue rebuild).
# wal_level=minimal lets the bulk load and the index builds skip the WAL.
SERVER_SETTINGS = {
    "shared_buffers": "2GB",
    "work_mem": "64MB",
    "maintenance_work_mem": "1GB",
    "max_wal_size": "8GB",
    "min_wal_size": "1GB",
    "checkpoint_timeout": "30min",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "autovacuum": "off",
}

# The tables the generator loads; their keys, foreign keys and indexes are
# dropped for the load and created again afterwards.
LOADED_TABLES = ["packages", "versions", "builds", "output", "files"]

# The part of the catalog that the loaded tables' data depends on.
LOADED_PARTS = {"columns": 0, "constraints": 0, "indexes": 0}


def schema_hash():
    """What the schema script's version is recorded as in bench-meta.json."""
    script = create_script(MASTER_ROLE)
    return hashlib.sha256(script.encode()).hexdigest()[:16]


def catalog(conn, loaded_only=False):
    result = {}
    with conn.cursor() as cur:
        for part, query in CATALOG_QUERIES.items():
            if loaded_only and part not in LOADED_PARTS or \
                    part in ("schema grants", "database grants"):
                continue
            cur.execute(query)
            rows = cur.fetchall()
            if loaded_only:
                rows = [r for r in rows
                        if r[0].split(".")[-1] in LOADED_TABLES]
            result[part] = rows
    return result


def without_loaded_tables(script):
    """The schema script less the loaded tables and their indexes, to run
    over a database that keeps them."""
    for table in LOADED_TABLES:
        script, found = re.subn(
            rf"^CREATE TABLE {table} \(.*?^\);\n", "", script,
            flags=re.S | re.M)
        if found != 1:
            raise ValueError(f"no CREATE TABLE {table} in the script")
        script = re.sub(
            rf"^CREATE (?:UNIQUE )?INDEX \w+ ON {table} [^;]*;\n", "",
            script, flags=re.M)
    return script

# Constants of the generator, substituted for @name@ in the SQL below.
GEN_CONSTANTS = {
    "start": "'2005-01-01 00:00:00+00'::timestamptz",
    "end": "'2026-11-15 00:00:00+00'::timestamptz",
    # versions released after this are the recent, mostly unbuilt slice
    "cutoff": "'2026-07-18 00:00:00+00'::timestamptz",
    # when the ABIs' builders started (older releases were back-filled)
    "cp311_from": "'2023-06-15 00:00:00+00'::timestamptz",
    "cp313_from": "'2025-08-15 00:00:00+00'::timestamptz",
    # density of new packages grows as exp(growth * fraction of the span)
    "growth": "2.5",
    # versions per package: log-normal (median 3.5, sigma 1.5), capped
    "ver_mu": "ln(3.5)",
    "ver_sigma": "1.5",
    "ver_cap": "2500",
    "pkg_skip": "0.01",      # packages skipped by an operator
    "ver_skip": "0.20",      # releases without an sdist ("binary only")
    "built": "0.72",         # older releases with a build on cp311
    "fail": "0.10",          # builds that fail
    "none_wheel": "0.80",    # successes giving a py3-none-any wheel
    "specific": "0.95",      # ... up to here an ABI-specific wheel, then abi3
    "second": "0.90",        # ABI-specific releases also built on cp313
    "retry": "0.50",         # failed releases tried again on cp313
}

WORDS = [
    "py", "django", "flask", "data", "ml", "tool", "kit", "lib", "ai", "aws",
    "api", "cli", "web", "json", "test", "async", "net", "sql", "cloud",
    "utils", "pi", "gpio", "sensor", "mqtt", "image", "text", "stats", "plot",
    "crypto", "http", "yaml", "config", "log", "auth", "db", "geo", "audio",
    "video", "torch", "tensor", "bot", "discord", "telegram", "scrape",
    "parse", "client", "server", "sdk", "core", "tools", "azure", "google",
    "open", "fast", "simple", "super", "my", "odoo", "pytest", "sphinx",
]


def out(line=""):
    print(line, flush=True)


def fmt_seconds(seconds):
    if seconds >= 60:
        return f"{seconds:8.1f} s ({int(seconds // 60)} min {seconds % 60:02.0f} s)"
    return f"{seconds:8.1f} s"


def fmt_ms(seconds):
    return f"{seconds * 1000:.1f} ms"


def render(sql, **extra):
    values = dict(GEN_CONSTANTS, **{k: str(v) for k, v in extra.items()})
    words = ", ".join(f"'{w}'" for w in WORDS)
    values["words"] = f"ARRAY[{words}]::text[]"
    values["nwords"] = str(len(WORDS))

    def replace(match):
        return values[match.group(1)]

    return re.sub(r"@([a-z0-9_]+)@", replace, sql)


# --------------------------------------------------------------------------
# The generator: staging tables in schema bench_gen, then the real tables
# --------------------------------------------------------------------------

GEN_PACKAGES = """
CREATE UNLOGGED TABLE bench_gen.pkg AS
SELECT i AS pid,
       (@words@)[1 + floor(random() * @nwords@)::int] || '-'
       || (@words@)[1 + floor(random() * @nwords@)::int] || '-'
       || to_hex(i) AS package,
       -- log-normal weight (Box-Muller), turned into a count below
       exp(@ver_mu@ + @ver_sigma@ * sqrt(-2 * ln(1 - random()))
           * cos(2 * pi() * random())) AS weight,
       -- first release: more packages appear in recent years
       ln(1 + random() * (exp(@growth@) - 1)) / @growth@ AS birth,
       random() AS r_span,
       random() < @pkg_skip@ AS skipped
FROM generate_series(1, @packages@) AS i;

CREATE UNLOGGED TABLE bench_gen.pkg2 AS
SELECT pid, package, skipped, birth, nver,
       -- last release: packages with many releases tend to be alive
       birth + (1 - birth) * power(r_span, 1.0 / (1 + ln(nver))) AS last
FROM (
    SELECT pid, package, skipped, birth, r_span,
           greatest(1, round(least(weight, @ver_cap@)
                             * @versions@ / sum(least(weight, @ver_cap@))
                               OVER ()))::int AS nver
    FROM bench_gen.pkg
) AS p;
"""

LOAD_PACKAGES = """
INSERT INTO packages (package, skip)
SELECT package, CASE WHEN skipped THEN 'excluded by bench' ELSE '' END
FROM bench_gen.pkg2 ORDER BY pid;
"""

GEN_VERSIONS = """
CREATE UNLOGGED TABLE bench_gen.ver AS
SELECT p.package, p.skipped AS pkg_skipped,
       format('%s.%s.%s', k / 100, (k / 10) % 10, k % 10) AS version,
       @start@ + (@end@ - @start@)
           * (p.birth + (p.last - p.birth) * ((k - 1 + random()) / p.nver))
           AS released,
       CASE WHEN random() < @ver_skip@ THEN 'binary only' ELSE '' END AS skip
FROM bench_gen.pkg2 AS p
CROSS JOIN LATERAL generate_series(1, p.nver) AS k;
"""

# The versions table in release order, as years of appending leave it.
LOAD_VERSIONS = """
INSERT INTO versions (package, version, released, skip)
SELECT package, version, released, skip
FROM bench_gen.ver ORDER BY released, package, version;
"""

GEN_BUILDS = """
-- which eligible releases have been built, with the dice for the outcomes;
-- in the recent slice the chance of a build falls to nothing at the end
CREATE UNLOGGED TABLE bench_gen.built AS
SELECT package, version, released,
       random() AS r_out1, random() AS r_kind, random() AS r_second,
       random() AS r_out2
FROM (
    SELECT package, version, released, random() AS r_built
    FROM bench_gen.ver
    WHERE skip = '' AND NOT pkg_skipped
) AS v
WHERE r_built < CASE
    WHEN released < @cutoff@ THEN @built@
    ELSE @built@ * extract(epoch FROM @end@ - released)
                 / extract(epoch FROM @end@ - @cutoff@)
    END;

CREATE UNLOGGED TABLE bench_gen.decided AS
SELECT package, version, released,
       r_out1 >= @fail@ AS ok1,
       CASE WHEN r_out1 < @fail@ THEN NULL
            WHEN r_kind < @none_wheel@ THEN 'none'
            WHEN r_kind < @specific@ THEN 'specific'
            ELSE 'abi3' END AS kind1,
       CASE WHEN r_out1 < @fail@ THEN r_second < @retry@
            WHEN r_kind >= @none_wheel@ AND r_kind < @specific@
                THEN r_second < @second@
            ELSE false END AS has_second,
       -- a retry after a failure: 40% fail again, then mostly pure Python;
       -- a second ABI-specific build fails 5% of the time
       CASE WHEN r_out1 < @fail@ THEN r_out2 >= 0.4
            ELSE r_out2 >= 0.05 END AS ok2,
       CASE WHEN r_out1 < @fail@ THEN
                CASE WHEN r_out2 < 0.4 THEN NULL
                     WHEN r_out2 < 0.9 THEN 'none'
                     ELSE 'specific' END
            WHEN r_out2 < 0.05 THEN NULL
            ELSE 'specific' END AS kind2
FROM bench_gen.built;

-- every build with its id, numbered in the order they were built
CREATE UNLOGGED TABLE bench_gen.builds AS
SELECT (row_number() OVER (ORDER BY built_at, package, version, abi_tag))::int
           AS build_id,
       package, version, abi_tag, status, kind, built_at, duration
FROM (
    SELECT package, version, 'cp311'::varchar AS abi_tag, ok1 AS status,
           kind1 AS kind,
           least(@end@, CASE
               WHEN released < @cp311_from@
                   THEN @cp311_from@ + random() * interval '200 days'
               ELSE released + interval '1 minute'
                               * (2 + 2000 * power(random(), 4))
               END) AS built_at,
           interval '1 second' * (5 + 3000 * power(random(), 5)) AS duration
    FROM bench_gen.decided
    UNION ALL
    SELECT package, version, 'cp313'::varchar, ok2, kind2,
           least(@end@, CASE
               WHEN released < @cp313_from@
                   THEN @cp313_from@ + random() * interval '90 days'
               ELSE released + interval '1 minute'
                               * (2 + 2000 * power(random(), 4))
               END),
           interval '1 second' * (5 + 3000 * power(random(), 5))
    FROM bench_gen.decided
    WHERE has_second
) AS b;
"""

LOAD_BUILDS = """
INSERT INTO builds (build_id, package, version, built_by, builder_label,
                    built_at, duration, status, abi_tag, reason)
SELECT build_id, package, version, built_by, 'pi-' || built_by,
       built_at, duration, status, abi_tag,
       CASE WHEN status THEN ''
            ELSE (ARRAY['setup.py bdist_wheel failed',
                        'could not build dependencies',
                        'build timed out',
                        'compiler error'])[1 + build_id % 4] END
FROM (SELECT *, (1 + (build_id::bigint * 7919) % 40)::int AS built_by
      FROM bench_gen.builds) AS b
ORDER BY build_id;
"""

LOAD_OUTPUT = """
INSERT INTO output (build_id, output)
SELECT build_id,
       format(E'Looking in indexes: https://pypi.org/simple\\n'
              'Collecting %1$s==%2$s\\n'
              '  Downloading %1$s-%2$s.tar.gz (%3$s kB)\\n'
              '  Installing build dependencies: started\\n'
              '  Installing build dependencies: finished with status ''done''\\n'
              'Building wheels for collected packages: %1$s\\n'
              '  Building wheel for %1$s (pyproject.toml): %4$s\\n'
              '%5$s',
              package, version, 10 + build_id % 900,
              CASE WHEN status THEN 'finished with status ''done'''
                   ELSE 'finished with status ''error''' END,
              CASE WHEN status
                   THEN 'Successfully built ' || package || E'\\n'
                   ELSE E'  ERROR: Failed building wheel for ' || package
                        || E'\\nFailed to build ' || package || E'\\n' END)
FROM bench_gen.builds
ORDER BY build_id;
"""

LOAD_FILES = """
INSERT INTO files (filename, build_id, filesize, filehash, package_tag,
                   package_version_tag, py_version_tag, abi_tag,
                   platform_tag, requires_python, location)
SELECT tag || '-' || version || '-' || py || '-' || abi || '-' || plat
           || '.whl',
       build_id,
       CASE WHEN kind = 'none' THEN 2000 + (build_id * 2654435761) % 400000
            ELSE 40000 + (build_id * 2654435761) % 30000000 END,
       md5(tag || version || abi) || md5(abi || version || tag),
       tag, version, py, abi, plat, '', ''
FROM (
    SELECT build_id, kind, replace(package, '-', '_') AS tag, version,
           CASE kind WHEN 'none' THEN 'py3'
                     WHEN 'abi3' THEN 'cp38'
                     ELSE abi_tag END AS py,
           CASE kind WHEN 'none' THEN 'none'
                     WHEN 'abi3' THEN 'abi3'
                     ELSE abi_tag END AS abi,
           CASE kind WHEN 'none' THEN 'any'
                     ELSE 'linux_armv7l' END AS plat
    FROM bench_gen.builds
    WHERE status
) AS f
ORDER BY build_id;
"""

EXPECTED_TABLES = ["packages", "versions", "builds", "output", "files",
                   "build_queue"]


class Bench:
    def __init__(self, args):
        self.args = args
        self.scale = args.scale
        self.limit = args.limit
        self.kept = args.dir is not None
        if self.kept:
            self.directory = Path(args.dir).absolute()
        else:
            self.directory = Path(tempfile.mkdtemp(prefix="piwtwist-bench-"))
        self.cluster = PrivateCluster(self.directory)
        self.meta_path = self.directory / META_FILE

    # -- connections ----------------------------------------------------

    def connect(self, user="postgres", dbname=DBNAME, autocommit=True):
        conn = psycopg2.connect(self.cluster.dsn(dbname, user))
        conn.autocommit = autocommit
        return conn

    def superuser(self):
        return self.connect()

    def master(self):
        return self.connect(MASTER_ROLE)

    # -- the steps ------------------------------------------------------

    def run(self):
        out("piwtwist build queue benchmark")
        out("==============================")
        out(f"scale {self.scale:g} ({round(FULL_PACKAGES * self.scale):,} "
            f"packages, ~{round(FULL_VERSIONS * self.scale):,} versions), "
            f"limit {self.limit} per ABI, ABIs {', '.join(ABIS)}")
        out(f"machine: {os.cpu_count()} CPUs, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB RAM, "
            f"{platform.system()} {platform.release()}")
        out(f"cluster: {self.directory} "
            f"({'kept' if self.kept else 'temporary, removed at the end'})")
        out("server settings: " + ", ".join(
            f"{k}={v}" for k, v in SERVER_SETTINGS.items())
            + " (plus the helper's fsync=off, synchronous_commit=off, "
              "full_page_writes=off)")
        try:
            started = time.monotonic()
            self.cluster.start(**SERVER_SETTINGS)
            with self.connect(dbname="postgres") as conn, conn.cursor() as cur:
                cur.execute("SELECT version()")
                out(f"server: {cur.fetchone()[0]}  "
                    f"(started in {time.monotonic() - started:.1f} s)")
            conn.close()
            out()
            meta = self.reusable_meta()
            if meta is None:
                meta = self.generate()
            else:
                out(f"Generation: reusing the database generated on "
                    f"{meta['generated_at']} at scale {meta['scale']:g} "
                    f"(it took {meta['generation_seconds']:.1f} s)")
                out()
            for line in meta.get("summary", []):
                out(line)
            out()
            self.rebuild()
            self.measure()
        finally:
            if self.kept:
                self.cluster.stop()
            else:
                self.cluster.destroy()
                shutil.rmtree(self.directory, ignore_errors=True)

    def reusable_meta(self):
        """The metadata of a finished generation of this scale, or None
        (dropping a database of another scale or an unfinished one).  A
        database generated under an older schema script is brought up to
        date (upgrade_schema) when only the loaded tables' surroundings
        changed."""
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            meta = None
        conn = self.connect(dbname="postgres")
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                        (DBNAME,))
            exists = cur.fetchone() is not None
        conn.close()
        why = "an unfinished generation"
        if (exists and meta
                and meta.get("scale") == self.scale
                and meta.get("generator") == GENERATOR_VERSION):
            if meta.get("schema") == schema_hash():
                return meta
            if self.upgrade_schema():
                meta["schema"] = schema_hash()
                self.meta_path.write_text(json.dumps(meta, indent=2))
                return meta
            why = "a loaded table's definition changed"
        elif meta:
            why = (f"scale {meta.get('scale')}, generator "
                   f"{meta.get('generator')}")
        if exists:
            out(f"(dropping the existing database: {why})")
            conn = self.connect(dbname="postgres")
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE {DBNAME}")
            conn.close()
        try:
            self.meta_path.unlink()
        except FileNotFoundError:
            pass
        return None

    def upgrade_schema(self):
        """Bring a kept database up to the current schema script without
        generating its data again: the loaded tables stay as they are, and
        everything else (functions, triggers, views, the small and derived
        tables) is dropped and created anew from the script, which fills
        the statistics counters from the data.  All in one transaction,
        kept only when the result's catalog equals a fresh database's;
        False (nothing changed) when the loaded tables themselves changed.
        """
        out("the schema script changed since the database was generated: "
            "bringing it up to date")
        started = time.monotonic()
        script = create_script(MASTER_ROLE)
        scratch = DBNAME + "_schema"
        admin = self.connect(dbname="postgres")
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {scratch}")
            cur.execute(f"CREATE DATABASE {scratch}")
        try:
            conn = self.connect(dbname=scratch, autocommit=False)
            with conn.cursor() as cur:
                cur.execute(script)
            conn.commit()
            wanted = catalog(conn)
            wanted_loaded = catalog(conn, loaded_only=True)
            conn.close()
        finally:
            with admin.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {scratch}")
            admin.close()

        conn = self.connect(autocommit=False)
        try:
            if catalog(conn, loaded_only=True) != wanted_loaded:
                out("  the loaded tables' definitions changed")
                return False
            with conn.cursor() as cur:
                cur.execute("""
                    SELECT p.oid::regprocedure::text FROM pg_proc p
                    WHERE p.pronamespace = 'public'::regnamespace""")
                for (function,) in cur.fetchall():
                    cur.execute(f"DROP FUNCTION IF EXISTS {function} CASCADE")
                cur.execute("""
                    SELECT c.relname FROM pg_class c
                    WHERE c.relnamespace = 'public'::regnamespace
                    AND c.relkind IN ('r', 'v', 'm')
                    AND c.relname <> ALL(%s)""", (LOADED_TABLES,))
                for (relation,) in cur.fetchall():
                    cur.execute(f"DROP TABLE IF EXISTS {relation} CASCADE")
                t = time.monotonic()
                cur.execute(without_loaded_tables(script))
                out(f"  {'schema less the loaded tables':<44}"
                    f"{fmt_seconds(time.monotonic() - t)}")
                # as generate() sets them, without rebuilding the queue
                cur.execute("INSERT INTO build_abis (abi_tag) "
                            "SELECT unnest(%s::varchar[])", (ABIS,))
            if catalog(conn) != wanted:
                out("  the result differs from a fresh database")
                return False
            conn.commit()
        finally:
            conn.rollback()
            conn.close()
        conn = self.superuser()
        with conn.cursor() as cur:
            for table in ("package_counters", "statistics_counters",
                          "download_counters"):
                cur.execute(f"VACUUM ANALYZE {table}")
        conn.close()
        out(f"  {'total':<44}{fmt_seconds(time.monotonic() - started)}")
        out()
        return True

    def step(self, cur, label, sql, **extra):
        started = time.monotonic()
        cur.execute(render(sql, **extra))
        took = time.monotonic() - started
        out(f"  {label:<44}{fmt_seconds(took)}")
        return took

    def generate(self):
        out("Generation (set-based inside PostgreSQL, setseed(0.42))")
        started = time.monotonic()
        counts = {
            "packages": max(10, round(FULL_PACKAGES * self.scale)),
            "versions": max(100, round(FULL_VERSIONS * self.scale)),
        }
        conn = self.superuser_on("postgres")
        with conn.cursor() as cur:
            cur.execute(
                f"DO $$ BEGIN CREATE ROLE {MASTER_ROLE} LOGIN; "
                f"EXCEPTION WHEN duplicate_object THEN NULL; END $$")
            cur.execute(f"CREATE DATABASE {DBNAME}")
        conn.close()

        conn = self.superuser()
        cur = conn.cursor()
        t = time.monotonic()
        conn.autocommit = False
        cur.execute(create_script(MASTER_ROLE))
        conn.commit()
        conn.autocommit = True
        out(f"  {'schema (create_piwheels.sql)':<44}"
            f"{fmt_seconds(time.monotonic() - t)}")
        # Set the ABIs as the master would, while the tables are empty.
        m = self.master()
        with m.cursor() as mcur:
            mcur.execute("SELECT set_build_abis(%s::varchar[])", (ABIS,))
        m.close()

        saved = self.drop_keys_and_indexes(cur)

        # Commit synchronously (cheap with fsync=off): VACUUM cannot set the
        # hint bits, and so the all-visible bits, of rows whose commit record
        # is not flushed yet, and index-only scans would go to the heap.
        cur.execute("SET synchronous_commit = on")
        cur.execute("SET max_parallel_workers_per_gather = 0")
        cur.execute("SET synchronize_seqscans = off")
        cur.execute("SET work_mem = '512MB'")
        cur.execute("SELECT setseed(0.42)")
        # no triggers for the bulk load (the statistics counters are
        # counted afterwards, in one go)
        cur.execute("SET session_replication_role = replica")
        cur.execute("CREATE SCHEMA bench_gen")
        self.step(cur, "staging: packages", GEN_PACKAGES, **counts)
        self.step(cur, "packages", "BEGIN; TRUNCATE packages;"
                  + LOAD_PACKAGES + "COMMIT;")
        self.step(cur, "staging: versions", GEN_VERSIONS)
        self.step(cur, "versions (in release order)",
                  "BEGIN; TRUNCATE versions;" + LOAD_VERSIONS + "COMMIT;")
        self.step(cur, "staging: builds", GEN_BUILDS)
        self.step(cur, "builds", "BEGIN; TRUNCATE builds;"
                  + LOAD_BUILDS + "COMMIT;")
        self.step(cur, "output", "BEGIN; TRUNCATE output;"
                  + LOAD_OUTPUT + "COMMIT;")
        self.step(cur, "files", "BEGIN; TRUNCATE files;"
                  + LOAD_FILES + "COMMIT;")
        self.step(cur, "builds_build_id_seq",
                  "SELECT setval('builds_build_id_seq', "
                  "(SELECT COALESCE(max(build_id), 0) + 1 FROM builds), "
                  "false)")
        cur.execute("RESET work_mem")
        cur.execute("RESET session_replication_role")
        self.step(cur, "drop staging", "DROP SCHEMA bench_gen CASCADE")
        self.restore_keys_and_indexes(cur, saved)
        for table in LOADED_TABLES:
            self.step(cur, f"VACUUM ANALYZE {table}",
                      f"VACUUM ANALYZE {table}")
        self.step(cur, "recount_statistics()",
                  "SELECT recount_statistics()")
        for table in ("package_counters", "statistics_counters",
                      "download_counters"):
            cur.execute(f"VACUUM ANALYZE {table}")
        took = time.monotonic() - started
        out(f"  {'total':<44}{fmt_seconds(took)}")
        out()
        summary = self.summarise(cur)
        conn.close()
        meta = {
            "scale": self.scale,
            "generator": GENERATOR_VERSION,
            "schema": schema_hash(),
            "generated_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "generation_seconds": round(took, 1),
            "summary": summary,
        }
        self.meta_path.write_text(json.dumps(meta, indent=2))
        return meta

    def superuser_on(self, dbname):
        return self.connect(dbname=dbname)

    def drop_keys_and_indexes(self, cur):
        """Drop the keys, foreign keys and indexes of the loaded tables (and
        the foreign keys pointing at them); return what re-creates them."""
        cur.execute("""
            SELECT conrelid::regclass::text, conname, contype,
                   pg_get_constraintdef(oid)
            FROM pg_constraint
            WHERE contype IN ('p', 'u', 'f')
            AND (conrelid::regclass::text = ANY(%(t)s)
                 OR (contype = 'f' AND confrelid::regclass::text = ANY(%(t)s)))
            ORDER BY contype <> 'f', conrelid::regclass::text, conname
        """, {"t": LOADED_TABLES})
        constraints = cur.fetchall()
        cur.execute("""
            SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
            FROM pg_index i
            WHERE i.indrelid::regclass::text = ANY(%(t)s)
            AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                            WHERE c.conindid = i.indexrelid)
            ORDER BY 1
        """, {"t": LOADED_TABLES})
        indexes = cur.fetchall()
        t = time.monotonic()
        for table, name, _, _ in constraints:  # foreign keys come first
            cur.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
        for name, _ in indexes:
            cur.execute(f"DROP INDEX {name}")
        out(f"  {'drop keys and indexes for the load':<44}"
            f"{fmt_seconds(time.monotonic() - t)}")
        return constraints, indexes

    def restore_keys_and_indexes(self, cur, saved):
        constraints, indexes = saved
        keys = [c for c in constraints if c[2] != "f"]
        fks = [c for c in constraints if c[2] == "f"]
        for table, name, _, definition in keys:
            self.step(cur, f"{name}",
                      f"ALTER TABLE {table} ADD CONSTRAINT {name} "
                      f"{definition}")
        for name, definition in indexes:
            self.step(cur, f"{name}", definition)
        for table, name, _, definition in fks:
            self.step(cur, f"{name}",
                      f"ALTER TABLE {table} ADD CONSTRAINT {name} "
                      f"{definition}")

    def summarise(self, cur):
        lines = ["Generated data"]
        cur.execute("""
            SELECT percentile_disc(ARRAY[0.5, 0.9, 0.99, 0.999])
                       WITHIN GROUP (ORDER BY n), max(n),
                   count(*) FILTER (WHERE n = 1), count(*)
            FROM (SELECT count(*) AS n FROM versions GROUP BY package) AS c
        """)
        pct, biggest, ones, npkg = cur.fetchone()
        lines.append(
            f"  versions per package: median {pct[0]}, p90 {pct[1]}, "
            f"p99 {pct[2]}, p99.9 {pct[3]}, max {biggest}; "
            f"{100 * ones / npkg:.0f}% have one")
        cur.execute("""
            SELECT extract(year FROM released)::int, count(*)
            FROM versions GROUP BY 1 ORDER BY 1
        """)
        years = cur.fetchall()
        lines.append("  versions released per year:")
        for i in range(0, len(years), 6):
            lines.append("    " + "  ".join(
                f"{y}: {n:>9,}" for y, n in years[i:i + 6]))
        cur.execute("""
            SELECT count(*) FILTER (WHERE skip <> ''),
                   count(*) FILTER (WHERE released >= @cutoff@)
            FROM versions
        """.replace("@cutoff@", GEN_CONSTANTS["cutoff"]))
        skipped, recent = cur.fetchone()
        lines.append(f"  versions skipped (binary only): {skipped:,}; "
                     f"released in the recent slice (after "
                     f"{GEN_CONSTANTS['cutoff'][1:11]}): {recent:,}")
        cur.execute("""
            SELECT abi_tag, count(*), count(*) FILTER (WHERE NOT status)
            FROM builds GROUP BY 1 ORDER BY 1
        """)
        lines.append("  builds: " + "; ".join(
            f"{abi} {n:,} ({f:,} failed)" for abi, n, f in cur.fetchall()))
        cur.execute("""
            SELECT abi_tag, count(*) FROM files GROUP BY 1 ORDER BY 2 DESC
        """)
        lines.append("  files by ABI tag: " + ", ".join(
            f"{abi} {n:,}" for abi, n in cur.fetchall()))
        cur.execute("""
            SELECT pg_size_pretty(pg_database_size(current_database()))
        """)
        lines.append(f"  database size: {cur.fetchone()[0]}")
        return lines

    def rebuild(self):
        conn = self.superuser()
        cur = conn.cursor()
        cur.execute("SELECT EXISTS (SELECT 1 FROM build_queue)")
        if cur.fetchone()[0]:
            # Start from an empty queue every run so the timings compare.
            cur.execute("TRUNCATE build_queue")
        m = self.master()
        with m.cursor() as mcur:
            # as in production (the helper's server default is off); see
            # generate() for why it matters to the VACUUM below
            mcur.execute("SET synchronous_commit = on")
        t = time.monotonic()
        with m.cursor() as mcur:
            mcur.execute("SELECT rebuild_build_queue()")
        took = time.monotonic() - t
        m.close()
        t = time.monotonic()
        cur.execute("VACUUM ANALYZE build_queue")
        vacuum = time.monotonic() - t
        out(f"rebuild_build_queue() as {MASTER_ROLE}: {fmt_seconds(took)}")
        cur.execute("SELECT relpages, relallvisible FROM pg_class "
                    "WHERE oid = 'build_queue'::regclass")
        pages, visible = cur.fetchone()
        out(f"VACUUM ANALYZE build_queue afterwards (autovacuum's job): "
            f"{fmt_seconds(vacuum)}; {visible:,} of {pages:,} pages "
            f"all-visible")
        out()
        out("Table rows")
        for table in EXPECTED_TABLES:
            cur.execute(f"SELECT count(*), "
                        f"pg_size_pretty(pg_total_relation_size('{table}')) "
                        f"FROM {table}")
            n, size = cur.fetchone()
            out(f"  {table:<14}{n:>12,}   ({size} with indexes)")
        m = self.master()
        with m.cursor() as mcur:
            mcur.execute("SELECT * FROM get_queue_lengths()")
            out("  queue per ABI: " + ", ".join(
                f"{abi} {n:,}" for abi, n in mcur.fetchall()))
        m.close()
        conn.close()
        out()

    # -- measurements ---------------------------------------------------

    def exclusions(self):
        """200 in-flight builds: the head of each ABI's queue, as builders
        would have taken them."""
        conn = self.superuser()
        with conn.cursor() as cur:
            per_abi = 200 // len(ABIS)
            cur.execute("SELECT abi_tag, package, version "
                        "FROM get_build_queue(%s)", (per_abi,))
            rows = cur.fetchall()
        conn.close()
        return ([r[0] for r in rows], [r[1] for r in rows],
                [r[2] for r in rows])

    def query(self, excluded):
        if excluded is None:
            return "SELECT * FROM get_build_queue(%s)", (self.limit,)
        return ("SELECT * FROM get_build_queue(%s, %s::varchar[], "
                "%s::varchar[], %s::varchar[])", (self.limit, *excluded))

    def drop_caches(self):
        if not os.path.exists("/proc/sys/vm/drop_caches"):
            return False, "no /proc/sys/vm/drop_caches"
        result = subprocess.run(
            ["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            return False, result.stdout.strip() or "not permitted"
        return True, ""

    def cold(self, excluded):
        self.cluster.restart()
        dropped, why = self.drop_caches()
        t = time.monotonic()
        conn = self.master()
        connect = time.monotonic() - t
        sql, params = self.query(excluded)
        with conn.cursor() as cur:
            t = time.monotonic()
            cur.execute(sql, params)
            rows = cur.fetchall()
            took = time.monotonic() - t
        conn.close()
        return took, connect, len(rows), dropped, why

    def warm(self, excluded, runs):
        conn = self.master()
        sql, params = self.query(excluded)
        times = []
        with conn.cursor() as cur:
            cur.execute(sql, params)     # one untimed run first
            cur.fetchall()
            for _ in range(runs):
                t = time.monotonic()
                cur.execute(sql, params)
                rows = cur.fetchall()
                times.append(time.monotonic() - t)
        conn.close()
        return times, len(rows)

    def explain_outer(self, excluded):
        conn = self.master()
        sql, params = self.query(excluded)
        with conn.cursor() as cur:
            cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            lines = [r[0] for r in cur.fetchall()]
        conn.close()
        return lines

    def explain_inner(self, excluded):
        """The plan of the statement inside get_build_queue, from
        auto_explain (as the superuser: LOAD needs it)."""
        conn = self.superuser()
        sql, params = self.query(excluded)
        with conn.cursor() as cur:
            for setting in [
                    "LOAD 'auto_explain'",
                    "SET auto_explain.log_min_duration = 0",
                    "SET auto_explain.log_analyze = on",
                    "SET auto_explain.log_buffers = on",
                    "SET auto_explain.log_timing = on",
                    "SET auto_explain.log_nested_statements = on",
                    "SET client_min_messages = log"]:
                cur.execute(setting)
            cur.execute(sql, params)
            cur.fetchall()
            del conn.notices[:]
            cur.execute(sql, params)        # the warm one
            cur.fetchall()
        notices = list(conn.notices)
        conn.close()
        for notice in notices:
            if "FROM build_queue bq" not in notice:
                continue
            head = re.search(r"duration: ([\d.]+ ms)", notice)
            lines = notice.rstrip().splitlines()
            for i, line in enumerate(lines):
                if "(cost=" in line or "(actual time" in line:
                    return (head.group(1) if head else "?"), lines[i:]
        return None, []

    def measure(self):
        excluded = self.exclusions()
        out(f"get_build_queue({self.limit}) as {MASTER_ROLE!r} "
            f"(the schema grants it EXECUTE only)")
        runs = self.args.runs
        results = {}
        cases = [("plain", "no exclusions", None),
                 ("excluded", f"{len(excluded[0])} in-flight builds excluded "
                              f"(the head of each ABI's queue)", excluded)]
        for key, label, exc in cases:
            cold, connect, nrows, dropped, why = self.cold(exc)
            times, nrows = self.warm(exc, runs)
            results[key] = times
            cache = ("page cache dropped" if dropped
                     else f"page cache NOT dropped: {why}")
            out(f"  {label}: {nrows:,} rows")
            out(f"    cold (server restarted, {cache}): {fmt_ms(cold)} "
                f"(+ {fmt_ms(connect)} to connect)")
            out(f"    warm ({runs} runs): median "
                f"{fmt_ms(statistics.median(times))}, "
                f"min {fmt_ms(min(times))}, max {fmt_ms(max(times))}")
        out()
        out("EXPLAIN (ANALYZE, BUFFERS), warm, as the master's role, "
            "with the exclusions:")
        for line in self.explain_outer(excluded):
            out("  " + line)
        out()
        for label, exc in [("with the exclusions", excluded),
                           ("without exclusions", None)]:
            duration, plan = self.explain_inner(exc)
            out(f"Plan of the statement inside get_build_queue, {label} "
                f"(auto_explain, warm, {duration}):")
            shown = self.args.plan_lines
            for line in plan[:shown]:
                out("  " + line)
            if len(plan) > shown:
                out(f"  ... ({len(plan) - shown} more lines)")
            out()
        median = statistics.median(results["excluded"])
        plain = statistics.median(results["plain"])
        note = ("" if self.limit == TARGET_LIMIT else
                f" (NB: measured with {self.limit}, not {TARGET_LIMIT}, "
                f"per ABI)")
        out(f"RESULT: warm get_build_queue({self.limit}) median "
            f"{fmt_ms(plain)} plain, {fmt_ms(median)} with 200 exclusions, "
            f"against the target of {TARGET_SECONDS:g} s for "
            f"{TARGET_LIMIT:,} entries per ABI: ratio "
            f"{plain / TARGET_SECONDS:.4f} / {median / TARGET_SECONDS:.4f}"
            f"{note}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Benchmark get_build_queue() on a PyPI-sized database.")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of PyPI's size to generate "
                             "(default 1.0: 740,000 packages, 8.2M versions)")
    parser.add_argument("--dir", default=None,
                        help="keep the cluster here and reuse a database of "
                             "the same scale next time (default: a temporary "
                             "directory, removed at the end)")
    parser.add_argument("--limit", type=int, default=1000,
                        help="entries per ABI to ask for (default 1000)")
    parser.add_argument("--runs", type=int, default=20,
                        help="warm runs to time (default 20)")
    parser.add_argument("--plan-lines", type=int, default=40,
                        help="plan lines to print (default 40)")
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 10:
        parser.error("--scale must be in (0, 10]")
    Bench(args).run()


if __name__ == "__main__":
    main()
