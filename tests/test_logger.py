"""piw-logger without a master: which requests count (with real pip, uv,
wget and browser User-Agents), LogFormat variants, broken and hostile
lines, and the shipper's batches, acknowledgements, retries and --drop on
a fake clock."""

import gzip
import re
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest
from twisted.internet import defer, error, task
from twisted.protocols import amp
from twisted.python import usage

from piwtwist.logger import cli
from piwtwist.logger.classify import (DOWNLOAD, JSON, PAGE, PROJECT, SEARCH,
                                      client_details, classify)
from piwtwist.logger.parse import (MAX_LINE, BrokenLine, LineParser,
                                   parse_chunk, split_lines)
from piwtwist.logger.shipper import HitShipper
from piwtwist.master.hit_recorder import database_rows
from piwtwist.protocol import logger as proto

PIP = ('pip/24.0 {"ci":null,"cpu":"armv7l","distro":{"id":"bookworm",'
       '"libc":{"lib":"glibc","version":"2.36"},"name":"Raspbian GNU/Linux",'
       '"version":"12"},"implementation":{"name":"CPython","version":'
       '"3.11.2"},"installer":{"name":"pip","version":"24.0"},"openssl_'
       'version":"OpenSSL 3.0.11 19 Sep 2023","python":"3.11.2",'
       '"setuptools_version":"66.1.1","system":{"name":"Linux","release":'
       '"6.1.0-rpi7-rpi-v7"}}')
UV = ('uv/0.4.18 {"installer":{"name":"uv","version":"0.4.18"},"python":'
      '"3.12.3","implementation":{"name":"CPython","version":"3.12.3"},'
      '"distro":{"name":"Ubuntu","version":"24.04","id":"noble","libc":'
      '{"lib":"glibc","version":"2.39"}},"system":{"name":"Linux","release":'
      '"6.8.0-1013-raspi"},"cpu":"aarch64","openssl_version":null,'
      '"setuptools_version":null,"rustc_version":null,"ci":true}')
WGET = "Wget/1.21.3"
FIREFOX = ("Mozilla/5.0 (X11; Linux aarch64; rv:128.0) Gecko/20100101 "
           "Firefox/128.0")
WHEEL = "numpy-1.26.4-cp311-cp311-linux_armv7l.whl"
T = 1728568536.0


def combined(path, status=200, agent=PIP, method="GET", host="192.0.2.7",
             when="10/Oct/2024:13:55:36 +0000"):
    escaped = agent.replace("\\", "\\\\").replace('"', '\\"')
    return (f'{host} - - [{when}] "{method} {path} HTTP/1.1" {status} 1234 '
            f'"-" "{escaped}"')


@pytest.mark.parametrize("method, path, status, agent, kind, name", [
    ("GET", f"/simple/numpy/{WHEEL}", 200, PIP, DOWNLOAD, WHEEL),
    ("GET", f"/simple/numpy/{WHEEL}", 200, UV, DOWNLOAD, WHEEL),
    ("GET", f"/simple/numpy/{WHEEL}", 200, WGET, DOWNLOAD, WHEEL),
    ("GET", f"/simple/numpy/{WHEEL}", 200, FIREFOX, DOWNLOAD, WHEEL),
    ("GET", f"/simple/numpy/{WHEEL}", 200, None, DOWNLOAD, WHEEL),
    ("GET", f"/simple/numpy/{WHEEL}?x=1", 200, PIP, DOWNLOAD, WHEEL),
    ("HEAD", f"/simple/numpy/{WHEEL}", 200, PIP, None, None),
    ("GET", f"/simple/numpy/{WHEEL}", 304, PIP, None, None),
    ("GET", f"/simple/numpy/{WHEEL}", 404, PIP, None, None),
    ("GET", f"/simple/numpy/{WHEEL}.metadata", 200, PIP, None, None),
    ("GET", "/simple/numpy/numpy-1.0.tar.gz", 200, PIP, None, None),
    ("GET", "/simple/NumPy/", 200, PIP, SEARCH, "numpy"),
    ("GET", "/simple/Foo_Bar/", 200, UV, SEARCH, "foo-bar"),
    ("GET", "/simple/nothing-here/", 404, PIP, SEARCH, "nothing-here"),
    ("GET", "/simple/numpy/", 304, PIP, SEARCH, "numpy"),
    ("GET", "/simple/numpy/", 200, WGET, None, None),
    ("GET", "/simple/numpy/", 200, FIREFOX, None, None),
    ("GET", "/simple/numpy/", 500, PIP, None, None),
    ("GET", "/simple/numpy", 301, PIP, None, None),
    ("GET", "/simple/", 200, PIP, None, None),
    ("GET", "/project/numpy/", 200, FIREFOX, PROJECT, "numpy"),
    ("GET", "/project/NumPy/", 200, FIREFOX, PROJECT, "numpy"),
    ("GET", "/project/numpy/", 404, FIREFOX, None, None),
    ("GET", "/project/numpy/json/", 200, WGET, JSON, "numpy"),
    ("GET", "/project/numpy/json/index.json", 200, WGET, JSON, "numpy"),
    ("GET", "/project/numpy/other/", 200, WGET, None, None),
    ("GET", "/", 200, FIREFOX, PAGE, "index.html"),
    ("GET", "/stats.html", 200, FIREFOX, PAGE, "stats.html"),
    ("GET", "/packages.json", 200, FIREFOX, None, None),
    ("GET", "/site.css", 200, FIREFOX, None, None),
    ("GET", "/logs/0000/0000/0001.txt.gz", 200, FIREFOX, None, None),
    ("POST", "/", 200, FIREFOX, None, None),
    ("GET", "/.incoming/x.whl", 200, FIREFOX, None, None),
    ("GET", "http://evil/", 200, FIREFOX, None, None),
])
def test_classification(method, path, status, agent, kind, name):
    hit = classify(method, path, status, agent, "192.0.2.7", T)
    if kind is None:
        assert hit is None
        return
    assert hit[:4] == [kind, T, "192.0.2.7", name]


def test_installer_details_through_linehaul():
    assert client_details(PIP) == [
        "pip", "24.0", "CPython", "3.11.2", "Raspbian GNU/Linux", "12",
        "bookworm", "glibc", "2.36", "Linux", "6.1.0-rpi7-rpi-v7", "armv7l",
        "OpenSSL 3.0.11 19 Sep 2023", "66.1.1", None]
    uv = client_details(UV)
    assert uv[:4] == ["uv", "0.4.18", "CPython", "3.12.3"]
    assert uv[4:7] == ["Ubuntu", "24.04", "noble"]
    assert uv[11] == "aarch64" and uv[-1] is True
    # others: the first product token, nothing more
    assert client_details(WGET)[:2] == ["Wget", "1.21.3"]
    assert client_details(FIREFOX)[:2] == ["Mozilla", "5.0"]
    assert set(client_details(FIREFOX)[2:]) == {None}


def test_hostile_user_agents():
    # a forged pip agent with broken JSON: a token, no facts, no search
    forged = 'pip/24.0 {"installer": {"name": "pip", "version": '
    assert client_details(forged)[:2] == ["pip", "24.0"]
    assert set(client_details(forged)[2:]) == {None}
    assert classify("GET", "/simple/foo/", 200, forged, "192.0.2.1", T) \
        is None
    assert classify("GET", f"/simple/foo/{WHEEL}", 200, forged,
                    "192.0.2.1", T)[0] == DOWNLOAD
    for agent in ('pip/24.0 {"installer": 5}', 'pip/24.0 []',
                  'pip/x {"installer": {"name": "pip"}}',
                  'uv/0.4 {"cpu": {"deep": [1, 2, {"a": null}]}}'):
        details = client_details(agent)
        assert details is None or all(
            v is None or isinstance(v, (str, bool)) for v in details)
    # control characters go, lengths are bounded
    token = client_details("\x1b[31mEvil\x00Bot/" + "9" * 500 + " rest")
    assert token[0] == "[31mEvilBot" and len(token[1]) <= 100
    hit = classify("GET", "/project/foo/", 200, "A\x00B" * 2000,
                   "192.0.2.1", T)
    assert "\x00" not in hit[4] and len(hit[4]) == 2000
    # addresses that are not addresses (HostnameLookups On)
    assert classify("GET", "/", 200, FIREFOX, "client.example.org",
                    T)[2] == "0.0.0.0"


@pytest.mark.parametrize("log_format, line", [
    ("combined", combined(f"/simple/numpy/{WHEEL}")),
    ("%h %l %u %t \"%r\" %>s %b \"%{Referer}i\" \"%{User-Agent}i\"",
     combined(f"/simple/numpy/{WHEEL}")),
    # nginx's combined (with $body_bytes_sent) is the same format
    ("combined", combined(f"/simple/numpy/{WHEEL}").replace(" 1234 ", " 0 ")),
    ("common_vhost", "piwheels.example.org 192.0.2.7 - - [10/Oct/2024:"
                     f"13:55:36 +0000] \"GET /simple/numpy/{WHEEL} HTTP/1.1\""
                     " 200 1234"),
    ("common", f"192.0.2.7 - - [10/Oct/2024:13:55:36 +0000] \"GET "
               f"/simple/numpy/{WHEEL} HTTP/1.1\" 200 -"),
    ("%a %{%Y-%m-%d %H:%M:%S}t %m %U%q %>s \"%{User-agent}i\"",
     f"192.0.2.7 2024-10-10 13:55:36 GET /simple/numpy/{WHEEL} 200 "
     f"\"{WGET}\""),
    ("%h %t \"%r\" %s %{User-Agent}i",
     f"192.0.2.7 [10/Oct/2024:15:55:36 +0200] \"GET /simple/numpy/{WHEEL} "
     f"HTTP/1.1\" 200 {WGET}"),
])
def test_log_formats(log_format, line):
    hit = LineParser(log_format).parse(line)
    assert hit[:4] == [DOWNLOAD, T, "192.0.2.7", WHEEL]


def test_formats_a_hit_needs():
    for log_format in ('%h %>s "%{User-Agent}i"', '%h %t %>s', '%h %t %r',
                       "%{nonsense"):
        with pytest.raises(ValueError):
            LineParser(log_format)


@pytest.mark.parametrize("line", [
    "",
    "garbage",
    combined("/").replace("10/Oct/2024", "41/Oct/2024"),
    combined("/").replace("10/Oct/2024", "10/Foo/2024"),
    combined("/")[:60],
    combined("/").replace("GET", "G\x00T"),
    combined("/") + "\x00",
    combined("/", agent="caf\u00e9").encode("utf-8").decode("latin-1"),
    combined("/", agent="x" * MAX_LINE),
])
def test_broken_lines(line):
    with pytest.raises(BrokenLine):
        LineParser().parse(line)


def test_hostile_input_is_counted_never_fatal():
    good = combined("/").encode()
    data = b"\n".join([
        good, b"\x00" * 100, b"\xff\xfe invalid utf-8 \xc3\x28", good,
        b"x" * (1024 * 1024), good, combined("/", status=200).encode()[:30],
        good]) + b"\n" + good     # the last line has no line ending
    chunks = [data[i:i + 4096] for i in range(0, len(data), 4096)]
    hits = broken = lines = 0
    for batch, overlong in split_lines(iter(chunks)):
        found, count, bad = parse_chunk(LineParser(), batch)
        hits += len(found)
        broken += bad + overlong
        lines += count + overlong
    assert (hits, broken, lines) == (5, 4, 9)


def test_escaped_bytes_are_cleaned():
    line = combined("/project/foo/", agent="x").replace(
        '"x"', '"Evil\\x00\\x1b[0mBot\\xff"')
    hit = LineParser().parse(line)
    assert hit[0] == PROJECT and hit[4] == "Evil[0mBot\ufffd"


def test_the_master_checks_hits_again():
    hits = [
        classify("GET", f"/simple/a/{WHEEL}", 200, PIP, "192.0.2.1", T),
        classify("GET", "/simple/a/", 200, UV, "2001:db8::1", T),
        classify("GET", "/project/a/", 200, FIREFOX, "192.0.2.1", T),
        [DOWNLOAD, T, "192.0.2.1", "x.tar.gz", None],
        [DOWNLOAD, "yesterday", "192.0.2.1", WHEEL, None],
        [PAGE, T, "192.0.2.1", "index.html", "A\x00B", True],
        [SEARCH, T, "192.0.2.1", "a", [1] * 15],
        [JSON, T, "not an address", "a", None, False],
        [9, T, "192.0.2.1", "a", None],
        "nonsense", [PROJECT, float("nan"), "192.0.2.1", "a", "x", False],
    ]
    (clients, *tables), malformed = database_rows(hits)
    assert malformed == 6
    assert [len(t) for t in tables] == [1, 1, 1, 1, 1]
    assert tables[3][0]["h"] == "0.0.0.0"
    assert tables[0][0]["f"] == WHEEL
    assert clients[tables[0][0]["c"]]["a"] == "armv7l"
    assert tables[1][0]["h"] == "2001:db8::1"
    assert clients[tables[1][0]["c"]]["c"] is True
    assert tables[4][0]["u"] == "AB"


def test_a_batch_names_each_client_once():
    pip = classify("GET", f"/simple/a/{WHEEL}", 200, PIP, "192.0.2.1", T)
    hits = [pip, list(pip), classify("GET", "/simple/a/", 200, PIP,
                                     "192.0.2.1", T),
            [DOWNLOAD, T, "192.0.2.1", WHEEL, None]]
    clients, encoded = cbor2.loads(proto.encode_batch(hits))
    assert len(clients) == 1 and [h[4] for h in encoded] == [0, 0, 0, None]
    (rows, downloads, searches, *_), malformed = database_rows(
        encoded, clients)
    assert malformed == 0 and len(rows) == 1
    assert [d["c"] for d in downloads] == [0, 0, None]
    # an index to nowhere, or a client that is not one, spoils only its hit
    (rows, downloads, *_), malformed = database_rows(
        [[DOWNLOAD, T, "192.0.2.1", WHEEL, 5],
         [DOWNLOAD, T, "192.0.2.1", WHEEL, 1],
         [DOWNLOAD, T, "192.0.2.1", WHEEL, 0]], [clients[0], "nonsense"])
    assert malformed == 2 and len(downloads) == 1 and len(rows) == 1


def test_the_fast_regex_matches_what_apachelogs_matches():
    from apachelogs import COMBINED, LogParser
    lines = [combined(f"/simple/foo/{WHEEL}", agent=agent)
             for agent in (PIP, UV, WGET, FIREFOX, "", "-", 'a\\"b',
                           "\\x41\\x4g end", 'quote " inside')]
    lines.append('192.0.2.7 - - [10/Oct/2024:13:55:36 +0000] "" 400 0 "-" '
                 '"-"')
    reference = LogParser(COMBINED)
    ours = LineParser("combined")
    for line in lines:
        expected = reference._rgx.fullmatch(line)
        found = ours.regex.fullmatch(line)
        assert (expected and expected.groups()) == (found and found.groups())


# the shipper ------------------------------------------------------------

class FakeMaster:
    """Stands for the connection: every HitBatch part is kept with the
    Deferred that answers it."""

    def __init__(self):
        self.calls = []

    def callRemote(self, command, **arguments):
        assert command is proto.HitBatch
        assert len(arguments["data"]) <= proto.MAX_PART
        d = defer.Deferred()
        self.calls.append((arguments, d))
        return d

    def answer(self, stored=True):
        """Answer every part sent so far; the batches they make up."""
        calls, self.calls = self.calls, []
        batches, data = [], []
        for arguments, d in calls:
            data.append(arguments["data"])
            if arguments["part"] == arguments["parts"] - 1:
                clients, hits = cbor2.loads(b"".join(data))
                for hit in hits:
                    if hit[0] in (DOWNLOAD, SEARCH) and hit[4] is not None:
                        hit[4] = clients[hit[4]]
                batches.append((arguments["batch"], hits,
                                arguments["dropped"]))
                data = []
            d.callback({"stored": stored, "hits": 0})
        return batches

    def fail(self, exception):
        calls, self.calls = self.calls, []
        for _, d in calls:
            d.errback(exception)


def hits(first, count):
    return [[PAGE, T + n, "192.0.2.1", "index.html", "a" * 100, False]
            for n in range(first, first + count)]


def test_batches_by_size_and_by_time():
    clock = task.Clock()
    shipper = HitShipper(clock, "s", batch_size=10, flush_delay=1.0)
    master = FakeMaster()
    shipper.connected(master)
    shipper.add(hits(0, 25), lines=30, broken=0)
    sent = master.answer()
    assert [(b, len(h)) for b, h, _ in sent] == [("s:1", 10), ("s:2", 10)]
    clock.advance(0.9)
    assert master.calls == []
    clock.advance(0.1)
    assert [(b, len(h)) for b, h, _ in master.answer()] == [("s:3", 5)]
    assert (shipper.acked_hits, shipper.held, shipper.lines) == (25, 0, 30)
    assert not clock.getDelayedCalls()


def test_a_batch_too_large_for_the_master_is_split():
    clock = task.Clock()
    shipper = HitShipper(clock, "s", batch_size=10000)
    master = FakeMaster()
    shipper.connected(master)
    # 10,000 hits with 2,000-character agents: about 20 MB, too many parts
    shipper.add([[PAGE, T + n, "192.0.2.1", "index.html", "u" * 2000, False]
                 for n in range(10000)])
    received = []
    while master.calls:
        assert max(a["parts"] for a, _ in master.calls) <= proto.MAX_PARTS
        received += master.answer()
    assert len(received) > 1
    assert [h[1] for _, batch, _ in received for h in batch] == \
        [T + n for n in range(10000)]


def test_large_batches_are_cut_under_the_amp_limit():
    clock = task.Clock()
    shipper = HitShipper(clock, "s", batch_size=2000)
    master = FakeMaster()
    shipper.connected(master)
    big = [[PAGE, T, "192.0.2.1", "index.html", "u" * 2000, False]] * 2000
    shipper.add(big)
    assert len(master.calls) > 60
    # a real box with the largest part serialises
    arguments = master.calls[0][0]
    box = proto.HitBatch.makeArguments(arguments, None)
    assert len(box.serialize()) < 65536
    (_, received, _), = master.answer()
    assert received == big


def test_window_ack_and_finish():
    clock = task.Clock()
    shipper = HitShipper(clock, "s", batch_size=1, window=2)
    master = FakeMaster()
    shipper.connected(master)
    shipper.add(hits(0, 5))
    assert [a["batch"] for a, _ in master.calls] == ["s:1", "s:2"]
    done = shipper.finish()
    for expected in (["s:1", "s:2"], ["s:3", "s:4"], ["s:5"]):
        assert not done.called
        assert [b for b, _, _ in master.answer()] == expected
    assert done.called and done.result == 5


def test_no_loss_without_drop_while_the_master_is_away():
    clock = task.Clock()
    shipper = HitShipper(clock, "s", batch_size=10, max_buffered=30,
                         window=2)
    master = FakeMaster()
    shipper.connected(master)
    assert shipper.add(hits(0, 20)).called
    # the connection dies with two batches unacknowledged
    master.fail(error.ConnectionLost())
    shipper.disconnected(master)
    waiting = shipper.add(hits(20, 20))
    assert not waiting.called           # the reader must wait
    assert shipper.dropped_total == 0
    again = FakeMaster()
    shipper.connected(again)
    received = again.answer() + again.answer()
    assert waiting.called
    assert [b for b, _, _ in received] == ["s:1", "s:2", "s:3", "s:4"]
    assert sorted(h[1] for _, batch, _ in received for h in batch) == \
        [T + n for n in range(40)]


def test_a_batch_the_master_cannot_store_is_sent_again():
    clock = task.Clock()
    shipper = HitShipper(clock, "s", batch_size=5, retry_delay=2.0)
    master = FakeMaster()
    shipper.connected(master)
    shipper.add(hits(0, 5))
    master.fail(proto.TryLater("database away"))
    assert master.calls == []
    clock.advance(2.0)
    assert [b for b, _, _ in master.answer()] == ["s:1"]
    assert shipper.acked_hits == 5 and not clock.getDelayedCalls()


def test_drop_with_a_dead_master(observe_errors):
    clock = task.Clock()
    shipper = HitShipper(clock, "s", batch_size=10, drop=True,
                         max_buffered=50)
    for n in range(0, 200, 10):
        assert shipper.add(hits(n, 10)).called    # never waits
    assert shipper.held == 50 and shipper.dropped_total == 150
    master = FakeMaster()
    shipper.connected(master)
    received = []
    while master.calls:
        received += master.answer()
    # the newest 50 arrive; the first batch tells the master about the rest
    assert sorted(h[1] for _, batch, _ in received for h in batch) == \
        [T + n for n in range(150, 200)]
    assert [d for _, _, d in received] == [150, 0, 0, 0, 0]
    assert shipper.dropped_unreported == 0


def test_broken_lines_one_warning_a_minute():
    clock = task.Clock()
    shipper = HitShipper(clock, "s")
    warnings = []
    shipper.log = type("L", (), {
        "warn": lambda self, f, **kw: warnings.append(kw.get("count")),
        "info": lambda self, *a, **kw: None})()
    shipper.add([], lines=3, broken=3)
    shipper.add([], lines=2, broken=2)
    clock.advance(30)
    shipper.add([], lines=1, broken=1)
    assert warnings == [3]
    clock.advance(30)
    assert warnings == [3, 3]
    assert not clock.getDelayedCalls()


# the command line ---------------------------------------------------------

def parse_options(*argv):
    options = cli.Options()
    options.parseOptions(["-c", "/dev/null", *argv])
    return options


def test_options(tmp_path):
    options = parse_options()
    assert options["files"] == ["-"] and not options["drop"]
    assert options["log-queue"] == "unix:/tmp/piw-logger"
    log = tmp_path / "access.log.gz"
    log.write_bytes(gzip.compress(b""))
    options = parse_options("--drop", "--format", "common", str(log))
    assert options["drop"] and options["files"] == [str(log)]
    for argv, message in [(["--format", "%h %t"], "--format"),
                          (["no-such-file"], "no such file"),
                          (["--batch-size", "0"], "--batch-size")]:
        with pytest.raises(usage.UsageError, match=message):
            parse_options(*argv)


def test_reads_gzip_files_and_plain_ones(tmp_path):
    lines = "".join(combined("/") + "\n" for _ in range(3))
    (tmp_path / "a.log.gz").write_bytes(gzip.compress(lines.encode()))
    (tmp_path / "b.log").write_text(lines + "broken\n")
    found = []
    cli.read_inputs([str(tmp_path / "a.log.gz"), str(tmp_path / "b.log")],
                    LineParser(), lambda *a: found.append(a),
                    type("E", (), {"is_set": lambda self: False})())
    assert sum(len(h) for h, _, _ in found) == 6
    assert sum(n for _, n, _ in found) == 7
    assert sum(b for _, _, b in found) == 1


def test_console_script_usage_error():
    script = Path(sys.executable).with_name("piw-logger")
    result = subprocess.run([str(script), "-c", "/dev/null", "--format",
                             "%h"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("piw-logger: --format")


# the master's end, over real AMP boxes ------------------------------------

class RecordingRecorder:
    def __init__(self):
        self.batches = {}

    async def store(self, batch_id, hits, clients=None):
        new = batch_id not in self.batches
        self.batches.setdefault(batch_id, (hits, clients))
        return new, len(hits)


def receiver_and_shipper():
    from twisted.test import iosim

    from piwtwist.logger.shipper import LoggerClient
    from piwtwist.master.hit_recorder import HitReceiver
    recorder = RecordingRecorder()
    clock = task.Clock()
    shipper = HitShipper(clock, "s", batch_size=3000)
    client, server, pump = iosim.connectedServerAndClient(
        lambda: HitReceiver(recorder), lambda: LoggerClient(shipper))
    return recorder, shipper, server, client, pump


def test_batches_over_amp_are_put_together_and_stored_once():
    recorder, shipper, server, client, pump = receiver_and_shipper()
    big = [classify("GET", "/project/foo/", 200, "u" * 2000, "192.0.2.1", T)
           for _ in range(3000)] + \
        [classify("GET", f"/simple/foo/{WHEEL}", 200, PIP, "192.0.2.1", T)]
    shipper.add(big)
    pump.flush()
    (batch_id, (hits, clients)), = recorder.batches.items()
    assert batch_id == "s:1" and len(hits) == 3000
    shipper.finish()
    pump.flush()
    assert shipper.acked_hits == 3001 and shipper.held == 0
    assert recorder.batches["s:2"][1] == [client_details(PIP)]


@pytest.mark.parametrize("arguments, message", [
    (dict(batch="b", part=1, parts=2, data=b"", dropped=0), "came first"),
    (dict(batch="b", part=0, parts=1000, data=b"", dropped=0), "at most"),
    (dict(batch="", part=0, parts=1, data=b"", dropped=0), "1 to 100"),
    (dict(batch="b", part=0, parts=1, data=b"\xff\x00", dropped=0),
     "not \\[clients, hits\\]"),
    (dict(batch="b", part=0, parts=1, data=cbor2.dumps({"a": 1}),
          dropped=0), "not \\[clients, hits\\]"),
    (dict(batch="b", part=0, parts=1,
          data=cbor2.dumps([[], [[PAGE]] * (proto.MAX_BATCH_HITS + 1)]),
          dropped=0), "at most"),
])
def test_the_receiver_refuses_malformed_batches(arguments, message):
    recorder, shipper, server, client, pump = receiver_and_shipper()
    if len(arguments["data"]) > proto.MAX_PART:
        with pytest.raises(amp.TooLong):
            client.callRemote(proto.HitBatch, **arguments)
        return
    failures = []
    client.callRemote(proto.HitBatch, **arguments).addErrback(
        failures.append)
    pump.flush()
    assert failures and failures[0].check(proto.BatchRefused)
    assert re.search(message, failures[0].getErrorMessage())
    assert recorder.batches == {}


def test_drop_with_no_master_at_all_exits_cleanly(tmp_path):
    """The real piw-logger --drop with nobody listening: it reads
    everything, waits --drain-timeout for a master, says what it dropped
    and exits 0 (Apache restarts it otherwise, for nothing)."""
    log = tmp_path / "access.log"
    log.write_text("".join(combined("/") + "\n" for _ in range(10)))
    script = Path(sys.executable).with_name("piw-logger")
    result = subprocess.run(
        [str(script), "-c", "/dev/null", "--drop", "--drain-timeout", "1",
         "--log-queue", f"unix:{tmp_path}/nobody.sock", str(log)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "did not take the last 10 hits" in result.stderr
