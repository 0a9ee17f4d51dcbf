"""Tests for piwtwist.logs: -q/-v/-l become filtered Twisted log observers,
and stdlib logging and warnings end up in the same place."""

import io
import logging
import types
import warnings

import pytest
from twisted.logger import LogBeginner, LogLevel, LogPublisher, Logger
from twisted.python import usage

from piwtwist.config import ToolOptions
from piwtwist.logs import add_log_observers, log_level, start_logging


class Options(ToolOptions):
    config_section = "logtest"
    default_config_files = ()


def parse(*args):
    options = Options()
    options.parseOptions(list(args))
    return options


@pytest.fixture
def publisher():
    return LogPublisher()


@pytest.fixture
def fake_warnings():
    """Stands in for the warnings module, whose showwarning the beginner
    replaces."""
    return types.SimpleNamespace(showwarning=warnings.showwarning)


@pytest.fixture
def beginner(publisher, fake_warnings):
    stdio = types.SimpleNamespace(stdout=io.StringIO(), stderr=io.StringIO())
    return LogBeginner(publisher, io.StringIO(), stdio, fake_warnings)


@pytest.fixture
def installed():
    """Remove whatever a test installed, including the root logger
    handler."""
    handles = []
    yield handles.append
    for handle in handles:
        handle.remove()


def log_everything(publisher):
    log = Logger(namespace="piwtwist.test", observer=publisher)
    log.debug("a debug message")
    log.info("an info message")
    log.warn("a warning message")
    log.error("an error message")


@pytest.mark.parametrize("args, level", [
    ((), LogLevel.info),
    (("-q",), LogLevel.warn),
    (("--verbose",), LogLevel.debug),
])
def test_log_level(args, level):
    assert log_level(parse(*args)) is level


@pytest.mark.parametrize("args, shown, hidden", [
    ((), ["info", "warning", "error"], ["debug"]),
    (("-q",), ["warning", "error"], ["debug", "info"]),
    (("-v",), ["debug", "info", "warning", "error"], []),
])
def test_start_logging_filters_by_level(beginner, publisher, installed,
                                        args, shown, hidden):
    stream = io.StringIO()
    installed(start_logging(parse(*args), stream, beginner, publisher))
    log_everything(publisher)
    text = stream.getvalue()
    for word in shown:
        assert f"a {word} message" in text or f"an {word} message" in text
    for word in hidden:
        assert f"a {word} message" not in text
        assert f"an {word} message" not in text


def test_start_logging_line_format(beginner, publisher, installed):
    stream = io.StringIO()
    installed(start_logging(parse(), stream, beginner, publisher))
    Logger(namespace="piwtwist.master", observer=publisher).info(
        "built {count} wheels", count=3)
    (line,) = stream.getvalue().splitlines()
    assert line.endswith(" [piwtwist.master#info] built 3 wheels")


def test_start_logging_replays_earlier_events(beginner, publisher,
                                              installed):
    """Events logged before logging began (e.g. while parsing options) are
    not lost."""
    Logger(namespace="early", observer=publisher).info("before start")
    stream = io.StringIO()
    installed(start_logging(parse(), stream, beginner, publisher))
    assert "before start" in stream.getvalue()


def test_start_logging_also_appends_to_log_file(beginner, publisher,
                                                installed, tmp_path):
    path = tmp_path / "piw.log"
    path.write_text("earlier run\n")
    stream = io.StringIO()
    handle = start_logging(parse("-q", "-l", str(path)), stream, beginner,
                           publisher)
    installed(handle)
    log_everything(publisher)
    handle.remove()
    lines = path.read_text().splitlines()
    assert lines[0] == "earlier run"
    assert [line.split("] ", 1)[1] for line in lines[1:]] == [
        "a warning message", "an error message"]
    assert "a warning message" in stream.getvalue()


def test_unwritable_log_file_is_a_usage_error(beginner, publisher, tmp_path):
    path = tmp_path / "no-such-dir" / "piw.log"
    with pytest.raises(usage.UsageError) as e:
        start_logging(parse("-l", str(path)), io.StringIO(), beginner,
                      publisher)
    assert str(e.value).startswith(f"cannot open log file {path}: ")


def test_warnings_are_logged(beginner, publisher, fake_warnings, installed):
    stream = io.StringIO()
    installed(start_logging(parse(), stream, beginner, publisher))
    fake_warnings.showwarning(
        DeprecationWarning("old API"), DeprecationWarning, "mod.py", 12)
    assert "mod.py:12: builtins.DeprecationWarning: old API" in (
        stream.getvalue())


def test_stdlib_logging_is_routed_and_filtered(beginner, publisher,
                                               installed):
    stream = io.StringIO()
    installed(start_logging(parse(), stream, beginner, publisher))
    stdlib = logging.getLogger("some.library")
    stdlib.debug("library debug")
    stdlib.info("library info")
    stdlib.error("library error")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(" [some.library#info] library info")
    assert lines[1].endswith(" [some.library#error] library error")


def test_stdlib_logging_tracebacks(beginner, publisher, installed):
    stream = io.StringIO()
    installed(start_logging(parse(), stream, beginner, publisher))
    try:
        1 / 0
    except ZeroDivisionError:
        logging.getLogger("some.library").exception("it broke")
    text = stream.getvalue()
    assert "it broke" in text
    assert "ZeroDivisionError" in text


def test_stdlib_debug_with_verbose(beginner, publisher, installed):
    stream = io.StringIO()
    installed(start_logging(parse("-v"), stream, beginner, publisher))
    logging.getLogger("some.library").debug("library debug")
    assert "[some.library#debug] library debug" in stream.getvalue()


def test_remove_restores_stdlib_root_logger(beginner, publisher):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    handle = start_logging(parse("-v"), io.StringIO(), beginner, publisher)
    assert root.level == logging.DEBUG
    handle.remove()
    assert root.handlers == handlers
    assert root.level == level


def test_add_log_observers_writes_filtered_file(publisher, tmp_path):
    path = tmp_path / "master.log"
    handle = add_log_observers(parse("-v", "-l", str(path)), publisher)
    try:
        log_everything(publisher)
        logging.getLogger("some.library").debug("library debug")
    finally:
        handle.remove()
    text = path.read_text()
    for message in ["a debug message", "an info message", "a warning message",
                    "an error message", "library debug"]:
        assert message in text


def test_add_log_observers_is_removable(publisher, tmp_path):
    path = tmp_path / "master.log"
    handle = add_log_observers(parse("-l", str(path)), publisher)
    log = Logger(namespace="piwtwist.test", observer=publisher)
    log.debug("hidden")
    log.info("kept")
    handle.remove()
    log.info("after removal")
    logging.getLogger("some.library").warning("after removal too")
    text = path.read_text()
    assert "kept" in text
    assert "hidden" not in text
    assert "after removal" not in text


def test_add_log_observers_without_log_file(publisher, installed):
    """Under twistd without -l only the stdlib bridge is added; twistd's own
    observer receives its records."""
    seen = []
    publisher.addObserver(seen.append)
    handle = add_log_observers(parse("-q"), publisher)
    installed(handle)
    assert handle.observers == []
    logging.getLogger("some.library").info("library info")
    logging.getLogger("some.library").warning("library warning")
    assert [event["log_text"] for event in seen] == ["library warning"]
    assert seen[0]["log_level"] is LogLevel.warn
    assert seen[0]["log_namespace"] == "some.library"
