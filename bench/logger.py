"""Benchmark: web-server log lines through ``piw-logger`` into a real master
and PostgreSQL, against one INSERT per line into the same database.

See bench/README.md.
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from piwtwist.db.schema import create_script  # noqa: E402
from piwtwist.devcluster import PrivateCluster  # noqa: E402
from piwtwist.logger.classify import (CLIENT_KEYS, DOWNLOAD, JSON,  # noqa
                                      PAGE, PROJECT, SEARCH)
from piwtwist.logger.parse import BrokenLine, LineParser  # noqa: E402
from piwtwist.service_user import own  # noqa: E402
from tests.e2e import Service, service_user  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from proc import process_cpu  # noqa: E402

MASTER_ROLE = "piwheels"
DBNAME = "piwheels_logger"
BIN = Path(sys.executable).parent

PIP = ('pip/{v} {{"ci":null,"cpu":"{cpu}","distro":{{"id":"{id}","libc":'
       '{{"lib":"glibc","version":"2.36"}},"name":"{distro}","version":'
       '"{dv}"}},"implementation":{{"name":"CPython","version":"{py}"}},'
       '"installer":{{"name":"pip","version":"{v}"}},"openssl_version":'
       '"OpenSSL 3.0.11 19 Sep 2023","python":"{py}","setuptools_version":'
       '"66.1.1","system":{{"name":"Linux","release":"6.1.0-rpi7-rpi-v7"}}}}')
UV = ('uv/{v} {{"installer":{{"name":"uv","version":"{v}"}},"python":"{py}",'
      '"implementation":{{"name":"CPython","version":"{py}"}},"distro":'
      '{{"name":"{distro}","version":"{dv}","id":"{id}","libc":{{"lib":'
      '"glibc","version":"2.36"}}}},"system":{{"name":"Linux","release":'
      '"6.6.31+rpt-rpi-v8"}},"cpu":"{cpu}","openssl_version":null,'
      '"setuptools_version":null,"rustc_version":null,"ci":null}}')
OTHERS = ["Wget/1.21.3", "curl/7.88.1", "python-requests/2.31.0",
          "Mozilla/5.0 (X11; Linux aarch64; rv:128.0) Gecko/20100101 "
          "Firefox/128.0",
          "Mozilla/5.0 (compatible; Googlebot/2.1; "
          "+http://www.google.com/bot.html)"]
DISTROS = [("Raspbian GNU/Linux", "11", "bullseye"),
           ("Raspbian GNU/Linux", "12", "bookworm"),
           ("Debian GNU/Linux", "12", "bookworm"),
           ("Ubuntu", "24.04", "noble")]


def out(line=""):
    print(line, flush=True)


def agents(rng):
    """A few hundred distinct agents, as a real log has."""
    found = []
    for _ in range(300):
        distro, dv, ident = rng.choice(DISTROS)
        values = dict(distro=distro, dv=dv, id=ident,
                      cpu=rng.choice(["armv7l", "armv6l", "aarch64"]),
                      py=rng.choice(["3.9.2", "3.11.2", "3.12.3"]))
        if rng.random() < 0.75:
            found.append(PIP.format(v=rng.choice(["23.0.1", "24.0", "24.2"]),
                                    **values))
        else:
            found.append(UV.format(v=rng.choice(["0.4.18", "0.5.2"]),
                                   **values))
    return found


def generate(path, count, packages, seed=1):
    """*count* combined-format lines: mostly pip and uv downloads and
    searches, some pages, some ignored, about 1% broken.  Returns the
    numbers of downloads and broken lines."""
    rng = random.Random(seed)
    installers = agents(rng)
    start = time.time() - 3600
    downloads = broken = 0
    with open(path, "w") as log:
        for n in range(count):
            moment = time.strftime("%d/%b/%Y:%H:%M:%S +0000",
                                   time.gmtime(start + n * 3600 / count))
            host = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
            package = f"pkg{rng.randrange(packages)}"
            roll = rng.random()
            agent = rng.choice(installers)
            status = 200
            if roll < 0.55:
                path_ = f"/simple/{package}/{package}-1.0-py3-none-any.whl"
                downloads += 1
            elif roll < 0.60:
                path_ = f"/simple/{package}/{package}-1.0-py3-none-any.whl"
                agent = rng.choice(OTHERS[:3])
                downloads += 1
            elif roll < 0.80:
                path_ = f"/simple/{package}/"
            elif roll < 0.85:
                path_ = f"/simple/{package}/{package}-1.0-py3-none-any" \
                        f".whl.metadata"
            elif roll < 0.90:
                path_, agent = f"/project/{package}/", rng.choice(OTHERS)
            elif roll < 0.92:
                path_, agent = f"/project/{package}/json/", OTHERS[1]
            elif roll < 0.95:
                path_, agent = rng.choice(["/", "/stats.html",
                                           "/packages.html"]), OTHERS[3]
            else:
                path_, agent = "/site.css", OTHERS[3]
            escaped = agent.replace('"', '\\"')
            line = (f'{host} - - [{moment}] "GET {path_} HTTP/1.1" {status} '
                    f'{rng.randrange(100, 90000)} "-" "{escaped}"\n')
            if rng.random() < 0.01:
                broken += 1
                if roll < 0.60:
                    downloads -= 1
                line = rng.choice([
                    line[:rng.randrange(10, 60)] + "\n",
                    line.replace(f"/{moment[3:6]}/", "/Foo/", 1),
                    "\x00\x01 binary \xff garbage\n"])
            log.write(line)
    return downloads, broken


class LoggerBenchmark:
    def __init__(self, args):
        self.args = args
        self.user = service_user()
        self.directory = Path(tempfile.mkdtemp(prefix="piwtwist-logger-"))
        os.chmod(self.directory, 0o755)
        self.cluster = PrivateCluster(self.directory / "pg")
        self.master = None

    def prepare(self):
        a = self.args
        if a.no_durability:
            self.cluster.start()    # the test suite's: no fsync at all
        else:
            # what a production server does: every commit reaches the disk
            self.cluster.start(fsync="on", synchronous_commit="on",
                               full_page_writes="on")
        out("PostgreSQL: " + ("fsync, synchronous_commit and "
                              "full_page_writes off" if a.no_durability
                              else "fsync, synchronous_commit and "
                              "full_page_writes on (the defaults)"))
        self.cluster.psql(f"CREATE ROLE {MASTER_ROLE} LOGIN")
        self.cluster.psql(f"CREATE DATABASE {DBNAME}")
        conn = psycopg2.connect(self.cluster.dsn(DBNAME))
        try:
            with conn, conn.cursor() as cursor:
                cursor.execute(create_script(MASTER_ROLE))
                cursor.execute("""
                    INSERT INTO packages (package)
                    SELECT 'pkg' || n FROM generate_series(0, %(p)s - 1) n;
                    INSERT INTO versions (package, version)
                    SELECT package, '1.0' FROM packages;
                    INSERT INTO builds (package, version, built_by, duration,
                                        status, abi_tag)
                    SELECT package, '1.0', 1, '42 seconds', true, 'cp311'
                    FROM packages;
                    INSERT INTO files (filename, build_id, filesize,
                        filehash, package_tag, package_version_tag,
                        py_version_tag, abi_tag, platform_tag)
                    SELECT b.package || '-1.0-py3-none-any.whl', b.build_id,
                           1000, repeat('a', 64), b.package, '1.0', 'py3',
                           'none', 'any'
                    FROM builds b;
                """, {"p": a.packages})
        finally:
            conn.close()
        self.log = self.directory / "access.log"
        started = time.perf_counter()
        self.downloads, self.broken = generate(self.log, a.lines, a.packages)
        out(f"generated {a.lines:,} lines ({self.log.stat().st_size / 1e6:.0f}"
            f" MB, {self.downloads:,} downloads, {self.broken:,} broken) in "
            f"{time.perf_counter() - started:.1f} s")
        os.chmod(self.log, 0o644)

    def start_master(self):
        directory = self.directory / "master"
        directory.mkdir()
        secret = directory / "secret"
        secret.write_text(os.urandom(24).hex() + "\n")
        os.chmod(secret, 0o640)
        own(directory, self.user)
        (self.directory / "www").mkdir()
        own(self.directory / "www", self.user)
        self.socket = directory / "logger.sock"
        profile = [f"--profile={os.environ['PIW_PROFILE']}",
                   "--profiler=cprofile", "--savestats"] \
            if os.environ.get("PIW_PROFILE") else []
        self.master = Service("master", [
            *profile, "piwheels-master", "-c", os.devnull,
            "-d", self.cluster.dsn(DBNAME, MASTER_ROLE),
            "-o", str(self.directory / "www"), "--build-abi", "cp311",
            "--builder-queue", "tcp:0:interface=127.0.0.1",
            "--secret-file", str(secret), "--no-pypi-follow", "--dev-mode",
            "--import-queue", f"unix:{directory}/import.sock",
            "--control-queue", f"unix:{directory}/control.sock",
            "--log-queue", f"unix:{self.socket}",
        ], directory, self.user, twistd=BIN / "twistd")
        deadline = time.monotonic() + 60
        while "piwtwist master ready" not in self.master.log():
            if self.master.process.poll() is not None or \
                    time.monotonic() > deadline:
                raise SystemExit("the master did not start:\n" +
                                 self.master.output() + self.master.log())
            time.sleep(0.2)
        # a fresh output tree: the page writer writes every project's pages
        # first; start measuring once the master is idle, as it usually is
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            before = process_cpu(self.master.process.pid)
            time.sleep(2.0)
            if process_cpu(self.master.process.pid) - before < 0.1:
                break

    def postgres_cpu(self):
        """CPU seconds of this cluster's server and its backends (other
        clusters on the machine left out)."""
        postmaster = int((self.cluster.data / "postmaster.pid")
                         .read_text().split()[0])
        total = process_cpu(postmaster) or 0.0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("PPid:"):
                    if int(line.split()[1]) == postmaster:
                        total += process_cpu(int(pid)) or 0.0
                    break
        return total

    def run_logger(self):
        master_before = process_cpu(self.master.process.pid)
        postgres_before = self.postgres_cpu()
        started = time.perf_counter()
        cpu_before = os.times()
        result = subprocess.run(
            [str(BIN / "piw-logger"), "-c", os.devnull, "-q",
             "--log-queue", f"unix:{self.socket}",
             *(["--batch-size", str(self.args.batch_size)]
               if self.args.batch_size else []), str(self.log)],
            stderr=subprocess.PIPE, text=True)
        elapsed = time.perf_counter() - started
        cpu_after = os.times()
        self.master_cpu = process_cpu(self.master.process.pid) - \
            master_before
        self.postgres_cpu_used = self.postgres_cpu() - postgres_before
        if result.returncode != 0:
            raise SystemExit(f"piw-logger failed:\n{result.stderr}")
        logger_cpu = (cpu_after.children_user - cpu_before.children_user +
                      cpu_after.children_system - cpu_before.children_system)
        stored = self.sql("SELECT count(*) FROM downloads")[0][0]
        daily = self.sql("SELECT sum(downloads) FROM download_totals")[0][0]
        return elapsed, logger_cpu, stored, daily

    def sql(self, query):
        conn = psycopg2.connect(self.cluster.dsn(DBNAME))
        try:
            with conn, conn.cursor() as cursor:
                cursor.execute(query)
                return cursor.fetchall()
        finally:
            conn.close()

    def one_insert_per_line(self, limit):
        """The simple way, as piwheels 0.23 did it: parse a line, then one
        INSERT of its hit (its own transaction).  Plain INSERTs straight
        into the tables, which is the cheapest statement there is: no
        function, no daily counts.  Returns (lines, seconds)."""
        parser = LineParser()
        conn = psycopg2.connect(self.cluster.dsn(DBNAME))
        conn.autocommit = True
        cursor = conn.cursor()
        columns = ", ".join(("arch", "distro_name", "distro_version",
                             "os_name", "os_version", "py_name", "py_version",
                             "installer_name", "installer_version",
                             "setuptools_version"))
        keys = ("a", "dn", "dv", "on", "ov", "pn", "pv", "in", "iv", "s")
        lines = 0
        started = time.perf_counter()
        with open(self.log, "rb") as log:
            for raw in log:
                if lines >= limit:
                    break
                lines += 1
                try:
                    hit = parser.parse(raw.rstrip(b"\r\n").decode("latin-1"))
                except BrokenLine:
                    continue
                if hit is None:
                    continue
                kind, moment, host, name = hit[:4]
                if kind in (DOWNLOAD, SEARCH):
                    client = dict(zip(CLIENT_KEYS, hit[4] or [None] * 15))
                    table, column = (("downloads", "filename")
                                     if kind == DOWNLOAD
                                     else ("searches", "package"))
                    cursor.execute(
                        f"INSERT INTO {table} ({column}, accessed_by, "
                        f"accessed_at, {columns}) VALUES (%s, %s, "
                        f"to_timestamp(%s), {', '.join(['%s'] * 10)})",
                        (name, host, moment, *(client[k] for k in keys)))
                else:
                    table, column = {
                        PROJECT: ("project_page_hits", "package"),
                        JSON: ("project_json_downloads", "package"),
                        PAGE: ("web_page_hits", "page")}[kind]
                    cursor.execute(
                        f"INSERT INTO {table} ({column}, accessed_by, "
                        f"accessed_at, user_agent, bot) VALUES (%s, %s, "
                        f"to_timestamp(%s), %s, %s)",
                        (name, host, moment, hit[4], hit[5]))
        elapsed = time.perf_counter() - started
        conn.close()
        return lines, elapsed

    def run(self):
        a = self.args
        self.prepare()
        self.start_master()
        out(f"piw-logger: {a.lines:,} lines into the master ...")
        elapsed, cpu, stored, daily = self.run_logger()
        rate = a.lines / elapsed
        out(f"  {elapsed:.1f} s end to end, {rate:,.0f} lines/s "
            f"(CPU: piw-logger {cpu:.1f} s, master {self.master_cpu:.1f} s, "
            f"PostgreSQL {self.postgres_cpu_used:.1f} s); downloads stored {stored:,} "
            f"(expected {self.downloads:,}), daily counts {daily:,}")
        if stored != self.downloads or daily != self.downloads:
            out("  MISMATCH: not every download was counted once")
        self.master.stop()
        sample = min(a.baseline_lines, a.lines)
        out(f"one INSERT per line: the first {sample:,} lines ...")
        lines, seconds = self.one_insert_per_line(sample)
        baseline = lines / seconds
        out(f"  {seconds:.1f} s, {baseline:,.0f} lines/s")
        out()
        out(f"piw-logger:          {rate:>10,.0f} lines/s (target 50,000)")
        out(f"one INSERT per line: {baseline:>10,.0f} lines/s")
        out(f"ratio:               {rate / baseline:>10.1f}x (target 5x)")
        out(f"(load average at the end: "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; the machine "
            f"has {os.cpu_count()} cores)")

    def close(self):
        if self.master is not None and self.master.process.poll() is None:
            self.master.kill()
        self.cluster.stop()
        if not self.args.keep:
            shutil.rmtree(self.directory, ignore_errors=True)
        else:
            out(f"kept {self.directory}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--packages", type=int, default=2000)
    parser.add_argument("--baseline-lines", type=int, default=50_000,
                        help="lines for the one-INSERT-per-line run")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="piw-logger's --batch-size (its default "
                        "otherwise)")
    parser.add_argument("--no-durability", action="store_true",
                        help="run PostgreSQL as the tests do: fsync, "
                        "synchronous_commit and full_page_writes off")
    args = parser.parse_args(argv)
    bench = LoggerBenchmark(args)
    try:
        bench.run()
    finally:
        bench.close()


if __name__ == "__main__":
    main()
