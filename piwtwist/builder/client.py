"""The builder's conversation with the master: connect, prove who it is, ask
for work, build, report, hand over the wheels; forever.

:class:`BuilderService` keeps one connection through a ``ClientService``
(reconnecting with back-off and saying hello again every time) and runs one
loop that decides what to say next.  A finished build is kept, files and
all, until the master says ``Done``: a dropped connection or a restarted
master only delays the report.
"""

import hashlib
import os
import secrets
import shutil
from pathlib import Path

import attrs
from twisted.application import internet, service
from twisted.internet import defer, error, task, threads
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp

from .. import __version__
from ..protocol import builder as proto
from ..transfer.sender import FileSender, FileSenderResponders
from ..wheels import WheelError, inspect_wheel
from . import machine
from .. import failures
from .sandbox import FIND_BWRAP, could_not_start, run_build_with_rescue


@attrs.define
class Job:
    """The build in hand: what, how it went, and what it made."""

    package: str
    version: str
    index_url: str
    extra_index_urls: list
    running: object = None
    outcome: object = None
    wheels: list = attrs.Factory(list)
    stopped_by_master: bool = False
    #: the master's ticket for this assignment, shown after a reconnection
    ticket: str | None = None
    #: this build's identity, sent with every report of it, so that the
    #: master records it once however often it is reported
    token: str = attrs.Factory(lambda: secrets.token_hex(16))


#: Seconds between Busy pings while building (at most a fifth of the busy
#: timeout).
BUSY_PING_INTERVAL = 5.0


class BuilderConnection(FileSenderResponders, amp.AMP):
    """The builder's end of one connection to the master."""

    def __init__(self, builder):
        super().__init__()
        self.builder = builder
        self.file_sender = builder.file_sender
        self.lost = defer.Deferred()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if not self.lost.called:
            self.lost.callback(None)

    @proto.Done.responder
    def done(self, package, version):
        self.builder.master_done(package, version)
        return {}

    @proto.Bye.responder
    def bye(self, reason):
        self.builder.log.info("the master says goodbye: {reason}",
                              reason=reason)
        self.transport.loseConnection()
        return {}


class BuilderService(service.MultiService):
    log = Logger()

    def __init__(self, reactor, endpoint, secret, build_dir, label="",
                 build_timeout=3 * 3600.0, busy_timeout=300.0,
                 memory_limit=None, ping_interval=None, limits=None,
                 hidden=(), bwrap=FIND_BWRAP, apt=None):
        super().__init__()
        self.reactor = reactor
        self.secret = secret
        self.build_dir = Path(build_dir)
        self.label = label
        self.build_timeout = build_timeout
        self.busy_timeout = busy_timeout
        self.memory_limit = memory_limit
        #: what builds may use and must not see, and the sandbox (None:
        #: --no-sandbox)
        self.limits = limits
        self.hidden = tuple(hidden)
        self.bwrap = bwrap
        #: looks up missing headers and libraries, installs allowed
        #: packages (piwtwist.builder.apt.AptHelper; None: neither)
        self.apt = apt
        # often enough for monitors to follow the build log, and well
        # within the master's watchdog
        self.ping_interval = ping_interval or min(
            BUSY_PING_INTERVAL, max(1.0, busy_timeout / 5))
        self.facts = machine.machine_facts()
        self.file_sender = FileSender()
        self.job = None
        self.builder_id = None
        self._done = None
        self._wake = None
        self._loop = None
        self._stopping = False
        self.client = internet.ClientService(
            endpoint, Factory.forProtocol(lambda: BuilderConnection(self)),
            retryPolicy=internet.backoffPolicy(initialDelay=1.0, factor=1.5,
                                               maxDelay=60.0),
            clock=reactor, prepareConnection=self._hello)
        self.client.setServiceParent(self)

    # service --------------------------------------------------------------

    def startService(self):
        super().startService()
        self._stopping = False
        self.build_dir.mkdir(parents=True, exist_ok=True)
        self._loop = defer.Deferred.fromCoroutine(self._work())
        self._loop.addErrback(lambda f: self.log.failure(
            "the builder's main loop failed", f))

    async def stopService(self):
        self._stopping = True
        job = self.job
        stopping = None
        if job is not None and job.running is not None and \
                job.outcome is None:
            stopping = job.running.stop("the builder is shutting down")
        if self._wake is not None and not self._wake.called:
            self._wake.callback(None)
        connection = self._current_connection()
        if connection is not None:
            try:
                connection.callRemote(proto.Bye, reason="builder stopping")
            except Exception:
                pass
        if self._loop is not None:
            self._loop.cancel()
        if stopping is not None:
            # no build may outlive its builder
            await stopping
        await super().stopService()

    def _current_connection(self):
        d = self.client.whenConnected(failAfterFailures=1)
        if d.called:
            result = []
            d.addBoth(result.append)
            if result and isinstance(result[0], BuilderConnection):
                return result[0]
        else:
            d.cancel()
            d.addErrback(lambda f: None)
        return None

    # handshake ------------------------------------------------------------

    async def _hello(self, connection):
        nonce = os.urandom(proto.NONCE_BYTES)
        job = self.job
        facts = self.facts
        reply = await connection.callRemote(
            proto.Hello, version=__version__, nonce=nonce,
            build_timeout=float(self.build_timeout),
            busy_timeout=float(self.busy_timeout), py_tag=facts.py_version_tag,
            abi_tag=facts.abi_tag, platform_tag=facts.platform_tag,
            label=self.label, os_name=facts.os_name,
            os_version=facts.os_version, board_revision=facts.board_revision,
            board_serial=facts.board_serial,
            current_package=job.package if job else None,
            current_version=job.version if job else None,
            current_ticket=job.ticket if job else None)
        expected = proto.master_proof(self.secret, nonce)
        if not proto.proofs_match(expected, reply["proof"]):
            self.log.error("the master at the other end does not know our "
                           "secret; not talking to it")
            connection.transport.loseConnection()
            raise proto.AuthenticationFailed("the master failed to prove "
                                             "it knows the secret")
        answer = await connection.callRemote(
            proto.Authenticate,
            proof=proto.builder_proof(self.secret, reply["challenge"]))
        self.builder_id = answer["builder_id"]
        self.log.info("connected to the master as builder {id}",
                      id=self.builder_id)
        if job is not None and self.job is job and not answer["resumed"]:
            # restarted, or gave it to another builder meanwhile: reporting
            # it would only be refused again and again
            self.log.warn("the master no longer expects {package} {version} "
                          "from this builder; discarding it",
                          package=job.package, version=job.version)
            self._discard(job)

    # the main loop --------------------------------------------------------

    async def _work(self):
        while not self._stopping:
            try:
                connection = await self.client.whenConnected()
            except defer.CancelledError:
                return
            if connection.lost.called:
                # lost, and the client service has not heard yet (we run
                # inside the connection's connectionLost): let the reactor
                # turn so it can reconnect, instead of spinning on a dead
                # connection forever
                self.log.info("connection to the master lost; reconnecting")
                await self._pause(1.0)
                continue
            try:
                await self._step(connection)
            except (error.ConnectionLost, error.ConnectionDone,
                    amp.ProtocolSwitched) as e:
                self.log.info("connection to the master lost ({error})",
                              error=e.__class__.__name__)
                # let the client service notice and reconnect; never spin
                if connection.transport is not None:
                    connection.transport.loseConnection()
                await self._pause(1.0)
            except amp.RemoteAmpError as e:
                self.log.warn("the master refused: {error}", error=str(e))
                await self._pause(5.0)
            except defer.CancelledError:
                return
            except Exception:
                # our own fault (a wheel gone from disk, say): report the
                # build as failed rather than try the same thing forever
                self.log.failure("the builder's main loop stumbled")
                self._give_up_on_job()
                await self._pause(5.0)

    def _give_up_on_job(self):
        job = self.job
        if job is not None and job.outcome is not None and job.outcome.status:
            self.file_sender.clear()
            job.wheels = []
            job.outcome = attrs.evolve(
                job.outcome, status=False, wheels=(),
                reason="the builder could not report its wheels")

    async def _step(self, connection):
        job = self.job
        if job is None:
            await self._ask_for_work(connection)
        elif job.outcome is None:
            await self._wait(connection)
        else:
            await self._report(connection, job)

    async def _ask_for_work(self, connection):
        reply = await connection.callRemote(proto.Idle, **self._stats())
        action = reply["action"]
        if action == proto.BUILD:
            self._start(reply)
        elif action == proto.DIE:
            self.log.info("the master says stop; exiting")
            self._stopping = True
            self.reactor.callLater(0, self._shut_down)
        else:
            await self._pause(reply.get("delay") or 10.0, connection)

    def _shut_down(self):
        if self.reactor.running:
            self.reactor.stop()

    def _start(self, reply):
        job = Job(package=reply["package"], version=reply["version"],
                  index_url=reply["index_url"],
                  extra_index_urls=list(reply.get("extra_index_urls") or []),
                  ticket=reply.get("ticket"))
        self.job = job
        self.log.info("building {package} {version}", package=job.package,
                      version=job.version)
        building = defer.Deferred.fromCoroutine(self._build(job))
        building.addBoth(lambda _: self._wake_up())

    async def _build(self, job):
        """Build *job* and leave its outcome in it; whatever goes wrong
        becomes a failed build with a reason (reported like any other), so
        the builder never holds a job it cannot finish."""
        pinger = task.LoopingCall(self._ping)
        pinger.clock = self.reactor
        pinger.start(self.ping_interval, now=False)
        try:
            try:
                outcome = await run_build_with_rescue(
                    self.reactor, job.package, job.version, job.index_url,
                    self.build_dir, timeout=self.build_timeout,
                    memory_limit=self.memory_limit,
                    extra_index_urls=job.extra_index_urls,
                    limits=self.limits, hidden=self.hidden, bwrap=self.bwrap,
                    apt=self.apt,
                    on_start=lambda build: setattr(job, "running", build),
                    may_retry=lambda: self.job is job and not (
                        job.stopped_by_master or self._stopping))
            except Exception as e:
                self.log.warn("could not start building {package} "
                              "{version}: {error}", package=job.package,
                              version=job.version, error=e)
                outcome = could_not_start(job.package, job.version, e)
            if outcome.remedy:
                self.log.info("retried {package} {version} with {remedy}: "
                              "{result}", package=job.package,
                              version=job.version, remedy=outcome.remedy,
                              result="rescued" if outcome.status
                              else "failed again")
            await self._inspect(job, outcome)
        except Exception as e:
            self.log.failure("building {package} {version} failed",
                             package=job.package, version=job.version)
            job.wheels = []
            job.outcome = could_not_start(job.package, job.version,
                                          f"internal error: {e}")
        finally:
            if pinger.running:
                pinger.stop()

    async def _inspect(self, job, outcome):
        facts = []
        for path in outcome.wheels:
            try:
                facts.append(await threads.deferToThread(inspect_wheel, path))
            except WheelError as e:
                outcome = attrs.evolve(outcome, status=False,
                                       reason=f"unusable wheel: {e}")
                facts = []
                break
        job.wheels = facts if outcome.status else []
        if job.stopped_by_master and not outcome.status:
            outcome = attrs.evolve(outcome, reason="stopped by the master")
        if not outcome.status and not outcome.failure_class:
            diagnosis = await threads.deferToThread(
                failures.classify, outcome.output, outcome.reason)
            outcome = attrs.evolve(outcome,
                                   failure_class=diagnosis.failure_class)
        job.outcome = outcome

    def _ping(self):
        connection = self._current_connection()
        job = self.job
        if connection is None or job is None or job.outcome is not None:
            return
        running = job.running
        if running is not None:
            d = running.tail(proto.LOG_TAIL_BYTES)
            d.addErrback(lambda f: b"")
        else:
            d = defer.succeed(b"")
        d.addCallback(lambda tail: connection.callRemote(
            proto.Busy, log_tail=tail, **self._stats()))

        def answered(reply):
            if reply["action"] == proto.STOP and job.running is not None:
                self.log.info("the master says stop building {package} "
                              "{version}", package=job.package,
                              version=job.version)
                job.stopped_by_master = True
                job.running.stop("stopped by the master")

        d.addCallback(answered)
        d.addErrback(lambda f: None)  # a lost ping is retried next time

    async def _wait(self, connection):
        """Until the build finishes or the connection drops."""
        self._wake = defer.Deferred()
        await defer.DeferredList([self._wake, connection.lost],
                                 fireOnOneCallback=True, consumeErrors=True)

    def _wake_up(self):
        if self._wake is not None and not self._wake.called:
            self._wake.callback(None)

    async def _pause(self, seconds, connection=None):
        """Wait *seconds*, or less when woken (a stop) or the connection
        drops."""
        wake = self._wake = defer.Deferred()
        timer = self.reactor.callLater(seconds, self._wake_up)
        waits = [wake]
        if connection is not None:
            waits.append(connection.lost)
        try:
            await defer.DeferredList(waits, fireOnOneCallback=True,
                                     consumeErrors=True)
        finally:
            if timer.active():
                timer.cancel()

    async def _report(self, connection, job):
        outcome = job.outcome
        log = outcome.output.encode("utf-8", errors="replace")
        for offset in range(0, max(len(log), 1), proto.LOG_CHUNK):
            await connection.callRemote(
                proto.BuildLog, offset=offset,
                data=log[offset:offset + proto.LOG_CHUNK])
        files = [proto.wheel_facts(build_file, dependencies)
                 for build_file, dependencies in job.wheels]
        self._done = defer.Deferred()
        for path, (build_file, _) in zip(outcome.wheels, job.wheels):
            self.file_sender.offer(build_file.filename, path)
        reply = await connection.callRemote(
            proto.Built, package=job.package, version=job.version,
            status=outcome.status,
            duration=outcome.duration.total_seconds(),
            reason=outcome.reason or "", log_size=len(log),
            log_sha256=hashlib.sha256(log).hexdigest(), files=files,
            build_token=job.token,
            failure_class=None if outcome.status else outcome.failure_class,
            rescued=outcome.remedy if outcome.status and outcome.remedy
            else None)
        if reply["action"] == proto.SEND:
            await defer.DeferredList([self._done, connection.lost],
                                     fireOnOneCallback=True,
                                     consumeErrors=True)
            if not self._done.called:
                return  # lost the master: report again after reconnecting
        self._finish(job)

    def master_done(self, package, version):
        job = self.job
        if job is not None and (job.package, job.version) == (package,
                                                              version):
            if self._done is not None and not self._done.called:
                self._done.callback(None)

    def _discard(self, job):
        """Forget *job*: stop it if it still runs, delete its files, and
        (the main loop sees no job) ask for work."""
        self.job = None
        self.file_sender.clear()
        if job.running is not None:
            # stopping a build that has finished returns its outcome
            stopped = job.running.stop("the master does not expect it")

            def remove(outcome):
                output_dir = getattr(outcome, "output_dir", None)
                if output_dir is not None:
                    shutil.rmtree(output_dir, ignore_errors=True)

            stopped.addCallback(remove)
            stopped.addErrback(lambda f: self.log.failure(
                "could not stop the discarded build", f))
        if job.outcome is not None and job.outcome.output_dir is not None:
            shutil.rmtree(job.outcome.output_dir, ignore_errors=True)

    def _finish(self, job):
        self.file_sender.clear()
        if job.outcome is not None and job.outcome.output_dir is not None:
            shutil.rmtree(job.outcome.output_dir, ignore_errors=True)
        self.job = None

    def _stats(self):
        stats = machine.machine_stats(self.build_dir)
        return {"timestamp": stats.timestamp.timestamp(),
                "disk_total": stats.disk_total,
                "disk_free": stats.disk_free, "mem_total": stats.mem_total,
                "mem_free": stats.mem_free,
                "load_average": stats.load_average,
                "cpu_temperature": stats.cpu_temperature,
                "swap_total": stats.swap_total,
                "swap_free": stats.swap_free}
