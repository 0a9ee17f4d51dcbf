"""Hostile sdists for the sandbox's attack tests.

Each sdist has an in-tree PEP 517 backend (``requires = []``, so pip needs
no index for build requirements) whose ``build_wheel`` first runs one
attack and then, unless the attack ended it, writes a small pure wheel.
What an attack reached is printed to the build log as ``REACHED what:
detail``; what stopped it as ``BLOCKED what: error``. The tests judge from
outside (files on the host, the published log, the recorded build), and
the log lines only say why.
"""

import textwrap
from pathlib import Path

from tests.sdists import write_tarball

PYPROJECT = """\
[build-system]
requires = []
build-backend = "hostile_backend"
backend-path = ["."]
"""

_BACKEND = '''\
"""A build backend that attacks the machine it builds on."""

import base64, hashlib, os, random, socket, sys, time, zipfile

NAME, VERSION = {name!r}, {version!r}
DIST = NAME.replace("-", "_")


def say(*words):
    print(*words, file=sys.stderr, flush=True)


def attack():
{attack}


def _dist_info():
    return f"{{DIST}}-{{VERSION}}.dist-info"


def _metadata():
    return f"Metadata-Version: 2.1\\nName: {{NAME}}\\nVersion: {{VERSION}}\\n"


def get_requires_for_build_wheel(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory,
                                     config_settings=None):
    directory = os.path.join(metadata_directory, _dist_info())
    os.makedirs(directory)
    with open(os.path.join(directory, "METADATA"), "w") as f:
        f.write(_metadata())
    return _dist_info()


def build_wheel(wheel_directory, config_settings=None,
                metadata_directory=None):
    attack()
    filename = f"{{DIST}}-{{VERSION}}-py3-none-any.whl"
    files = {{
        f"{{DIST}}/__init__.py": b"BUILT = True\\n",
        f"{{DIST}}/payload.bin": random.Random(VERSION).randbytes({payload}),
        f"{{_dist_info()}}/METADATA": _metadata().encode(),
        f"{{_dist_info()}}/WHEEL": b"Wheel-Version: 1.0\\n"
            b"Generator: hostile\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }}
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(
            hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{{name}},sha256={{digest}},{{len(data)}}")
    record.append(f"{{_dist_info()}}/RECORD,,")
    files[f"{{_dist_info()}}/RECORD"] = ("\\n".join(record) + "\\n").encode()
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w") as z:
        for name, data in files.items():
            # the same bytes every time: a rebuild makes the same wheel
            z.writestr(zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0)), data)
    return filename
'''


def probe(secret, config, builder_home, build_root, admin_socket, marker):
    """Attack code that tries to read, write and connect to what a build
    must not reach; it then builds normally."""
    return f'''
marker = {marker!r}
for what, path in (("secret", {str(secret)!r}), ("config", {str(config)!r}),
                   ("etc-secret", "/etc/piwheels/secret"),
                   ("etc-config", "/etc/piwheels.conf")):
    try:
        with open(path) as f:
            say("REACHED read", what, repr(f.read()))
    except OSError as error:
        say("BLOCKED read", what, error)
try:
    say("REACHED list builder-home", os.listdir({str(builder_home)!r}))
except OSError as error:
    say("BLOCKED list builder-home", error)
for where in ({str(builder_home)!r}, "/tmp", "/dev/shm", "/var/tmp",
              {str(build_root)!r}):
    path = os.path.join(where, marker)
    try:
        with open(path, "w") as f:
            f.write("escaped")
        say("WROTE", path)
    except OSError as error:
        say("BLOCKED write", path, error)
for path in ({str(admin_socket)!r}, "/run/dbus/system_bus_socket",
             "/var/run/postgresql/.s.PGSQL.5432"):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        say("REACHED socket", path)
    except OSError as error:
        say("BLOCKED socket", path, error)
for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
    try:
        with open(f"/proc/{{pid}}/cmdline", "rb") as f:
            say("PROC", pid, f.read().replace(b"\\0", b" ").decode())
    except OSError:
        pass
'''


FORK_BOMB = '''
children = 0
try:
    for _ in range(20000):
        if os.fork() == 0:
            time.sleep(600)
            os._exit(0)
        children += 1
except OSError as error:
    say("BLOCKED fork after", children, "children:", error)
    sys.exit(1)
say("REACHED fork", children, "children")
'''

FILL_DISK = '''
block = b"x" * (1 << 20)
for number in range(4096):
    with open(f"fill-{number}", "wb") as f:
        for _ in range(16):
            f.write(block)
say("REACHED fill 64 GiB")
'''

EAT_MEMORY = '''
hog = bytearray(2 << 30)
say("REACHED allocate", len(hog))
'''

FLOOD_LOG = '''
# long lines: pip relays the backend's output line by line
line = ("flood " * 10000 + "\\n").encode()
chunk = line * ((1 << 20) // len(line))
for _ in range(1024):
    sys.stdout.buffer.write(chunk)
sys.stdout.flush()
say("REACHED print 1 GiB")
'''

SLEEP = '''
say("sleeping past the timeout")
time.sleep(3600)
say("REACHED wake up")
'''

BENIGN = '''
say("an honest build")
'''


def make_sdist(directory, name, version, attack, payload=0):
    """Write the sdist of *name* *version* whose backend runs *attack*
    (Python source, run inside ``build_wheel``) and puts *payload* bytes
    (the same for the same version) into its wheel; return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    base = f"{name.replace('-', '_')}-{version}"
    backend = _BACKEND.format(
        name=name, version=version, payload=int(payload),
        attack=textwrap.indent(textwrap.dedent(attack).strip() or "pass",
                               "    "))
    files = {
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\n"
                    f"Version: {version}\n",
        "pyproject.toml": PYPROJECT,
        "hostile_backend.py": backend,
    }
    return write_tarball(directory / f"{base}.tar.gz", base, files)
