"""PEP 658 core metadata: the ``METADATA`` file of a wheel, published beside
it as ``<wheel>.metadata`` so that installers can resolve dependencies
without downloading the wheel."""

import hashlib
import os
import zipfile
from pathlib import Path

from packaging.utils import (
    InvalidWheelFilename, canonicalize_name, parse_wheel_filename)

from .layout import write_atomically

METADATA_SUFFIX = ".metadata"
#: No METADATA is anywhere near this; a bigger one is a broken wheel.
MAX_METADATA_BYTES = 16 * 1024 * 1024


class BadWheel(Exception):
    """The wheel is unreadable or has no usable METADATA."""


def read_core_metadata(wheel_path):
    """The bytes of the wheel's ``<name>-<version>.dist-info/METADATA``."""
    wheel_path = Path(wheel_path)
    try:
        name, _, _, _ = parse_wheel_filename(wheel_path.name)
    except InvalidWheelFilename as e:
        raise BadWheel(str(e)) from None
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            candidates = [
                info for info in wheel.infolist()
                if info.filename.count("/") == 1
                and info.filename.endswith(".dist-info/METADATA")
            ]
            # a wheel may (wrongly) carry more than one .dist-info: the one
            # named after the project is the real one
            chosen = [
                info for info in candidates
                if canonicalize_name(info.filename.split("/")[0][
                    :-len(".dist-info")].rpartition("-")[0]) == name
            ] or candidates
            if not chosen:
                raise BadWheel(f"{wheel_path.name} has no .dist-info/METADATA")
            if chosen[0].file_size > MAX_METADATA_BYTES:
                raise BadWheel(f"{wheel_path.name}'s METADATA is too large")
            return wheel.read(chosen[0])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError,
            ValueError, NotImplementedError) as e:
        raise BadWheel(f"{wheel_path.name} is not a readable wheel: {e}") \
            from None


def publish_core_metadata(directory, filenames):
    """Make sure every wheel of *filenames* that is present in *directory*
    has an up-to-date ``.metadata`` file; return ``(hashes, problems)``:
    file name -> sha256 of its metadata, and messages about wheels whose
    metadata could not be had.

    A ``.metadata`` file newer than its wheel is trusted as it is, so a
    rewrite of a project only reads small files.
    """
    hashes, problems = {}, []
    for filename in filenames:
        wheel = Path(directory) / filename
        published = wheel.with_name(filename + METADATA_SUFFIX)
        try:
            wheel_stat = os.stat(wheel)
        except FileNotFoundError:
            wheel_stat = None
        try:
            metadata_stat = os.stat(published)
        except FileNotFoundError:
            metadata_stat = None
        try:
            if metadata_stat is not None and (
                    wheel_stat is None
                    or metadata_stat.st_mtime_ns >= wheel_stat.st_mtime_ns):
                data = published.read_bytes()
            elif wheel_stat is not None:
                data = read_core_metadata(wheel)
                write_atomically(published, data)
            else:
                continue
        except (BadWheel, OSError) as e:
            problems.append(str(e))
            continue
        hashes[filename] = hashlib.sha256(data).hexdigest()
    return hashes, problems
