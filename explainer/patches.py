"""Patch A into B: A's output of one block, over a window of t, in place of B's own (playground.patching; causal
tracing, Meng et al. 2022, for diffusion Basu et al. 2024). How much of A's final image does it bring back?"""

from __future__ import annotations

import time
from types import SimpleNamespace

import gradio as gr
import torch

from explainer.checks import T_LAST, choice, integer, timed, window_of
from explainer.delivery import LOSSLESS
from explainer.numbers import CLASSIFIER_CAVEAT
from explainer.sessions import kept_run
from playground.patching import default_patch_blocks, digit_back, patch_map, patch_map_figure, patched_run, restored_fraction
from playground.viz import image_grid

PATCH_WINDOWS = 5  # the map's columns: at the flagship's 7 blocks, ~20 s on 2 quiet vCPU at batch 1


def _runs(registry, state):
    """The session's A and B, refused where patching says nothing: B is A, or B is not A's architecture."""
    state = kept_run(state)
    if state["b"] is state["a"]:
        raise ValueError("patch: B is A, so there is nothing to restore; switch a part of B off first")
    a_model, b_model = registry.get(state["model_a"]), registry.get(state["model_b"])
    if a_model.unet.feature_shapes() != b_model.unet.feature_shapes():
        raise ValueError(f"patch: B (`{b_model.name}`) is not A's architecture, so A's maps do not fit it")
    return state, a_model, b_model


def patch_blocks(registry, model_a) -> list[str]:
    return default_patch_blocks(registry.get(model_a).unet)


def block_clicked(registry, model_a, payload):
    """A block clicked on the diagram: the patched block too, where it is one of the level outputs patching offers."""
    name = payload.get("name")
    return name if name in patch_blocks(registry, model_a) else gr.skip()


def patch_one(registry, state, block, t_from, t_to, progress=gr.Progress()):
    """One patched run: B with A's `block` output for from ≤ t ≤ to; its final images and how much of A they restore."""
    state, a_model, b_model = _runs(registry, state)
    a, b = state["a"], state["b"]
    choice(block, "patched block", default_patch_blocks(a_model.unet))
    window = window_of(t_from, t_to, "patch window")
    report = timed(time.monotonic(), lambda i, n: progress((i, n), desc=f"B with A's {block}"))
    patched = patched_run(b_model, b.settings, a, a_model, block, window, reuse=b, progress=report)
    fraction = restored_fraction(patched.final, a.final, b.final)
    where = "every step" if window is None else f"{window.t_min} ≤ t ≤ {window.t_max}"
    lines = [f"**B with A's `{block}` at {where}** restores **{fraction:.0%}** of A's final images "
             f"(1 − |patched − A| / |B − A|; 100 % is A, 0 % is B)."]
    classifier = registry.classifier_for(a_model)
    if classifier is not None:
        back = float(digit_back(classifier, patched.final[None], a.final)[0])
        before = float(digit_back(classifier, b.final[None], a.final)[0])
        lines.append(f"A's digit is back in **{back:.0%}** of the samples (B unpatched: {before:.0%}). {CLASSIFIER_CAVEAT}")
    columns = min(4, a.settings.batch)
    return image_grid(patched.final.clamp(-1, 1), columns, 84), "\n\n".join(lines)


def map_patches(registry, state, windows, progress=gr.Progress()):
    """The restored fraction for every level's output × windows of t: where and when A's computation is what B lacks."""
    state, a_model, b_model = _runs(registry, state)
    a = state["a"]
    windows = integer(windows, "windows", 2, min(10, a.settings.steps))
    report = timed(time.monotonic(), lambda i, n: progress((i, n), desc="every block × window"))
    result = patch_map(a_model, b_model, a.settings, state["ablation_b"], default_patch_blocks(a_model.unet), windows,
                       classifier=registry.classifier_for(a_model), progress=report)
    best = torch.nan_to_num(result.fractions, nan=-1.0)
    row, column = divmod(int(best.argmax()), best.shape[1])
    window = result.windows[column]
    note = (f"The most A's computation brings back: **`{result.blocks[row]}` at {window.t_max} → {window.t_min}**, "
            f"{float(result.fractions[row, column]):.0%} of A's final images ({result.seconds:.1f} s). Patch it alone "
            "above to see its run.")
    return patch_map_figure(result), note


def build_patches(blocks) -> SimpleNamespace:
    gr.Markdown("A's output of one block, computed on A's own run, put in place of B's own over a window of t "
                "(causal tracing). If B's loss is in that block and window, the patched run looks like A. "
                "Click a block on the diagram to pick it here.")
    with gr.Row():
        block = gr.Dropdown(blocks, value=blocks[len(blocks) // 2] if blocks else None, label="Block patched from A",
                            elem_id="patch-block", scale=2)
        t_from = gr.Slider(0, T_LAST, value=0, step=1, label="from t", elem_id="patch-from")
        t_to = gr.Slider(0, T_LAST, value=T_LAST, step=1, label="to t", elem_id="patch-to")
    with gr.Row():
        one = gr.Button("Patch A's block into B", elem_id="patch-button")
        windows = gr.Slider(2, 10, value=PATCH_WINDOWS, step=1, label="Windows of the map", elem_id="patch-windows")
        every = gr.Button("Map every block × window (seconds)", elem_id="patch-map-button")
    with gr.Row():
        picture = gr.Image(type="pil", interactive=False, show_label=False, buttons=[], format=LOSSLESS, height=200,
                           elem_id="patch-picture")
        note = gr.Markdown(elem_id="patch-note")
    heatmap = gr.Plot(format=LOSSLESS, show_label=False, elem_id="patch-map")
    map_note = gr.Markdown(elem_id="patch-map-note")
    return SimpleNamespace(block=block, one=one, one_inputs=[block, t_from, t_to], one_outputs=[picture, note],
                           every=every, windows=windows, every_outputs=[heatmap, map_note])
