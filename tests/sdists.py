"""Make small sdists and a local PEP 503 index for tests that really build.

The sdists are written by hand (no ``python -m build``): a pyproject.toml
naming setuptools as the build backend, a setup.py, and a module (plus a C
source for :func:`make_c_extension_sdist`). Options make a build misbehave
on purpose, for the sandbox's tests:

``write_home``
    a file name the build writes into its ``$HOME``
``require_empty_home``
    fail if ``$HOME`` holds anything but dot-files (proves that a previous
    build's ``write_home`` left nothing; the toolchain itself may make
    dot-files there, rustup's ``~/.rustup`` for one)
``write_paths``
    absolute paths the build tries to write; it prints ``WROTE path`` or
    ``COULD NOT WRITE path`` for each and carries on
``sleep``
    seconds to sleep before setup() (for timeouts)
``spawn_sleeper``
    a marker: start a detached grandchild, ``python -c ... MARKER``, that
    sleeps for an hour (find it with :func:`processes_with_marker`)
``ignore_sigterm``
    the build (and its sleeper) ignore SIGTERM, so only SIGKILL works
``allocate``
    bytes to allocate before setup() (for memory limits)
``print_environment``
    print ``ENV NAME=value`` for every environment variable
``fail``
    a message to exit with, failing the build
``noise``
    lines to print to stderr first (``noise line 1`` ... ``noise line N``)
``payload_bytes``
    random bytes the build writes into the package (``payload.bin``), for
    a wheel large enough to take a while to move

Pip's build isolation installs setuptools from the same index, so
:func:`make_simple_index` can add the wheels of
:func:`shared_build_requirements` (downloaded from PyPI once per test
session, or taken from ``$PIWTWIST_TEST_WHEELHOUSE`` when that directory
holds them) and the builds then need nothing else from the network.
"""

import atexit
import functools
import hashlib
import html
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from pathlib import Path

from packaging.utils import (
    canonicalize_name, parse_sdist_filename, parse_wheel_filename)

BUILD_REQUIREMENTS = ("setuptools", "wheel")

PYPROJECT = """\
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"
"""

C_SOURCE = """\
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *
length(PyObject *self, PyObject *args)
{
    const char *text;
    if (!PyArg_ParseTuple(args, "s", &text))
        return NULL;
    return PyLong_FromSize_t(strlen(text));
}

static PyMethodDef methods[] = {
    {"length", length, METH_VARARGS, "strlen() of a string."},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_speedups", NULL, -1, methods
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&module);
}
"""


def module_name(name):
    """The importable module an sdist of *name* ships."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name).lower()


def sdist_filename(name, version):
    """The PEP 625 file name of an sdist."""
    return f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}.tar.gz"


def make_pure_sdist(directory, name, version, **options):
    """Write a pure-Python sdist into *directory* and return its path."""
    return _write_sdist(directory, name, version, _setup_py(
        name, version, ext_modules="", **options), {})


def make_c_extension_sdist(directory, name, version, **options):
    """Write an sdist with a C extension (``<module>._speedups``, which
    calls ``strlen`` from libc) and return its path."""
    module = module_name(name)
    ext_modules = (f"[Extension({module + '._speedups'!r}, "
                   f"[{module + '/_speedups.c'!r}])]")
    return _write_sdist(directory, name, version, _setup_py(
        name, version, ext_modules=ext_modules, **options),
        {f"{module}/_speedups.c": C_SOURCE})


def make_simple_index(root, files=(), build_requirements=()):
    """Copy sdists and wheels into a PEP 503 index at *root* (creating or
    extending it) and (re)write its pages; return *root*.

    *build_requirements* are more files to add, typically
    :func:`shared_build_requirements`.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for source in (*files, *build_requirements):
        source = Path(source)
        project = root / canonicalize_name(_project_of(source.name))
        project.mkdir(exist_ok=True)
        if not (project / source.name).exists():
            shutil.copyfile(source, project / source.name)
    projects = sorted(p for p in root.iterdir() if p.is_dir())
    for project in projects:
        links = []
        for file in sorted(project.iterdir()):
            if file.name == "index.html":
                continue
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
            links.append(f'<a href="{html.escape(file.name)}#sha256={digest}">'
                         f'{html.escape(file.name)}</a><br>')
        _write_page(project / "index.html", project.name, links)
    _write_page(root / "index.html", "Simple index", [
        f'<a href="{p.name}/">{p.name}</a><br>' for p in projects])
    return root


def index_url(root):
    """The ``file://`` URL pip takes as ``--index-url`` for *root*."""
    return Path(root).resolve().as_uri() + "/"


def fetch_build_requirements(directory):
    """Wheels of setuptools and wheel (and what they need) in *directory*,
    downloaded with ``pip download`` unless they are there already."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    def present():
        names = {canonicalize_name(parse_wheel_filename(p.name)[0])
                 for p in directory.glob("*.whl")}
        return names.issuperset(BUILD_REQUIREMENTS)

    if not present():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", *BUILD_REQUIREMENTS,
             "--only-binary", ":all:", "--dest", str(directory),
             "--disable-pip-version-check", "--no-input", "--quiet"],
            check=True, stdin=subprocess.DEVNULL)
    return sorted(directory.glob("*.whl"))


@functools.cache
def shared_build_requirements():
    """:func:`fetch_build_requirements`, once per test session, into
    ``$PIWTWIST_TEST_WHEELHOUSE`` or a temporary directory."""
    directory = os.environ.get("PIWTWIST_TEST_WHEELHOUSE")
    if not directory:
        directory = tempfile.mkdtemp(prefix="piwtwist-wheelhouse-")
        atexit.register(shutil.rmtree, directory, True)
    return tuple(fetch_build_requirements(directory))


def processes_with_marker(marker):
    """Pids of the processes whose command line contains *marker*."""
    found = []
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if needle in cmdline.read():
                    found.append(int(entry))
        except OSError:
            pass
    return found


def _project_of(filename):
    if filename.endswith(".whl"):
        return parse_wheel_filename(filename)[0]
    return parse_sdist_filename(filename)[0]


def _write_page(path, title, links):
    path.write_text(
        "<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\""
        f" content=\"1.0\"><title>{html.escape(title)}</title></head>"
        "<body>\n" + "\n".join(links) + "\n</body></html>\n")


def _setup_py(name, version, *, ext_modules, write_home=None,
              require_empty_home=False, write_paths=(), sleep=0,
              spawn_sleeper=None, ignore_sigterm=False, allocate=0,
              print_environment=False, fail=None, noise=0,
              install_requires=(), python_requires=None, payload_bytes=0):
    steps = []
    if ignore_sigterm:
        steps.append("signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    if noise:
        steps.append(f"for n in range(1, {int(noise)} + 1):\n"
                     f"    print('noise line', n, file=sys.stderr)")
    if print_environment:
        steps.append("for key, value in sorted(os.environ.items()):\n"
                     "    print(f'ENV {key}={value}', file=sys.stderr)")
    if require_empty_home:
        steps.append(
            "left = [name for name in os.listdir(os.environ['HOME'])\n"
            "        if not name.startswith('.')]\n"
            "if left:\n"
            "    sys.exit(f'HOME is not empty: {left}')")
    if write_home:
        steps.append(
            f"with open(os.path.join(os.environ['HOME'], {write_home!r}),"
            f" 'w') as f:\n"
            f"    f.write('left behind by a build')")
    for path in write_paths:
        steps.append(
            f"try:\n"
            f"    with open({str(path)!r}, 'w') as f:\n"
            f"        f.write('written by a build')\n"
            f"    print('WROTE', {str(path)!r}, file=sys.stderr)\n"
            f"except OSError as error:\n"
            f"    print('COULD NOT WRITE', {str(path)!r}, error,"
            f" file=sys.stderr)")
    if spawn_sleeper:
        # a grandchild in the build's process group, outliving its parent's
        # interest in it; the marker on its command line identifies it
        sleeper = ("import signal, time; "
                   + ("signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                      if ignore_sigterm else "")
                   + "time.sleep(3600)")
        steps.append(
            f"subprocess.Popen([sys.executable, '-c', {sleeper!r},"
            f" {spawn_sleeper!r}], stdin=subprocess.DEVNULL,"
            f" stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            f"print('started sleeper', {spawn_sleeper!r}, file=sys.stderr)")
    if allocate:
        steps.append(f"hog = bytearray({int(allocate)})\n"
                     f"print('allocated', len(hog), file=sys.stderr)")
    if sleep:
        steps.append(f"time.sleep({float(sleep)})")
    if fail:
        steps.append(f"sys.exit({str(fail)!r})")
    if payload_bytes:
        steps.append(
            f"with open(os.path.join({module_name(name)!r}, 'payload.bin'),"
            f" 'wb') as f:\n"
            f"    for _ in range({int(payload_bytes)} // (1 << 20)):\n"
            f"        f.write(os.urandom(1 << 20))")
    module = module_name(name)
    arguments = [f"name={name!r}", f"version={version!r}",
                 f"packages=[{module!r}]", f"ext_modules={ext_modules or []}",
                 f"install_requires={list(install_requires)!r}"]
    if payload_bytes:
        arguments.append(
            f"package_data={{{module_name(name)!r}: ['payload.bin']}}")
    if python_requires:
        arguments.append(f"python_requires={python_requires!r}")
    return (
        "import os, signal, subprocess, sys, time\n"
        "from setuptools import Extension, setup\n\n"
        + "".join(step + "\n" for step in steps)
        + "\nsetup(\n" + textwrap.indent(",\n".join(arguments), "    ")
        + ",\n)\n")


def _write_sdist(directory, name, version, setup_py, extra_files):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    module = module_name(name)
    filename = sdist_filename(name, version)
    base = filename[:-len(".tar.gz")]
    files = {
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\n"
                    f"Version: {version}\n",
        "pyproject.toml": PYPROJECT,
        "setup.py": setup_py,
        f"{module}/__init__.py": f'"""{name}, made for a test."""\n\n'
                                 f'__version__ = {version!r}\n',
        **extra_files,
    }
    return write_tarball(directory / filename, base, files)


def write_tarball(path, base, files):
    """Write *files* (``{member: text}``) under ``base/`` into the
    gzipped tar at *path*, reproducibly; return *path*."""
    with tarfile.open(path, "w:gz") as archive:
        for member, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{base}/{member}")
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 1700000000
            archive.addfile(info, io.BytesIO(data))
    return path
