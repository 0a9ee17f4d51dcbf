"""``twistd -n piwheels-builder``: options and the builder's service."""

import os
import re
import shlex
import socket

from twisted.application import service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from ..config import ToolOptions
from ..logs import add_log_observers
from ..shared_secret import SecretError, read_secret
from ..systemd import WatchdogService
from .apt import (DEFAULT_INSTALL_COMMAND, AptHelper, check_package,
                  read_allow_file)
from .client import BuilderService
from .sandbox import (DEFAULT_LOG_LIMIT, DEFAULT_PROCESS_LIMIT, LOG_KEEP,
                      NO_BWRAP_MESSAGE, Limits, find_bwrap)
from .frontend import BuildFrontendError, check_build_frontend

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")
_SIZE = re.compile(r"^(\d+)([KMGT]?)i?B?$", re.IGNORECASE)
log = Logger()


def parse_duration(value):
    """'3h', '90m', '1h30m', '45s' or plain seconds -> seconds (float)."""
    match = _DURATION.match(value.strip())
    if not value.strip() or not match or not any(match.groups()):
        raise ValueError(f"{value!r} is not a duration like 3h, 90m or 45s")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise ValueError("a duration must be longer than nothing")
    return float(total)


def parse_size(value):
    """'2G', '512M', '1024K' or plain bytes -> bytes (int)."""
    match = _SIZE.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a size like 2G or 512M")
    number, unit = match.groups()
    return int(number) * 1024 ** " KMGT".index(unit.upper() or " ")


def master_endpoint_description(master):
    """``HOST[:PORT]`` (IPv6 in brackets) -> a client endpoint description;
    anything with an endpoint type prefix (tcp:, tls:, unix:) is kept."""
    if re.match(r"^(tcp|tls|unix|ssl|tcp6):", master):
        return master
    host, port = master, "5555"
    bracketed = re.match(r"^\[([^\]]+)\](?::(\d+))?$", master)
    if bracketed:
        host, port = bracketed.group(1), bracketed.group(2) or port
    elif master.count(":") == 1:
        host, port = master.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{master!r} is not HOST[:PORT]")
    host = host.replace(":", r"\:")
    return f"tcp:host={host}:port={port}"


def parse_packages(value):
    """'libffi-dev,libxml2-dev' -> the Debian package names."""
    names = [name for name in re.split(r"[\s,]+", value) if name]
    if not names:
        raise ValueError("name at least one Debian package")
    return [check_package(name) for name in names]


class Options(ToolOptions):
    """twistd piwheels-builder [options]"""

    config_section = "builder"
    list_options = ["apt-allow"]
    synopsis = "Usage: twistd [twistd options] piwheels-builder [options]"
    longdesc = "A piwtwist builder: builds what the master asks for."
    optParameters = [
        ["master", "m", "localhost",
         "The master, as HOST[:PORT] or an endpoint description (use tls:... "
         "for TLS)."],
        ["build-dir", "d", "/tmp/piwtwist-builder",
         "Where builds happen (each in a fresh folder that is deleted)."],
        ["label", "L", socket.gethostname(),
         "A name for this builder, shown by the monitors."],
        ["timeout", "t", "3h",
         "The longest a build may take (e.g. 3h, 90m).", parse_duration],
        ["busy-timeout", None, "5m",
         "How long the master waits for a sign of life while building.",
         parse_duration],
        ["memory-limit", None, None,
         "The most memory (address space) a build may use (e.g. 2G); "
         "default: as much as this machine has.", parse_size],
        ["disk-limit", None, None,
         "The most a build may write to its build directory (e.g. 20G); "
         "default: half the build directory's file system.", parse_size],
        ["process-limit", None, None,
         "The most processes and threads this builder's user may have "
         f"while a build runs (default {DEFAULT_PROCESS_LIMIT}).", int],
        ["log-limit", None, None,
         "A build that prints more than this is stopped (default "
         f"{DEFAULT_LOG_LIMIT >> 20}M); only the first and last "
         f"{LOG_KEEP >> 20}M of a long log are kept.", parse_size],
        ["secret-file", None, "/etc/piwheels/secret",
         "File holding the secret shared with the master."],
        ["apt-allow", None, None,
         "Debian packages (PKG[,PKG...]; repeatable) this builder may "
         "install when a build misses a header or library they provide, "
         "before retrying it once.", parse_packages],
        ["apt-allow-file", None, None,
         "A file listing more such packages, one or more a line (# starts "
         "a comment)."],
        ["apt-install-command", None, " ".join(DEFAULT_INSTALL_COMMAND),
         "The command that installs an allowed package, named where it "
         "says {package} or else as its last argument (the builder runs "
         "unprivileged: allow exactly these commands in sudoers)."],
    ]

    optFlags = [
        ["no-sandbox", None,
         "Build without bubblewrap (a build can then read and write "
         "everything this user can; said with every build)."],
    ]

    def postOptions(self):
        if os.geteuid() == 0:
            raise usage.UsageError(
                "refusing to run as root: a builder runs other people's "
                "code; run it as an ordinary user")
        self["bwrap"] = None if self["no-sandbox"] else find_bwrap()
        if not self["no-sandbox"] and self["bwrap"] is None:
            raise usage.UsageError(NO_BWRAP_MESSAGE)
        if self["process-limit"] is not None and self["process-limit"] < 16:
            raise usage.UsageError("--process-limit must be at least 16")
        for name, parse in (("timeout", parse_duration),
                            ("busy-timeout", parse_duration)):
            if isinstance(self[name], str):
                self[name] = parse(self[name])
        self._check_apt()
        try:
            self["endpoint"] = master_endpoint_description(self["master"])
        except ValueError as e:
            raise usage.UsageError(str(e))
        try:
            self["secret"] = read_secret(self["secret-file"])
        except SecretError as e:
            raise usage.UsageError(str(e))
        # a builder that cannot build refuses to start, rather than failing
        # every build it is given
        try:
            self["build-frontend"] = check_build_frontend()
        except BuildFrontendError as e:
            raise usage.UsageError(str(e))


    def _check_apt(self):
        allowed = []
        for value in self["apt-allow"]:
            allowed += value if isinstance(value, list) else [value]
        if self["apt-allow-file"]:
            try:
                allowed += read_allow_file(self["apt-allow-file"])
            except OSError as e:
                raise usage.UsageError(
                    f"cannot read --apt-allow-file: {e.strerror}: "
                    f"{e.filename}")
            except ValueError as e:
                raise usage.UsageError(f"--apt-allow-file: {e}")
        try:
            command = shlex.split(self["apt-install-command"] or "")
        except ValueError as e:
            raise usage.UsageError(f"--apt-install-command: {e}")
        if not command:
            raise usage.UsageError("--apt-install-command is empty")
        self["apt"] = AptHelper(allowed=list(dict.fromkeys(allowed)),
                                install_command=command)


def hidden_paths(options):
    """What builds must not see of this builder: its secret, every
    configuration file it read or might read, its log file and its HOME."""
    paths = [options["secret-file"], *options.config_files_read,
             *(os.path.expanduser(p) for p in options.default_config_files),
             os.path.expanduser("~")]
    if options["config"]:
        paths.append(options["config"])
    if options["log-file"]:
        paths.append(options["log-file"])
    return [p for p in paths if p and p != "/"]


class _LoggingBuilder(BuilderService):
    def __init__(self, options, **kwargs):
        super().__init__(**kwargs)
        self.options = options
        self._observers = None

    def startService(self):
        self._observers = add_log_observers(self.options)
        if "build-frontend" in self.options:
            log.info("build frontend: {frontend}",
                     frontend=self.options["build-frontend"])
        apt = self.options.get("apt")
        if apt is not None and apt.allowed:
            log.info("may install {packages} for builds that miss them, "
                     "with: {command} PKG",
                     packages=" ".join(sorted(apt.allowed)),
                     command=shlex.join(apt.install_command))
        super().startService()

    async def stopService(self):
        await super().stopService()
        if self._observers is not None:
            self._observers.remove()


def makeService(options):
    """The builder, and beside it the service that tells systemd it is
    ready and, while the reactor keeps turning, alive."""
    from twisted.internet import reactor
    endpoint = endpoints.clientFromString(reactor, options["endpoint"])
    builder = _LoggingBuilder(
        options, reactor=reactor, endpoint=endpoint,
        secret=options["secret"], build_dir=options["build-dir"],
        label=options["label"], build_timeout=options["timeout"],
        busy_timeout=options["busy-timeout"],
        limits=Limits.defaults(
            options["build-dir"], memory=options["memory-limit"],
            processes=options["process-limit"], disk=options["disk-limit"],
            log=options["log-limit"]),
        hidden=hidden_paths(options), bwrap=options["bwrap"],
        apt=options["apt"])
    top = service.MultiService()
    builder.setServiceParent(top)
    # started after the builder (its log observers are in place) and, as
    # MultiService stops children in reverse, told to stop first: systemd
    # hears STOPPING=1 at once, not after a running build has been killed
    watchdog = WatchdogService(reactor,
                               status=f"builder {options['label']} running")
    watchdog.setServiceParent(top)
    return top
