#!/usr/bin/env python3
"""Build yield on real PyPI sdists: plain pip against piwtwist (issue 16).

Every release in bench/yield_releases.txt is built twice:

(a) plain: ``pip wheel --no-deps --no-binary PKG`` with a current pip
    (``pip install -U pip``) in a fresh venv of Debian's Python, of the
    release's sdist downloaded once into --cache;
(b) piwtwist: a real master and builder(s) (twistd, sandboxed with
    bubblewrap as deployed) over a private PostgreSQL cluster, with exactly
    these releases queued; the outcome, failure class, hint and rescue are
    read from the database the master recorded them in.

Both run as the services' user (piwheels, when run as root) with the same
PATH, so that a difference between the columns is piwtwist's and not the
environment's. They run at the same time (one plain build beside each
builder's), so the times are under contention; the yields are not.

    .venv/bin/python bench/yield.py                # everything
    .venv/bin/python bench/yield.py --only six pyyaml

See bench/README.md.
"""

import argparse
import collections
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psycopg2

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

from piwtwist.db.schema import create_script  # noqa: E402
from piwtwist.devcluster import PrivateCluster  # noqa: E402
from piwtwist.service_user import as_user, own  # noqa: E402
from tests.e2e import Deployment  # noqa: E402

RELEASES_FILE = Path(__file__).resolve().parent / "yield_releases.txt"
PYPI_SIMPLE = "https://pypi.org/simple/"
DEBIAN_PYTHON = "/usr/bin/python3"
MASTER_ROLE = "piwheels"
DBNAME = "piwtwist_yield"
DEFAULT_CACHE = "/var/tmp/piwtwist-yield-cache"
LOG_TAIL_LINES = 12


def out(line=""):
    print(line, flush=True)


def read_releases(path):
    """(name, version, kind) for each line of *path*; # starts a comment."""
    releases = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3:
            raise SystemExit(f"{path}:{number}: expected NAME VERSION KIND, "
                             f"got {line!r}")
        releases.append(tuple(parts))
    return releases


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


class BenchDatabase:
    """A database in a private cluster, shaped as tests/e2e.Deployment
    expects (superuser ``sql()`` and the master's dsn)."""

    def __init__(self, directory):
        self.cluster = PrivateCluster(directory)
        self.cluster.start()
        self.cluster.psql(f"CREATE ROLE {MASTER_ROLE} LOGIN")
        self.cluster.psql(f"CREATE DATABASE {DBNAME}")
        self.superuser_dsn = self.cluster.dsn(DBNAME)
        self.master_dsn = self.cluster.dsn(DBNAME, MASTER_ROLE)
        self.sql(create_script(MASTER_ROLE))

    def sql(self, sql, params=None):
        conn = psycopg2.connect(self.superuser_dsn)
        try:
            with conn, conn.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall() if cursor.description else None
        finally:
            conn.close()

    def destroy(self):
        self.cluster.destroy()


def service_environment(home):
    """What a twistd service of tests/e2e.py gets, plus no pip config."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home), "LANG": "C.UTF-8",
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}


def sdist_file(name, version, cache):
    """The release's sdist, downloaded once into *cache* (and checked
    against the index's sha256): pip's own cache is no use here, since it
    reuses the wheels it built before and the index's answers are not
    cacheable."""
    directory = Path(cache) / "sdists"
    directory.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(
        f"{PYPI_SIMPLE}{canonical(name)}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    stem = re.sub(r"[-_.]+", "_", f"{name}-{version}").lower()
    saved = [path for path in directory.iterdir()
             if re.sub(r"[-_.]+", "_", path.name).lower()
             in (f"{stem}_tar_gz", f"{stem}_zip")]
    if saved:
        return saved[0]
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    for entry in files:
        if re.sub(r"[-_.]+", "_", entry["filename"]).lower() in (
                f"{stem}_tar_gz", f"{stem}_zip"):
            break
    else:
        raise SystemExit(f"{name} {version} has no sdist on {PYPI_SIMPLE}")
    with urllib.request.urlopen(entry["url"], timeout=300) as response:
        data = response.read()
    if hashlib.sha256(data).hexdigest() != entry["hashes"]["sha256"]:
        raise SystemExit(f"{entry['filename']}: sha256 does not match")
    path = directory / entry["filename"]
    partial = path.with_suffix(".partial")
    partial.write_bytes(data)
    partial.rename(path)
    return path


class PlainPip:
    """Column (a): a fresh venv with a current pip, one ``pip wheel`` per
    release, as *user*, from the sdist in the cache directory (build
    requirements from PyPI, no pip cache)."""

    def __init__(self, root, cache, user, timeout):
        self.root = Path(root)
        self.cache = Path(cache)
        self.cache.mkdir(parents=True, exist_ok=True)
        self.user = user
        self.timeout = timeout
        self.venv = self.root / "venv"
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        own(self.root, user)
        self.pip_version = None

    def run(self, *command, timeout=None, log=None):
        started = time.monotonic()
        try:
            result = subprocess.run(
                [str(part) for part in command], cwd=self.root,
                env=service_environment(self.root), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                errors="replace", timeout=timeout, **as_user(self.user))
            returncode, output = result.returncode, result.stdout
        except subprocess.TimeoutExpired as e:
            returncode = None
            output = (e.stdout or b"")
            if isinstance(output, bytes):
                output = output.decode(errors="replace")
            output += f"\n# timed out after {timeout}s"
        duration = time.monotonic() - started
        if log:
            Path(log).write_text(output)
        return returncode, output, duration

    def prepare(self):
        code, output, _ = self.run(DEBIAN_PYTHON, "-m", "venv", self.venv)
        if code != 0:
            raise SystemExit(f"python3 -m venv failed:\n{output}")
        code, output, _ = self.run(
            self.venv / "bin" / "pip", "install", "-U", "pip",
            "--no-cache-dir", timeout=300)
        if code != 0:
            raise SystemExit(f"pip install -U pip failed:\n{output}")
        _, version, _ = self.run(self.venv / "bin" / "pip", "--version")
        self.pip_version = version.split()[1]

    def build(self, name, version):
        """(built, seconds, log path)."""
        wheels = self.root / "wheels" / f"{name}-{version}"
        wheels.mkdir(parents=True, exist_ok=True)
        own(wheels, self.user)
        log = self.logs / f"{name}-{version}.log"
        sdist = sdist_file(name, version, self.cache)
        code, _, duration = self.run(
            self.venv / "bin" / "pip", "wheel", "--no-deps",
            "--no-binary", name, sdist, "-w", wheels,
            "--no-cache-dir", timeout=self.timeout, log=log)
        built = code == 0 and any(wheels.glob("*.whl"))
        return built, duration, log


class Piwtwist:
    """Column (b): a real master and builders, exactly these releases
    queued (as tests/test_deployment_guide.py queues them: the master's
    ``piw-add`` asks PyPI's per-release JSON API, which this network's
    PyPI does not serve)."""

    def __init__(self, database, jobs, timeout):
        self.database = database
        self.deployment = Deployment(database, PYPI_SIMPLE)
        self.jobs = jobs
        self.timeout = timeout

    def start(self, releases):
        for name, version, _ in releases:
            self.database.sql("SELECT add_new_package(%s)", (name,))
            self.database.sql(
                "SELECT add_new_package_version(%s, %s, %s)",
                (name, version, "2020-01-01Z"))
        self.deployment.start_master()
        self.builders = [
            self.deployment.start_builder(f"yield-builder-{n}", "-t",
                                          f"{self.timeout}s")
            for n in range(1, self.jobs + 1)]

    def recorded(self):
        """{(package, version): row} of the builds recorded so far (the
        last one, should there be more)."""
        rows = self.database.sql(
            "SELECT b.package, b.version, b.status, b.failure_class, "
            "b.failure_hint, b.rescued, EXTRACT(EPOCH FROM b.duration), "
            "b.reason, o.output FROM builds b "
            "LEFT JOIN output o USING (build_id) ORDER BY b.build_id")
        return {(row[0], row[1]): row for row in rows}

    def alive(self):
        return [s.name for s in self.deployment.services
                if s.process.poll() is None]

    def close(self, keep):
        stopped = [service.stop() for service in self.deployment.services]
        if keep:
            return stopped
        self.deployment.close()
        return stopped


def tail(text, lines=LOG_TAIL_LINES):
    kept = [line for line in (text or "").splitlines() if line.strip()]
    return "\n".join("      " + line for line in kept[-lines:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="build only these packages (every version of "
                             "them in the list)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="piwtwist builders, and plain builds at a time "
                             "(default 1)")
    parser.add_argument("--cache", default=DEFAULT_CACHE,
                        help=f"where the plain builds' sdists are kept "
                             f"(default {DEFAULT_CACHE})")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (venv, plain and "
                             "piwtwist logs, wheels, the cluster) and say "
                             "where it is")
    parser.add_argument("--releases", default=RELEASES_FILE,
                        help="the list of releases (NAME VERSION KIND)")
    parser.add_argument("--build-timeout", type=int, default=900,
                        help="seconds one build may take (default 900)")
    parser.add_argument("--timeout", type=int, default=3600,
                        help="seconds to wait for piwtwist to record every "
                             "build (default 3600)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")

    releases = read_releases(args.releases)
    if args.only:
        wanted = {canonical(name) for name in args.only}
        releases = [r for r in releases if canonical(r[0]) in wanted]
        missing = wanted - {canonical(r[0]) for r in releases}
        if missing:
            parser.error(f"not in {args.releases}: {', '.join(missing)}")
    if not shutil.which("bwrap"):
        out("warning: no bwrap here: the builder builds without its sandbox")

    work = Path(tempfile.mkdtemp(prefix="piwtwist-yield-"))
    os.chmod(work, 0o755)
    database = BenchDatabase(work / "pg")
    piwtwist = Piwtwist(database, args.jobs, args.build_timeout)
    user = piwtwist.deployment.user
    plain = PlainPip(work / "plain", args.cache, user, args.build_timeout)
    started = time.monotonic()
    try:
        plain.prepare()
        out(f"{len(releases)} releases; plain pip {plain.pip_version} in a "
            f"fresh venv of {DEBIAN_PYTHON}; piwtwist with {args.jobs} "
            f"builder(s); builds run as {user or 'ourselves'}")
        piwtwist.start(releases)
        plain_results = {}
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(plain.build, name, version):
                       (name, version) for name, version, _ in releases}
            deadline = time.monotonic() + args.timeout
            wanted = {(canonical(n), v) for n, v, _ in releases}
            reported = set()
            while True:
                for future in [f for f in futures if f.done()]:
                    key = futures.pop(future)
                    plain_results[key] = future.result()
                    built, seconds, _ = plain_results[key]
                    out(f"  plain    {key[0]} {key[1]}: "
                        f"{'built' if built else 'FAILED'} ({seconds:.0f}s)")
                recorded = piwtwist.recorded()
                for key in sorted(set(recorded) - reported):
                    row = recorded[key]
                    out(f"  piwtwist {key[0]} {key[1]}: "
                        f"{'built' if row[2] else 'FAILED ' + row[3]}"
                        f"{' rescued with ' + row[5] if row[5] else ''} "
                        f"({float(row[6]):.0f}s)")
                    reported.add(key)
                done = {(canonical(p), v) for p, v in recorded}
                if not futures and wanted <= done:
                    break
                if time.monotonic() > deadline:
                    out(f"timed out after {args.timeout}s; builds not "
                        f"recorded: {sorted(wanted - done)}")
                    break
                if "master" not in piwtwist.alive():
                    out("the master died:\n" + piwtwist.deployment.logs())
                    break
                time.sleep(2)
        elapsed = time.monotonic() - started
        recorded = {(canonical(p), v): row
                    for (p, v), row in piwtwist.recorded().items()}
        report(releases, plain, plain_results, recorded, elapsed)
        if args.keep:
            logs = work / "piwtwist-logs"
            logs.mkdir()
            for (name, version), row in recorded.items():
                (logs / f"{name}-{version}.log").write_text(row[8] or "")
    finally:
        piwtwist.close(args.keep)
        if args.keep:
            out(f"kept: {work} (cluster stopped; services' logs in "
                f"{piwtwist.deployment.root})")
            database.cluster.stop()
        else:
            database.destroy()
            shutil.rmtree(work, ignore_errors=True)


def report(releases, plain, plain_results, recorded, elapsed):
    out()
    out(f"=== results ({elapsed / 60:.1f} minutes in all)")
    plain_built = sum(1 for r in plain_results.values() if r[0])
    ours = [recorded.get((canonical(n), v)) for n, v, _ in releases]
    ours_built = sum(1 for row in ours if row and row[2])
    total = len(releases)
    out(f"plain pip {plain.pip_version}: {plain_built} built of {total} "
        f"({100 * plain_built / total:.0f}%)")
    out(f"piwtwist:        {ours_built} built of {total} "
        f"({100 * ours_built / total:.0f}%)"
        f"; rescued {sum(1 for row in ours if row and row[5])}")
    classes = collections.Counter(row[3] or "(none)" for row in ours
                                  if row and not row[2])
    out("piwtwist's failures by class: " + (", ".join(
        f"{name} {count}" for name, count in classes.most_common())
        or "none"))
    out()
    out(f"{'release':32} {'kind':21} {'plain':>12} {'piwtwist':>12}  "
        f"class / rescue")
    for (name, version, kind), row in zip(releases, ours):
        built, seconds, _ = plain_results.get((name, version),
                                              (None, 0, None))
        plain_cell = ("-" if built is None else
                      f"{'ok' if built else 'FAIL'} {seconds:5.0f}s")
        if row is None:
            ours_cell, note = "not built", ""
        else:
            ours_cell = f"{'ok' if row[2] else 'FAIL'} {float(row[6]):5.0f}s"
            note = (f"rescued with {row[5]}" if row[5] else
                    row[3] if not row[2] else "")
        out(f"{name + ' ' + version:32} {kind:21} {plain_cell:>12} "
            f"{ours_cell:>12}  {note}")
    out()
    out("piwtwist's failures, with their hints:")
    for (name, version, _), row in zip(releases, ours):
        if row and not row[2]:
            out(f"  {name} {version}: {row[3]}: {row[4] or '(no hint)'}")
    out()
    lost = [(name, version, row) for (name, version, _), row
            in zip(releases, ours)
            if plain_results.get((name, version), (False,))[0]
            and not (row and row[2])]
    out(f"plain pip builds, piwtwist does not: {len(lost)} (target: none)")
    for name, version, row in lost:
        if row is None:
            out(f"  {name} {version}: no build recorded")
            continue
        out(f"  {name} {version}: {row[3]}: {row[4]}")
        out(f"    reason: {row[7]}")
        out(tail(row[8]))
    gained = [(name, version, row) for (name, version, _), row
              in zip(releases, ours)
              if row and row[2]
              and not plain_results.get((name, version), (True,))[0]]
    out(f"piwtwist builds, plain pip does not: {len(gained)}"
        + "".join(f"\n  {n} {v}" + (f" (rescued with {row[5]})"
                                     if row[5] else "")
                  for n, v, row in gained))
    for name, version, row in gained:
        _, _, log = plain_results[(name, version)]
        out(f"  plain's log of {name} {version}:")
        out(tail(Path(log).read_text(errors="replace"), 6))


if __name__ == "__main__":
    main()
