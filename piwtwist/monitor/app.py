"""The monitor's screen and keys: puts the widgets together, turns keys
into controls for the master, and follows the selected builder's build
log.  The connection is anything with ``control(action, builder_id)`` and
``build_log_tail(builder_id)`` coroutines and a ``connected`` flag (see
:class:`~piwtwist.monitor.connection.MasterConnection`)."""

import urwid
from twisted.internet import defer
from twisted.logger import Logger

from ..protocol import control as proto
from . import model as m
from . import widgets as w
from .connection import NotConnected

#: How often the build log tail is fetched while a builder is selected.
LOG_POLL_SECONDS = 2.0
#: How often ages and durations on screen move on without news.
TICK_SECONDS = 1.0
LOG_LINES = 200

_DONE = {
    proto.PAUSE: "The master is paused: it hands out no builds and its "
                 "builders sleep.",
    proto.RESUME: "The master is running.",
    proto.TERMINATE: "The master is shutting down.",
    proto.SLEEP: "{who} will sleep.",
    proto.WAKE: "{who} woke up.",
    proto.SKIP: "{who} skips its current build.",
    proto.KILL: "{who} will stop after its current build.",
    proto.KILL_NOW: "{who} is being stopped now.",
}

_BUILDER_KEYS = {"s": proto.SLEEP, "w": proto.WAKE, "x": proto.SKIP,
                 "k": proto.KILL, "K": proto.KILL_NOW}
_MENU_LABELS = {
    proto.PAUSE: "Pause the master", proto.RESUME: "Resume the master",
    proto.TERMINATE: "Terminate the master",
    proto.SLEEP: "Sleep", proto.WAKE: "Wake", proto.SKIP: "Skip the build",
    proto.KILL: "Kill after this build", proto.KILL_NOW: "Kill now",
}


class MonitorApp:
    """Everything on screen; ``top`` is the widget for urwid's MainLoop and
    :meth:`handle_key` its ``unhandled_input``."""

    log = Logger()

    def __init__(self, model, connection, clock, on_quit=None,
                 waiting=None):
        self.model = model
        self.connection = connection
        self.clock = clock
        self.on_quit = on_quit or (lambda: None)
        self.loop = None
        self.waiting = waiting
        self.status = ("status", "")
        self.modal = None
        self._confirm = None
        self._log_key = None
        self._log_lines = []
        self._draw_call = None
        self._timers = []
        self._updating = False
        self.header = urwid.Text("", wrap="clip")
        self.table = w.Table()
        self.detail = w.Detail()
        self.log_tail = w.LogTail()
        self.status_line = urwid.Text("", wrap="clip")
        body = urwid.Pile([
            ("weight", 1, self.table),
            ("pack", urwid.Divider("─")),
            ("pack", self.detail),
            ("pack", urwid.Divider("─")),
            ("weight", 1, self.log_tail),
        ])
        self.frame = urwid.Frame(
            body, header=self.header, footer=urwid.Pile([
                self.status_line,
                urwid.AttrMap(urwid.Text(w.KEYS, wrap="clip"), "keys")]))
        self.top = urwid.WidgetPlaceholder(self.frame)
        urwid.connect_signal(self.table.walker, "modified",
                             self._selection_moved)
        model.listeners.append(self.refresh)
        self.refresh()

    # life -----------------------------------------------------------------

    def start(self, loop=None):
        """Begin ticking and following logs; *loop* is urwid's MainLoop,
        redrawn after changes that arrive from the network."""
        self.loop = loop
        self._repeat(TICK_SECONDS, self._tick)
        self._repeat(LOG_POLL_SECONDS, self._poll_log)

    def stop(self):
        for call in self._timers + [self._draw_call]:
            if call is not None and call.active():
                call.cancel()
        self._timers = []
        self._draw_call = None

    def _repeat(self, seconds, function):
        def again():
            self._timers.remove(call[0])
            call[0] = self.clock.callLater(seconds, again)
            self._timers.append(call[0])
            try:
                function()
            except Exception:
                self.log.failure("the monitor's {name} failed",
                                 name=function.__name__)
        call = [self.clock.callLater(seconds, again)]
        self._timers.append(call[0])

    def _tick(self):
        self.model.expire()
        self.refresh()

    def set_waiting(self, text):
        """The connection's state: a sentence while not connected, else
        None."""
        self.waiting = text
        self.refresh()

    # drawing --------------------------------------------------------------

    def refresh(self):
        self.header.set_text(w.header_markup(self.model, self.waiting))
        self._updating = True
        try:
            self.table.update(self.model)
        finally:
            self._updating = False
        self._selection_moved()
        present, key = self.table.selected
        self.detail.update(self.model,
                           self.model.row(key) if present else None)
        self._show_log()
        self.status_line.set_text(self.status)
        self._redraw()

    def _redraw(self):
        # changes from the network come outside urwid's input handling,
        # which is the only time it redraws by itself
        if self.loop is None or (self._draw_call is not None and
                                 self._draw_call.active()):
            return
        self._draw_call = self.clock.callLater(0.02, self._draw)

    def _draw(self):
        self._draw_call = None
        try:
            self.loop.draw_screen()
        except Exception:
            self.log.failure("drawing the screen failed")

    def say(self, text, refused=False):
        self.status = ("refused" if refused else "status", text)
        self.status_line.set_text(self.status)
        self._redraw()

    # the build log --------------------------------------------------------

    def _selected_builder(self):
        present, key = self.table.selected
        if not present or key is None:
            return None
        return self.model.builders.get(key)

    def _selection_moved(self):
        if self._updating:
            return
        row = self._selected_builder()
        key = row.key if row is not None else None
        if key != self._log_key:
            self._log_key, self._log_lines = key, []
            present, selected = self.table.selected
            self.detail.update(self.model, self.model.row(selected)
                               if present else None)
            self._show_log()
            self._poll_log()

    def _show_log(self):
        row = self._selected_builder()
        if row is None:
            self.log_tail.show(None, [])
            return
        self.log_tail.show(
            f"Build log of builder {row.key} ({row.get('label', '')}): "
            f"{self.model.task_text(row)}", self._log_lines)

    def _poll_log(self):
        row = self._selected_builder()
        if row is None or row.gone_at is not None or \
                not self.connection.connected:
            return
        key = row.key
        d = defer.Deferred.fromCoroutine(
            self.connection.build_log_tail(key))

        def got(text):
            if key == self._log_key:
                self._log_lines = text.splitlines()[-LOG_LINES:]
                self._show_log()
                self._redraw()

        def failed(failure):
            if not failure.check(proto.ControlRefused, NotConnected):
                self.log.failure("fetching the build log failed", failure)

        d.addCallbacks(got, failed)

    # keys -----------------------------------------------------------------

    def handle_key(self, key):
        if self.modal is not None:
            return self._modal_key(key)
        if key in ("q", "Q"):
            self.quit()
        elif key == "p":
            self.control(proto.PAUSE)
        elif key == "r":
            self.control(proto.RESUME)
        elif key == "t":
            self.ask("Terminate the master? Its builders are told to stop "
                     "and it shuts down as on SIGTERM.",
                     lambda: self.control(proto.TERMINATE))
        elif key in _BUILDER_KEYS:
            self.builder_key(_BUILDER_KEYS[key])
        elif key == "enter":
            self.open_menu()
        elif key == "?":
            self.show(w.Dialog(w.HELP, "Help"), "help", width=76, height=24)
        else:
            return False
        return True

    def builder_key(self, action):
        present, key = self.table.selected
        if not present:
            self.say("There is nothing to act on yet.", refused=True)
            return
        if key is None:
            if action in (proto.SLEEP, proto.WAKE):
                self.control(action)
            else:
                self.say("Select a builder first (Enter on the master's "
                         "row acts on every builder).", refused=True)
            return
        if action == proto.KILL_NOW:
            self.ask(f"Stop builder {key} now, killing its build?",
                     lambda: self.control(action, key))
        else:
            self.control(action, key)

    def _modal_key(self, key):
        if self.modal == "confirm":
            action, self._confirm = self._confirm, None
            self.close()
            if key in ("y", "Y"):
                action()
            else:
                self.say("Nothing was done.")
            return True
        if key in ("esc", "q", "?") or (self.modal == "help"):
            self.close()
        return True

    def show(self, dialog, modal, width=60, height=8):
        self.modal = modal
        self.top.original_widget = urwid.Overlay(
            dialog, self.frame, "center", ("relative", 80) if width is None
            else width, "middle", height, min_width=20)
        self._redraw()

    def close(self):
        self.modal = None
        self.top.original_widget = self.frame
        self._redraw()

    def ask(self, question, action):
        self._confirm = action
        self.show(w.Dialog(f"{question}\n\ny: yes   any other key: no",
                           "Confirm"), "confirm")

    def open_menu(self):
        present, key = self.table.selected
        if not present:
            return
        if key is None:
            paused = self.model.paused
            choices = [(_MENU_LABELS[proto.RESUME if paused
                                     else proto.PAUSE],
                        proto.RESUME if paused else proto.PAUSE, None),
                       ("Sleep every builder", proto.SLEEP, None),
                       ("Wake every builder", proto.WAKE, None),
                       ("Skip every build", proto.SKIP, None),
                       ("Kill every builder after its build", proto.KILL,
                        None),
                       (_MENU_LABELS[proto.TERMINATE], proto.TERMINATE,
                        None)]
            title = "The master"
        else:
            choices = [(_MENU_LABELS[action], action, key)
                       for action in proto.BUILDER_ACTIONS]
            title = f"Builder {key}"

        def chosen(action, builder_id):
            self.close()
            if action in (proto.TERMINATE, proto.KILL_NOW):
                self.ask(f"{_MENU_LABELS[action]}?",
                         lambda: self.control(action, builder_id))
            else:
                self.control(action, builder_id)

        self.show(w.Menu(title, [
            (label, lambda a=action, b=builder: chosen(a, b))
            for label, action, builder in choices]), "menu", width=40,
            height=len(choices) + 2)

    def quit(self):
        self.stop()
        self.on_quit()

    # controls -------------------------------------------------------------

    def control(self, action, builder_id=None):
        """Ask the master for *action*; say the outcome in the status
        line."""
        if builder_id is None:
            who = "Every builder"
        else:
            row = self.model.builders.get(builder_id)
            label = row.get("label", "") if row is not None else ""
            who = f"Builder {builder_id} ({label})" if label else \
                f"Builder {builder_id}"
        self.say(f"Asking the master: {action.replace('_', ' ')}...")
        try:
            d = defer.Deferred.fromCoroutine(
                self.connection.control(action, builder_id))
        except Exception as e:  # a connection that refuses at once
            d = defer.fail(e)

        def done(_):
            self.say(_DONE[action].format(who=who))

        def refused(failure):
            if failure.check(proto.ControlRefused, NotConnected):
                self.say(f"Refused: {failure.getErrorMessage()}",
                         refused=True)
            else:
                self.log.failure("control {action} failed", failure,
                                 action=action)
                self.say(f"The control failed: "
                         f"{failure.getErrorMessage() or failure.type.__name__}"
                         f" (see the log)", refused=True)

        d.addCallbacks(done, refused)
        return d
