"""The denoiser as an adaptive filter: a pixel clicked in A or B shows ∂x̂0[pixel] / ∂x_t at that step, for A and B
(playground.filters; Mohan et al. 2020, Kadkhodaie et al. 2024)."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from explainer.checks import integer, slider_sample, slider_step
from explainer.delivery import LOSSLESS
from explainer.sessions import kept_run
from playground.filters import filter_width, jacobian_at, jacobian_figure


def filter_at_pixel(registry, state, payload):
    """A click on a sample (payload {"index", "step", "row", "col"}): the filter of x̂0 at that pixel, for A and B."""
    state = kept_run(state)
    a, b = state["a"], state["b"]
    step = min(slider_step(payload.get("step"), a), len(a) - 1)  # the finished sample: the last step's filter
    sample_index = slider_sample(payload.get("index"), a)
    height, width = a.final.shape[-2:]
    pixel = (integer(payload.get("row"), "pixel row", 0, height - 1), integer(payload.get("col"), "pixel column", 0, width - 1))
    t = int(a.timesteps[step])
    figures, widths = [], {}
    for name, trajectory in (("A", a), ("B", b)):
        jacobian = jacobian_at(registry.get(state[f"model_{name.lower()}"]), trajectory, step, pixel, sample_index)
        widths[name] = filter_width(jacobian)
        figures.append(jacobian_figure(jacobian, pixel, image=trajectory.x_t[step, sample_index],
                                       title=f"{name}: x̂0{list(pixel)} at step {step + 1} (t = {t}), sample {sample_index}"))
    same = b is a
    note = (f"**Filter width** at pixel {pixel}, step {step + 1} (t = {t}): A **{widths['A']:.1f} px**"
            + ("" if same else f", B **{widths['B']:.1f} px**") + ". Each pixel of x̂0 is a weighted average of x_t "
            "(one backward pass): the filter widens as the noise grows and bends along the strokes."
            + (" B is A here: switch a part of B off to compare." if same else ""))
    return (*figures, note)


def build_filter() -> SimpleNamespace:
    gr.Markdown("**Click a pixel in A or B** (in the pictures above) at any step: which pixels of x_t the network's "
                "clean-image guess at that pixel is made of, ∂x̂0[pixel] / ∂x_t, for A and for B.")
    with gr.Row():
        filter_a = gr.Plot(format=LOSSLESS, show_label=False, elem_id="filter-a")
        filter_b = gr.Plot(format=LOSSLESS, show_label=False, elem_id="filter-b")
    note = gr.Markdown(elem_id="filter-note")
    return SimpleNamespace(outputs=[filter_a, filter_b, note])
