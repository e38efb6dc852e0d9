"""When does it matter? B's ablation swept over windows of t, and the step at which each digit is decided.
"""

from __future__ import annotations

import time
from dataclasses import replace

from types import SimpleNamespace

import gradio as gr

from explainer.checks import (
    REQUEST_SECONDS,
    SAME_AS_A,
    T_LAST,
    integer,
    slider_sample,
    timed,
)
from explainer.delivery import LOSSLESS
from explainer.numbers import CLASSIFIER_CAVEAT, not_digits
from explainer.sessions import kept_run
from explainer.switches import describe
from playground.evaluate import CONFIDENCE
from playground.viz import NETWORK_COLOURS
from playground.explore import (
    class_probability_figure,
    decision_figure,
    digit_decision,
    sweep_figure,
    window_sweep,
)

# A sweep runs its batch about windows/2 + 2 times (each windowed run starts at its window): 10 windows × 50 guided
# steps × 8 samples are ~6000 image-passes, ~35 s at the flagship's ~5.7 ms each on 2 idle vCPU.
SWEEP_MAX_BATCH = 8
SWEEP_WINDOWS = 5  # the default: 5 windows of 10 steps each at the page's 50, ~9 s at batch 4 on 2 idle vCPU
# At most this many network passes (~23 s at ~5.7 ms each on 2 idle vCPU; a host twice as slow stays well inside
# checks.REQUEST_SECONDS): the sweep takes fewer samples rather than more time
SWEEP_PASSES = 4096
# ... and on a host slower still, the windows not run by then are left out: a partial answer, never the limit's error
SWEEP_SECONDS = REQUEST_SECONDS * 0.6


def _sweep_passes(model, settings, windows: int, batch: int) -> int:
    """Single-image network passes of a sweep, as window_sweep counts them: each windowed run computes only from its
    window on, plus the run with the ablation at every step, plus the intact run unless this run's A is reused."""
    steps = settings.steps
    first_steps = [round(k * steps / windows) for k in range(windows)]
    runs = sum(steps - first for first in first_steps) + steps + (steps if batch != settings.batch else 0)
    guided = model.null_label is not None and settings.label is not None and settings.guidance != 1.0
    return runs * batch * (2 if guided else 1)


def _sweep_batch(model, settings, windows: int) -> int:
    """The most samples of this run a sweep of `windows` can take within SWEEP_PASSES: the sweep fits the request
    time limit by its size, on a slow host too, instead of running into it."""
    for batch in range(min(settings.batch, SWEEP_MAX_BATCH), 0, -1):
        if _sweep_passes(model, settings, windows, batch) <= SWEEP_PASSES:
            return batch
    raise ValueError(f"windows: a sweep of {windows} windows over {settings.steps} steps runs "
                     f"{_sweep_passes(model, settings, windows, 1)} network passes even for one sample, more than the "
                     f"{SWEEP_PASSES} a sweep may take here; use fewer windows, or Generate with fewer steps")


def sweep_ablation(registry, state, windows, progress=gr.Progress()):
    """B's ablation applied in one window at a time, sliding over t: how much each window changes the samples."""
    state = kept_run(state)
    a = state["a"]
    windows = integer(windows, "windows", 2, 20)
    if windows > a.settings.steps:
        raise ValueError(f"windows must be at most the {a.settings.steps} steps of this run, got {windows}")
    if state["model_b"] != state["model_a"]:
        raise ValueError(f"The sweep moves B's ablation over t on model A; set Network B to '{SAME_AS_A}' first")
    ablation = state["ablation_b"]
    if ablation.is_intact:
        raise ValueError("Set an ablation for B first (e.g. a skip scale of 0): the intact network has nothing to sweep.")
    model = registry.get(state["model_a"])
    batch = _sweep_batch(model, a.settings, windows)
    label = a.settings.label[:batch] if isinstance(a.settings.label, tuple) else a.settings.label
    settings = replace(a.settings, batch=batch, label=label, ablation_window=None, timestep_lie=None, h_edit=None)
    intact = a if batch == a.settings.batch else None
    steps = settings.steps
    report = timed(time.monotonic(), lambda i, n: progress((i, n), desc=f"{windows} windows over t"))
    sweep = window_sweep(model, settings, ablation, windows, classifier=registry.classifier_for(model), intact=intact,
                         progress=report, seconds=SWEEP_SECONDS)
    figure = sweep_figure({"B's ablation in the window": sweep}, f"When does it matter? ({batch} samples; dashed: at every step)")
    rows = [f"| window (t) | mean abs Δ of final samples | same digit as intact | confident > {CONFIDENCE} |", "|---|---|---|---|"]
    for k, window in enumerate(sweep.windows):
        quality = sweep.quality[k] if sweep.quality else {}
        kept, confident = (f"{quality[key]:.0%}" if key in quality else "–" for key in ("kept", "confident"))
        rows.append(f"| {window.t_max} → {window.t_min} | {float(sweep.change[k]):.4f} | {kept} | {confident} |")
    whole = "" if sweep.full_change is None else f" Applied at every step instead: mean abs Δ = **{sweep.full_change:.4f}**."
    fewer = "" if batch == min(a.settings.batch, SWEEP_MAX_BATCH) else f" (of this run's {a.settings.batch}: the most that fit)"
    if len(sweep.windows) < windows:
        rows += ["", f"**Stopped after {len(sweep.windows)} of {windows} windows**: the server is busy, and a sweep may take "
                     f"{SWEEP_SECONDS:.0f} s; the later windows (small t) are not measured. Try again, or with fewer windows."]
    rows += ["", f"B's ablation: {describe(ablation)}. {windows} windows, {batch} samples{fewer}, {steps} {settings.sampler} steps, {sweep.seconds:.1f} s.{whole} "
                 "The reverse process meets the windows top to bottom (large t first)."]
    return figure, "\n".join(rows)


def digit_decides(registry, state, sample_index):
    """Our classifier on x̂0 at every step of A and B: when each sample's digit is decided, and how surely."""
    state = kept_run(state)
    model = registry.get(state["model_a"])
    classifier = registry.classifier_for(model)
    if classifier is None and registry.classifier() is not None:
        raise ValueError(not_digits(model))
    if classifier is None:
        raise ValueError("This server has no working digit classifier (weights/classifier), so it cannot read the digits.")
    sample_index = slider_sample(sample_index, state["a"])
    decisions = {"A": digit_decision(classifier, state["a"]), "B": digit_decision(classifier, state["b"])}
    figure = decision_figure({f"A: {state['model_a']}": decisions["A"], f"B: {state['model_b']}": decisions["B"]},
                             colours=list(NETWORK_COLOURS.values()))
    per_sample = []
    for label, decision in decisions.items():
        probabilities = class_probability_figure(decision, sample_index)
        probabilities.axes[0].set_title(f"{label}: " + probabilities.axes[0].get_title(), fontsize=10)
        per_sample.append(probabilities)
    a = decisions["A"]
    samples = range(len(a.final_class))
    # one column per sample: a batch of 16 stays a short table
    rows = ["| sample | " + " | ".join(str(i) for i in samples) + " |", "|---" * (len(samples) + 1) + "|"]
    for label, decision in decisions.items():
        rows.append(f"| {label} reads | " + " | ".join(str(int(c)) for c in decision.final_class) + " |")
        rows.append(f"| {label} decided at t | " + " | ".join("never" if t is None else str(t) for t in decision.decided_t) + " |")
    rows += ["", f"'Decided' = the first step from which x̂0 is read as the final digit with p > {a.confidence:g} at every later "
                 "step; 'never' = not that sure even at the end."]
    return figure, *per_sample, "\n".join(rows)


def build_sweep() -> SimpleNamespace:
    gr.Markdown("B's ablation (skips, attention, time, FreeU) applied in one window of t at a time, on "
                f"up to {SWEEP_MAX_BATCH} samples of this run: which windows change the final digits? "
                f"The reverse process runs left to right, t {T_LAST} → 0. {CLASSIFIER_CAVEAT}")
    with gr.Row():
        windows = gr.Slider(2, 20, value=SWEEP_WINDOWS, step=1, label="Windows", elem_id="sweep-windows")
        button = gr.Button("When does it matter? (sweep the window over t)", elem_id="sweep-button")
    with gr.Row():
        plot = gr.Plot(format=LOSSLESS, show_label=False, elem_id="sweep-plot")
        table = gr.Markdown(elem_id="sweep-table")
    return SimpleNamespace(windows=windows, button=button, outputs=[plot, table])


def build_decides() -> SimpleNamespace:
    gr.Markdown("Our digit classifier reads x̂0 at every step of A and B. The right-hand plots follow the sample "
                f"the feature maps show. {CLASSIFIER_CAVEAT}")
    button = gr.Button("When does the digit decide?", elem_id="decide-button")
    decision = gr.Plot(format=LOSSLESS, show_label=False, elem_id="decision-plot")
    with gr.Row():
        probability_a = gr.Plot(format=LOSSLESS, show_label=False, elem_id="probability-a")
        probability_b = gr.Plot(format=LOSSLESS, show_label=False, elem_id="probability-b")
    table = gr.Markdown(elem_id="decision-table")
    return SimpleNamespace(button=button, outputs=[decision, probability_a, probability_b, table])
