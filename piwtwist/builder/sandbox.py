"""Run one ``pip wheel`` build in a throwaway sandbox.

A build runs code from the internet, so it gets a fresh, empty HOME and
TMPDIR (deleted afterwards, so nothing it leaves there reaches the next
build), a clean environment, a session and process group of its own (so that
a timeout, a stop or a shutdown kills everything it started, not just pip),
an optional address-space limit (``prlimit --as``) and, where bubblewrap is
installed, a read-only view of the machine in which only its own directories
are writable and from whose pid namespace nothing outlives the build.

Output goes straight from the child into a log file (stdout and stderr share
one open file, so their order is kept and nothing is lost or truncated); no
pipe ties the reactor to whatever the build leaves running.

``start_build`` spawns the process and returns a :class:`RunningBuild` at
once (its ``stop()`` is what a master "stop" or a shutdown calls);
``run_build`` is the same thing awaited.
"""

import os
import shlex
import shutil
import signal
import stat
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from .. import names

log = Logger()

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KILL_GRACE = 10.0
SIGNAL_RETRY = 0.05
FIND_BWRAP = "find"

# What a program says when an address-space limit bites.
_OUT_OF_MEMORY_SIGNS = (
    "MemoryError",
    "Cannot allocate memory",
    "out of memory",
    "std::bad_alloc",
    "virtual memory exhausted",
    "failed to map segment",
)
_warned = set()


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


def find_bwrap(path=None):
    """The bubblewrap binary, or None (saying so once) when it is absent."""
    found = shutil.which("bwrap", path=path or os.environ.get("PATH"))
    if found is None and "bwrap" not in _warned:
        _warned.add("bwrap")
        log.warn("bubblewrap (bwrap) is not installed: builds run without a "
                 "read-only view of this machine; apt-get install bubblewrap")
    return found


def bwrap_arguments(bwrap, writable, chdir):
    """bubblewrap's command line: the machine read-only, *writable* not, a
    fresh /dev and /proc, a pid namespace that dies with the build, no
    capabilities even when the builder runs as root; network shared, since
    pip needs the index."""
    arguments = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev",
                 "--proc", "/proc"]
    for directory in writable:
        arguments += ["--bind", str(directory), str(directory)]
    arguments += ["--unshare-pid", "--unshare-ipc", "--die-with-parent"]
    if os.geteuid() == 0:
        # root keeps every capability inside bwrap unless told otherwise,
        # and could simply remount / read-write
        arguments += ["--cap-drop", "ALL"]
    arguments += ["--chdir", str(chdir), "--"]
    return arguments


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
                path=None):
    """Start building *package* *version* and return its
    :class:`RunningBuild`.

    *timeout* is seconds or a :class:`~datetime.timedelta` (None: none);
    *memory_limit* is bytes of address space; *bwrap* is the bubblewrap
    binary, ``FIND_BWRAP`` to look for it on PATH, or None not to use it;
    *path* is the build's PATH (default: the builder's own).
    """
    if isinstance(timeout, timedelta):
        timeout = timeout.total_seconds()
    path = path or os.environ.get("PATH") or DEFAULT_PATH
    build_dir = Path(os.path.realpath(build_dir))
    build_dir.mkdir(parents=True, exist_ok=True)
    sandbox_text = "bubblewrap" if bwrap else "none"
    if bwrap == FIND_BWRAP:
        bwrap = find_bwrap(path)
        sandbox_text = "bubblewrap" if bwrap else "none (bwrap not installed)"
    prefix = [_tool("setsid", path)]
    if memory_limit is not None:
        prefix += [_tool("prlimit", path), f"--as={int(memory_limit)}", "--"]

    sandbox = Path(tempfile.mkdtemp(prefix="build-", dir=build_dir))
    output_dir = Path(tempfile.mkdtemp(prefix="wheels-", dir=build_dir))
    home, tmp = sandbox / "home", sandbox / "tmp"
    home.mkdir(mode=0o700)
    tmp.mkdir(mode=0o700)
    try:
        command = pip_wheel_arguments(python, package, version, index_url,
                                      output_dir, extra_index_urls, verbose)
        if bwrap:
            command = bwrap_arguments(bwrap, (sandbox, output_dir),
                                      home) + command
        command = prefix + command
        header = (
            f"# piwtwist: pip wheel {package}=={version}; timeout "
            f"{format_duration(timeout) if timeout else 'none'}; memory limit "
            f"{format_size(memory_limit) if memory_limit else 'none'}; "
            f"sandbox {sandbox_text}"
            f"\n$ {shlex.join(command)}\n")
        build = RunningBuild(reactor, sandbox, output_dir, header,
                             memory_limit, bwrap is not None, kill_grace)
        build.start(command, build_environment(home, tmp, path), home,
                    timeout)
    except BaseException:
        _remove_tree(sandbox)
        _remove_tree(output_dir)
        raise
    return build


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


class RunningBuild:
    """One build in progress: ``wait()`` for its outcome or ``stop()`` it.

    Killing means SIGTERM to the build's whole process group, then SIGKILL
    after *kill_grace* seconds; when pip itself has exited, whatever is left
    in its group is killed at once. Under bubblewrap SIGTERM is final:
    bwrap's monitor dies of it and takes the pid namespace with it, which
    is no loss since the sandbox is thrown away.
    """

    def __init__(self, reactor, sandbox, output_dir, header, memory_limit,
                 bwrap_used, kill_grace=KILL_GRACE):
        self._reactor = reactor
        self._sandbox = sandbox
        self.output_dir = output_dir
        self._header = header
        self._memory_limit = memory_limit
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
        for call in (self._timeout_call, self._kill_call, self._retry_call):
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
        if self._memory_limit and any(sign in text
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

    def _in_thread(self, function, *args):
        get_pool = getattr(self._reactor, "getThreadPool", None)
        if get_pool is None:
            return succeed(function(*args))
        return deferToThreadPool(self._reactor, get_pool(), function, *args)

    def _read_log(self):
        # our own descriptor: the build may have renamed or replaced the
        # file, but cannot make us read anything else
        self._log_file.seek(0)
        return self._log_file.read()

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
