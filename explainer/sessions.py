"""What a visitor's session keeps (gr.State): the last run of A and B, their models, B's ablation and options.
"""

from __future__ import annotations

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
