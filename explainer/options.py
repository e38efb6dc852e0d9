"""B over time: where in t its ablation applies, what timestep it is told, FreeU gains and an h-space edit.
"""

from __future__ import annotations

import functools
from dataclasses import replace

from types import SimpleNamespace

import gradio as gr

from explainer.checks import (
    MAX_IMAGE_FORWARDS,
    MAX_SKIP_SLIDERS,
    T_LAST,
    choice,
    gain_values,
    integer,
    model_b_of,
    real,
    switch,
    window_of,
)
from explainer.switches import per_resolution
from playground import SampleSettings
from playground.ablation import freeu_preset
from playground.explore import (
    hspace_probe,
)
from playground.sampling import TimestepLie
from playground.setup import HSpaceRecipe

LIE_MODES = ("no lie", "offset: tell t + value", "fixed: tell t' = value")


HSPACE_COMPONENTS = 8


# The h-space probe reads the bottleneck of this many unconditional samples: half the library's default of 64,
# so the first probe of a (model, t) costs half as long; later ones come from the cache.
PROBE_SAMPLES = 32


WINDOW_HELP = """**Ablation window**: B's ablation applies only while from ≤ t ≤ to (the reverse process runs from t = 999
down to 0; the steps before the window are copied from A). **Timestep lie**: B is told t' (t + value, or a fixed value)
while the scheduler steps at the true t: ε̂ is scaled for the wrong noise level and x̂0 breaks."""


FREEU_HELP = """Per decoder stage: **b** scales half of the decoder's own (backbone) channels, **s** scales only the lowest
spatial frequencies of the skip joining there. The preset is the paper's: b = 1.2, s = 0.9 on the deepest stage, b = 1.4, s = 0.2 on the next."""


HSPACE_HELP = f"""PCA of the bottleneck (h-space) over {PROBE_SAMPLES} unconditional samples at the probe's t (computed once,
then cached); the chosen component, times its standard deviation × strength, is added to B's bottleneck inside the window."""


OPTION_COUNT = 4 + 2 * MAX_SKIP_SLIDERS + 6  # window (2), lie (2), FreeU b and s per slider, h-space (6)


def options_of(model, t_from, t_to, lie_mode, lie_value, b_values, s_values, h_on, probe_t, component, strength, h_from, h_to):
    """B's options beyond the plain ablation, checked: where in t it applies, what t it is told, FreeU, h-space."""
    resolutions = model.unet.skip_resolutions
    window = window_of(t_from, t_to, "ablation window")
    choice(lie_mode, "timestep lie", LIE_MODES)
    lie = None
    if lie_mode == LIE_MODES[1]:
        lie = TimestepLie(offset=integer(lie_value, "timestep lie value", -T_LAST, T_LAST))
    elif lie_mode == LIE_MODES[2]:
        lie = TimestepLie(fixed=integer(lie_value, "timestep lie value", 0, T_LAST))
    else:
        integer(lie_value, "timestep lie value", -T_LAST, T_LAST)  # unused now, but never unexamined
    backbone = dict(zip(resolutions, gain_values(b_values, "FreeU b", 3.0)))
    low_freq = dict(zip(resolutions, gain_values(s_values, "FreeU s", 3.0)))
    recipe = None
    probe_t, component = integer(probe_t, "h-space probe t", 0, T_LAST), integer(component, "h-space component", 0, HSPACE_COMPONENTS - 1)
    strength, h_window = real(strength, "h-space strength", -10.0, 10.0), window_of(h_from, h_to, "h-space window")
    if switch(h_on, "h-space edit on"):
        if model.unet.mid_block is None:
            raise ValueError(f"h-space edit: model {model.name!r} has no mid block, so it has no h-space")
        recipe = HSpaceRecipe(component, strength, probe_t, PROBE_SAMPLES, h_window)
    return {"window": window, "lie": lie, "backbone": backbone, "low_freq": low_freq, "h_edit": recipe}


def with_freeu(ablation, options):
    return replace(ablation, backbone_scale=options["backbone"], skip_low_freq_scale=options["low_freq"])


@functools.lru_cache(maxsize=8)
def probe(registry, model_name, sampler, steps, seed, guidance, t):
    """The h-space probe is a pure function of its inputs, so one probe serves every session (it takes seconds).

    Sampled exactly as PlaygroundSetup.sample_settings samples it, so a shared setup reproduces the same edit."""
    settings = SampleSettings(sampler=sampler, steps=steps, seed=seed, batch=PROBE_SAMPLES, guidance=guidance)
    return hspace_probe(registry.get(model_name), settings, t, components=HSPACE_COMPONENTS)


def b_settings(registry, settings_a, b_model, ablation_b, options) -> SampleSettings:
    """B's settings: A's noise and schedule with B's ablation, its t-window, timestep lie and h-space edit."""
    ablation_b.check_against(b_model.unet.skip_resolutions, b_model.unet.attention_sites)  # FreeU gains set for another model
    edit = None
    recipe = options["h_edit"]
    if recipe is not None:
        s = settings_a
        if PROBE_SAMPLES * s.steps > MAX_IMAGE_FORWARDS:
            raise ValueError(f"h-space edit: the probe runs {PROBE_SAMPLES} samples through up to {s.steps} steps, "
                             f"more than this server allows; use at most {MAX_IMAGE_FORWARDS // PROBE_SAMPLES} steps")
        edit = probe(registry, b_model.name, s.sampler, s.steps, s.seed, s.guidance, recipe.probe_t).edit(
            recipe.component, recipe.strength, recipe.window)
    return replace(settings_a, ablation=ablation_b, ablation_window=options["window"], timestep_lie=options["lie"], h_edit=edit)


def describe_timing(options) -> str:
    parts = []
    if options["window"] is not None:
        parts.append(f"only for {options['window'].t_min} ≤ t ≤ {options['window'].t_max}")
    lie = options["lie"]
    if lie is not None:
        parts.append(f"told t' = {lie.fixed}" if lie.fixed is not None else f"told t' = t {lie.offset:+d}")
    recipe = options["h_edit"]
    if recipe is not None:
        where = "" if recipe.window is None else f" for {recipe.window.t_min} ≤ t ≤ {recipe.window.t_max}"
        parts.append(f"h-space PC{recipe.component} × {recipe.strength:g}{where} (probed at t = {recipe.probe_t})")
    return "; ".join(parts)


def split_option_values(values):
    """The option controls arrive flat (as Gradio sends inputs); options_of takes the FreeU sliders as two lists."""
    if len(values) != OPTION_COUNT:
        raise ValueError(f"B's options: expected {OPTION_COUNT} values, got {len(values)}")
    n = MAX_SKIP_SLIDERS
    return (*values[:4], list(values[4:4 + n]), list(values[4 + n:4 + 2 * n]), *values[4 + 2 * n:])


def options_panel(registry, model_a, model_b):
    """FreeU sliders, one b and one s per decoder stage of B's model (like the skip sliders).

    Their values stay: the session keeps the gains they last set, and the two must not disagree."""
    resolutions = model_b_of(registry, model_a, model_b).unet.skip_resolutions
    return (*freeu_sliders(resolutions, "b"), *freeu_sliders(resolutions, "s"))


def freeu_sliders(resolutions, knob, values=None):
    return [gr.Slider(**per_resolution(resolutions, i, f"FreeU {knob}"), **({} if values is None else {"value": values[i]}))
            for i in range(MAX_SKIP_SLIDERS)]


def freeu_preset_values(registry, model_a, model_b):
    """FreeU's published defaults on B's two deepest decoder stages; the other stages stay at 1."""
    resolutions = model_b_of(registry, model_a, model_b).unet.skip_resolutions
    preset = freeu_preset(resolutions)
    backbone, low_freq = dict(preset.backbone_scale), dict(preset.skip_low_freq_scale)
    padded = list(resolutions) + [None] * (MAX_SKIP_SLIDERS - len(resolutions))
    return (*[backbone.get(r, 1.0) for r in padded], *[low_freq.get(r, 1.0) for r in padded])


def build_options(resolutions) -> SimpleNamespace:
    """The "B over time" tab: every control in it reruns B."""
    with gr.Tab("t-window and timestep lie"):
        gr.Markdown(WINDOW_HELP)
        with gr.Row():
            window_from = gr.Slider(0, T_LAST, value=0, step=1, label="Ablation window: from t", elem_id="window-from")
            window_to = gr.Slider(0, T_LAST, value=T_LAST, step=1, label="Ablation window: to t", elem_id="window-to")
            lie_mode = gr.Radio(list(LIE_MODES), value=LIE_MODES[0], label="Timestep lie", elem_id="lie-mode")
            lie_value = gr.Slider(-T_LAST, T_LAST, value=300, step=1, label="Lie value", elem_id="lie-value")
    with gr.Tab("FreeU"):
        with gr.Row(equal_height=True):
            gr.Markdown(FREEU_HELP)
            preset = gr.Button("FreeU preset", size="sm", scale=0, min_width=130, elem_id="freeu-preset")
        with gr.Row():
            freeu_b = [gr.Slider(0, 3, value=1, step=0.05, elem_id=f"freeu-b-{i}", **per_resolution(resolutions, i, "FreeU b"))
                       for i in range(MAX_SKIP_SLIDERS)]
        with gr.Row():
            freeu_s = [gr.Slider(0, 3, value=1, step=0.05, elem_id=f"freeu-s-{i}", **per_resolution(resolutions, i, "FreeU s"))
                       for i in range(MAX_SKIP_SLIDERS)]
    with gr.Tab("h-space"):
        gr.Markdown(HSPACE_HELP)
        with gr.Row():
            h_on = gr.Checkbox(False, label="Add an h-space direction to B", elem_id="h-on")
            probe_t = gr.Slider(0, T_LAST, value=500, step=1, label="Probe h-space at t", elem_id="probe-t")
            component = gr.Slider(0, HSPACE_COMPONENTS - 1, value=0, step=1, label="Principal component", elem_id="h-component")
        with gr.Row():
            strength = gr.Slider(-10, 10, value=2, step=0.5, label="Strength (std devs)", elem_id="h-strength")
            h_from = gr.Slider(0, T_LAST, value=0, step=1, label="h-space window: from t", elem_id="h-from")
            h_to = gr.Slider(0, T_LAST, value=T_LAST, step=1, label="h-space window: to t", elem_id="h-to")
    inputs = [window_from, window_to, lie_mode, lie_value, *freeu_b, *freeu_s, h_on, probe_t, component, strength, h_from, h_to]
    return SimpleNamespace(inputs=inputs, freeu=[*freeu_b, *freeu_s], preset=preset)
