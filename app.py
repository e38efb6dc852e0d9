"""U-Net Diffusion Playground — the Gradio app. UI only: every number and picture comes from playground/.

Run `python app.py` (models from $PLAYGROUND_WEIGHTS, default weights/). Handlers are plain functions at
the top; `build_demo()` lays out the page and wires the events; per-session results live in gr.State.
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import gradio as gr
import torch

from playground import Ablation, SampleSettings, feature_group, features_at, sample
from playground.evaluate import classify, eps_mse_per_timestep, skip_backbone_spectra
from playground.registry import ModelRegistry
from playground.sampling import MAX_STEPS, SAMPLERS
from playground.viz import (
    DIVERGING, RANGE_MODES, SEQUENTIAL, channel_grid, colour_bar, curves_figure, image_grid, mean_abs_map, pca_rgb,
    save_gif, signed_grid, signed_range, trajectory_frames,
)

MAX_BATCH = 16
MAX_SKIP_SLIDERS = 5  # the UI holds this many skip-scale sliders; a model shows as many as it has resolutions
SAME_AS_A = "A with the ablation"
DIGIT_CHOICES = ["no digit (unconditional)", "every digit (0–9 cycling)"] + [str(d) for d in range(10)]
STATE_TTL_SECONDS = 3600
IMAGE_PX = 84  # display height of one 28-pixel sample
EPS_TIMESTEPS = (0, 25, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)

INTRO = """
# U-Net Diffusion Playground
Look inside a diffusion model's U-Net while it generates MNIST digits, and take it apart.
**1.** Pick a model, a digit and a seed, press **Generate**: network **A** runs intact, network **B** with the
ablation you set (or another model), both from the *same* noise. **2.** Slide through the reverse process:
the predicted clean image x̂0, the noisy input x_t and the predicted noise ε̂ at every step. **3.** Open the
feature maps of any block. **4.** Read the numbers. The model works directly in pixel space: no VAE blurs what
the U-Net did.
"""


class UserError(gr.Error):
    """A plain-sentence error shown to the user (a toast); the server keeps serving."""


def user_errors(handler):
    """Turn library ValueErrors (and numerical failures) into gr.Error toasts with a plain sentence."""

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, FloatingPointError, TypeError, KeyError, IndexError) as error:
            raise UserError(str(error).strip("'\"") or type(error).__name__) from None

    return wrapped


# ---------------------------------------------------------------------------------------------
# Input parsing: every user value is checked here before it reaches the library.
# ---------------------------------------------------------------------------------------------


def _int(value, name, low, high):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")) or number != int(number):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if not low <= number <= high:
        raise ValueError(f"{name} must be from {low} to {high}, got {int(number)}")
    return int(number)


def _float(value, name, low, high):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if number != number or not low <= number <= high:
        raise ValueError(f"{name} must be a number from {low} to {high}, got {value!r}")
    return number


def _label(digit, batch):
    if digit not in DIGIT_CHOICES:
        raise ValueError(f"digit must be one of {DIGIT_CHOICES}, got {digit!r}")
    if digit == DIGIT_CHOICES[0]:
        return None
    if digit == DIGIT_CHOICES[1]:
        return tuple(i % 10 for i in range(batch))
    return int(digit)


def _ablation(model, skip_values, attention_off, time_off) -> Ablation:
    resolutions = model.unet.skip_resolutions
    gains = {}
    for resolution, value in zip(resolutions, skip_values):
        gains[resolution] = _float(value, f"skip scale at {resolution}x{resolution}", 0.0, 3.0)
    sites = list(attention_off or [])
    ablation = Ablation(skip_scale=gains, attention_off=sites, time_embedding_off=bool(time_off))
    ablation.check_against(resolutions, model.unet.attention_sites)
    return ablation


def _settings(sampler, steps, seed, batch, digit, guidance) -> SampleSettings:
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
    batch = _int(batch, "batch", 1, MAX_BATCH)
    return SampleSettings(
        sampler=sampler, steps=_int(steps, "steps", 1, MAX_STEPS), seed=_int(seed, "seed", 0, 2**31 - 1), batch=batch,
        label=_label(digit, batch), guidance=_float(guidance, "guidance", 0.0, 10.0),
    )


def _model_b(registry, model_a, model_b):
    return registry.get(model_a) if model_b in (None, "", SAME_AS_A) else registry.get(model_b)


def _session(state):
    if not state or "a" not in state:
        raise ValueError("Generate first: there is no trajectory to look at yet.")
    return state


# ---------------------------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------------------------


def describe_models(registry: ModelRegistry) -> str:
    lines = [f"**Models** in `{registry.root.name}/`: " + (", ".join(f"`{n}`" for n in registry.available) or "none")]
    for name, error in registry.errors.items():
        lines.append(f"- ⚠️ `{name}` could not be loaded: {error}")
    return "\n".join(lines)


def ablation_panel(registry: ModelRegistry, model_a, model_b):
    """The ablation controls for network B, built from B's own introspection."""
    model = _model_b(registry, model_a, model_b)
    resolutions = model.unet.skip_resolutions
    sliders = [
        gr.Slider(visible=i < len(resolutions), value=1.0,
                  label=f"skips joining at {resolutions[i]}×{resolutions[i]}" if i < len(resolutions) else "unused")
        for i in range(MAX_SKIP_SLIDERS)
    ]
    sites = gr.CheckboxGroup(choices=list(model.unet.attention_sites), value=[])
    trained = model.unet.training_ablation
    note = "" if trained.is_intact else f"`{model.name}` was *trained* with {_describe(trained)}: that always applies to it."
    return (*sliders, sites, gr.Checkbox(value=False), note)


def generate(registry, model_a, model_b, digit, guidance, seed, sampler, steps, batch, *rest, progress=gr.Progress()):
    """Run A (intact) and B (ablated, or another model) from the same noise; show the final step."""
    *skip_values, attention_off, time_off, state = rest
    settings = _settings(sampler, steps, seed, batch, digit, guidance)
    a_model, b_model = registry.get(model_a), _model_b(registry, model_a, model_b)
    if a_model.image_shape != b_model.image_shape:
        raise ValueError(f"A ({a_model.name}) and B ({b_model.name}) make images of different shapes; pick matching models")
    ablation_b = _ablation(b_model, skip_values, attention_off, time_off)
    total = 2 * settings.steps
    a = sample(a_model, settings, lambda i, n: progress((i, total), desc="A: intact network"))
    b = _run_b(a, a_model, b_model, ablation_b, lambda i, n: progress((n + i, total), desc="B: ablated network"))
    state = {"a": a, "b": b, "model_a": a_model.name, "model_b": b_model.name, "ablation_b": ablation_b}
    step = len(a)
    return (state, gr.Slider(maximum=step, value=step), gr.Slider(maximum=max(settings.batch - 1, 1), value=0, interactive=settings.batch > 1),
            *render_step(state, step), *render_numbers(registry, state))


def rerun_b(registry, model_a, model_b, *rest, progress=gr.Progress()):
    """The ablation changed: rerun B only, from the same noise and settings as the cached A."""
    *skip_values, attention_off, time_off, state, step = rest
    state = _session(state)
    a_model, b_model = registry.get(model_a), _model_b(registry, model_a, model_b)
    if b_model.name != state["model_b"] or a_model.name != state["model_a"]:
        raise ValueError("The models changed since the last Generate; press Generate to run both again.")
    ablation_b = _ablation(b_model, skip_values, attention_off, time_off)
    b = _run_b(state["a"], a_model, b_model, ablation_b, lambda i, n: progress((i, n), desc="B: ablated network"))
    state = dict(state, b=b, ablation_b=ablation_b)
    step = min(_int(step, "step", 0, len(b)), len(b))
    return (state, *render_step(state, step), *render_numbers(registry, state))


def _run_b(a, a_model, b_model, ablation_b, progress):
    """B's trajectory from A's settings and noise; A itself when B would compute exactly the same thing."""
    if b_model is a_model and ablation_b.is_intact:
        return a
    return sample(b_model, replace(a.settings, ablation=ablation_b), progress)


def _at(trajectory, step):
    """x̂0, x_t and ε̂ shown at slider position `step` (position S is the finished sample)."""
    last = len(trajectory)
    if step >= last:
        return trajectory.final, trajectory.final, trajectory.eps[last - 1], 0
    return trajectory.x0[step], trajectory.x_t[step], trajectory.eps[step], int(trajectory.timesteps[step])


def render_step(state, step):
    """Nine pictures (x̂0, x_t, ε̂ for A, B and |A−B|) and their caption. Never calls a model."""
    a, b = state["a"], state["b"]
    x0_a, xt_a, eps_a, t = _at(a, step)
    x0_b, xt_b, eps_b, _ = _at(b, step)
    columns = min(4, a.settings.batch)
    eps_range = max(signed_range(eps_a), signed_range(eps_b))
    diffs = [(x0_a - x0_b), (xt_a - xt_b), (eps_a - eps_b)]
    # one range per column: x̂0 differences at high t can be 100x those of ε̂ and would whiten the others
    diff_ranges = [max(signed_range(d), 1e-3) for d in diffs]
    pictures = [
        image_grid(x0_a, columns, IMAGE_PX), image_grid(xt_a, columns, IMAGE_PX), signed_grid(eps_a, eps_range, columns, IMAGE_PX),
        image_grid(x0_b, columns, IMAGE_PX), image_grid(xt_b, columns, IMAGE_PX), signed_grid(eps_b, eps_range, columns, IMAGE_PX),
        *(signed_grid(d, r, columns, IMAGE_PX) for d, r in zip(diffs, diff_ranges)),
    ]
    where = "the finished sample" if step >= len(a) else f"step {step + 1} of {len(a)}, timestep t = {t}"
    caption = (
        f"**{where}.** Each grid holds the {a.settings.batch} samples, (B, 1, 28, 28). "
        f"x̂0 and x_t in grey over [−1, 1]; ε̂ on a blue–white–red scale over ±{eps_range:.2f}; "
        f"A − B (last row), white = identical, over ±{diff_ranges[0]:.3g} (x̂0), ±{diff_ranges[1]:.3g} (x_t), ±{diff_ranges[2]:.3g} (ε̂). "
        f"Mean |x̂0_A − x̂0_B| = {(x0_a - x0_b).abs().mean():.4f}."
    )
    return (*pictures, caption)


def scrub(state, step):
    """Slider event: re-render the cached trajectories at another step (no model call)."""
    state = _session(state)
    return render_step(state, _int(step, "step", 0, len(state["a"])))


def render_numbers(registry, state):
    """Per-step divergence of B from A, and what our classifier makes of both batches."""
    a, b = state["a"], state["b"]
    steps = torch.arange(1, len(a) + 1)
    figure = curves_figure(
        {"mean |x̂0_A − x̂0_B|": (steps, (a.x0 - b.x0).abs().flatten(1).mean(1)),
         "mean |x_t,A − x_t,B|": (steps, (a.x_t[1:] - b.x_t[1:]).abs().flatten(1).mean(1))},
        "How far B drifts from A during sampling", "reverse-process step (noise → image)", "mean absolute difference (pixel units)",
        logy=True,  # x̂0 at the noisiest steps amplifies ε̂ differences by 1/√ᾱ_t (~100x): a linear axis hides the rest
    )
    table = [f"**A** = `{state['model_a']}` intact · **B** = `{state['model_b']}` with {_describe(state['ablation_b'])}", "",
             f"Mean |A − B| of the final images: **{(a.final - b.final).abs().mean():.4f}** (pixel units of [−1, 1])."]
    classifier = registry.classifier()
    if classifier is not None:
        table += ["", "| | digits our classifier sees (confidence) | share confident > 0.9 |", "|---|---|---|"]
        for name, trajectory in (("A", a), ("B", b)):
            probabilities, _ = classify(classifier, trajectory.final)
            confidence, predicted = probabilities.max(1)
            seen = " ".join(f"{d}({c:.2f})" for d, c in zip(predicted.tolist(), confidence.tolist()))
            table.append(f"| {name} | {seen} | {(confidence > 0.9).float().mean():.0%} |")
    return figure, "\n".join(table)


def _describe(ablation: Ablation) -> str:
    if ablation.is_intact:
        return "nothing switched off"
    parts = [f"skips at {r}×{r} × {g:g}" for r, g in ablation.skip_scale]
    parts += [f"attention `{s}` off" for s in sorted(ablation.attention_off)]
    parts += ["time embedding off"] if ablation.time_embedding_off else []
    return ", ".join(parts)


def block_choices(registry, model_a):
    """Dropdown entries for every captured map, grouped by where it sits and its resolution."""
    unet = registry.get(model_a).unet
    return [(f"{feature_group(name)} · {shape[1]}×{shape[2]} · {name} ({shape[0]} ch)", name)
            for name, shape in unet.feature_shapes().items()]


def block_dropdown(registry, model_a):
    return gr.Dropdown(choices=block_choices(registry, model_a), value=None)


def view_features(registry, state, step, block, sample_index, range_mode):
    """Channel grid, mean |activation| and PCA-RGB of one block at the slider's step, for A and B."""
    state = _session(state)
    if range_mode not in RANGE_MODES:
        raise ValueError(f"colour range must be one of {list(RANGE_MODES)}, got {range_mode!r}")
    a, b = state["a"], state["b"]
    step = min(_int(step, "step", 0, len(a)), len(a) - 1)
    sample_index = _int(sample_index, "sample", 0, a.settings.batch - 1)
    outputs, captions = [], []
    for label, trajectory, model_name in (("A", a, state["model_a"]), ("B", b, state["model_b"])):
        features = features_at(registry.get(model_name), trajectory, step, sample_index)
        if block not in features:
            raise ValueError(f"block must be one of the model's feature maps, e.g. {next(iter(features))!r}; got {block!r}")
        feature = features[block]
        global_max = max(signed_range(f) for f in features.values()) if range_mode == "global" else None
        grid, shown = channel_grid(feature, range_mode, global_max, size=300)
        magnitude, magnitude_max = mean_abs_map(feature, size=150)
        pca, shares = pca_rgb(feature, size=150)
        outputs += [grid, magnitude, pca]
        c, h, w = feature.shape
        scale = "each channel over its own ±max" if range_mode == "channel" else f"±{shown:.3g}"
        captions.append(
            f"**{label}** · `{block}` ({feature_group(block)}) · shape ({c}, {h}, {w}) · t = {int(trajectory.timesteps[step])} · "
            f"values in [{feature.min():.3g}, {feature.max():.3g}] · channels: {scale} · mean|act| up to {magnitude_max:.3g} · "
            f"PCA explains {sum(shares):.0%} of variance"
        )
    legend = colour_bar(-1, 1, DIVERGING, "channel value / its colour range (blue < 0 < red)")
    return (*outputs, legend, "\n\n".join(captions))


@functools.lru_cache(maxsize=64)
def _eps_curve(registry, model_name, ablation):
    """ε-MSE per timestep: a pure function of (model, ablation), so safe to share across sessions."""
    images, _ = registry.heldout()
    return eps_mse_per_timestep(registry.get(model_name), images[:128], EPS_TIMESTEPS, ablation=ablation)


def compute_numbers(registry, state, step, progress=gr.Progress()):
    """ε-error per timestep for A vs B on held-out digits, and skip vs backbone spectra of A and B."""
    state = _session(state)
    progress(0.1, desc="ε-error of A on 128 held-out test digits")
    curve_a = _eps_curve(registry, state["model_a"], Ablation())
    progress(0.5, desc="ε-error of B")
    curve_b = _eps_curve(registry, state["model_b"], state["ablation_b"])
    eps_figure = curves_figure(
        {f"A: {state['model_a']}": (list(curve_a), list(curve_a.values())),
         f"B: {state['model_b']}, {_describe(state['ablation_b'])}": (list(curve_b), list(curve_b.values()))},
        "Denoising error per timestep (lower is better)", "timestep t (0 = clean, 999 = pure noise)", "mean (ε̂ − ε)²", logy=True,
    )
    step = min(_int(step, "step", 0, len(state["a"])), len(state["a"]) - 1)
    curves = {}
    for label, key in (("A", "a"), ("B", "b")):
        spectra = skip_backbone_spectra(features_at(registry.get(state[f"model_{key}"]), state[key], step, 0))
        for join, s in spectra.items():
            if join.endswith("resnets.0"):  # one join per resolution keeps the plot readable
                # bin 0 (the mean) is removed before the transform, so the curves start at the first frequency
                curves[f"{label} skip {s['resolution']}px"] = (s["frequencies"][1:], s["skip"][1:])
                curves[f"{label} backbone {s['resolution']}px"] = (s["frequencies"][1:], s["backbone"][1:])
    spectrum_figure = curves_figure(curves, f"Radially averaged power of skip vs backbone features (sample 0, step {step + 1})",
                                    "spatial frequency (cycles per pixel of that map)", "share of power", logy=True)
    return eps_figure, spectrum_figure


def export_gif(state, which):
    """The whole trajectory of A (x̂0 or x_t per step) as a looping GIF file."""
    state = _session(state)
    quantity = {"x̂0 (predicted clean image)": "x0", "x_t (noisy input)": "x_t"}.get(which)
    if quantity is None:
        raise ValueError("choose x̂0 or x_t for the animation")
    frames = trajectory_frames(state["a"], quantity, columns=min(4, state["a"].settings.batch), size=IMAGE_PX)
    stride = max(1, len(frames) // 100)  # at most ~100 frames: a long DDPM run stays a small file
    frames = frames[::stride] + ([] if (len(frames) - 1) % stride == 0 else [frames[-1]])
    directory = Path(tempfile.mkdtemp(prefix="playground-gif-"))
    path = directory / f"trajectory-{quantity}.gif"
    save_gif(frames, path)
    return str(path)


# ---------------------------------------------------------------------------------------------
# Layout and wiring
# ---------------------------------------------------------------------------------------------


def build_demo(weights_dir: str | os.PathLike | None = None) -> gr.Blocks:
    registry = ModelRegistry(weights_dir or os.environ.get("PLAYGROUND_WEIGHTS", "weights"))
    registry.load_all()
    models = registry.available
    default_a = "mnist" if "mnist" in models else (models[0] if models else None)
    bound = lambda handler: user_errors(functools.partial(handler, registry))  # noqa: E731

    with gr.Blocks(title="U-Net Diffusion Playground") as demo:
        state = gr.State(None, time_to_live=STATE_TTL_SECONDS)
        gr.Markdown(INTRO)
        gr.Markdown(describe_models(registry), elem_id="model-status")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                model_a = gr.Dropdown(models, value=default_a, label="Model A (runs intact)", elem_id="model-a")
                model_b = gr.Dropdown([SAME_AS_A] + models, value=SAME_AS_A, label="Network B", elem_id="model-b",
                                      info="A with the ablation below, or another model (e.g. one trained without skips)")
                digit = gr.Dropdown(DIGIT_CHOICES, value=DIGIT_CHOICES[1], label="Digit", elem_id="digit")
                guidance = gr.Slider(0, 10, value=1.5, step=0.25, label="Guidance scale", elem_id="guidance",
                                     info="classifier-free guidance: 1 = plain conditional, higher = more digit-like")
                with gr.Row():
                    seed = gr.Number(0, precision=0, label="Seed", elem_id="seed", minimum=0)
                    sampler = gr.Dropdown(list(SAMPLERS), value="ddim", label="Sampler", elem_id="sampler")
                steps = gr.Slider(1, MAX_STEPS, value=50, step=1, label="Steps", elem_id="steps")
                batch = gr.Slider(1, MAX_BATCH, value=4, step=1, label="Batch", elem_id="batch")
                generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=1, min_width=300):
                gr.Markdown("### Ablation of network B\nApplied to every step of B's reverse process. "
                            "Changing a control reruns B only.")
                skip_sliders = [gr.Slider(0, 3, value=1, step=0.05, label=f"skip {i}", visible=False, elem_id=f"skip-{i}")
                                for i in range(MAX_SKIP_SLIDERS)]
                attention_off = gr.CheckboxGroup([], label="Attention switched off", elem_id="attention-off",
                                                 info="the site's residual path alone flows on")
                time_off = gr.Checkbox(False, label="Hide the timestep (time embedding → 0)", elem_id="time-off")
                trained_note = gr.Markdown()
                gr.Markdown("Skip scale: 0 = off, below 1 weakens, above 1 amplifies (FreeU-style).")

        gr.Markdown("## The reverse process\nSlide through the steps; nothing is recomputed. "
                    "Columns: predicted clean image x̂0 (what the network believes the final digit is), "
                    "its noisy input x_t, and its predicted noise ε̂.")
        step = gr.Slider(0, 50, value=50, step=1, label="Step (0 = pure noise, last = finished sample)", elem_id="step")
        step_caption = gr.Markdown(elem_id="step-caption")
        pictures = []
        for row_label in ("A (intact)", "B (ablated / other model)", "A − B"):
            with gr.Row():
                for column in ("x̂0", "x_t", "ε̂"):
                    pictures.append(gr.Image(label=f"{row_label}: {column}", type="pil", interactive=False, height=260,
                                             elem_id=f"img-{row_label[0]}-{column}".replace("̂", "").replace("−", "d").replace(" ", "")))
        with gr.Row():
            gif_which = gr.Radio(["x̂0 (predicted clean image)", "x_t (noisy input)"], value="x̂0 (predicted clean image)",
                                 label="Animate network A's trajectory", elem_id="gif-which")
            gif_button = gr.Button("Make GIF", elem_id="gif-button")
            gif = gr.Image(label="Trajectory animation", type="filepath", interactive=False, height=240, elem_id="gif")

        gr.Markdown("## Feature maps\nAny block's output at the slider's step, for one sample, from A and B "
                    "(the conditional pass). Signed values on blue–white–red; PCA-RGB colours pixels with similar "
                    "feature vectors alike.")
        with gr.Row():
            choices = block_choices(registry, default_a) if default_a else []
            default_block = "mid_block.attentions.0" if any(v == "mid_block.attentions.0" for _, v in choices) else None
            block = gr.Dropdown(choices, value=default_block, label="Block", elem_id="block")
            sample_index = gr.Slider(0, 3, value=0, step=1, label="Sample", elem_id="sample-index")
            range_mode = gr.Radio(list(RANGE_MODES), value="block", label="Colour range", elem_id="range-mode",
                                  info="per channel / one range for the block / one range for every block")
        feature_images = []
        for row_label in ("A", "B"):
            with gr.Row():
                for column, height in (("channels", 320), ("mean |activation|", 200), ("PCA → RGB", 200)):
                    feature_images.append(gr.Image(label=f"{row_label}: {column}", type="pil", interactive=False, height=height,
                                                   elem_id=f"feat-{row_label}-{column.split()[0].strip('|')}"))
        with gr.Row():
            legend = gr.Image(label="Colour legend", type="pil", interactive=False, height=70, elem_id="legend")
            feature_caption = gr.Markdown(elem_id="feature-caption")

        gr.Markdown("## Numbers")
        numbers = gr.Markdown(elem_id="numbers")
        drift_plot = gr.Plot(label="Divergence per step", show_label=False, elem_id="drift-plot")
        numbers_button = gr.Button("Compute ε-error per timestep and spectra (a few seconds)", elem_id="numbers-button")
        with gr.Row():
            eps_plot = gr.Plot(label="ε-error per timestep", show_label=False, elem_id="eps-plot")
            spectrum_plot = gr.Plot(label="Skip vs backbone spectra", show_label=False, elem_id="spectrum-plot")

        # ---- events
        panel_outputs = [*skip_sliders, attention_off, time_off, trained_note]
        ablation_inputs = [*skip_sliders, attention_off, time_off]
        step_outputs = [*pictures, step_caption]
        number_outputs = [drift_plot, numbers]
        model_events = dict(concurrency_id="model", concurrency_limit=1)
        view_events = dict(concurrency_id="view", concurrency_limit=4, show_progress="hidden")

        generate_button.click(
            bound(generate), [model_a, model_b, digit, guidance, seed, sampler, steps, batch, *ablation_inputs, state],
            [state, step, sample_index, *step_outputs, *number_outputs], api_name="generate", **model_events,
        )
        for control in skip_sliders:
            control.release(bound(rerun_b), [model_a, model_b, *ablation_inputs, state, step],
                            [state, *step_outputs, *number_outputs], api_name="ablate" if control is skip_sliders[0] else False,
                            **model_events)
        for control in (attention_off, time_off):
            control.input(bound(rerun_b), [model_a, model_b, *ablation_inputs, state, step],
                          [state, *step_outputs, *number_outputs], api_name=False, **model_events)
        step.change(user_errors(scrub), [state, step], step_outputs, api_name="scrub", **view_events)
        feature_inputs = [state, step, block, sample_index, range_mode]
        feature_outputs = [*feature_images, legend, feature_caption]
        for trigger in (step.release, block.input, sample_index.release, range_mode.input):
            trigger(bound(view_features), feature_inputs, feature_outputs,
                    api_name="features" if trigger == block.input else False, **view_events)
        numbers_button.click(bound(compute_numbers), [state, step], [eps_plot, spectrum_plot], api_name="numbers", **model_events)
        gif_button.click(user_errors(export_gif), [state, gif_which], gif, api_name="gif", **view_events)
        for selector in (model_a, model_b):
            selector.input(bound(ablation_panel), [model_a, model_b], panel_outputs,
                           api_name="ablation_panel" if selector is model_a else False)
        model_a.input(bound(block_dropdown), model_a, block, api_name="block_choices")
        if default_a:
            demo.load(bound(ablation_panel), [model_a, model_b], panel_outputs, api_name=False)
    return demo


def main():
    demo = build_demo()
    demo.queue(default_concurrency_limit=2, max_size=64)
    demo.launch(theme=gr.themes.Soft(), css=".gradio-container {max-width: 1400px !important}")


if __name__ == "__main__":
    main()
