"""Logging set-up shared by every piwtwist tool.

``-q``/``-v``/``-l`` (see :class:`piwtwist.config.ToolOptions`) become a
:class:`~twisted.logger.LogLevelFilterPredicate` in front of text observers.
Console scripts call :func:`start_logging`, which begins global logging
once.  Under twistd, which has already begun logging to its own
``--logfile``, services call :func:`add_log_observers` instead: it adds only
the filtered ``-l`` file and the stdlib bridge, and twistd's own log stays
unfiltered.  Both route stdlib :mod:`logging` records into the Twisted log so
that libraries' messages are filtered and written in the same places.
"""

import logging
import sys

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    globalLogBeginner,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python.usage import UsageError

_STDLIB_LEVELS = {
    LogLevel.debug: logging.DEBUG,
    LogLevel.info: logging.INFO,
    LogLevel.warn: logging.WARNING,
}


def log_level(options):
    """The lowest level to log: warn with -q, debug with -v, else info."""
    if options.get("quiet"):
        return LogLevel.warn
    if options.get("verbose"):
        return LogLevel.debug
    return LogLevel.info


def _twisted_level(levelno):
    if levelno >= logging.CRITICAL:
        return LogLevel.critical
    if levelno >= logging.ERROR:
        return LogLevel.error
    if levelno >= logging.WARNING:
        return LogLevel.warn
    if levelno >= logging.INFO:
        return LogLevel.info
    return LogLevel.debug


class StdlibToTwisted(logging.Handler):
    """Send stdlib logging records to a Twisted log publisher, under the
    stdlib logger's name as namespace."""

    def __init__(self, publisher):
        super().__init__()
        self.publisher = publisher

    def emit(self, record):
        try:
            # format() appends any exc_info traceback to the message.
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return
        Logger(namespace=record.name, observer=self.publisher).emit(
            _twisted_level(record.levelno), "{log_text}", log_text=text)


class LogObservers:
    """What :func:`start_logging` or :func:`add_log_observers` installed, so
    that a service can take it down again in ``stopService``."""

    def __init__(self, publisher, predicate, observers, files):
        self.publisher = publisher
        self.predicate = predicate
        self.observers = observers
        self._files = files
        self._root = logging.getLogger()
        self._root_level = self._root.level
        self.handler = StdlibToTwisted(publisher)
        self._root.addHandler(self.handler)
        self._root.setLevel(_STDLIB_LEVELS[predicate.defaultLogLevel])

    def remove(self):
        """Remove the observers and stdlib handler, and close the log
        file."""
        for observer in self.observers:
            self.publisher.removeObserver(observer)
        self._root.removeHandler(self.handler)
        self._root.setLevel(self._root_level)
        for f in self._files:
            f.close()
        self.observers = []
        self._files = []


def _make_observers(options, stream):
    """Return the level predicate, the filtered observers for ``stream``
    (if any) and the -l file, and the files to close on removal."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=log_level(options))
    outs = [] if stream is None else [stream]
    files = []
    log_file = _open_log_file(options)
    if log_file is not None:
        outs.append(log_file)
        files.append(log_file)
    observers = [
        FilteringLogObserver(textFileLogObserver(out), [predicate])
        for out in outs
    ]
    return predicate, observers, files


def _open_log_file(options):
    """Open the -l file for appending, or return None."""
    path = options.get("log-file")
    if path is None:
        return None
    try:
        return open(path, "a", encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot open log file {path}: {e.strerror}.")


def add_log_observers(options, publisher=globalLogPublisher):
    """Add the -l file observer, filtered by -q/-v, and the stdlib bridge to
    a publisher whose logging has already begun (twistd's)."""
    predicate, observers, files = _make_observers(options, None)
    for observer in observers:
        publisher.addObserver(observer)
    return LogObservers(publisher, predicate, observers, files)


def start_logging(options, stream=None, beginner=globalLogBeginner,
                  publisher=globalLogPublisher):
    """Begin logging for a console script: to ``stream`` (stderr) and the -l
    file, filtered by -q/-v, with warnings and stdlib logging routed in.

    ``publisher`` must be the one ``beginner`` publishes to; both exist as
    parameters so tests can use fresh ones.
    """
    stream = sys.stderr if stream is None else stream
    predicate, observers, files = _make_observers(options, stream)
    beginner.beginLoggingTo(observers, redirectStandardIO=False)
    return LogObservers(publisher, predicate, observers, files)
