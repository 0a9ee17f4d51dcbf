"""The control hub: monitors subscribe to the master's state and steer it.

Most of it is the conversation over in-memory AMP with a fake clock and the
builder hub of tests/test_builder_hub.py (real BuilderState objects); then
the SQL it asks, the AMP value limit with 200 real builders, TLS with the
shared secret, and a real master and builder over the real UNIX socket."""

import os
import socket
from datetime import datetime, timedelta, timezone

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, task
from twisted.internet.protocol import Factory
from twisted.protocols import amp
from twisted.test import iosim

from piwtwist import __version__
from piwtwist.db.records import BuildResult
from piwtwist.master.control_hub import (ControlHub, builder_message,
                                         control_needs_authentication)
from piwtwist.protocol import builder as builder_proto
from piwtwist.protocol import control as proto
from tests.test_builder_hub import (SECRET, STATS, FakeDatabase,
                                    FakeReceiver, Harness, entry,
                                    wheel_facts)
from tests.test_end_to_end import deployment, package_index  # noqa: F401

MACHINE = {"disk_total": 1000, "disk_free": 400, "load": [0.5, 0.4, 0.3],
           "cpu_count": 4, "mem_total": 800, "mem_free": 200,
           "swap_total": 100, "swap_free": 90, "cpu_temperature": 51.5}


class FiguresDatabase(FakeDatabase):
    def __init__(self, entries=(), recent=()):
        super().__init__(entries)
        self.recent = list(recent)
        self.figures_asked = 0

    async def get_monitor_figures(self):
        self.figures_asked += 1
        return {"cp311": 42}, 17

    async def get_recent_builds(self):
        return self.recent


class FakeSequencer:
    high_water = 1005


class FakeFollower:
    def __init__(self):
        self.paused = False
        self.saved_serial = 1000
        self.caught_up = True
        self.sequencer = FakeSequencer()

    def pause(self):
        self.paused = True

    def resume(self):
        self.paused = False


class SlowReceiver(FakeReceiver):
    """Holds a transfer open until told, and says how far it got."""

    def __init__(self, root):
        super().__init__(root)
        self.waiting = None
        self.received_bytes = {}

    async def receive(self, call_remote, package, filename, size, sha256,
                      publish=True):
        self.received_bytes[filename] = 0
        self.waiting = defer.Deferred()
        await self.waiting
        del self.received_bytes[filename]
        return await super().receive(call_remote, package, filename, size,
                                     sha256, publish=publish)

    def progress(self, filename):
        return self.received_bytes.get(filename)


class ControlHarness(Harness):
    """A builder hub with builders (Harness) and a control hub on top."""

    def __init__(self, tmp_path, entries=(), recent=()):
        super().__init__(tmp_path, entries)
        self.db = self.queue.db = self.hub.db = FiguresDatabase(
            self.db.entries, recent)
        self.receiver = self.hub.receiver = SlowReceiver(tmp_path)
        self.follower = FakeFollower()
        self.stops = []
        self.control = ControlHub(
            self.hub, self.queue, self.db, self.clock, secret=SECRET,
            output_path=tmp_path, abis=["cp311", "cp39"],
            follower=self.follower, receiver=self.receiver,
            stop_master=lambda: self.stops.append(True),
            sample_machine=lambda path: dict(MACHINE), host="master-host")
        self.control.startService()

    def monitor(self, require_authentication=False, slow=False):
        factory = self.control.factory(require_authentication)
        client, server, pump = iosim.connectedServerAndClient(
            lambda: factory.buildProtocol(None),
            lambda: MonitorEnd(slow))
        return Monitor(self, client, server, pump)


class MonitorEnd(amp.AMP):
    def __init__(self, slow=False):
        super().__init__()
        self.slow = slow
        self.messages = []
        self.reassembler = proto.Reassembler()
        self.pieces = []

    @proto.Status.responder
    def status(self, message_id, index, count, data):
        self.pieces.append((message_id, index, count, len(data)))
        message = self.reassembler.add(message_id, index, count, data)
        if message is not None:
            self.messages.append(message)
        if self.slow:
            return defer.Deferred()  # a frozen terminal: never answers
        return {}


class Monitor:
    def __init__(self, harness, client, server, pump):
        self.harness = harness
        self.client = client
        self.server = server
        self.pump = pump

    @property
    def messages(self):
        return self.client.messages

    @property
    def lost(self):
        transport = self.client.transport
        return transport is None or transport.disconnected

    def settle(self, seconds=0):
        self.pump.flush()
        self.harness.clock.advance(seconds)
        self.pump.flush()

    def call(self, command, **kwargs):
        results = []
        self.client.callRemote(command, **kwargs).addBoth(results.append)
        self.pump.flush()
        self.pump.flush()
        (result,) = results
        if hasattr(result, "raiseException"):
            result.raiseException()
        return result

    def hello(self, nonce=b"m" * 32):
        return self.call(proto.Hello, version=__version__, nonce=nonce)

    def login(self, secret=SECRET):
        reply = self.hello()
        if reply["authenticate"]:
            self.call(proto.Authenticate, proof=proto.monitor_proof(
                secret, reply["challenge"]))
        return reply

    def subscribe(self):
        self.login()
        self.call(proto.Subscribe)
        self.settle()
        return self.messages[0]

    def control(self, action, builder_id=None):
        reply = self.call(proto.Control, action=action,
                          builder_id=builder_id)
        return proto.decode(reply["state"])

    def of_type(self, kind):
        return [m for m in self.messages if m["type"] == kind]


@pytest.fixture
def harness(tmp_path):
    harness = ControlHarness(tmp_path, [entry("foo"), entry("bar")])
    yield harness
    harness.control.stopService()
    harness.hub.stopService()
    harness.queue.stopService()


# the conversation ----------------------------------------------------------

def test_unix_listeners_need_no_secret_and_network_ones_do():
    assert not control_needs_authentication("unix:/tmp/piw-control")
    assert not control_needs_authentication(
        "unix:/run/piwheels/control.sock:mode=660")
    for description in ("tcp:5556", "ssl:5556:privateKey=k.pem",
                        "systemd:domain=INET:index=0"):
        assert control_needs_authentication(description)


def test_hello_proves_the_master_and_says_no_proof_is_needed(harness):
    monitor = harness.monitor(require_authentication=False)
    reply = monitor.hello(nonce=b"x" * 32)
    assert reply["proof"] == proto.master_proof(SECRET, b"x" * 32)
    assert reply["authenticate"] is False
    assert reply["master_version"] == __version__
    monitor.call(proto.Subscribe)  # no Authenticate needed


def test_nothing_before_hello(harness):
    monitor = harness.monitor(require_authentication=False)
    for command, args in ((proto.Subscribe, {}),
                          (proto.Control, {"action": "pause"}),
                          (proto.BuildLogTail, {"builder_id": 1})):
        with pytest.raises(proto.NotAuthenticated):
            monitor.call(command, **args)
    assert not harness.hub.paused


def test_another_version_is_refused_naming_both(harness):
    monitor = harness.monitor()
    with pytest.raises(proto.VersionMismatch) as caught:
        monitor.call(proto.Hello, version="0.0.1", nonce=b"n" * 32)
    assert "0.0.1" in str(caught.value) and __version__ in str(caught.value)


def test_network_listener_wants_the_secret(harness):
    monitor = harness.monitor(require_authentication=True)
    reply = monitor.hello()
    assert reply["authenticate"] is True
    with pytest.raises(proto.NotAuthenticated):
        monitor.call(proto.Subscribe)
    monitor.call(proto.Authenticate, proof=proto.monitor_proof(
        SECRET, reply["challenge"]))
    monitor.call(proto.Subscribe)
    monitor.settle()
    assert monitor.messages[0]["type"] == "snapshot"


def test_wrong_secret_is_refused_with_a_sentence_and_dropped(harness):
    monitor = harness.monitor(require_authentication=True)
    reply = monitor.hello()
    with pytest.raises(proto.AuthenticationFailed) as caught:
        monitor.call(proto.Authenticate, proof=proto.monitor_proof(
            b"w" * 32, reply["challenge"]))
    assert "secret" in str(caught.value)
    monitor.settle()
    assert monitor.lost
    assert not harness.control.subscribers


def test_a_monitor_that_never_says_hello_is_dropped(harness):
    monitor = harness.monitor(require_authentication=True)
    monitor.settle(31)
    assert monitor.lost


def test_master_facts_carry_the_statistics_build_totals(harness):
    from datetime import timedelta
    from types import SimpleNamespace
    facts = harness.control.master_facts()
    assert facts["builds_time"] is None and facts["builds_size"] is None
    harness.control.statistics = SimpleNamespace(
        figures=SimpleNamespace(statistics=None))
    assert harness.control.master_facts()["builds_time"] is None
    harness.control.statistics.figures.statistics = SimpleNamespace(
        builds_time=timedelta(hours=2, seconds=5), builds_size=123456789)
    facts = harness.control.master_facts()
    assert facts["builds_time"] == 7205.0
    assert facts["builds_size"] == 123456789


def test_master_facts_carry_the_reactor_stalls(harness):
    from piwtwist.master.stall_detector import StallDetector
    facts = harness.control.master_facts()
    assert facts["reactor_stall"] is None  # not measured
    detector = StallDetector(harness.clock, tick=0.05, interval=60)
    detector.startService()
    harness.control.stall_detector = detector
    try:
        harness.clock.pump([0.05] * 4)
        harness.clock.advance(0.3)  # held up 250 ms
        stalled_at = harness.clock.seconds()
        harness.clock.pump([0.05] * 4)
        # (sent over AMP to a subscribing monitor)
        sent = harness.monitor().subscribe()["master"]
        assert round(sent["reactor_stall"], 3) == 0.25
        assert round(sent["reactor_stall_worst"], 3) == 0.25
        assert sent["reactor_stall_worst_at"] == stalled_at
        assert sent["gc_pause"] >= 0.0
    finally:
        detector.stopService()


def test_snapshot_on_subscribe_then_master_facts(harness):
    builder = harness.connect()
    builder.login()
    builder.idle()
    monitor = harness.monitor()
    snapshot = monitor.subscribe()
    assert snapshot["type"] == "snapshot"
    (state,) = snapshot["builders"]
    assert state["label"] == "pi-1" and state["abi"] == "cp311"
    assert state["status"] == "building" and state["os_name"] == "Debian"
    assert state["stats"]["disk_free"] == 50
    master = snapshot["master"]
    assert master["version"] == __version__
    assert master["host"] == "master-host"
    assert master["abis"] == ["cp311", "cp39"]
    assert master["paused"] is False
    assert set(master) >= {
        "started", "now", "pypi_serial", "pypi_behind", "queue",
        "builds_last_hour", "successes_last_hour", "downloads_last_hour",
        "last_build_at", "disk_total", "disk_free", "load", "cpu_count",
        "mem_total", "mem_free", "swap_total", "swap_free",
        "cpu_temperature"}
    # the first subscriber brings the facts up to date at once
    (fresh,) = monitor.of_type("master")
    facts = fresh["master"]
    assert facts["queue"] == {"cp311": 42, "cp39": 0}
    assert facts["downloads_last_hour"] == 17
    assert facts["pypi_serial"] == 1000 and facts["pypi_behind"] == 5
    assert facts["disk_free"] == 400 and facts["load"] == [0.5, 0.4, 0.3]
    assert facts["cpu_temperature"] == 51.5
    monitor.settle(2)
    monitor.settle(2)
    assert len(monitor.of_type("master")) == 3
    assert not [m for m in monitor.messages[1:] if m["type"] == "snapshot"]


def test_the_database_is_asked_every_figures_interval_not_every_tick(
        harness):
    monitor = harness.monitor()
    monitor.subscribe()
    for _ in range(9):
        monitor.settle(2)
    assert harness.db.figures_asked == 2  # at 0 s and 10 s
    assert len(monitor.of_type("master")) == 10


def test_nobody_watching_costs_nothing(harness):
    harness.clock.advance(60)
    assert harness.db.figures_asked == 0


def test_a_refresh_still_running_is_not_started_again(harness):
    stalled = defer.Deferred()
    asked = []

    async def slow_figures():
        asked.append(True)
        await stalled
        return {}, None

    harness.db.get_monitor_figures = slow_figures
    monitor = harness.monitor()
    monitor.subscribe()
    monitor.settle(2)
    monitor.settle(20)
    assert len(asked) == 1 and not monitor.of_type("master")
    stalled.callback(None)
    monitor.settle()
    assert len(monitor.of_type("master")) == 1


def test_pypi_behind_is_unknown_while_catching_up(harness):
    harness.follower.caught_up = False
    assert harness.control.master_facts()["pypi_behind"] is None
    harness.control.follower = None
    facts = harness.control.master_facts()
    assert facts["pypi_serial"] is None and facts["pypi_behind"] is None


def test_builder_changes_are_streamed(harness):
    monitor = harness.monitor()
    monitor.subscribe()
    builder = harness.connect()
    builder.login()
    monitor.settle(1)
    (appeared,) = monitor.of_type("builder")
    builder_id = appeared["builder"]["builder_id"]
    assert appeared["builder"]["status"] == "idle"
    work = builder.idle()
    monitor.settle(1)
    building = monitor.of_type("builder")[-1]["builder"]
    assert building["status"] == "building"
    assert building["package"] == work["package"]
    assert building["package_version"] == "1.0"
    assert building["task_started"] == harness.clock.seconds() - 1
    # a ping carries stats: the builder is seen
    builder.call(builder_proto.Busy, **dict(STATS, disk_free=7))
    monitor.settle(1)
    seen = monitor.of_type("builder")[-1]["builder"]
    assert seen["stats"]["disk_free"] == 7
    assert seen["last_seen"] == harness.clock.seconds() - 1
    # a successful build's wheel moves, with progress
    wheel = wheel_facts(work["package"])
    assert builder.report(work["package"], "1.0", True,
                          files=[wheel]) == builder_proto.SEND
    monitor.settle(1)
    sending = monitor.of_type("builder")[-1]["builder"]
    assert sending["status"] == "sending"
    assert sending["sending"] == {"filename": wheel["filename"],
                                  "size": 5, "received": 0}
    harness.receiver.received_bytes[wheel["filename"]] = 3
    monitor.settle(2)  # the master's refresh notices progress
    assert monitor.of_type("builder")[-1]["builder"]["sending"][
        "received"] == 3
    harness.receiver.waiting.callback(None)
    monitor.settle(1)
    done = monitor.of_type("builder")[-1]["builder"]
    assert done["status"] == "idle" and done["sending"] is None
    assert done["package"] is None
    # the build is counted
    facts = harness.control.master_facts()
    assert facts["builds_last_hour"]["cp311"] == 1
    assert facts["successes_last_hour"]["cp311"] == 1
    assert facts["last_build_at"] is not None
    # and gone
    builder.client.transport.loseConnection()
    builder.pump.flush()
    monitor.settle(1)
    assert monitor.of_type("builder_gone") == [
        {"type": "builder_gone", "builder_id": builder_id}]


def test_a_failed_build_is_the_builders_last_failure(harness):
    monitor = harness.monitor()
    monitor.subscribe()
    builder = harness.connect()
    builder.login()
    work = builder.idle()
    builder.report(work["package"], "1.0", False, reason="exit status 1")
    monitor.settle(1)
    state = monitor.of_type("builder")[-1]["builder"]
    assert state["last_failure"] == {"package": work["package"],
                                     "version": "1.0",
                                     "reason": "exit status 1",
                                     "failure_class": "unknown"}
    facts = harness.control.master_facts()
    assert facts["builds_last_hour"]["cp311"] == 1
    assert facts["successes_last_hour"]["cp311"] == 0


def test_changes_in_a_burst_make_one_message(harness):
    monitor = harness.monitor()
    monitor.subscribe()
    builder = harness.connect()
    builder.login()
    builder.idle()
    for _ in range(5):
        builder.busy()
    monitor.settle(1)
    assert len(monitor.of_type("builder")) == 1


def test_connections_that_never_authenticate_are_not_shown(harness):
    monitor = harness.monitor()
    monitor.subscribe()
    stranger = harness.connect()
    stranger.hello()
    monitor.settle(1)
    assert monitor.control("sleep") == {"builders": []}
    stranger.client.transport.loseConnection()
    stranger.pump.flush()
    monitor.settle(1)
    assert not monitor.of_type("builder_gone")
    assert monitor.messages[-1]["type"] != "builder"


def test_builds_of_the_last_hour_are_seeded_then_counted(tmp_path):
    now = datetime.now(timezone.utc)
    harness = ControlHarness(tmp_path, recent=[
        ("cp311", now - timedelta(minutes=50), True),
        ("cp311", now - timedelta(minutes=40), False),
        ("cp39", now - timedelta(minutes=5), True)])
    harness.clock.advance(now.timestamp())
    control = harness.control
    facts = control.master_facts()
    assert facts["builds_last_hour"] == {"cp311": 2, "cp39": 1}
    assert facts["successes_last_hour"] == {"cp311": 1, "cp39": 1}
    assert facts["last_build_at"] == pytest.approx(
        (now - timedelta(minutes=5)).timestamp())
    control.build_finished(BuildResult(
        package="foo", version="1.0", abi_tag="cp39", built_by=0,
        builder_label="import", duration=timedelta(seconds=1),
        status=True, output=""))
    assert control.master_facts()["builds_last_hour"]["cp39"] == 2
    harness.clock.advance(15 * 60)  # the first is more than an hour old
    assert control.master_facts()["builds_last_hour"] == {"cp311": 1,
                                                          "cp39": 2}
    harness.clock.advance(3600)
    assert control.master_facts()["builds_last_hour"] == {"cp311": 0,
                                                          "cp39": 0}
    control.stopService()


def test_build_log_tail_follows_busy_pings(harness):
    monitor = harness.monitor()
    monitor.login()
    builder = harness.connect()
    builder.login()
    builder_id = builder.server.info.builder_id
    assert monitor.call(proto.BuildLogTail, builder_id=builder_id)[
        "data"] == b""
    builder.idle()
    builder.call(builder_proto.Busy, log_tail=b"x" * 9000 + b"compiling",
                 **STATS)
    data = monitor.call(proto.BuildLogTail, builder_id=builder_id)["data"]
    assert data.endswith(b"compiling")
    assert len(data) == builder_proto.LOG_TAIL_BYTES
    with pytest.raises(proto.ControlRefused) as caught:
        monitor.call(proto.BuildLogTail, builder_id=99)
    assert "no builder 99" in str(caught.value)
    harness.hub.skip(builder_id)
    assert builder.busy() == builder_proto.STOP
    builder.report("foo", "1.0", False, reason="stopped")
    assert monitor.call(proto.BuildLogTail, builder_id=builder_id)[
        "data"] == b""


# controls ------------------------------------------------------------------

def test_pause_and_resume(harness):
    monitor = harness.monitor()
    monitor.subscribe()
    builder = harness.connect()
    builder.login()
    state = monitor.control("pause")
    assert state["master"]["paused"] is True
    assert harness.hub.paused and harness.follower.paused
    assert monitor.of_type("master")[-1]["master"]["paused"] is True
    assert builder.idle()["action"] == builder_proto.SLEEP
    assert harness.queue.held() == {}
    monitor.settle(1)
    assert monitor.of_type("builder")[-1]["builder"]["status"] == \
        "sleeping"
    state = monitor.control("resume")
    assert state["master"]["paused"] is False
    assert not harness.hub.paused and not harness.follower.paused
    assert builder.idle()["action"] == builder_proto.BUILD


def test_sleep_and_wake_one_builder_or_all(harness):
    monitor = harness.monitor()
    monitor.login()
    first, second = harness.connect(), harness.connect()
    first.login()
    second.login()
    first_id = first.server.info.builder_id
    (state,) = monitor.control("sleep", first_id)["builders"]
    assert state["builder_id"] == first_id and state["sleeping"] is True
    assert first.idle()["action"] == builder_proto.SLEEP
    assert second.idle()["action"] == builder_proto.BUILD
    states = monitor.control("sleep")["builders"]
    assert [s["sleeping"] for s in states] == [True, True]
    states = monitor.control("wake")["builders"]
    assert [s["sleeping"] for s in states] == [False, False]
    assert first.idle()["action"] == builder_proto.BUILD


def test_skip(harness):
    monitor = harness.monitor()
    monitor.login()
    builder = harness.connect()
    builder.login()
    builder_id = builder.server.info.builder_id
    with pytest.raises(proto.ControlRefused) as caught:
        monitor.control("skip", builder_id)
    assert "not building" in str(caught.value)
    monitor.control("skip")  # every builder: nothing to skip is fine
    work = builder.idle()
    monitor.control("skip", builder_id)
    assert builder.busy() == builder_proto.STOP
    builder.report(work["package"], "1.0", False, reason="stopped")
    assert harness.db.logged == []
    assert builder.idle()["action"] == builder_proto.BUILD


def test_kill_after_the_build_and_kill_now(harness):
    monitor = harness.monitor()
    monitor.login()
    patient, hasty = harness.connect(), harness.connect()
    patient.login()
    hasty.login()
    work = patient.idle()
    other = hasty.idle()
    (state,) = monitor.control("kill", patient.server.info.builder_id)[
        "builders"]
    assert state["kill_requested"] and not state["kill_now"]
    (state,) = monitor.control("kill_now", hasty.server.info.builder_id)[
        "builders"]
    assert state["kill_requested"] and state["kill_now"]
    assert patient.busy() == builder_proto.CONTINUE
    assert hasty.busy() == builder_proto.STOP
    patient.report(work["package"], "1.0", False, reason="exit status 1")
    hasty.report(other["package"], "1.0", False, reason="stopped")
    harness.clock.advance(0)
    assert patient.idle()["action"] == builder_proto.DIE
    assert hasty.idle()["action"] == builder_proto.DIE
    # the patient one's build was recorded; the hasty one's goes back
    assert [b.package for b in harness.db.logged] == [work["package"]]


def test_kill_every_builder(harness):
    monitor = harness.monitor()
    monitor.login()
    builders = [harness.connect() for _ in range(2)]
    for builder in builders:
        builder.login()
    states = monitor.control("kill")["builders"]
    assert [s["kill_requested"] for s in states] == [True, True]
    for builder in builders:
        assert builder.idle()["action"] == builder_proto.DIE


def test_terminate_once(harness):
    monitor = harness.monitor()
    monitor.subscribe()
    state = monitor.control("terminate")
    assert state["master"]["terminating"] is True
    assert monitor.of_type("bye")
    assert harness.stops == []  # the answer goes out first
    harness.clock.advance(0)
    assert harness.stops == [True]
    with pytest.raises(proto.ControlRefused) as caught:
        monitor.control("terminate")
    assert str(caught.value) == "the master is already terminating"
    with pytest.raises(proto.ControlRefused) as caught:
        monitor.control("resume")
    assert "terminating" in str(caught.value)
    harness.clock.advance(1)
    assert harness.stops == [True]


def test_refusals_say_why(harness):
    monitor = harness.monitor()
    monitor.login()
    builder = harness.connect()
    builder.login()
    refusals = {
        ("explode", None): "'explode' is not something the master can do",
        ("sleep", 99): "there is no builder 99",
        ("kill_now", 99): "there is no builder 99",
        ("pause", builder.server.info.builder_id):
            "pause acts on the whole master; give no builder id",
    }
    for (action, builder_id), sentence in refusals.items():
        with pytest.raises(proto.ControlRefused) as caught:
            monitor.control(action, builder_id)
        assert str(caught.value).startswith(sentence)
    assert not harness.hub.paused
    assert not builder.server.info.sleeping


def test_controls_are_streamed_to_every_subscriber(harness):
    watcher, actor = harness.monitor(), harness.monitor()
    watcher.subscribe()
    actor.login()
    builder = harness.connect()
    builder.login()
    actor.control("sleep", builder.server.info.builder_id)
    watcher.settle(1)
    assert watcher.of_type("builder")[-1]["builder"]["sleeping"] is True


# a monitor that cannot keep up ---------------------------------------------

def test_a_subscriber_that_stops_answering_is_dropped(harness):
    slow, healthy = harness.monitor(slow=True), harness.monitor()
    slow.subscribe()
    healthy.subscribe()
    for _ in range(proto.MAX_UNANSWERED + 2):
        slow.settle(2)
        healthy.pump.flush()
    assert slow.lost
    assert slow.server not in harness.control.subscribers
    assert healthy.server in harness.control.subscribers
    assert len(healthy.of_type("master")) > proto.MAX_UNANSWERED


def test_stopping_says_bye_and_closes(harness):
    monitor = harness.monitor()
    monitor.subscribe()
    harness.control.stopService()
    monitor.settle()
    assert monitor.messages[-1] == {"type": "bye",
                                    "reason": "the master is shutting down"}
    assert monitor.lost
    assert not harness.control._loop.running


# AMP's limit ---------------------------------------------------------------

def test_a_snapshot_of_200_builders_fits_in_amp_boxes(tmp_path):
    harness = ControlHarness(tmp_path, [entry(f"package-{n:03}")
                                        for n in range(200)])
    long = "x" * 200
    for n in range(200):
        builder = harness.connect()
        builder.login(label=f"builder-{n:03}-" + "l" * 80,
                      os_name="Raspberry Pi OS " + "o" * 80,
                      board_serial="0" * 64)
        builder.idle()
        builder.server.info.entry = attrs.evolve(
            builder.server.info.entry, package=long, version="1" * 200)
        harness.control._last_failures[builder.server.info.builder_id] = {
            "package": long, "version": "9" * 200, "reason": "r" * 500}
    snapshot = harness.control.snapshot()
    assert len(snapshot["builders"]) == 200
    pieces = proto.pieces(snapshot)
    assert len(pieces) > 1  # the test means something
    for index, data in enumerate(pieces):
        box = proto.Status.makeArguments(
            {"message_id": 1, "index": index, "count": len(pieces),
             "data": data}, None)
        amp.AmpBox(box).serialize()  # raises TooLong over 65,535 bytes
        assert all(len(value) <= 0xFFFF for value in box.values())
    reassembler = proto.Reassembler()
    results = [reassembler.add(1, i, len(pieces), p)
               for i, p in enumerate(pieces)]
    assert results[-1] == snapshot
    # a Control answered with every builder's state is split too
    state = proto.encode({"builders": snapshot["builders"]})
    assert len(state) > 0xFFFF
    box = amp.AmpBox()
    proto.Control.response[0][1].toBox(b"state", box, {"state": state},
                                       None)
    box.serialize()
    assert len(box) > 1
    again = {}
    proto.Control.response[0][1].fromBox(b"state", box, again, None)
    assert again == {"state": state}
    harness.control.stopService()


def test_a_control_of_200_builders_is_answered(tmp_path):
    """The answer to a control of every builder is longer than one AMP
    value may be."""
    harness = ControlHarness(tmp_path)
    for n in range(200):
        harness.connect().login(label=f"builder-{n:03}")
    monitor = harness.monitor()
    monitor.login()
    states = monitor.control("sleep")["builders"]
    assert len(states) == 200
    harness.control.stopService()


def test_builder_message_of_a_fresh_state():
    from piwtwist.master.builder_hub import BuilderState
    message = builder_message(BuilderState(builder_id=3))
    assert message["builder_id"] == 3 and message["stats"] is None
    assert message["sending"] is None and message["package"] is None
    assert set(message) >= {
        "label", "abi", "platform", "python", "os_name", "os_version",
        "board_revision", "board_serial", "address", "version",
        "connected_at", "last_seen", "busy_timeout", "build_timeout",
        "status", "sleeping", "kill_requested", "package_version",
        "task_started", "last_failure"}


# the database --------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_the_figures_from_the_database(db, test_db):
    test_db.sql("INSERT INTO packages (package) VALUES ('foo')")
    test_db.sql("INSERT INTO versions (package, version, released) "
                "VALUES ('foo', '1.0', now()), ('foo', '2.0', now())")
    await db.set_build_abis(["cp311", "cp39"])
    test_db.sql("INSERT INTO builds (package, version, built_by, built_at, "
                "duration, status, abi_tag) VALUES "
                "('foo', '1.0', 1, now() - interval '2 hours', "
                " interval '1 minute', true, 'cp311'), "
                "('foo', '1.0', 1, now() - interval '10 minutes', "
                " interval '1 minute', false, 'cp39')")
    test_db.sql("INSERT INTO downloads (filename, accessed_by, accessed_at) "
                "VALUES ('foo-1.0-cp311-cp311-linux_armv7l.whl', "
                "'127.0.0.1', now() - interval '5 minutes'), "
                "('foo-1.0-cp311-cp311-linux_armv7l.whl', '127.0.0.1', "
                "now() - interval '3 hours')")
    test_db.sql("SELECT rebuild_build_queue()")
    queue, downloads = await db.get_monitor_figures()
    assert downloads == 1
    assert set(queue) == {"cp311", "cp39"}
    assert all(isinstance(n, int) for n in queue.values())
    assert queue == await db.get_queue_lengths()
    recent = await db.get_recent_builds()
    assert [(abi, status) for abi, _, status in recent] == [("cp39", False)]
    assert recent[0][1].tzinfo is not None


# TLS -----------------------------------------------------------------------

class TLSMonitor(amp.AMP):
    @proto.Status.responder
    def status(self, message_id, index, count, data):
        return {}


@pytest_twisted.ensureDeferred
async def test_a_monitor_over_tls_with_the_secret(reactor, tmp_path):
    from tests.test_builder_tls import self_signed
    key_path, cert_path = self_signed(tmp_path)
    db = FiguresDatabase([entry("foo")])
    from piwtwist.master.build_queue import BuildQueue
    from piwtwist.master.builder_hub import BuilderHub
    queue = BuildQueue(db, reactor, size=10)
    hub = BuilderHub(db, queue, FakeReceiver(tmp_path), reactor, SECRET,
                     tmp_path, index_url="https://idx/")
    control = ControlHub(hub, queue, db, reactor, secret=SECRET,
                         output_path=tmp_path, abis=["cp311"])
    description = (f"ssl:0:interface=127.0.0.1:privateKey={key_path}:"
                   f"certKey={cert_path}")
    assert control_needs_authentication(description)
    for s in (queue, hub, control):
        s.startService()
    port = await endpoints.serverFromString(reactor, description).listen(
        control.factory(control_needs_authentication(description)))
    client = endpoints.clientFromString(
        reactor, f"tls:localhost:{port.getHost().port}:"
                 f"trustRoots={cert_path.parent}")
    try:
        # the right secret
        monitor = await client.connect(Factory.forProtocol(TLSMonitor))
        nonce = os.urandom(32)
        reply = await monitor.callRemote(proto.Hello, version=__version__,
                                         nonce=nonce)
        assert reply["authenticate"] is True
        assert reply["proof"] == proto.master_proof(SECRET, nonce)
        try:
            await monitor.callRemote(proto.Subscribe)
        except proto.NotAuthenticated:
            pass
        else:
            raise AssertionError("subscribed without the secret")
        await monitor.callRemote(proto.Authenticate, proof=proto.monitor_proof(
            SECRET, reply["challenge"]))
        state = proto.decode((await monitor.callRemote(
            proto.Control, action="pause"))["state"])
        assert state["master"]["paused"] is True and hub.paused
        monitor.transport.loseConnection()
        # a wrong one
        intruder = await client.connect(Factory.forProtocol(TLSMonitor))
        reply = await intruder.callRemote(proto.Hello, version=__version__,
                                          nonce=os.urandom(32))
        try:
            await intruder.callRemote(
                proto.Authenticate,
                proof=proto.monitor_proof(b"w" * 32, reply["challenge"]))
        except proto.AuthenticationFailed as e:
            assert "secret" in str(e)
        else:
            raise AssertionError("a wrong secret was accepted")
        try:
            await intruder.callRemote(proto.Control, action="resume")
        except Exception:
            pass  # refused, or already disconnected
        assert hub.paused
    finally:
        await port.stopListening()
        for s in (control, hub, queue):
            await s.stopService()


# a real master and builder -------------------------------------------------

class Watcher(amp.AMP):
    """A monitor's end over a real socket: keeps every message."""

    def __init__(self):
        super().__init__()
        self.messages = []
        self.reassembler = proto.Reassembler()

    @proto.Status.responder
    def status(self, message_id, index, count, data):
        message = self.reassembler.add(message_id, index, count, data)
        if message is not None:
            self.messages.append(message)
        return {}

    def builders(self):
        """The builders as the messages so far describe them."""
        builders = {}
        for message in self.messages:
            if message["type"] == "snapshot":
                builders = {b["builder_id"]: b for b in message["builders"]}
            elif message["type"] == "builder":
                builders[message["builder"]["builder_id"]] = \
                    message["builder"]
            elif message["type"] == "builder_gone":
                builders.pop(message["builder_id"], None)
        return builders

    def master(self):
        for message in reversed(self.messages):
            if message["type"] in ("snapshot", "master"):
                return message["master"]
        return None


@pytest_twisted.ensureDeferred
async def test_a_real_master_watched_and_steered_over_its_socket(
        reactor, deployment, package_index):
    from tests import sdists
    from tests.e2e import wait_for
    from tests.test_end_to_end import queue_release
    package_index.add(sdists.make_pure_sdist(package_index.sdist_dir,
                                             "piw-watched", "1.0"))
    queue_release(deployment.database, "piw-watched", "1.0", "2024-01-01Z")
    master = deployment.start_master()
    socket_path = deployment.control_socket
    await wait_for(reactor, socket_path.exists, 60,
                   f"the control socket {socket_path}\n{deployment.logs()}")
    assert oct(socket_path.stat().st_mode & 0o777) == "0o660"
    endpoint = endpoints.UNIXClientEndpoint(reactor, str(socket_path))
    watcher = await endpoint.connect(Factory.forProtocol(Watcher))
    try:
        reply = await watcher.callRemote(proto.Hello, version=__version__,
                                         nonce=os.urandom(32))
        assert reply["authenticate"] is False
        await watcher.callRemote(proto.Subscribe)
        await wait_for(reactor, watcher.master, 30, "the master's facts")
        assert watcher.master()["abis"] == [deployment.abi]
        assert watcher.master()["host"] == socket.gethostname()
        assert watcher.builders() == {}

        # paused: the builder appears, and sleeps instead of building
        state = proto.decode((await watcher.callRemote(
            proto.Control, action="pause"))["state"])
        assert state["master"]["paused"] is True
        deployment.start_builder("watched-1")

        def sleeping():
            return [b for b in watcher.builders().values()
                    if b["label"] == "watched-1" and
                    b["status"] == "sleeping"]

        (builder,) = await wait_for(reactor, sleeping, 120,
                                    "the builder to sleep")
        assert builder["abi"] == deployment.abi
        assert builder["stats"] and builder["stats"]["mem_total"] > 0
        await wait_for(reactor, lambda: watcher.master()["queue"].get(
            deployment.abi) == 1, 30, "the queue length")
        await task.deferLater(reactor, 5, lambda: None)  # two more Idles
        assert deployment.builds() == []
        assert sleeping()

        # resumed: it builds
        state = proto.decode((await watcher.callRemote(
            proto.Control, action="resume"))["state"])
        assert state["master"]["paused"] is False

        def built():
            return deployment.builds()

        await wait_for(reactor, built, 300, "the build")
        assert deployment.builds()[0][:3] == ("piw-watched", "1.0", True), \
            deployment.logs()
        seen = [m["builder"] for m in watcher.messages
                if m["type"] == "builder"]
        assert any(b["status"] == "building" and
                   b["package"] == "piw-watched" for b in seen)
        await wait_for(reactor, lambda: watcher.master()[
            "builds_last_hour"].get(deployment.abi) == 1, 30,
            "the build counted")

        # terminated: a clean exit, as on SIGTERM
        state = proto.decode((await watcher.callRemote(
            proto.Control, action="terminate"))["state"])
        assert state["master"]["terminating"] is True
        await wait_for(reactor, lambda: master.process.poll() is not None,
                       60, "the master to exit")
        assert master.process.returncode == 0, master.output()
        log = master.log()
        assert "Server Shut Down." in log and "Traceback" not in log, log
        assert any(m["type"] == "bye" for m in watcher.messages)
    finally:
        if watcher.transport is not None:
            watcher.transport.loseConnection()


# what builders send ----------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_running_build_shows_the_end_of_its_log(reactor, tmp_path):
    from piwtwist.builder.sandbox import start_build
    from tests.e2e import wait_for
    from tests.test_builder_sandbox import fake_python
    python = fake_python(tmp_path, (
        "i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done; "
        "echo the last line; sleep 3600"))
    build = start_build(reactor, "x", "1.0", "file:///nowhere/",
                        tmp_path / "build", timeout=3600, python=python,
                        bwrap=None)
    try:
        async def tail():
            return await build.tail(builder_proto.LOG_TAIL_BYTES)

        tails = []

        def ended():
            d = defer.ensureDeferred(tail())
            d.addCallback(tails.append)
            return tails and tails[-1].endswith(b"the last line\n")

        await wait_for(reactor, ended, 30, "the log's last line")
        assert len(tails[-1]) == builder_proto.LOG_TAIL_BYTES
        assert (await build.tail(10)) == b"last line\n"
    finally:
        outcome = await build.stop()
    assert (await build.tail(100)) == b""
    assert "the last line" in outcome.output


def test_builders_report_swap(tmp_path):
    from piwtwist.builder import machine
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text(
        "MemTotal: 1000 kB\nMemAvailable: 500 kB\n"
        "SwapTotal: 200 kB\nSwapFree: 50 kB\n")
    assert machine.read_swap(tmp_path) == (200 * 1024, 50 * 1024)
    stats = machine.machine_stats(tmp_path, root=tmp_path)
    assert (stats.swap_total, stats.swap_free) == (200 * 1024, 50 * 1024)
    (tmp_path / "proc" / "meminfo").write_text("MemTotal: 1000 kB\n")
    assert machine.read_swap(tmp_path) == (None, None)


def test_builders_ping_often_while_building_within_the_watchdog():
    from piwtwist.builder.client import BuilderService
    endpoint = endpoints.TCP4ClientEndpoint(task.Clock(), "127.0.0.1", 1)
    for busy_timeout, interval in ((300.0, 5.0), (10.0, 2.0), (2.0, 1.0)):
        builder = BuilderService(task.Clock(), endpoint, SECRET, "/tmp",
                                 busy_timeout=busy_timeout)
        assert builder.ping_interval == interval


def test_a_busy_ping_with_a_log_tail_fits_in_a_box():
    box = builder_proto.Busy.makeArguments(
        dict(STATS, swap_total=1, swap_free=1,
             log_tail=b"\xff" * builder_proto.LOG_TAIL_BYTES), None)
    amp.AmpBox(box).serialize()
