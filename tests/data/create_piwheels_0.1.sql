-- piwtwist database, schema version 0.1 (the first release)
-- Kept for the upgrade test only: piw-initdb never creates it.
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
INSERT INTO configuration (id, version) VALUES (1, '0.1');

-- packages: one row a project, by canonical (PEP 503) name; a non-empty
-- skip says why nothing of it is built
CREATE TABLE packages (
    package     VARCHAR(200) NOT NULL,
    skip        VARCHAR(100) DEFAULT '' NOT NULL,
    description VARCHAR(200) DEFAULT '' NOT NULL,

    CONSTRAINT packages_pk PRIMARY KEY (package)
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

    CONSTRAINT versions_pk PRIMARY KEY (package, version),
    CONSTRAINT versions_package_fk FOREIGN KEY (package)
        REFERENCES packages ON DELETE CASCADE
);

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

    CONSTRAINT builds_pk PRIMARY KEY (build_id),
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
    CONSTRAINT dependencies_tool_ck CHECK (tool IN ('apt', 'pip', ''))
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

-- hits: downloads, searches, project pages, project JSON, other pages
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
    setuptools_version VARCHAR(100)
);
CREATE INDEX downloads_filename ON downloads (filename);
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
    setuptools_version VARCHAR(100)
);
CREATE INDEX searches_package ON searches (package);
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

-- rewrites_pending: the page writer's queue, kept across restarts
CREATE TABLE rewrites_pending (
    package  VARCHAR(200) NOT NULL,
    added_at TIMESTAMP WITH TIME ZONE NOT NULL,
    command  VARCHAR(8) NOT NULL,

    CONSTRAINT rewrites_pending_pk PRIMARY KEY (package),
    CONSTRAINT rewrites_pending_command_ck CHECK (command IN ('PROJECT', 'BOTH'))
);


-------------------------------------------------------------------------------
-- 0.1's functions (the queue was computed on every call)
-------------------------------------------------------------------------------

CREATE FUNCTION get_schema_version() RETURNS VARCHAR
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT version FROM configuration WHERE id = 1
$sql$;

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

CREATE FUNCTION add_new_package_version(
    pkg VARCHAR, ver VARCHAR, released_at TIMESTAMP WITH TIME ZONE,
    skip_reason VARCHAR
) RETURNS BOOLEAN
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $plpgsql$
BEGIN
    INSERT INTO versions (package, version, released, skip)
    VALUES (pkg, ver, released_at, skip_reason)
    ON CONFLICT (package, version) DO NOTHING;
    RETURN FOUND;
END;
$plpgsql$;

CREATE FUNCTION yank_version(pkg VARCHAR, ver VARCHAR) RETURNS VOID
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    UPDATE versions SET yanked = true WHERE package = pkg AND version = ver
$sql$;

CREATE FUNCTION get_build_queue(lim INTEGER)
RETURNS TABLE (abi_tag VARCHAR, package VARCHAR, version VARCHAR)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $sql$
    SELECT a.abi_tag, q.package, q.version
    FROM build_abis a
    CROSS JOIN LATERAL (
        SELECT v.package, v.version
        FROM versions v JOIN packages p ON p.package = v.package
        WHERE p.skip = '' AND v.skip = ''
        AND NOT EXISTS (
            SELECT 1 FROM builds b LEFT JOIN files f ON f.build_id = b.build_id
            WHERE b.package = v.package AND b.version = v.version
            AND (b.abi_tag = a.abi_tag OR f.abi_tag = 'none')
        )
        ORDER BY v.released DESC
        LIMIT lim
    ) AS q
    WHERE a.skip = ''
$sql$;

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO @MASTER_ROLE@;
