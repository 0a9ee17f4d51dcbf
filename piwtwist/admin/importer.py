"""``piw-import FILE...``: record wheels built elsewhere as one build.

The tool reads each wheel's facts locally (a file that is not a wheel is
refused before the master hears of it), offers the files on its connection
and asks the master to import them; the master pulls them through the
verified transfer builders use and answers once all are published and the
build recorded.  Only then does ``--delete`` remove the sources.
"""

import sys
from pathlib import Path

from packaging.utils import canonicalize_name
from twisted.python import usage

from ..builder.tap import parse_duration
from ..protocol import admin as proto
from ..protocol.builder import LOG_CHUNK, wheel_facts
from ..wheels import WheelError, inspect_wheel
from .client import AdminOptions, ToolFailure, connect, run_admin_tool

MAX_LOG_BYTES = 64 * 1024 * 1024


def _duration(value):
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        return parse_duration(value)
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


class Options(AdminOptions):
    """piw-import [options] FILE..."""

    config_section = "import"
    synopsis = "Usage: piw-import [options] FILE..."
    longdesc = ("Import wheels built elsewhere into the master as one "
                "build of a release the database knows.")
    optFlags = [
        ["delete", "d", "Delete the files once the master has verified "
                        "every one of them."],
        ["replace", None, "Let the files replace published files of the "
                          "same name with other bytes (otherwise refused: "
                          "a published file never changes)."],
    ]
    optParameters = [
        ["package", None, None,
         "The package the build is of (default: from the first file's "
         "name)."],
        ["package-version", None, None,
         "The version the build is of (default: from the first file's "
         "name)."],
        ["abi", None, None,
         "The ABI to record the build under (default: the wheels' own, "
         "or the master's lowest for pure and abi3 wheels)."],
        ["duration", None, 0.0,
         "How long the build took (seconds, or 1h30m).", _duration],
        ["output", None, None, "A file holding the build's log."],
        ["dependencies", None, None,
         "A file naming Debian packages the wheels need, one per line "
         "(\"apt:NAME\" or \"NAME\")."],
    ]

    def parseArgs(self, *files):
        if not files:
            raise usage.UsageError("name at least one wheel to import")
        self["files"] = [Path(f) for f in files]


def _read_dependencies(path):
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ToolFailure(f"cannot read {path}: {e.strerror}")
    dependencies = []
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        tool, _, name = line.rpartition(":")
        if tool not in ("", "apt") or not name or " " in name:
            raise ToolFailure(f"{path}, line {number}: {line!r} is not a "
                              f"Debian package name")
        dependencies.append(f"apt:{name}")
    return dependencies


def _read_log(path):
    try:
        with open(path, "rb") as f:
            log = f.read(MAX_LOG_BYTES + 1)
    except OSError as e:
        raise ToolFailure(f"cannot read {path}: {e.strerror}")
    if len(log) > MAX_LOG_BYTES:
        raise ToolFailure(f"{path} is larger than {MAX_LOG_BYTES} bytes")
    return log


def read_wheel(path, extra_dependencies=()):
    """The facts the master needs of the wheel at *path*."""
    if not path.is_file():
        raise ToolFailure(f"{path}: no such file")
    try:
        build_file, dependencies = inspect_wheel(path)
    except WheelError as e:
        raise ToolFailure(f"not a valid wheel: {e}")
    facts = wheel_facts(build_file, dependencies)
    facts["dependencies"] = sorted(set(facts["dependencies"])
                                   | set(extra_dependencies))
    return facts


def prepare(options, say):
    extra = (_read_dependencies(options["dependencies"])
             if options["dependencies"] else [])
    log = _read_log(options["output"]) if options["output"] else b""
    paths = options["files"]
    files = [read_wheel(path, extra) for path in paths]
    package = options["package"] or canonicalize_name(
        files[0]["package_tag"])
    version = options["package-version"] or files[0]["package_version_tag"]
    abi = options["abi"] or ""
    names = ", ".join(f["filename"] for f in files)
    question = (f"Import {len(files)} file(s) as a build of {package} "
                f"{version} for {abi or 'the ABI the master picks'} "
                f"({names})?")
    if options["replace"]:
        question += (" Published files of the same names will be REPLACED "
                     "by these.")

    async def request(reactor):
        client = await connect(reactor, options["import-queue"])
        for path, facts in zip(paths, files):
            client.file_sender.offer(facts["filename"], path)
        try:
            for offset in range(0, len(log), LOG_CHUNK):
                await client.callRemote(proto.ImportLog, offset=offset,
                                        data=log[offset:offset + LOG_CHUNK])
            answer = await client.callRemote(
                proto.ImportBuild, package=package, version=version,
                abi_tag=abi, duration=options["duration"], files=files,
                replace=bool(options["replace"]))
        except proto.AdminError as e:
            raise ToolFailure(str(e))
        except Exception as e:
            raise ToolFailure(f"the import failed: {e}")
        finally:
            client.file_sender.clear()
            if client.transport is not None:
                client.transport.loseConnection()
        message = answer["message"]
        if options["delete"]:
            for path in paths:
                path.unlink(missing_ok=True)
            message += f"; deleted {len(paths)} source file(s)"
        return message

    return question, request


def main(argv=None, ask=input, out=None, err=None):
    return run_admin_tool("piw-import", Options, prepare, argv, ask, out, err)


if __name__ == "__main__":
    sys.exit(main())
