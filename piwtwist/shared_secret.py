"""The shared secret that builders and the master prove they both know.

It lives in a file both read (``--secret-file``); it must not be readable by
everybody, and it must be long enough to be worth having.
"""

import os
import stat

MINIMUM_BYTES = 16


class SecretError(Exception):
    """The secret file is missing, unreadable, too short or too open."""


def read_secret(path):
    """The secret in *path*, as bytes, without surrounding white space."""
    try:
        info = os.stat(path)
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as e:
        raise SecretError(f"cannot read the secret file {path}: "
                          f"{e.strerror}") from None
    if info.st_mode & stat.S_IROTH:
        raise SecretError(f"the secret file {path} is readable by every user; "
                          f"run: chmod o-rwx {path}")
    if len(secret) < MINIMUM_BYTES:
        raise SecretError(f"the secret in {path} is shorter than "
                          f"{MINIMUM_BYTES} bytes")
    return secret


def write_new_secret(path):
    """Create *path* with a fresh random secret (mode 0640)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    return path
