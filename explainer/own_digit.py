"""Your own digit: draw one, let the generator classify it (Li et al. 2023), or invert it with DDIM to its noise and
let A and B draw it again from there (playground.inversion, playground.denoising_classifier)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import gradio as gr
import numpy as np

from explainer.checks import ablation_of, integer, model_b_of, model_named
from explainer.delivery import LOSSLESS
from explainer.numbers import CLASSIFIER_CAVEAT
from playground.classifier import classify
from playground.denoising_classifier import denoising_posterior, posterior_figure
from playground.inversion import ddim_invert, image_from_sketch, regenerate
from playground.viz import enlarge, grey, tile

DENOISING_TIMESTEPS = 25  # Li et al.'s trials: 25 keeps one classification near 1.4 s at batch 1 on 2 vCPU


def _drawing(sketch):
    """The sketchpad's value (its composite image) as an MNIST-like (1, 1, 28, 28) digit, or a sentence naming it."""
    composite = sketch.get("composite") if isinstance(sketch, dict) else sketch
    if composite is None:
        raise ValueError("drawing: it is empty; draw a digit in the box first")
    return image_from_sketch(np.asarray(composite))


def _digit_model(registry, model_a):
    model = model_named(registry, model_a, "model A")
    if model.null_label is None or model.image_shape != (1, 28, 28):
        raise ValueError(f"drawing: `{model.name}` does not draw labelled 28×28 digits, so a drawn digit means nothing to it")
    return model


def classify_drawing(registry, sketch, model_a, model_b, *switches):
    """The drawing's posterior under A (and under B's switches, on A's model), beside our classifier's verdict."""
    model = _digit_model(registry, model_a)
    image = _drawing(sketch)
    posterior_a = denoising_posterior(model, image, timesteps=DENOISING_TIMESTEPS)[0]
    lines = [f"**A reads it as {int(posterior_a.argmax())}** (p = {float(posterior_a.max()):.2f}): the digit whose label "
             f"lets A denoise it best, over {DENOISING_TIMESTEPS} timesteps."]
    b_model = model_b_of(registry, model_a, model_b)
    if b_model is model:
        ablation = ablation_of(model, list(switches[:-2]), switches[-2], switches[-1])
        if not ablation.is_intact:
            posterior_b = denoising_posterior(model, image, timesteps=DENOISING_TIMESTEPS, ablation=ablation)[0]
            lines.append(f"**B** (A with its switches) reads it as **{int(posterior_b.argmax())}** "
                         f"(p = {float(posterior_b.max()):.2f}).")
    classifier = registry.classifier_for(model)
    if classifier is not None:
        probabilities, _ = classify(classifier, image)
        lines.append(f"Our classifier: {int(probabilities.argmax())} ({float(probabilities.max()):.2f}). {CLASSIFIER_CAVEAT}")
    return posterior_figure(posterior_a, title="A as a classifier"), "\n\n".join(lines)


def invert_drawing(registry, sketch, model_a, model_b, digit, steps, *switches, progress=gr.Progress()):
    """The drawing inverted with A (DDIM, guidance 1) to its noise, then drawn again from that noise by A and by B."""
    model = _digit_model(registry, model_a)
    image = _drawing(sketch)
    steps = integer(steps, "inversion steps", 10, 200)
    label = integer(digit, "the drawing's digit", 0, 9)
    noise, inversion = ddim_invert(model, image, steps, label=label, progress=lambda i, n: progress((i, 2 * n), desc="inverting"))
    again_a = regenerate(model, noise, inversion.settings).final
    b_model = model_b_of(registry, model_a, model_b)
    settings_b = inversion.settings
    if b_model is model:
        settings_b = replace(settings_b, ablation=ablation_of(model, list(switches[:-2]), switches[-2], switches[-1]))
    again_b = regenerate(b_model, noise, settings_b).final
    pictures = tile([grey(x[0, 0]) for x in (image, again_a.clamp(-1, 1), again_b.clamp(-1, 1))], columns=3, pad=4)
    error_a = float((again_a.clamp(-1, 1) - image).abs().mean())
    error_b = float((again_b.clamp(-1, 1) - image).abs().mean())
    note = (f"Left to right: your digit, **A** and **B** drawing it again from its inverted noise ({steps} DDIM steps, "
            f"guidance 1). Mean |again − yours|: A **{error_a:.3f}**, B **{error_b:.3f}**. The noise already fixes the digit: "
            "regenerating it from there as another digit rarely changes it.")
    return enlarge(pictures, 168), note


def build_own_digit() -> SimpleNamespace:
    gr.Markdown("Draw a digit (white on black or black on white, any size: it is centred and scaled as MNIST's were).")
    with gr.Row():
        # one fixed 280×280 canvas, a thick black brush: what a digit drawn with a mouse or a finger needs, no more
        sketch = gr.Sketchpad(type="numpy", image_mode="RGBA", label="Your digit (pick the brush on the left, then draw)",
                              elem_id="sketch", canvas_size=(280, 280), fixed_canvas=True, layers=False, transforms=(),
                              brush=gr.Brush(colors=["#000000"], default_size=20, color_mode="fixed"), height=340)
        with gr.Column():
            classify_button = gr.Button("Which digit is it? (the generator as a classifier)", elem_id="classify-drawing")
            with gr.Row():
                digit = gr.Slider(0, 9, value=3, step=1, label="It is the digit", elem_id="drawing-digit")
                steps = gr.Slider(10, 200, value=50, step=10, label="Inversion steps", elem_id="inversion-steps")
            invert_button = gr.Button("Invert it and let A and B draw it again", elem_id="invert-drawing")
    with gr.Row():
        posterior = gr.Plot(format=LOSSLESS, show_label=False, elem_id="drawing-posterior")
        regenerated = gr.Image(type="pil", interactive=False, show_label=False, buttons=[], format=LOSSLESS, height=180,
                               elem_id="drawing-again")
    note = gr.Markdown(elem_id="drawing-note")
    return SimpleNamespace(sketch=sketch, classify=classify_button, invert=invert_button, digit=digit, steps=steps,
                           posterior=posterior, regenerated=regenerated, note=note)

