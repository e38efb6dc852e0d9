"""B's switches: a skip scale per resolution, attention sites, the time embedding, built from B's own model.
"""

from __future__ import annotations

import gradio as gr

from explainer.checks import MAX_SKIP_SLIDERS, model_b_of
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
