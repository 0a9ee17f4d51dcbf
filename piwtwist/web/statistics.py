"""The statistics service: the site's figures, refreshed periodically.

``get_statistics()`` takes about 20 seconds on a PyPI-sized database and
``get_queue_lengths()`` about one, so no page asks for them: this service
asks every minute (the chart series every ten), keeps the latest answers,
and tells its listeners (the page writer rewrites the home and statistics
pages; monitors can read :attr:`SiteStatistics.figures` too).
"""

from datetime import datetime, timezone

import attrs
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from ..db.pool import DatabaseUnavailable
from .charts import ChartSeries


@attrs.frozen
class SiteFigures:
    """The home page's figures: ``statistics`` is a
    :class:`~piwtwist.db.records.Statistics` (None until the first answer),
    ``queue`` ``((abi, releases waiting), ...)``."""

    statistics: object = None
    queue: tuple = ()
    updated_at: datetime | None = None


class SiteStatistics(service.Service):
    """Periodic figures for the home page, the statistics page and
    monitors."""

    log = Logger()
    name = "statistics"

    def __init__(self, db, clock, interval=60.0, chart_interval=600.0,
                 chart_days=30, now=None):
        self.db = db
        self.clock = clock
        self.interval = interval
        self.chart_interval = chart_interval
        self.chart_days = chart_days
        self.now = now or (lambda: datetime.now(timezone.utc))
        self.figures = SiteFigures()
        self.series = ChartSeries(days=chart_days)
        self.listeners = []
        self._charts_at = None
        self._loop = None
        self._done = None

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self._refresh_and_log)
        self._loop.clock = self.clock
        self._done = self._loop.start(self.interval, now=True)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self._done

    def _refresh_and_log(self):
        # a LoopingCall stops for good on an uncaught failure
        d = defer.Deferred.fromCoroutine(self.refresh())
        d.addErrback(self._failed)
        return d

    def _failed(self, failure):
        if failure.check(DatabaseUnavailable, defer.CancelledError):
            self.log.warn("could not refresh the statistics: {why}",
                          why=failure.getErrorMessage())
        else:
            self.log.failure("refreshing the statistics failed", failure)

    async def refresh(self):
        """Ask the database for everything once and tell the listeners."""
        statistics = await self.db.get_statistics()
        queue = await self.db.record_queue_lengths()
        now = self.now()
        self.figures = SiteFigures(statistics=statistics,
                                   queue=tuple(sorted(queue.items())),
                                   updated_at=now)
        if self._charts_at is None or \
                self.clock.seconds() - self._charts_at >= self.chart_interval:
            self._charts_at = self.clock.seconds()
            self.series = ChartSeries(
                days=self.chart_days, today=now.date(),
                builds_per_day=tuple(
                    await self.db.get_builds_per_day(self.chart_days)),
                downloads_per_day=tuple(
                    await self.db.get_downloads_per_day(self.chart_days)),
                queue_history=tuple(
                    await self.db.get_queue_history(self.chart_days)),
                download_tables=await self.db.get_download_statistics(
                    self.chart_days),
                failures_by_class=tuple(
                    await self.db.get_failures_by_class(self.chart_days)))
        for listener in list(self.listeners):
            try:
                listener(self.figures)
            except Exception:
                self.log.failure("a statistics listener failed")
