"""The reclassifier asks for the pages it changed a chunk at a time: the
first pass after an upgrade changes most of PyPI's projects, and asking
for all of them at the end, in one turn, held the reactor (a 183 ms stall
at a tenth of PyPI in bench/scale.py)."""

import pytest_twisted

from piwtwist.master.reclassifier import Reclassifier
from tests.web_support import add_release, log_failure

PACKAGES = [f"pkg-{n}" for n in range(7)]
MISSING_HEADER = ("pip wheel ...\nfoo.c:1:10: fatal error: foo.h: No such "
                  "file or directory\n")


class Recorder:
    """A page writer that notes requests, and the database's chunks
    between them."""

    def __init__(self, db, events):
        self.db = db
        self.events = events

    def request_rewrite(self, package, both=True):
        self.events.append(("rewrite", package, both))


@pytest_twisted.ensureDeferred
async def test_rewrites_are_asked_for_a_chunk_at_a_time(db, reactor):
    for package in PACKAGES:
        await add_release(db, package, "1.0")
        await log_failure(db, package, "1.0", "cp311", output=MISSING_HEADER)
    events = []
    original = db.set_failure_classes

    async def noted(classes):
        changed = await original(classes)
        events.append(("chunk", len(list(classes))))
        return changed

    db.set_failure_classes = noted
    try:
        reclassifier = Reclassifier(db, reactor, Recorder(db, events),
                                    chunk=3, at_start=False)
        assert await reclassifier.run(every=True) == len(PACKAGES)
    finally:
        del db.set_failure_classes
    rewrites = [e for e in events if e[0] == "rewrite"]
    assert sorted(p for _, p, _ in rewrites) == PACKAGES   # each once
    assert all(both is False for _, _, both in rewrites)
    # each chunk's packages right after that chunk, not all at the end
    between, run = [], 0
    for event in events:
        if event[0] == "chunk":
            between.append(run)
            run = 0
        else:
            run += 1
    between.append(run)
    assert between == [0, 3, 3, 1]
