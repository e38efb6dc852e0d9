"""What each block knows: the linear probes shipped beside a model (playground.probes), read along A's and B's run."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from explainer.checks import slider_sample
from explainer.delivery import LOSSLESS
from explainer.numbers import CLASSIFIER_CAVEAT
from explainer.sessions import kept_run
from playground.probes import probe_accuracy_figure, probe_reading, probe_reading_figure


def read_probes(registry, state, sample_index, progress=gr.Progress()):
    """The probes' accuracy per block × t, and their reading of one sample along A's and B's run."""
    state = kept_run(state)
    a_model, b_model = registry.get(state["model_a"]), registry.get(state["model_b"])
    probes = registry.probes_for(a_model)
    if probes is None:
        raise ValueError(f"probes: `{a_model.name}` has no linear probes (a `probes` folder beside its weights; "
                         "`python -m playground.probes train` makes one)")
    if tuple(probes.blocks) != tuple(block for block in probes.blocks if block in b_model.unet.feature_names):
        raise ValueError(f"probes: network B (`{b_model.name}`) lacks blocks the probes read; pick a B of A's architecture")
    sample_index = slider_sample(sample_index, state["a"])
    progress(0.1, desc="the probes read A")
    readings = {"A": probe_reading(probes, a_model, state["a"], sample_index)}
    if state["b"] is not state["a"]:
        progress(0.55, desc="the probes read B")
        readings["B"] = probe_reading(probes, b_model, state["b"], sample_index)
    reading = probe_reading_figure(probes, readings, state["a"].timesteps)
    final = {name: values[:, -1].argmax(-1).tolist() for name, values in readings.items()}  # (blocks,) at the last step
    rows = ["| block | " + " | ".join(f"{name} reads, last step" for name in final) + " |", "|---" * (len(final) + 1) + "|"]
    for i, block in enumerate(probes.blocks):
        rows.append(f"| `{block}` | " + " | ".join(str(digits[i]) for digits in final.values()) + " |")
    rows += ["", f"Sample {sample_index}. Each step is read by the probe of the nearest probed t; the model is told no digit "
                 f"(the null label), so a block that reads the digit carries it itself. {CLASSIFIER_CAVEAT}"]
    return probe_accuracy_figure(probes), reading, "\n".join(rows)


def build_probes() -> SimpleNamespace:
    gr.Markdown("Does each block know the digit at step t? A linear probe per block and timestep, trained on real "
                "digits noised to t (held-out accuracy on the left, chance 0.1), reads the current run's sample along "
                "the reverse process, for A and for B.")
    button = gr.Button("Read this run with the probes", elem_id="probes-button")
    with gr.Row():
        accuracy = gr.Plot(format=LOSSLESS, show_label=False, elem_id="probe-accuracy")
        reading = gr.Plot(format=LOSSLESS, show_label=False, elem_id="probe-reading")
    table = gr.Markdown(elem_id="probe-table")
    return SimpleNamespace(button=button, outputs=[accuracy, reading, table])
