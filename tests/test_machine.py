"""Machine facts and statistics, on this machine and on a fake Raspberry Pi
root."""

import os
import re
import struct
import sys
from datetime import datetime, timezone
from pathlib import Path

from packaging import tags

import piwtwist
from piwtwist.builder.machine import (
    MachineFacts, MachineStats, machine_facts, machine_stats, platform_tag,
    read_os_release)

PI_CPUINFO = """\
processor\t: 0
model name\t: ARMv7 Processor rev 3 (v7l)
BogoMIPS\t: 108.00
Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt
CPU implementer\t: 0x41

Hardware\t: BCM2711
Revision\t: c03114
Serial\t\t: 10000000abcdef01
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""

PI_OS_RELEASE = """\
PRETTY_NAME="Raspbian GNU/Linux 11 (bullseye)"
NAME="Raspbian GNU/Linux"
VERSION_ID="11"
VERSION="11 (bullseye)"
# a comment
ID=raspbian
"""

MEMINFO = """\
MemTotal:        3884096 kB
MemFree:          123456 kB
MemAvailable:    2000000 kB
Buffers:           10000 kB
"""


def write(root, relative, content):
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def test_facts_of_this_machine():
    facts = machine_facts()
    assert isinstance(facts, MachineFacts)
    expected_python = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert facts.py_version_tag == expected_python
    assert facts.abi_tag == next(iter(tags.sys_tags())).abi
    assert facts.abi_tag.startswith(expected_python)
    assert re.fullmatch(r"linux_[a-z0-9_]+", facts.platform_tag)
    assert facts.platform_tag == platform_tag()
    assert facts.piwtwist_version == piwtwist.__version__
    assert facts.python_version == "%d.%d.%d" % sys.version_info[:3]
    if os.path.exists("/etc/os-release"):
        release = read_os_release(Path("/"))
        assert facts.os_name == release["NAME"]
        assert facts.os_name
    for value in (facts.board_revision, facts.board_serial,
                  facts.board_model):
        assert isinstance(value, str)


def test_platform_tag_matches_the_wheels_this_python_builds():
    # the plain linux_* tag among the ones pip accepts here
    assert platform_tag() in set(tags.platform_tags())


def test_facts_of_a_raspberry_pi_from_cpuinfo(tmp_path):
    write(tmp_path, "etc/os-release", PI_OS_RELEASE)
    write(tmp_path, "proc/cpuinfo", PI_CPUINFO)
    facts = machine_facts(tmp_path)
    assert facts.os_name == "Raspbian GNU/Linux"
    assert facts.os_version == "11"
    assert facts.board_revision == "c03114"
    assert facts.board_serial == "10000000abcdef01"
    assert facts.board_model == "Raspberry Pi 4 Model B Rev 1.4"


def test_facts_of_a_raspberry_pi_from_the_device_tree(tmp_path):
    # 64-bit kernels without the board lines in /proc/cpuinfo
    write(tmp_path, "usr/lib/os-release",
          'NAME=Debian\nVERSION="12 (bookworm)"\n')
    write(tmp_path, "proc/cpuinfo", "processor\t: 0\nBogoMIPS\t: 108.00\n")
    write(tmp_path, "proc/device-tree/system/linux,revision",
          struct.pack(">I", 0xa02082))
    write(tmp_path, "proc/device-tree/serial-number", b"00000000deadbeef\0")
    write(tmp_path, "proc/device-tree/model", b"Raspberry Pi 3 Model B\0")
    facts = machine_facts(tmp_path)
    assert facts.os_name == "Debian"
    assert facts.os_version == "12 (bookworm)"
    assert facts.board_revision == "a02082"
    assert facts.board_serial == "00000000deadbeef"
    assert facts.board_model == "Raspberry Pi 3 Model B"


def test_facts_of_an_empty_machine_are_empty_strings(tmp_path):
    facts = machine_facts(tmp_path)
    assert (facts.os_name, facts.os_version, facts.board_revision,
            facts.board_serial, facts.board_model) == ("", "", "", "", "")


def test_os_release_quoting(tmp_path):
    write(tmp_path, "etc/os-release",
          'NAME="Quoted \\"OS\\""\nVERSION_ID=\'7\'\nBROKEN\n')
    assert read_os_release(tmp_path) == {"NAME": 'Quoted "OS"',
                                         "VERSION_ID": "7"}


def test_stats_of_this_machine(tmp_path):
    before = datetime.now(timezone.utc)
    stats = machine_stats(tmp_path)
    assert isinstance(stats, MachineStats)
    assert before <= stats.timestamp <= datetime.now(timezone.utc)
    assert stats.timestamp.tzinfo is not None
    disk = os.statvfs(tmp_path)
    assert stats.disk_total == disk.f_blocks * disk.f_frsize
    assert 0 < stats.disk_free <= stats.disk_total
    assert 0 < stats.mem_free <= stats.mem_total
    assert stats.load_average >= 0
    if os.path.exists("/sys/class/thermal/thermal_zone0/temp"):
        assert isinstance(stats.cpu_temperature, float)
    else:
        assert stats.cpu_temperature is None


def test_stats_from_a_fake_root(tmp_path):
    root = tmp_path / "root"
    write(root, "proc/meminfo", MEMINFO)
    write(root, "sys/class/thermal/thermal_zone0/temp", "48312\n")
    now = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    stats = machine_stats(tmp_path, root=root, now=now)
    assert stats.timestamp == now
    assert stats.mem_total == 3884096 * 1024
    assert stats.mem_free == 2000000 * 1024
    assert stats.cpu_temperature == 48.312


def test_stats_without_memavailable_use_memfree(tmp_path):
    write(tmp_path, "proc/meminfo",
          "MemTotal: 1000 kB\nMemFree: 600 kB\n")
    stats = machine_stats(tmp_path, root=tmp_path)
    assert (stats.mem_total, stats.mem_free) == (1024000, 614400)


def test_stats_without_proc_fall_back_on_sysconf(tmp_path):
    stats = machine_stats(tmp_path, root=tmp_path)
    page = os.sysconf("SC_PAGE_SIZE")
    assert stats.mem_total == os.sysconf("SC_PHYS_PAGES") * page
    assert stats.cpu_temperature is None


def test_a_garbled_temperature_is_none(tmp_path):
    write(tmp_path, "sys/class/thermal/thermal_zone0/temp", "hot\n")
    assert machine_stats(tmp_path, root=tmp_path).cpu_temperature is None
