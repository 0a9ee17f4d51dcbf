"""piw-monitor without a terminal: the model with a fake clock, the
widgets rendered at fixed sizes and read as text, and the connection
against a fake master speaking the control protocol over a real UNIX
socket."""

import os

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, task
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from piwtwist.monitor import cli, widgets
from piwtwist.monitor.app import MonitorApp
from piwtwist.monitor.connection import MasterConnection, NotConnected
from piwtwist.monitor.model import Model
from piwtwist.protocol import control as proto

START = 1_700_000_000.0


def master_facts(**changes):
    facts = dict(
        version="0.2", host="pimaster", started=START - 3600, now=START,
        abis=["cp311", "cp39"], paused=False, pypi_serial=25_000_000,
        pypi_behind=3, queue={"cp311": 12, "cp39": 0},
        builds_last_hour={"cp311": 4, "cp39": 0},
        successes_last_hour={"cp311": 3, "cp39": 0},
        downloads_last_hour=120, last_build_at=START - 300,
        disk_total=1000 * 2**30, disk_free=400 * 2**30,
        load=[0.5, 0.4, 0.3], cpu_count=4, mem_total=4 * 2**30,
        mem_free=2 * 2**30, swap_total=2**30, swap_free=2**30,
        cpu_temperature=48.0)
    facts.update(changes)
    return facts


def builder_facts(builder_id, label, abi="cp311", **changes):
    facts = dict(
        builder_id=builder_id, label=label, abi=abi,
        platform="linux_armv7l", python="py311", os_name="Raspbian",
        os_version="12", board_revision="c03114", board_serial="00c0ffee",
        address="10.0.0.7", version="0.2", connected_at=START - 600,
        last_seen=START - 5, busy_timeout=300.0, build_timeout=10800.0,
        status="idle", sleeping=False, kill_requested=False, package=None,
        package_version=None, task_started=None, sending=None,
        last_failure=None,
        stats=dict(timestamp=START - 5, disk_total=32 * 2**30,
                   disk_free=20 * 2**30, mem_total=2**30, mem_free=2**29,
                   swap_total=2**28, swap_free=2**28, load_average=1.5,
                   cpu_temperature=55.0))
    facts.update(changes)
    return facts


def building(builder_id, label, abi="cp311", **changes):
    facts = dict(status="building", package="numpy",
                 package_version="2.1.3", task_started=START - 125)
    facts.update(changes)
    return builder_facts(builder_id, label, abi, **facts)


def snapshot(*builders, **master):
    return {"type": "snapshot", "master": master_facts(**master),
            "builders": list(builders)}


@pytest.fixture
def clock():
    clock = task.Clock()
    clock.advance(START)
    return clock


@pytest.fixture
def model(clock):
    return Model(clock)


# the model ------------------------------------------------------------------


def test_snapshot_rows_master_first_then_abi_and_label(model):
    model.apply(snapshot(building(3, "zeta"), builder_facts(1, "beta"),
                         builder_facts(2, "alpha", abi="cp39")))
    assert [(row.kind, row.key) for row in model.rows()] == [
        ("master", None), ("builder", 1), ("builder", 3), ("builder", 2)]
    assert model.connected
    assert [model.state(row) for row in model.rows()] == [
        "idle", "idle", "building", "idle"]


def test_changes_update_rows_and_tell_listeners(model, clock):
    heard = []
    model.listeners.append(lambda: heard.append(True))
    model.apply(snapshot(builder_facts(1, "pi-a")))
    model.apply({"type": "builder", "builder": building(1, "pi-a")})
    model.apply({"type": "builder", "builder": builder_facts(2, "pi-b")})
    assert model.task_text(model.builders[1]) == "Building numpy 2.1.3"
    assert model.task_time(model.builders[1]) == 125
    assert model.up_time(model.builders[1]) == 600
    model.apply({"type": "master", "master": master_facts(paused=True)})
    assert model.paused
    assert model.task_text(model.master).startswith("Paused; 12 queued")
    assert len(heard) == 4

    model.apply({"type": "builder_gone", "builder_id": 2})
    assert model.state(model.builders[2]) == "dead"
    clock.advance(299)
    model.expire()
    assert 2 in model.builders
    clock.advance(2)
    assert model.expire()
    assert 2 not in model.builders


def test_task_texts(model):
    sending = building(1, "pi", status="sending", sending=dict(
        filename="numpy-2.1.3-cp311-cp311-linux_armv7l.whl",
        size=2000, received=900))
    model.apply(snapshot(sending))
    row = model.builders[1]
    assert model.task_text(row) == \
        "Sending numpy-2.1.3-cp311-cp311-linux_armv7l.whl 45%"
    for status, text in (("idle", "Idle"), ("cleaning", "Cleaning up"),
                         ("sleeping", "Sleeping"),
                         ("recording", "Recording numpy 2.1.3")):
        row.data.update(status=status)
        assert model.task_text(row) == text
    row.data.update(status="building", kill_requested=True)
    assert model.task_text(row) == \
        "Building numpy 2.1.3 (stops after this build)"
    row.data.update(kill_now=True)
    assert model.task_text(row) == "Building numpy 2.1.3 (being stopped now)"
    row.data.update(status="idle", sleeping=True, kill_requested=False,
                    kill_now=False)
    assert model.task_text(row) == "Sleeping"
    assert model.state(row) == "sleeping"


def test_master_time_is_estimated_from_its_messages(model, clock):
    # the monitor's clock is an hour ahead of the master's
    clock.advance(3600)
    model.apply(snapshot(building(1, "pi")))
    assert model.task_time(model.builders[1]) == 125
    clock.advance(10)
    assert model.task_time(model.builders[1]) == 135


@pytest.mark.parametrize("stats, alert", [
    (dict(disk_free=2 * 2**30), "disk 6% free"),
    (dict(mem_free=2**26), "memory 6% free"),
    (dict(swap_free=2**26), "swap 25% free"),
    (dict(load_average=4.5), "load 4.5 on 4 cores"),
    (dict(cpu_temperature=79.0), "79°C"),
])
def test_builder_machine_alerts(model, stats, alert):
    facts = builder_facts(1, "pi")
    facts["stats"].update(stats)
    model.apply(snapshot(facts))
    row = model.builders[1]
    assert model.alerts(row) == [alert]
    assert model.state(row) == "alert"


def test_no_alerts_on_a_healthy_machine_without_swap(model):
    facts = builder_facts(1, "pi")
    facts["stats"].update(swap_total=0, swap_free=0, load_average=4.0,
                          cpu_temperature=78.0)
    model.apply(snapshot(facts))
    assert model.alerts(model.builders[1]) == []
    assert model.alerts(model.master) == []


def test_builder_silent_for_half_its_busy_timeout(model, clock):
    model.apply(snapshot(building(1, "pi", last_seen=START - 10)))
    clock.advance(139)
    assert model.alerts(model.builders[1]) == []
    clock.advance(2)
    assert model.alerts(model.builders[1]) == ["silent for 2m31s"]


def test_master_alerts(model, clock):
    model.apply(snapshot(load=[5.0, 1, 1]))
    assert model.alerts(model.master) == ["load 5.0 on 4 cores"]
    model.apply(snapshot())
    clock.advance(31)
    assert model.alerts(model.master) == ["silent for 31s"]
    model.apply({"type": "master", "master": master_facts(
        now=START + 31, builds_last_hour={}, last_build_at=START - 3600)})
    assert model.alerts(model.master) == [
        "no build finished in the last hour"]
    # nothing waits: nothing to build is no alert
    model.apply({"type": "master", "master": master_facts(
        now=START + 31, builds_last_hour={}, last_build_at=START - 3600,
        queue={"cp311": 0})})
    assert model.alerts(model.master) == []
    # a master that just started has had no chance yet
    model.apply({"type": "master", "master": master_facts(
        now=START + 31, builds_last_hour={}, last_build_at=None,
        started=START - 60)})
    assert model.alerts(model.master) == []


def test_histories_keep_ten_minutes(model, clock):
    for minute in range(15):
        facts = builder_facts(1, "pi")
        facts["stats"].update(timestamp=START + 60 * minute,
                              load_average=float(minute))
        model.apply({"type": "builder", "builder": facts})
        # the same stats again add nothing
        model.apply({"type": "builder", "builder": facts})
        clock.advance(60)
    assert model.builders[1].history.series("load") == [
        float(m) for m in range(4, 15)]
    assert model.builders[1].history.series("memory")[-1] == 0.5


def test_a_lost_connection_makes_everything_dead(model):
    model.apply(snapshot(builder_facts(1, "pi")))
    model.connection_lost()
    assert not model.connected
    assert {model.state(row) for row in model.rows()} == {"dead"}
    assert model.task_text(model.master) == "Not connected"
    # a new snapshot replaces the picture
    model.apply(snapshot(builder_facts(2, "pi-2")))
    assert list(model.builders) == [2]
    assert model.state(model.master) == "idle"


# widgets --------------------------------------------------------------------


def text_of(widget, cols, rows=None):
    size = (cols,) if rows is None else (cols, rows)
    return [line.decode("utf-8") for line in widget.render(size).text]


def test_sparkline():
    assert widgets.sparkline([0, 1, 2, 3, 4, 5, 6, 7], 8) == "▁▂▃▄▅▆▇█"
    assert widgets.sparkline([None, 0.5, 1.0], 5, 0.0, 1.0) == "   ▅█"
    assert widgets.sparkline([], 3) == "   "
    assert widgets.sparkline([2, 2], 2) == "▁▁"


def test_table_rows_as_text(model):
    sending = building(2, "pi-b", status="sending", sending=dict(
        filename="numpy-2.1.3-cp311-cp311-linux_armv7l.whl", size=100,
        received=45))
    hot = builder_facts(3, "pi-c", abi="cp39")
    hot["stats"]["cpu_temperature"] = 80.0
    model.apply(snapshot(building(1, "pi-a"), sending, hot,
                         builder_facts(4, "pi-d", status="sleeping",
                                       sleeping=True)))
    table = widgets.Table()
    table.update(model)
    assert [line.rstrip() for line in text_of(table, 100, 6)] == [
        "  id   label          abi      up      task    doing",
        "       master         cp311,cp 1h00m           Running; 12 "
        "queued, 4 built in the last hour",
        "* 1    pi-a           cp311    10m00s  2m05s   Building numpy 2.1.3",
        "> 2    pi-b           cp311    10m00s  2m05s   Sending "
        "numpy-2.1.3-cp311-cp311-linux_armv7l.whl 45%",
        "z 4    pi-d           cp311    10m00s          Sleeping",
        "! 3    pi-c           cp39     10m00s          Idle [80°C]",
    ]
    assert table.selected == (True, None)
    assert table.select(4)
    model.apply({"type": "builder_gone", "builder_id": 1})
    table.update(model)
    assert table.selected == (True, 4)
    assert text_of(table, 100, 6)[2].startswith("x 1    pi-a")


def test_header_says_paused_and_waiting(model):
    def header(waiting=None):
        return text_of(urwid_text(widgets.header_markup(model, waiting)),
                       80)[0].rstrip()
    assert header("Waiting for the master at unix:/tmp/piw-control") == \
        " Waiting for the master at unix:/tmp/piw-control"
    model.apply(snapshot(builder_facts(1, "pi")))
    assert header() == (" piw-monitor: master pimaster, piwtwist 0.2, up "
                        "1h00m, 1 builder(s)")
    model.apply({"type": "master", "master": master_facts(paused=True)})
    assert header().startswith(" PAUSED  piw-monitor: master pimaster")


def urwid_text(markup):
    import urwid
    return urwid.Text(markup, wrap="clip")


def test_detail_pane_of_master_and_builder(model, clock):
    model.apply(snapshot(building(1, "pi-a")))
    for minute in range(1, 6):
        facts = building(1, "pi-a")
        facts["stats"].update(timestamp=START + minute,
                              load_average=float(minute))
        model.apply({"type": "builder", "builder": facts})
    detail = widgets.Detail()
    detail.update(model, model.master)
    lines = [line.rstrip() for line in text_of(detail, 120)]
    assert lines[1].startswith("master pimaster, piwtwist 0.2, up 1h00m")
    assert "Queue: cp311 12, cp39 0" in lines[4]
    assert "Builds last hour: cp311 4, cp39 0 (75% succeeded)" in lines[5]
    assert "Downloads last hour: 120" in lines[6]
    assert "Output disk: 400.0G of 1000.0G free" in lines[7]
    detail.update(model, model.builders[1])
    lines = [line.rstrip() for line in text_of(detail, 120)]
    assert "builder 1 pi-a at 10.0.0.7, piwtwist 0.2" in lines[1]
    assert "cp311 linux_armv7l py311, Raspbian 12, board c03114" in lines[2]
    assert "Doing: Building numpy 2.1.3" in lines[4]
    load = next(line for line in lines if "load " in line[70:])
    assert load.endswith("▃▂▄▅▇█  5.0"), load


def test_the_masters_reactor_stalls_in_its_details_and_alerts(model):
    model.apply(snapshot())
    detail = widgets.Detail()
    detail.update(model, model.master)
    lines = [line.rstrip() for line in text_of(detail, 120)]
    assert any("Reactor stalls: not measured" in line for line in lines)
    model.apply({"type": "master", "master": master_facts(
        reactor_stall=0.012, reactor_stall_worst=0.34,
        reactor_stall_worst_at=START - 125, gc_pause=0.008)})
    detail.update(model, model.master)
    lines = [line.rstrip() for line in text_of(detail, 120)]
    assert any("Reactor stalls: 12 ms last minute, worst 340 ms (2m05s "
               "ago), GC 8 ms" in line for line in lines), lines
    assert model.alerts(model.master) == []
    model.apply({"type": "master", "master": master_facts(
        reactor_stall=1.5, reactor_stall_worst=1.5,
        reactor_stall_worst_at=START)})
    assert model.alerts(model.master) == ["reactor held up 1.50 s"]
    detail.update(model, model.master)
    lines = [line.rstrip() for line in text_of(detail, 120)]
    assert any(line.endswith("Reactor stalls: 1.50 s last minute, "
                             "worst 1.50 s") for line in lines), lines
    assert any("ALERT: reactor held up 1.50 s" in line for line in lines)


def test_detail_pane_shows_the_class_of_a_builders_last_failure(model):
    model.apply(snapshot(builder_facts(1, "pi-a", last_failure={
        "package": "cffi", "version": "1.0", "reason": "exit status 1",
        "failure_class": "missing-header"})))
    detail = widgets.Detail()
    detail.update(model, model.builders[1])
    lines = [line.rstrip() for line in text_of(detail, 120)]
    assert any("Last failure: cffi 1.0: [missing-header] exit status 1"
               in line for line in lines), lines


def test_log_tail_shows_the_newest_lines():
    tail = widgets.LogTail()
    assert text_of(tail, 50, 3)[0].rstrip() == \
        "Select a builder to follow its build log"
    tail.show("Build log of builder 1", [f"line {n}" for n in range(10)])
    assert [line.rstrip() for line in text_of(tail, 50, 4)] == [
        "Build log of builder 1", "line 7", "line 8", "line 9"]


class FakeConnection:
    connected = True

    def __init__(self):
        self.controls = []
        self.tails = []
        self.refuse = None

    async def control(self, action, builder_id=None):
        self.controls.append((action, builder_id))
        if self.refuse:
            raise proto.ControlRefused(self.refuse)
        return {}

    async def build_log_tail(self, builder_id):
        self.tails.append(builder_id)
        return "Collecting numpy\nBuilding wheel for numpy\n"


@pytest.fixture
def app(model, clock):
    connection = FakeConnection()
    quits = []
    app = MonitorApp(model, connection, clock,
                     on_quit=lambda: quits.append(True))
    app.quits = quits
    app.fake = connection
    model.apply(snapshot(building(1, "pi-a"), builder_facts(2, "pi-b")))
    app.start()
    yield app
    app.stop()
    assert not clock.getDelayedCalls()


def screen(app, cols=110, rows=30):
    return [line.rstrip() for line in text_of(app.top, cols, rows)]


def test_app_screen(app):
    lines = screen(app)
    assert lines[0].startswith(" piw-monitor: master pimaster")
    assert lines[1].startswith("  id   label")
    assert lines[3].startswith("* 1    pi-a           cp311")
    assert lines[-1].startswith("p pause  r resume  s sleep")
    assert "Select a builder to follow its build log" in lines


def test_keys_send_controls(app):
    app.handle_key("p")
    app.handle_key("r")
    assert app.fake.controls == [("pause", None), ("resume", None)]
    assert screen(app)[-2] == "The master is running."
    # s/w on the master's row: every builder; x/k need a builder
    app.handle_key("s")
    app.handle_key("k")
    assert app.fake.controls[-1] == ("sleep", None)
    assert screen(app)[-2].startswith("Select a builder first")
    app.table.select(1)
    for key in "swxk":
        app.handle_key(key)
    assert app.fake.controls[-4:] == [
        ("sleep", 1), ("wake", 1), ("skip", 1), ("kill", 1)]
    assert screen(app)[-2] == \
        "Builder 1 (pi-a) will stop after its current build."


def test_terminate_and_kill_now_ask_first(app):
    app.handle_key("t")
    assert any("Terminate the master?" in line for line in screen(app))
    app.handle_key("n")
    assert app.fake.controls == []
    assert screen(app)[-2] == "Nothing was done."
    app.handle_key("t")
    app.handle_key("y")
    assert app.fake.controls == [("terminate", None)]
    app.table.select(2)
    app.handle_key("K")
    assert any("Stop builder 2 now" in line for line in screen(app))
    app.handle_key("y")
    assert app.fake.controls[-1] == ("kill_now", 2)


def test_refused_control_shows_its_sentence(app):
    app.fake.refuse = "builder 2 is gone"
    app.table.select(2)
    app.handle_key("x")
    assert screen(app)[-2] == "Refused: builder 2 is gone"


def test_menu_help_and_quit(app):
    app.table.select(1)
    app.handle_key("enter")
    lines = screen(app)
    assert any("Builder 1" in line for line in lines)
    assert any("< Kill now " in line for line in lines)
    app.top.keypress((110, 30), "down")
    app.top.keypress((110, 30), "enter")  # Wake
    assert app.fake.controls == [("wake", 1)]
    assert app.modal is None
    app.handle_key("?")
    assert any("kill the selected builder now" in line
               for line in screen(app))
    app.handle_key("esc")
    assert app.modal is None
    app.handle_key("q")
    assert app.quits == [True]


def test_build_log_followed_every_two_seconds(app, clock):
    assert app.fake.tails == []
    app.table.select(1)
    assert app.fake.tails == [1]
    lines = screen(app)
    assert "Build log of builder 1 (pi-a): Building numpy 2.1.3" in lines
    assert lines[lines.index("Building wheel for numpy") - 1] == \
        "Collecting numpy"
    clock.advance(2)
    clock.advance(2)
    assert app.fake.tails == [1, 1, 1]
    app.table.select(None)
    clock.advance(2)
    assert app.fake.tails == [1, 1, 1]
    assert "Select a builder to follow its build log" in screen(app)


# the connection, against a fake master over a real socket -------------------


class FakeMasterProtocol(amp.AMP):
    def __init__(self, master):
        super().__init__()
        self.master = master
        self.challenge = os.urandom(32)
        self.authenticated = False

    def connectionMade(self):
        super().connectionMade()
        self.master.connections.append(self)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.master.connections.remove(self)
        if self in self.master.subscribers:
            self.master.subscribers.remove(self)

    @proto.Hello.responder
    def hello(self, version, nonce):
        secret = self.master.secret
        return dict(challenge=self.challenge,
                    proof=proto.master_proof(secret, nonce)
                    if secret and self.master.prove else b"",
                    authenticate=self.master.authenticate,
                    master_version="0.2")

    @proto.Authenticate.responder
    def authenticate(self, proof):
        if not proto.proofs_match(
                proto.monitor_proof(self.master.secret, self.challenge),
                proof):
            raise proto.AuthenticationFailed("wrong secret")
        self.authenticated = True
        return {}

    def _check(self):
        if self.master.authenticate and not self.authenticated:
            raise proto.NotAuthenticated("prove it first")

    @proto.Subscribe.responder
    def subscribe(self):
        self._check()
        self.master.subscribers.append(self)
        from twisted.internet import reactor
        reactor.callLater(0, self.master.send, self.master.snapshot, [self])
        return {}

    @proto.Control.responder
    def control(self, action, builder_id=None):
        self._check()
        if action in proto.MASTER_ACTIONS:
            self.master.paused = action == proto.PAUSE
            return {"state": proto.encode(
                {"master": master_facts(paused=self.master.paused)})}
        if builder_id not in (None, 1):
            raise proto.ControlRefused(f"there is no builder {builder_id}")
        return {"state": proto.encode({"builders": [builder_facts(
            1, "pi-a", sleeping=action == proto.SLEEP)]})}

    @proto.BuildLogTail.responder
    def build_log_tail(self, builder_id):
        self._check()
        return {"data": b"Building wheel for numpy (pyproject.toml)\n"}


class FakeMaster:
    """Enough of the control hub to test a monitor against."""

    def __init__(self, reactor, path, secret=None, authenticate=False):
        self.reactor = reactor
        self.path = path
        self.secret = secret
        self.authenticate = authenticate
        self.prove = True
        self.paused = False
        self.connections = []
        self.subscribers = []
        self.snapshot = snapshot(building(1, "pi-a"))
        self.port = None

    def listen(self):
        self.port = self.reactor.listenUNIX(
            str(self.path), Factory.forProtocol(
                lambda: FakeMasterProtocol(self)))

    async def stop(self):
        for connection in list(self.connections):
            connection.transport.loseConnection()
        await self.port.stopListening()

    def send(self, message, to=None):
        parts = proto.pieces(message)
        for subscriber in (to or self.subscribers):
            for index, data in enumerate(parts):
                subscriber.callRemote(
                    proto.Status, message_id=1, index=index,
                    count=len(parts), data=data).addErrback(lambda f: None)


async def until(reactor, condition, timeout=5.0):
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("timed out")


@pytest.fixture
def fake_master(reactor, tmp_path):
    master = FakeMaster(reactor, tmp_path / "control.sock")
    yield master


def connect_monitor(reactor, master, secret=None, address=None):
    model = Model(reactor)
    states = []
    address = address or f"unix:{master.path}"
    link = MasterConnection(
        reactor, endpoints.clientFromString(reactor, address), address,
        model, secret=secret, on_state=states.append, initial_delay=0.05,
        max_delay=0.2)
    link.states = states
    link.startService()
    return link, model


@pytest_twisted.ensureDeferred
async def test_connects_late_subscribes_and_reconnects(reactor, fake_master):
    link, model = connect_monitor(reactor, fake_master)
    try:
        await task.deferLater(reactor, 0.2, lambda: None)
        assert link.states[-1] == \
            f"Waiting for the master at unix:{fake_master.path}"
        assert not link.connected
        fake_master.listen()
        await until(reactor, lambda: 1 in model.builders)
        assert link.states[-1] is None
        assert model.task_text(model.builders[1]) == "Building numpy 2.1.3"

        # 200 builders: a snapshot bigger than one AMP value
        many = [building(n, f"builder-{n:03d}", os_name="x" * 300)
                for n in range(1, 201)]
        big = snapshot(*many)
        assert len(proto.pieces(big)) > 1
        fake_master.send(big)
        await until(reactor, lambda: len(model.builders) == 200)

        state = await link.control(proto.PAUSE)
        assert state["master"]["paused"] and model.paused
        await link.control(proto.SLEEP, 1)
        assert model.state(model.builders[1]) == "sleeping"
        with pytest.raises(proto.ControlRefused, match="no builder 9"):
            await link.control(proto.SKIP, 9)
        assert "Building wheel" in await link.build_log_tail(1)

        # the master goes away, and comes back
        await fake_master.stop()
        await until(reactor, lambda: not model.connected)
        assert link.states[-1].startswith("Waiting for the master")
        assert model.state(model.builders[1]) == "dead"
        with pytest.raises(NotConnected):
            await link.control(proto.RESUME)
        fake_master.snapshot = snapshot(builder_facts(700, "pi-new"))
        fake_master.listen()
        await until(reactor, lambda: 700 in model.builders)
        assert model.connected and list(model.builders) == [700], link.states
    finally:
        await link.stopService()
        if fake_master.port is not None and fake_master.port.connected:
            await fake_master.stop()


@pytest.mark.parametrize("secret, master_secret, sentence", [
    (b"b" * 32, b"a" * 32, "does not know our secret"),
    (None, b"a" * 32, "asks for the shared secret; give --secret-file"),
])
@pytest_twisted.ensureDeferred
async def test_secret_problems_are_one_sentence(reactor, fake_master, secret,
                                                master_secret, sentence):
    fake_master.secret = master_secret
    fake_master.authenticate = True
    fake_master.listen()
    link, model = connect_monitor(reactor, fake_master, secret=secret)
    try:
        await until(reactor, lambda: link.states[-1] and
                    sentence in link.states[-1])
        assert link.states[-1].startswith(
            f"Waiting for the master at unix:{fake_master.path}: ")
        assert not model.connected
    finally:
        await link.stopService()
        await fake_master.stop()


@pytest_twisted.ensureDeferred
async def test_a_refused_proof_and_the_right_secret(reactor, fake_master):
    # a master that proves nothing but checks our proof
    fake_master.secret = b"a" * 32
    fake_master.authenticate = True
    fake_master.prove = False
    fake_master.listen()
    link, model = connect_monitor(reactor, fake_master, secret=b"b" * 32)
    try:
        await until(reactor, lambda: link.states[-1] and
                    "refused our secret" in link.states[-1])
    finally:
        await link.stopService()
    link, model = connect_monitor(reactor, fake_master, secret=b"a" * 32)
    try:
        await until(reactor, lambda: 1 in model.builders)
    finally:
        await link.stopService()
        await fake_master.stop()


@pytest_twisted.ensureDeferred
async def test_a_silent_master_is_dropped_and_reconnected(reactor, clock):
    # everything on a fake clock: the socket is an in-memory one
    from twisted.test import proto_helpers

    class Endpoint:
        def __init__(self):
            self.protocols = []

        def connect(self, factory):
            protocol = factory.buildProtocol(None)
            transport = proto_helpers.StringTransportWithDisconnection()
            transport.protocol = protocol
            protocol.makeConnection(transport)
            self.protocols.append((protocol, transport))
            return defer.succeed(protocol)

    endpoint = Endpoint()
    model = Model(clock)
    link = MasterConnection(clock, endpoint, "tcp:pimaster:5559", model)
    async def greet(connection):
        link.protocol = connection
        connection.subscribed = True
        link.last_heard = clock.seconds()

    link._greet = greet
    link.startService()
    protocol, transport = endpoint.protocols[0]
    clock.advance(30)
    assert transport.connected
    clock.advance(30)
    assert not transport.connected
    assert "fell silent" in link.waiting_text()
    clock.advance(1)
    assert len(endpoint.protocols) == 2
    await link.stopService()
    for call in clock.getDelayedCalls():
        call.cancel()


# the command line -----------------------------------------------------------


def test_options(tmp_path, secret_file):
    options = cli.Options()
    options.parseOptions(["-c", os.devnull])
    assert options["control-queue"] == "unix:/tmp/piw-control"
    assert options["secret"] is None
    options = cli.Options()
    options.parseOptions(["-c", os.devnull, "--control-queue",
                          "tls:pimaster:5559", "--secret-file",
                          str(secret_file)])
    assert options["secret"] == b"x" * 40
    os.chmod(secret_file, 0o644)
    with pytest.raises(cli.usage.UsageError, match="readable by every"):
        cli.Options().parseOptions(["-c", os.devnull, "--control-queue",
                                    "tcp:pimaster:5559", "--secret-file",
                                    str(secret_file)])


def test_bad_endpoint_is_a_usage_error(capsys):
    assert cli.main(["-c", os.devnull, "--control-queue", "nonsense:x"]) \
        == 2
    assert "is not an endpoint description" in capsys.readouterr().err


# remote: the real control hub over TLS ---------------------------------------


@pytest.mark.parametrize("secret, expected", [
    (None, "connected"),
    (b"w" * 32, "does not know our secret"),
])
@pytest_twisted.ensureDeferred
async def test_remote_master_over_tls(reactor, tmp_path, secret, expected):
    from piwtwist.master.build_queue import BuildQueue
    from piwtwist.master.builder_hub import BuilderHub
    from piwtwist.master.control_hub import (ControlHub,
                                             control_needs_authentication)
    from tests.test_builder_tls import self_signed
    from tests.test_builder_hub import SECRET, FakeReceiver, entry
    from tests.test_control_hub import FiguresDatabase
    key_path, cert_path = self_signed(tmp_path)
    db = FiguresDatabase([entry("foo")])
    queue = BuildQueue(db, reactor, size=10)
    hub = BuilderHub(db, queue, FakeReceiver(tmp_path), reactor, SECRET,
                     tmp_path, index_url="https://idx/")
    control = ControlHub(hub, queue, db, reactor, secret=SECRET,
                         output_path=tmp_path, abis=["cp311"])
    listen = (f"ssl:0:interface=127.0.0.1:privateKey={key_path}:"
              f"certKey={cert_path}")
    for s in (queue, hub, control):
        s.startService()
    port = await endpoints.serverFromString(reactor, listen).listen(
        control.factory(control_needs_authentication(listen)))
    address = (f"tls:localhost:{port.getHost().port}:"
               f"trustRoots={cert_path.parent}")
    model = Model(reactor)
    states = []
    link = MasterConnection(
        reactor, endpoints.clientFromString(reactor, address), address,
        model, secret=secret or SECRET, on_state=states.append,
        initial_delay=0.05, max_delay=0.2)
    link.startService()
    try:
        if expected == "connected":
            await until(reactor, lambda: model.master is not None)
            assert states[-1] is None
            await link.control(proto.PAUSE)
            assert hub.paused and model.paused
        else:
            await until(reactor, lambda: states[-1] and expected in
                        states[-1])
            assert states[-1] == (
                f"Waiting for the master at {address}: the master at the "
                f"other end does not know our secret; not talking to it")
            assert model.master is None and not hub.paused
    finally:
        await link.stopService()
        await port.stopListening()
        for s in (control, hub, queue):
            await s.stopService()
