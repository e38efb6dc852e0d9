"""When does it matter? B's ablation swept over windows of t, and the step at which each digit is decided.
"""

from __future__ import annotations

import time
from dataclasses import replace

import gradio as gr

from explainer.checks import (
    MAX_IMAGE_FORWARDS,
    SAME_AS_A,
    integer,
    slider_sample,
    timed,
)
from explainer.numbers import not_digits
from explainer.sessions import kept_run
from explainer.switches import describe
from playground.evaluate import CONFIDENCE
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
    batch = min(a.settings.batch, SWEEP_MAX_BATCH)
    label = a.settings.label[:batch] if isinstance(a.settings.label, tuple) else a.settings.label
    settings = replace(a.settings, batch=batch, label=label, ablation_window=None, timestep_lie=None, h_edit=None)
    intact = a if batch == a.settings.batch else None
    steps = settings.steps
    # as window_sweep counts it: each windowed run computes only from its window on, plus the full run (+ intact)
    first_steps = [round(k * steps / windows) for k in range(windows)]
    runs = sum(steps - first for first in first_steps) + steps + (steps if intact is None else 0)
    guided = model.null_label is not None and label is not None and settings.guidance != 1.0
    passes = runs * batch * (2 if guided else 1)
    if passes > MAX_IMAGE_FORWARDS:
        raise ValueError(f"the sweep would run {passes} network passes ({windows} windows × {steps} steps × {batch} samples); "
                         f"this server allows {MAX_IMAGE_FORWARDS}. Use fewer windows or fewer steps.")
    report = timed(time.monotonic(), lambda i, n: progress((i, n), desc=f"{windows} windows over t"))
    sweep = window_sweep(model, settings, ablation, windows, classifier=registry.classifier_for(model), intact=intact,
                         progress=report)
    figure = sweep_figure({"B's ablation in the window": sweep}, f"When does it matter? ({batch} samples; dashed: at every step)")
    rows = [f"| window (t) | mean abs Δ of final samples | same digit as intact | confident > {CONFIDENCE} |", "|---|---|---|---|"]
    for k, window in enumerate(sweep.windows):
        quality = sweep.quality[k] if sweep.quality else {}
        kept, confident = (f"{quality[key]:.0%}" if key in quality else "–" for key in ("kept", "confident"))
        rows.append(f"| {window.t_max} → {window.t_min} | {float(sweep.change[k]):.4f} | {kept} | {confident} |")
    whole = "" if sweep.full_change is None else f" Applied at every step instead: mean abs Δ = **{sweep.full_change:.4f}**."
    rows += ["", f"B's ablation: {describe(ablation)}. {windows} windows, {batch} samples, {steps} {settings.sampler} steps, {sweep.seconds:.1f} s.{whole} "
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
    figure = decision_figure({f"A: {state['model_a']}": decisions["A"], f"B: {state['model_b']}": decisions["B"]})
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
