"""Atomic writes of the output tree: modes whatever the umask, missing
directories made, the longest file names, nothing left behind."""

import os
import stat

import pytest

from piwtwist.web import layout


def entries(directory):
    return sorted(p.name for p in directory.iterdir())


def test_a_file_is_written_with_its_directories_and_mode(tmp_path):
    old = os.umask(0o077)
    try:
        target = tmp_path / "a" / "b" / "page.html"
        layout.write_atomically(target, b"one")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"one"
    assert stat.S_IMODE(target.stat().st_mode) == layout.FILE_MODE
    assert stat.S_IMODE(target.parent.stat().st_mode) == \
        layout.DIRECTORY_MODE
    assert entries(target.parent) == ["page.html"]


def test_a_rewrite_replaces_in_one_rename(tmp_path):
    target = tmp_path / "page.html"
    layout.write_atomically(target, b"old")
    before = os.stat(target).st_ino
    layout.write_atomically(target, b"new" * 100_000)
    assert target.read_bytes() == b"new" * 100_000
    assert os.stat(target).st_ino != before    # a new file, not rewritten
    assert entries(tmp_path) == ["page.html"]


def test_the_longest_file_name_has_a_temporary_name(tmp_path):
    name = "x" * 255
    layout.write_atomically(tmp_path / name, b"long")
    assert (tmp_path / name).read_bytes() == b"long"
    assert entries(tmp_path) == [name]


def test_a_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    with pytest.raises(TypeError):
        layout.write_atomically(tmp_path / "page.html", "not bytes")
    assert entries(tmp_path) == []


def test_a_failed_rename_leaves_the_old_file(tmp_path):
    target = tmp_path / "page.html"
    target.mkdir()                    # a directory where the file goes
    with pytest.raises(OSError):
        layout.write_atomically(target, b"page")
    assert target.is_dir()
    assert entries(tmp_path) == ["page.html"]


def test_write_if_changed_leaves_the_same_bytes_alone(tmp_path):
    target = tmp_path / "site.css"
    assert layout.write_if_changed(target, b"body {}")
    before = target.stat().st_mtime_ns, target.stat().st_ino
    assert not layout.write_if_changed(target, b"body {}")
    assert (target.stat().st_mtime_ns, target.stat().st_ino) == before
    # longer, shorter, other: written
    for data in (b"body {} p {}", b"body", b"h1 {}"):
        assert layout.write_if_changed(target, data)
        assert target.read_bytes() == data
