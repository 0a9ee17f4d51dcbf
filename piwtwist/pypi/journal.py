"""PyPI's event journal: raw ``changelog_since_serial`` entries become
:class:`JournalEvent` values, and :class:`JournalSequencer` decides the order
in which they are applied.

The journal is applied in serial order, with two corrections:

* **Repeats are dropped.**  An entry whose serial was already seen (batches
  can overlap), and an event that merely repeats the previous event on the
  same target (the same file added twice, a release yanked twice), change
  nothing and would only make the pages be written again.

* **A deletion is never left before the creation it follows.**  PyPI's early
  journal (before serial ~628,000) jumps back and forth in time, so a
  "remove" can come before the "create" or "add file" it undoes.  Every
  deletion is therefore remembered ("parked") for a while; when an event
  that creates the same project, release or file arrives later in serial
  order but earlier (or at the same second) in time, the deletion is applied
  again right after the last such event.  Serial order is otherwise kept:
  since about 2013 it is the order things happened in, while the timestamps
  can jitter by minutes.

While a deletion is parked, the serial the follower saves stays before it
(:meth:`JournalSequencer.safe_serial`), so that after a crash the journal is
read again from there and nothing the parking depended on is lost; every
action is idempotent, so reading a stretch twice changes nothing.
"""

import enum
from collections import OrderedDict
from datetime import datetime, timezone

import attrs
from packaging.tags import Tag
from packaging.utils import (
    InvalidWheelFilename,
    canonicalize_name,
    parse_wheel_filename,
)

from .. import names

#: Roughly where PyPI's journal becomes trustworthy; parked deletions from
#: before it are kept until the journal is well past it.
PYPI_EPOCH = 628_000
PYPI_EPOCH_MARGIN = 2_000

# The database's column sizes.
MAX_NAME = names.MAX_NAME_LENGTH
MAX_VERSION = names.MAX_VERSION_LENGTH

_SDIST_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz",
                   ".txz", ".tar", ".zip", ".tar.z", ".tar.lz")
_PURE_TAGS = frozenset({Tag("py3", "none", "any")})


class Action(enum.Enum):
    CREATE = "create"
    NEW_RELEASE = "new release"
    ADD_FILE = "add file"
    REMOVE_PROJECT = "remove project"
    REMOVE_RELEASE = "remove release"
    REMOVE_FILE = "remove file"
    YANK = "yank release"
    UNYANK = "unyank release"
    RENAME = "rename"


DELETIONS = frozenset({Action.REMOVE_PROJECT, Action.REMOVE_RELEASE,
                       Action.REMOVE_FILE})


class FileKind(enum.Enum):
    SOURCE = "source"
    #: a wheel any Python 3 installs (py3-none-any or py2.py3-none-any)
    PURE_WHEEL = "pure wheel"
    BINARY = "binary"


class MalformedEntry(ValueError):
    """A journal entry that cannot be understood (the message says why)."""


@attrs.frozen
class JournalEvent:
    """One journal entry that matters to piwtwist.

    ``name`` is spelt as in the journal, ``package`` is its canonical form.
    For a rename, ``name``/``package`` are the new name and ``old_name``/
    ``old_package`` the old one.
    """

    serial: int
    timestamp: float
    name: str
    package: str
    version: str | None
    action: Action
    filename: str | None = None
    file_kind: FileKind | None = None
    old_name: str | None = None
    old_package: str | None = None

    def describe(self):
        parts = [f"#{self.serial}", self.action.value, self.name]
        if self.version is not None:
            parts.append(self.version)
        if self.filename:
            parts.append(self.filename)
        if self.old_name:
            parts.append(f"(was {self.old_name})")
        return " ".join(parts)


def utc_from_timestamp(seconds):
    """A journal timestamp (seconds since the epoch) as a UTC datetime."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def classify_file(filename, python_version):
    """What kind of file PyPI published, from its name and the journal's
    python_version ("source" for an sdist)."""
    if filename.endswith(".whl"):
        try:
            _, _, _, tags = parse_wheel_filename(filename)
        except InvalidWheelFilename:
            return FileKind.BINARY
        return FileKind.PURE_WHEEL if tags & _PURE_TAGS else FileKind.BINARY
    if python_version == "source":
        return FileKind.SOURCE
    if python_version in ("", "any", None) and \
            filename.lower().endswith(_SDIST_SUFFIXES):
        return FileKind.SOURCE
    return FileKind.BINARY


def _text(value, what, limit, entry):
    # recorded as PyPI spells it: see piwtwist.names
    try:
        return names.check_recorded(value, what, limit)
    except names.InvalidName as e:
        raise MalformedEntry(f"{e} in {entry!r:.300}") from None


def _filename(value, entry):
    try:
        return names.check_pypi_filename(value)
    except names.InvalidName as e:
        raise MalformedEntry(f"{e} in {entry!r:.300}") from None


def parse_entry(entry):
    """A :class:`JournalEvent`, or None for actions piwtwist ignores
    (owners, roles, documentation, ...); :class:`MalformedEntry` when the
    entry makes no sense."""
    if not isinstance(entry, (list, tuple)) or len(entry) != 5:
        raise MalformedEntry(f"{entry!r:.300} is not (name, version, "
                             f"timestamp, action, serial)")
    name, version, timestamp, action, serial = entry
    if not isinstance(serial, int) or isinstance(serial, bool) or serial <= 0:
        raise MalformedEntry(f"serial {serial!r} is not a positive integer "
                             f"in {entry!r:.300}")
    if not isinstance(timestamp, (int, float)) or \
            isinstance(timestamp, bool) or timestamp < 0:
        raise MalformedEntry(f"timestamp {timestamp!r} is not a time in "
                             f"{entry!r:.300}")
    if not isinstance(action, str):
        raise MalformedEntry(f"action {action!r} is not text in "
                             f"{entry!r:.300}")
    name = _text(name, "project name", MAX_NAME, entry)
    if version is not None:
        version = _text(version, "version", MAX_VERSION, entry)
    base = dict(serial=serial, timestamp=float(timestamp), name=name,
                package=canonicalize_name(name), version=version)

    def needs_version(kind):
        if version is None:
            raise MalformedEntry(f"{action!r} without a version in "
                                 f"{entry!r:.300}")
        return JournalEvent(action=kind, **base)

    if action == "create":
        return JournalEvent(action=Action.CREATE, **{**base, "version": None})
    if action == "new release":
        return needs_version(Action.NEW_RELEASE)
    if action.startswith("add ") and " file " in action:
        python_version, _, filename = action[4:].partition(" file ")
        filename = _filename(filename, entry)
        event = needs_version(Action.ADD_FILE)
        return attrs.evolve(event, filename=filename,
                            file_kind=classify_file(filename, python_version))
    if action.startswith("remove file "):
        event = needs_version(Action.REMOVE_FILE)
        return attrs.evolve(event, filename=_filename(action[12:], entry))
    if action in ("remove project", "remove package") or \
            (action == "remove" and version is None):
        return JournalEvent(action=Action.REMOVE_PROJECT,
                            **{**base, "version": None})
    if action in ("remove release", "remove"):
        return needs_version(Action.REMOVE_RELEASE)
    if action == "yank release":
        return needs_version(Action.YANK)
    if action == "unyank release":
        return needs_version(Action.UNYANK)
    if action.startswith("rename from ") or action.startswith("rename to "):
        # legacy PyPI wrote both: "rename from OLD" on the new name and
        # "rename to NEW" on the old one
        other = _text(action.partition(" ")[2].partition(" ")[2].strip(),
                      "renamed name", MAX_NAME, entry)
        old, new = (other, name) if action.startswith("rename from ") \
            else (name, other)
        return JournalEvent(
            serial=serial, timestamp=float(timestamp), name=new,
            package=canonicalize_name(new), version=None,
            action=Action.RENAME, old_name=old,
            old_package=canonicalize_name(old))
    return None


# What each event is about, for spotting repeats, and what it creates or
# deletes, for putting deletions after the creations they follow.

def _target(event):
    if event.action in (Action.CREATE, Action.REMOVE_PROJECT, Action.RENAME):
        return ("project", event.package)
    if event.action in (Action.ADD_FILE, Action.REMOVE_FILE):
        return ("file", event.package, event.filename)
    return ("release", event.package, event.version)


def _deleted_target(event):
    if event.action is Action.RENAME:
        return ("project", event.old_package)
    return _target(event) if event.action in DELETIONS else None


def _created_targets(event):
    if event.action is Action.CREATE or event.action is Action.RENAME:
        return [("project", event.package)]
    if event.action is Action.NEW_RELEASE:
        return [("project", event.package),
                ("release", event.package, event.version)]
    if event.action is Action.ADD_FILE:
        return [("project", event.package),
                ("release", event.package, event.version),
                ("file", event.package, event.filename)]
    return []


class JournalSequencer:
    """Turns batches of parsed events into the list to apply, in order.

    *window* is how long (in journal time) a deletion stays parked waiting
    for a late creation; deletions from before *epoch* stay parked until the
    journal is past it.  *memory* bounds the packages whose last event is
    remembered for spotting repeats.
    """

    def __init__(self, window=600.0, memory=20_000, max_parked=100_000,
                 epoch=PYPI_EPOCH):
        self.window = window
        self.epoch = epoch
        self.memory = memory
        self.max_parked = max_parked
        #: the highest serial seen so far; nothing at or below it is new
        self.high_water = 0
        #: the newest journal time seen
        self.newest = 0.0
        self._parked = {}  # target -> the latest deletion of it
        self._recent = OrderedDict()  # package -> {target: action}
        self.repeats_dropped = 0
        self.deletions_reapplied = 0

    def start_at(self, serial):
        """Forget everything: the journal is read again after *serial*."""
        self.high_water = serial
        self._parked.clear()
        self._recent.clear()

    # ---------------------------------------------------------------------

    def sequence(self, events, through=None):
        """The events of one batch (parsed, any order) to apply, in order.
        Re-applied deletions appear again after the creations they follow.
        *through* is the batch's last serial, when entries that are not
        events (ignored or malformed) came after the last event."""
        fresh = {}
        for event in events:
            if event.serial > self.high_water:
                fresh.setdefault(event.serial, event)
        ordered = [fresh[s] for s in sorted(fresh)]
        if ordered:
            self.high_water = ordered[-1].serial
            self.newest = max(self.newest,
                              max(e.timestamp for e in ordered))
        if through is not None:
            self.high_water = max(self.high_water, through)
        return [event for event, again in self._reapply_deletions(ordered)
                if not self._is_repeat(event, again)]

    def _is_repeat(self, event, again=False):
        """Whether *event* repeats the last event on its target; *again*
        marks a deletion applied again on purpose, never a repeat."""
        package_events = self._recent.get(event.package)
        if package_events is None:
            package_events = self._recent[event.package] = {}
            while len(self._recent) > self.memory:
                self._recent.popitem(last=False)
        else:
            self._recent.move_to_end(event.package)
        if not again and package_events.get(_target(event)) is event.action:
            self.repeats_dropped += 1
            return True
        self._remember(event, package_events)
        return False

    def _remember(self, event, package_events):
        """Note *event* as the last one on its target (and, for a creation,
        on what it creates, so that a deletion after it is no repeat)."""
        target = _target(event)
        for created in _created_targets(event):
            package_events[created] = event.action
        if event.action is Action.REMOVE_PROJECT:
            package_events.clear()
        elif event.action is Action.REMOVE_RELEASE:
            # file targets do not say their release: forget them all
            for key in [k for k in package_events if k[0] == "file"]:
                del package_events[key]
        elif event.action is Action.RENAME and \
                event.old_package != event.package:
            self._recent.pop(event.old_package, None)
        package_events[target] = event.action

    def _reapply_deletions(self, events):
        # position (in events) after which each parked deletion is due again
        due = {}
        for index, event in enumerate(events):
            for target in _created_targets(event):
                deletion = self._parked.get(target)
                if deletion is not None and deletion.serial < event.serial \
                        and event.timestamp <= deletion.timestamp:
                    due[target] = (index, deletion)
            deleted = _deleted_target(event)
            if deleted is not None:
                self._parked[deleted] = event
                due.pop(deleted, None)
        if len(self._parked) > self.max_parked:
            for target, _ in sorted(self._parked.items(),
                                    key=lambda item: item[1].serial)[
                                        :len(self._parked) - self.max_parked]:
                del self._parked[target]
        if not due:
            return [(event, False) for event in events]
        after = {}
        for index, deletion in due.values():
            after.setdefault(index, []).append(deletion)
        self.deletions_reapplied += len(due)
        result = []
        for index, event in enumerate(events):
            result.append((event, False))
            result.extend((deletion, True) for deletion in
                          sorted(after.get(index, ()),
                                 key=lambda e: e.serial))
        return result

    # ---------------------------------------------------------------------

    def expire(self, now=None):
        """Forget parked deletions no late creation can follow any more:
        older than *window* in journal time (or before *now*, the wall
        clock, once the follower has caught up), and past PyPI's epoch."""
        horizon = max(self.newest, now or 0.0) - self.window
        settled = self.high_water > self.epoch + PYPI_EPOCH_MARGIN
        for target, deletion in list(self._parked.items()):
            if deletion.timestamp < horizon and \
                    (settled or deletion.serial > self.epoch):
                del self._parked[target]

    def parked(self):
        return sorted(self._parked.values(), key=lambda e: e.serial)

    def parked_count(self):
        """How many deletions are parked (without sorting them all)."""
        return len(self._parked)

    def safe_serial(self, unapplied=()):
        """The serial to save: everything up to it is applied and nothing
        a parked deletion needs lies beyond it."""
        serials = [e.serial for e in unapplied]
        serials.extend(e.serial for e in self._parked.values())
        return min(serials) - 1 if serials else self.high_water
