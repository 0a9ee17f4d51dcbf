"""Helpers for the web tests: real (small) wheels, builds logged through the
database client with those wheels put where the builder hub puts them, a
page writer with short delays, and the output tree served over HTTP."""

import base64
import hashlib
import os
import shutil
import subprocess
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename
from twisted.internet import task, threads

from piwtwist.db.records import BuildFile, BuildResult, Dependency
from piwtwist.master.hit_recorder import HitRecorder
from piwtwist.web.page_writer import PageWriter
from piwtwist.web.server import site

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def _record_hash(data):
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def make_wheel(directory, name, version, tag="py3-none-any",
               requires=(), requires_python=None, summary=None):
    """Write a small but complete wheel (module, METADATA, WHEEL, RECORD)
    that pip and uv install; returns its path."""
    module = name.replace("-", "_").replace(".", "_").lower()
    dist = f"{module}-{version}"
    metadata = ["Metadata-Version: 2.1", f"Name: {name}",
                f"Version: {version}",
                f"Summary: {summary or name + ', made for a test'}"]
    if requires_python:
        metadata.append(f"Requires-Python: {requires_python}")
    metadata += [f"Requires-Dist: {r}" for r in requires]
    files = {
        f"{module}/__init__.py": f"__version__ = {version!r}\n".encode(),
        f"{dist}.dist-info/METADATA": ("\n".join(metadata) + "\n\n").encode(),
        f"{dist}.dist-info/WHEEL": (
            f"Wheel-Version: 1.0\nGenerator: piwtwist-tests\n"
            f"Root-Is-Purelib: {'true' if 'none-any' in tag else 'false'}\n"
            f"Tag: {tag}\n").encode(),
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n"
                     for path, data in files.items())
    record += f"{dist}.dist-info/RECORD,,\n"
    files[f"{dist}.dist-info/RECORD"] = record.encode()
    path = Path(directory) / f"{module}-{version}-{tag}.whl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for member, data in files.items():
            info = zipfile.ZipInfo(member, date_time=(2024, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            wheel.writestr(info, data, zipfile.ZIP_DEFLATED)
    return path


def metadata_of(wheel_path):
    with zipfile.ZipFile(wheel_path) as wheel:
        return next(wheel.read(n) for n in wheel.namelist()
                    if n.endswith(".dist-info/METADATA"))


def sha256_of(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build_file(wheel_path, output, package, requires_python=""):
    """The BuildFile the builder hub would record for *wheel_path*, after
    copying it to ``<output>/simple/<package>/``."""
    wheel_path = Path(wheel_path)
    name, version, _, tags = parse_wheel_filename(wheel_path.name)
    tag = next(iter(tags))
    target = Path(output) / "simple" / package / wheel_path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(wheel_path, target)
    return BuildFile(
        filename=wheel_path.name, filesize=target.stat().st_size,
        filehash=sha256_of(target), package_tag=wheel_path.name.split("-")[0],
        package_version_tag=str(version), py_version_tag=tag.interpreter,
        abi_tag=tag.abi, platform_tag=tag.platform,
        requires_python=requires_python,
        location=f"simple/{package}/{wheel_path.name}")


async def add_release(db, package, version, released=T0, skip="",
                      requires_python="", description=""):
    await db.add_new_package(package, description=description)
    await db.add_new_package_version(package, version, released, skip,
                                     requires_python)


async def log_success(db, package, version, abi, files, dependencies=None,
                      output="pip wheel ...\nbuilt\n", **changes):
    """Record a successful build of *files* (BuildFile values)."""
    build = BuildResult(
        package=package, version=version, abi_tag=abi, built_by=1,
        duration=timedelta(seconds=12), status=True, output=output,
        files=tuple(files), dependencies=dependencies or {},
        builder_label="test-builder", **changes)
    return await db.log_build(build), build


async def log_failure(db, package, version, abi, reason="it broke",
                      output="pip wheel ...\nerror: it broke\n", **changes):
    build = BuildResult(
        package=package, version=version, abi_tag=abi, built_by=1,
        duration=timedelta(seconds=3), status=False, output=output,
        reason=reason, builder_label="test-builder", **changes)
    return await db.log_build(build), build


def apt(*names):
    return tuple(Dependency("apt", n) for n in names)


def page_writer(db, output, reactor, **options):
    """A page writer with test-sized delays that writes only on request."""
    settings = dict(rewrite_delay=0.05, home_interval=0.2,
                    search_interval=0.2, index_interval=0.05,
                    save_interval=3600, rewrite_all_at_start=False,
                    site_url="http://piwheels.test/")
    settings.update(options)
    return PageWriter(db, Path(output), reactor, **settings)


async def settle(reactor, seconds=0.3):
    """Let timers run for a moment."""
    await task.deferLater(reactor, seconds, lambda: None)


def serve(reactor, output, db=None):
    """Serve *output* with the master's own web server on loopback;
    returns (base URL, listening port)."""
    hits = None if db is None else HitRecorder(db, reactor, flush_delay=0.1)
    port = reactor.listenTCP(0, site(output, hits=hits),
                             interface="127.0.0.1")
    return f"http://127.0.0.1:{port.getHost().port}", port


async def run(command, env=None, timeout=300):
    """Run *command* in a thread (the reactor keeps serving meanwhile)."""
    environment = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                   "PIP_NO_INPUT": "1", "PIP_NO_CACHE_DIR": "1",
                   "UV_NO_CACHE": "1", **(env or {})}
    return await threads.deferToThread(
        subprocess.run, [str(c) for c in command], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=environment,
        timeout=timeout, stdin=subprocess.DEVNULL)


def canonical(name):
    return canonicalize_name(name)


#: A whole site in SQL, for the cooperative test and bench/pages.py:
#: %(packages)s packages of %(versions)s releases each, every release built
#: once for cp311 with %(files)s wheels (no files on disk: the pages, the
#: logs and the JSON are what is measured), one release in five failed.
GENERATE_SITE = """
INSERT INTO build_abis (abi_tag) VALUES ('cp311') ON CONFLICT DO NOTHING;
INSERT INTO packages (package, description)
SELECT 'pkg-' || lpad(n::TEXT, 6, '0'), 'Generated package number ' || n
FROM generate_series(1, %(packages)s) AS n;
INSERT INTO versions (package, version, released)
SELECT p.package, v || '.0', now() - (v || ' days')::INTERVAL
FROM packages p CROSS JOIN generate_series(1, %(versions)s) AS v;
INSERT INTO builds (package, version, built_by, duration, status, abi_tag)
SELECT package, version, 1, INTERVAL '42 seconds',
       (hashtext(package || version) %% 5) <> 0, 'cp311'
FROM versions;
INSERT INTO output (build_id, output)
SELECT build_id, 'pip wheel ' || package || '==' || version || E'\\n'
                 || repeat(E'Collecting, building, copying...\\n', 40)
FROM builds;
INSERT INTO files (filename, build_id, filesize, filehash, package_tag,
                   package_version_tag, py_version_tag, abi_tag, platform_tag)
SELECT replace(b.package, '-', '_') || '-' || b.version || '-cp311-cp311-'
       || platform || '.whl',
       b.build_id, 100000 + b.build_id, md5(b.package || b.version || platform)
       || md5(platform || b.version || b.package),
       replace(b.package, '-', '_'),
       b.version, 'cp311', 'cp311', platform
FROM builds b
CROSS JOIN unnest((ARRAY['linux_armv7l', 'linux_armv6l', 'linux_aarch64',
                         'linux_x86_64'])[1:%(files)s]) AS platform
WHERE b.status;
INSERT INTO dependencies (filename, tool, dependency)
SELECT filename, 'apt', 'libc6' FROM files;
ANALYZE;
"""


def generate_site(database, packages, versions=5, files=3):
    """Fill *database* (a tests.conftest.TestDatabase or anything with a
    ``sql`` method) with a generated site."""
    database.sql(GENERATE_SITE, {"packages": packages, "versions": versions,
                                 "files": files})


class StallMonitor:
    """How late a timer that should fire every *interval* seconds fires:
    the longest lateness is the longest time the reactor was held."""

    def __init__(self, reactor, interval=0.005):
        import time
        self.reactor = reactor
        self.interval = interval
        self._now = time.perf_counter
        self.longest = 0.0
        self.samples = 0
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = reactor
        self._last = None

    def start(self):
        self._last = self._now()
        self._loop.start(self.interval, now=False)

    def _tick(self):
        now = self._now()
        self.longest = max(self.longest, now - self._last - self.interval)
        self._last = now
        self.samples += 1

    def stop(self):
        if self._loop.running:
            self._loop.stop()


async def published_site(db, output, wheels, reactor, log_lines=100):
    """One release of "foo" with a wheel, an alias and a long log, written
    out by a page writer; returns (build id, wheel file name)."""
    await db.set_build_abis(["cp311"])
    await add_release(db, "foo", "1.0", T0, description="Foo")
    wheel = build_file(make_wheel(wheels, "foo", "1.0"), output, "foo")
    build_id, _ = await log_success(db, "foo", "1.0", "cp311", [wheel],
                                    output="the whole log\n" * log_lines)
    await db.add_package_name("foo", "Foo", T0)
    writer = page_writer(db, output, reactor)
    writer.startService()
    await writer.rewrite_all()
    await writer.wait_until_idle()
    await writer.stopService()
    return build_id, wheel.filename
