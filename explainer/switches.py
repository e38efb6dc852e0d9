"""B's switches: a skip scale per resolution, attention sites, the time embedding, built from B's own model.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import gradio as gr

from explainer.checks import MAX_SKIP_SLIDERS, ablation_of, model_b_of
from explainer.diagram import clickable_names, diagram_spec, diagram_value, toggle_attention, toggle_skip, toggle_time
from explainer.features import OPENING_BLOCK
from explainer.sessions import supersede_runs
from playground import Ablation
from playground.registry import ModelRegistry
from playground.sampling import DiffusionModel


def describe_models(registry: ModelRegistry) -> str:
    lines = [f"**Models** in `{registry.root.name}/`: " + (", ".join(f"`{n}`" for n in registry.available) or "none")]
    for name, error in registry.errors.items():
        lines.append(f"- ⚠️ `{name}` could not be loaded: {error}")
    return "\n".join(lines)


def ablation_panel(registry: ModelRegistry, model_a, model_b):
    """The ablation controls for network B, built from B's own introspection."""
    model = model_b_of(registry, model_a, model_b)
    return (*ablation_controls(model.unet), trained_note(model))


def ablation_controls(unet, skip_gains=(1.0,) * MAX_SKIP_SLIDERS, attention_off=(), time_off=False) -> list:
    """B's skip sliders, attention sites and time switch for this model, set to an ablation."""
    sites = attention_look(unet)
    return [*(gr.Slider(value=gain, **skip_slider_look(unet, i)) for i, gain in enumerate(skip_gains)),
            gr.CheckboxGroup(value=[site for site in attention_off if site in sites["choices"]], **sites),
            gr.Checkbox(value=time_off, **time_look(unet))]


# Only what an ablation can still change is offered: a part training already took out (a skip cut to zero, an
# attention site or the time embedding trained off) would move nothing, and the trained note says it is gone.
def skip_slider_look(unet, i: int) -> dict:
    """Skip slider i for this model: hidden past its resolutions, locked where training cut the skips."""
    look = per_resolution(unet.skip_resolutions if unet is not None else (), i, "skips joining")
    locked = look["visible"] and unet.skip_resolutions[i] not in unet.switchable_skip_resolutions
    return look | ({"label": f"{look['label']} (trained without)", "interactive": False} if locked else {"interactive": True})


def attention_look(unet) -> dict:
    sites = list(unet.switchable_attention_sites) if unet is not None else []
    return {"choices": sites, "visible": bool(sites)}


def time_look(unet) -> dict:
    return {"interactive": unet is None or not unet.training_ablation.time_embedding_off}


def per_resolution(resolutions, i: int, knob: str) -> dict:
    """Slider i of a row with one slider per resolution where skips join (hidden past the model's own)."""
    if i >= len(resolutions):
        return {"visible": False, "label": "unused"}
    return {"visible": True, "label": f"{knob} at {resolutions[i]}×{resolutions[i]}"}


def trained_note(model: DiffusionModel) -> str:
    """What a model lost in training, which no control can give back (shown beside B's ablation controls)."""
    trained = model.unet.training_ablation
    return "" if trained.is_intact else f"`{model.name}` was *trained* with {describe(trained)}: that always applies to it."


def describe(ablation: Ablation) -> str:
    if ablation.is_intact:
        return "nothing switched off"
    parts = [f"skips at {r}×{r} × {g:g}" for r, g in ablation.skip_scale]
    parts += [f"attention `{s}` off" for s in sorted(ablation.attention_off)]
    parts += ["time embedding off"] if ablation.time_embedding_off else []
    parts += [f"FreeU b = {b:g} at {r}×{r}" for r, b in ablation.backbone_scale]
    parts += [f"FreeU s = {g:g} at {r}×{r}" for r, g in ablation.skip_low_freq_scale]
    return ", ".join(parts)


def build_switches(model: DiffusionModel | None) -> SimpleNamespace:
    """B's switches, built for the default model: a page opens with no event to set them up, and API clients, who
    get no page-load event, see them as a visitor does. The diagram flips the same controls."""
    unet = model.unet if model is not None else None
    skip_sliders = [gr.Slider(0, 3, value=1, step=0.05, elem_id=f"skip-{i}", **skip_slider_look(unet, i))
                    for i in range(MAX_SKIP_SLIDERS)]
    attention_off = gr.CheckboxGroup(label="Attention switched off", elem_id="attention-off",
                                     info="the site's residual path alone flows on", **attention_look(unet))
    time_off = gr.Checkbox(False, label="Hide the timestep (time embedding → 0)", elem_id="time-off", **time_look(unet))
    note = gr.Markdown(trained_note(model) if model is not None else "", elem_id="trained-note")
    return SimpleNamespace(skip_sliders=skip_sliders, attention_off=attention_off, time_off=time_off, note=note,
                           inputs=[*skip_sliders, attention_off, time_off])


# ---- the diagram: B's switches drawn on B's model, and a click flips the control it stands for


@functools.lru_cache(maxsize=32)
def _spec(registry, model_name):
    return diagram_spec(registry.get(model_name).unet)  # introspection only: the same for every visitor


def _drawn_ablation(registry, model_a, model_b, rest):
    *skip_values, attention_off, time_off, block = rest
    model = model_b_of(registry, model_a, model_b)
    return model, ablation_of(model, skip_values, attention_off, time_off), block


def opening_diagram(registry, model_name):
    """What the diagram is built with: the default model, every switch on, the opening block selected."""
    if model_name is None:
        return None, None, None
    spec = _spec(registry, model_name)
    return spec, Ablation(), OPENING_BLOCK if OPENING_BLOCK in clickable_names(spec) else None


def diagram_of(registry, model_a, model_b, *rest):
    """The diagram's value: B's model with B's switches (skip scales, attention off, time off) and the open block."""
    model, ablation, block = _drawn_ablation(registry, model_a, model_b, rest)
    spec = _spec(registry, model.name)
    return diagram_value(spec, ablation, block if block in clickable_names(spec) else None)


def switched(registry, model_a, model_b, *rest):
    """One of B's switches moved: the visitor's older runs stop (B reruns next), the diagram shows the switch."""
    supersede_runs()
    return diagram_of(registry, model_a, model_b, *rest)


def click_skip(registry, model_a, model_b, *rest_and_payload):
    """A skip arc clicked: the skip cut (or restored), the slider moved to match, the diagram redrawn."""
    *rest, payload = rest_and_payload
    model, ablation, _ = _drawn_ablation(registry, model_a, model_b, rest)
    unet = model.unet
    gains = toggle_skip(dict(ablation.skip_scale), payload.get("resolution"), unet.switchable_skip_resolutions)
    sliders = [gains.get(r, 1.0) for r in unet.skip_resolutions] + list(rest[len(unet.skip_resolutions):MAX_SKIP_SLIDERS])
    supersede_runs()
    return (*sliders, diagram_of(registry, model_a, model_b, *sliders, *rest[MAX_SKIP_SLIDERS:]))


def click_attention(registry, model_a, model_b, *rest_and_payload):
    """An attention dot clicked: that site switched off (or on) in B."""
    *rest, payload = rest_and_payload
    model, ablation, _ = _drawn_ablation(registry, model_a, model_b, rest)
    off = toggle_attention(sorted(ablation.attention_off), payload.get("site"), model.unet.switchable_attention_sites)
    supersede_runs()
    *sliders, _, time_off, block = rest
    return off, diagram_of(registry, model_a, model_b, *sliders, off, time_off, block)


def click_time(registry, model_a, model_b, *rest_and_payload):
    """The time input clicked: B's timestep hidden (or shown again)."""
    *rest, _payload = rest_and_payload
    model, ablation, _ = _drawn_ablation(registry, model_a, model_b, rest)
    time_off = toggle_time(ablation.time_embedding_off, not model.unet.training_ablation.time_embedding_off)
    supersede_runs()
    *sliders, attention_off, _, block = rest
    return time_off, diagram_of(registry, model_a, model_b, *sliders, attention_off, time_off, block)
