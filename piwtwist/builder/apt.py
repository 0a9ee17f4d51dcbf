"""Missing headers and libraries on a builder: which Debian package has
them, and installing one the operator allowed before the build's retry.

After a ``missing-header`` or ``missing-library`` failure the builder looks
the file up with ``dpkg -S`` (is it installed somewhere the build did not
look?), else in the curated maps of :mod:`piwtwist.failures`, and says what
it found as the last line of the build's log (the master shows it as the
failure's hint).  A package the operator allowed (``--apt-allow``,
``--apt-allow-file``) that is not installed is installed with
``--apt-install-command`` (by default ``sudo -n apt-get install -y
--no-install-recommends PKG``; the builder itself runs unprivileged) and
the build is retried once.

Only a package named by the curated maps or by dpkg, and in the allow
list, is ever installed: the build's log names a file, never a package.
Every command runs as a child process of the reactor, with a timeout.
"""

import os
import shlex

import attrs
from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from .. import failures
from .sandbox import DEFAULT_PATH

log = Logger()

DEFAULT_INSTALL_COMMAND = ("sudo", "-n", "apt-get", "install", "-y",
                           "--no-install-recommends")
#: Seconds a lookup (dpkg) and an installation may take.
LOOKUP_TIMEOUT = 60.0
INSTALL_TIMEOUT = 900.0
#: Of a command's output, the tail kept (and shown in the build's log).
OUTPUT_KEEP = 8 * 1024
#: Where a file of each kind lives, for dpkg -S (``*`` matches ``/``).
_PATTERNS = {
    "header": ("*/{name}",),
    "library": ("*/lib{name}.so", "*/lib{name}.a"),
    "pkg-config": ("*/pkgconfig/{name}.pc",),
    "tool": ("*/bin/{name}",),
}
#: Where a file is best looked for first: a -dev package's own place.
_PREFERRED = ("/usr/include/", "/usr/lib/", "/usr/bin/", "/usr/share/",
              "/usr/local/")


def read_allow_file(path):
    """The Debian packages listed in *path*: one or more a line,
    separated by spaces or commas, ``#`` starting a comment.  Raises
    ValueError naming the line of anything that is not a package name."""
    packages = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            for name in line.split("#", 1)[0].replace(",", " ").split():
                packages.append(check_package(name, f"{path}:{number}: "))
    return packages


def check_package(name, where=""):
    """*name* if it is a Debian package name, else ValueError."""
    if not failures.DEBIAN_PACKAGE.match(name):
        raise ValueError(f"{where}{name!r} is not a Debian package name "
                         f"(lower-case letters, digits, + - .)")
    return name


@attrs.frozen
class CommandResult:
    """How a command ended: ``status`` None when it could not run or was
    killed (``ended`` says why), the tail of its output."""

    status: int | None
    output: str
    ended: str

    @property
    def succeeded(self):
        return self.status == 0


class _Collector(ProcessProtocol):
    def __init__(self, finished, keep):
        self.finished = finished
        self.keep = keep
        self.data = bytearray()
        self.killed_for = ""

    def connectionMade(self):
        self.transport.closeStdin()

    def childDataReceived(self, fd, data):
        self.data += data
        if len(self.data) > 2 * self.keep:
            del self.data[:-self.keep]

    def processEnded(self, reason):
        code = getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        output = bytes(self.data[-self.keep:]).decode("utf-8", "replace")
        if self.killed_for:
            result = CommandResult(None, output, self.killed_for)
        elif code is None:
            result = CommandResult(None, output, f"killed by signal {signal}")
        else:
            result = CommandResult(code, output, f"exit status {code}")
        self.finished.callback(result)


def run_command(reactor, argv, timeout, keep=OUTPUT_KEEP):
    """Run *argv* (stdin closed, stdout and stderr collected together, a
    plain environment) and return a Deferred of its :class:`CommandResult`;
    killed after *timeout* seconds."""
    finished = defer.Deferred()
    collector = _Collector(finished, keep)
    environment = {"PATH": os.environ.get("PATH") or DEFAULT_PATH,
                   "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                   "DEBIAN_FRONTEND": "noninteractive"}
    try:
        process = reactor.spawnProcess(collector, argv[0], list(argv),
                                       env=environment, path="/",
                                       childFDs={0: "w", 1: "r", 2: "r"})
    except OSError as e:
        return defer.succeed(CommandResult(None, "", f"could not run: {e}"))

    def kill():
        collector.killed_for = f"killed after {timeout:g}s"
        try:
            process.signalProcess("KILL")
        except Exception:
            pass

    timer = reactor.callLater(timeout, kill)

    def done(result):
        if timer.active():
            timer.cancel()
        return result

    return finished.addBoth(done)


def _executable(name):
    for directory in (os.environ.get("PATH") or DEFAULT_PATH).split(":"):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def parse_dpkg_search(text):
    """``dpkg -S`` output as ``[(package, path), ...]``: one pair per
    package and path (``a:amd64, b: /path`` names two), architecture
    qualifiers dropped, diversion notes skipped."""
    found = []
    for line in text.splitlines():
        if line.startswith(("diversion by ", "dpkg-query: ")):
            continue
        packages, separator, path = line.partition(": ")
        if not separator or not path.startswith("/"):
            continue
        for package in packages.split(", "):
            package = package.split(":", 1)[0].strip()
            if failures.DEBIAN_PACKAGE.match(package):
                found.append((package, path.strip()))
    return found


def _preference(pair):
    path = pair[1]
    rank = next((rank for rank, prefix in enumerate(_PREFERRED)
                 if path.startswith(prefix)), len(_PREFERRED))
    # a shared library before a static one, then the shortest path
    return rank, path.endswith(".a"), len(path)


@attrs.frozen
class Finding:
    """What a builder knows about a missing file: the Debian package that
    provides it (``""``: none known), where it is installed when it is
    (``installed_at``), whether that package is installed at all, and
    what happened when the builder tried to install it."""

    kind: str
    name: str
    package: str = ""
    installed_at: str = ""
    package_installed: bool = False
    allowed: bool = False
    install: CommandResult | None = None

    def describe(self):
        """The hint: one sentence for the project page."""
        what = self.name if self.kind == "header" else {
            "library": f"-l{self.name}",
            "pkg-config": f"pkg-config's {self.name}",
            "tool": self.name}.get(self.kind, self.name)
        if not self.package:
            return (f"no installed Debian package has {what} and the "
                    f"curated map names none")
        if self.installed_at:
            return (f"{what} is in Debian package {self.package}, installed "
                    f"on this builder as {self.installed_at}, but not where "
                    f"the build looked for it")
        if self.package_installed:
            return (f"{what} is in Debian package {self.package}, which is "
                    f"installed on this builder without it")
        if self.install is not None and self.install.succeeded:
            return (f"{what} is in Debian package {self.package}, which this "
                    f"builder installed after the build failed, too late "
                    f"to retry it: build it again")
        text = (f"{what} is in Debian package {self.package} (not installed "
                f"on this builder")
        if not self.allowed:
            return text + "; not in its --apt-allow list)"
        if self.install is not None and not self.install.succeeded:
            return text + f"; installing it failed: {self.install.ended})"
        return text + ")"

    def line(self):
        """The line a builder appends to the build's log."""
        return failures.finding_line(self.kind, self.name, self.describe())


class AptHelper:
    """Looks missing files up and installs allowed packages.

    *allowed* are the packages this builder may install; *install_command*
    the command (a sequence) that installs one, named where an argument
    says ``{package}`` or else as its last argument.
    """

    def __init__(self, allowed=(), install_command=DEFAULT_INSTALL_COMMAND,
                 dpkg="dpkg", dpkg_query="dpkg-query",
                 lookup_timeout=LOOKUP_TIMEOUT,
                 install_timeout=INSTALL_TIMEOUT):
        self.allowed = frozenset(check_package(p) for p in allowed)
        self.install_command = tuple(install_command)
        if not self.install_command:
            raise ValueError("the apt install command is empty")
        self.dpkg = dpkg
        self.dpkg_query = dpkg_query
        self.lookup_timeout = lookup_timeout
        self.install_timeout = install_timeout

    async def search(self, reactor, kind, name):
        """``[(package, path), ...]`` of installed files that fit, best
        first; empty where dpkg is missing or finds none."""
        patterns = [p.format(name=name) for p in _PATTERNS.get(kind, ())]
        dpkg = _executable(self.dpkg) if "/" not in self.dpkg else self.dpkg
        if not patterns or dpkg is None:
            return []
        result = await run_command(reactor, [dpkg, "-S", *patterns],
                                   self.lookup_timeout, keep=64 * 1024)
        # 1: some pattern matched nothing, which is no error here
        if result.status not in (0, 1):
            log.warn("dpkg -S {patterns} failed: {ended}",
                     patterns=patterns, ended=result.ended)
            return []
        return sorted(parse_dpkg_search(result.output), key=_preference)

    async def is_installed(self, reactor, package):
        query = _executable(self.dpkg_query) if "/" not in self.dpkg_query \
            else self.dpkg_query
        if query is None:
            return False
        result = await run_command(
            reactor, [query, "-W", "-f", "${db:Status-Abbrev}", package],
            self.lookup_timeout)
        return result.succeeded and result.output.startswith("ii")

    async def look_up(self, reactor, kind, name):
        """The :class:`Finding` for a missing *kind* *name*: dpkg first,
        then the curated maps."""
        found = await self.search(reactor, kind, name)
        if found:
            package, path = found[0]
            return Finding(kind, name, package, installed_at=path,
                           package_installed=True,
                           allowed=package in self.allowed)
        package = failures.package_for(kind, name)
        if not package:
            return Finding(kind, name)
        installed = await self.is_installed(reactor, package)
        return Finding(kind, name, package, package_installed=installed,
                       allowed=package in self.allowed)

    def should_install(self, finding):
        return bool(finding.package and finding.allowed and
                    not finding.package_installed and
                    not finding.installed_at)

    def command_for(self, package):
        """The install command for *package*: ``{package}`` in its
        arguments replaced by the name, else the name added at the end."""
        package = check_package(package)
        if any("{package}" in word for word in self.install_command):
            return [word.replace("{package}", package)
                    for word in self.install_command]
        return [*self.install_command, package]

    async def install(self, reactor, package):
        """Run the install command for *package*; its
        :class:`CommandResult`."""
        argv = self.command_for(package)
        log.info("installing {package}: {command}", package=package,
                 command=shlex.join(argv))
        result = await run_command(reactor, argv, self.install_timeout)
        if result.succeeded:
            log.info("installed {package}", package=package)
        else:
            log.warn("installing {package} failed: {ended}",
                     package=package, ended=result.ended)
        return result

    def install_log(self, package, result):
        """What the build's log shows of an installation: each line of it
        marked as the builder's own."""
        prefix = failures.BUILDER_LINE
        lines = [f"{prefix}$ {shlex.join(self.command_for(package))}"]
        lines += [f"{prefix}| {line}" for line in
                  result.output.splitlines() if line.strip()]
        lines.append(f"{prefix}installing {package}: {result.ended}")
        return "".join(f"{line}\n" for line in lines)
