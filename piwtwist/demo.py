"""``make demo``: piwtwist on a private PostgreSQL cluster in one command.

The demo starts, under one folder, everything a small piwtwist needs: a
private PostgreSQL cluster (UNIX socket only), the database (``piw-initdb``),
a master serving its output tree on ``http://127.0.0.1:8080/`` and one
builder for this machine's ABI.  It then asks the master to build a short
list of real PyPI releases (``docs/demo-packages.txt``), shows the builds'
progress, prints the ``pip install`` line that installs from the demo's
index, and serves until Ctrl+C, which stops everything it started and keeps
the data.  Run again, it reuses what is there.

Services refuse root, so as root they run as the unprivileged ``piwheels``
system user (created if missing) and the folders they write are handed to
it.  The demo itself is a plain launcher: it starts processes and polls;
it has no reactor of its own.
"""

import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from packaging import tags
from packaging.utils import canonicalize_name, canonicalize_version

from . import initdb, names
from .devcluster import ClusterError, PrivateCluster
from .service_user import ServiceUserError, as_user, own, service_user

MASTER_ROLE = "piwheels"
DATABASE = "piwheels"
TWISTD = Path(sys.executable).with_name("twistd")
DEFAULT_PACKAGES = (Path(__file__).resolve().parent.parent / "docs"
                    / "demo-packages.txt")
PYPI_SIMPLE = "https://pypi.org/simple/"
PYPI_API = "https://pypi.org/pypi"
BAR_WIDTH = 20
# what the master's PyPI follower says when it cannot read the journal
_JOURNAL_UNREADABLE = "cannot read PyPI's journal"


class DemoError(Exception):
    """Something the user must fix; the text says what, in a sentence or
    a few lines."""


class Stopped(Exception):
    """Ctrl+C or SIGTERM."""


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
    if _quiet_initdb(cluster) != 0:
        raise ClusterError("piw-initdb could not prepare the database")
    return cluster.dsn(DATABASE, MASTER_ROLE)


def _quiet_initdb(cluster):
    """``piw-initdb -y``, its report kept for when it fails."""
    said = io.StringIO()
    code = initdb.main(["-d", cluster.dsn(DATABASE), "-u", MASTER_ROLE, "-y"],
                       out=said, err=said)
    if code != 0:
        sys.stderr.write(said.getvalue())
    return code


# the list -------------------------------------------------------------------

def read_packages(path):
    """The pinned ``name==version`` lines of *path* as (name, version)
    pairs, in order and without repeats."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise DemoError(f"cannot read the package list {shown(path)}: "
                        f"{e.strerror or e}") from None
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, pinned, version = (part.strip() for part in
                                 line.partition("=="))
        try:
            if not pinned:
                raise names.InvalidName("no '=='")
            pair = (names.check_project_name(name),
                    names.check_version(version))
        except names.InvalidName as e:
            raise DemoError(f"{shown(path)} line {number}: expected "
                            f"NAME==VERSION, not {line!r} ({e})") from None
        if pair not in pairs:
            pairs.append(pair)
    if not pairs:
        raise DemoError(f"{shown(path)} lists no packages")
    return pairs


def shown(path):
    """*path* as the user would like to read it: relative to the current
    folder when it is below it."""
    path = Path(path).absolute()
    try:
        relative = path.relative_to(Path.cwd())
    except ValueError:
        return str(path)
    return str(relative) if relative.parts else "."


# progress -------------------------------------------------------------------

PENDING, BUILT, FAILED, SKIPPED = "pending", "built", "failed", "skipped"


def release_states(rows, published, pairs):
    """What became of each listed release.

    *rows* are (package, version, skip, build status or None, filename or
    None) from the database, *published(package, filename)* says whether
    the index already lists a file.  A release counts as built once a
    successful build's files are all in the index (so the ``pip install``
    line works when it is printed), as failed when every attempt failed,
    as skipped when the master will not build it.
    """
    found = {}
    for package, version, skip, status, filename in rows:
        key = (package, canonicalize_version(version))
        entry = found.setdefault(key, {"skip": skip, "ok": set(),
                                       "tried": False, "succeeded": False})
        if status is None:
            continue
        entry["tried"] = True
        if status:
            entry["succeeded"] = True
            if filename:
                entry["ok"].add(filename)
    states = {}
    for name, version in pairs:
        entry = found.get((canonicalize_name(name),
                           canonicalize_version(version)))
        if entry is None:
            state = PENDING
        elif entry["succeeded"]:
            package = canonicalize_name(name)
            state = BUILT if entry["ok"] and all(
                published(package, f) for f in entry["ok"]) else PENDING
        elif entry["tried"]:
            state = FAILED
        elif entry["skip"]:
            state = SKIPPED
        else:
            state = PENDING
        states[(name, version)] = state
    return states


def progress_line(states):
    """``[######--------------] 3/10 built, 1 failed``"""
    total = len(states)
    counts = {state: 0 for state in (PENDING, BUILT, FAILED, SKIPPED)}
    for state in states.values():
        counts[state] += 1
    done = total - counts[PENDING]
    filled = BAR_WIDTH * done // total if total else BAR_WIDTH
    line = (f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] "
            f"{counts[BUILT]}/{total} built, {counts[FAILED]} failed")
    if counts[SKIPPED]:
        line += f", {counts[SKIPPED]} skipped"
    return line


class Progress:
    """One line redrawn in place on a terminal; elsewhere a plain line
    each time it changes."""

    def __init__(self, out):
        self.out = out
        self.tty = out.isatty()
        self.last = None
        self.open = False

    def show(self, line):
        if line == self.last:
            return
        self.last = line
        if self.tty:
            self.out.write("\r" + line + "\033[K")
            self.open = True
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def end(self):
        """Leave the line as it is and move below it."""
        if self.open:
            self.out.write("\n")
            self.out.flush()
            self.open = False

    def clear(self):
        """Make room for a message; the line is drawn again after it."""
        if self.open:
            self.out.write("\r\033[K")
            self.open = False
            self.last = None


# the machine ----------------------------------------------------------------

def local_abi():
    """The ABI tag a builder on this machine reports (e.g. cp311)."""
    return next(tags.sys_tags()).abi


def port_in_use(port, host="127.0.0.1"):
    """Whether something listens on *host*:*port* (as twistd binds, with
    SO_REUSEADDR, so our own closed connections do not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def can_compile():
    """Whether C extensions can be built here: a compiler and Python's
    headers."""
    include = sysconfig.get_paths().get("include") or ""
    return bool(shutil.which("cc") or shutil.which("gcc")) and \
        (Path(include) / "Python.h").exists()


def check_service_user(user, directory):
    """Fail early, with a hint, when *user* cannot run our Python or write
    the demo's folder (a checkout under /root, say)."""
    if user is None:
        return
    probe = subprocess.run(
        [sys.executable, "-c",
         "import os, sys, piwtwist, twisted.scripts.twistd\n"
         "sys.exit(0 if os.access(sys.argv[1], os.W_OK | os.X_OK) else 3)",
         str(directory)],
        cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        **as_user(user))
    if probe.returncode == 3:
        raise DemoError(
            f"the {user} user cannot write {directory}: are the folders "
            f"above it open to other users (chmod o+x)? Or choose another "
            f"folder with --dir.")
    if probe.returncode != 0:
        last = probe.stdout.strip().splitlines()[-1:] or [""]
        raise DemoError(
            f"the {user} user cannot run {sys.executable} with piwtwist "
            f"({last[0]}); the checkout and its .venv must be readable by "
            f"other users (a checkout under /root is not).")


def _tail(path, lines=12):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


class Service:
    """One twistd process: started in a session of its own (Ctrl+C in the
    terminal reaches only the demo, which stops it in order)."""

    def __init__(self, name, demo_dir, run_dir, user):
        self.name = name
        self.log_path = demo_dir / f"{name}.log"
        self.out_path = run_dir / f"{name}.out"
        self.demo_dir = demo_dir
        self.user = user
        self.process = None
        self.log_start = 0

    def start(self, args):
        try:
            self.log_start = self.log_path.stat().st_size
        except OSError:
            self.log_start = 0
        command = [str(TWISTD), "-n", "--pidfile=",
                   f"--logfile={self.log_path}", *args]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "HOME": str(self.demo_dir), "LANG": "C.UTF-8"}
        with open(self.out_path, "wb") as out:
            self.process = subprocess.Popen(
                command, cwd=self.demo_dir, env=env, start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, **as_user(self.user))
        return self.process.pid

    def running(self):
        return self.process is not None and self.process.poll() is None

    def log_text(self):
        """What it has logged since it started (the log file is shared
        with earlier runs; twistd rotates it at a megabyte)."""
        try:
            with open(self.log_path, "rb") as log:
                if os.fstat(log.fileno()).st_size >= self.log_start:
                    log.seek(self.log_start)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def last_words(self):
        """The last lines it wrote, for when it stopped by surprise."""
        return _tail(self.out_path, 6) + _tail(self.log_path, 12)

    def stop(self, timeout=30):
        if not self.running():
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()


def _stop_leftovers(pid_file, demo_dir):
    """Stop the services an earlier run could not (it was killed): their
    pids are recorded, and a pid is only trusted when that process is
    still a twistd service of this demo folder."""
    try:
        recorded = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        return []
    stopped = []
    for name, pid in reversed(list(recorded.items())):
        try:
            with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except (OSError, ValueError):
            continue
        if f"piwheels-{name}" not in cmdline or str(demo_dir) not in cmdline:
            continue
        try:
            os.killpg(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if Path(f"/proc/{pid}").exists():
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        stopped.append(f"{name} (pid {pid})")
    pid_file.unlink(missing_ok=True)
    return stopped


# the demo -------------------------------------------------------------------

class Demo:
    def __init__(self, args, out=sys.stdout):
        self.args = args
        self.out = out
        self.dir = args.dir.absolute()
        self.run_dir = self.dir / "run"
        self.output = self.dir / "www"
        self.build_dir = self.dir / "build"
        self.secret = self.dir / "secret"
        self.pid_file = self.run_dir / "pids.json"
        self.import_socket = self.run_dir / "import.sock"
        self.url = f"http://127.0.0.1:{args.http_port}/"
        self.cluster = None
        self.services = []
        self.progress = Progress(out)
        self.said_unreachable = False

    def say(self, line):
        self.progress.clear()
        self.out.write(line + "\n")
        self.out.flush()

    def run(self):
        """The whole demo; the exit code."""
        signal.signal(signal.SIGTERM, _raise_stopped)
        signal.signal(signal.SIGINT, _raise_stopped)
        code = 0
        interrupted = False
        try:
            self.main()
        except Stopped:
            # the terminal echoed ^C where the cursor was: move below it
            if self.progress.tty:
                self.progress.open = True
                self.progress.end()
            interrupted = True
        except (DemoError, ClusterError, ServiceUserError) as e:
            self.progress.end()
            sys.stderr.write(f"make demo: {e}\n")
            code = 1
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            stopped_any = self.stop_everything()
            if stopped_any or interrupted:
                self.say(f"stopped; data kept in {shown(self.dir)}/ for the "
                         f"next run.")
        return code

    def main(self):
        args = self.args
        pairs = read_packages(args.packages)
        self.say(f"piwtwist demo in {shown(self.dir)}")
        leftovers = _stop_leftovers(self.pid_file, self.dir)
        if leftovers:
            self.say("stopped what an earlier run left running: "
                     + ", ".join(leftovers))
        if port_in_use(args.http_port):
            raise DemoError(
                f"port {args.http_port} of 127.0.0.1 is in use by another "
                f"program; stop it, or choose another port: make demo "
                f"DEMO_ARGS='--http-port {args.http_port + 1}'")
        user = service_user()
        self.prepare_folders(user)
        check_service_user(user, self.dir)

        self.cluster = PrivateCluster(self.dir / "postgres")
        dsn = prepare_database(self.cluster)
        self.say(f"database ready (private PostgreSQL in "
                 f"{shown(self.cluster.directory)})")

        abi = local_abi()
        builder_port = free_port()
        master = self.start_master(dsn, abi, builder_port, user)
        builder = self.start_builder(builder_port, user)
        self.say(f"master on {self.url} (log: {shown(master.log_path)}), "
                 f"builder for {abi} (log: {shown(builder.log_path)})")
        if not can_compile():
            self.say("no C compiler or no Python headers here: C extensions "
                     "will fail to build (apt-get install build-essential "
                     "python3-dev)")

        self.add_packages(pairs)
        states = self.wait_until_built(pairs)
        self.report(states)
        if args.exit_when_built:
            return
        self.say("Serving until Ctrl+C.")
        while True:
            self.check_services()
            self.check_follower()
            time.sleep(1)

    # set-up ---------------------------------------------------------------

    def prepare_folders(self, user):
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        for folder in (self.run_dir, self.output, self.build_dir):
            folder.mkdir(exist_ok=True)
        os.chmod(self.run_dir, 0o750)
        if not self.secret.exists():
            fd = os.open(self.secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                         0o640)
            with os.fdopen(fd, "w") as f:
                f.write(os.urandom(24).hex() + "\n")
        os.chmod(self.secret, 0o640)
        own(self.dir, user, recursive=False)
        for path in (self.run_dir, self.output, self.build_dir, self.secret,
                     self.dir / "master.log", self.dir / "builder.log"):
            own(path, user)
        for path in self.dir.glob("*.log.*"):
            own(path, user)

    def record_pids(self):
        self.pid_file.write_text(json.dumps(
            {s.name: s.process.pid for s in self.services if s.running()}))

    def start_master(self, dsn, abi, builder_port, user):
        args = self.args
        master = Service("master", self.dir, self.run_dir, user)
        self.services.append(master)
        master.start([
            "piwheels-master", "-c", os.devnull,
            "-d", dsn, "-o", str(self.output),
            "--build-abi", abi,
            "--builder-queue", f"tcp:{builder_port}:interface=127.0.0.1",
            "--import-queue", f"unix:{self.import_socket}",
            "--control-queue", f"unix:{self.run_dir / 'control.sock'}",
            "--log-queue", f"unix:{self.run_dir / 'logger.sock'}",
            "--http-endpoint", f"tcp:{args.http_port}:interface=127.0.0.1",
            "--site-url", self.url,
            "--secret-file", str(self.secret),
            "--pypi-simple", args.pypi_simple,
            "--pypi-json", args.pypi_json,
            "--pypi-xmlrpc", args.pypi_xmlrpc,
            "--dev-mode",
        ])
        self.record_pids()
        deadline = time.monotonic() + 120
        while "piwtwist master ready" not in master.log_text():
            self.check_services()
            if time.monotonic() > deadline:
                raise DemoError(self.died(master, "did not start within two "
                                          "minutes"))
            time.sleep(0.2)
        return master

    def start_builder(self, builder_port, user):
        builder = Service("builder", self.dir, self.run_dir, user)
        self.services.append(builder)
        builder.start([
            "piwheels-builder", "-c", os.devnull,
            "-m", f"127.0.0.1:{builder_port}", "-d", str(self.build_dir),
            "-L", "demo", "--secret-file", str(self.secret),
        ])
        self.record_pids()
        return builder

    def add_packages(self, pairs):
        """Ask the master (through ``piw-add``) for the releases it does
        not know yet."""
        known = self.known_releases(pairs)
        missing = [(n, v) for n, v in pairs
                   if (canonicalize_name(n), canonicalize_version(v))
                   not in known]
        if not missing:
            return
        self.say(f"adding {len(missing)} package"
                 f"{'s' if len(missing) != 1 else ''} from "
                 f"{shown(self.args.packages)}")
        requirements = self.run_dir / "adding.txt"
        requirements.write_text("".join(f"{n}=={v}\n" for n, v in missing))
        command = [sys.executable, "-m", "piwtwist.admin.add", "-c",
                   os.devnull, "--import-queue", f"unix:{self.import_socket}",
                   "-y", "--requirements", str(requirements)]
        try:
            result = subprocess.run(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, timeout=600, cwd="/")
        except subprocess.TimeoutExpired:
            raise DemoError("piw-add did not finish within ten minutes")
        self.check_services()
        if result.returncode != 0:
            # piw-add says which releases failed on stdout, and sums up on
            # stderr
            said = [line for line in result.stdout.splitlines()
                    if line.startswith("failed:")]
            said += result.stderr.strip().splitlines()
            raise DemoError("could not add the packages:\n  " + "\n  ".join(
                said[-8:] or [f"piw-add exited with {result.returncode}"]))

    # watching -------------------------------------------------------------

    def died(self, service, how=None):
        lines = service.last_words()
        if how is None:
            code = service.process.returncode
            how = "stopped unexpectedly " + (
                f"(killed by signal {-code})" if code < 0 else
                f"(exit code {code})")
        text = f"the {service.name} {how}"
        if lines:
            text += (f"; the last lines of its log "
                     f"({shown(service.log_path)}):\n    "
                     + "\n    ".join(lines))
        return text

    def check_services(self):
        for service in self.services:
            if service.process is not None and not service.running():
                raise DemoError(self.died(service))

    def check_follower(self):
        if self.said_unreachable:
            return
        master = self.services[0]
        if _JOURNAL_UNREADABLE in master.log_text():
            self.said_unreachable = True
            self.say("PyPI's XML-RPC API is unreachable: following no new "
                     "releases, building the list only")

    def _connect(self):
        import psycopg2
        try:
            connection = psycopg2.connect(self.cluster.dsn(DATABASE))
        except psycopg2.Error as e:
            raise DemoError(f"cannot read the demo's database: "
                            f"{str(e).strip()}") from None
        connection.autocommit = True
        return connection

    def _query(self, sql, params):
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall()
        finally:
            connection.close()

    def known_releases(self, pairs):
        rows = self._query("SELECT package, version FROM versions "
                           "WHERE package = ANY(%s)",
                           ([canonicalize_name(n) for n, _ in pairs],))
        return {(p, canonicalize_version(v)) for p, v in rows}

    def states(self, pairs):
        rows = self._query(
            "SELECT v.package, v.version, v.skip, b.status, f.filename "
            "FROM versions v "
            "LEFT JOIN builds b USING (package, version) "
            "LEFT JOIN files f ON f.build_id = b.build_id "
            "WHERE v.package = ANY(%s)",
            ([canonicalize_name(n) for n, _ in pairs],))
        return release_states(rows, self.published, pairs)

    def published(self, package, filename):
        page = self.output / "simple" / package / "index.html"
        try:
            return filename in page.read_text(errors="replace")
        except OSError:
            return False

    def wait_until_built(self, pairs):
        while True:
            self.check_services()
            self.check_follower()
            states = self.states(pairs)
            self.progress.show(progress_line(states))
            if PENDING not in states.values():
                self.progress.end()
                return states
            time.sleep(1)

    def report(self, states):
        built = [name for (name, _), state in states.items()
                 if state == BUILT]
        for (name, version), state in states.items():
            if state in (FAILED, SKIPPED):
                self.say(f"{name} {version} {state}: see "
                         f"{self.url}project/{canonicalize_name(name)}/")
        if not built:
            self.say("nothing was built.")
            return
        self.say("all built. Install them with:" if len(built) == len(states)
                 else "Install what was built with:")
        self.say(f"  pip install --index-url {self.url}simple/ "
                 + " ".join(built))

    # stopping -------------------------------------------------------------

    def stop_everything(self):
        """Stop the builder, the master, then the database; whether there
        was anything to stop."""
        anything = False
        for service in reversed(self.services):
            if service.running():
                anything = True
            service.stop()
        self.pid_file.unlink(missing_ok=True)
        if self.cluster is not None:
            try:
                if self.cluster.running():
                    anything = True
                    self.cluster.stop()
            except ClusterError as e:
                sys.stderr.write(f"make demo: could not stop PostgreSQL: "
                                 f"{e}\n")
        return anything


def _raise_stopped(signum, frame):
    raise Stopped()


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="make demo",
        description="Run piwtwist on a private PostgreSQL and build a few "
                    "PyPI packages; Ctrl+C stops it, the data stays for "
                    "the next run.")
    parser.add_argument("--dir", type=Path, default=Path("demo"),
                        help="where everything goes (default: demo)")
    parser.add_argument("--packages", type=Path, default=DEFAULT_PACKAGES,
                        help="the pinned NAME==VERSION lines to build "
                             "(default: docs/demo-packages.txt)")
    parser.add_argument("--pypi-simple", default=PYPI_SIMPLE,
                        help="PyPI's simple index (builders fetch sources "
                             "there)")
    parser.add_argument("--pypi-json", default=PYPI_API,
                        help="PyPI's JSON API")
    parser.add_argument("--pypi-xmlrpc", default=PYPI_API,
                        help="PyPI's XML-RPC API")
    parser.add_argument("--http-port", type=int, default=8080,
                        help="where the index is served on 127.0.0.1 "
                             "(default: 8080)")
    parser.add_argument("--exit-when-built", action="store_true",
                        help="stop everything once the list is built")
    args = parser.parse_args(argv)
    if not 0 < args.http_port < 65536:
        parser.error(f"--http-port {args.http_port} is not a port")
    args.packages = args.packages.absolute()
    return Demo(args).run()


if __name__ == "__main__":
    sys.exit(main())
