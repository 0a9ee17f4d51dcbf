"""Facts about a built wheel, for the master's database and index pages.

A wheel comes out of an untrusted build, so nothing in it is ever run: the
shared objects' ``DT_NEEDED`` entries are read by a small ELF parser here
(never ``ldd``, which may execute the binary), and only the sonames it
finds reach ``dpkg -S`` to name the Debian packages a user must install.

:func:`inspect_wheel` is synchronous and may take seconds on a large wheel;
the builder runs it in a thread.  It lives outside :mod:`piwtwist.builder`
because ``piw-import`` reads wheels built elsewhere the same way, and
outside :mod:`piwtwist.db` because builders never touch the database.
"""

import hashlib
import os
import re
import shutil
import struct
import subprocess
import sysconfig
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import attrs
from packaging.metadata import parse_email
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from . import names
from .records import BuildFile, Dependency

ELF_MAGIC = b"\x7fELF"
HASH_CHUNK = 1 << 20
# ELF members are copied out of the zip to be parsed; small ones stay in RAM
SPOOL_SIZE = 32 << 20

PT_LOAD, PT_DYNAMIC = 1, 2
SHT_DYNAMIC = 6
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME = 0, 1, 5, 10, 14
PN_XNUM = 0xFFFF

_LIBPYTHON = re.compile(r"libpython\d+(\.\d+)*[a-z]*\.so")


class WheelError(Exception):
    """The wheel is unreadable; the message names the file and the fault."""


class ElfError(ValueError):
    """The bytes are not a well-formed ELF object."""


@attrs.frozen
class ElfDynamic:
    """What the dynamic loader would read: the libraries an object needs
    (``DT_NEEDED``, in order) and its own name (``DT_SONAME``)."""

    needed: tuple = ()
    soname: str | None = None


@attrs.frozen
class _ElfLayout:
    """struct formats for one ELF class and byte order."""

    header: struct.Struct
    header_fields: tuple
    program: struct.Struct
    program_fields: tuple
    section: struct.Struct
    section_fields: tuple
    dynamic: struct.Struct


def _layout(elf_class, order):
    header_fields = ("e_type", "e_machine", "e_version", "e_entry", "e_phoff",
                     "e_shoff", "e_flags", "e_ehsize", "e_phentsize",
                     "e_phnum", "e_shentsize", "e_shnum", "e_shstrndx")
    section_fields = ("sh_name", "sh_type", "sh_flags", "sh_addr",
                      "sh_offset", "sh_size", "sh_link", "sh_info",
                      "sh_addralign", "sh_entsize")
    if elf_class == 1:
        return _ElfLayout(
            struct.Struct(order + "HHIIIIIHHHHHH"), header_fields,
            struct.Struct(order + "IIIIIIII"),
            ("p_type", "p_offset", "p_vaddr", "p_paddr", "p_filesz",
             "p_memsz", "p_flags", "p_align"),
            struct.Struct(order + "IIIIIIIIII"), section_fields,
            struct.Struct(order + "iI"))
    return _ElfLayout(
        struct.Struct(order + "HHIQQQIHHHHHH"), header_fields,
        struct.Struct(order + "IIQQQQQQ"),
        ("p_type", "p_flags", "p_offset", "p_vaddr", "p_paddr", "p_filesz",
         "p_memsz", "p_align"),
        struct.Struct(order + "IIQQQQIIQQ"), section_fields,
        struct.Struct(order + "qQ"))


class _ElfReader:
    def __init__(self, file):
        self.file = file
        file.seek(0, os.SEEK_END)
        self.size = file.tell()

    def read(self, offset, length, what):
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ElfError(f"truncated: {what} needs bytes {offset}.."
                           f"{offset + length} but the file has {self.size}")
        self.file.seek(offset)
        data = self.file.read(length)
        if len(data) != length:
            raise ElfError(f"short read of {what} at offset {offset}")
        return data

    def records(self, layout, fields, offset, count, entry_size, what):
        if count and entry_size < layout.size:
            raise ElfError(f"{what} entries of {entry_size} bytes are too "
                           f"small (need {layout.size})")
        data = self.read(offset, count * entry_size, what)
        return [dict(zip(fields, layout.unpack_from(data, i * entry_size)))
                for i in range(count)]

    def string(self, offset, limit, what):
        """The NUL-terminated string at *offset*, not reading past *limit*."""
        limit = min(limit, self.size)
        if not 0 <= offset < limit:
            raise ElfError(f"{what} at offset {offset} is outside its "
                           f"string table")
        chunks = []
        while offset < limit:
            chunk = self.read(offset, min(4096, limit - offset), what)
            end = chunk.find(b"\0")
            if end >= 0:
                chunks.append(chunk[:end])
                return b"".join(chunks).decode("utf-8", "replace")
            chunks.append(chunk)
            offset += len(chunk)
        raise ElfError(f"{what} is not NUL-terminated")


def read_elf_dynamic(file):
    """Parse the dynamic section of the ELF object in the seekable binary
    *file*: 32 or 64-bit, either byte order. An object without one (static,
    relocatable) needs nothing. Raises :class:`ElfError`."""
    reader = _ElfReader(file)
    ident = reader.read(0, 16, "ELF identification")
    if ident[:4] != ELF_MAGIC:
        raise ElfError("not an ELF file (bad magic)")
    if ident[4] not in (1, 2):
        raise ElfError(f"unknown ELF class {ident[4]}")
    if ident[5] not in (1, 2):
        raise ElfError(f"unknown ELF data encoding {ident[5]}")
    layout = _layout(ident[4], "<" if ident[5] == 1 else ">")
    header = dict(zip(layout.header_fields, layout.header.unpack(
        reader.read(16, layout.header.size, "ELF header"))))

    sections = None
    program_count = header["e_phnum"]
    if program_count == PN_XNUM:
        # too many to count in the header: the real number is in section 0
        sections = _sections(reader, layout, header)
        program_count = sections[0]["sh_info"] if sections else 0
    programs = []
    if header["e_phoff"] and program_count:
        programs = reader.records(
            layout.program, layout.program_fields, header["e_phoff"],
            program_count, header["e_phentsize"], "program header")

    if programs:
        dynamic = [p for p in programs if p["p_type"] == PT_DYNAMIC]
        if not dynamic:
            return ElfDynamic()
        entries = _dynamic_entries(reader, layout, dynamic[0]["p_offset"],
                                   dynamic[0]["p_filesz"])
        strtab = entries.get(DT_STRTAB)
        if strtab is None:
            raise ElfError("dynamic section without DT_STRTAB")
        loads = [p for p in programs if p["p_type"] == PT_LOAD]
        table_offset = _file_offset(loads, strtab[0])
        table_size = entries.get(DT_STRSZ, [reader.size])[0]
    else:
        # no program headers: fall back on the section headers
        if sections is None:
            sections = _sections(reader, layout, header)
        dynamic = [s for s in sections if s["sh_type"] == SHT_DYNAMIC]
        if not dynamic:
            return ElfDynamic()
        link = dynamic[0]["sh_link"]
        if not 0 < link < len(sections):
            raise ElfError(f"dynamic section links to section {link}, "
                           f"which does not exist")
        entries = _dynamic_entries(reader, layout, dynamic[0]["sh_offset"],
                                   dynamic[0]["sh_size"])
        table_offset = sections[link]["sh_offset"]
        table_size = sections[link]["sh_size"]

    limit = table_offset + table_size

    def name(offset, what):
        return reader.string(table_offset + offset, limit, what)

    needed = tuple(name(offset, "DT_NEEDED")
                   for offset in entries.get(DT_NEEDED, ()))
    soname = entries.get(DT_SONAME)
    return ElfDynamic(needed, name(soname[0], "DT_SONAME") if soname else None)


def _sections(reader, layout, header):
    count, offset = header["e_shnum"], header["e_shoff"]
    if not offset:
        return []
    if count == 0:
        # section 0's sh_size holds the count when there are very many
        first = reader.records(layout.section, layout.section_fields, offset,
                               1, header["e_shentsize"], "section header")
        count = first[0]["sh_size"]
    if count * layout.section.size > reader.size:
        raise ElfError(f"{count} section headers cannot fit in the file")
    return reader.records(layout.section, layout.section_fields, offset,
                          count, header["e_shentsize"], "section header")


def _dynamic_entries(reader, layout, offset, size):
    """Tag -> values of the dynamic entries up to DT_NULL."""
    data = reader.read(offset, size, "dynamic section")
    entries = {}
    for tag, value in layout.dynamic.iter_unpack(
            data[:len(data) - len(data) % layout.dynamic.size]):
        if tag == DT_NULL:
            break
        entries.setdefault(tag, []).append(value)
    return entries


def _file_offset(loads, address):
    """Where the virtual *address* lies in the file, per the PT_LOADs."""
    for load in loads:
        if load["p_vaddr"] <= address < load["p_vaddr"] + load["p_filesz"]:
            return address - load["p_vaddr"] + load["p_offset"]
    raise ElfError(f"address {address:#x} is in no loaded segment")


def glob_escape(text):
    """*text* as a literal in a dpkg pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def dpkg_packages(sonames):
    """Map the sonames found on this system to the Debian packages that own
    them (one ``dpkg -S`` for all); sonames it cannot place are left out."""
    sonames = sorted(set(sonames))
    if not sonames:
        return {}
    try:
        result = subprocess.run(
            ["dpkg", "-S", *("*/" + glob_escape(s) for s in sonames)],
            capture_output=True, text=True, errors="replace",
            stdin=subprocess.DEVNULL, env={
                "PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C"})
    except FileNotFoundError:
        return {}
    # 1 is "no path found" for some patterns; the others still print
    if result.returncode not in (0, 1):
        return {}
    return packages_from_dpkg_output(sonames, result.stdout)


def packages_from_dpkg_output(sonames, output, multiarch=None):
    """Parse ``dpkg -S`` lines (``pkg:arch, pkg2: /path``) into soname ->
    package, preferring this architecture's library directories."""
    if multiarch is None:
        multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    wanted = set(sonames)
    best = {}
    for line in output.splitlines():
        if line.startswith(("diversion by ", "local diversion ")):
            continue
        owners, separator, path = line.partition(": ")
        path = path.strip()
        if not separator or not path.startswith("/"):
            continue
        soname = PurePosixPath(path).name
        if soname not in wanted:
            continue
        package = owners.split(", ")[0].split(":")[0].strip()
        rank = _library_rank(path, multiarch)
        if package and (soname not in best or rank < best[soname][0]):
            best[soname] = (rank, package)
    return {soname: package for soname, (rank, package) in best.items()}


def _library_rank(path, multiarch):
    directory = str(PurePosixPath(path).parent)
    if multiarch and directory in (f"/lib/{multiarch}",
                                   f"/usr/lib/{multiarch}"):
        return 0
    if directory in ("/lib", "/usr/lib", "/lib64", "/usr/lib64"):
        return 1
    return 2


def file_sha256(path):
    """(size, sha256 hex digest) of *path*, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as file:
        while chunk := file.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def inspect_wheel(path, find_packages=dpkg_packages):
    """Return the :class:`BuildFile` and the dependencies of the wheel at
    *path*: ``pip`` for its Requires-Dist names (markers not evaluated),
    ``apt`` for the Debian packages its shared objects need, and
    ``unresolved`` for sonames that neither the wheel nor a package
    provides. *find_packages* maps sonames to packages (:func:`dpkg_packages`).
    Raises :class:`WheelError`.
    """
    path = Path(path)
    try:
        name = names.check_wheel_filename(path.name)[0]
    except names.InvalidName as error:
        raise WheelError(f"{path.name}: {error}") from None
    parts = path.name[:-len(".whl")].split("-")
    try:
        size, digest = file_sha256(path)
        with zipfile.ZipFile(path) as archive:
            metadata = _read_metadata(archive, name)
            sonames = _needed_sonames(archive)
    except WheelError as error:
        raise WheelError(f"{path.name}: {error}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError,
            NotImplementedError) as error:
        raise WheelError(f"{path.name}: not a readable zip file "
                         f"({error})") from None
    except OSError as error:
        raise WheelError(f"{path.name}: {error}") from None

    build_file = BuildFile(
        filename=path.name, filesize=size, filehash=digest,
        package_tag=parts[0], package_version_tag=parts[1],
        py_version_tag=parts[-3], abi_tag=parts[-2], platform_tag=parts[-1],
        requires_python=metadata.get("requires_python", "") or "")
    dependencies = [Dependency("pip", requirement) for requirement in sorted(
        {_requirement_name(r) for r in metadata.get("requires_dist", [])}
        - {None})]
    found = find_packages(sonames) if sonames else {}
    dependencies += [Dependency("apt", package)
                     for package in sorted(set(found.values()))]
    dependencies += [Dependency("unresolved", soname)
                     for soname in sonames if soname not in found]
    return build_file, dependencies


def _read_metadata(archive, name):
    candidates = [member for member in archive.namelist()
                  if re.fullmatch(r"[^/]+\.dist-info/METADATA", member)]
    if len(candidates) > 1:
        canonical = canonicalize_name(name)
        candidates = [c for c in candidates if canonicalize_name(
            c.split("/")[0][:-len(".dist-info")].rsplit("-", 1)[0])
            == canonical] or candidates
    if not candidates:
        raise WheelError("no .dist-info/METADATA in the wheel")
    try:
        raw, _ = parse_email(archive.read(candidates[0]))
    except ValueError as error:
        raise WheelError(f"{candidates[0]} is unreadable: {error}") from None
    return raw


def _requirement_name(text):
    try:
        return canonicalize_name(Requirement(text).name)
    except InvalidRequirement:
        # keep what a person would: the leading name of an odd line
        name = names.project_name_prefix(text)
        return canonicalize_name(name) if name else None


def _needed_sonames(archive):
    """Sorted sonames the wheel's ELF members need, less the libraries the
    wheel ships itself and libpython."""
    shipped = set()
    needed = set()
    for info in archive.infolist():
        if info.is_dir():
            continue
        shipped.add(PurePosixPath(info.filename).name)
        with archive.open(info) as member:
            magic = member.read(len(ELF_MAGIC))
            if magic != ELF_MAGIC:
                continue
            with tempfile.SpooledTemporaryFile(SPOOL_SIZE) as copy:
                copy.write(magic)
                shutil.copyfileobj(member, copy, HASH_CHUNK)
                try:
                    dynamic = read_elf_dynamic(copy)
                except ElfError as error:
                    raise WheelError(f"{info.filename}: {error}") from None
        needed.update(dynamic.needed)
        if dynamic.soname:
            shipped.add(dynamic.soname)
    return sorted(soname for soname in needed - shipped
                  if not _LIBPYTHON.match(soname))
