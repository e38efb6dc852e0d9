"""Numbers beside the pictures: how far B drifts from A, what the digit classifier reads, ε-error per
timestep and skip vs backbone spectra.
"""

from __future__ import annotations

import functools
import textwrap

from types import SimpleNamespace

import gradio as gr

from explainer.delivery import LOSSLESS
from explainer.checks import slider_step
from explainer.options import describe_timing
from explainer.sessions import kept_run, options_in
from explainer.switches import describe
from playground import Ablation, features_at
from playground.evaluate import (
    CONFIDENCE,
    DIVERGED,
    classify,
    confident_share,
    eps_mse_per_timestep,
    skip_backbone_spectra,
)
from playground.viz import (
    NETWORK_COLOURS,
    curves_figure,
    spectra_figure,
)

# beside every verdict of the digit classifier: a softmax saturates, so its confidence is no proof of a digit
CLASSIFIER_CAVEAT = ("Classifier verdicts saturate: a blot or clipped noise can read as a confident digit, so check "
                     "the pictures before trusting a number.")
EPS_TIMESTEPS = (0, 25, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)


def verdicts(registry, state) -> str:
    """What B is, how far its final images are from A's, and what our classifier makes of both batches."""
    a, b = state["a"], state["b"]
    timing = describe_timing(options_in(state))
    table = [f"**A** = `{state['model_a']}` intact · **B** = `{state['model_b']}` with {describe(state['ablation_b'])}"
             + (f" ({timing})" if timing else ""), "",
             f"Mean |A − B| of the final images: **{(a.final - b.final).abs().mean():.4f}** (pixel units of [−1, 1])."]
    model = registry.get(state["model_a"])
    classifier = registry.classifier_for(model)
    if classifier is None and registry.classifier() is not None:
        table += ["", not_digits(model)]
    if classifier is not None:
        table += ["", f"| | digits our classifier sees (confidence) | share confident > {CONFIDENCE} |", "|---|---|---|"]
        for name, trajectory in (("A", a), ("B", b)):
            probabilities, _ = classify(classifier, trajectory.final)
            confidence, predicted = probabilities.max(1)
            seen = " ".join(f"{d}({c:.2f})" for d, c in zip(predicted.tolist(), confidence.tolist()))
            table.append(f"| {name} | {seen} | {confident_share(confidence):.0%} |")
        table += _off_range_warnings(a, b) + ["", f"*{CLASSIFIER_CAVEAT}*"]
    return "\n".join(table)


def not_digits(model) -> str:
    """Why the digit numbers step aside for a model of another kind of image."""
    shape = "×".join(map(str, model.image_shape))
    return (f"`{model.name}` draws {shape} images; our digit classifier reads 1×28×28 MNIST digits, so its verdicts "
            "(and every number built on them) are left out for this model.")


def _off_range_warnings(a, b) -> list[str]:
    """A diverged run's final images are clipped to [-1, 1] before classifying, where saturated noise can read
    as a confident digit: say so, or the "share confident" column would vouch for garbage."""
    lines = []
    for name, trajectory in (("A", a), ("B", b)):
        peak = trajectory.final.abs().max().item()
        if peak > DIVERGED:
            lines += ["", f"**{name}'s final images reach |x| = {peak:.3g}**, far outside the data range [−1, 1]: the "
                          "classifier sees them clipped to it, so its verdicts on them say little about digits."]
    return lines


@functools.lru_cache(maxsize=64)
def eps_curve(registry, model_name, ablation):
    """ε-MSE per timestep: a pure function of (model, ablation), so safe to share across sessions."""
    images, _ = registry.heldout()
    return eps_mse_per_timestep(registry.get(model_name), images[:128], EPS_TIMESTEPS, ablation=ablation)


def compute_numbers(registry, state, step, progress=gr.Progress()):
    """ε-error per timestep for A vs B on held-out digits, and skip vs backbone spectra of A and B."""
    state = kept_run(state)
    step = min(slider_step(step, state["a"]), len(state["a"]) - 1)
    model = registry.get(state["model_a"])
    if model.image_shape == tuple(registry.heldout()[0].shape[1:]):
        progress(0.1, desc="ε-error of A on 128 held-out test digits")
        curve_a = eps_curve(registry, state["model_a"], Ablation())
        progress(0.5, desc="ε-error of B")
        curve_b = eps_curve(registry, state["model_b"], state["ablation_b"])
        curves, title = {f"A: {state['model_a']}": (list(curve_a), list(curve_a.values())),
                         f"B: {state['model_b']}, {describe(state['ablation_b'])}": (list(curve_b), list(curve_b.values()))}, \
            "Denoising error per timestep (lower is better)"
    else:  # the held-out test images are MNIST digits: no ε-error to measure on them for another kind of image
        curves, title = {}, textwrap.fill(f"No ε-error: it is measured on held-out MNIST digits, and {not_digits(model)[:-1]}", 90)
    eps_figure = curves_figure(curves, title, "timestep t (the reverse process runs left to right: 999 = pure noise → 0 = clean)",
                               "mean (ε̂ − ε)²", logy=bool(curves), invert_x=True, colours=list(NETWORK_COLOURS.values()))
    panels = {}
    for label, key in (("A", "a"), ("B", "b")):
        spectra = skip_backbone_spectra(features_at(registry.get(state[f"model_{key}"]), state[key], step, 0))
        title = f"A: {state['model_a']}, intact" if key == "a" else f"B: {state['model_b']}, {describe(state['ablation_b'])}"
        # one join per resolution (the first of each decoder stage) keeps the plot readable
        panels[textwrap.shorten(title, 60, placeholder=" …")] = [s for join, s in spectra.items() if join.endswith("resnets.0")]
    spectrum_figure = spectra_figure(panels, f"Radially averaged power of skip vs backbone features (sample 0, step {step + 1})")
    return eps_figure, spectrum_figure


def build_numbers() -> SimpleNamespace:
    gr.Markdown("Measured on 128 held-out MNIST test digits (ε-error) and on sample 0 at the current step (spectra).")
    button = gr.Button("Compute ε-error per timestep and spectra (a few seconds)", elem_id="numbers-button")
    with gr.Row():
        eps_plot = gr.Plot(format=LOSSLESS, label="ε-error per timestep", show_label=False, elem_id="eps-plot")
        spectrum_plot = gr.Plot(format=LOSSLESS, label="Skip vs backbone spectra", show_label=False, elem_id="spectrum-plot")
    return SimpleNamespace(button=button, outputs=[eps_plot, spectrum_plot])
