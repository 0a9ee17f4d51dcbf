"""Failure classes for builds recorded before they were classified.

At start the master looks for failed builds without a class (recorded
before piwtwist classified failures, or while classification was missing)
and classifies their stored logs; ``piw-rebuild reclassify`` runs the pass
again over every failure, after the rules in :mod:`piwtwist.failures` have
changed.  The pass reads a chunk of builds at a time, classifies it in a
thread (logs are large and the rules are regular expressions) and records
the classes in one statement per chunk, so the reactor never waits on it;
the project pages of the builds whose class changed are rewritten.
"""

from twisted.application import service
from twisted.internet import defer, threads
from twisted.logger import Logger

from .. import failures

#: Builds read and classified at a time.
CHUNK = 100


def classify_rows(rows):
    """``(build_id, class, hint)`` for each ``(build_id, reason, output)``
    row."""
    results = []
    for row in rows:
        diagnosis = failures.classify(row.output, row.reason)
        results.append((row.build_id, diagnosis.failure_class,
                        diagnosis.hint))
    return results


class Reclassifier(service.Service):
    """Classifies stored failures: those without a class at start, every
    one on request."""

    log = Logger()

    def __init__(self, db, reactor, page_writer=None, chunk=CHUNK,
                 at_start=True):
        self.db = db
        self.reactor = reactor
        self.page_writer = page_writer
        self.chunk = chunk
        self.at_start = at_start
        self._running = None

    def startService(self):
        super().startService()
        if self.at_start:
            self.start(every=False)

    async def stopService(self):
        super().stopService()
        running, self._running = self._running, None
        if running is not None:
            running.cancel()
            await running.addErrback(lambda f: None)

    @property
    def busy(self):
        return self._running is not None

    def start(self, every=False):
        """Start a pass (unless one runs); a Deferred that fires with the
        number of builds it classified, or None when one was running."""
        if self._running is not None:
            return defer.succeed(None)
        running = self._running = defer.Deferred.fromCoroutine(
            self.run(every))

        def finished(result):
            if self._running is running:
                self._running = None
            return result

        def failed(failure):
            if failure.check(defer.CancelledError):
                return None
            self.log.failure("classifying stored build failures failed",
                             failure)
            return None

        running.addBoth(finished)
        running.addErrback(failed)
        return running

    async def run(self, every=False):
        """One pass; returns how many failures it classified."""
        after, classified, changed = 0, 0, set()
        while True:
            rows = await self.db.get_unclassified_failures(
                after, self.chunk, every=every)
            if not rows:
                break
            results = await self._classify(rows)
            packages = set(await self.db.set_failure_classes(results))
            # asked for a chunk at a time: the first pass after an upgrade
            # changes most projects, and hundreds of thousands of requests
            # in one turn would hold the reactor
            if self.page_writer is not None:
                for package in sorted(packages - changed):
                    self.page_writer.request_rewrite(package, both=False)
            changed |= packages
            classified += len(results)
            after = rows[-1].build_id
        if classified:
            self.log.info("classified {count} stored build failure(s); "
                          "{changed} project(s) changed", count=classified,
                          changed=len(changed))
        return classified

    def _classify(self, rows):
        get_pool = getattr(self.reactor, "getThreadPool", None)
        if get_pool is None:
            return defer.succeed(classify_rows(rows))
        return threads.deferToThreadPool(self.reactor, get_pool(),
                                         classify_rows, rows)
