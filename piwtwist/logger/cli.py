"""``piw-logger``: feed a web server's access log to the master.

Apache pipes its log in (``CustomLog "|/usr/local/bin/piw-logger --drop"
combined``); for nginx, or old logs, give files (``.gz`` too) or pipe
``tail -F``.  A thread reads and parses the input (apachelogs, then the
rules of :mod:`.classify`) in chunks of whatever is available, and hands
each chunk's hits to the reactor, where :class:`.shipper.HitShipper`
batches them to the master's ``--log-queue``, reconnecting for as long as
it takes.  Without ``--drop`` the reader waits while the master is away
(nothing is lost); with it the reader never waits and the oldest hits go
when the buffer is full.  At the end of the input: everything is sent, the
last acknowledgement awaited, and the exit code is 0.
"""

import gzip
import os
import sys
import threading
import uuid

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, endpoints, protocol, threads
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from ..config import EXIT_FAILURE, EXIT_SUCCESS, ToolOptions, run_tool
from ..logs import start_logging
from .parse import LineParser, parse_chunk, split_lines
from .shipper import HitShipper, LoggerClient

DEFAULT_LOG_QUEUE = "unix:/tmp/piw-logger"
READ_SIZE = 262144

log = Logger(namespace="piw-logger")


class Options(ToolOptions):
    """piw-logger [options] [FILE ...]"""

    config_section = "logger"
    synopsis = "Usage: piw-logger [options] [FILE ...]"
    longdesc = ("Read web-server access logs (standard input, or FILEs; "
                ".gz files are decompressed) and send the downloads, "
                "searches and page views in them to the master.")
    optParameters = [
        ["format", "f", "combined",
         "The log's format: combined, common, common_vhost, or an Apache "
         "LogFormat string (nginx's combined is Apache's)."],
        ["log-queue", None, DEFAULT_LOG_QUEUE,
         "The master's piw-logger socket (an endpoint description)."],
        ["batch-size", None, 5000,
         "Hits per batch (each batch is one transaction in the master).",
         int],
        ["buffer", None, 200000,
         "The most hits held while the master is away: beyond it the "
         "reader waits, or with --drop the oldest are dropped.", int],
        ["drain-timeout", None, 10.0,
         "With --drop, how long to wait at the end of the input for the "
         "master to take what is held (seconds).", float],
    ]
    optFlags = [
        ["drop", None,
         "Never make the web server wait: when the master is away and the "
         "buffer is full, drop the oldest hits (and say how many)."],
    ]

    def parseArgs(self, *files):
        self["files"] = list(files) or ["-"]

    def postOptions(self):
        try:
            self["parser"] = LineParser(self["format"])
        except ValueError as e:
            raise usage.UsageError(f"--format: {e}")
        if self["batch-size"] < 1 or self["batch-size"] > 10000:
            raise usage.UsageError("--batch-size must be 1 to 10000")
        if self["buffer"] < self["batch-size"]:
            raise usage.UsageError("--buffer must be at least --batch-size")
        for name in self["files"]:
            if name != "-" and not os.path.exists(name):
                raise usage.UsageError(f"{name}: no such file")


def open_input(name):
    """A binary stream of *name* (``-`` is standard input)."""
    if name == "-":
        return sys.stdin.buffer
    if name.endswith(".gz"):
        return gzip.open(name, "rb")
    return open(name, "rb")


def chunks_of(stream):
    """What is available on *stream*, READ_SIZE bytes at most a time."""
    read = getattr(stream, "read1", stream.read)
    while True:
        data = read(READ_SIZE)
        if not data:
            return
        yield data


def read_inputs(names, parser, deliver, stopping):
    """In a thread: parse every input and give each chunk's
    ``(hits, lines, broken)`` to *deliver*, which blocks while there is no
    room."""
    for name in names:
        stream = open_input(name)
        try:
            for lines, overlong in split_lines(chunks_of(stream)):
                if stopping.is_set():
                    return
                hits, count, broken = parse_chunk(parser, lines)
                deliver(hits, count + overlong, broken + overlong)
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()


def in_daemon_thread(reactor, function, *args):
    """Run *function* in a daemon thread (a reader blocked on its input
    must not keep the process alive once the reactor stops); a Deferred of
    its result."""
    done = defer.Deferred()

    def work():
        try:
            result = function(*args)
        except BaseException:
            failure = Failure()
            reactor.callFromThread(done.errback, failure)
        else:
            reactor.callFromThread(done.callback, result)

    threading.Thread(target=work, name="piw-logger reader",
                     daemon=True).start()
    return done


async def ship(reactor, options, shipper):
    """Read everything, send it, and wait for the acknowledgements."""
    try:
        endpoint = endpoints.clientFromString(reactor, options["log-queue"])
    except (ValueError, KeyError, TypeError) as e:
        raise usage.UsageError(f"{options['log-queue']!r} is not an "
                               f"endpoint description: {e}")

    factory = protocol.Factory.forProtocol(lambda: LoggerClient(shipper))
    service = ClientService(endpoint, factory, retryPolicy=backoffPolicy(
        initialDelay=0.5, maxDelay=5.0), clock=reactor)
    service.startService()
    stopping = threading.Event()

    def deliver(hits, lines, broken):
        threads.blockingCallFromThread(reactor, shipper.add, hits, lines,
                                       broken)

    try:
        await in_daemon_thread(reactor, read_inputs, options["files"],
                               options["parser"], deliver, stopping)
        finished = shipper.finish()
        if options["drop"]:
            finished.addTimeout(options["drain-timeout"], reactor)
        try:
            await finished
        except defer.TimeoutError:
            log.warn("the master did not take the last {count} hits in "
                     "time; they are dropped (--drop)", count=shipper.held)
    finally:
        stopping.set()
        shipper.stop()
        await service.stopService()
    log.info("{lines} lines read, {hits} hits sent, {broken} broken lines, "
             "{dropped} hits dropped", lines=shipper.lines,
             hits=shipper.acked_hits, broken=shipper.broken_total,
             dropped=shipper.dropped_total)


def run(options, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    observers = start_logging(options)
    shipper = HitShipper(reactor, uuid.uuid4().hex,
                         batch_size=options["batch-size"],
                         drop=options["drop"],
                         max_buffered=options["buffer"])
    outcome = []

    async def main():
        try:
            await ship(reactor, options, shipper)
            outcome.append(EXIT_SUCCESS)
        except usage.UsageError:
            raise
        except Exception as e:
            log.critical("piw-logger failed: {why}", why=e)
            outcome.append(EXIT_FAILURE)
        finally:
            if reactor.running:
                reactor.stop()

    errors = []

    def start():
        d = defer.Deferred.fromCoroutine(main())
        d.addErrback(lambda f: (errors.append(f), reactor.stop()))

    reactor.callWhenRunning(start)
    try:
        reactor.run()
    finally:
        observers.remove()
    if errors:
        errors[0].raiseException()
    return outcome[0] if outcome else EXIT_FAILURE


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    return run_tool(Options, ["piw-logger", *argv], run)
