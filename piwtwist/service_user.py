"""Running services as an unprivileged user: the master and builders
refuse root, so a root launcher (the demo, the end-to-end tests) starts
them as the ``piwheels`` system user and hands them their folders."""

import os
import pwd
import subprocess

SERVICE_USER = "piwheels"


class ServiceUserError(Exception):
    """The service user cannot be created."""


def service_user():
    """Who the services run as: ourselves, or (as root) the piwheels system
    user, created if missing."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        result = subprocess.run(
            ["useradd", "--system", "--user-group", "--home-dir",
             "/nonexistent", "--no-create-home", "--shell",
             "/usr/sbin/nologin", SERVICE_USER],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            raise ServiceUserError(f"cannot create the {SERVICE_USER} user for the "
                            f"services: {result.stdout.strip()}")
    return SERVICE_USER


def as_user(user):
    """Popen arguments that run a child as *user* (no wrapper process, so
    signals reach the service itself)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def own(path, user, recursive=True):
    """Hand *path* to *user* so that the services can write it."""
    if user is None or not os.path.lexists(path):
        return
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    if not recursive or not os.path.isdir(path):
        return
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid,
                     follow_symlinks=False)
