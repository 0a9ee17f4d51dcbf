"""``twistd -n piwheels-master``: options and the master's service tree.

``makeService`` cannot wait, so the tree starts in two steps: the database
pool first (connect, check the schema version, record the ABIs), then
everything that needs the database.  If the first step fails the reactor
stops with one clear sentence instead of a half-started master.
"""

import os
import sys
from pathlib import Path

from twisted.application import service, strports
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage

from ..config import ToolOptions
from ..db.client import Database
from ..db.pool import ConnectionPool
from ..logs import add_log_observers
from ..shared_secret import SecretError, read_secret
from ..systemd import WatchdogService
from ..transfer.receiver import FileReceiver
from ..web.generation import read_generation, site_generation
from ..web.page_writer import PageWriter
from ..web.server import site as web_site
from ..web.statistics import SiteStatistics
from .admin_hub import AdminHub, admin_listen_description
from .build_queue import BuildQueue
from .builder_hub import (DEFAULT_PLATFORM_ALIASES, BuilderHub,
                          load_ticket_key)
from .control_hub import ControlHub, control_needs_authentication
from .hit_recorder import HitRecorder
from .pypi_follower import new_pypi_follower, page_writer_listener
from .reclassifier import Reclassifier
from .collector import CollectorTuning
from .stall_detector import StallDetector
from .systemd import notify_ready, notify_stopping
from .tree_effects import TreeEffects


#: Page-writing worker processes by default: one per core, up to four.
#: They run at a lower priority (render_pool.WORKER_NICENESS), so they take
#: the cores the master and PostgreSQL leave idle, never the reactor's.
DEFAULT_RENDER_PROCESSES = max(1, min(4, os.cpu_count() or 1))


def _platform_aliases(value):
    """``linux_armv7l=linux_armv6l linux_aarch64=...`` -> mapping."""
    aliases = {}
    for item in value.split():
        source, _, targets = item.partition("=")
        if not source or not targets:
            raise ValueError(f"{item!r} is not PLATFORM=ALIAS[,ALIAS]")
        aliases[source] = tuple(t for t in targets.split(",") if t)
    return aliases


class Options(ToolOptions):
    """twistd piwheels-master [options]"""

    config_section = "master"
    synopsis = "Usage: twistd [twistd options] piwheels-master [options]"
    longdesc = ("The piwtwist master: follows PyPI, queues builds, hands "
                "them to builders and publishes the wheels.")
    list_options = ["build-abi", "debug"]
    optParameters = [
        ["dsn", "d", "postgresql:///piwheels",
         "The database to use (libpq connection string or URI)."],
        ["output-path", "o", "/var/www",
         "Where the output tree (the package index and pages) goes."],
        ["pypi-xmlrpc", None, "https://pypi.org/pypi",
         "PyPI's XML-RPC API."],
        ["pypi-simple", None, "https://pypi.org/simple/",
         "PyPI's simple index, which builders download sources from."],
        ["pypi-json", None, "https://pypi.org/pypi",
         "PyPI's JSON API."],
        ["builder-queue", None, "tcp:5555",
         "Endpoint description builders connect to."],
        ["import-queue", None, "unix:/tmp/piw-import",
         "Endpoint description of the admin tools' socket."],
        ["control-queue", None, "unix:/tmp/piw-control",
         "Endpoint description of the monitors' socket."],
        ["log-queue", None, "unix:/tmp/piw-logger",
         "Endpoint description of piw-logger's socket."],
        ["http-endpoint", None, None,
         "Serve the output tree over HTTP on this endpoint too."],
        ["site-url", None, "http://localhost/",
         "The address the output tree is published at (for the sitemap "
         "and the install instructions)."],
        ["build-abi", None, None,
         "An ABI to build for (repeatable), e.g. cp311."],
        ["secret-file", None, "/etc/piwheels/secret",
         "File holding the secret builders must prove they know."],
        ["platform-aliases", None, "linux_armv7l=linux_armv6l",
         "Platforms whose wheels also serve others: SOURCE=ALIAS[,ALIAS]...",
         _platform_aliases],
        ["db-pool-size", None, 4,
         "Database connections the master keeps (at least 2).  Page "
         "writing and statistics use at most all but one, so recording "
         "builds and admin actions never wait behind them.", int],
        ["render-processes", None, DEFAULT_RENDER_PROCESSES,
         "Worker processes making and writing project pages (0: in the "
         "master's own process).  They run at a lower priority than the "
         "master; the default is one per core, up to four.", int],
        ["hit-retention", None, 90,
         "Days to keep raw hits (downloads, searches, page views); the "
         "daily counts are kept for ever.  0 keeps everything.", int],
        ["debug", None, None,
         "Log debug messages of one service (repeatable), e.g. "
         "'builder hub'."],
    ]
    optFlags = [
        ["dev-mode", None,
         "Development mode: shorter delays, no pages of every package."],
        ["pypi-populate", None,
         "On a fresh database, record every package PyPI has (with its "
         "releases) before following the journal, instead of following "
         "it from PyPI's latest event; hours at PyPI's size, resumable."],
        ["build-pure-wheels", None,
         "Also build releases PyPI already publishes a py3-none-any wheel "
         "of (by default they are skipped: pip would meet two files of "
         "the same name with different hashes)."],
        ["no-pypi-follow", None,
         "Do not follow PyPI at all (tests, offline demonstrations)."],
    ]

    def opt_slave_queue(self, value):
        """Alias of --builder-queue, as piwheels spelled it."""
        self["builder-queue"] = value

    def postOptions(self):
        if os.geteuid() == 0:
            raise usage.UsageError(
                "refusing to run as root: run the master as an ordinary "
                "user (for example piwheels)")
        if not self["build-abi"]:
            raise usage.UsageError(
                "give at least one --build-abi (for example cp311)")
        for abi in self["build-abi"]:
            if abi in ("none", "abi3") or not abi.isascii() or \
                    not abi.replace("_", "").isalnum():
                raise usage.UsageError(f"{abi!r} is not an ABI to build for")
        try:
            self["secret"] = read_secret(self["secret-file"])
        except SecretError as e:
            raise usage.UsageError(str(e))
        self["output-path"] = Path(self["output-path"]).absolute()
        if self["db-pool-size"] < 2:
            raise usage.UsageError(
                "--db-pool-size must be at least 2: one connection is kept "
                "free of page writing for build recording and admin tools")
        if not 0 <= self["render-processes"] <= 64:
            raise usage.UsageError(
                "--render-processes must be between 0 and 64")
        if self["hit-retention"] < 0:
            raise usage.UsageError(
                "--hit-retention is a number of days (0 keeps every hit)")
        if isinstance(self["platform-aliases"], str):
            self["platform-aliases"] = _platform_aliases(
                self["platform-aliases"])


class MasterService(service.MultiService):
    """The master: starts the database first, then everything else."""

    log = Logger()

    def __init__(self, options, reactor):
        super().__init__()
        self.options = options
        self.reactor = reactor
        # first to start, last to stop: pings systemd's watchdog from the
        # reactor for as long as it turns (READY=1 and STOPPING=1 are said
        # below, once the database answers and as the stop begins)
        self.watchdog = WatchdogService(reactor, lifecycle=False)
        self.watchdog.setServiceParent(self)
        self.stall_detector = StallDetector(reactor)
        self.stall_detector.setServiceParent(self)
        self.collector = CollectorTuning(reactor)
        self.collector.setServiceParent(self)
        # page writing and statistics read through the pool's bulk lane,
        # which never holds its last connection: build recording, admin
        # actions and hits always have one (and are served first)
        self.pool = ConnectionPool(options["dsn"], reactor,
                                   size=options["db-pool-size"])
        self.pool.setServiceParent(self)
        self.db = Database(self.pool)
        bulk_db = Database(self.pool.bulk())
        self.dependents = service.MultiService()
        self.log_observers = None
        self.started = None
        output = options["output-path"]
        self.queue = BuildQueue(self.db, reactor,
                                refresh_interval=10.0 if options["dev-mode"]
                                else 60.0)
        self.queue.setServiceParent(self.dependents)
        self.receiver = FileReceiver(output, reactor=reactor)
        self.hub = BuilderHub(
            self.db, self.queue, self.receiver, reactor, options["secret"],
            output, index_url=options["pypi-simple"],
            platform_aliases=options["platform-aliases"],
            idle_delay=2.0 if options["dev-mode"] else 10.0,
            ticket_key=load_ticket_key(Path(output) / ".ticket-key"))
        self.hub.setServiceParent(self.dependents)
        strports.service(options["builder-queue"],
                         self.hub.factory()).setServiceParent(self.dependents)
        dev_mode = options["dev-mode"]
        self.statistics = SiteStatistics(
            bulk_db, reactor, interval=10.0 if dev_mode else 60.0)
        self.statistics.setServiceParent(self.dependents)
        # every page is rewritten at start only when what pages are made
        # of (templates, rendering code, schema) changed since the last
        # full rewrite finished; otherwise the saved queue and the audit
        # bring the stale and missing pages up to date
        generation = None if dev_mode else site_generation()
        rewrite_all = generation is not None and \
            read_generation(output) != generation
        self.page_writer = PageWriter(
            bulk_db, output, reactor, statistics=self.statistics,
            site_url=options["site-url"],
            rewrite_all_at_start=rewrite_all,
            generation=generation,
            render_processes=options["render-processes"],
            rewrite_delay=0.5 if dev_mode else 2.0,
            home_interval=10.0 if dev_mode else 60.0,
            search_interval=10.0 if dev_mode else 300.0)
        self.page_writer.setServiceParent(self.dependents)
        self.hub.build_listeners.append(self.page_writer.build_finished)
        # deletions recorded before a crash are finished, staged wheels of
        # committed builds published and the tree audited, at start
        self.tree_effects = TreeEffects(
            self.db, output, reactor, self.receiver, self.page_writer,
            platform_aliases=options["platform-aliases"],
            pages_at_start=not rewrite_all)
        self.tree_effects.setServiceParent(self.dependents)
        self.follower = None
        if not options["no-pypi-follow"]:
            self.follower = new_pypi_follower(
                self.db, reactor, output,
                xmlrpc_url=options["pypi-xmlrpc"],
                json_url=options["pypi-json"],
                build_queue=self.queue,
                populate=options["pypi-populate"],
                skip_pure_wheels=not options["build-pure-wheels"],
                poll_interval=2.0 if dev_mode else 10.0)
            self.follower.page_listeners.append(
                page_writer_listener(self.page_writer, self.tree_effects))
            self.follower.setServiceParent(self.dependents)
        # failures recorded without a class get one, in the background
        self.reclassifier = Reclassifier(self.db, reactor, self.page_writer)
        self.reclassifier.setServiceParent(self.dependents)
        self.admin = AdminHub(
            self.db, self.queue, self.receiver, self.page_writer, reactor,
            output, json_url=options["pypi-json"],
            platform_aliases=options["platform-aliases"],
            build_listeners=self.hub.build_listeners,
            tree_effects=self.tree_effects, reclassifier=self.reclassifier)
        self.admin.setServiceParent(self.dependents)
        strports.service(admin_listen_description(options["import-queue"]),
                         self.admin.factory()).setServiceParent(
                             self.dependents)
        self.control = ControlHub(
            self.hub, self.queue, self.db, reactor,
            secret=options["secret"], output_path=output,
            abis=options["build-abi"], follower=self.follower,
            receiver=self.receiver, stop_master=self._terminate,
            statistics=self.statistics, stall_detector=self.stall_detector)
        self.control.setServiceParent(self.dependents)
        control_queue = options["control-queue"]
        strports.service(
            admin_listen_description(control_queue),
            self.control.factory(
                require_authentication=control_needs_authentication(
                    control_queue)),
        ).setServiceParent(self.dependents)
        self.hit_recorder = HitRecorder(
            self.db, reactor, retention_days=options["hit-retention"])
        self.hit_recorder.setServiceParent(self.dependents)
        strports.service(admin_listen_description(options["log-queue"]),
                         self.hit_recorder.factory()).setServiceParent(
                             self.dependents)
        if options["http-endpoint"]:
            strports.service(
                options["http-endpoint"],
                web_site(output, hits=self.hit_recorder),
            ).setServiceParent(self.dependents)

    def startService(self):
        self.log_observers = add_log_observers(self.options)
        super().startService()
        self.started = defer.Deferred.fromCoroutine(self._start())
        self.started.addErrback(self._failed)

    async def _start(self):
        await self.pool.ready
        await self.db.set_build_abis(self.options["build-abi"])
        self.options["output-path"].mkdir(parents=True, exist_ok=True)
        self.dependents.setServiceParent(self)
        if not self.dependents.running:
            self.dependents.startService()
        self.log.info("piwtwist master ready: building for {abis}, builders "
                      "on {endpoint}",
                      abis=", ".join(self.options["build-abi"]),
                      endpoint=self.options["builder-queue"])
        self.collector.freeze_startup()
        notify_ready()

    def _terminate(self):
        """A monitor's terminate: the clean shutdown SIGTERM starts."""
        self.log.info("terminating the master, as a monitor asked")
        if self.reactor.running:
            self.reactor.stop()

    def _failed(self, failure):
        self.log.critical("the master cannot start: {why}",
                          why=failure.getErrorMessage())
        sys.stderr.write(f"piwheels-master: cannot start: "
                         f"{failure.getErrorMessage()}\n")
        if self.reactor.running:
            self.reactor.stop()

    async def stopService(self):
        notify_stopping()
        # everything that needs the database stops (and saves what it
        # must, such as the page writer's queue) before the pool closes
        if self.dependents.parent is self:
            await defer.maybeDeferred(self.dependents.disownServiceParent)
        await super().stopService()
        if self.log_observers is not None:
            self.log_observers.remove()


def makeService(options):
    from twisted.internet import reactor
    return MasterService(options, reactor)
