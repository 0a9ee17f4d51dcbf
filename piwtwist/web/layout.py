"""Where things go in the output tree, and writing them safely.

Everything here is synchronous file-system work, meant to run in a thread
pool.  Files are written atomically (a temporary file in the same directory,
then a rename), so a web server or a mirror never sees half a page; modes
are 0644 for files and 0755 for directories so a web server running as
another user can read them, whatever the master's umask.
"""

import os
import itertools
import shutil
from pathlib import Path

from .. import names

FILE_MODE = 0o644
DIRECTORY_MODE = 0o755

def is_safe_name(name):
    """Whether *name* (a canonical name, a wheel's file name, an alias as
    PyPI spells it) can be one path component of the output tree: see
    :func:`piwtwist.names.is_safe_path_component`."""
    return names.is_safe_path_component(name)


def simple_dir(output, package):
    return Path(output) / "simple" / package


def project_dir(output, package):
    return Path(output) / "project" / package


def log_relative_path(build_id):
    """``logs/NNNN/NNNN/NNNN.txt.gz``: the build id zero-padded to twelve
    digits and split in three, so no directory holds more than 10,000
    entries."""
    digits = f"{int(build_id):012d}"
    if len(digits) != 12 or int(build_id) < 0:
        raise ValueError(f"build id {build_id!r} out of range")
    return f"logs/{digits[:4]}/{digits[4:8]}/{digits[8:]}.txt.gz"


def log_path(output, build_id):
    return Path(output) / log_relative_path(build_id)


def make_directories(path):
    """Create *path* and its missing parents with mode 0755."""
    path = Path(path)
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue
        os.chmod(directory, DIRECTORY_MODE)


#: Makes temporary names unique within this process (with its pid, across
#: processes: the master's threads and its render workers write the tree).
_temporary_names = itertools.count()
#: Characters of a file's name kept in its temporary name.
TEMPORARY_NAME_PART = 200


def write_atomically(path, data):
    """Replace *path* with *data* (bytes) in one rename.

    The cheapest safe way, since a full rewrite writes millions of files:
    a temporary name made from the pid and a counter (no random names to
    try), opened exclusively, one ``write`` loop, no directory checks unless
    the directory turns out to be missing."""
    path = os.fspath(path)
    directory, name = os.path.split(path)
    # the name is only a reminder (the pid and counter make it unique):
    # cut so that a 255-byte file name has a temporary name too
    temporary = os.path.join(directory, f".{name[:TEMPORARY_NAME_PART]}."
                             f"{os.getpid()}-{next(_temporary_names)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(temporary, flags, FILE_MODE)
    except FileNotFoundError:
        make_directories(directory)
        fd = os.open(temporary, flags, FILE_MODE)
    try:
        try:
            os.fchmod(fd, FILE_MODE)   # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


def write_if_changed(path, data):
    """:func:`write_atomically` unless *path* holds *data* already; True
    when written."""
    try:
        with open(path, "rb") as existing:
            if existing.read(len(data) + 1) == data:
                return False
    except OSError:
        pass
    write_atomically(path, data)
    return True


def link_atomically(path, target):
    """Make *path* a symbolic link to *target* (relative), replacing
    whatever link was there in one rename."""
    path = Path(path)
    if path.is_symlink() and os.readlink(path) == str(target):
        return
    if path.exists() and not path.is_symlink():
        # a real directory of that name (the alias became canonical, say):
        # leave it alone rather than destroy pages
        return
    make_directories(path.parent)
    temporary = path.with_name(f".{path.name}.link")
    try:
        os.unlink(temporary)
    except FileNotFoundError:
        pass
    os.symlink(target, temporary)
    os.replace(temporary, path)


def remove_file(path):
    """Remove *path* if it is there; True when something was removed."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def remove_tree(path):
    """Remove the directory *path* (or the symbolic link) if it is there.

    The directory is first renamed aside, so it disappears from the tree in
    one step however many files it holds."""
    path = Path(path)
    if path.is_symlink():
        return remove_file(path)
    if not path.is_dir():
        return False
    doomed = path.with_name(f".{path.name}.deleted.{os.getpid()}")
    if doomed.exists():
        shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)
    return True
