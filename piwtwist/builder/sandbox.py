"""Run one ``pip wheel`` build in a throwaway sandbox.

A build runs code from the internet (docs/security.md says what that code
may do and what stops it), so it gets a fresh, empty HOME and TMPDIR
(deleted afterwards, so nothing it leaves there reaches the next build), a
clean environment, a session and process group of its own (so that a
timeout, a stop or a shutdown kills everything it started, not just pip),
limits it cannot lift (address space, processes, file size, wall time, disk
and log size) and, under bubblewrap, a view of the machine made of the
system directories, read-only, and its own directories: the builder's
secret, configuration, HOME, other builds and every UNIX socket of the host
are simply not there, and nothing outlives the build's pid namespace.

Output goes straight from the child into a log file (stdout and stderr share
one open file, so their order is kept); no pipe ties the reactor to
whatever the build leaves running. An oversized log keeps its head and its
tail.

``start_build`` spawns the process and returns a :class:`RunningBuild` at
once (its ``stop()`` is what a master "stop" or a shutdown calls);
``run_build`` is the same thing awaited.
"""

import os
import re
import shlex
import shutil
import signal
import stat
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

import attrs
from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from .. import failures, names

log = Logger()

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KILL_GRACE = 10.0
SIGNAL_RETRY = 0.05
FIND_BWRAP = "find"
#: How often a running build's disk and log are measured.
CHECK_INTERVAL = 2.0
#: Log bytes kept of an oversized log: this much of its head and of its
#: tail; what the master receives is bounded by twice this.
LOG_KEEP = 1024 * 1024
#: A build may print this much before it is stopped.
DEFAULT_LOG_LIMIT = 256 * 1024 * 1024
#: Processes (threads count too) the builder's user may have while a build
#: runs: enough for a parallel compile, not for a fork bomb.
DEFAULT_PROCESS_LIMIT = 1024
#: A build fails when its file system has less than this left.
DISK_RESERVE = 128 * 1024 * 1024

# What a program says when an address-space limit bites.
_OUT_OF_MEMORY_SIGNS = (
    "MemoryError",
    "Cannot allocate memory",
    "out of memory",
    "std::bad_alloc",
    "virtual memory exhausted",
    "failed to map segment",
)


@attrs.frozen
class BuildOutcome:
    """What one build came to.

    ``output`` is the whole log: a header with the command, everything the
    build printed, and a footer with how it ended. ``reason`` is empty on
    success. On success ``wheels`` lists the wheels in ``output_dir``, which
    the caller owns and removes when done; on failure nothing is left behind
    and ``output_dir`` is None.
    """

    status: bool
    duration: timedelta
    output: str
    reason: str = ""
    wheels: tuple = ()
    output_dir: Path | None = None
    #: a failure's class, as this builder sees it (piwtwist.failures)
    failure_class: str = ""
    #: the remedy a failed first attempt was retried with
    remedy: str = ""


def format_duration(seconds):
    """Say how long: ``10800`` -> ``3h``, ``5400`` -> ``1h 30m``."""
    if isinstance(seconds, timedelta):
        seconds = seconds.total_seconds()
    whole, fraction = divmod(round(seconds, 1), 1)
    hours, rest = divmod(int(whole), 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if secs or fraction or not parts:
        parts.append(f"{secs + fraction:g}s")
    return " ".join(parts)


def format_size(size):
    """Bytes as a person reads them (``1.5 GiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:g} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024


class SandboxUnavailable(Exception):
    """bubblewrap is needed and missing."""


NO_BWRAP_MESSAGE = (
    "bubblewrap (bwrap) is not installed, and builds run strangers' code: "
    "install it (apt-get install bubblewrap) or, knowing that a build can "
    "then read everything this user can, pass --no-sandbox")


def find_bwrap(path=None):
    """The bubblewrap binary, or None when it is absent."""
    return shutil.which("bwrap", path=path or os.environ.get("PATH"))


#: Read-only in every build: what programs need to run. /etc is there for
#: the resolver, certificates and the dynamic linker; what an operator of
#: piwtwist keeps in it is hidden (see ALWAYS_HIDDEN).
SYSTEM_DIRECTORIES = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64",
                      "/libx32", "/etc", "/sys")
#: Fresh, empty and small in every build (besides /dev and /proc): they
#: live in memory. /tmp and /var/tmp are the build's own TMPDIR instead,
#: on the build's disk, where its disk limit counts them.
EMPTY_DIRECTORIES = {"/run": 16 << 20, "/var": 16 << 20,
                     "/dev/shm": 64 << 20}
#: Hidden whatever the builder was told: where piwtwist's secret and
#: configuration live on any machine (a master may share the host).
ALWAYS_HIDDEN = ("/etc/piwheels", "/etc/piwheels.conf",
                 "/usr/local/etc/piwheels.conf")


def _under(path, roots):
    return any(path == root or path.startswith(root.rstrip("/") + "/")
               for root in roots)


#: Where a build finds its own directories under bubblewrap, whatever the
#: builder's build directory is: it learns nothing of the host's layout.
INSIDE_BUILD = "/build"
INSIDE_HOME = "/build/home"
INSIDE_WHEELS = "/build/wheels"


def bwrap_arguments(bwrap, binds, chdir, readable=(), hidden=(), root=None):
    """bubblewrap's command line.

    The build sees the system directories read-only, *readable* read-only
    (the interpreter's prefix, a ``file:`` index), each ``(host, inside)``
    pair of *binds* read-write at its inside path, and fresh, empty /run,
    /var, /dev/shm, /dev and /proc, and /tmp and /var/tmp unless *binds*
    gives them; *hidden* paths (and :data:`ALWAYS_HIDDEN`) are replaced by
    empty ones wherever they would otherwise show. It runs in pid, IPC and
    (unless the builder is root, which drops every capability instead) user
    namespaces of its own, may not make further user namespaces, and dies
    with the builder. The network is shared: pip needs the index.
    """
    root = os.geteuid() == 0 if root is None else root
    arguments = [bwrap, "--unshare-pid", "--unshare-ipc",
                 "--die-with-parent"]
    if root:
        # root keeps every capability inside bwrap unless told otherwise,
        # and could simply remount / read-write
        arguments += ["--cap-drop", "ALL"]
    else:
        arguments += ["--unshare-user", "--disable-userns"]
    visible = []
    for directory in SYSTEM_DIRECTORIES:
        if os.path.islink(directory):
            arguments += ["--symlink", os.readlink(directory), directory]
        elif os.path.isdir(directory):
            arguments += ["--ro-bind", directory, directory]
            visible.append(directory)
    arguments += ["--dev", "/dev", "--proc", "/proc"]
    for directory, size in EMPTY_DIRECTORIES.items():
        arguments += ["--size", str(size), "--tmpfs", directory]
    arguments += ["--symlink", "../run", "/var/run"]
    # a resolv.conf that points into /run (systemd-resolved) keeps its
    # target, and with it name resolution
    resolver = os.path.realpath("/etc/resolv.conf")
    if _under(resolver, ["/run", "/var"]) and os.path.isfile(resolver):
        arguments += ["--ro-bind", resolver, resolver]
    given = dict((inside, host) for host, inside in binds)
    for directory in ("/tmp", "/var/tmp"):
        if directory in given:
            arguments += ["--bind", str(given.pop(directory)), directory]
        else:
            arguments += ["--size", str(EMPTY_DIRECTORIES["/dev/shm"]),
                          "--tmpfs", directory]
    for directory in readable:
        directory = os.path.realpath(directory)
        if directory != "/" and os.path.isdir(directory) and \
                not _under(directory, visible):
            arguments += ["--ro-bind", directory, directory]
            visible.append(directory)
    for inside, host in given.items():
        arguments += ["--bind", str(host), str(inside)]
    for path in _hidden_paths(hidden):
        if not _under(path, visible):
            continue
        if os.path.isdir(path):
            arguments += ["--tmpfs", path, "--remount-ro", path]
        else:
            arguments += ["--ro-bind", os.devnull, path]
    arguments += ["--chdir", str(chdir), "--"]
    return arguments


def _hidden_paths(hidden):
    """Each path to hide, as given and with its links resolved."""
    seen = []
    for path in (*ALWAYS_HIDDEN, *hidden):
        if not path:
            continue
        for form in (os.path.abspath(os.path.expanduser(str(path))),
                     os.path.realpath(os.path.expanduser(str(path)))):
            if form not in seen and os.path.lexists(form) and \
                    not os.path.islink(form):
                seen.append(form)
    return seen


def interpreter_paths(python):
    """What the build must be able to read to run *python*: its
    environment (a venv's directory) and the installation behind it."""
    paths = []
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        paths += [sys.prefix, sys.exec_prefix, sys.base_prefix,
                  sys.base_exec_prefix]
    for form in (os.path.abspath(python), os.path.realpath(python)):
        directory = os.path.dirname(form)
        if os.path.basename(directory) == "bin":
            directory = os.path.dirname(directory)
        paths.append(directory)
    unique = []
    for path in paths:
        if path not in unique and path != "/":
            unique.append(path)
    return unique


def index_paths(urls):
    """The directories behind ``file:`` index URLs, which a build must
    read."""
    paths = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme == "file" and parts.path:
            paths.append(unquote(parts.path).rstrip("/") or "/")
    return paths


def pip_wheel_arguments(python, package, version, index_url, wheel_dir,
                        extra_index_urls=(), verbose=True):
    """``pip wheel`` for exactly one release, without its dependencies."""
    # names.InvalidName (a ValueError) unless pip can take NAME==VERSION
    names.pip_requirement(package, version)
    # --no-binary for the package itself: the point is to build it, not
    # to fetch a wheel its index may already have (build requirements
    # such as setuptools still come as wheels)
    arguments = [python, "-m", "pip", "wheel", f"{package}=={version}",
                 "--no-deps", "--no-cache-dir", "--no-binary", package,
                 "--index-url", index_url,
                 # always PEP 517 in an isolated build environment, never
                 # a legacy setup.py run with whatever the builder's own
                 # venv holds (Debian's has setuptools but no wheel)
                 "--use-pep517"]
    for url in extra_index_urls:
        arguments += ["--extra-index-url", url]
    arguments += ["--wheel-dir", str(wheel_dir),
                  "--disable-pip-version-check", "--no-input",
                  "--progress-bar", "off"]
    if verbose:
        arguments.append("--verbose")
    return arguments


@attrs.frozen
class Limits:
    """What a build may use; None is no limit. Sizes in bytes.

    *memory* is address space (``RLIMIT_AS``), *processes* the builder
    user's processes and threads (``RLIMIT_NPROC``), *disk* what the build
    may write into its own directories (also the largest single file,
    ``RLIMIT_FSIZE``), *log* how much it may print.
    """

    memory: int | None = None
    processes: int | None = DEFAULT_PROCESS_LIMIT
    disk: int | None = None
    log: int | None = DEFAULT_LOG_LIMIT

    @classmethod
    def defaults(cls, build_dir, memory=None, processes=None, disk=None,
                 log=None):
        """Limits with sensible values from this machine where not given:
        memory as much as the machine has, disk half of the build
        directory's file system."""
        if memory is None:
            memory = physical_memory()
        if disk is None:
            try:
                disk = disk_size(build_dir) // 2 or None
            except OSError:
                disk = None
        return cls(memory=memory,
                   processes=processes or DEFAULT_PROCESS_LIMIT, disk=disk,
                   log=log or DEFAULT_LOG_LIMIT)


def physical_memory():
    """This machine's RAM in bytes, or None where it cannot be told."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def disk_size(path):
    """The size of the file system holding *path* (or its nearest existing
    parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    stats = os.statvfs(path)
    return stats.f_blocks * stats.f_frsize


def build_environment(home, tmp, path=None):
    """The whole environment of a build: nothing is inherited but PATH."""
    return {
        "PATH": path or os.environ.get("PATH") or DEFAULT_PATH,
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "TMPDIR": str(tmp),
        # no /etc/pip.conf or ~/.config/pip: only the indexes we name
        "PIP_CONFIG_FILE": os.devnull,
        # these reach the pip that installs build requirements, too
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_PROGRESS_BAR": "off",
        "PIP_ROOT_USER_ACTION": "ignore",
    }


def remedy_environment(remedy, sandbox, inside_build):
    """What a :class:`~piwtwist.failures.Remedy` adds to a build's
    environment; its constraints go into a file in *sandbox* (the build's
    directory, *inside_build* as the build sees it)."""
    environment = {}
    if remedy.constraints:
        (Path(sandbox) / "constraints.txt").write_text(
            "".join(f"{line}\n" for line in remedy.constraints))
        inside = f"{inside_build}/constraints.txt"
        # pip before 26.2 applies constraints to the build environment's
        # own pip through the environment it inherits; 25.3 and later
        # take build constraints, and from 26.2 only those
        environment["PIP_CONSTRAINT"] = inside
        environment["PIP_BUILD_CONSTRAINT"] = inside
    if remedy.cflags:
        environment["CFLAGS"] = " ".join(remedy.cflags)
    return environment


def _tool(name, path):
    found = shutil.which(name, path=path)
    if found is None:
        raise FileNotFoundError(
            f"{name} is needed to run builds but is not installed "
            f"(it comes with util-linux)")
    return found


def start_build(reactor, package, version, index_url, build_dir, timeout,
                memory_limit=None, extra_index_urls=(), python=sys.executable,
                *, bwrap=FIND_BWRAP, kill_grace=KILL_GRACE, verbose=True,
                path=None, limits=None, hidden=(), remedy=None):
    """Start building *package* *version* and return its
    :class:`RunningBuild`.

    *timeout* is seconds or a :class:`~datetime.timedelta` (None: none);
    *limits* are the build's :class:`Limits` (*memory_limit*, bytes of
    address space, overrides its memory); *bwrap* is the bubblewrap
    binary, ``FIND_BWRAP`` to look for it on PATH (raising
    :class:`SandboxUnavailable` when it is missing), or None to run
    without a sandbox; *hidden* are paths the build must not see (the
    builder's secret, configuration and HOME); *path* is the build's PATH
    (default: the builder's own); *remedy* (a
    :class:`piwtwist.failures.Remedy`) adds build constraints for pip's
    isolated build environment (a file in the build's own directory) or
    compiler flags.
    """
    if isinstance(timeout, timedelta):
        timeout = timeout.total_seconds()
    limits = limits or Limits()
    if memory_limit is not None:
        limits = attrs.evolve(limits, memory=memory_limit)
    path = path or os.environ.get("PATH") or DEFAULT_PATH
    build_dir = Path(os.path.realpath(build_dir))
    build_dir.mkdir(parents=True, exist_ok=True)
    sandbox_text = "bubblewrap" if bwrap else "none (--no-sandbox)"
    if bwrap == FIND_BWRAP:
        bwrap = find_bwrap(path)
        if bwrap is None:
            raise SandboxUnavailable(NO_BWRAP_MESSAGE)
    if not bwrap:
        log.warn("building {package} {version} without a sandbox: it can "
                 "read and write everything this builder can",
                 package=package, version=version)
    pip_command = pip_wheel_arguments(python, package, version, index_url,
                                      "WHEEL_DIR", extra_index_urls, verbose)
    prefix = [_tool("setsid", path)]
    resource_limits = [f"--{name}={int(value)}" for name, value in (
        ("as", limits.memory), ("nproc", limits.processes),
        ("fsize", limits.disk)) if value]
    if resource_limits:
        prefix += [_tool("prlimit", path), *resource_limits, "--"]

    sandbox = output_dir = None
    try:
        sandbox = Path(tempfile.mkdtemp(prefix="build-", dir=build_dir))
        output_dir = Path(tempfile.mkdtemp(prefix="wheels-", dir=build_dir))
        home, tmp = sandbox / "home", sandbox / "tmp"
        home.mkdir(mode=0o700)
        tmp.mkdir(mode=0o700)
        if bwrap:
            readable = [*interpreter_paths(python),
                        *index_paths([index_url, *extra_index_urls])]
            inside_tmp = "/tmp"
            command = bwrap_arguments(
                bwrap, [(sandbox, INSIDE_BUILD), (output_dir, INSIDE_WHEELS),
                        (tmp, "/tmp"), (tmp, "/var/tmp")],
                INSIDE_HOME, readable=readable, hidden=hidden)
            wheel_dir, home_inside = INSIDE_WHEELS, INSIDE_HOME
        else:
            command, inside_tmp = [], tmp
            wheel_dir, home_inside = output_dir, home
        command += [str(wheel_dir) if argument == "WHEEL_DIR" else argument
                    for argument in pip_command]
        command = prefix + command
        header = (
            f"# piwtwist: pip wheel {package}=={version}; timeout "
            f"{format_duration(timeout) if timeout else 'none'}; memory limit "
            f"{format_size(limits.memory) if limits.memory else 'none'}; "
            f"disk limit "
            f"{format_size(limits.disk) if limits.disk else 'none'}; "
            f"sandbox {sandbox_text}"
            f"\n$ {shlex.join(command)}\n")
        environment = build_environment(home_inside, inside_tmp, path)
        if remedy is not None:
            header += f"# piwtwist: with {remedy.label}\n"
            inside_build = INSIDE_BUILD if bwrap else str(sandbox)
            environment.update(remedy_environment(remedy, sandbox,
                                                  inside_build))
        build = RunningBuild(reactor, sandbox, output_dir, header, limits,
                             bool(bwrap), kill_grace)
        build.start(command, environment, home, timeout)
    except BaseException:
        for directory in (sandbox, output_dir):
            if directory is not None:
                _remove_tree(directory)
        raise
    return build


def could_not_start(package, version, error):
    """The :class:`BuildOutcome` of a build that never started: a failure
    whose reason says why, so that the builder reports it and moves on."""
    reason = f"could not start the build: {error}"
    return BuildOutcome(
        status=False, duration=timedelta(0), reason=reason,
        output=f"# piwtwist: pip wheel {package}=={version}\n# {reason}\n")


async def run_build(reactor, package, version, index_url, build_dir, timeout,
                    memory_limit=None, extra_index_urls=(),
                    python=sys.executable, **options):
    """Build and wait: the :class:`BuildOutcome` of :func:`start_build`.

    Cancelling the awaiting Deferred stops the build (the clean-up then
    finishes in the background); prefer ``start_build(...).stop()`` where
    the caller wants to know when everything is gone.
    """
    build = start_build(reactor, package, version, index_url, build_dir,
                        timeout, memory_limit, extra_index_urls, python,
                        **options)
    return await build.wait()


#: Starts of a build whose sandbox the kernel refused for a moment, and
#: the wait before the first new start (doubled, then tripled): a build's
#: processes (a fork bomb's hundreds) count against the builder user's
#: process limit until the kernel has reaped them, after the build ended.
SANDBOX_START_TRIES = 4
SANDBOX_START_WAIT = 2.0
#: How bubblewrap says the kernel refused it, with EAGAIN.
_SANDBOX_REFUSED = re.compile(
    r"^bwrap: (.*Resource temporarily unavailable)$", re.MULTILINE)


def _sandbox_refused(outcome):
    """bubblewrap's complaint when a failed build never got past its
    sandbox's start because of a transient refusal, else None."""
    if outcome.status or outcome.duration.total_seconds() > 10:
        return None
    match = _SANDBOX_REFUSED.search(outcome.output[-4096:])
    return match.group(1) if match else None


#: A failed build is retried only when at least this much of its timeout
#: is left.
MIN_RETRY_SECONDS = 30.0
#: Of a first attempt's log, what a rescued build's log keeps (its head and
#: tail) when it is longer: the two attempts stay well under what the
#: master accepts.
FIRST_ATTEMPT_KEEP = (64 * 1024, 448 * 1024)


async def run_build_with_rescue(reactor, package, version, index_url,
                                build_dir, timeout, *, on_start=None,
                                may_retry=lambda: True, apt=None, **options):
    """Build like :func:`run_build`; when the build fails in a way a known,
    safe remedy fixes (:func:`piwtwist.failures.remedy_for`), build once
    more with it.  The outcome's log shows both attempts; its
    ``failure_class`` is set on failure, and its ``remedy`` when the second
    attempt ran.  *on_start* is called with each :class:`RunningBuild` (so
    that the caller can stop the current one), *may_retry* is asked before
    retrying (a build stopped on purpose is not retried).  With *apt* (a
    :class:`piwtwist.builder.apt.AptHelper`), a missing header or library
    is looked up, what was found is the log's last line, and a package
    the operator allowed is installed before the retry."""

    if isinstance(timeout, timedelta):
        timeout = timeout.total_seconds()

    def start(remedy=None, timeout=timeout):
        build = start_build(reactor, package, version, index_url, build_dir,
                            timeout, remedy=remedy, **options)
        if on_start is not None:
            on_start(build)
        return build

    async def attempt(remedy=None, timeout=timeout):
        """One attempt, started again when the kernel refused the sandbox
        its namespaces for a moment."""
        notes = ""
        for tries in range(1, SANDBOX_START_TRIES + 1):
            outcome = await start(remedy, timeout).wait()
            refusal = _sandbox_refused(outcome)
            if refusal is None or tries == SANDBOX_START_TRIES or \
                    not may_retry():
                break
            wait = SANDBOX_START_WAIT * tries
            notes += (f"# piwtwist: the sandbox could not start "
                      f"({refusal}); starting it again in {wait:g}s\n")
            await task.deferLater(reactor, wait, lambda: None)
        if notes:
            outcome = attrs.evolve(outcome, output=notes + outcome.output)
        return outcome

    started = reactor.seconds()
    first = await attempt()
    if first.status:
        return first
    diagnosis = await _in_thread(reactor, failures.classify, first.output,
                                 first.reason)
    first = attrs.evolve(first, failure_class=diagnosis.failure_class)
    # only a build that ended on its own (not a timeout, a limit or a stop)
    remedy = failures.remedy_for(diagnosis, first.output) \
        if first.reason.startswith("exit status") else None
    # both attempts together keep to the timeout (the master stops a
    # build that runs longer)
    left = timeout - first.duration.total_seconds() if timeout else None
    time_left = left is None or left >= MIN_RETRY_SECONDS
    installed = ""
    if remedy is None and apt is not None and \
            first.reason.startswith("exit status"):
        finding = await _look_up(reactor, apt, diagnosis, first.output)
        if finding is None:
            return first
        if not (apt.should_install(finding) and time_left and may_retry()):
            return attrs.evolve(first, output=first.output + finding.line())
        result = await apt.install(reactor, finding.package)
        installed = apt.install_log(finding.package, result)
        if not result.succeeded:
            finding = attrs.evolve(finding, install=result)
            return attrs.evolve(first, output=first.output + installed
                                + finding.line())
        remedy = failures.apt_remedy(finding.package)
        if timeout:
            left = timeout - (reactor.seconds() - started)
            time_left = left >= MIN_RETRY_SECONDS
        if not time_left or not may_retry():
            # installed, but not retried: the next build will find it
            finding = attrs.evolve(finding, install=result)
            return attrs.evolve(first, output=first.output + installed
                                + finding.line())
    if remedy is None or not time_left or not may_retry():
        return first
    second = await attempt(remedy, left)
    output = (_shortened(first.output) + installed
              + failures.retry_marker(remedy.label)
              + f" (the first attempt failed: {diagnosis.failure_class})\n"
              + second.output)
    outcome = attrs.evolve(second, output=output,
                           duration=first.duration + second.duration,
                           remedy=remedy.label)
    if not outcome.status:
        diagnosis = await _in_thread(reactor, failures.classify,
                                     second.output, second.reason)
        outcome = attrs.evolve(outcome,
                               failure_class=diagnosis.failure_class)
        if apt is not None and second.reason.startswith("exit status"):
            # say what is missing now (a retry is not retried)
            finding = await _look_up(reactor, apt, diagnosis, second.output)
            if finding is not None:
                outcome = attrs.evolve(
                    outcome, output=outcome.output + finding.line())
    return outcome


async def _look_up(reactor, apt, diagnosis, output):
    """The :class:`~piwtwist.builder.apt.Finding` about the file a
    ``missing-*`` failure's log names, or None."""
    if diagnosis.failure_class not in failures.MISSING_CLASSES:
        return None
    missing = await _in_thread(reactor, failures.missing_file, output,
                               diagnosis.failure_class)
    if missing is None:
        return None
    try:
        return await apt.look_up(reactor, *missing)
    except Exception:
        log.failure("looking up {missing} failed", missing=missing)
        return None


def _shortened(output):
    head, tail = FIRST_ATTEMPT_KEEP
    if len(output) <= head + tail:
        return output
    return (output[:head] + f"\n# piwtwist: {len(output) - head - tail} "
            f"characters of the first attempt's log left out here\n"
            + output[-tail:])


def _in_thread(reactor, function, *args):
    get_pool = getattr(reactor, "getThreadPool", None)
    if get_pool is None:
        return succeed(function(*args))
    return deferToThreadPool(reactor, get_pool(), function, *args)


class RunningBuild:
    """One build in progress: ``wait()`` for its outcome or ``stop()`` it.

    Killing means SIGTERM to the build's whole process group, then SIGKILL
    after *kill_grace* seconds; when pip itself has exited, whatever is left
    in its group is killed at once. Under bubblewrap SIGTERM is final:
    bwrap's monitor dies of it and takes the pid namespace with it, which
    is no loss since the sandbox is thrown away.

    Every *check_interval* seconds the build's directories and log are
    measured (in a thread): a build over its disk or log limit, or one
    leaving its file system less than :data:`DISK_RESERVE`, is stopped
    with a reason that says so.
    """

    def __init__(self, reactor, sandbox, output_dir, header, limits,
                 bwrap_used, kill_grace=KILL_GRACE,
                 check_interval=CHECK_INTERVAL):
        self._reactor = reactor
        self._sandbox = sandbox
        self.output_dir = output_dir
        self._header = header
        self._limits = limits
        self._check_interval = check_interval
        self._checker = None
        self._checking = False
        self._bwrap_used = bwrap_used
        self._kill_grace = kill_grace
        self._log_file = None
        self._pid = None
        self._started = None
        self._timeout_call = None
        self._kill_call = None
        self._retry_call = None
        self._kill_reason = ""
        self._reaped = False
        self._outcome = None
        self._waiters = []

    @property
    def pid(self):
        """The build's process id, which is also its process group id."""
        return self._pid

    @property
    def finished(self):
        return self._outcome is not None

    def start(self, command, environment, cwd, timeout=None):
        self._log_file = open(self._sandbox / "build.log", "w+b")
        stdin = os.open(os.devnull, os.O_RDONLY)
        try:
            self._started = self._reactor.seconds()
            transport = self._reactor.spawnProcess(
                _BuildProtocol(self), command[0], command, environment,
                path=str(cwd),
                childFDs={0: stdin, 1: self._log_file.fileno(),
                          2: self._log_file.fileno()})
            self._pid = transport.pid
        except BaseException:
            self._log_file.close()
            raise
        finally:
            os.close(stdin)
        if timeout:
            self._timeout_call = self._reactor.callLater(
                timeout, self._terminate,
                f"timed out after {format_duration(timeout)}")
        self._checker = self._reactor.callLater(self._check_interval,
                                                self._check)

    def _check(self):
        """Measure the build's disk use and log; stop it when over."""
        self._checker = None
        if self._reaped or self._kill_reason:
            return
        measuring = self._in_thread(self._measure)
        measuring.addCallback(self._judge_usage)
        measuring.addErrback(lambda failure: log.failure(
            "could not measure a build's disk use", failure))
        measuring.addBoth(self._check_again)

    def _check_again(self, _):
        if not (self._reaped or self._kill_reason):
            self._checker = self._reactor.callLater(self._check_interval,
                                                    self._check)

    def _measure(self):
        try:
            used = sum(_tree_size(directory)
                       for directory in (self._sandbox, self.output_dir))
            log_size = os.fstat(self._log_file.fileno()).st_size
            stats = os.statvfs(self._sandbox)
        except (OSError, ValueError):
            return None  # the build ended meanwhile
        return used, log_size, stats.f_bavail * stats.f_frsize

    def _judge_usage(self, measured):
        if measured is None or self._reaped:
            return
        used, log_size, free = measured
        limits = self._limits
        if limits.log and log_size > limits.log:
            self._terminate(f"printed more than {format_size(limits.log)} "
                            f"of log")
        elif limits.disk and used > limits.disk:
            self._terminate(f"wrote more than {format_size(limits.disk)} "
                            f"to its build directory")
        elif free < DISK_RESERVE:
            self._terminate(f"the build directory's disk is full (less "
                            f"than {format_size(DISK_RESERVE)} left)")

    def wait(self):
        """A Deferred that fires with the :class:`BuildOutcome`; cancelling
        it stops the build."""
        if self._outcome is not None:
            return succeed(self._outcome)
        waiter = Deferred(lambda _: self.stop())
        self._waiters.append(waiter)
        return waiter

    def stop(self, reason="stopped"):
        """Kill the build; the Deferred fires with its outcome once every
        process is gone and the sandbox is removed."""
        self._terminate(reason)
        return self.wait()

    def _terminate(self, reason):
        if self._reaped or self._kill_reason:
            return
        self._kill_reason = reason
        self._signal_group(signal.SIGTERM)
        self._kill_call = self._reactor.callLater(
            self._kill_grace, self._signal_group, signal.SIGKILL)

    def _signal_group(self, number):
        pid = self.pid
        try:
            os.killpg(pid, number)
        except ProcessLookupError:
            if self._reaped:
                return
            # setsid has not run yet (a signal now may be lost in the
            # forked child before its exec): try the one process there is,
            # and the group again shortly
            try:
                os.kill(pid, number)
            except ProcessLookupError:
                pass
            self._retry_call = self._reactor.callLater(
                SIGNAL_RETRY, self._signal_again, number)
        except PermissionError:
            log.warn("could not signal build process group {pid}", pid=pid)

    def _signal_again(self, number):
        if not self._reaped:
            self._signal_group(number)

    def _process_ended(self, reason):
        self._reaped = True
        # whatever pip left running dies with it
        self._signal_group(signal.SIGKILL)
        for call in (self._timeout_call, self._kill_call, self._retry_call,
                     self._checker):
            if call is not None and call.active():
                call.cancel()
        duration = timedelta(seconds=self._reactor.seconds() - self._started)
        finishing = Deferred.fromCoroutine(self._finish(reason.value,
                                                        duration))
        finishing.addErrback(self._finish_failed, duration)

    async def _finish(self, ended, duration):
        raw = await self._in_thread(self._read_log)
        text = raw.decode("utf-8", "replace").replace("\x00", "\\x00")
        status, reason = self._judge(ended, text)
        wheels = self._wheels() if status else ()
        if status and not wheels:
            status, reason = False, "no wheel produced"
        footer = f"# {reason or 'exit status 0'}; duration " \
                 f"{format_duration(duration)}"
        if wheels:
            footer += "; built " + ", ".join(w.name for w in wheels)
        if text and not text.endswith("\n"):
            text += "\n"
        output = f"{self._header}{text}{footer}\n"
        await self._in_thread(self._clean_up, status)
        self._complete(BuildOutcome(
            status=status, duration=duration, output=output, reason=reason,
            wheels=wheels, output_dir=self.output_dir if status else None))

    def _wheels(self):
        """The regular ``*.whl`` files in the output directory, provided
        the build left that a directory of its own."""
        if self.output_dir.is_symlink() or not self.output_dir.is_dir():
            return ()
        return tuple(sorted(
            entry for entry in self.output_dir.iterdir()
            if entry.suffix == ".whl" and not entry.is_symlink()
            and entry.is_file()))

    def _judge(self, ended, text):
        if self._kill_reason:
            return False, self._kill_reason
        if isinstance(ended, ProcessDone):
            return True, ""
        if ended.signal is not None:
            reason = f"killed by signal {ended.signal}"
        elif self._bwrap_used and ended.exitCode > 128:
            # bubblewrap reports a signal as 128 + its number
            reason = f"killed by signal {ended.exitCode - 128}"
        else:
            reason = f"exit status {ended.exitCode}"
        if self._limits.memory and any(sign in text
                                       for sign in _OUT_OF_MEMORY_SIGNS):
            reason = "out of memory?"
        return False, reason

    def _finish_failed(self, failure, duration):
        log.failure("finishing a build failed", failure)
        try:
            self._clean_up(keep_output=False)
        except Exception:
            log.failure("could not remove the build's directories")
        self._complete(BuildOutcome(
            status=False, duration=duration,
            output=self._header + f"# internal error: {failure.value}\n",
            reason="internal error"))

    def _complete(self, outcome):
        self._outcome = outcome
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:  # a cancelled waiter has fired already
                waiter.callback(outcome)

    def tail(self, max_bytes):
        """A Deferred firing with the last *max_bytes* of the build's log
        so far (read in a thread), or nothing once the build is over."""
        return self._in_thread(self._read_tail, max_bytes)

    def _read_tail(self, max_bytes):
        log_file = self._log_file
        if log_file is None or self._outcome is not None:
            return b""
        try:
            # pread: no seek to disturb _read_log's
            fd = log_file.fileno()
            size = os.fstat(fd).st_size
            start = max(0, size - max_bytes)
            return os.pread(fd, size - start, start)
        except (OSError, ValueError):
            return b""  # the build finished and closed its log meanwhile

    def _in_thread(self, function, *args):
        get_pool = getattr(self._reactor, "getThreadPool", None)
        if get_pool is None:
            return succeed(function(*args))
        return deferToThreadPool(self._reactor, get_pool(), function, *args)

    def _read_log(self):
        """The log, or its head and tail around a marker when it is longer
        than twice :data:`LOG_KEEP`."""
        # our own descriptor: the build may have renamed or replaced the
        # file, but cannot make us read anything else
        size = os.fstat(self._log_file.fileno()).st_size
        self._log_file.seek(0)
        if size <= 2 * LOG_KEEP:
            return self._log_file.read(2 * LOG_KEEP)
        head = self._log_file.read(LOG_KEEP)
        self._log_file.seek(size - LOG_KEEP)
        tail = self._log_file.read(LOG_KEEP)
        marker = (f"\n# piwtwist: {size - 2 * LOG_KEEP} bytes of log left "
                  f"out here ({format_size(size)} in all)\n").encode()
        return head + marker + tail

    def _clean_up(self, keep_output):
        self._log_file.close()
        _remove_tree(self._sandbox)
        if not keep_output:
            _remove_tree(self.output_dir)


class _BuildProtocol(ProcessProtocol):
    def __init__(self, build):
        self._build = build

    def processEnded(self, reason):
        self._build._process_ended(reason)


def _tree_size(path):
    """Bytes of disk the files under *path* take, not following links."""
    total = 0
    pending = [str(path)]
    while pending:
        try:
            entries = os.scandir(pending.pop())
        except OSError:
            continue  # gone, or the build took its permissions away
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
                except OSError:
                    pass
    return total


def _remove_tree(path):
    """Remove *path* even where the build took away its own permissions."""

    def make_writable_and_retry(function, failed_path, error):
        if isinstance(error, FileNotFoundError):
            return
        os.chmod(os.path.dirname(failed_path), stat.S_IRWXU)
        if function is not os.rmdir and os.path.isdir(failed_path) \
                and not os.path.islink(failed_path):
            # a directory we could not list
            os.chmod(failed_path, stat.S_IRWXU)
            _rmtree(failed_path, make_writable_and_retry)
        else:
            function(failed_path)

    _rmtree(path, make_writable_and_retry)


def _rmtree(path, handler):
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=handler)
    else:
        shutil.rmtree(path, onerror=lambda function, failed_path, info:
                      handler(function, failed_path, info[1]))
