"""Reading PyPI's journal entries and putting them in a safe order: pure
logic, no reactor."""

import pytest

from piwtwist.pypi.journal import (
    Action, FileKind, JournalSequencer, MalformedEntry, classify_file,
    parse_entry,
)

T = 1_700_000_000


def entry(serial, name, version, action, timestamp=None):
    return [name, version, T + serial if timestamp is None else timestamp,
            action, serial]


def events(*entries):
    return [parse_entry(e) for e in entries]


@pytest.mark.parametrize("filename, python_version, kind", [
    ("foo-1.0.tar.gz", "source", FileKind.SOURCE),
    ("foo-1.0.zip", "source", FileKind.SOURCE),
    ("foo-1.0.zip", "any", FileKind.SOURCE),
    ("foo-1.0-py3-none-any.whl", "py3", FileKind.PURE_WHEEL),
    ("foo-1.0-py2.py3-none-any.whl", "py2.py3", FileKind.PURE_WHEEL),
    ("foo-1.0-py2-none-any.whl", "py2", FileKind.BINARY),
    ("foo-1.0-py310-none-any.whl", "py310", FileKind.BINARY),
    ("foo-1.0-cp311-abi3-manylinux_2_17_x86_64.whl", "cp311",
     FileKind.BINARY),
    ("foo-1.0-py3-none-win_amd64.whl", "py3", FileKind.BINARY),
    ("foo-1.0-py2.7.egg", "2.7", FileKind.BINARY),
    ("foo-1.0.win32.exe", "2.7", FileKind.BINARY),
    ("not-a-wheel.whl", "py3", FileKind.BINARY),
])
def test_files_are_classified(filename, python_version, kind):
    assert classify_file(filename, python_version) is kind


def test_every_action_is_understood():
    parsed = events(
        entry(1, "Foo_Bar", None, "create"),
        entry(2, "Foo_Bar", "1.0", "new release"),
        entry(3, "Foo_Bar", "1.0", "add source file foo_bar-1.0.tar.gz"),
        entry(4, "Foo_Bar", "1.0",
              "add py3 file foo_bar-1.0-py3-none-any.whl"),
        entry(5, "Foo_Bar", "1.0", "remove file foo_bar-1.0.tar.gz"),
        entry(6, "Foo_Bar", "1.0", "yank release"),
        entry(7, "Foo_Bar", "1.0", "unyank release"),
        entry(8, "Foo_Bar", "1.0", "remove release"),
        entry(9, "Foo_Bar", None, "remove project"),
        entry(10, "New.Name", None, "rename from Foo_Bar"),
        entry(11, "Old", None, "rename to Newer"),
    )
    assert [e.action for e in parsed] == [
        Action.CREATE, Action.NEW_RELEASE, Action.ADD_FILE, Action.ADD_FILE,
        Action.REMOVE_FILE, Action.YANK, Action.UNYANK,
        Action.REMOVE_RELEASE, Action.REMOVE_PROJECT, Action.RENAME,
        Action.RENAME]
    assert {e.package for e in parsed[:9]} == {"foo-bar"}
    assert parsed[0].name == "Foo_Bar"
    assert (parsed[2].filename, parsed[2].file_kind) == (
        "foo_bar-1.0.tar.gz", FileKind.SOURCE)
    assert parsed[3].file_kind is FileKind.PURE_WHEEL
    assert parsed[4].filename == "foo_bar-1.0.tar.gz"
    assert (parsed[9].package, parsed[9].old_package) == (
        "new-name", "foo-bar")
    assert (parsed[10].name, parsed[10].old_name) == ("Newer", "Old")


def test_legacy_spellings_of_removal():
    project, release = events(entry(1, "foo", None, "remove"),
                              entry(2, "foo", "1.0", "remove"))
    assert project.action is Action.REMOVE_PROJECT
    assert release.action is Action.REMOVE_RELEASE


@pytest.mark.parametrize("action", [
    "add Owner someone", "remove Maintainer someone", "docupdate",
    "update description", "change Owner x to Maintainer",
])
def test_other_actions_are_ignored(action):
    assert parse_entry(entry(1, "foo", None, action)) is None


@pytest.mark.parametrize("bad, message", [
    ("not a list", "is not"),
    (["foo", None, T, "create"], "is not"),
    (["foo", None, T, "create", "12"], "serial"),
    (["foo", None, "yesterday", "create", 1], "timestamp"),
    (["", None, T, "create", 1], "project name"),
    (["x" * 201, None, T, "create", 1], "longer than 200"),
    (["foo", None, T, "new release", 1], "without a version"),
    (["foo", "1.0", T, "add source file ../../etc/passwd", 1], "plain name"),
    (["foo", "1.0", T, 42, 1], "action"),
    (["foo\x00", None, T, "create", 1], "control characters"),
])
def test_malformed_entries_say_what_is_wrong(bad, message):
    with pytest.raises(MalformedEntry, match=message):
        parse_entry(bad)


def test_repeats_and_seen_serials_are_dropped():
    sequencer = JournalSequencer(epoch=0)
    batch = events(
        entry(1, "foo", None, "create"),
        entry(2, "foo", "1.0", "add source file foo-1.0.tar.gz"),
        entry(3, "foo", "1.0", "add source file foo-1.0.tar.gz"),
        entry(4, "foo", "1.0", "yank release"),
        entry(5, "foo", "1.0", "yank release"),
        entry(6, "foo", "1.0", "unyank release"),
        entry(7, "foo", "1.0", "yank release"),
    )
    ordered = sequencer.sequence(batch + batch[:3])
    assert [e.serial for e in ordered] == [1, 2, 4, 6, 7]
    assert sequencer.repeats_dropped == 2
    # an overlapping batch adds nothing
    assert sequencer.sequence(batch) == []
    assert sequencer.high_water == 7


def test_a_removal_forgets_what_it_removed():
    sequencer = JournalSequencer(epoch=0)
    ordered = sequencer.sequence(events(
        entry(1, "foo", "1.0", "add source file foo-1.0.tar.gz"),
        entry(2, "foo", None, "remove project"),
        entry(3, "foo", None, "create"),
        entry(4, "foo", "1.0", "add source file foo-1.0.tar.gz"),
    ))
    assert [e.serial for e in ordered] == [1, 2, 3, 4]


def test_deletion_before_its_creation_is_applied_again_after_it():
    sequencer = JournalSequencer(epoch=0, window=600)
    # the early journal: the release is removed (later in time) before it
    # is journalled as created
    ordered = sequencer.sequence(events(
        entry(1, "foo", "1.0", "remove release", timestamp=T + 50),
        entry(2, "foo", None, "create", timestamp=T + 10),
        entry(3, "foo", "1.0", "new release", timestamp=T + 10),
        entry(4, "foo", "1.0", "add source file foo-1.0.tar.gz",
              timestamp=T + 11),
        entry(5, "bar", None, "create", timestamp=T + 12),
    ))
    assert [(e.serial, e.action) for e in ordered] == [
        (1, Action.REMOVE_RELEASE), (2, Action.CREATE),
        (3, Action.NEW_RELEASE), (4, Action.ADD_FILE),
        (1, Action.REMOVE_RELEASE), (5, Action.CREATE)]
    assert sequencer.deletions_reapplied == 1


def test_late_creation_in_a_later_batch_still_meets_its_deletion():
    sequencer = JournalSequencer(epoch=0, window=600)
    first = sequencer.sequence(events(
        entry(1, "foo", None, "remove project", timestamp=T + 100)))
    sequencer.expire()
    assert [e.serial for e in first] == [1]
    # the deletion holds the serial to save back until it expires
    assert sequencer.safe_serial() == 0
    second = sequencer.sequence(events(
        entry(2, "foo", "2.0", "add source file foo-2.0.tar.gz",
              timestamp=T + 90),
        entry(3, "foo", "3.0", "add source file foo-3.0.tar.gz",
              timestamp=T + 200),
    ))
    assert [(e.serial, e.action) for e in second] == [
        (2, Action.ADD_FILE), (1, Action.REMOVE_PROJECT), (3, Action.ADD_FILE)]


def test_a_recreation_after_the_deletion_is_left_alone():
    sequencer = JournalSequencer(epoch=0)
    ordered = sequencer.sequence(events(
        entry(1, "foo", None, "remove project", timestamp=T),
        entry(2, "foo", None, "create", timestamp=T + 30),
    ))
    assert [e.serial for e in ordered] == [1, 2]


def test_deletions_expire_in_journal_time_and_wall_clock_time():
    sequencer = JournalSequencer(epoch=0, window=600)
    sequencer.sequence(events(
        entry(1, "foo", None, "remove project", timestamp=T),
        entry(2, "bar", None, "create", timestamp=T + 100),
    ))
    sequencer.expire()
    assert sequencer.safe_serial() == 0
    sequencer.sequence(events(entry(3, "baz", None, "create",
                                    timestamp=T + 700)))
    sequencer.expire()
    assert sequencer.safe_serial() == 3
    sequencer.sequence(events(entry(4, "foo", None, "remove project",
                                    timestamp=T + 710)))
    sequencer.expire(now=T + 2000)  # caught up: the wall clock decides
    assert sequencer.safe_serial() == 4
    assert sequencer.safe_serial(events(entry(9, "x", None, "create"))) == 8


def test_before_the_epoch_deletions_wait_for_it():
    sequencer = JournalSequencer(window=60, epoch=100)
    sequencer.sequence(events(
        entry(50, "foo", None, "remove project", timestamp=T + 1000),
        entry(60, "bar", None, "create", timestamp=T + 5000),
    ))
    sequencer.expire()
    assert [e.serial for e in sequencer.parked()] == [50]
    # a creation journalled much later, dated before the deletion
    ordered = sequencer.sequence(events(
        entry(90, "foo", None, "create", timestamp=T + 900)))
    assert [e.serial for e in ordered] == [90, 50]
    sequencer.sequence(events(entry(2200, "baz", None, "create",
                                    timestamp=T + 9000)))
    sequencer.expire()
    assert sequencer.parked() == []


def test_rename_deletes_the_old_name_and_creates_the_new():
    sequencer = JournalSequencer(epoch=0)
    ordered = sequencer.sequence(events(
        entry(1, "new", None, "rename from old", timestamp=T + 10),
        entry(2, "old", None, "create", timestamp=T + 5),
    ))
    assert [e.serial for e in ordered] == [1, 2, 1]


def test_start_at_forgets_everything():
    sequencer = JournalSequencer(epoch=0)
    sequencer.sequence(events(entry(5, "foo", None, "remove project")))
    sequencer.start_at(3)
    assert (sequencer.high_water, sequencer.parked()) == (3, [])
    assert [e.serial for e in sequencer.sequence(
        events(entry(5, "foo", None, "remove project")))] == [5]


def test_after_a_reapplied_deletion_a_recreation_is_no_repeat():
    sequencer = JournalSequencer(epoch=0)
    ordered = sequencer.sequence(events(
        entry(1, "foo", "1.0", "remove release", timestamp=T + 50),
        entry(2, "foo", "1.0", "new release", timestamp=T + 10),
        entry(3, "foo", "1.0", "add source file foo-1.0.tar.gz",
              timestamp=T + 11),
        # the release is made again, after its deletion
        entry(4, "foo", "1.0", "new release", timestamp=T + 60),
        entry(5, "foo", "1.0", "add source file foo-1.0.tar.gz",
              timestamp=T + 61),
    ))
    assert [e.serial for e in ordered] == [1, 2, 3, 1, 4, 5]
