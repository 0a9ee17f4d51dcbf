"""What a builder tells the master about its machine.

:func:`machine_facts` goes into the builder's hello (they do not change while
it runs: which OS, which Raspberry Pi, which Python, ABI and platform it
builds for); :func:`machine_stats` into its periodic reports (disk, memory,
load, temperature), so an operator sees a builder filling its disk or
overheating before its builds start to fail. Both only read small files and
are cheap enough to call from the reactor thread. *root* lets tests point
them at a fake ``/``.
"""

import os
import struct
import sys
import sysconfig
from datetime import datetime, timezone
from pathlib import Path

import attrs
from packaging import tags

import piwtwist


@attrs.frozen
class MachineFacts:
    """Fixed facts; empty strings where the machine does not say."""

    os_name: str
    os_version: str
    board_model: str
    board_revision: str
    board_serial: str
    python_version: str
    py_version_tag: str
    abi_tag: str
    platform_tag: str
    piwtwist_version: str


@attrs.frozen
class MachineStats:
    """One sample; sizes in bytes, temperature in degrees Celsius (None
    without a thermal sensor)."""

    timestamp: datetime
    disk_total: int
    disk_free: int
    mem_total: int
    mem_free: int
    load_average: float
    cpu_temperature: float | None
    swap_total: int | None = None
    swap_free: int | None = None


def machine_facts(root="/"):
    root = Path(root)
    os_release = read_os_release(root)
    cpuinfo = read_cpuinfo(root)
    device_tree = root / "proc" / "device-tree"
    return MachineFacts(
        os_name=os_release.get("NAME", ""),
        os_version=os_release.get("VERSION_ID",
                                  os_release.get("VERSION", "")),
        board_model=cpuinfo.get("Model") or _device_tree_string(
            device_tree / "model"),
        board_revision=cpuinfo.get("Revision") or _device_tree_revision(
            device_tree / "system" / "linux,revision"),
        board_serial=cpuinfo.get("Serial") or _device_tree_string(
            device_tree / "serial-number"),
        python_version=".".join(map(str, sys.version_info[:3])),
        py_version_tag=tags.interpreter_name() + tags.interpreter_version(),
        abi_tag=next(iter(tags.sys_tags())).abi,
        platform_tag=platform_tag(),
        piwtwist_version=piwtwist.__version__,
    )


def platform_tag():
    """The platform tag of the wheels this Python builds: setuptools' rule,
    so a 32-bit userland on a 64-bit kernel (Raspberry Pi OS armhf on an
    aarch64 kernel) says linux_armv7l, as its wheels do."""
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    if struct.calcsize("P") == 4:
        platform = {"linux_x86_64": "linux_i686",
                    "linux_aarch64": "linux_armv7l"}.get(platform, platform)
    return platform


def machine_stats(build_dir, root="/", now=None):
    root = Path(root)
    disk = os.statvfs(build_dir)
    mem_total, mem_free = read_memory(root)
    swap_total, swap_free = read_swap(root)
    return MachineStats(
        timestamp=now or datetime.now(timezone.utc),
        disk_total=disk.f_blocks * disk.f_frsize,
        # what an unprivileged build can still write
        disk_free=disk.f_bavail * disk.f_frsize,
        mem_total=mem_total,
        mem_free=mem_free,
        load_average=os.getloadavg()[0],
        cpu_temperature=read_cpu_temperature(root),
        swap_total=swap_total,
        swap_free=swap_free,
    )


def read_os_release(root):
    """The KEY=value pairs of os-release(5), unquoted."""
    for path in (root / "etc" / "os-release",
                 root / "usr" / "lib" / "os-release"):
        text = _read_text(path)
        if text is not None:
            break
    else:
        return {}
    values = {}
    for line in text.splitlines():
        key, separator, value = line.strip().partition("=")
        if not separator or key.startswith("#"):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
            for escaped in ("\\\\", '\\"', "\\$", "\\`"):
                value = value.replace(escaped, escaped[1])
        values[key] = value
    return values


def read_cpuinfo(root):
    """The ``Key : value`` lines of /proc/cpuinfo (the last one wins, so
    the board lines at the end beat the per-core ones)."""
    values = {}
    for line in (_read_text(root / "proc" / "cpuinfo") or "").splitlines():
        key, separator, value = line.partition(":")
        if separator:
            values[key.strip()] = value.strip()
    return values


def _meminfo(root):
    values = {}
    for line in (_read_text(root / "proc" / "meminfo") or "").splitlines():
        key, separator, value = line.partition(":")
        fields = value.split()
        if separator and fields and fields[0].isdigit():
            scale = 1024 if fields[1:] == ["kB"] else 1
            values[key.strip()] = int(fields[0]) * scale
    return values


def read_swap(root):
    """(total, free) bytes of swap from /proc/meminfo, or (None, None)."""
    values = _meminfo(root)
    if "SwapTotal" not in values:
        return None, None
    return values["SwapTotal"], values.get("SwapFree", 0)


def read_memory(root):
    """(total, available) bytes from /proc/meminfo, else from sysconf."""
    values = _meminfo(root)
    if "MemTotal" in values:
        return values["MemTotal"], values.get("MemAvailable",
                                              values.get("MemFree", 0))
    page = os.sysconf("SC_PAGE_SIZE")
    return (os.sysconf("SC_PHYS_PAGES") * page,
            os.sysconf("SC_AVPHYS_PAGES") * page)


def read_cpu_temperature(root):
    """Degrees Celsius from the first thermal zone, or None."""
    text = _read_text(root / "sys" / "class" / "thermal" / "thermal_zone0"
                      / "temp")
    try:
        return int(text.strip()) / 1000
    except (AttributeError, ValueError):
        return None


def _read_text(path):
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _device_tree_string(path):
    try:
        return path.read_bytes().rstrip(b"\0").decode(errors="replace")
    except OSError:
        return ""


def _device_tree_revision(path):
    """The board revision in the form /proc/cpuinfo prints (``a02082``)."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    if len(data) != 4:
        return ""
    return f"{struct.unpack('>I', data)[0]:x}"
