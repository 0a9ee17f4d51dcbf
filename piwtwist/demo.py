"""``make demo``: piwtwist on a private PostgreSQL cluster in one command.

So far it prepares the database (a private cluster under the demo folder,
the master's role and ``piw-initdb``); starting a master and a builder and
adding packages come with the admin tools.  Run twice, it reuses what is
there.
"""

import argparse
import sys
from pathlib import Path

from . import initdb
from .devcluster import ClusterError, PrivateCluster

MASTER_ROLE = "piwheels"
DATABASE = "piwheels"


def prepare_database(cluster):
    """Start the cluster and bring the piwheels database to the current
    schema; returns the master's DSN."""
    cluster.start()
    if not cluster.psql(f"SELECT 1 FROM pg_roles WHERE rolname = "
                        f"'{MASTER_ROLE}'").strip():
        cluster.psql(f"CREATE ROLE {MASTER_ROLE} LOGIN")
    if not cluster.psql(f"SELECT 1 FROM pg_database WHERE datname = "
                        f"'{DATABASE}'").strip():
        cluster.psql(f"CREATE DATABASE {DATABASE}")
    code = initdb.main(["-d", cluster.dsn(DATABASE), "-u", MASTER_ROLE, "-y"])
    if code != 0:
        raise ClusterError("piw-initdb could not prepare the database")
    return cluster.dsn(DATABASE, MASTER_ROLE)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="make demo")
    parser.add_argument("--dir", type=Path, default=Path("demo"))
    args = parser.parse_args(argv)
    cluster = PrivateCluster(args.dir.absolute() / "postgres")
    try:
        dsn = prepare_database(cluster)
        print(f"The demo database is ready: {dsn}")
        print("Not yet: starting a master and a builder and adding packages "
              "to build arrives with the admin tools; the demo stops here.")
    except ClusterError as e:
        print(f"make demo: {e}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
