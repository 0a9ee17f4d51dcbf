"""A private, throwaway PostgreSQL cluster for the tests and the demo.

PostgreSQL refuses to run as root, so when we are root the server runs as the
``postgres`` system user (the Debian package creates it) and the cluster's
directory is handed to that user.  The server listens only on a UNIX socket
in the cluster's ``socket/`` folder and trusts local connections, so that
the services under test (which run as an ordinary user) can reach it; it is
for tests and the demo, never for a real deployment.
"""

import glob
import os
import pwd
import shutil
import subprocess
from pathlib import Path

SERVER_USER = "postgres"
SUPERUSER = "postgres"


class ClusterError(Exception):
    """The private cluster could not be created, started or stopped."""


def find_bindir():
    """Where ``initdb`` and ``pg_ctl`` live: Debian keeps them off ``PATH``."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda path: int(Path(path).parent.name)
        if Path(path).parent.name.isdigit() else 0,
        reverse=True,
    )
    for bindir in candidates:
        if os.access(os.path.join(bindir, "initdb"), os.X_OK):
            return bindir
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(found)
    raise ClusterError(
        "PostgreSQL's server programs (initdb, pg_ctl) are not installed; "
        "on Debian run: apt-get install postgresql")


class PrivateCluster:
    """One PostgreSQL cluster in *directory*, reachable through its socket."""

    def __init__(self, directory, bindir=None, port=5432):
        self.directory = Path(directory).absolute()
        self.data = self.directory / "data"
        self.socket_dir = self.directory / "socket"
        self.log_file = self.directory / "server.log"
        self.port = port
        self.bindir = bindir or find_bindir()
        self.as_root = os.geteuid() == 0

    def dsn(self, dbname="postgres", user=SUPERUSER):
        """A libpq keyword DSN for *dbname* as *user* over the socket."""
        return (f"host={self.socket_dir} port={self.port} "
                f"dbname={dbname} user={user}")

    def _run(self, *args, check=True):
        command = [os.path.join(self.bindir, args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        result = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, cwd="/")
        if check and result.returncode != 0:
            raise ClusterError(
                f"{args[0]} failed ({result.returncode}):\n{result.stdout}")
        return result

    def _prepare_directory(self):
        # others may pass through to the socket, not list or read the rest
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o711)
        self.socket_dir.mkdir(exist_ok=True)
        os.chmod(self.socket_dir, 0o755)
        if self.as_root:
            try:
                owner = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise ClusterError(
                    f"running as root needs the {SERVER_USER!r} system user "
                    "(apt-get install postgresql creates it)") from None
            for path in (self.directory, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)

    def initialized(self):
        return (self.data / "PG_VERSION").exists()

    def create(self):
        """Create the cluster unless it already exists."""
        self._prepare_directory()
        if self.initialized():
            return
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER,
                  "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8",
                  "--no-sync")

    def running(self):
        return self._run("pg_ctl", "status", "-D", str(self.data),
                         check=False).returncode == 0

    def start(self, **settings):
        """Create if needed and start the server; wait until it accepts."""
        self.create()
        if self.running():
            return
        options = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "port": str(self.port),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        options.update({key: str(value) for key, value in settings.items()})
        server_options = " ".join(f"-c {key}={value}"
                                  for key, value in options.items())
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data),
                  "-l", str(self.log_file), "-o", server_options)

    def stop(self, mode="fast"):
        if self.initialized() and self.running():
            self._run("pg_ctl", "stop", "-w", "-m", mode, "-D",
                      str(self.data))

    def restart(self, mode="fast"):
        """Stop and start again with the same settings (connections drop)."""
        # -l again: without it the server inherits our pipe and never lets go.
        self._run("pg_ctl", "restart", "-w", "-m", mode, "-D",
                  str(self.data), "-l", str(self.log_file))

    def psql(self, sql, dbname="postgres", user=SUPERUSER):
        """Run *sql* with psql, failing loudly; used for set-up only."""
        psql = os.path.join(self.bindir, "psql")
        result = subprocess.run(
            [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At",
             "-d", self.dsn(dbname, user), "-c", sql],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            raise ClusterError(f"psql failed: {result.stdout}")
        return result.stdout

    def destroy(self):
        self.stop(mode="immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

