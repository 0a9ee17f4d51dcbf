"""Wheel facts: tags, hash, metadata, and the ELF parser behind the system
dependencies (checked against readelf on real libraries, and on synthetic
objects of every class and byte order)."""

import glob
import hashlib
import io
import os
import re
import shutil
import struct
import subprocess
import zipfile

import pytest

from piwtwist.records import BuildFile, Dependency
from piwtwist.wheels import (
    ElfDynamic, ElfError, WheelError, dpkg_packages, glob_escape,
    inspect_wheel, packages_from_dpkg_output, read_elf_dynamic)

READELF = shutil.which("readelf")
DPKG = shutil.which("dpkg")


# -- synthetic ELF objects --------------------------------------------------

def make_elf(elf_class=2, order="<", needed=(), soname=None,
             program_headers=True, section_headers=True, strtab_address=None):
    """A minimal shared object: a PT_LOAD over the whole file, a PT_DYNAMIC,
    and (optionally) section headers for .dynstr and .dynamic."""
    wide = elf_class == 2
    header = struct.Struct(order + ("HHIQQQIHHHHHH" if wide
                                    else "HHIIIIIHHHHHH"))
    program = struct.Struct(order + ("IIQQQQQQ" if wide else "IIIIIIII"))
    section = struct.Struct(order + ("IIQQQQIIQQ" if wide else "IIIIIIIIII"))
    dynamic = struct.Struct(order + ("qQ" if wide else "iI"))
    base = 0x400000

    strings = bytearray(b"\0")
    offsets = {}
    for name in (*needed, *([soname] if soname else [])):
        offsets[name] = len(strings)
        strings += name.encode() + b"\0"

    phoff = 16 + header.size if program_headers else 0
    strtab_offset = (phoff or 16 + header.size) + (
        2 * program.size if program_headers else 0)
    dynamic_offset = -(-(strtab_offset + len(strings)) // 8) * 8
    entries = [(1, offsets[name]) for name in needed]
    if soname:
        entries.append((14, offsets[soname]))
    entries += [(5, strtab_address if strtab_address is not None
                 else base + strtab_offset), (10, len(strings)), (0, 0)]
    dynamic_size = len(entries) * dynamic.size
    shoff = dynamic_offset + dynamic_size if section_headers else 0
    total = shoff + 3 * section.size if section_headers else \
        dynamic_offset + dynamic_size

    data = bytearray(total)
    ident = b"\x7fELF" + bytes([elf_class, 1 if order == "<" else 2, 1])
    data[:len(ident)] = ident
    machine = {(2, "<"): 183, (1, "<"): 40, (2, ">"): 21, (1, ">"): 20}
    header.pack_into(
        data, 16, 3, machine[elf_class, order], 1, 0, phoff, shoff, 0,
        16 + header.size, program.size, 2 if program_headers else 0,
        section.size, 3 if section_headers else 0, 0)
    if program_headers:
        if wide:
            load = (1, 5, 0, base, base, total, total, 0x1000)
            dyn = (2, 6, dynamic_offset, base + dynamic_offset,
                   base + dynamic_offset, dynamic_size, dynamic_size, 8)
        else:
            load = (1, 0, base, base, total, total, 5, 0x1000)
            dyn = (2, dynamic_offset, base + dynamic_offset,
                   base + dynamic_offset, dynamic_size, dynamic_size, 6, 4)
        program.pack_into(data, phoff, *load)
        program.pack_into(data, phoff + program.size, *dyn)
    data[strtab_offset:strtab_offset + len(strings)] = strings
    for index, entry in enumerate(entries):
        dynamic.pack_into(data, dynamic_offset + index * dynamic.size, *entry)
    if section_headers:
        # null, .dynstr (SHT_STRTAB), .dynamic (SHT_DYNAMIC, linked to 1)
        section.pack_into(data, shoff + section.size, 0, 3, 2,
                          base + strtab_offset, strtab_offset, len(strings),
                          0, 0, 1, 0)
        section.pack_into(data, shoff + 2 * section.size, 0, 6, 3,
                          base + dynamic_offset, dynamic_offset, dynamic_size,
                          1, 0, 8, dynamic.size)
    return bytes(data)


def parse(data):
    return read_elf_dynamic(io.BytesIO(data))


def readelf_dynamic(path):
    """DT_NEEDED and DT_SONAME as readelf sees them (trusted files only)."""
    output = subprocess.run([READELF, "-dW", str(path)], capture_output=True,
                            text=True, check=True).stdout
    needed = tuple(re.findall(r"\(NEEDED\)\s+Shared library: \[(.*)\]",
                              output))
    soname = re.findall(r"\(SONAME\)\s+Library soname: \[(.*)\]", output)
    return ElfDynamic(needed, soname[0] if soname else None)


LAYOUTS = [(2, "<"), (1, "<"), (2, ">"), (1, ">")]
LAYOUT_IDS = ["64-bit-little", "32-bit-little", "64-bit-big", "32-bit-big"]


@pytest.mark.parametrize("elf_class,order", LAYOUTS, ids=LAYOUT_IDS)
def test_synthetic_objects_through_program_headers(elf_class, order,
                                                   tmp_path):
    data = make_elf(elf_class, order, ["libfoo.so.1", "libbar.so.2"],
                    "libself.so.0", section_headers=False)
    expected = ElfDynamic(("libfoo.so.1", "libbar.so.2"), "libself.so.0")
    assert parse(data) == expected
    if READELF:
        (tmp_path / "lib.so").write_bytes(data)
        assert readelf_dynamic(tmp_path / "lib.so") == expected


@pytest.mark.parametrize("elf_class,order", LAYOUTS, ids=LAYOUT_IDS)
def test_synthetic_objects_through_section_headers(elf_class, order,
                                                   tmp_path):
    # no program headers, and a DT_STRTAB that points nowhere: only the
    # section headers' link to .dynstr finds the names
    data = make_elf(elf_class, order, ["libz.so.1"], None,
                    program_headers=False, strtab_address=0xdead0000)
    assert parse(data) == ElfDynamic(("libz.so.1",), None)


def test_program_headers_win_over_section_headers():
    data = make_elf(2, "<", ["libm.so.6", "libc.so.6"], "libx.so.3")
    assert parse(data) == ElfDynamic(("libm.so.6", "libc.so.6"), "libx.so.3")


def test_an_object_without_a_dynamic_section_needs_nothing():
    data = bytearray(make_elf(2, "<", ["libc.so.6"], section_headers=False))
    # turn PT_DYNAMIC into PT_NOTE: a static object
    phoff = struct.unpack_from("<Q", data, 32)[0]
    struct.pack_into("<I", data, phoff + 56, 4)
    assert parse(bytes(data)) == ElfDynamic()


def system_objects():
    """Real ELF files of this machine: libraries, an extension module, an
    executable."""
    import _ssl
    patterns = ["/lib/*/libc.so.6", "/usr/lib/*/libc.so.6", "/lib64/libc.so.6",
                "/usr/lib/*/libssl.so.3", "/usr/lib/*/libz.so.1",
                "/usr/lib/*/libstdc++.so.6", "/usr/lib/*/libcrypto.so.3"]
    found = {os.path.realpath(path) for pattern in patterns
             for path in glob.glob(pattern)}
    found.add(os.path.realpath(_ssl.__file__))
    found.add(os.path.realpath(shutil.which("ls")))
    return sorted(found)


@pytest.mark.skipif(READELF is None, reason="readelf (binutils) is not "
                    "installed to compare with")
@pytest.mark.parametrize("path", system_objects())
def test_real_objects_agree_with_readelf(path):
    with open(path, "rb") as file:
        ours = read_elf_dynamic(file)
    assert ours == readelf_dynamic(path)


def test_real_libc_names_itself():
    libcs = [p for p in system_objects() if os.path.basename(p).startswith(
        "libc.so") or os.path.basename(p).startswith("libc-")]
    assert libcs, "no libc found on this machine"
    with open(libcs[0], "rb") as file:
        assert read_elf_dynamic(file).soname == "libc.so.6"


@pytest.mark.parametrize("data,problem", [
    (b"", "truncated"),
    (b"\x7fEL", "truncated"),
    (b"MZ\x90\x00" + bytes(60), "not an ELF file"),
    (b"\x7fELF\x03\x01\x01" + bytes(57), "unknown ELF class"),
    (b"\x7fELF\x02\x07\x01" + bytes(57), "unknown ELF data encoding"),
    (b"\x7fELF\x02\x01\x01" + bytes(9), "truncated"),
], ids=["empty", "short-magic", "not-elf", "bad-class", "bad-order",
        "header-cut"])
def test_garbage_is_an_elf_error(data, problem):
    with pytest.raises(ElfError, match=problem):
        parse(data)


def test_random_bytes_after_the_magic_are_an_elf_error():
    data = b"\x7fELF\x02\x01\x01" + hashlib.sha512(b"x").digest() * 4
    with pytest.raises(ElfError):
        parse(data)


def test_a_truncated_real_library_is_an_elf_error():
    path = system_objects()[0]
    with open(path, "rb") as file:
        head = file.read(4096)
    with pytest.raises(ElfError, match="truncated"):
        parse(head)


def test_a_cut_string_table_is_an_elf_error():
    data = make_elf(2, "<", ["libfoo.so.1"], section_headers=False)
    strtab = data.index(b"libfoo")
    with pytest.raises(ElfError):
        parse(data[:strtab + 3])


def test_a_string_table_outside_the_segments_is_an_elf_error():
    data = make_elf(2, "<", ["libfoo.so.1"], section_headers=False,
                    strtab_address=0x10)
    with pytest.raises(ElfError, match="no loaded segment"):
        parse(data)


def test_absurd_program_header_sizes_are_an_elf_error():
    data = bytearray(make_elf(2, "<", ["libfoo.so.1"]))
    struct.pack_into("<H", data, 54, 4)  # e_phentsize
    with pytest.raises(ElfError, match="too small"):
        parse(bytes(data))
    struct.pack_into("<HH", data, 54, 56, 0xfffe)  # e_phnum far too large
    with pytest.raises(ElfError, match="truncated"):
        parse(bytes(data))


# -- wheels -----------------------------------------------------------------

METADATA = """\
Metadata-Version: 2.1
Name: Foo.Bar
Version: 1.0
Requires-Python: >=3.9
Requires-Dist: Requests[socks] (>=2.0)
Requires-Dist: typing_extensions; python_version < "3.10"
Requires-Dist: PyTest>=7; extra == "test"
Requires-Dist: requests>=2.1
"""


def make_wheel(directory, filename, members, metadata=METADATA):
    """A wheel-shaped zip; *members* maps names to bytes."""
    path = directory / filename
    dist_info = "-".join(filename.split("-")[:2]) + ".dist-info"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if metadata is not None:
            archive.writestr(f"{dist_info}/METADATA", metadata)
        archive.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\n")
    return path


class FakeDpkg:
    """Knows libc and libm; records how often it is asked."""

    def __init__(self, known=None):
        self.known = known if known is not None else {
            "libc.so.6": "libc6", "libm.so.6": "libc6",
            "libssl.so.3": "libssl3"}
        self.calls = []

    def __call__(self, sonames):
        self.calls.append(list(sonames))
        return {s: self.known[s] for s in sonames if s in self.known}


def test_a_pure_wheel(tmp_path):
    path = make_wheel(tmp_path, "Foo.Bar-1.0-py2.py3-none-any.whl",
                      {"foo_bar/__init__.py": b"VERSION = 1\n"})
    dpkg = FakeDpkg()
    build_file, dependencies = inspect_wheel(path, find_packages=dpkg)
    data = path.read_bytes()
    assert build_file == BuildFile(
        filename="Foo.Bar-1.0-py2.py3-none-any.whl", filesize=len(data),
        filehash=hashlib.sha256(data).hexdigest(), package_tag="Foo.Bar",
        package_version_tag="1.0", py_version_tag="py2.py3", abi_tag="none",
        platform_tag="any", requires_python=">=3.9")
    assert dependencies == [Dependency("pip", "pytest"),
                            Dependency("pip", "requests"),
                            Dependency("pip", "typing-extensions")]
    assert dpkg.calls == []  # nothing to look up


def test_a_build_tag_is_not_a_version(tmp_path):
    path = make_wheel(tmp_path, "foo-2.0-1b-cp311-cp311-linux_armv7l.whl",
                      {}, metadata="Name: foo\nVersion: 2.0\n")
    build_file, dependencies = inspect_wheel(path, FakeDpkg())
    assert (build_file.package_tag, build_file.package_version_tag,
            build_file.py_version_tag, build_file.abi_tag,
            build_file.platform_tag) == ("foo", "2.0", "cp311", "cp311",
                                         "linux_armv7l")
    assert build_file.requires_python == ""
    assert dependencies == []


def test_shared_objects_become_apt_and_unresolved_dependencies(tmp_path):
    extension = make_elf(2, "<", [
        "libc.so.6", "libpython3.11.so.1.0", "libvendored-1a2b3c4d.so.1.2",
        "libnowhere.so.7", "libm.so.6"], None)
    vendored = make_elf(2, "<", ["libc.so.6", "libssl.so.3"],
                        "libvendored-1a2b3c4d.so.1.2")
    # not named .so: found by its magic
    helper = make_elf(1, ">", ["libhelper-only.so.1"], None)
    path = make_wheel(tmp_path, "foo-1.0-cp311-cp311-linux_x86_64.whl", {
        "foo/_speedups.cpython-311-x86_64-linux-gnu.so": extension,
        "foo.libs/libvendored-1a2b3c4d.so.1.2": vendored,
        "foo.data/scripts/foo-helper": helper,
        "foo/__init__.py": b"",
        "foo/data.bin": b"\x7fEL",  # too short to be ELF: not looked at
    }, metadata="Name: foo\nVersion: 1.0\nRequires-Dist: numpy\n")
    dpkg = FakeDpkg()
    _, dependencies = inspect_wheel(path, find_packages=dpkg)
    assert dpkg.calls == [["libc.so.6", "libhelper-only.so.1",
                           "libm.so.6", "libnowhere.so.7", "libssl.so.3"]]
    assert dependencies == [
        Dependency("pip", "numpy"),
        Dependency("apt", "libc6"),
        Dependency("apt", "libssl3"),
        Dependency("unresolved", "libhelper-only.so.1"),
        Dependency("unresolved", "libnowhere.so.7"),
    ]


def test_a_real_extension_module_in_a_wheel(tmp_path):
    import _ssl
    with open(_ssl.__file__, "rb") as file:
        data = file.read()
    path = make_wheel(tmp_path, "foo-1.0-cp311-cp311-linux_x86_64.whl",
                      {"foo/_ssl.so": data})
    expected = [n for n in read_elf_dynamic(io.BytesIO(data)).needed
                if not n.startswith("libpython")]
    dpkg = FakeDpkg(known={})
    _, dependencies = inspect_wheel(path, find_packages=dpkg)
    assert dpkg.calls == [sorted(expected)]
    assert [d for d in dependencies if d.tool == "unresolved"] == [
        Dependency("unresolved", n) for n in sorted(expected)]


@pytest.mark.parametrize("name", ["foo.whl", "foo-1.0.whl",
                                  "foo-1.0-py3-none-any.zip"])
def test_a_bad_filename_is_a_wheel_error(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(WheelError, match=re.escape(name)):
        inspect_wheel(tmp_path / name, FakeDpkg())


def test_not_a_zip_is_a_wheel_error(tmp_path):
    path = tmp_path / "foo-1.0-py3-none-any.whl"
    path.write_bytes(b"this is not a zip file")
    with pytest.raises(WheelError,
                       match=r"foo-1.0-py3-none-any.whl: not a readable zip"):
        inspect_wheel(path, FakeDpkg())


def test_a_missing_wheel_is_a_wheel_error(tmp_path):
    with pytest.raises(WheelError, match="foo-1.0-py3-none-any.whl"):
        inspect_wheel(tmp_path / "foo-1.0-py3-none-any.whl", FakeDpkg())


def test_no_metadata_is_a_wheel_error(tmp_path):
    path = make_wheel(tmp_path, "foo-1.0-py3-none-any.whl",
                      {"foo/__init__.py": b""}, metadata=None)
    with pytest.raises(WheelError, match=r"foo-1.0-py3-none-any.whl: no "
                       r"\.dist-info/METADATA"):
        inspect_wheel(path, FakeDpkg())


def test_a_bad_shared_object_is_a_wheel_error(tmp_path):
    path = make_wheel(tmp_path, "foo-1.0-cp311-cp311-linux_x86_64.whl",
                      {"foo/_bad.so": b"\x7fELF\x02\x01\x01" + bytes(20)})
    with pytest.raises(WheelError, match=r"foo-1.0-cp311-cp311-linux_x86_64"
                       r"\.whl: foo/_bad\.so: truncated"):
        inspect_wheel(path, FakeDpkg())


def test_a_corrupt_member_is_a_wheel_error(tmp_path):
    path = make_wheel(tmp_path, "foo-1.0-py3-none-any.whl",
                      {"foo/__init__.py": b"x = 1\n" * 1000})
    data = bytearray(path.read_bytes())
    start = data.index(b"foo/__init__.py") + len("foo/__init__.py")
    data[start + 10:start + 30] = bytes(20)  # inside the deflated data
    path.write_bytes(bytes(data))
    with pytest.raises(WheelError, match="foo-1.0-py3-none-any.whl"):
        inspect_wheel(path, FakeDpkg())


def test_odd_requirement_lines_keep_their_name(tmp_path):
    path = make_wheel(tmp_path, "foo-1.0-py3-none-any.whl", {}, metadata=(
        "Name: foo\nVersion: 1.0\nRequires-Dist: Weird_Name (>=1.0; bad\n"
        "Requires-Dist: !!!\n"))
    _, dependencies = inspect_wheel(path, FakeDpkg())
    assert dependencies == [Dependency("pip", "weird-name")]


# -- dpkg -------------------------------------------------------------------

DPKG_OUTPUT = """\
libc6:amd64: /lib/x86_64-linux-gnu/libc.so.6
libc6-i386: /lib32/libc.so.6
diversion by libfoo from: /usr/lib/x86_64-linux-gnu/libfoo.so.1
diversion by libfoo to: /usr/lib/x86_64-linux-gnu/libfoo.so.1.real
libfoo1:amd64, libfoo-compat:amd64: /usr/lib/x86_64-linux-gnu/libfoo.so.1
libweird: /opt/weird/libweird.so.2
libother: /usr/lib/x86_64-linux-gnu/libweird.so.2.debug
garbage line
"""


def test_dpkg_output_is_parsed_preferring_this_architecture():
    assert packages_from_dpkg_output(
        ["libc.so.6", "libfoo.so.1", "libweird.so.2", "libnone.so.1"],
        DPKG_OUTPUT, multiarch="x86_64-linux-gnu") == {
        "libc.so.6": "libc6", "libfoo.so.1": "libfoo1",
        "libweird.so.2": "libweird"}


def test_dpkg_patterns_are_escaped():
    assert glob_escape("lib[x]*?.so\\1") == "lib\\[x\\]\\*\\?.so\\\\1"


@pytest.mark.skipif(DPKG is None, reason="dpkg is not installed: not a "
                    "Debian system")
def test_real_dpkg_finds_libc_and_not_nonsense():
    found = dpkg_packages(["libc.so.6", "libpiwtwist-nonsense.so.42"])
    assert found == {"libc.so.6": "libc6"}
    assert dpkg_packages([]) == {}


def test_without_dpkg_everything_is_unresolved(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert dpkg_packages(["libc.so.6"]) == {}
