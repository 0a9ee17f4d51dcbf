"""Sdists that fail the way old releases fail on a current system, and
build with the remedy a builder retries with (issue 16).

Each has an in-tree backend (tests/hostile.py's, whose ``build_wheel``
runs a piece of code first):

* :func:`make_pkg_resources_sdist` needs ``setuptools`` to build and
  imports ``pkg_resources`` the way an old ``setup.py`` does; the index
  from :func:`make_setuptools_index` has a stand-in ``setuptools`` 82 that,
  like the real one, has no ``pkg_resources``, and an 81 that has it.
  Only the build constraint ``setuptools<82`` reaching pip's isolated
  build environment makes it build.
* :func:`make_cython3_sdist` needs ``Cython`` and fails as setup.py
  files written for Cython 0.29 fail under Cython 3 (the index's stand-in
  Cython has both): only the build constraint ``Cython<3`` makes it build.
* :func:`make_gcc14_sdist` compiles C code that GCC 14 rejects, with the
  errors GCC 14 made default (``-Werror=incompatible-pointer-types`` and
  ``-Werror=int-conversion``, given explicitly so that any GCC behaves
  alike) followed by ``$CFLAGS``: only the relaxing flags make it build.
"""

import base64
import hashlib
import io
import textwrap
import zipfile
from pathlib import Path

from tests.hostile import _BACKEND
from tests.sdists import make_simple_index, write_tarball

_PYPROJECT = """\
[build-system]
requires = {requires!r}
build-backend = "hostile_backend"
backend-path = ["."]
"""

OLD_C = """\
#include <stdlib.h>

struct point { int x, y; };

int old_style(void)
{
    int *number = malloc(sizeof(int));
    struct point *p = number;      /* incompatible-pointer-types */
    char *name = 42;               /* int-conversion */
    return p->x + (name != 0);
}
"""


def _sdist(directory, name, version, code, requires=()):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    base = f"{name.replace('-', '_')}-{version}"
    backend = _BACKEND.format(
        name=name, version=version, payload=0,
        attack=textwrap.indent(textwrap.dedent(code).strip(), "    "))
    files = {
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\n"
                    f"Version: {version}\n",
        "pyproject.toml": _PYPROJECT.format(requires=list(requires)),
        "hostile_backend.py": backend,
        "old.c": OLD_C,
    }
    return write_tarball(directory / f"{base}.tar.gz", base, files)


def make_pkg_resources_sdist(directory, name, version):
    return _sdist(directory, name, version, """
        import pkg_resources
        say("pkg_resources from", pkg_resources.__file__)
    """, requires=["setuptools"])


def make_cython3_sdist(directory, name, version):
    """Fails the way PyYAML 6.0's setup.py fails under Cython 3 (its
    build_ext asks the extension for ``cython_sources``)."""
    return _sdist(directory, name, version, """
        import Cython
        say("Cython", Cython.__version__)
        if not Cython.__version__.startswith("0."):
            say("AttributeError: 'dict' object has no attribute "
                "'cython_sources'")
            sys.exit(1)
    """, requires=["Cython"])


def make_gcc14_sdist(directory, name, version):
    return _sdist(directory, name, version, """
        import shlex, subprocess
        command = ["gcc", "-c", "-Werror=incompatible-pointer-types",
                   "-Werror=int-conversion",
                   *shlex.split(os.environ.get("CFLAGS", "")),
                   "old.c", "-o", os.path.join(os.environ["TMPDIR"],
                                               "old.o")]
        say(shlex.join(command))
        if subprocess.call(command, stdout=sys.stderr) != 0:
            say("error: command '/usr/bin/gcc' failed with exit code 1")
            sys.exit(1)
    """)


def _wheel(directory, name, version, modules):
    """A pure wheel of *modules* (name -> source)."""
    dist_info = f"{name}-{version}.dist-info"
    files = {path: source.encode() for path, source in modules.items()}
    files[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n").encode()
    files[f"{dist_info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: test\n"
                                   b"Root-Is-Purelib: true\n"
                                   b"Tag: py3-none-any\n")
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(
            hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = Path(directory) / f"{name}-{version}-py3-none-any.whl"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    path.write_bytes(buffer.getvalue())
    return path


def stand_in_setuptools(directory):
    """Wheels of a stand-in setuptools: 81.0.0 with ``pkg_resources``,
    82.0.0 without, as the real ones are."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return [
        _wheel(directory, "setuptools", "81.0.0", {
            "setuptools/__init__.py": "__version__ = '81.0.0'\n",
            "pkg_resources/__init__.py": "WORKING = True\n"}),
        _wheel(directory, "setuptools", "82.0.0", {
            "setuptools/__init__.py": "__version__ = '82.0.0'\n"}),
    ]


def stand_in_cython(directory):
    """Wheels of a stand-in Cython: 0.29.37 and 3.0.0."""
    return [_wheel(directory, "Cython", version, {
        "Cython/__init__.py": f"__version__ = {version!r}\n"})
        for version in ("0.29.37", "3.0.0")]


def make_setuptools_index(root, sdists, scratch):
    """A PEP 503 index at *root* with *sdists*, the stand-in setuptools
    and the stand-in Cython."""
    return make_simple_index(root, [*sdists, *stand_in_setuptools(scratch),
                                    *stand_in_cython(scratch)])
