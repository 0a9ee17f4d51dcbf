-- piwtwist database, schema version 0.2
--
-- piw-initdb runs this whole file in one transaction as the cluster
-- superuser, after replacing @MASTER_ROLE@ with the quoted name of the role
-- the master connects as. That role is not a superuser and gets nothing but
-- EXECUTE on the functions below: every read and write goes through them.

REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO @MASTER_ROLE@;
DO $$ BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO @MASTER_ROLE@',
                   current_database());
END $$;

-- configuration: one row, the schema version and the last PyPI serial applied
CREATE TABLE configuration (
    id          INTEGER DEFAULT 1 NOT NULL,
    version     VARCHAR(16) NOT NULL,
    pypi_serial BIGINT DEFAULT 0 NOT NULL,

    CONSTRAINT configuration_pk PRIMARY KEY (id),
    CONSTRAINT configuration_single_row_ck CHECK (id = 1)
);
INSERT INTO configuration (id, version) VALUES (1, '0.2');

-- packages: one row a project, by canonical (PEP 503) name; a non-empty
-- skip says why nothing of it is built
CREATE TABLE packages (
    package     VARCHAR(200) NOT NULL,
    skip        VARCHAR(100) DEFAULT '' NOT NULL,
    description VARCHAR(200) DEFAULT '' NOT NULL,

    CONSTRAINT packages_pk PRIMARY KEY (package)
);

-- package_names: every spelling of a project's name seen on PyPI, so that
-- project/<alias> can point at the canonical directory
CREATE TABLE package_names (
    package VARCHAR(200) NOT NULL,
    name    VARCHAR(200) NOT NULL,
    seen    TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP NOT NULL,

    CONSTRAINT package_names_pk PRIMARY KEY (package, name),
    CONSTRAINT package_names_package_fk FOREIGN KEY (package)
        REFERENCES packages ON DELETE CASCADE
);

-- versions: every release with files on PyPI; a non-empty skip says why it
-- is not built (for example "binary only")
CREATE TABLE versions (
    package         VARCHAR(200) NOT NULL,
    version         VARCHAR(200) NOT NULL,
    released        TIMESTAMP WITH TIME ZONE
                    DEFAULT '1970-01-01 00:00:00+00' NOT NULL,
    skip            VARCHAR(100) DEFAULT '' NOT NULL,
    yanked          BOOLEAN DEFAULT false NOT NULL,
    yank_reason     VARCHAR(500) DEFAULT '' NOT NULL,
    requires_python VARCHAR(200) DEFAULT '' NOT NULL,

    CONSTRAINT versions_pk PRIMARY KEY (package, version),
    CONSTRAINT versions_package_fk FOREIGN KEY (package)
        REFERENCES packages ON DELETE CASCADE
);
CREATE INDEX versions_released ON versions (released DESC);

-- build_abis: the ABIs to build for; "none" and "abi3" are outcomes of a
-- build, never targets
CREATE TABLE build_abis (
    abi_tag VARCHAR(100) NOT NULL,
    skip    VARCHAR(100) DEFAULT '' NOT NULL,

    CONSTRAINT build_abis_pk PRIMARY KEY (abi_tag),
    CONSTRAINT build_abis_tag_ck CHECK (abi_tag NOT IN ('none', 'abi3', ''))
);

-- builds: every attempt, successful or not
CREATE TABLE builds (
    build_id      SERIAL NOT NULL,
    package       VARCHAR(200) NOT NULL,
    version       VARCHAR(200) NOT NULL,
    built_by      INTEGER NOT NULL,
    built_at      TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP NOT NULL,
    duration      INTERVAL NOT NULL,
    status        BOOLEAN NOT NULL,
    abi_tag       VARCHAR(100) NOT NULL,
    reason        VARCHAR(500) DEFAULT '' NOT NULL,
    builder_label VARCHAR(100) DEFAULT '' NOT NULL,
    -- the identity of the result (from the builder's token), so that a
    -- report recorded once is never recorded again; NULL before 0.2
    build_token   VARCHAR(64),
    -- why a failed build failed (piwtwist/failures.py's vocabulary; empty
    -- for successes and until classified), with a hint at the fix, and
    -- the remedy a rescued build was retried with ('' when none)
    failure_class VARCHAR(40) DEFAULT '' NOT NULL,
    failure_hint  VARCHAR(500) DEFAULT '' NOT NULL,
    rescued       VARCHAR(200) DEFAULT '' NOT NULL,

    CONSTRAINT builds_pk PRIMARY KEY (build_id),
    CONSTRAINT builds_build_token_uk UNIQUE (build_token),
    CONSTRAINT builds_versions_fk FOREIGN KEY (package, version)
        REFERENCES versions ON DELETE CASCADE,
    CONSTRAINT builds_built_by_ck CHECK (built_by >= 0)
);
CREATE INDEX builds_pkgver ON builds (package, version);
CREATE INDEX builds_built_at ON builds (built_at DESC);

-- output: the whole build log, apart from builds because it is most of the
-- database and rarely read
CREATE TABLE output (
    build_id INTEGER NOT NULL,
    output   TEXT NOT NULL,

    CONSTRAINT output_pk PRIMARY KEY (build_id),
    CONSTRAINT output_builds_fk FOREIGN KEY (build_id)
        REFERENCES builds ON DELETE CASCADE
);

-- files: every wheel a successful build produced; the tags are split out of
-- the name because the build queue and the pages need them
CREATE TABLE files (
    filename            VARCHAR(255) NOT NULL,
    build_id            INTEGER NOT NULL,
    filesize            BIGINT NOT NULL,
    filehash            CHAR(64) NOT NULL,
    package_tag         VARCHAR(200) NOT NULL,
    package_version_tag VARCHAR(200) NOT NULL,
    py_version_tag      VARCHAR(100) NOT NULL,
    abi_tag             VARCHAR(100) NOT NULL,
    platform_tag        VARCHAR(100) NOT NULL,
    requires_python     VARCHAR(200) DEFAULT '' NOT NULL,
    location            VARCHAR(500) DEFAULT '' NOT NULL,

    CONSTRAINT files_pk PRIMARY KEY (filename),
    CONSTRAINT files_builds_fk FOREIGN KEY (build_id)
        REFERENCES builds ON DELETE CASCADE,
    CONSTRAINT files_filesize_ck CHECK (filesize >= 0),
    CONSTRAINT files_filehash_ck CHECK (filehash ~ '^[0-9a-f]{64}$')
);
CREATE INDEX files_builds ON files (build_id);

-- dependencies: what a wheel needs installed: apt packages, pip packages,
-- and shared libraries no Debian package was found for ("unresolved")
CREATE TABLE dependencies (
    filename   VARCHAR(255) NOT NULL,
    tool       VARCHAR(10) NOT NULL,
    dependency VARCHAR(255) NOT NULL,

    CONSTRAINT dependencies_pk PRIMARY KEY (filename, tool, dependency),
    CONSTRAINT dependencies_files_fk FOREIGN KEY (filename)
        REFERENCES files ON DELETE CASCADE,
    CONSTRAINT dependencies_tool_ck CHECK (tool IN ('apt', 'pip', 'unresolved'))
);

-- preinstalled_apt_packages: what the ABI's OS image ships, left out of the
-- install instructions
CREATE TABLE preinstalled_apt_packages (
    abi_tag     VARCHAR(100) NOT NULL,
    apt_package VARCHAR(255) NOT NULL,

    CONSTRAINT preinstalled_apt_packages_pk PRIMARY KEY (abi_tag, apt_package),
    CONSTRAINT preinstalled_apt_packages_abi_fk FOREIGN KEY (abi_tag)
        REFERENCES build_abis ON DELETE CASCADE
);

-- hits: downloads, searches, project pages, project JSON, other pages.
-- Kept for the master's --hit-retention; every figure comes from the
-- daily counts below, so the two busiest tables have no index but the
-- one pruning and the last hour's figures use (each index costs every
-- insert: a third of the time of storing a download)
CREATE TABLE downloads (
    filename           VARCHAR(255) NOT NULL,
    accessed_by        INET NOT NULL,
    accessed_at        TIMESTAMP WITH TIME ZONE NOT NULL,
    arch               VARCHAR(100),
    distro_name        VARCHAR(100),
    distro_version     VARCHAR(100),
    os_name            VARCHAR(100),
    os_version         VARCHAR(100),
    py_name            VARCHAR(100),
    py_version         VARCHAR(100),
    installer_name     VARCHAR(20),
    installer_version  VARCHAR(100),
    setuptools_version VARCHAR(100),
    distro_id          VARCHAR(100),
    libc_name          VARCHAR(100),
    libc_version       VARCHAR(100),
    openssl_version    VARCHAR(200),
    ci                 BOOLEAN
);
CREATE INDEX downloads_accessed_at ON downloads (accessed_at DESC);

CREATE TABLE searches (
    package            VARCHAR(200) NOT NULL,
    accessed_by        INET NOT NULL,
    accessed_at        TIMESTAMP WITH TIME ZONE NOT NULL,
    arch               VARCHAR(100),
    distro_name        VARCHAR(100),
    distro_version     VARCHAR(100),
    os_name            VARCHAR(100),
    os_version         VARCHAR(100),
    py_name            VARCHAR(100),
    py_version         VARCHAR(100),
    installer_name     VARCHAR(20),
    installer_version  VARCHAR(100),
    setuptools_version VARCHAR(100),
    distro_id          VARCHAR(100),
    libc_name          VARCHAR(100),
    libc_version       VARCHAR(100),
    openssl_version    VARCHAR(200),
    ci                 BOOLEAN
);
CREATE INDEX searches_accessed_at ON searches (accessed_at DESC);

CREATE TABLE project_page_hits (
    package     VARCHAR(200) NOT NULL,
    accessed_by INET NOT NULL,
    accessed_at TIMESTAMP WITH TIME ZONE NOT NULL,
    user_agent  VARCHAR(2000),
    bot         BOOLEAN DEFAULT false NOT NULL
);
CREATE INDEX project_page_hits_package ON project_page_hits (package);
CREATE INDEX project_page_hits_accessed_at ON project_page_hits (accessed_at DESC);

CREATE TABLE project_json_downloads (
    package     VARCHAR(200) NOT NULL,
    accessed_by INET NOT NULL,
    accessed_at TIMESTAMP WITH TIME ZONE NOT NULL,
    user_agent  VARCHAR(2000),
    bot         BOOLEAN DEFAULT false NOT NULL
);
CREATE INDEX project_json_downloads_package ON project_json_downloads (package);
CREATE INDEX project_json_downloads_accessed_at ON project_json_downloads (accessed_at DESC);

CREATE TABLE web_page_hits (
    page        VARCHAR(100) NOT NULL,
    accessed_by INET NOT NULL,
    accessed_at TIMESTAMP WITH TIME ZONE NOT NULL,
    user_agent  VARCHAR(2000),
    bot         BOOLEAN DEFAULT false NOT NULL
);
CREATE INDEX web_page_hits_page ON web_page_hits (page);
CREATE INDEX web_page_hits_accessed_at ON web_page_hits (accessed_at DESC);

-- downloads_daily: each project's downloads per UTC day and the build time
-- they saved (the duration of the build of each wheel downloaded), kept up
-- to date by log_hits as hits arrive, so that no page counts raw downloads
-- (kept only for the master's --hit-retention)
CREATE TABLE downloads_daily (
    package    VARCHAR(200) NOT NULL,
    day        DATE NOT NULL,
    downloads  BIGINT NOT NULL,
    time_saved INTERVAL NOT NULL,

    CONSTRAINT downloads_daily_pk PRIMARY KEY (package, day)
);
CREATE INDEX downloads_daily_day ON downloads_daily (day DESC);

-- download_totals: each project's downloads of all time, the sum of its
-- downloads_daily rows, kept so that the search index reads one row a
-- project
CREATE TABLE download_totals (
    package    VARCHAR(200) NOT NULL,
    downloads  BIGINT NOT NULL,
    time_saved INTERVAL NOT NULL,

    CONSTRAINT download_totals_pk PRIMARY KEY (package)
);

-- download_clients_daily: downloads per UTC day by installer (pip, uv,
-- other), Python version (major.minor), distribution and CPU; '' is unknown
CREATE TABLE download_clients_daily (
    day       DATE NOT NULL,
    installer VARCHAR(20) NOT NULL,
    python    VARCHAR(20) NOT NULL,
    distro    VARCHAR(200) NOT NULL,
    arch      VARCHAR(100) NOT NULL,
    downloads BIGINT NOT NULL,

    CONSTRAINT download_clients_daily_pk
        PRIMARY KEY (day, installer, python, distro, arch)
);

-- statistics_counters: get_statistics()'s figures about packages, versions,
-- builds, files and all-time downloads, kept up to date by the triggers
-- under "Statistics counters" below, so that no figure counts the largest
-- tables.  A figure is the sum of its column over every slot: a change to
-- a package goes to the slot of its name's hash (0-63), so that builds of
-- different packages recorded at once seldom wait for the same row;
-- downloads go to slot 64, which only the hit recorder writes
CREATE TABLE statistics_counters (
    slot           SMALLINT NOT NULL,
    packages       BIGINT DEFAULT 0 NOT NULL,
    packages_built BIGINT DEFAULT 0 NOT NULL,
    versions       BIGINT DEFAULT 0 NOT NULL,
    versions_tried BIGINT DEFAULT 0 NOT NULL,
    builds         BIGINT DEFAULT 0 NOT NULL,
    builds_success BIGINT DEFAULT 0 NOT NULL,
    builds_time    INTERVAL DEFAULT '0' NOT NULL,
    files          BIGINT DEFAULT 0 NOT NULL,
    files_size     BIGINT DEFAULT 0 NOT NULL,
    downloads      BIGINT DEFAULT 0 NOT NULL,

    CONSTRAINT statistics_counters_pk PRIMARY KEY (slot),
    CONSTRAINT statistics_counters_slot_ck CHECK (slot BETWEEN 0 AND 64)
);

-- package_counters: what each package adds to statistics_counters: whether
-- it is skipped, how many of its versions are not, how many have a build,
-- and its successful builds.  Every change to a package's versions or
-- builds locks its row, so that changes to one package made at once are
-- counted one after the other
CREATE TABLE package_counters (
    package        VARCHAR(200) NOT NULL,
    skipped        BOOLEAN NOT NULL,
    versions       INTEGER DEFAULT 0 NOT NULL,
    versions_tried INTEGER DEFAULT 0 NOT NULL,
    builds_success INTEGER DEFAULT 0 NOT NULL,

    CONSTRAINT package_counters_pk PRIMARY KEY (package)
);

-- download_counters: every project's downloads per UTC day (the sums of
-- downloads_daily), for the last month's figure
CREATE TABLE download_counters (
    day       DATE NOT NULL,
    downloads BIGINT NOT NULL,

    CONSTRAINT download_counters_pk PRIMARY KEY (day)
);

-- hit_batches: the batches of hits recorded lately, so that a batch sent
-- again (its acknowledgement was lost with the connection) is not counted
-- twice
CREATE TABLE hit_batches (
    batch_id    VARCHAR(100) NOT NULL,
    recorded_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP NOT NULL,

    CONSTRAINT hit_batches_pk PRIMARY KEY (batch_id)
);
CREATE INDEX hit_batches_recorded_at ON hit_batches (recorded_at);

-- rewrites_pending: the page writer's queue, kept across restarts
CREATE TABLE rewrites_pending (
    package  VARCHAR(200) NOT NULL,
    added_at TIMESTAMP WITH TIME ZONE NOT NULL,
    command  VARCHAR(8) NOT NULL,

    CONSTRAINT rewrites_pending_pk PRIMARY KEY (package),
    CONSTRAINT rewrites_pending_command_ck CHECK (command IN ('PROJECT', 'BOTH'))
);

-- pending_deletions: what the output tree must lose because the database
-- lost it, recorded by triggers in the very transaction that deletes the
-- rows, and removed by the master (finish_deletions) only once the files
-- are gone, so that a crash in between is finished after the restart.
-- what: 'project' (a package: its directories, pages and alias links),
-- 'pages' (rewrite the package's pages), 'file' (a wheel and its
-- .metadata at location), 'log' (the build log of build_id)
CREATE TABLE pending_deletions (
    deletion_id BIGSERIAL NOT NULL,
    what        VARCHAR(8) NOT NULL,
    package     VARCHAR(200) NOT NULL,
    filename    VARCHAR(255) DEFAULT '' NOT NULL,
    location    VARCHAR(500) DEFAULT '' NOT NULL,
    build_id    INTEGER,
    recorded_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP NOT NULL,

    CONSTRAINT pending_deletions_pk PRIMARY KEY (deletion_id),
    CONSTRAINT pending_deletions_what_ck
        CHECK (what IN ('project', 'pages', 'file', 'log'))
);

-- queue_history: the build queue's length per ABI, one sample an hour (the
-- latest of that hour), for the statistics page's chart
CREATE TABLE queue_history (
    abi_tag     VARCHAR(100) NOT NULL,
    recorded_at TIMESTAMP WITH TIME ZONE NOT NULL,
    queued      BIGINT NOT NULL,

    CONSTRAINT queue_history_pk PRIMARY KEY (recorded_at, abi_tag),
    CONSTRAINT queue_history_abi_fk FOREIGN KEY (abi_tag)
        REFERENCES build_abis ON DELETE CASCADE
);


-- build_queue: every (ABI, release) that wants a build now.  It is derived
-- state, kept up to date by the functions below whenever a release, a
-- package, an ABI or a build changes, so that asking for the queue is one
-- short index scan per ABI however large PyPI grows.
CREATE TABLE build_queue (
    abi_tag  VARCHAR(100) NOT NULL,
    package  VARCHAR(200) NOT NULL,
    version  VARCHAR(200) NOT NULL,
    released TIMESTAMP WITH TIME ZONE NOT NULL,

    CONSTRAINT build_queue_pk PRIMARY KEY (package, version, abi_tag),
    CONSTRAINT build_queue_versions_fk FOREIGN KEY (package, version)
        REFERENCES versions ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT build_queue_abi_fk FOREIGN KEY (abi_tag)
        REFERENCES build_abis ON DELETE CASCADE
);
CREATE INDEX build_queue_order ON build_queue (abi_tag, released DESC, package, version);

-------------------------------------------------------------------------------
-- The build queue's rules
-------------------------------------------------------------------------------

-- abi_order: a number that sorts CPython tags by version: cp39 -> 309,
-- cp310 -> 310, cp27mu -> 207; NULL for tags without a version.  One
-- expression, so that the planner can inline it.
CREATE FUNCTION abi_order(tag TEXT) RETURNS INTEGER
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $sql$
    SELECT substring(tag FROM '^[a-z]+(\d)\d')::INTEGER * 100
         + substring(tag FROM '^[a-z]+\d(\d+)')::INTEGER
$sql$;

-- abi_resolved: whether ABI "abi" needs no further build of a release, given
-- what its builds so far add up to: it was tried (whatever the outcome), a
-- "none" wheel covers every ABI, or an abi3 wheel for cpXY covers every
-- CPython ABI of the same major version from XY on
CREATE FUNCTION abi_resolved(
    abi VARCHAR, tried VARCHAR[], covers_all BOOLEAN, abi3_from INTEGER
) RETURNS BOOLEAN
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $sql$
    SELECT covers_all
        OR abi = ANY(tried)
        OR (abi3_from IS NOT NULL
            AND abi LIKE 'cp%'
            AND abi_order(abi) >= abi3_from
            AND abi_order(abi) / 100 = abi3_from / 100)
$sql$;

-- build_outcomes: what the builds of each release that has any add up to
CREATE VIEW build_outcomes AS
SELECT
    b.package,
    b.version,
    array_agg(DISTINCT b.abi_tag)
        || COALESCE(array_agg(DISTINCT f.abi_tag)
                    FILTER (WHERE f.abi_tag NOT IN ('none', 'abi3')),
                    '{}') AS tried,
    COALESCE(bool_or(f.abi_tag = 'none'), false) AS covers_all,
    min(abi_order(f.py_version_tag))
        FILTER (WHERE f.abi_tag = 'abi3') AS abi3_from,
    COALESCE(bool_or(f.abi_tag <> 'none'), false) AS specific
FROM builds b
LEFT JOIN files f ON f.build_id = b.build_id AND b.status
GROUP BY b.package, b.version;

-- pending_builds: every (ABI, release) that wants a build, ignoring skips.
-- Until a build has produced an ABI-specific wheel only the lowest
-- unresolved ABI is offered: most releases give a "none" wheel that covers
-- the rest, and a failure on the lowest ABI moves on to the next one.  Once
-- an ABI-specific (or abi3) wheel exists, every unresolved ABI is offered.
CREATE VIEW pending_builds AS
WITH active AS (
    SELECT abi_tag,
           row_number() OVER (ORDER BY abi_order(abi_tag) NULLS LAST,
                                       abi_tag) AS rank
    FROM build_abis
    WHERE skip = ''
),
unresolved AS (
    SELECT o.package, o.version, a.abi_tag, o.specific,
           row_number() OVER (PARTITION BY o.package, o.version
                              ORDER BY a.rank) AS n
    FROM build_outcomes o CROSS JOIN active a
    WHERE NOT abi_resolved(a.abi_tag, o.tried, o.covers_all, o.abi3_from)
)
SELECT u.abi_tag, u.package, u.version
FROM unresolved u
WHERE u.specific OR u.n = 1
UNION ALL
SELECT a.abi_tag, v.package, v.version
FROM versions v
CROSS JOIN (SELECT abi_tag FROM active WHERE rank = 1) AS a
WHERE NOT EXISTS (
    SELECT 1 FROM builds b
    WHERE b.package = v.package AND b.version = v.version
);

-- refresh_build_queue: recompute the queue entries of one package's
-- releases (all of them when ver is NULL).  PL/pgSQL, so that its plans are
-- kept between calls: it runs for every release and build recorded.
CREATE FUNCTION refresh_build_queue(pkg VARCHAR, ver VARCHAR DEFAULT NULL)
RETURNS VOID
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $plpgsql$
BEGIN
    DELETE FROM build_queue
    WHERE package = pkg AND (ver IS NULL OR version = ver);

    INSERT INTO build_queue (abi_tag, package, version, released)
    SELECT q.abi_tag, v.package, v.version, v.released
    FROM pending_builds q
    JOIN versions v ON v.package = q.package AND v.version = q.version
    JOIN packages p ON p.package = v.package
    WHERE q.package = pkg
    AND (ver IS NULL OR q.version = ver)
    AND p.skip = ''
    AND v.skip = '';
END;
$plpgsql$;

-- rebuild_build_queue: recompute the whole queue; needed only when the set
-- of ABIs changes (or to repair hand edits)
CREATE FUNCTION rebuild_build_queue() RETURNS VOID
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    DELETE FROM build_queue;

    INSERT INTO build_queue (abi_tag, package, version, released)
    SELECT q.abi_tag, v.package, v.version, v.released
    FROM pending_builds q
    JOIN versions v ON v.package = q.package AND v.version = q.version
    JOIN packages p ON p.package = v.package
    WHERE p.skip = '' AND v.skip = '';
$sql$;

-- get_build_queue: for each ABI being built, up to "lim" releases that want
-- a build, newest release first.  The caller passes the builds it already
-- has in hand (three arrays of equal length) so they are not handed out
-- twice.
CREATE FUNCTION get_build_queue(
    lim INTEGER,
    excluded_abis VARCHAR[] DEFAULT '{}',
    excluded_packages VARCHAR[] DEFAULT '{}',
    excluded_versions VARCHAR[] DEFAULT '{}'
)
RETURNS TABLE (abi_tag VARCHAR, package VARCHAR, version VARCHAR,
               released TIMESTAMP WITH TIME ZONE)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT a.abi_tag, q.package, q.version, q.released
    FROM build_abis a
    CROSS JOIN LATERAL (
        SELECT bq.package, bq.version, bq.released
        FROM build_queue bq
        WHERE bq.abi_tag = a.abi_tag
        -- an uncorrelated NOT IN is hashed once; the NULL filter matters
        -- because arrays of unequal length are padded with NULLs
        AND (bq.abi_tag, bq.package, bq.version) NOT IN (
            SELECT e.abi_tag, e.package, e.version
            FROM unnest(excluded_abis, excluded_packages, excluded_versions)
                AS e(abi_tag, package, version)
            WHERE e.abi_tag IS NOT NULL
            AND e.package IS NOT NULL
            AND e.version IS NOT NULL
        )
        ORDER BY bq.released DESC, bq.package, bq.version
        LIMIT lim
    ) AS q
    WHERE a.skip = ''
    ORDER BY a.abi_tag, q.released DESC, q.package, q.version
$sql$;

-------------------------------------------------------------------------------
-- Configuration
-------------------------------------------------------------------------------

CREATE FUNCTION get_schema_version() RETURNS VARCHAR
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT version FROM configuration WHERE id = 1
$sql$;

CREATE FUNCTION get_pypi_serial() RETURNS BIGINT
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT pypi_serial FROM configuration WHERE id = 1
$sql$;

-- set_pypi_serial: the serial only moves forward, so a late or repeated
-- save can never make the follower replay or skip events
CREATE FUNCTION set_pypi_serial(new_serial BIGINT) RETURNS BIGINT
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    UPDATE configuration
    SET pypi_serial = GREATEST(pypi_serial, new_serial)
    WHERE id = 1
    RETURNING pypi_serial
$sql$;

CREATE FUNCTION get_build_abis(include_skipped BOOLEAN DEFAULT false)
RETURNS TABLE (abi_tag VARCHAR, skip VARCHAR)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT b.abi_tag, b.skip
    FROM build_abis b
    WHERE include_skipped OR b.skip = ''
    ORDER BY abi_order(b.abi_tag) NULLS LAST, b.abi_tag
$sql$;

-- set_build_abis: record the ABIs the master was started with.  New ones
-- are added, ABIs left out are skipped as "not configured" (an operator's
-- own skip reason is kept), and the queue is rebuilt only when the set of
-- active ABIs actually changed.  Returns whether it changed.
CREATE FUNCTION set_build_abis(abis VARCHAR[]) RETURNS BOOLEAN
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $plpgsql$
DECLARE
    before VARCHAR[];
    after VARCHAR[];
BEGIN
    SELECT COALESCE(array_agg(abi_tag ORDER BY abi_tag), '{}') INTO before
    FROM build_abis WHERE skip = '';

    INSERT INTO build_abis (abi_tag)
    SELECT DISTINCT unnest(abis)
    ON CONFLICT (abi_tag) DO NOTHING;

    UPDATE build_abis SET skip = ''
    WHERE abi_tag = ANY(abis) AND skip = 'not configured';

    UPDATE build_abis SET skip = 'not configured'
    WHERE NOT (abi_tag = ANY(abis)) AND skip = '';

    SELECT COALESCE(array_agg(abi_tag ORDER BY abi_tag), '{}') INTO after
    FROM build_abis WHERE skip = '';

    IF before IS DISTINCT FROM after THEN
        PERFORM rebuild_build_queue();
        RETURN true;
    END IF;
    RETURN false;
END;
$plpgsql$;

CREATE FUNCTION skip_build_abi(abi VARCHAR, reason VARCHAR) RETURNS VOID
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $plpgsql$
BEGIN
    UPDATE build_abis SET skip = reason WHERE abi_tag = abi;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown ABI %', abi USING ERRCODE = 'no_data_found';
    END IF;
    PERFORM rebuild_build_queue();
END;
$plpgsql$;

-------------------------------------------------------------------------------
-- Packages and versions
-------------------------------------------------------------------------------

-- add_new_package: true when the package was new, false when it existed
CREATE FUNCTION add_new_package(
    pkg VARCHAR, skip_reason VARCHAR DEFAULT '', descr VARCHAR DEFAULT ''
) RETURNS BOOLEAN
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $plpgsql$
BEGIN
    INSERT INTO packages (package, skip, description)
    VALUES (pkg, skip_reason, left(descr, 200))
    ON CONFLICT (package) DO NOTHING;
    RETURN FOUND;
END;
$plpgsql$;

-- add_package_name: remember a spelling of a package's name and when it was
-- last seen (never moving backwards in time)
CREATE FUNCTION add_package_name(
    pkg VARCHAR, alias VARCHAR, last_seen TIMESTAMP WITH TIME ZONE
) RETURNS VOID
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    INSERT INTO package_names (package, name, seen)
    VALUES (pkg, alias, last_seen)
    ON CONFLICT (package, name) DO UPDATE
    SET seen = GREATEST(package_names.seen, EXCLUDED.seen)
$sql$;

CREATE FUNCTION get_package_aliases(pkg VARCHAR)
RETURNS TABLE (name VARCHAR, seen TIMESTAMP WITH TIME ZONE)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT n.name, n.seen
    FROM package_names n
    WHERE n.package = pkg AND n.name <> pkg
    ORDER BY n.seen DESC, n.name
$sql$;

CREATE FUNCTION set_package_description(pkg VARCHAR, descr VARCHAR)
RETURNS VOID
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    UPDATE packages SET description = left(descr, 200) WHERE package = pkg
$sql$;

CREATE FUNCTION get_package_description(pkg VARCHAR) RETURNS VARCHAR
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT description FROM packages WHERE package = pkg
$sql$;

-- skip_package: a non-empty reason stops every build of the package, an
-- empty one allows them again
CREATE FUNCTION skip_package(pkg VARCHAR, reason VARCHAR) RETURNS VOID
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    UPDATE packages SET skip = reason WHERE package = pkg;
    SELECT refresh_build_queue(pkg);
$sql$;

-- add_new_package_version: true when the release was new
CREATE FUNCTION add_new_package_version(
    pkg VARCHAR, ver VARCHAR,
    released_at TIMESTAMP WITH TIME ZONE DEFAULT NULL,
    skip_reason VARCHAR DEFAULT '',
    requires VARCHAR DEFAULT ''
) RETURNS BOOLEAN
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $plpgsql$
BEGIN
    INSERT INTO versions (package, version, released, skip, requires_python)
    VALUES (pkg, ver, COALESCE(released_at, CURRENT_TIMESTAMP), skip_reason,
            requires)
    ON CONFLICT (package, version) DO NOTHING;
    IF FOUND THEN
        PERFORM refresh_build_queue(pkg, ver);
        RETURN true;
    END IF;
    RETURN false;
END;
$plpgsql$;

-- update_version_details: release time and Requires-Python learned later
-- from PyPI's JSON API (NULL leaves a value as it is)
CREATE FUNCTION update_version_details(
    pkg VARCHAR, ver VARCHAR,
    released_at TIMESTAMP WITH TIME ZONE DEFAULT NULL,
    requires VARCHAR DEFAULT NULL
) RETURNS VOID
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    UPDATE versions
    SET released = COALESCE(released_at, released),
        requires_python = COALESCE(requires, requires_python)
    WHERE package = pkg AND version = ver;

    UPDATE build_queue q
    SET released = v.released
    FROM versions v
    WHERE q.package = pkg AND q.version = ver
    AND v.package = q.package AND v.version = q.version
    AND q.released <> v.released;
$sql$;

CREATE FUNCTION skip_package_version(pkg VARCHAR, ver VARCHAR, reason VARCHAR)
RETURNS VOID
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    UPDATE versions SET skip = reason WHERE package = pkg AND version = ver;
    SELECT refresh_build_queue(pkg, ver);
$sql$;

CREATE FUNCTION get_version_skip(pkg VARCHAR, ver VARCHAR) RETURNS VARCHAR
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT skip FROM versions WHERE package = pkg AND version = ver
$sql$;

CREATE FUNCTION get_package_skip(pkg VARCHAR) RETURNS VARCHAR
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT skip FROM packages WHERE package = pkg
$sql$;

CREATE FUNCTION yank_version(pkg VARCHAR, ver VARCHAR, reason VARCHAR DEFAULT '')
RETURNS VOID
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    UPDATE versions SET yanked = true, yank_reason = COALESCE(reason, '')
    WHERE package = pkg AND version = ver
$sql$;

CREATE FUNCTION unyank_version(pkg VARCHAR, ver VARCHAR) RETURNS VOID
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    UPDATE versions SET yanked = false, yank_reason = ''
    WHERE package = pkg AND version = ver
$sql$;

-- delete_package / delete_version: gone from PyPI, gone from here, with
-- builds, files and queue entries (by cascade); return the names of the
-- files that were recorded so the caller can remove them from disk
CREATE FUNCTION delete_package(pkg VARCHAR) RETURNS SETOF VARCHAR
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    WITH gone AS (
        SELECT f.filename
        FROM builds b JOIN files f ON f.build_id = b.build_id
        WHERE b.package = pkg
    ), deleted AS (
        DELETE FROM packages WHERE package = pkg
    )
    SELECT filename FROM gone
$sql$;

CREATE FUNCTION delete_version(pkg VARCHAR, ver VARCHAR) RETURNS SETOF VARCHAR
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    WITH gone AS (
        SELECT f.filename
        FROM builds b JOIN files f ON f.build_id = b.build_id
        WHERE b.package = pkg AND b.version = ver
    ), deleted AS (
        DELETE FROM versions WHERE package = pkg AND version = ver
    )
    SELECT filename FROM gone
$sql$;

CREATE FUNCTION test_package(pkg VARCHAR) RETURNS BOOLEAN
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT EXISTS (SELECT 1 FROM packages WHERE package = pkg)
$sql$;

CREATE FUNCTION test_package_version(pkg VARCHAR, ver VARCHAR) RETURNS BOOLEAN
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT EXISTS (
        SELECT 1 FROM versions WHERE package = pkg AND version = ver
    )
$sql$;

CREATE FUNCTION get_all_packages() RETURNS SETOF VARCHAR
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT package FROM packages ORDER BY package
$sql$;

CREATE FUNCTION get_all_package_versions()
RETURNS TABLE (package VARCHAR, version VARCHAR)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT v.package, v.version FROM versions v ORDER BY v.package, v.version
$sql$;

CREATE FUNCTION get_project_versions(pkg VARCHAR)
RETURNS TABLE (
    version VARCHAR, released TIMESTAMP WITH TIME ZONE, skip VARCHAR,
    yanked BOOLEAN, yank_reason VARCHAR, requires_python VARCHAR,
    builds_succeeded VARCHAR[], builds_failed VARCHAR[]
)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT
        v.version, v.released, v.skip, v.yanked, v.yank_reason,
        v.requires_python,
        COALESCE(array_agg(DISTINCT b.abi_tag) FILTER (WHERE b.status), '{}'),
        COALESCE(array_agg(DISTINCT b.abi_tag) FILTER (WHERE NOT b.status), '{}')
    FROM versions v
    LEFT JOIN builds b ON b.package = v.package AND b.version = v.version
    WHERE v.package = pkg
    GROUP BY v.version, v.released, v.skip, v.yanked, v.yank_reason,
             v.requires_python
    ORDER BY v.released DESC, v.version DESC
$sql$;

CREATE FUNCTION get_project_files(pkg VARCHAR)
RETURNS TABLE (
    version VARCHAR, build_id INTEGER, abi_tag VARCHAR, filename VARCHAR,
    filesize BIGINT, filehash CHAR(64), requires_python VARCHAR,
    yanked BOOLEAN, yank_reason VARCHAR
)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT b.version, b.build_id, f.abi_tag, f.filename, f.filesize,
           f.filehash, f.requires_python, v.yanked, v.yank_reason
    FROM builds b
    JOIN files f ON f.build_id = b.build_id
    JOIN versions v ON v.package = b.package AND v.version = b.version
    WHERE b.package = pkg AND b.status
    ORDER BY v.released DESC, f.filename
$sql$;

CREATE FUNCTION get_version_files(pkg VARCHAR, ver VARCHAR) RETURNS SETOF VARCHAR
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT f.filename
    FROM builds b JOIN files f ON f.build_id = b.build_id
    WHERE b.package = pkg AND b.version = ver AND b.status
    ORDER BY f.filename
$sql$;

CREATE FUNCTION get_file_dependencies(fname VARCHAR)
RETURNS TABLE (tool VARCHAR, dependency VARCHAR)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT d.tool, d.dependency
    FROM dependencies d
    WHERE d.filename = fname
    ORDER BY d.tool, d.dependency
$sql$;

CREATE FUNCTION get_preinstalled_apt_packages(abi VARCHAR) RETURNS SETOF VARCHAR
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT apt_package FROM preinstalled_apt_packages
    WHERE abi_tag = abi ORDER BY apt_package
$sql$;

CREATE FUNCTION add_preinstalled_apt_packages(abi VARCHAR, apt_packages VARCHAR[])
RETURNS VOID
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    INSERT INTO preinstalled_apt_packages (abi_tag, apt_package)
    SELECT abi, unnest(apt_packages)
    ON CONFLICT DO NOTHING
$sql$;

-------------------------------------------------------------------------------
-- Builds
-------------------------------------------------------------------------------

-- log_build_success: record a build, its log, every file and every file's
-- dependencies in one go.  files is a JSON array of objects with filename,
-- filesize, filehash, package_tag, package_version_tag, py_version_tag,
-- abi_tag, platform_tag, requires_python and location; dependencies a JSON
-- array of objects with filename, tool and dependency.  A published file
-- never changes its bytes: a file already recorded (by an earlier build)
-- with the same hash stays as it is, with its dependencies; one with
-- another hash is refused (unique_violation) unless replace_files, an
-- operator's explicit choice, lets the new file take its place.  A build
-- whose token was recorded before (the same report again, or a commit whose
-- answer was lost and is retried) changes nothing and returns that build.
CREATE FUNCTION log_build_success(
    pkg VARCHAR, ver VARCHAR, builder INTEGER, build_duration INTERVAL,
    abi VARCHAR, build_output TEXT, build_files JSONB,
    build_dependencies JSONB DEFAULT '[]', label VARCHAR DEFAULT '',
    replace_files BOOLEAN DEFAULT false, token VARCHAR DEFAULT NULL,
    build_rescued VARCHAR DEFAULT ''
) RETURNS INTEGER
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $plpgsql$
DECLARE
    new_id INTEGER;
    conflict VARCHAR;
BEGIN
    IF jsonb_typeof(build_files) IS DISTINCT FROM 'array'
            OR jsonb_array_length(build_files) = 0 THEN
        RAISE EXCEPTION 'a successful build of % % must have files', pkg, ver
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    INSERT INTO builds (package, version, built_by, builder_label, duration,
                        status, abi_tag, build_token, rescued)
    VALUES (pkg, ver, builder, label, build_duration, true, abi, token,
            left(COALESCE(build_rescued, ''), 200))
    ON CONFLICT (build_token) DO NOTHING
    RETURNING build_id INTO new_id;
    IF new_id IS NULL THEN
        SELECT b.build_id INTO new_id FROM builds b WHERE b.build_token = token;
        RETURN new_id;
    END IF;

    INSERT INTO output (build_id, output) VALUES (new_id, build_output);

    IF replace_files THEN
        DELETE FROM files x
        USING jsonb_to_recordset(build_files) AS f(filename VARCHAR)
        WHERE x.filename = f.filename;
    END IF;

    INSERT INTO files (
        filename, build_id, filesize, filehash, package_tag,
        package_version_tag, py_version_tag, abi_tag, platform_tag,
        requires_python, location
    )
    SELECT
        f.filename, new_id, f.filesize, lower(f.filehash), f.package_tag,
        f.package_version_tag, f.py_version_tag, f.abi_tag, f.platform_tag,
        COALESCE(f.requires_python, ''), COALESCE(f.location, '')
    FROM jsonb_to_recordset(build_files) AS f(
        filename VARCHAR, filesize BIGINT, filehash VARCHAR,
        package_tag VARCHAR, package_version_tag VARCHAR,
        py_version_tag VARCHAR, abi_tag VARCHAR, platform_tag VARCHAR,
        requires_python VARCHAR, location VARCHAR
    )
    ON CONFLICT (filename) DO NOTHING;

    -- after the insert, so that a file recorded meanwhile by another
    -- transaction is compared too
    SELECT f.filename INTO conflict
    FROM jsonb_to_recordset(build_files) AS f(filename VARCHAR,
                                              filehash VARCHAR)
    JOIN files x ON x.filename = f.filename
    WHERE x.filehash <> lower(f.filehash)
    LIMIT 1;
    IF conflict IS NOT NULL THEN
        RAISE EXCEPTION '% is already recorded with other bytes', conflict
            USING ERRCODE = 'unique_violation';
    END IF;

    -- only the files this build added get its dependencies
    INSERT INTO dependencies (filename, tool, dependency)
    SELECT DISTINCT d.filename, d.tool, d.dependency
    FROM jsonb_to_recordset(COALESCE(build_dependencies, '[]'))
        AS d(filename VARCHAR, tool VARCHAR, dependency VARCHAR)
    JOIN files x ON x.filename = d.filename AND x.build_id = new_id;

    PERFORM refresh_build_queue(pkg, ver);
    RETURN new_id;
END;
$plpgsql$;

-- log_build_failure: record a failed build and its log (once per token, as
-- log_build_success)
CREATE FUNCTION log_build_failure(
    pkg VARCHAR, ver VARCHAR, builder INTEGER, build_duration INTERVAL,
    abi VARCHAR, build_output TEXT, failure_reason VARCHAR DEFAULT '',
    label VARCHAR DEFAULT '', token VARCHAR DEFAULT NULL,
    fail_class VARCHAR DEFAULT '', fail_hint VARCHAR DEFAULT '',
    build_rescued VARCHAR DEFAULT ''
) RETURNS INTEGER
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $plpgsql$
DECLARE
    new_id INTEGER;
BEGIN
    INSERT INTO builds (package, version, built_by, builder_label, duration,
                        status, abi_tag, reason, build_token, failure_class,
                        failure_hint, rescued)
    VALUES (pkg, ver, builder, label, build_duration, false, abi,
            left(COALESCE(failure_reason, ''), 500), token,
            left(COALESCE(fail_class, ''), 40),
            left(COALESCE(fail_hint, ''), 500),
            left(COALESCE(build_rescued, ''), 200))
    ON CONFLICT (build_token) DO NOTHING
    RETURNING build_id INTO new_id;
    IF new_id IS NULL THEN
        SELECT b.build_id INTO new_id FROM builds b WHERE b.build_token = token;
        RETURN new_id;
    END IF;

    INSERT INTO output (build_id, output) VALUES (new_id, build_output);

    PERFORM refresh_build_queue(pkg, ver);
    RETURN new_id;
END;
$plpgsql$;

-- delete_build: forget every build of a release so that it is built again;
-- returns the names of the files that were recorded
CREATE FUNCTION delete_build(pkg VARCHAR, ver VARCHAR) RETURNS SETOF VARCHAR
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $plpgsql$
BEGIN
    RETURN QUERY
    SELECT f.filename
    FROM builds b JOIN files f ON f.build_id = b.build_id
    WHERE b.package = pkg AND b.version = ver;

    DELETE FROM builds WHERE package = pkg AND version = ver;
    PERFORM refresh_build_queue(pkg, ver);
END;
$plpgsql$;

CREATE FUNCTION get_build(bid INTEGER)
RETURNS TABLE (
    build_id INTEGER, package VARCHAR, version VARCHAR, built_by INTEGER,
    builder_label VARCHAR, built_at TIMESTAMP WITH TIME ZONE,
    duration INTERVAL, status BOOLEAN, abi_tag VARCHAR, reason VARCHAR
)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT b.build_id, b.package, b.version, b.built_by, b.builder_label,
           b.built_at, b.duration, b.status, b.abi_tag, b.reason
    FROM builds b WHERE b.build_id = bid
$sql$;

CREATE FUNCTION get_build_output(bid INTEGER) RETURNS TEXT
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT output FROM output WHERE build_id = bid
$sql$;

-- get_unclassified_failures: up to lim failed builds without a failure
-- class, after build after_id, with their reasons and logs, for the
-- master's pass that classifies old failures
CREATE FUNCTION get_unclassified_failures(after_id INTEGER, lim INTEGER)
RETURNS TABLE (build_id INTEGER, reason VARCHAR, output TEXT)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT b.build_id, b.reason, COALESCE(o.output, '')
    FROM builds b LEFT JOIN output o ON o.build_id = b.build_id
    WHERE NOT b.status AND b.failure_class = '' AND b.build_id > after_id
    ORDER BY b.build_id
    LIMIT lim
$sql$;

-- get_failures_to_reclassify: as get_unclassified_failures, but every
-- failed build (piw-rebuild reclassify, after the rules changed)
CREATE FUNCTION get_failures_to_reclassify(after_id INTEGER, lim INTEGER)
RETURNS TABLE (build_id INTEGER, reason VARCHAR, output TEXT)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT b.build_id, b.reason, COALESCE(o.output, '')
    FROM builds b LEFT JOIN output o ON o.build_id = b.build_id
    WHERE NOT b.status AND b.build_id > after_id
    ORDER BY b.build_id
    LIMIT lim
$sql$;

-- set_failure_classes: record the classes of failed builds; returns the
-- packages whose pages show them
CREATE FUNCTION set_failure_classes(
    bids INTEGER[], classes VARCHAR[], hints VARCHAR[]
) RETURNS SETOF VARCHAR
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    UPDATE builds b
    SET failure_class = left(c.failure_class, 40),
        failure_hint = left(c.failure_hint, 500)
    FROM unnest(bids, classes, hints) AS c(build_id, failure_class,
                                           failure_hint)
    WHERE b.build_id = c.build_id AND NOT b.status
      AND (b.failure_class, b.failure_hint) IS DISTINCT FROM
          (c.failure_class, c.failure_hint)
    RETURNING b.package
$sql$;

-- delete_failures_of_class: forget every failed build of a class so that
-- its release is built again; returns the (package, version) pairs
CREATE FUNCTION delete_failures_of_class(fail_class VARCHAR)
RETURNS TABLE (package VARCHAR, version VARCHAR)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $plpgsql$
DECLARE
    release RECORD;
BEGIN
    FOR release IN
        WITH gone AS (
            DELETE FROM builds b
            WHERE NOT b.status AND b.failure_class = fail_class
            RETURNING b.package, b.version
        )
        SELECT DISTINCT g.package, g.version FROM gone g ORDER BY 1, 2
    LOOP
        PERFORM refresh_build_queue(release.package, release.version);
        package := release.package;
        version := release.version;
        RETURN NEXT;
    END LOOP;
END;
$plpgsql$;

CREATE FUNCTION get_build_files(bid INTEGER)
RETURNS TABLE (
    filename VARCHAR, filesize BIGINT, filehash CHAR(64),
    package_tag VARCHAR, package_version_tag VARCHAR, py_version_tag VARCHAR,
    abi_tag VARCHAR, platform_tag VARCHAR, requires_python VARCHAR,
    location VARCHAR
)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT f.filename, f.filesize, f.filehash, f.package_tag,
           f.package_version_tag, f.py_version_tag, f.abi_tag,
           f.platform_tag, f.requires_python, f.location
    FROM files f WHERE f.build_id = bid ORDER BY f.filename
$sql$;

-------------------------------------------------------------------------------
-- Effects on the output tree (see docs/crash-consistency.md)
-------------------------------------------------------------------------------

-- record_deletion: the trigger behind pending_deletions, on packages,
-- versions, builds and files (cascades included)
CREATE FUNCTION record_deletion() RETURNS TRIGGER
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $plpgsql$
BEGIN
    IF TG_TABLE_NAME = 'packages' THEN
        INSERT INTO pending_deletions (what, package)
        VALUES ('project', OLD.package);
    ELSIF TG_TABLE_NAME = 'versions' THEN
        INSERT INTO pending_deletions (what, package)
        VALUES ('pages', OLD.package);
    ELSIF TG_TABLE_NAME = 'builds' THEN
        INSERT INTO pending_deletions (what, package, build_id)
        VALUES ('log', OLD.package, OLD.build_id);
    ELSIF TG_TABLE_NAME = 'files' THEN
        -- the wheel's directory is its canonical project name, which is the
        -- build's package (the master checks it before recording)
        INSERT INTO pending_deletions (what, package, filename, location)
        VALUES ('file',
                lower(regexp_replace(OLD.package_tag, '[-_.]+', '-', 'g')),
                OLD.filename, OLD.location);
    END IF;
    RETURN OLD;
END;
$plpgsql$;

CREATE TRIGGER packages_deleted AFTER DELETE ON packages
    FOR EACH ROW EXECUTE FUNCTION record_deletion();
CREATE TRIGGER versions_deleted AFTER DELETE ON versions
    FOR EACH ROW EXECUTE FUNCTION record_deletion();
CREATE TRIGGER builds_deleted AFTER DELETE ON builds
    FOR EACH ROW EXECUTE FUNCTION record_deletion();
CREATE TRIGGER files_deleted AFTER DELETE ON files
    FOR EACH ROW EXECUTE FUNCTION record_deletion();

-- get_pending_deletions: the oldest "lim" deletions to carry out, each with
-- whether what it names is recorded again (a file of the same name, a
-- package created anew): then its files must stay
CREATE FUNCTION get_pending_deletions(lim INTEGER)
RETURNS TABLE (
    deletion_id BIGINT, what VARCHAR, package VARCHAR, filename VARCHAR,
    location VARCHAR, build_id INTEGER, recorded BOOLEAN
)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT d.deletion_id, d.what, d.package, d.filename, d.location,
           d.build_id,
           CASE d.what
               WHEN 'file' THEN EXISTS (
                   SELECT 1 FROM files f WHERE f.filename = d.filename)
               WHEN 'log' THEN EXISTS (
                   SELECT 1 FROM builds b WHERE b.build_id = d.build_id)
               ELSE EXISTS (
                   SELECT 1 FROM packages p WHERE p.package = d.package)
           END
    FROM pending_deletions d
    ORDER BY d.deletion_id
    LIMIT lim
$sql$;

-- finish_deletions: the deletions whose files are gone
CREATE FUNCTION finish_deletions(ids BIGINT[]) RETURNS VOID
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    DELETE FROM pending_deletions WHERE deletion_id = ANY(ids)
$sql$;

-- get_files_by_name: the recorded files of these names, with the package
-- (directory) of their build
CREATE FUNCTION get_files_by_name(fnames VARCHAR[])
RETURNS TABLE (
    package VARCHAR, build_id INTEGER, filename VARCHAR, filesize BIGINT,
    filehash CHAR(64)
)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT b.package, f.build_id, f.filename, f.filesize, f.filehash
    FROM files f JOIN builds b ON b.build_id = f.build_id
    WHERE f.filename = ANY(fnames)
    ORDER BY f.filename
$sql$;

-- get_audit_facts: for the audit of the output tree, which of "pkgs" are
-- known and every file recorded of each (filename NULL for a package
-- without files)
CREATE FUNCTION get_audit_facts(pkgs VARCHAR[])
RETURNS TABLE (
    package VARCHAR, filename VARCHAR, filesize BIGINT, filehash CHAR(64)
)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT p.package, f.filename, f.filesize, f.filehash
    FROM packages p
    LEFT JOIN builds b ON b.package = p.package
    LEFT JOIN files f ON f.build_id = b.build_id
    WHERE p.package = ANY(pkgs)
      AND (f.filename IS NOT NULL OR NOT EXISTS (
          SELECT 1 FROM builds b2 JOIN files f2 ON f2.build_id = b2.build_id
          WHERE b2.package = p.package))
    ORDER BY p.package, f.filename
$sql$;

-------------------------------------------------------------------------------
-- Hits, statistics and the search index
-------------------------------------------------------------------------------

-- log_hits: one batch of hits, in one transaction.  Each argument but the
-- first is a JSON array of objects with short keys.  Clients (each
-- distinct one once): in, iv (installer), pn, pv (Python implementation
-- and version), dn, dv, di (distribution name, version, id), ln, lv
-- (libc), on, ov (system), a (CPU), o (OpenSSL), s (setuptools), c (CI).
-- Hits: t (seconds since the epoch), h (address), f (a download's file
-- name), p (a search's package, a page hit's project or page), c (a
-- download's or search's client: an index into clients, from 0), u and b
-- (a page hit's User-Agent and whether it is a bot).  Downloads also count
-- in downloads_daily, download_totals and download_clients_daily.  A batch
-- whose id was recorded before changes nothing and gives false: a logger
-- sends a batch again when the master's acknowledgement was lost.
CREATE FUNCTION log_hits(
    batch VARCHAR, clients JSON, new_downloads JSON, new_searches JSON,
    new_project_hits JSON, new_json_hits JSON, new_page_hits JSON
) RETURNS BOOLEAN
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $plpgsql$
BEGIN
    IF batch IS NOT NULL THEN
        INSERT INTO hit_batches (batch_id) VALUES (left(batch, 100))
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
    END IF;

    IF json_array_length(new_downloads) > 0 THEN
        WITH client AS (
            SELECT c.n - 1 AS i, left(c."in", 20) AS "in", left(c.iv, 100) AS iv,
                   left(c.pn, 100) AS pn, left(c.pv, 100) AS pv,
                   left(c.dn, 100) AS dn, left(c.dv, 100) AS dv,
                   left(c.di, 100) AS di, left(c.ln, 100) AS ln,
                   left(c.lv, 100) AS lv, left(c."on", 100) AS "on",
                   left(c.ov, 100) AS ov, left(c.a, 100) AS a,
                   left(c.o, 200) AS o, left(c.s, 100) AS s, c.c
            FROM ROWS FROM (json_to_recordset(clients) AS (
                "in" VARCHAR, iv VARCHAR, pn VARCHAR, pv VARCHAR, dn VARCHAR,
                dv VARCHAR, di VARCHAR, ln VARCHAR, lv VARCHAR, "on" VARCHAR,
                ov VARCHAR, a VARCHAR, o VARCHAR, s VARCHAR, c BOOLEAN))
                WITH ORDINALITY AS c("in", iv, pn, pv, dn, dv, di, ln, lv,
                                     "on", ov, a, o, s, c, n)
        ), added AS (
            INSERT INTO downloads (
                filename, accessed_by, accessed_at, arch, distro_name,
                distro_version, os_name, os_version, py_name, py_version,
                installer_name, installer_version, setuptools_version,
                distro_id, libc_name, libc_version, openssl_version, ci)
            SELECT left(r.f, 255), r.h, to_timestamp(r.t), c.a, c.dn, c.dv,
                   c."on", c.ov, c.pn, c.pv, c."in", c.iv, c.s, c.di, c.ln,
                   c.lv, c.o, c.c
            FROM json_to_recordset(new_downloads) AS r(
                f VARCHAR, h INET, t DOUBLE PRECISION, c BIGINT)
            LEFT JOIN client c ON c.i = r.c
            RETURNING filename, accessed_at, installer_name, py_version,
                      distro_name, distro_version, arch
        ), grouped AS (
            SELECT a.filename, (a.accessed_at AT TIME ZONE 'UTC')::DATE AS day,
                   CASE WHEN a.installer_name IN ('pip', 'uv')
                        THEN a.installer_name ELSE 'other' END AS installer,
                   COALESCE(substring(a.py_version FROM '^\d+\.\d+'), '')
                       AS python,
                   left(trim(COALESCE(a.distro_name, '') || ' '
                             || COALESCE(a.distro_version, '')), 200)
                       AS distro,
                   COALESCE(a.arch, '') AS arch, COUNT(*) AS n
            FROM added a
            GROUP BY 1, 2, 3, 4, 5, 6
        ), counted AS (
            SELECT lower(regexp_replace(split_part(g.filename, '-', 1),
                                        '[-_.]+', '-', 'g')) AS package,
                   g.day, g.n, g.n * COALESCE(b.duration, INTERVAL '0')
                       AS saved,
                   g.installer, g.python, g.distro, g.arch
            FROM grouped g
            LEFT JOIN files f ON f.filename = g.filename
            LEFT JOIN builds b ON b.build_id = f.build_id
        ), daily AS (
            INSERT INTO downloads_daily AS d (package, day, downloads,
                                              time_saved)
            SELECT c.package, c.day, SUM(c.n), SUM(c.saved)
            FROM counted c GROUP BY c.package, c.day
            ORDER BY c.package, c.day
            ON CONFLICT ON CONSTRAINT downloads_daily_pk DO UPDATE
            SET downloads = d.downloads + EXCLUDED.downloads,
                time_saved = d.time_saved + EXCLUDED.time_saved
        ), totals AS (
            INSERT INTO download_totals AS d (package, downloads, time_saved)
            SELECT c.package, SUM(c.n), SUM(c.saved)
            FROM counted c GROUP BY c.package ORDER BY c.package
            ON CONFLICT ON CONSTRAINT download_totals_pk DO UPDATE
            SET downloads = d.downloads + EXCLUDED.downloads,
                time_saved = d.time_saved + EXCLUDED.time_saved
        )
        INSERT INTO download_clients_daily AS d (day, installer, python,
                                                 distro, arch, downloads)
        SELECT c.day, c.installer, c.python, c.distro, c.arch, SUM(c.n)
        FROM counted c GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT ON CONSTRAINT download_clients_daily_pk DO UPDATE
        SET downloads = d.downloads + EXCLUDED.downloads;
    END IF;

    IF json_array_length(new_searches) > 0 THEN
        INSERT INTO searches (
            package, accessed_by, accessed_at, arch, distro_name,
            distro_version, os_name, os_version, py_name, py_version,
            installer_name, installer_version, setuptools_version,
            distro_id, libc_name, libc_version, openssl_version, ci)
        SELECT left(r.p, 200), r.h, to_timestamp(r.t), left(c.a, 100),
               left(c.dn, 100), left(c.dv, 100), left(c."on", 100),
               left(c.ov, 100), left(c.pn, 100), left(c.pv, 100),
               left(c."in", 20), left(c.iv, 100), left(c.s, 100),
               left(c.di, 100), left(c.ln, 100), left(c.lv, 100),
               left(c.o, 200), c.c
        FROM json_to_recordset(new_searches) AS r(
            p VARCHAR, h INET, t DOUBLE PRECISION, c BIGINT)
        LEFT JOIN ROWS FROM (json_to_recordset(clients) AS (
            "in" VARCHAR, iv VARCHAR, pn VARCHAR, pv VARCHAR, dn VARCHAR,
            dv VARCHAR, di VARCHAR, ln VARCHAR, lv VARCHAR, "on" VARCHAR,
            ov VARCHAR, a VARCHAR, o VARCHAR, s VARCHAR, c BOOLEAN))
            WITH ORDINALITY AS c("in", iv, pn, pv, dn, dv, di, ln, lv, "on",
                                 ov, a, o, s, c, n)
            ON c.n = r.c + 1;
    END IF;

    IF json_array_length(new_project_hits) > 0 THEN
        INSERT INTO project_page_hits
        SELECT left(r.p, 200), r.h, to_timestamp(r.t), left(r.u, 2000),
               COALESCE(r.b, false)
        FROM json_to_recordset(new_project_hits) AS r(
            p VARCHAR, h INET, t DOUBLE PRECISION, u VARCHAR, b BOOLEAN);
    END IF;

    IF json_array_length(new_json_hits) > 0 THEN
        INSERT INTO project_json_downloads
        SELECT left(r.p, 200), r.h, to_timestamp(r.t), left(r.u, 2000),
               COALESCE(r.b, false)
        FROM json_to_recordset(new_json_hits) AS r(
            p VARCHAR, h INET, t DOUBLE PRECISION, u VARCHAR, b BOOLEAN);
    END IF;

    IF json_array_length(new_page_hits) > 0 THEN
        INSERT INTO web_page_hits
        SELECT left(r.p, 100), r.h, to_timestamp(r.t), left(r.u, 2000),
               COALESCE(r.b, false)
        FROM json_to_recordset(new_page_hits) AS r(
            p VARCHAR, h INET, t DOUBLE PRECISION, u VARCHAR, b BOOLEAN);
    END IF;
    RETURN true;
END;
$plpgsql$;

-- prune_hits: forget raw hits older than "days" days (none when days is 0
-- or less) and the ids of batches recorded more than a day ago; the daily
-- counts stay.  Returns how many raw hits went.
CREATE FUNCTION prune_hits(days INTEGER) RETURNS BIGINT
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $plpgsql$
DECLARE
    cutoff TIMESTAMP WITH TIME ZONE := CURRENT_TIMESTAMP - days * INTERVAL '1 day';
    removed BIGINT := 0;
    n BIGINT;
BEGIN
    DELETE FROM hit_batches
    WHERE recorded_at < CURRENT_TIMESTAMP - INTERVAL '1 day';
    IF days <= 0 THEN
        RETURN 0;
    END IF;
    DELETE FROM downloads WHERE accessed_at < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; removed := removed + n;
    DELETE FROM searches WHERE accessed_at < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; removed := removed + n;
    DELETE FROM project_page_hits WHERE accessed_at < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; removed := removed + n;
    DELETE FROM project_json_downloads WHERE accessed_at < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; removed := removed + n;
    DELETE FROM web_page_hits WHERE accessed_at < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; removed := removed + n;
    RETURN removed;
END;
$plpgsql$;

-- log_download: one download, as a batch of one without an id
CREATE FUNCTION log_download(
    fname VARCHAR, host INET, at TIMESTAMP WITH TIME ZONE,
    arch VARCHAR DEFAULT NULL, distro_name VARCHAR DEFAULT NULL,
    distro_version VARCHAR DEFAULT NULL, os_name VARCHAR DEFAULT NULL,
    os_version VARCHAR DEFAULT NULL, py_name VARCHAR DEFAULT NULL,
    py_version VARCHAR DEFAULT NULL, installer_name VARCHAR DEFAULT NULL,
    installer_version VARCHAR DEFAULT NULL,
    setuptools_version VARCHAR DEFAULT NULL
) RETURNS VOID
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT log_hits(NULL, json_build_array(json_build_object(
        'a', arch, 'dn', distro_name, 'dv', distro_version, 'on', os_name,
        'ov', os_version, 'pn', py_name, 'pv', py_version,
        'in', installer_name, 'iv', installer_version,
        's', setuptools_version)), json_build_array(json_build_object(
        'f', fname, 'h', host, 't', extract(EPOCH FROM at), 'c', 0)),
        '[]', '[]', '[]', '[]');
$sql$;

CREATE FUNCTION log_search(
    pkg VARCHAR, host INET, at TIMESTAMP WITH TIME ZONE,
    arch VARCHAR DEFAULT NULL, distro_name VARCHAR DEFAULT NULL,
    distro_version VARCHAR DEFAULT NULL, os_name VARCHAR DEFAULT NULL,
    os_version VARCHAR DEFAULT NULL, py_name VARCHAR DEFAULT NULL,
    py_version VARCHAR DEFAULT NULL, installer_name VARCHAR DEFAULT NULL,
    installer_version VARCHAR DEFAULT NULL,
    setuptools_version VARCHAR DEFAULT NULL
) RETURNS VOID
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    INSERT INTO searches VALUES (
        left(pkg, 200), host, at, left(arch, 100), left(distro_name, 100),
        left(distro_version, 100), left(os_name, 100), left(os_version, 100),
        left(py_name, 100), left(py_version, 100), left(installer_name, 20),
        left(installer_version, 100), left(setuptools_version, 100))
$sql$;

CREATE FUNCTION log_project(
    pkg VARCHAR, host INET, at TIMESTAMP WITH TIME ZONE, agent VARCHAR,
    is_bot BOOLEAN DEFAULT false
) RETURNS VOID
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    INSERT INTO project_page_hits VALUES
        (left(pkg, 200), host, at, left(agent, 2000), is_bot)
$sql$;

CREATE FUNCTION log_json(
    pkg VARCHAR, host INET, at TIMESTAMP WITH TIME ZONE, agent VARCHAR,
    is_bot BOOLEAN DEFAULT false
) RETURNS VOID
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    INSERT INTO project_json_downloads VALUES
        (left(pkg, 200), host, at, left(agent, 2000), is_bot)
$sql$;

CREATE FUNCTION log_page(
    page_name VARCHAR, host INET, at TIMESTAMP WITH TIME ZONE, agent VARCHAR,
    is_bot BOOLEAN DEFAULT false
) RETURNS VOID
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    INSERT INTO web_page_hits VALUES
        (left(page_name, 100), host, at, left(agent, 2000), is_bot)
$sql$;

-------------------------------------------------------------------------------
-- Statistics counters
-------------------------------------------------------------------------------

-- statistics_slot: the row of statistics_counters a package's changes go
-- to (any row would do for the figures: only the sums are read)
CREATE FUNCTION statistics_slot(pkg VARCHAR) RETURNS SMALLINT
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $sql$
    SELECT (hashtext(pkg) & 63)::SMALLINT
$sql$;

-- add_statistics: add changes to one slot of statistics_counters.  Only
-- the triggers below may (a direct call is refused), and they add slot by
-- slot in ascending order, so that two transactions never wait for each
-- other's slots in opposite orders
CREATE FUNCTION add_statistics(
    to_slot SMALLINT, packages BIGINT DEFAULT 0,
    packages_built BIGINT DEFAULT 0, versions BIGINT DEFAULT 0,
    versions_tried BIGINT DEFAULT 0, builds BIGINT DEFAULT 0,
    builds_success BIGINT DEFAULT 0, builds_time INTERVAL DEFAULT '0',
    files BIGINT DEFAULT 0, files_size BIGINT DEFAULT 0,
    downloads BIGINT DEFAULT 0
) RETURNS VOID
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $plpgsql$
BEGIN
    IF pg_trigger_depth() = 0 THEN
        RAISE EXCEPTION 'only the statistics triggers change the counters'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF (packages, packages_built, versions, versions_tried, builds,
        builds_success, builds_time, files, files_size, downloads)
       = (0, 0, 0, 0, 0, 0, INTERVAL '0', 0, 0, 0) THEN
        RETURN;
    END IF;
    UPDATE statistics_counters c
    SET packages = c.packages + add_statistics.packages,
        packages_built = c.packages_built + add_statistics.packages_built,
        versions = c.versions + add_statistics.versions,
        versions_tried = c.versions_tried + add_statistics.versions_tried,
        builds = c.builds + add_statistics.builds,
        builds_success = c.builds_success + add_statistics.builds_success,
        builds_time = c.builds_time + add_statistics.builds_time,
        files = c.files + add_statistics.files,
        files_size = c.files_size + add_statistics.files_size,
        downloads = c.downloads + add_statistics.downloads
    WHERE c.slot = to_slot;
END;
$plpgsql$;

-- count_package_change: a package added, removed, renamed, skipped or
-- unskipped: its row of package_counters follows, and what the row adds
-- to the figures changes by the difference
CREATE FUNCTION count_package_change() RETURNS TRIGGER
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $plpgsql$
DECLARE
    was package_counters;
    becomes package_counters;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        DELETE FROM package_counters WHERE package = OLD.package
        RETURNING * INTO was;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO package_counters (package, skipped, versions,
                                      versions_tried, builds_success)
        VALUES (NEW.package, NEW.skip <> '', COALESCE(was.versions, 0),
                COALESCE(was.versions_tried, 0),
                COALESCE(was.builds_success, 0))
        RETURNING * INTO becomes;
    END IF;
    PERFORM add_statistics(
        statistics_slot(COALESCE(becomes.package, OLD.package)),
        packages => COALESCE((NOT becomes.skipped)::INTEGER, 0)
                    - COALESCE((NOT was.skipped)::INTEGER, 0),
        versions => COALESCE(CASE WHEN becomes.skipped THEN 0
                                  ELSE becomes.versions END, 0)
                    - COALESCE(CASE WHEN was.skipped THEN 0
                                    ELSE was.versions END, 0),
        packages_built => COALESCE((becomes.builds_success > 0)::INTEGER, 0)
                          - COALESCE((was.builds_success > 0)::INTEGER, 0),
        versions_tried => COALESCE(becomes.versions_tried, 0)
                          - COALESCE(was.versions_tried, 0));
    RETURN NULL;
END;
$plpgsql$;

CREATE TRIGGER packages_counted AFTER INSERT OR DELETE ON packages
    FOR EACH ROW EXECUTE FUNCTION count_package_change();
CREATE TRIGGER packages_recounted AFTER UPDATE OF package, skip ON packages
    FOR EACH ROW
    WHEN (OLD.package <> NEW.package OR (OLD.skip = '') <> (NEW.skip = ''))
    EXECUTE FUNCTION count_package_change();

-- count_version_changes: versions added or removed (a statement's at
-- once), or skipped, unskipped or moved (row by row): each package's count
-- of versions not skipped, and the figure when the package is not skipped.
-- A package being removed has lost its row already or loses it after its
-- versions; either way its versions leave the figure once.
CREATE FUNCTION count_version_changes() RETURNS TRIGGER
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $plpgsql$
DECLARE
    pkgs VARCHAR[];
    changes INTEGER[];
    slots SMALLINT[];
    counts BIGINT[];
    r RECORD;
BEGIN
    IF TG_LEVEL = 'ROW' THEN
        pkgs := ARRAY[OLD.package, NEW.package];
        changes := ARRAY[-(OLD.skip = '')::INTEGER, (NEW.skip = '')::INTEGER];
    ELSIF TG_OP = 'INSERT' THEN
        SELECT array_agg(v.package), array_agg((v.skip = '')::INTEGER)
        INTO pkgs, changes FROM come v;
    ELSE
        SELECT array_agg(v.package), array_agg(-(v.skip = '')::INTEGER)
        INTO pkgs, changes FROM gone v;
    END IF;

    -- the packages' rows in order, so that no two statements lock them in
    -- opposite orders
    PERFORM 1 FROM package_counters pc
    WHERE pc.package = ANY(pkgs) ORDER BY pc.package FOR UPDATE;

    WITH counted AS (
        UPDATE package_counters pc
        SET versions = pc.versions + d.n
        FROM (SELECT u.package, SUM(u.n)::INTEGER AS n
              FROM unnest(pkgs, changes) AS u(package, n)
              GROUP BY u.package) AS d
        WHERE pc.package = d.package AND d.n <> 0
        RETURNING statistics_slot(pc.package) AS slot,
                  CASE WHEN pc.skipped THEN 0 ELSE d.n END AS n
    )
    SELECT array_agg(s.slot ORDER BY s.slot), array_agg(s.n ORDER BY s.slot)
    INTO slots, counts
    FROM (SELECT c.slot, SUM(c.n)::BIGINT AS n
          FROM counted c GROUP BY c.slot) AS s;

    FOR r IN
        SELECT u.slot, u.n FROM unnest(slots, counts) AS u(slot, n)
        ORDER BY u.slot
    LOOP
        PERFORM add_statistics(r.slot, versions => r.n);
    END LOOP;
    RETURN NULL;
END;
$plpgsql$;

CREATE TRIGGER versions_added AFTER INSERT ON versions
    REFERENCING NEW TABLE AS come
    FOR EACH STATEMENT EXECUTE FUNCTION count_version_changes();
CREATE TRIGGER versions_removed AFTER DELETE ON versions
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION count_version_changes();
CREATE TRIGGER versions_recounted AFTER UPDATE OF package, skip ON versions
    FOR EACH ROW
    WHEN (OLD.package <> NEW.package OR (OLD.skip = '') <> (NEW.skip = ''))
    EXECUTE FUNCTION count_version_changes();

-- count_build_changes: builds added, removed or changed, a statement's at
-- once: the build figures, and for each package its successful builds and
-- its versions with any build.  Whether a version had a build before and
-- has one now is counted after the package's row is locked, with a fresh
-- snapshot, so that a build of the same package recorded meanwhile by
-- another transaction has committed and is seen.
CREATE FUNCTION count_build_changes() RETURNS TRIGGER
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $plpgsql$
DECLARE
    added builds[] := '{}';
    removed builds[] := '{}';
    built BIGINT;
    r RECORD;
BEGIN
    IF TG_OP <> 'DELETE' THEN
        added := ARRAY(SELECT b FROM come b);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        removed := ARRAY(SELECT b FROM gone b);
    END IF;
    -- most updates (failure classes) change nothing counted
    IF TG_OP = 'UPDATE' AND NOT EXISTS (
        (SELECT b.package, b.version, b.status, b.duration
         FROM unnest(added) b
         EXCEPT ALL
         SELECT b.package, b.version, b.status, b.duration
         FROM unnest(removed) b)
        UNION ALL
        (SELECT b.package, b.version, b.status, b.duration
         FROM unnest(removed) b
         EXCEPT ALL
         SELECT b.package, b.version, b.status, b.duration
         FROM unnest(added) b)) THEN
        RETURN NULL;
    END IF;

    PERFORM 1 FROM package_counters pc
    WHERE pc.package IN (SELECT b.package FROM unnest(added || removed) b)
    ORDER BY pc.package FOR UPDATE;

    FOR r IN
        WITH changes AS (
            SELECT b.package, b.version, 1 AS n, b.status, b.duration
            FROM unnest(added) b
            UNION ALL
            SELECT b.package, b.version, -1, b.status, -b.duration
            FROM unnest(removed) b
        ), releases AS (
            SELECT c.package, c.version, SUM(c.n) AS n
            FROM changes c GROUP BY c.package, c.version
        ), tried AS (
            -- releases with a build now, less those with one before
            SELECT rel.package,
                   SUM((x.n > 0)::INTEGER - (x.n - rel.n > 0)::INTEGER)
                       AS versions_tried
            FROM releases rel
            CROSS JOIN LATERAL (
                SELECT COUNT(*) AS n FROM builds b
                WHERE b.package = rel.package AND b.version = rel.version
            ) AS x
            GROUP BY rel.package
        )
        SELECT c.package, t.versions_tried, SUM(c.n) AS builds,
               COALESCE(SUM(c.n) FILTER (WHERE c.status), 0) AS successes,
               SUM(c.duration) AS builds_time
        FROM changes c JOIN tried t ON t.package = c.package
        GROUP BY c.package, t.versions_tried
        ORDER BY statistics_slot(c.package), c.package
    LOOP
        WITH counted AS (
            UPDATE package_counters pc
            SET builds_success = pc.builds_success + r.successes,
                versions_tried = pc.versions_tried + r.versions_tried
            WHERE pc.package = r.package
            RETURNING (pc.builds_success > 0)::INTEGER
                      - (pc.builds_success - r.successes > 0)::INTEGER
                      AS built
        )
        SELECT c.built INTO built FROM counted c;
        -- a package removed in this transaction took its share of
        -- packages_built and versions_tried with its row
        PERFORM add_statistics(
            statistics_slot(r.package),
            packages_built => COALESCE(built, 0),
            versions_tried => CASE WHEN built IS NULL THEN 0
                                   ELSE r.versions_tried END,
            builds => r.builds, builds_success => r.successes,
            builds_time => r.builds_time);
    END LOOP;
    RETURN NULL;
END;
$plpgsql$;

CREATE TRIGGER builds_added AFTER INSERT ON builds
    REFERENCING NEW TABLE AS come
    FOR EACH STATEMENT EXECUTE FUNCTION count_build_changes();
CREATE TRIGGER builds_changed AFTER UPDATE ON builds
    REFERENCING OLD TABLE AS gone NEW TABLE AS come
    FOR EACH STATEMENT EXECUTE FUNCTION count_build_changes();
CREATE TRIGGER builds_removed AFTER DELETE ON builds
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION count_build_changes();

-- count_file_changes: files added, removed or changed, a statement's at
-- once, each in the slot of the project its name belongs to (its build's
-- package, as the master checks before recording it)
CREATE FUNCTION count_file_changes() RETURNS TRIGGER
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $plpgsql$
DECLARE
    added files[] := '{}';
    removed files[] := '{}';
    r RECORD;
BEGIN
    IF TG_OP <> 'DELETE' THEN
        added := ARRAY(SELECT f FROM come f);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        removed := ARRAY(SELECT f FROM gone f);
    END IF;
    FOR r IN
        SELECT statistics_slot(lower(regexp_replace(c.package_tag, '[-_.]+',
                                                    '-', 'g'))) AS slot,
               SUM(c.n)::BIGINT AS files, SUM(c.filesize)::BIGINT AS size
        FROM (SELECT f.package_tag, 1 AS n, f.filesize FROM unnest(added) f
              UNION ALL
              SELECT f.package_tag, -1, -f.filesize FROM unnest(removed) f
             ) AS c
        GROUP BY 1
        ORDER BY 1
    LOOP
        PERFORM add_statistics(r.slot, files => r.files,
                               files_size => r.size);
    END LOOP;
    RETURN NULL;
END;
$plpgsql$;

CREATE TRIGGER files_added AFTER INSERT ON files
    REFERENCING NEW TABLE AS come
    FOR EACH STATEMENT EXECUTE FUNCTION count_file_changes();
CREATE TRIGGER files_changed AFTER UPDATE ON files
    REFERENCING OLD TABLE AS gone NEW TABLE AS come
    FOR EACH STATEMENT EXECUTE FUNCTION count_file_changes();
CREATE TRIGGER files_removed AFTER DELETE ON files
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION count_file_changes();

-- count_download_changes: downloads_daily's changes, a statement's at
-- once, into each day's total; download_totals' into the all-time figure.
-- log_hits already makes its batches wait for each other on the day's
-- rows, so these rows cost them no more waiting.
CREATE FUNCTION count_download_changes() RETURNS TRIGGER
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $plpgsql$
DECLARE
    days DATE[] := '{}';
    counts BIGINT[] := '{}';
    total BIGINT := 0;
BEGIN
    IF TG_TABLE_NAME = 'download_totals' THEN
        IF TG_OP <> 'DELETE' THEN
            SELECT total + COALESCE(SUM(t.downloads), 0) INTO total
            FROM come t;
        END IF;
        IF TG_OP <> 'INSERT' THEN
            SELECT total - COALESCE(SUM(t.downloads), 0) INTO total
            FROM gone t;
        END IF;
        PERFORM add_statistics(64::SMALLINT, downloads => total);
        RETURN NULL;
    END IF;

    IF TG_OP <> 'DELETE' THEN
        SELECT days || array_agg(d.day), counts || array_agg(d.downloads)
        INTO days, counts FROM come d;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        SELECT days || array_agg(d.day), counts || array_agg(-d.downloads)
        INTO days, counts FROM gone d;
    END IF;
    INSERT INTO download_counters AS c (day, downloads)
    SELECT u.day, SUM(u.n) FROM unnest(days, counts) AS u(day, n)
    GROUP BY u.day HAVING SUM(u.n) <> 0
    ORDER BY u.day
    ON CONFLICT ON CONSTRAINT download_counters_pk DO UPDATE
    SET downloads = c.downloads + EXCLUDED.downloads;
    RETURN NULL;
END;
$plpgsql$;

CREATE TRIGGER downloads_daily_added AFTER INSERT ON downloads_daily
    REFERENCING NEW TABLE AS come
    FOR EACH STATEMENT EXECUTE FUNCTION count_download_changes();
CREATE TRIGGER downloads_daily_changed AFTER UPDATE ON downloads_daily
    REFERENCING OLD TABLE AS gone NEW TABLE AS come
    FOR EACH STATEMENT EXECUTE FUNCTION count_download_changes();
CREATE TRIGGER downloads_daily_removed AFTER DELETE ON downloads_daily
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION count_download_changes();
CREATE TRIGGER download_totals_added AFTER INSERT ON download_totals
    REFERENCING NEW TABLE AS come
    FOR EACH STATEMENT EXECUTE FUNCTION count_download_changes();
CREATE TRIGGER download_totals_changed AFTER UPDATE ON download_totals
    REFERENCING OLD TABLE AS gone NEW TABLE AS come
    FOR EACH STATEMENT EXECUTE FUNCTION count_download_changes();
CREATE TRIGGER download_totals_removed AFTER DELETE ON download_totals
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION count_download_changes();

-- recount_statistics: count every counter again from the tables
-- themselves, writers waiting meanwhile.  The schema scripts fill the
-- counters with it; piw-rebuild or a test may check them with it.
-- Returns whether the counters kept agreed with the count.
CREATE FUNCTION recount_statistics() RETURNS BOOLEAN
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $plpgsql$
DECLARE
    kept statistics_counters;
    fresh statistics_counters;
    agreed BOOLEAN;
BEGIN
    LOCK TABLE packages, versions, builds, files, downloads_daily,
               download_totals IN SHARE MODE;
    LOCK TABLE statistics_counters, package_counters, download_counters
        IN EXCLUSIVE MODE;

    DROP TABLE IF EXISTS pg_temp.counted_packages;
    CREATE TEMPORARY TABLE counted_packages ON COMMIT DROP AS
    SELECT p.package, p.skip <> '' AS skipped,
           COALESCE(v.n, 0)::INTEGER AS versions,
           COALESCE(b.tried, 0)::INTEGER AS versions_tried,
           COALESCE(b.successes, 0)::INTEGER AS builds_success
    FROM packages p
    LEFT JOIN (SELECT v.package, COUNT(*) AS n
               FROM versions v WHERE v.skip = ''
               GROUP BY v.package) AS v ON v.package = p.package
    LEFT JOIN (SELECT b.package, COUNT(DISTINCT b.version) AS tried,
                      COUNT(*) FILTER (WHERE b.status) AS successes
               FROM builds b
               GROUP BY b.package) AS b ON b.package = p.package;

    SELECT 0, COUNT(*) FILTER (WHERE NOT c.skipped),
           COUNT(*) FILTER (WHERE c.builds_success > 0),
           COALESCE(SUM(c.versions) FILTER (WHERE NOT c.skipped), 0),
           COALESCE(SUM(c.versions_tried), 0),
           (SELECT COUNT(*) FROM builds),
           (SELECT COUNT(*) FROM builds WHERE status),
           (SELECT COALESCE(SUM(duration), INTERVAL '0') FROM builds),
           (SELECT COUNT(*) FROM files),
           (SELECT COALESCE(SUM(filesize), 0) FROM files),
           (SELECT COALESCE(SUM(downloads), 0) FROM download_totals)
    INTO fresh
    FROM pg_temp.counted_packages c;

    SELECT 0, SUM(c.packages), SUM(c.packages_built), SUM(c.versions),
           SUM(c.versions_tried), SUM(c.builds), SUM(c.builds_success),
           SUM(c.builds_time), SUM(c.files), SUM(c.files_size),
           SUM(c.downloads)
    INTO kept
    FROM statistics_counters c;

    SELECT kept IS NOT DISTINCT FROM fresh
       AND NOT EXISTS (
           (SELECT * FROM pg_temp.counted_packages
            EXCEPT ALL SELECT * FROM package_counters)
           UNION ALL
           (SELECT * FROM package_counters
            EXCEPT ALL SELECT * FROM pg_temp.counted_packages))
       AND NOT EXISTS (
           (SELECT d.day, SUM(d.downloads) FROM downloads_daily d
            GROUP BY d.day HAVING SUM(d.downloads) <> 0
            EXCEPT ALL
            SELECT c.day, c.downloads FROM download_counters c
            WHERE c.downloads <> 0)
           UNION ALL
           (SELECT c.day, c.downloads FROM download_counters c
            WHERE c.downloads <> 0
            EXCEPT ALL
            SELECT d.day, SUM(d.downloads) FROM downloads_daily d
            GROUP BY d.day HAVING SUM(d.downloads) <> 0))
    INTO agreed;

    TRUNCATE package_counters, statistics_counters, download_counters;
    INSERT INTO package_counters SELECT * FROM pg_temp.counted_packages;
    INSERT INTO statistics_counters (slot)
    SELECT generate_series(0, 64);
    fresh.slot := 0;
    UPDATE statistics_counters c
    SET (packages, packages_built, versions, versions_tried, builds,
         builds_success, builds_time, files, files_size) =
        (fresh.packages, fresh.packages_built, fresh.versions,
         fresh.versions_tried, fresh.builds, fresh.builds_success,
         fresh.builds_time, fresh.files, fresh.files_size)
    WHERE c.slot = 0;
    UPDATE statistics_counters c SET downloads = fresh.downloads
    WHERE c.slot = 64;
    INSERT INTO download_counters (day, downloads)
    SELECT d.day, SUM(d.downloads) FROM downloads_daily d GROUP BY d.day;
    DROP TABLE pg_temp.counted_packages;
    RETURN agreed;
END;
$plpgsql$;

SELECT recount_statistics();

-- get_statistics: the figures of the home page, the statistics page and
-- the monitors, from the counters above; only the builds of the last hour
-- are counted, on the recent end of builds_built_at
CREATE FUNCTION get_statistics()
RETURNS TABLE (
    packages_count BIGINT, packages_built BIGINT, versions_count BIGINT,
    versions_tried BIGINT, builds_count BIGINT, builds_count_success BIGINT,
    builds_count_last_hour BIGINT, builds_time INTERVAL, files_count BIGINT,
    builds_size BIGINT, downloads_last_month BIGINT, downloads_all BIGINT
)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT
        COALESCE(SUM(c.packages), 0)::BIGINT,
        COALESCE(SUM(c.packages_built), 0)::BIGINT,
        COALESCE(SUM(c.versions), 0)::BIGINT,
        COALESCE(SUM(c.versions_tried), 0)::BIGINT,
        COALESCE(SUM(c.builds), 0)::BIGINT,
        COALESCE(SUM(c.builds_success), 0)::BIGINT,
        (SELECT COUNT(*) FROM builds b
         WHERE b.built_at > CURRENT_TIMESTAMP - INTERVAL '1 hour'),
        COALESCE(SUM(c.builds_time), INTERVAL '0'),
        COALESCE(SUM(c.files), 0)::BIGINT,
        COALESCE(SUM(c.files_size), 0)::BIGINT,
        (SELECT COALESCE(SUM(d.downloads), 0)::BIGINT
         FROM download_counters d
         WHERE d.day > (CURRENT_TIMESTAMP AT TIME ZONE 'UTC')::DATE - 30),
        COALESCE(SUM(c.downloads), 0)::BIGINT
    FROM statistics_counters c
$sql$;

CREATE FUNCTION get_queue_lengths()
RETURNS TABLE (abi_tag VARCHAR, queued BIGINT)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT a.abi_tag, COUNT(q.package)
    FROM build_abis a LEFT JOIN build_queue q ON q.abi_tag = a.abi_tag
    WHERE a.skip = ''
    GROUP BY a.abi_tag
    ORDER BY a.abi_tag
$sql$;

-- get_search_index: every package with its description and downloads in
-- the last 30 days (today included) and all time, most downloaded first
CREATE FUNCTION get_search_index()
RETURNS TABLE (package VARCHAR, description VARCHAR,
               downloads_recent BIGINT, downloads_all BIGINT)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    WITH recent AS (
        SELECT d.package, SUM(d.downloads) AS downloads
        FROM downloads_daily d
        WHERE d.day > (CURRENT_TIMESTAMP AT TIME ZONE 'UTC')::DATE - 30
        GROUP BY d.package
    )
    SELECT p.package, p.description,
           COALESCE(r.downloads, 0)::BIGINT, COALESCE(t.downloads, 0)::BIGINT
    FROM packages p
    LEFT JOIN recent r ON r.package = p.package
    LEFT JOIN download_totals t ON t.package = p.package
    WHERE p.skip = ''
    ORDER BY 3 DESC, p.package
$sql$;

-- get_project_downloads: one project's downloads in the last 30 days
-- (today included) and all time
CREATE FUNCTION get_project_downloads(pkg VARCHAR)
RETURNS TABLE (downloads_recent BIGINT, downloads_all BIGINT)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT
        (SELECT COALESCE(SUM(d.downloads), 0)::BIGINT FROM downloads_daily d
         WHERE d.package = pkg
         AND d.day > (CURRENT_TIMESTAMP AT TIME ZONE 'UTC')::DATE - 30),
        (SELECT COALESCE(SUM(t.downloads), 0)::BIGINT FROM download_totals t
         WHERE t.package = pkg)
$sql$;

-- get_download_statistics: the statistics page's tables for the last
-- "days" days: downloads by installer, Python, distribution and CPU, the 20
-- most downloaded projects, and the build time downloads saved ("saved"
-- over the days, "saved_all" of all time)
CREATE FUNCTION get_download_statistics(days INTEGER)
RETURNS TABLE (kind VARCHAR, name VARCHAR, downloads BIGINT,
               time_saved INTERVAL)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    WITH clients AS (
        SELECT c.* FROM download_clients_daily c
        WHERE c.day > (CURRENT_TIMESTAMP AT TIME ZONE 'UTC')::DATE - days
    ), projects AS (
        SELECT d.package, SUM(d.downloads)::BIGINT AS downloads,
               SUM(d.time_saved) AS time_saved
        FROM downloads_daily d
        WHERE d.day > (CURRENT_TIMESTAMP AT TIME ZONE 'UTC')::DATE - days
        GROUP BY d.package
    )
    (SELECT 'installer'::VARCHAR, c.installer, SUM(c.downloads)::BIGINT,
            NULL::INTERVAL
     FROM clients c GROUP BY c.installer)
    UNION ALL
    (SELECT 'python', c.python, SUM(c.downloads)::BIGINT, NULL
     FROM clients c GROUP BY c.python)
    UNION ALL
    (SELECT 'distro', c.distro, SUM(c.downloads)::BIGINT, NULL
     FROM clients c GROUP BY c.distro)
    UNION ALL
    (SELECT 'arch', c.arch, SUM(c.downloads)::BIGINT, NULL
     FROM clients c GROUP BY c.arch)
    UNION ALL
    (SELECT 'project', p.package, p.downloads, p.time_saved
     FROM projects p ORDER BY p.downloads DESC, p.package LIMIT 20)
    UNION ALL
    (SELECT 'saved', '', COALESCE(SUM(p.downloads), 0)::BIGINT,
            COALESCE(SUM(p.time_saved), INTERVAL '0')
     FROM projects p)
    UNION ALL
    (SELECT 'saved_all', '', COALESCE(SUM(t.downloads), 0)::BIGINT,
            COALESCE(SUM(t.time_saved), INTERVAL '0')
     FROM download_totals t)
$sql$;

-------------------------------------------------------------------------------
-- The page writer's queue across restarts
-------------------------------------------------------------------------------

CREATE FUNCTION load_rewrites_pending()
RETURNS TABLE (package VARCHAR, added_at TIMESTAMP WITH TIME ZONE,
               command VARCHAR)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT r.package, r.added_at, r.command
    FROM rewrites_pending r ORDER BY r.added_at, r.package
$sql$;

-- update_rewrites_pending: what changed in the page writer's queue since
-- its last call: "done", a JSON array of package names, were written and
-- leave it; "added", a JSON array of objects with package, added_at and
-- command (one per package), join it or widen a request that waits (with
-- BOTH either way it is BOTH; the earlier time stays).  Saving costs what
-- changed, and a request is saved within a turn of the reactor.
CREATE FUNCTION update_rewrites_pending(done JSONB, added JSONB) RETURNS VOID
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    DELETE FROM rewrites_pending
    WHERE package IN (SELECT jsonb_array_elements_text(done));
    INSERT INTO rewrites_pending AS r (package, added_at, command)
    SELECT a.package, a.added_at, a.command
    FROM jsonb_to_recordset(added)
        AS a(package VARCHAR, added_at TIMESTAMP WITH TIME ZONE, command VARCHAR)
    ON CONFLICT (package) DO UPDATE
    SET added_at = LEAST(r.added_at, EXCLUDED.added_at),
        command = CASE WHEN r.command = 'BOTH' THEN 'BOTH'
                       ELSE EXCLUDED.command END;
$sql$;

-------------------------------------------------------------------------------
-- The web pages
-------------------------------------------------------------------------------

-- get_project_builds: every build of a package, for the project page's
-- table of releases and its links to the build logs
CREATE FUNCTION get_project_builds(pkg VARCHAR)
RETURNS TABLE (
    build_id INTEGER, version VARCHAR, abi_tag VARCHAR, status BOOLEAN,
    built_at TIMESTAMP WITH TIME ZONE, duration INTERVAL, reason VARCHAR,
    failure_class VARCHAR, failure_hint VARCHAR, rescued VARCHAR
)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT b.build_id, b.version, b.abi_tag, b.status, b.built_at,
           b.duration, b.reason, b.failure_class, b.failure_hint, b.rescued
    FROM builds b
    WHERE b.package = pkg
    ORDER BY b.build_id
$sql$;

-- get_project_dependencies: what each published file of a package needs, in
-- one call rather than one per file
CREATE FUNCTION get_project_dependencies(pkg VARCHAR)
RETURNS TABLE (filename VARCHAR, tool VARCHAR, dependency VARCHAR)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT d.filename, d.tool, d.dependency
    FROM builds b
    JOIN files f ON f.build_id = b.build_id
    JOIN dependencies d ON d.filename = f.filename
    WHERE b.package = pkg AND b.status
    ORDER BY d.filename, d.tool, d.dependency
$sql$;

-- get_project_page: everything the pages of one project show (its page,
-- its JSON, its simple index) in one row, so that writing them costs one
-- round trip: the package's description and skip reason, its downloads,
-- and its versions, files, builds, dependencies and aliases, each a JSON
-- array of rows in the order of get_project_versions, get_project_files,
-- get_project_builds, get_project_dependencies and get_package_aliases.
-- They travel as TEXT so that the master decodes them in a thread rather
-- than as the answer arrives.  Build durations are whole microseconds.
-- PL/pgSQL keeps the plan (a SQL function would plan its seven subqueries
-- on every call: 3 ms instead of 1 ms a project).
-- No row for a package the database does not know.
CREATE FUNCTION get_project_page(pkg VARCHAR)
RETURNS TABLE (
    description VARCHAR, skip VARCHAR, downloads_recent BIGINT,
    downloads_all BIGINT, versions TEXT, files TEXT, builds TEXT,
    dependencies TEXT, aliases TEXT
)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $plpgsql$
BEGIN
    RETURN QUERY
    SELECT
        p.description, p.skip,
        (SELECT COALESCE(SUM(d.downloads), 0)::BIGINT FROM downloads_daily d
         WHERE d.package = p.package
         AND d.day > (CURRENT_TIMESTAMP AT TIME ZONE 'UTC')::DATE - 30),
        (SELECT COALESCE(SUM(t.downloads), 0)::BIGINT FROM download_totals t
         WHERE t.package = p.package),
        (SELECT COALESCE(json_agg(json_build_array(
                    r.version, r.released, r.skip, r.yanked, r.yank_reason,
                    r.requires_python, r.succeeded, r.failed)
                ORDER BY r.released DESC, r.version DESC), '[]')::TEXT
         FROM (
             SELECT v.version, v.released, v.skip, v.yanked, v.yank_reason,
                    v.requires_python,
                    COALESCE(array_agg(DISTINCT b.abi_tag)
                             FILTER (WHERE b.status), '{}') AS succeeded,
                    COALESCE(array_agg(DISTINCT b.abi_tag)
                             FILTER (WHERE NOT b.status), '{}') AS failed
             FROM versions v
             LEFT JOIN builds b
                 ON b.package = v.package AND b.version = v.version
             WHERE v.package = p.package
             GROUP BY v.version, v.released, v.skip, v.yanked,
                      v.yank_reason, v.requires_python
         ) r),
        (SELECT COALESCE(json_agg(json_build_array(
                    b.version, b.build_id, f.abi_tag, f.filename, f.filesize,
                    f.filehash, f.requires_python, v.yanked, v.yank_reason)
                ORDER BY v.released DESC, f.filename), '[]')::TEXT
         FROM builds b
         JOIN files f ON f.build_id = b.build_id
         JOIN versions v ON v.package = b.package AND v.version = b.version
         WHERE b.package = p.package AND b.status),
        (SELECT COALESCE(json_agg(json_build_array(
                    b.build_id, b.version, b.abi_tag, b.status, b.built_at,
                    (extract(EPOCH FROM b.duration) * 1000000)::BIGINT,
                    b.reason, b.failure_class, b.failure_hint, b.rescued)
                ORDER BY b.build_id), '[]')::TEXT
         FROM builds b
         WHERE b.package = p.package),
        (SELECT COALESCE(json_agg(json_build_array(
                    d.filename, d.tool, d.dependency)
                ORDER BY d.filename, d.tool, d.dependency), '[]')::TEXT
         FROM builds b
         JOIN files f ON f.build_id = b.build_id
         JOIN dependencies d ON d.filename = f.filename
         WHERE b.package = p.package AND b.status),
        (SELECT COALESCE(json_agg(json_build_array(n.name, n.seen)
                ORDER BY n.seen DESC, n.name), '[]')::TEXT
         FROM package_names n
         WHERE n.package = p.package AND n.name <> p.package)
    FROM packages p
    WHERE p.package = pkg;
END;
$plpgsql$;

-- get_build_outputs: the logs of several builds at once (those a project's
-- pages link to but the output tree lacks), by build id, as many as fit in
-- max_bytes together (but always the first), so that one answer stays
-- small however long the logs; the caller asks again for those after the
-- last it got
CREATE FUNCTION get_build_outputs(bids INTEGER[], max_bytes BIGINT)
RETURNS TABLE (build_id INTEGER, output TEXT)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT l.build_id, l.output
    FROM (
        SELECT o.build_id, o.output,
               row_number() OVER (ORDER BY o.build_id) AS n,
               SUM(octet_length(o.output)) OVER (ORDER BY o.build_id)
                   AS running
        FROM output o
        WHERE o.build_id = ANY(bids)
    ) l
    WHERE l.n = 1 OR l.running <= max_bytes
    ORDER BY l.build_id
$sql$;

-- get_package_names: up to lim package names that sort after "after", in
-- order, as one newline-separated TEXT value with their count and the
-- last of them (the next page's "after"); skipped packages only when
-- with_skipped.  The root of the simple index, the sitemap and a full
-- rewrite read the 740,000 names of PyPI in such pages, each cheap to
-- receive, instead of all at once.
CREATE FUNCTION get_package_names(
    after VARCHAR, lim INTEGER, with_skipped BOOLEAN DEFAULT true
)
RETURNS TABLE (names TEXT, names_count INTEGER, last_name VARCHAR)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT COALESCE(string_agg(p.package, E'\n' ORDER BY p.package), ''),
           COUNT(*)::INTEGER, max(p.package)
    FROM (
        SELECT package FROM packages
        WHERE package > after AND (with_skipped OR skip = '')
        ORDER BY package
        LIMIT lim
    ) p
$sql$;

-- get_search_index_chunks: the search index (get_search_index's rows in
-- its order) as the text of packages.json, chunk_size entries a row: each
-- row holds comma-separated JSON arrays [package, description, downloads
-- in the last 30 days, downloads of all time] and how many it holds
-- (prepare_search_index keeps them for the master to read a few at a time).
CREATE FUNCTION get_search_index_chunks(chunk_size INTEGER)
RETURNS TABLE (chunk BIGINT, entries INTEGER, packages_json TEXT)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT (s.n - 1) / GREATEST(chunk_size, 1), COUNT(*)::INTEGER,
           string_agg(format('[%s,%s,%s,%s]', to_json(s.package),
                             to_json(s.description), s.downloads_recent,
                             s.downloads_all), ',' ORDER BY s.n)
    FROM (
        SELECT i.*, row_number() OVER (
            ORDER BY i.downloads_recent DESC, i.package) AS n
        FROM get_search_index() i
    ) s
    GROUP BY 1
    ORDER BY 1
$sql$;

-- search_index_chunks: the text of packages.json as prepare_search_index
-- last made it, read back a few chunks a query, so that no answer the
-- master receives is large and no transaction spans the reading.  A cache
-- rebuilt on demand: UNLOGGED, never worth the WAL of tens of megabytes
-- every few minutes
CREATE UNLOGGED TABLE search_index_chunks (
    chunk         INTEGER NOT NULL,
    entries       INTEGER NOT NULL,
    packages_json TEXT NOT NULL,

    CONSTRAINT search_index_chunks_pk PRIMARY KEY (chunk)
);

-- prepare_search_index: make the search index's text anew (see
-- get_search_index_chunks) and keep it in search_index_chunks; returns how
-- many chunks and entries it holds
CREATE FUNCTION prepare_search_index(chunk_size INTEGER)
RETURNS TABLE (chunks INTEGER, entries BIGINT)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $plpgsql$
BEGIN
    IF chunk_size IS NULL OR chunk_size < 1 THEN
        RAISE EXCEPTION 'chunk_size must be at least 1, not %', chunk_size;
    END IF;
    TRUNCATE search_index_chunks;
    INSERT INTO search_index_chunks (chunk, entries, packages_json)
    SELECT c.chunk, c.entries, c.packages_json
    FROM get_search_index_chunks(chunk_size) c;
    RETURN QUERY
    SELECT COUNT(*)::INTEGER, COALESCE(SUM(s.entries), 0)::BIGINT
    FROM search_index_chunks s;
END;
$plpgsql$;

-- get_search_index_text: up to lim chunks of the prepared search index
-- from chunk "first" (counting from 0), in order
CREATE FUNCTION get_search_index_text(first INTEGER, lim INTEGER)
RETURNS TABLE (chunk INTEGER, entries INTEGER, packages_json TEXT)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT s.chunk, s.entries, s.packages_json
    FROM search_index_chunks s
    WHERE s.chunk >= first
    ORDER BY s.chunk
    LIMIT lim
$sql$;

-- get_failures_by_class: failed builds of the last "days" days by failure
-- class ('' until classified), most first
CREATE FUNCTION get_failures_by_class(days INTEGER)
RETURNS TABLE (failure_class VARCHAR, failures BIGINT)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT b.failure_class, COUNT(*)
    FROM builds b
    WHERE NOT b.status
      AND b.built_at >= CURRENT_TIMESTAMP - days * INTERVAL '1 day'
    GROUP BY 1
    ORDER BY 2 DESC, 1
$sql$;

-- get_builds_per_day: builds and successful builds per ABI for each UTC day
-- of the last "days" days (today included).  The range condition on
-- built_at reads only the recent end of builds_built_at.
CREATE FUNCTION get_builds_per_day(days INTEGER)
RETURNS TABLE (day DATE, abi_tag VARCHAR, builds BIGINT, successes BIGINT)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT (b.built_at AT TIME ZONE 'UTC')::DATE, b.abi_tag, COUNT(*),
           COUNT(*) FILTER (WHERE b.status)
    FROM builds b
    WHERE b.built_at >= (date_trunc('day', CURRENT_TIMESTAMP AT TIME ZONE 'UTC')
                         - (days - 1) * INTERVAL '1 day') AT TIME ZONE 'UTC'
    GROUP BY 1, 2
    ORDER BY 1, 2
$sql$;

-- get_downloads_per_day: downloads for each UTC day of the last "days"
-- days, from downloads_daily (through downloads_daily_day)
CREATE FUNCTION get_downloads_per_day(days INTEGER)
RETURNS TABLE (day DATE, downloads BIGINT)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT d.day, SUM(d.downloads)::BIGINT
    FROM downloads_daily d
    WHERE d.day > (CURRENT_TIMESTAMP AT TIME ZONE 'UTC')::DATE - days
    GROUP BY d.day
    ORDER BY d.day
$sql$;

-- record_queue_lengths: get_queue_lengths, also kept as this hour's sample
-- in queue_history (samples older than 400 days are dropped)
CREATE FUNCTION record_queue_lengths()
RETURNS TABLE (abi_tag VARCHAR, queued BIGINT)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    WITH sample AS (
        SELECT * FROM get_queue_lengths()
    ), saved AS (
        INSERT INTO queue_history (abi_tag, recorded_at, queued)
        SELECT s.abi_tag, date_trunc('hour', CURRENT_TIMESTAMP), s.queued
        FROM sample s
        ON CONFLICT ON CONSTRAINT queue_history_pk
        DO UPDATE SET queued = EXCLUDED.queued
    ), pruned AS (
        DELETE FROM queue_history h
        WHERE h.recorded_at < CURRENT_TIMESTAMP - INTERVAL '400 days'
    )
    SELECT s.abi_tag, s.queued FROM sample s ORDER BY s.abi_tag
$sql$;

-- get_queue_history: the hourly samples of the last "days" days
CREATE FUNCTION get_queue_history(days INTEGER)
RETURNS TABLE (recorded_at TIMESTAMP WITH TIME ZONE, abi_tag VARCHAR,
               queued BIGINT)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT h.recorded_at, h.abi_tag, h.queued
    FROM queue_history h
    WHERE h.recorded_at >= CURRENT_TIMESTAMP - days * INTERVAL '1 day'
    ORDER BY h.recorded_at, h.abi_tag
$sql$;

-- get_monitor_figures: for the control hub, every few seconds: pending
-- builds per ABI and downloads in the last hour (through
-- downloads_accessed_at)
CREATE FUNCTION get_monitor_figures()
RETURNS TABLE (queue JSONB, downloads_last_hour BIGINT)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT
        (SELECT COALESCE(jsonb_object_agg(q.abi_tag, q.queued), '{}')
         FROM get_queue_lengths() q),
        (SELECT COUNT(*) FROM downloads d
         WHERE d.accessed_at > CURRENT_TIMESTAMP - INTERVAL '1 hour')
$sql$;

-- get_recent_builds: the builds of the last hour, once at the control
-- hub's start (it counts later ones as they are recorded)
CREATE FUNCTION get_recent_builds()
RETURNS TABLE (abi_tag VARCHAR, built_at TIMESTAMP WITH TIME ZONE,
               status BOOLEAN)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT b.abi_tag, b.built_at, b.status
    FROM builds b
    WHERE b.built_at > CURRENT_TIMESTAMP - INTERVAL '1 hour'
    ORDER BY b.built_at
$sql$;

-------------------------------------------------------------------------------
-- What the master's role may do: run the functions above, nothing else
-------------------------------------------------------------------------------

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO @MASTER_ROLE@;
