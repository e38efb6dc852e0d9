"""What a visitor's session keeps (gr.State): the last run of A and B, their models, B's ablation and options.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from contextvars import ContextVar

from gradio.context import LocalContext

# A session's trajectories are dropped after this long without a Generate or an ablation change, and at most
# STATE_SESSIONS sessions are held at all (the least recently used go first). SESSION_STATE_BYTES caps what one
# session keeps, so state stays under 48 × 48 MiB ≈ 2.3 GB of a 16 GB Space however many visitors come and go.
STATE_TTL_SECONDS = 1800
STATE_SESSIONS = 48
# B as it runs until a visitor sets a t-window, a timestep lie, FreeU gains or an h-space edit
NO_OPTIONS = {"window": None, "lie": None, "backbone": {}, "low_freq": {}, "h_edit": None}


def has_run(state) -> bool:
    return isinstance(state, dict) and "a" in state


def kept_run(state):
    if not has_run(state):
        raise ValueError("No run yet: wait for the one the page opens on, or press Generate.")
    return state


def check_kept_run(state, a_model, b_model=None) -> None:
    """B reruns against the session's kept run, so A's model must still be the one that ran. B's model may have
    changed (it is one of B's controls), except for a rerun that keeps B's kept ablation (`b_model` given)."""
    for network, model, kept in (("model A", a_model, state["model_a"]), ("network B", b_model, state["model_b"])):
        if model is not None and model.name != kept:
            raise ValueError(f"{network} is now {model.name!r}, but the run shown is {kept!r}'s: press Generate to run A and B again")


def options_in(state):
    """The options last set for B in this visitor's session (they may be set before the first Generate)."""
    return state.get("options_b", NO_OPTIONS) if isinstance(state, dict) else NO_OPTIONS


def visitor() -> tuple[str, str | None] | None:
    """The session the running event belongs to, and the event (None outside an event: a direct call, a test)."""
    request = LocalContext.request.get(None)
    session = getattr(request, "session_hash", None)
    return None if session is None else (session, LocalContext.event_id.get(None))


class RunTickets:
    """The latest run each visitor asked for. A run takes a ticket as it starts and checks it at every step: once
    its visitor has asked for another (a newer Generate, a switch moved again, Stop), it is abandoned there, so a
    superseded run holds the network thread one step at most instead of to its end. The networks one event runs
    (A and B side by side) share its ticket."""

    def __init__(self, remembered: int = 4096):
        self._latest: OrderedDict[str, tuple[int, str | None]] = OrderedDict()
        self._remembered = remembered  # a public server meets endless visitors; the oldest are forgotten
        self._lock = threading.Lock()

    def take(self, who: tuple[str, str | None] | None) -> int:
        """The ticket of this visitor's event: a new one (superseding every run it had) unless the event has one."""
        if who is None:
            return 0
        session, event = who
        with self._lock:
            ticket, holder = self._latest.pop(session, (0, None))
            if event is None or holder != event:
                ticket += 1
            self._latest[session] = (ticket, event)
            while len(self._latest) > self._remembered:
                self._latest.popitem(last=False)
            return ticket

    def is_latest(self, who: tuple[str, str | None] | None, ticket: int) -> bool:
        if who is None:
            return True
        with self._lock:
            return self._latest.get(who[0], (ticket, None))[0] == ticket


RUN_TICKETS = RunTickets()
# The ticket a run event took as Gradio started it (delivery.unless_superseded), before it waited for the network
# thread: a Stop or a newer request while it waits supersedes it too, which a ticket taken only once the run begins
# would miss.
EVENT_TICKET: ContextVar[int | None] = ContextVar("event_ticket", default=None)


def supersede_runs() -> None:
    """Event handler (unqueued, so it acts while the visitor's old run still holds the network): the visitor's
    running and waiting runs stop at their next step."""
    who = visitor()
    if who is not None:
        RUN_TICKETS.take((who[0], None))
