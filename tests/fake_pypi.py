"""A scripted PyPI for the follower's tests and benchmark.

One twisted.web site with the three APIs the master uses:

* ``POST /pypi``: XML-RPC ``changelog_since_serial`` (at most
  ``batch_size`` events a call), ``changelog_last_serial`` and
  ``list_packages_with_serial``;
* ``GET /pypi/<name>/json`` and ``GET /pypi/<name>/<version>/json``: the
  JSON API, describing the state the whole journal leads to (as PyPI's
  does), with ``last_serial``;
* ``GET /simple/`` and ``GET /simple/<name>/``: the PEP 503 simple API.

Tests script the journal with :meth:`FakePyPI.create`,
:meth:`FakePyPI.release` and friends (each appends the entries PyPI would
write and updates the state the JSON API shows), or append raw entries with
:meth:`FakePyPI.raw` for out-of-order and duplicate events.  Faults are
queued per API with :meth:`FakePyPI.fail_next` (a status and headers),
:meth:`FakePyPI.garbage_next`, :meth:`FakePyPI.delay_next` (answer late) and
:meth:`FakePyPI.fault_next` (an XML-RPC fault), or made permanent with
:meth:`FakePyPI.block`.  Every request is logged in ``requests``.

``python -m tests.fake_pypi --events N`` serves a generated journal of N
events from a process of its own (for ``bench/follower.py``); it prints
``PORT <n>`` once listening.
"""

import argparse
import bisect
import html
import json
import random
import sys
import xmlrpc.client
from collections import deque
from datetime import datetime, timezone
from urllib.parse import unquote

import attrs
from packaging.utils import canonicalize_name
from twisted.web import resource, server

T0 = 1_700_000_000  # 2023-11-14, the journal's first timestamp
FIRST_SERIAL = 10_000_001


@attrs.define
class FakeFile:
    filename: str
    python_version: str
    uploaded: float
    requires_python: str = ""

    @property
    def packagetype(self):
        if self.python_version == "source":
            return "sdist"
        return "bdist_wheel" if self.filename.endswith(".whl") else \
            "bdist_egg"


@attrs.define
class FakeRelease:
    version: str
    files: list = attrs.Factory(list)
    requires_python: str = ""
    summary: str = ""
    yanked: bool = False
    yank_reason: str = ""


@attrs.define
class FakeProject:
    name: str
    summary: str = ""
    releases: dict = attrs.Factory(dict)
    last_serial: int = 0


@attrs.define
class Fault:
    """One scripted misbehaviour of an API."""

    status: int = 200
    headers: dict = attrs.Factory(dict)
    body: bytes | None = None
    delay: float = 0.0
    xmlrpc_fault: tuple | None = None


def file_name(name, version, kind):
    """A file name of *kind* for a release: sdist, pure (py3-none-any),
    universal (py2.py3-none-any), py2 (py2-none-any), binary (a cp311
    linux wheel), egg, or a file name as it is."""
    stem = canonicalize_name(name).replace("-", "_")
    names = {
        "sdist": (f"{stem}-{version}.tar.gz", "source"),
        "zip": (f"{stem}-{version}.zip", "source"),
        "pure": (f"{stem}-{version}-py3-none-any.whl", "py3"),
        "universal": (f"{stem}-{version}-py2.py3-none-any.whl", "py2.py3"),
        "py2": (f"{stem}-{version}-py2-none-any.whl", "py2"),
        "binary": (f"{stem}-{version}-cp311-cp311-manylinux_2_17_x86_64.whl",
                   "cp311"),
        "armv7l": (f"{stem}-{version}-cp311-cp311-linux_armv7l.whl",
                   "cp311"),
        "egg": (f"{stem}-{version}-py2.7.egg", "2.7"),
    }
    if kind in names:
        return names[kind]
    if kind.endswith(".whl"):
        return kind, kind[:-4].split("-")[-3]
    return kind, "source"


class FakePyPI:
    def __init__(self, reactor, batch_size=50, first_serial=FIRST_SERIAL,
                 start_time=T0):
        self.reactor = reactor
        self.batch_size = batch_size
        self.journal = []  # [name, version, timestamp, action, serial]
        self.projects = {}  # canonical name -> FakeProject
        self.next_serial = first_serial
        self.now = float(start_time)
        self.faults = {"xmlrpc": deque(), "json": deque(),
                       "simple": deque()}
        self.blocked = {}
        self.requests = []
        self.connections = 0
        #: whether /pypi/<name>/<version>/json is served (pypi.org's is
        #: not, from some networks)
        self.release_documents = True
        self._pending = set()

    # scripting -------------------------------------------------------------

    def _tick(self, timestamp):
        if timestamp is None:
            self.now += 1
            return int(self.now)
        return timestamp

    def raw(self, name, version, action, timestamp=None, serial=None):
        """Append a raw journal entry (the state the JSON API shows is not
        changed); its serial."""
        if serial is None:
            serial = self.next_serial
        out_of_order = bool(self.journal) and serial < self.journal[-1][4]
        self.next_serial = max(self.next_serial, serial + 1)
        self.journal.append([name, version, self._tick(timestamp), action,
                             serial])
        if out_of_order:
            self.journal.sort(key=lambda entry: entry[4])
        return serial

    def repeat_last(self):
        """Journal the last entry again, under a new serial."""
        name, version, timestamp, action, _ = self.journal[-1]
        return self.raw(name, version, action, timestamp=timestamp)

    def _event(self, name, version, action, timestamp=None):
        serial = self.raw(name, version, action, timestamp)
        project = self.projects.get(canonicalize_name(name))
        if project is not None:
            project.last_serial = serial
        return serial

    def _project(self, name):
        return self.projects[canonicalize_name(name)]

    def create(self, name, summary="", timestamp=None):
        self.projects[canonicalize_name(name)] = FakeProject(
            name=name, summary=summary)
        return self._event(name, None, "create", timestamp)

    def release(self, name, version, files=("sdist",), requires_python="",
                summary=None, timestamp=None):
        """A new release with *files* (kinds for :func:`file_name`); the
        project is created first if PyPI does not have it."""
        if canonicalize_name(name) not in self.projects:
            self.create(name, summary or "", timestamp)
        project = self._project(name)
        if summary is not None:
            project.summary = summary
        project.releases[version] = FakeRelease(
            version=version, requires_python=requires_python,
            summary=project.summary)
        serial = self._event(name, version, "new release", timestamp)
        for kind in files:
            serial = self.add_file(name, version, kind, timestamp=timestamp)
        return serial

    def add_file(self, name, version, kind, timestamp=None):
        release = self._project(name).releases[version]
        filename, python_version = file_name(name, version, kind)
        serial = self._event(name, version,
                             f"add {python_version} file {filename}",
                             timestamp)
        release.files.append(FakeFile(filename, python_version,
                                      self.journal[-1][2],
                                      release.requires_python))
        return serial

    def remove_file(self, name, version, kind):
        release = self._project(name).releases[version]
        filename, _ = file_name(name, version, kind)
        release.files = [f for f in release.files if f.filename != filename]
        return self._event(name, version, f"remove file {filename}")

    def remove_release(self, name, version):
        del self._project(name).releases[version]
        return self._event(name, version, "remove release")

    def remove_project(self, name):
        serial = self._event(name, None, "remove project")
        del self.projects[canonicalize_name(name)]
        return serial

    def yank(self, name, version, reason=""):
        release = self._project(name).releases[version]
        release.yanked, release.yank_reason = True, reason
        return self._event(name, version, "yank release")

    def unyank(self, name, version):
        release = self._project(name).releases[version]
        release.yanked, release.yank_reason = False, ""
        return self._event(name, version, "unyank release")

    def rename(self, old, new):
        """Legacy PyPI's rename: both entries, the project moves."""
        project = self.projects.pop(canonicalize_name(old))
        project.name = new
        self.projects[canonicalize_name(new)] = project
        self._event(old, None, f"rename to {new}")
        return self._event(new, None, f"rename from {old}")

    def last_serial(self):
        return self.journal[-1][4] if self.journal else self.next_serial - 1

    # faults ----------------------------------------------------------------

    def fail_next(self, api, status=500, headers=None, times=1, body=b""):
        for _ in range(times):
            self.faults[api].append(Fault(status=status,
                                          headers=headers or {}, body=body))

    def garbage_next(self, api, body=b"<?xml version='1.0'?><nonsense",
                     times=1):
        for _ in range(times):
            self.faults[api].append(Fault(body=body))

    def headers_next(self, api, headers, times=1):
        """Answer normally, with these extra headers."""
        for _ in range(times):
            self.faults[api].append(Fault(headers=headers))

    def delay_next(self, api, seconds, times=1):
        for _ in range(times):
            self.faults[api].append(Fault(delay=seconds))

    def fault_next(self, code=-32500, message="HTTPTooManyRequests: "
                   "The action could not be performed because there were "
                   "too many requests by the client.", times=1):
        for _ in range(times):
            self.faults["xmlrpc"].append(Fault(xmlrpc_fault=(code, message)))

    def block(self, api, status=405):
        """Answer every request to *api* with *status* (None: unblock)."""
        if status is None:
            self.blocked.pop(api, None)
        else:
            self.blocked[api] = status

    def requests_to(self, api):
        return [r for r in self.requests if r["api"] == api]

    # serving ---------------------------------------------------------------

    def resource(self):
        return _Root(self)

    def listen(self, interface="127.0.0.1"):
        """Serve on a free port of *interface*; the listening port."""
        site = _CountingSite(self, self.resource())
        site.noisy = False
        self.port = self.reactor.listenTCP(0, site, interface=interface)
        host = self.port.getHost()
        self.url = f"http://{host.host}:{host.port}"
        return self.port

    async def stop(self):
        for call in list(self._pending):
            if call.active():
                call.cancel()
        self._pending.clear()
        await self.port.stopListening()

    def respond(self, request, api, answer):
        """Finish *request* with *answer* () -> (status, headers, body),
        unless a scripted fault says otherwise."""
        self.requests.append({
            "api": api, "method": request.method.decode(),
            "path": request.path.decode(), "time": self.reactor.seconds(),
            "user_agent": (request.getHeader("user-agent") or ""),
        })
        fault = self.faults[api].popleft() if self.faults[api] else None
        if api in self.blocked:
            fault = Fault(status=self.blocked[api],
                          body=b"<html>blocked</html>")
        if fault is not None and fault.delay:
            call = self.reactor.callLater(fault.delay, self._finish,
                                          request, answer, None)
            self._pending.add(call)

            def gone(_):
                self._pending.discard(call)
                if call.active():
                    call.cancel()

            request.notifyFinish().addBoth(gone)
            return server.NOT_DONE_YET
        return self._answer(request, answer, fault)

    def _finish(self, request, answer, fault):
        body = self._answer(request, answer, fault)
        request.write(body)
        request.finish()

    def _answer(self, request, answer, fault):
        if fault is not None and fault.xmlrpc_fault is not None:
            status, headers = 200, {"Content-Type": "text/xml"}
            body = xmlrpc.client.dumps(
                xmlrpc.client.Fault(*fault.xmlrpc_fault),
                methodresponse=True).encode()
        elif fault is not None and (fault.status != 200 or fault.body):
            status, headers = fault.status, dict(fault.headers)
            body = fault.body or b""
        else:
            status, headers, body = answer()
            if fault is not None:
                headers = {**headers, **fault.headers}
        request.setResponseCode(status)
        for key, value in headers.items():
            request.setHeader(key, value)
        return body

    # the APIs --------------------------------------------------------------

    def xmlrpc_answer(self, body):
        try:
            params, method = xmlrpc.client.loads(body)
            result = self._call(method, params)
            text = xmlrpc.client.dumps((result,), methodresponse=True,
                                       allow_none=True)
        except xmlrpc.client.Fault as fault:
            text = xmlrpc.client.dumps(fault, methodresponse=True)
        except Exception as e:
            text = xmlrpc.client.dumps(xmlrpc.client.Fault(-32500, str(e)),
                                       methodresponse=True)
        return 200, {"Content-Type": "text/xml"}, text.encode()

    def _call(self, method, params):
        if method == "changelog_since_serial":
            (since,) = params
            start = bisect.bisect_right(self.journal, since,
                                        key=lambda entry: entry[4])
            return self.journal[start:start + self.batch_size]
        if method == "changelog_last_serial":
            return self.last_serial()
        if method == "list_packages_with_serial":
            return {p.name: p.last_serial for p in self.projects.values()}
        raise xmlrpc.client.Fault(-32601, f"no method {method}")

    def _file_json(self, file, release):
        stamp = datetime.fromtimestamp(file.uploaded, tz=timezone.utc)
        return {
            "filename": file.filename,
            "packagetype": file.packagetype,
            "python_version": file.python_version,
            "requires_python": file.requires_python or None,
            "upload_time": stamp.strftime("%Y-%m-%dT%H:%M:%S"),
            "upload_time_iso_8601": stamp.strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ"),
            "url": f"https://files.example/{file.filename}",
            "yanked": release.yanked,
            "yanked_reason": release.yank_reason or None,
            "size": 1000,
            "digests": {"sha256": "0" * 64},
        }

    def _info(self, project, release=None):
        return {
            "name": project.name,
            "summary": (release.summary if release else project.summary)
            or None,
            "version": release.version if release else (
                list(project.releases)[-1] if project.releases else None),
            "requires_python": (release.requires_python or None)
            if release else None,
            "yanked": release.yanked if release else False,
            "yanked_reason": (release.yank_reason or None)
            if release else None,
        }

    def json_answer(self, path):
        parts = [unquote(p) for p in path.strip("/").split("/")]
        # pypi/<name>/json or pypi/<name>/<version>/json
        if len(parts) not in (3, 4) or parts[0] != "pypi" or \
                parts[-1] != "json":
            return 404, {}, b"not found"
        project = self.projects.get(canonicalize_name(parts[1]))
        if project is None:
            return 404, {}, b'{"message": "Not Found"}'
        if len(parts) == 4:
            if not self.release_documents:
                return 404, {}, b""
            release = project.releases.get(parts[2])
            if release is None:
                return 404, {}, b'{"message": "Not Found"}'
            document = {
                "info": self._info(project, release),
                "urls": [self._file_json(f, release) for f in release.files],
                "last_serial": project.last_serial,
            }
        else:
            document = {
                "info": self._info(project),
                "releases": {
                    version: [self._file_json(f, release)
                              for f in release.files]
                    for version, release in project.releases.items()},
                "last_serial": project.last_serial,
            }
        return 200, {"Content-Type": "application/json"}, \
            json.dumps(document).encode()

    def simple_answer(self, path):
        parts = [p for p in path.strip("/").split("/") if p]
        if parts == ["simple"]:
            links = [f'<a href="{canonicalize_name(p.name)}/">'
                     f'{html.escape(p.name)}</a>'
                     for p in self.projects.values()]
            title = "Simple index"
        elif len(parts) == 2 and parts[0] == "simple":
            project = self.projects.get(canonicalize_name(unquote(parts[1])))
            if project is None:
                return 404, {}, b"not found"
            links = []
            for release in project.releases.values():
                for f in release.files:
                    attributes = ""
                    if f.requires_python:
                        attributes += (f' data-requires-python="'
                                       f'{html.escape(f.requires_python)}"')
                    if release.yanked:
                        attributes += (f' data-yanked="'
                                       f'{html.escape(release.yank_reason)}"')
                    links.append(
                        f'<a href="https://files.example/{f.filename}'
                        f'#sha256={"0" * 64}"{attributes}>{f.filename}</a>')
            title = f"Links for {html.escape(project.name)}"
        else:
            return 404, {}, b"not found"
        page = (f"<!DOCTYPE html>\n<html><head><meta name="
                f'"pypi:repository-version" content="1.0">'
                f"<title>{title}</title></head><body>\n"
                + "<br>\n".join(links) + "\n</body></html>\n")
        return 200, {"Content-Type": "text/html"}, page.encode()


class _CountingSite(server.Site):
    def __init__(self, fake, root):
        super().__init__(root)
        self.fake = fake

    def buildProtocol(self, addr):
        self.fake.connections += 1
        return super().buildProtocol(addr)


class _Root(resource.Resource):
    isLeaf = True

    def __init__(self, fake):
        super().__init__()
        self.fake = fake

    def render_POST(self, request):
        body = request.content.read()
        return self.fake.respond(request, "xmlrpc",
                                 lambda: self.fake.xmlrpc_answer(body))

    def render_GET(self, request):
        path = request.path.decode()
        if path.startswith("/simple"):
            return self.fake.respond(request, "simple",
                                     lambda: self.fake.simple_answer(path))
        return self.fake.respond(request, "json",
                                 lambda: self.fake.json_answer(path))


# a generated journal, for the benchmark ------------------------------------

def generate_journal(fake, events, seed=1):
    """Script about *events* journal entries with PyPI's mix of actions:
    mostly releases and their files, some deletions, yanks and renames,
    and (as in PyPI's early journal) a few deletions before the creations
    they follow and a few repeated entries."""
    rng = random.Random(seed)
    live = []  # names of projects that exist
    releases = {}  # name -> [versions]
    count = 0
    project_number = 0
    while len(fake.journal) < events:
        roll = rng.random()
        if roll < 0.10 or len(live) < 20:
            project_number += 1
            name = f"Project_{project_number}" if project_number % 7 == 0 \
                else f"project-{project_number}"
            fake.create(name, summary=f"Package number {project_number}")
            live.append(name)
            releases[name] = []
        elif roll < 0.80:
            name = rng.choice(live)
            version = f"{len(releases[name]) + 1}.{rng.randrange(10)}"
            if version in fake._project(name).releases:
                continue
            shape = rng.random()
            if shape < 0.45:
                files = ["sdist", "pure"]
            elif shape < 0.70:
                files = ["sdist"]
            elif shape < 0.90:
                files = ["sdist", "binary", "armv7l"]
            else:
                files = ["binary"]
            fake.release(name, version, files=files,
                         requires_python=">=3.8" if shape < 0.5 else "")
            releases[name].append(version)
        elif roll < 0.86:
            name = rng.choice(live)
            if releases[name]:
                version = rng.choice(releases[name])
                if rng.random() < 0.5:
                    fake.yank(name, version, reason="broken")
                else:
                    fake.unyank(name, version)
        elif roll < 0.90:
            name = rng.choice(live)
            if releases[name]:
                version = releases[name].pop(rng.randrange(
                    len(releases[name])))
                fake.remove_release(name, version)
        elif roll < 0.93:
            name = rng.choice(live)
            for release in fake._project(name).releases.values():
                if release.files:
                    victim = release.files.pop()
                    fake._event(name, release.version,
                                f"remove file {victim.filename}")
                    break
        elif roll < 0.95 and len(live) > 50:
            name = live.pop(rng.randrange(len(live)))
            fake.remove_project(name)
            del releases[name]
        elif roll < 0.96:
            name = rng.choice(live)
            new = f"{name}-renamed-{count}"
            fake.rename(name, new)
            live[live.index(name)] = new
            releases[new] = releases.pop(name)
        elif roll < 0.98:
            fake.repeat_last()
        else:
            # an early-journal tangle: the deletion of a release is
            # journalled before the release itself, with a later time
            project_number += 1
            name = f"tangle-{project_number}"
            stamp = int(fake.now) + 1
            fake.raw(name, "1.0", "remove release", timestamp=stamp + 5)
            fake.raw(name, None, "create", timestamp=stamp)
            fake.raw(name, "1.0", "new release", timestamp=stamp)
            filename, _ = file_name(name, "1.0", "sdist")
            fake.raw(name, "1.0", f"add source file {filename}",
                     timestamp=stamp + 1)
            fake.now = stamp + 5
            fake.projects[canonicalize_name(name)] = FakeProject(
                name=name, last_serial=fake.last_serial())
            live.append(name)
            releases[name] = []
        count += 1
    return len(fake.journal)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    from twisted.internet import reactor
    fake = FakePyPI(reactor, batch_size=args.batch_size)
    generate_journal(fake, args.events, args.seed)
    port = fake.listen()
    sys.stdout.write(f"PORT {port.getHost().port} EVENTS "
                     f"{len(fake.journal)} LAST {fake.last_serial()}\n")
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()
