"""U-Net Diffusion Playground — the Gradio app. UI only: every number and picture comes from playground/.

Run `python app.py` (models from $PLAYGROUND_WEIGHTS, default weights/). Handlers are plain functions at
the top; `build_demo()` lays out the page and wires the events; per-session results live in gr.State.
"""

from __future__ import annotations

import contextvars
import functools
import io
import logging
import math
import os
import tempfile
import textwrap
import threading
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import gradio as gr
from gradio import processing_utils
from gradio import utils as gradio_utils
from gradio.data_classes import ImageData
from gradio.components.plot import PlotData
import matplotlib.pyplot as plt
from PIL import Image as PILImage
from matplotlib.figure import Figure
import torch

from playground import Ablation, SampleSettings, feature_group, features_at
from playground.evaluate import CONFIDENCE, DIVERGED, classify, confident_share, eps_mse_per_timestep, skip_backbone_spectra
from playground.ablation import freeu_preset
from playground.explore import (
    class_probability_figure, decision_figure, digit_decision, export_safetensors, hspace_probe, sweep_figure, trajectory_metadata,
    trajectory_tensors, window_sweep,
)
from playground.network_thread import NetworkThread, use_threads
from playground.registry import ModelRegistry
from playground.sampling import MAX_STEPS, SAMPLERS, DiffusionModel, TimestepLie, Window
from playground.setup import LESSONS, HSpaceRecipe, PlaygroundSetup
from playground.viz import (
    DIVERGING, RANGE_MODES, SEQUENTIAL, channel_grid, colour_bar, curves_figure, image_grid, mean_abs_map, pca_rgb,
    save_gif, signed_grid, signed_range, spectra_figure, trajectory_frames,
)

MAX_BATCH = 16
MAX_SKIP_SLIDERS = 5  # the UI holds this many skip-scale sliders; a model shows as many as it has resolutions
SAME_AS_A = "A with the ablation"
DIGIT_CHOICES = ["no digit (unconditional)", "every digit (0–9 cycling)"] + [str(d) for d in range(10)]
# A session's trajectories are dropped after this long without a Generate or an ablation change, and at most
# STATE_SESSIONS sessions are held at all (the least recently used go first). SESSION_STATE_BYTES caps what one
# session keeps, so state stays under 48 × 48 MiB ≈ 2.3 GB of a 16 GB Space however many visitors come and go.
STATE_TTL_SECONDS = 1800
STATE_SESSIONS = 48
# One request may run at most this many single-image passes through a U-Net (steps × batch, × 2 with guidance,
# × 2 when B differs from A). The flagship takes ~5.7 ms per image-pass on 2 vCPU, so 8192 is ~45 s: the most
# one visitor may hold the model queue while everyone else waits. Batch 16 and 1000 steps stay possible, not both.
MAX_IMAGE_FORWARDS = 8192
# A session keeps x_t, ε̂ and x̂0 of every step of A and of B (float32): for 28×28 samples that is 9.4 kB per
# sample-step and network, so 50 steps of 16 hold 14.5 MiB and steps × batch may reach ~2670.
SESSION_STATE_BYTES = 48 * 2**20
# A slower machine (or a busier one) must not stretch that: a request still running after this is stopped.
REQUEST_SECONDS = 120
PROGRESS_UPDATES = 10  # per run of the reverse process
GIF_KEEP_SECONDS = 600  # Gradio copies a returned file into its own cache at once; ours need not outlive that
IMAGE_PX = 84  # display height of one 28-pixel sample
# Gradio's default WebP is lossy (a faint difference map or a thin plot line would show compression noise) and
# takes ~3x as long to encode as PNG for these small pictures: ~55 ms of a scrub's 9 images against ~20 ms
LOSSLESS = "png"
EPS_TIMESTEPS = (0, 25, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)
# B as it runs until a visitor sets a t-window, a timestep lie, FreeU gains or an h-space edit
NO_OPTIONS = {"window": None, "lie": None, "backbone": {}, "low_freq": {}, "h_edit": None}
T_LAST = 999  # the flagship's schedule, like every model here, has 1000 training timesteps
LIE_MODES = ("no lie", "offset: tell t + value", "fixed: tell t' = value")
HSPACE_COMPONENTS = 8
# The h-space probe reads the bottleneck of this many unconditional samples: half the library's default of 64,
# so the first probe of a (model, t) costs half as long; later ones come from the cache.
PROBE_SAMPLES = 32
# A sweep runs its batch about windows/2 + 2 times (each windowed run starts at its window): 10 windows × 50 guided
# steps × 8 samples are ~6000 image-passes, ~35 s at the flagship's ~5.7 ms each on 2 idle vCPU.
SWEEP_MAX_BATCH = 8
EXPORT_CHOICES = ("A", "B")

INTRO = """
# U-Net Diffusion Playground
Look inside a diffusion model's U-Net while it generates MNIST digits, and take it apart.
The page opens on a finished run. **1.** Pick a model, a digit and a seed, press **Generate**: network **A** runs
intact, network **B** with the ablation you set (or another model), both from the *same* noise. **2.** Slide
through the reverse process: the predicted clean image x̂0, the noisy input x_t and the predicted noise ε̂ at every
step. **3.** Open the feature maps of any block. **4.** Read the numbers. The model works directly in pixel space:
no VAE blurs what the U-Net did.
"""

WINDOW_HELP = """**Ablation window**: B's ablation applies only while from ≤ t ≤ to (the reverse process runs from t = 999
down to 0; the steps before the window are copied from A). **Timestep lie**: B is told t' (t + value, or a fixed value)
while the scheduler steps at the true t: ε̂ is scaled for the wrong noise level and x̂0 breaks."""
FREEU_HELP = """Per decoder stage: **b** scales half of the decoder's own (backbone) channels, **s** scales only the lowest
spatial frequencies of the skip joining there. The preset is the paper's: b = 1.2, s = 0.9 on the deepest stage, b = 1.4, s = 0.2 on the next."""
HSPACE_HELP = f"""PCA of the bottleneck (h-space) over {PROBE_SAMPLES} unconditional samples at the probe's t (computed once,
then cached); the chosen component, times its standard deviation × strength, is added to B's bottleneck inside the window."""

log = logging.getLogger("playground.app")


def _cache_image_atomically(image, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """gradio.processing_utils.save_pil_to_cache, published by rename instead of rewritten in place.

    Gradio 6.31 names a returned picture by its content hash and writes it with a truncating write_bytes: two
    visitors shown the same picture at once (the same seed and block) could each fetch the file while the other
    rewrote it, and get an empty image. A file is written here once, beside its final name, and renamed into place.
    """
    data = processing_utils.encode_pil_to_bytes(image, format)
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    path = folder / f"{name}.{format}"
    if path.exists():
        os.utime(path)  # delete_cache ages files by ctime: a picture handed out again must live as long again
    else:
        handle, staging = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.")
        with os.fdopen(handle, "wb") as staged:
            staged.write(data)
        os.replace(staging, path)
    return str(path.resolve())


processing_utils.save_pil_to_cache = _cache_image_atomically

# Every network runs on this one thread. PyTorch's OpenMP workers belong to the thread that calls into them: once
# a second thread (Gradio runs each event on one of its worker threads) has its own team, libgomp counts more
# threads than cores, stops spinning between parallel regions, and every convolution waits for its workers to
# wake. Measured on 2 vCPU: generate took 1.5 s on one thread and 3.1 s on a worker thread once another had run
# the model; a batch-16 GIF export on a worker thread took every later guided step from 16-24 ms to 36-38 ms.
# So the events that do not queue here (a scrub, the exports) run with one torch thread (`user_errors`), which
# forms no team. Queued on one thread, the networks also never compete for the cores. While no request waits or
# runs, a second thread (one core, lowest priority, no OpenMP team) computes the runs one switch away from
# what a visitor just saw, or the Generate a visitor's new controls set up (see _prefetch_next, _prefetch_generate).
NETWORK_THREAD = NetworkThread(thread_name_prefix="networks")
# Runs larger than the page's defaults (50 steps × batch 4) are not guessed at: each would hold a core for seconds.
PREFETCH_MAX_STEPS_X_BATCH = 50 * 4
# A Generate's A and B are guessed taking turns of this many steps (NetworkThread.prefetch), so a click part-way finds
# both part-done; resuming a run costs about a step's time at most.
GENERATE_TURN_STEPS = 5


def on_network_thread(handler):
    """Run `handler` on NETWORK_THREAD (from any thread, with Gradio's context: progress, request) and wait for it."""

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        if _on_a_network_thread():
            return handler(*args, **kwargs)  # already there, or waited on by it: queuing would deadlock
        return NETWORK_THREAD.submit(contextvars.copy_context().run, handler, *args, **kwargs).result()

    return wrapped


def figures_drawn(handler):
    """`handler` with the matplotlib figures it returns drawn as it returns (`drawn`), on its own thread."""

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        result = handler(*args, **kwargs)
        return tuple(map(drawn, result)) if isinstance(result, tuple) else drawn(result)

    return wrapped


def drawn(value):
    """A matplotlib figure as the PNG gr.Plot sends (anything else as it is), drawn now.

    Left to gr.Plot, a figure is drawn in Gradio's postprocessing, after the handler has returned. For a handler on
    the network thread, that is when the idle-time guesses start, and a guess's Python competes with matplotlib's for
    the GIL: the drift plot took 108-143 ms there, against 53-84 ms with guessing off.
    """
    if not isinstance(value, Figure):
        return value
    try:
        return PlotData(type="matplotlib", plot=processing_utils.encode_plot_to_base64(value, LOSSLESS))
    finally:
        plt.close(value)


def pictures_filed(handler):
    """`handler` with the pictures it returns filed as Gradio's Image would (`filed`), for an event registered with
    `postprocess=False`.

    Gradio postprocesses each output of an event on a worker thread of its own, then checks and files each picture
    twice (for the session's copy of the page and for the reply), resolving its path against every allowed and
    static folder each time: 20 ms of a scrub's 25 server side, for 9 pictures and a caption that the handler made in
    1.3 ms. Without postprocessing, Gradio files each picture once.
    """

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        return tuple(map(filed, handler(*args, **kwargs)))

    return wrapped


def filed(value):
    """A PIL picture as the lossless file gr.Image sends (anything else as it is)."""
    if not isinstance(value, PILImage.Image):
        return value
    path = processing_utils.save_pil_to_cache(value, cache_dir=gradio_utils.get_upload_folder(), format=LOSSLESS)
    return ImageData(path=path, orig_name=Path(path).name).model_dump()


def _on_a_network_thread() -> bool:
    return threading.current_thread().name.startswith("networks")  # NETWORK_THREAD or PAIR_THREAD, below


# A and B side by side. At batch 1-2 one 28×28 network cannot keep two cores busy (a guided step takes 14 ms
# on two threads, 19 ms on one), so A on the network thread and B on this one, a core each, finish 50 steps of
# both in ~1.0 s instead of ~1.35 s. One-thread work starts no OpenMP team, so the rule above still holds.
PAIR_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="networks-pair")


def _one_core(run):
    use_threads(1)
    return run()


def side_by_side(run_a, run_b):
    """run_a() on this thread and run_b() (if given) on PAIR_THREAD at the same time, one core each."""
    if run_b is None:
        return run_a(), None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        future_b = PAIR_THREAD.submit(contextvars.copy_context().run, _one_core, run_b)
        try:
            a = run_a()
        except BaseException:
            future_b.exception()  # B stops at its own time limit; wait, so no run outlives its request
            raise
        return a, future_b.result()
    finally:
        torch.set_num_threads(threads)


class UserError(gr.Error):
    """A plain-sentence error shown to the user (a toast); the server keeps serving."""


class InternalError(gr.Error):
    """Something the input checks did not foresee: logged with its traceback, shown as an apology."""


def user_errors(handler):
    """Turn library ValueErrors (and numerical failures) into gr.Error toasts with a plain sentence.

    Every input is checked before it reaches the library, so anything else is a bug: it is logged, and the
    visitor gets a sentence instead of Gradio's bare "Error" (the tests treat InternalError as a failure).
    Every event goes through here, so this is also where Gradio's thread gets its one torch thread (NETWORK_THREAD).
    """

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        if not _on_a_network_thread():
            use_threads(1)
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, FloatingPointError) as error:
            raise UserError(str(error) or type(error).__name__) from None
        except Exception:
            log.exception("unexpected error in %s", getattr(handler, "__name__", handler))
            raise InternalError("The server could not finish this request (the error was logged). "
                                "Please try again, or with other settings.") from None

    return wrapped


# ---------------------------------------------------------------------------------------------
# Input parsing: every user value is checked here before it reaches the library.
# ---------------------------------------------------------------------------------------------


def _shown(value, limit=40) -> str:
    """A value as an error message may quote it: short, so a megabyte of input is not echoed back."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _number(value, name):
    """Sliders and number boxes send int or float; a string, a bool or a list is a wrong type, not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {_shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def _int(value, name, low, high):
    number = _number(value, name)
    if number != int(number):
        raise ValueError(f"{name} must be a whole number, got {_shown(value)}")
    if not low <= number <= high:
        raise ValueError(f"{name} must be from {low} to {high}, got {_shown(value)}")
    return int(number)


def _slider_step(step, run) -> int:
    """The step slider's value (0 = pure noise, len(run) = the finished sample), held to the run it is applied to.

    Any step a run can have is accepted: the browser sends what its slider held when the event left, and an event
    sent before a Generate that made the run shorter reaches the server after it. It shows the new run's end,
    where that Generate put the slider anyway."""
    return min(_int(step, "step", 0, MAX_STEPS), len(run))


def _slider_sample(sample_index, run) -> int:
    """The sample slider's value, held to the run's batch for the same reason as `_slider_step`."""
    return min(_int(sample_index, "sample", 0, MAX_BATCH - 1), run.settings.batch - 1)


def _float(value, name, low, high):
    number = _number(value, name)
    if not low <= number <= high:
        raise ValueError(f"{name} must be a number from {low} to {high}, got {_shown(value)}")
    return float(number)


def _choice(value, name, choices):
    """One of a fixed list of strings (a dropdown or radio value)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {_shown(value)}")
    return value


def _model(registry, name, role):
    """A model by its name: looked up among the loaded models, never joined onto a path."""
    if not isinstance(name, str) or name not in registry.names:
        raise ValueError(f"{role} must be one of the models {registry.available}, got {_shown(name)} (unknown model)")
    return registry.get(name)


def _switch(value, name):
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {_shown(value)}")
    return value


def _label(digit, batch):
    _choice(digit, "digit", DIGIT_CHOICES)
    if digit == DIGIT_CHOICES[0]:
        return None
    if digit == DIGIT_CHOICES[1]:
        return tuple(i % 10 for i in range(batch))
    return int(digit)


def _ablation(model, skip_values, attention_off, time_off) -> Ablation:
    resolutions = model.unet.skip_resolutions
    if len(skip_values) != MAX_SKIP_SLIDERS:
        raise ValueError(f"skip scales: expected {MAX_SKIP_SLIDERS} values (one per slider), got {len(skip_values)}")
    # hidden sliders (beyond this model's resolutions) are checked too: no value goes unexamined
    gains = [_float(value, f"skip scale {i}", 0.0, 3.0) for i, value in enumerate(skip_values)]
    gains = dict(zip(resolutions, gains))
    if attention_off is None:
        attention_off = []
    if not isinstance(attention_off, (list, tuple)) or not all(isinstance(site, str) for site in attention_off):
        raise ValueError(f"attention switched off must be a list of site names from {list(model.unet.attention_sites)}, "
                         f"got {_shown(attention_off)}")
    unknown = [site for site in attention_off if site not in model.unet.attention_sites]
    if unknown:
        raise ValueError(f"attention site {_shown(unknown[0])} is not one of the model's valid attention sites "
                         f"{list(model.unet.attention_sites)}")
    sites = list(attention_off)
    ablation = Ablation(skip_scale=gains, attention_off=sites, time_embedding_off=_switch(time_off, "time embedding off"))
    ablation.check_against(resolutions, model.unet.attention_sites)
    return ablation


def _settings(sampler, steps, seed, batch, digit, guidance) -> SampleSettings:
    _choice(sampler, "sampler", SAMPLERS)
    batch = _int(batch, "batch", 1, MAX_BATCH)
    return SampleSettings(
        sampler=sampler, steps=_int(steps, "steps", 1, MAX_STEPS), seed=_int(seed, "seed", 0, 2**31 - 1), batch=batch,
        label=_label(digit, batch), guidance=_float(guidance, "guidance", 0.0, 10.0),
    )


def _model_b(registry, model_a, model_b):
    if model_b is None or model_b == "" or model_b == SAME_AS_A:
        return _model(registry, model_a, "model A")
    return _model(registry, model_b, "network B")


def _check_budget(settings, a_model, b_differs):
    """Refuse up front what would hold the model queue too long or keep too much (MAX_IMAGE_FORWARDS, SESSION_STATE_BYTES)."""
    guided = a_model.null_label is not None and settings.label is not None and settings.guidance != 1.0
    passes = settings.steps * settings.batch * (2 if guided else 1) * (2 if b_differs else 1)
    if passes > MAX_IMAGE_FORWARDS:
        raise ValueError(
            f"steps × batch is too much for one request: {settings.steps} steps × {settings.batch} samples"
            f"{' × 2 (guidance)' if guided else ''}{' × 2 (A and B)' if b_differs else ''} = {passes} network passes; "
            f"this server allows {MAX_IMAGE_FORWARDS}. Use fewer steps or a smaller batch."
        )
    # counted for B too even when B is A: a later ablation change makes B its own trajectory without a new check
    kept = 2 * settings.steps * settings.batch * 3 * math.prod(a_model.image_shape) * 4
    if kept > SESSION_STATE_BYTES:
        raise ValueError(
            f"steps × batch is too much to keep: {settings.steps} steps × {settings.batch} samples would hold "
            f"{kept / 2**20:.0f} MiB of trajectories for your session; this server keeps at most "
            f"{SESSION_STATE_BYTES // 2**20} MiB. Use fewer steps or a smaller batch."
        )


def _timed(started, progress):
    """Wrap a progress callback (called after every step) so the request stops REQUEST_SECONDS after `started`."""

    def report(done, total):
        if time.monotonic() - started > REQUEST_SECONDS:
            raise UserError(f"The request ran over the {REQUEST_SECONDS} s limit and was stopped; "
                            "use fewer steps or a smaller batch.")
        # every update is a message through the queue to the browser: a few per second are enough to watch
        if done == total or done % max(1, total // PROGRESS_UPDATES) == 0:
            progress(done, total)

    return report


def _finite(trajectory, network):
    """NaN or inf must never reach an image: a blown-up run is reported, not drawn."""
    for quantity in ("x_t", "eps", "x0"):
        if not torch.isfinite(getattr(trajectory, quantity)).all():
            raise FloatingPointError(
                f"network {network}'s reverse process produced NaN or infinite values in {quantity}; "
                "a strong ablation (e.g. skip scales near 3 everywhere) can make it diverge, so try gentler settings."
            )
    return trajectory


def _has_run(state) -> bool:
    return isinstance(state, dict) and "a" in state


def _session(state):
    if not _has_run(state):
        raise ValueError("No run yet: wait for the one the page opens on, or press Generate.")
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
    return (*_ablation_controls(model.unet), trained_note(model))


def _ablation_controls(unet, skip_gains=(1.0,) * MAX_SKIP_SLIDERS, attention_off=(), time_off=False) -> list:
    """B's skip sliders, attention sites and time switch for this model, set to an ablation."""
    sites = _attention_look(unet)
    return [*(gr.Slider(value=gain, **_skip_slider_look(unet, i)) for i, gain in enumerate(skip_gains)),
            gr.CheckboxGroup(value=[site for site in attention_off if site in sites["choices"]], **sites),
            gr.Checkbox(value=time_off, **_time_look(unet))]


# Only what an ablation can still change is offered: a part training already took out (a skip cut to zero, an
# attention site or the time embedding trained off) would move nothing, and the trained note says it is gone.
def _skip_slider_look(unet, i: int) -> dict:
    """Skip slider i for this model: hidden past its resolutions, locked where training cut the skips."""
    look = _per_resolution(unet.skip_resolutions if unet is not None else (), i, "skips joining")
    locked = look["visible"] and unet.skip_resolutions[i] not in unet.switchable_skip_resolutions
    return look | ({"label": f"{look['label']} (trained without)", "interactive": False} if locked else {"interactive": True})


def _attention_look(unet) -> dict:
    sites = list(unet.switchable_attention_sites) if unet is not None else []
    return {"choices": sites, "visible": bool(sites)}


def _time_look(unet) -> dict:
    return {"interactive": unet is None or not unet.training_ablation.time_embedding_off}


def _per_resolution(resolutions, i: int, knob: str) -> dict:
    """Slider i of a row with one slider per resolution where skips join (hidden past the model's own)."""
    if i >= len(resolutions):
        return {"visible": False, "label": "unused"}
    return {"visible": True, "label": f"{knob} at {resolutions[i]}×{resolutions[i]}"}


def trained_note(model: DiffusionModel) -> str:
    """What a model lost in training, which no control can give back (shown beside B's ablation controls)."""
    trained = model.unet.training_ablation
    return "" if trained.is_intact else f"`{model.name}` was *trained* with {_describe(trained)}: that always applies to it."


def generate(registry, model_a, model_b, digit, guidance, seed, sampler, steps, batch, *rest, progress=gr.Progress()):
    """Run A (intact) and B (ablated, or another model) from the same noise; show the final step."""
    settings, a_model, b_model, ablation_b, options = _generate_request(
        registry, model_a, model_b, digit, guidance, seed, sampler, steps, batch, *rest)
    _check_budget(settings, a_model, b_differs=not (b_model is a_model and ablation_b.is_intact and options["lie"] is None
                                                    and options["h_edit"] is None))
    started = time.monotonic()
    trajectories = registry.trajectories

    def shown_as(desc, offset=0, total=None):
        return _timed(started, lambda i, n: progress((offset + i, total or n), desc=desc))

    if b_model is not a_model or (options["window"] is None and options["h_edit"] is None):
        # B owes A nothing (no steps to copy from it)
        settings_b = _b_settings(registry, settings, b_model, ablation_b, options)
        same = b_model is a_model and settings_b == settings
        a, b = trajectories.get(a_model, settings), None if same else trajectories.get(b_model, settings_b)
        if same or a is not None or b is not None:
            # one network at most left to run (B is A, or one was kept from an earlier request): it gets both cores
            if a is None:
                a = trajectories.sample(a_model, settings, shown_as("A: intact network"))
            if b is None:
                b = a if same else trajectories.sample(b_model, settings_b, shown_as("B: ablated network"))
        else:  # both run at once, one core each
            a, b = side_by_side(lambda: trajectories.sample(a_model, settings, shown_as("A and B side by side")),
                                lambda: trajectories.sample(b_model, settings_b, _timed(started, lambda i, n: None)))
        a, b = _finite(a, "A"), _finite(b, "B")
    else:
        total = 2 * settings.steps
        a = _finite(trajectories.sample(a_model, settings, shown_as("A: intact network", total=total)), "A")
        b = _finite(_run_b(registry, a, a_model, b_model, ablation_b, shown_as("B: ablated network", settings.steps, total), options), "B")
    state = {"a": a, "b": b, "model_a": a_model.name, "model_b": b_model.name, "ablation_b": ablation_b, "options_b": options}
    _prefetch_next(registry, state, b_model)
    step = len(a)
    return (state, gr.Slider(maximum=step, value=step), gr.Slider(maximum=max(settings.batch - 1, 1), value=0, interactive=settings.batch > 1),
            *render_step(state, step), *render_numbers(registry, state))


def _generate_request(registry, model_a, model_b, digit, guidance, seed, sampler, steps, batch, *rest):
    """What Generate runs, from its controls: A's settings, A's model, B's model, B's ablation and options."""
    *skip_values, attention_off, time_off, state = rest
    settings = _settings(sampler, steps, seed, batch, digit, guidance)
    a_model, b_model = _models(registry, model_a, model_b)
    if settings.label is not None and a_model.null_label is None:
        raise ValueError(f"Digit: `{a_model.name}` draws without labels (an unconditional model); "
                         f"choose “{DIGIT_CHOICES[0]}”")
    options = _options_in(state)
    return settings, a_model, b_model, _with_freeu(_ablation(b_model, skip_values, attention_off, time_off), options), options


def _models(registry, model_a, model_b):
    """A's model and B's, which must make images of the same shape: B starts from A's noise."""
    a_model, b_model = _model(registry, model_a, "model A"), _model_b(registry, model_a, model_b)
    if a_model.image_shape != b_model.image_shape:
        raise ValueError(f"A ({a_model.name}) and B ({b_model.name}) make images of different shapes; pick matching models")
    return a_model, b_model


def _check_kept_run(state, a_model, b_model=None) -> None:
    """B reruns against the session's kept run, so A's model must still be the one that ran. B's model may have
    changed (it is one of B's controls), except for a rerun that keeps B's kept ablation (`b_model` given)."""
    for network, model, kept in (("model A", a_model, state["model_a"]), ("network B", b_model, state["model_b"])):
        if model is not None and model.name != kept:
            raise ValueError(f"{network} is now {model.name!r}, but the run shown is {kept!r}'s: press Generate to run A and B again")


def rerun_b(registry, model_a, model_b, *rest, progress=gr.Progress()):
    """B's ablation or B's model changed: rerun B only, from the same noise and settings as the cached A.

    Before the session's first run (the page's own, still on its way, or one that failed) there is nothing to rerun:
    the controls are checked and wait for it, as B's other options do (set_b_options)."""
    *skip_values, attention_off, time_off, state, step = rest
    a_model, b_model = _models(registry, model_a, model_b)
    options = _options_in(state)
    ablation_b = _with_freeu(_ablation(b_model, skip_values, attention_off, time_off), options)
    if not _has_run(state):
        return (gr.skip(),) * (1 + STEP_OUTPUTS + NUMBER_OUTPUTS)
    _check_kept_run(state, a_model)
    _slider_step(step, state["a"])  # checked before the run, not after a wasted one
    report = _timed(time.monotonic(), lambda i, n: progress((i, n), desc="B: ablated network"))
    b = _finite(_run_b(registry, state["a"], a_model, b_model, ablation_b, report, options), "B")
    state = dict(state, b=b, model_b=b_model.name, ablation_b=ablation_b)
    _prefetch_next(registry, state, b_model)
    step = _slider_step(step, b)
    return (state, *render_step(state, step), *render_numbers(registry, state))


def _run_b(registry, a, a_model, b_model, ablation_b, progress, options=NO_OPTIONS):
    """B's trajectory from A's settings and noise; A itself when B would compute exactly the same thing.

    On A's own model, the steps before B first differs (e.g. before its t-window) are copied from A, not rerun;
    a B computed before, for this visitor or another, is not computed again."""
    settings = _b_settings(registry, a.settings, b_model, ablation_b, options)
    if b_model is a_model and settings == a.settings:
        return a
    return registry.trajectories.sample(b_model, settings, progress, reuse=a if b_model is a_model else None)


def _worth_prefetching(registry, settings, options) -> bool:
    return (registry.prefetch and options["h_edit"] is None  # an edit is never kept, so never found
            and settings.steps * settings.batch <= PREFETCH_MAX_STEPS_X_BATCH)


def _prefetch_next(registry, state, b_model):
    """Name B's runs one switch away (each other model picked as B, then each skip, attention site and time
    flipped) for the idle time, so the switch a visitor flips next is likely answered from the kept trajectories.

    The other models come first: intact, they do not depend on B's switches, so once guessed they answer a pick of
    that model however B is switched later in this A run. Last in the list, they waited behind the flagship's 11
    switches (a minute of idle time at batch 4), and each switch sent them back there."""
    settings, options = state["a"].settings, state["options_b"]
    if not _worth_prefetching(registry, settings, options):
        return
    runs, a_model = [], registry.get(state["model_a"])
    for name in registry.available:
        try:
            other = registry.get(name)  # loaded with the server
            if other is a_model or other is b_model or other.image_shape != a_model.image_shape:
                continue  # B on A's model, intact, is A itself
            # intact, as the panel a newly picked model brings, with the session's FreeU gains
            runs.append((other, _b_settings(registry, settings, other, _with_freeu(Ablation(), options), options)))
        except ValueError:
            continue  # a broken model, or FreeU gains at resolutions it lacks: picking it will say so
    unet = b_model.unet  # the switches its panel offers
    runs += [(b_model, _b_settings(registry, settings, b_model, ablation, options)) for ablation in
             state["ablation_b"].one_switch_away(unet.switchable_skip_resolutions, unet.switchable_attention_sites)]
    NETWORK_THREAD.prefetch(registry.trajectories, runs)


def _prefetch_generate(registry, *controls):
    """Name the runs of a Generate with these controls for the idle time: the click they set up."""
    try:
        settings, a_model, b_model, ablation_b, options = _generate_request(registry, *controls)
    except ValueError:
        return  # the click itself will say what is wrong
    if not _worth_prefetching(registry, settings, options):
        return
    settings_b = _b_settings(registry, settings, b_model, ablation_b, options)
    same = b_model is a_model and settings_b == settings
    NETWORK_THREAD.prefetch(registry.trajectories, [(a_model, settings)] + ([] if same else [(b_model, settings_b)]),
                            turn_steps=GENERATE_TURN_STEPS)


def guess_generate(registry, *controls):
    """A control of Generate changed (digit, seed, guidance, ...): the Generate it sets up is guessed in the idle time,
    so the click that follows is answered from it."""
    _prefetch_generate(registry, *controls)


def guess_first_generate(registry, *controls):
    """B's ablation or options changed: after a run B reran (and its neighbours are guessed); before the first
    Generate, the Generate they set up is guessed."""
    if not _has_run(controls[-1]):
        _prefetch_generate(registry, *controls)


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
    batch = a.settings.batch
    caption = (
        f"**{where}.** Each grid holds {'the one sample' if batch == 1 else f'the {batch} samples'}, (B, 1, 28, 28). "
        f"x̂0 and x_t in grey over [−1, 1]; ε̂ on a blue–white–red scale over ±{eps_range:.2f}; "
        f"A − B (last row), white = identical, over ±{diff_ranges[0]:.3g} (x̂0), ±{diff_ranges[1]:.3g} (x_t), ±{diff_ranges[2]:.3g} (ε̂). "
        f"Mean |x̂0_A − x̂0_B| = {(x0_a - x0_b).abs().mean():.4f}."
    )
    return (*pictures, caption)


def scrub(state, step):
    """Slider event: re-render the cached trajectories at another step (no model call)."""
    state = _session(state)
    return render_step(state, _slider_step(step, state["a"]))


def render_numbers(registry, state):
    """Per-step divergence of B from A, and what our classifier makes of both batches."""
    a, b = state["a"], state["b"]
    steps = torch.arange(1, len(a) + 1)
    x0_drift, x_t_drift = (a.x0 - b.x0).abs().flatten(1).mean(1), (a.x_t[1:] - b.x_t[1:]).abs().flatten(1).mean(1)
    # as the page opens (B = A) the curves lie flat at 0: say why, and what makes them move
    identical = not (x0_drift.any() or x_t_drift.any())
    figure = curves_figure(
        {"mean |x̂0_A − x̂0_B|": (steps, x0_drift), "mean |x_t,A − x_t,B|": (steps, x_t_drift)},
        "B is A here: switch a part of B off to see it drift" if identical else "How far B drifts from A during sampling",
        "reverse-process step (noise → image)", "mean absolute difference (pixel units)",
        logy=True,  # x̂0 at the noisiest steps amplifies ε̂ differences by 1/√ᾱ_t (~100x): a linear axis hides the rest
    )
    timing = _describe_timing(_options_in(state))
    table = [f"**A** = `{state['model_a']}` intact · **B** = `{state['model_b']}` with {_describe(state['ablation_b'])}"
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
        table += _off_range_warnings(a, b)
    return figure, "\n".join(table)


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


def _describe(ablation: Ablation) -> str:
    if ablation.is_intact:
        return "nothing switched off"
    parts = [f"skips at {r}×{r} × {g:g}" for r, g in ablation.skip_scale]
    parts += [f"attention `{s}` off" for s in sorted(ablation.attention_off)]
    parts += ["time embedding off"] if ablation.time_embedding_off else []
    parts += [f"FreeU b = {b:g} at {r}×{r}" for r, b in ablation.backbone_scale]
    parts += [f"FreeU s = {g:g} at {r}×{r}" for r, g in ablation.skip_low_freq_scale]
    return ", ".join(parts)


def block_choices(registry, model_a):
    """Dropdown entries for every captured map, grouped by where it sits and its resolution."""
    unet = _model(registry, model_a, "model A").unet
    return [(f"{feature_group(name)} · {shape[1]}×{shape[2]} · {name} ({shape[0]} ch)", name)
            for name, shape in unet.feature_shapes().items()]


OPENING_BLOCK = "mid_block.attentions.0"


def block_dropdown(registry, model_a):
    choices = block_choices(registry, model_a)
    return gr.Dropdown(choices=choices, value=opening_block(choices))


def opening_block(choices) -> str | None:
    """The block whose maps a page shows first, where its model has one: the bottleneck's attention."""
    return OPENING_BLOCK if any(value == OPENING_BLOCK for _, value in choices) else None


def view_features(registry, state, step, block, sample_index, range_mode):
    """Channel grid, mean |activation| and PCA-RGB of one block at the slider's step, for A and B.

    A network that has no such block (B as another model) or whose maps hold NaN shows no pictures, and its
    caption says why: the other network's maps are still worth seeing."""
    state = _session(state)
    _choice(range_mode, "colour range", RANGE_MODES)
    a, b = state["a"], state["b"]
    step = min(_slider_step(step, a), len(a) - 1)
    sample_index = _slider_sample(sample_index, a)
    names = registry.get(state["model_a"]).unet.feature_names
    if not isinstance(block, str) or block not in names:
        raise ValueError(f"block must be one of the model's feature maps, e.g. {names[-1]!r}; got {_shown(block)}")

    def maps_of(trajectory, model_name):
        return lambda: features_at(registry.get(model_name), trajectory, step, sample_index)

    def pictures_of(features, trajectory, model_name):
        """Three pictures of the block and the caption after the network's label; None pictures if none to show."""
        feature = features.get(block)
        # only the maps the pictures are drawn from are checked (checking all ~40 took 7 ms of a view)
        drawn_from = features.values() if range_mode == "global" else [feature]
        missing = (f"`{model_name}` has no block `{block}`" if feature is None else
                   "its feature maps at this step hold NaN or infinite values"
                   if not all(torch.isfinite(f).all() for f in drawn_from) else None)
        if missing:
            return [None, None, None], f"no maps to show: {missing}"
        global_max = max(signed_range(f) for f in features.values()) if range_mode == "global" else None
        grid, shown = channel_grid(feature, range_mode, global_max, size=300)
        magnitude, magnitude_max = mean_abs_map(feature, size=150)
        pca, shares = pca_rgb(feature, size=150)
        c, h, w = feature.shape
        scale = "each channel over its own ±max" if range_mode == "channel" else f"±{shown:.3g}"
        return [grid, magnitude, pca], (
            f"`{block}` ({feature_group(block)}) · shape ({c}, {h}, {w}) · t = {int(trajectory.timesteps[step])} · "
            f"values in [{feature.min():.3g}, {feature.max():.3g}] · channels: {scale} · mean|act| up to {magnitude_max:.3g} · "
            f"PCA explains {sum(shares):.0%} of variance"
        )

    # a batch-1 forward cannot use two cores: A's and B's run side by side; a B that is A (an intact B on A's
    # model shares A's trajectory) is neither run nor drawn again
    same = b is a
    maps_a, maps_b = side_by_side(maps_of(a, state["model_a"]), None if same else maps_of(b, state["model_b"]))
    pictures_a, caption_a = pictures_of(maps_a, a, state["model_a"])
    pictures_b, caption_b = (pictures_a, caption_a) if same else pictures_of(maps_b, b, state["model_b"])
    outputs = pictures_a + pictures_b
    captions = [f"**A** · {caption_a}", f"**B** · {caption_b}"]
    legend = _feature_legend()
    return (*outputs, legend, "\n\n".join(captions))


def features_after_run(registry, state, step, block, sample_index, range_mode):
    """After every run (Generate, an ablation change, a setup): the open block's maps follow the new A and B,
    so the panels never show a run that is no longer on screen. With no block open they are cleared."""
    if not _has_run(state):
        return tuple(gr.skip() for _ in range(FEATURE_OUTPUTS))  # B set up before the page's run ended: none to follow yet
    if not block:
        return (None,) * (FEATURE_OUTPUTS - 1) + ("Pick a block (above, or in the architecture strip) to see its feature maps.",)
    return view_features(registry, state, step, block, sample_index, range_mode)


@functools.lru_cache(maxsize=1)
def _feature_legend():
    """The same picture for every view: drawn once (matplotlib takes ~90 ms, half a feature view's time)."""
    return colour_bar(-1, 1, DIVERGING, "channel value / its colour range (blue < 0 < red)")


@functools.lru_cache(maxsize=64)
def _eps_curve(registry, model_name, ablation):
    """ε-MSE per timestep: a pure function of (model, ablation), so safe to share across sessions."""
    images, _ = registry.heldout()
    return eps_mse_per_timestep(registry.get(model_name), images[:128], EPS_TIMESTEPS, ablation=ablation)


def compute_numbers(registry, state, step, progress=gr.Progress()):
    """ε-error per timestep for A vs B on held-out digits, and skip vs backbone spectra of A and B."""
    state = _session(state)
    step = min(_slider_step(step, state["a"]), len(state["a"]) - 1)
    model = registry.get(state["model_a"])
    if model.image_shape == tuple(registry.heldout()[0].shape[1:]):
        progress(0.1, desc="ε-error of A on 128 held-out test digits")
        curve_a = _eps_curve(registry, state["model_a"], Ablation())
        progress(0.5, desc="ε-error of B")
        curve_b = _eps_curve(registry, state["model_b"], state["ablation_b"])
        curves, title = {f"A: {state['model_a']}": (list(curve_a), list(curve_a.values())),
                         f"B: {state['model_b']}, {_describe(state['ablation_b'])}": (list(curve_b), list(curve_b.values()))}, \
            "Denoising error per timestep (lower is better)"
    else:  # the held-out test images are MNIST digits: no ε-error to measure on them for another kind of image
        curves, title = {}, textwrap.fill(f"No ε-error: it is measured on held-out MNIST digits, and {not_digits(model)[:-1]}", 90)
    eps_figure = curves_figure(curves, title, "timestep t (0 = clean, 999 = pure noise)", "mean (ε̂ − ε)²", logy=bool(curves))
    panels = {}
    for label, key in (("A", "a"), ("B", "b")):
        spectra = skip_backbone_spectra(features_at(registry.get(state[f"model_{key}"]), state[key], step, 0))
        title = f"A: {state['model_a']}, intact" if key == "a" else f"B: {state['model_b']}, {_describe(state['ablation_b'])}"
        # one join per resolution (the first of each decoder stage) keeps the plot readable
        panels[textwrap.shorten(title, 60, placeholder=" …")] = [s for join, s in spectra.items() if join.endswith("resnets.0")]
    spectrum_figure = spectra_figure(panels, f"Radially averaged power of skip vs backbone features (sample 0, step {step + 1})")
    return eps_figure, spectrum_figure


def export_gif(state, which):
    """The whole trajectory of A (x̂0 or x_t per step) as a looping GIF file."""
    state = _session(state)
    quantities = {"x̂0 (predicted clean image)": "x0", "x_t (noisy input)": "x_t"}
    quantity = quantities[_choice(which, "animation", quantities)]
    frames = trajectory_frames(state["a"], quantity, columns=min(4, state["a"].settings.batch), size=IMAGE_PX)
    stride = max(1, len(frames) // 100)  # at most ~100 frames: a long DDPM run stays a small file
    frames = frames[::stride] + ([] if (len(frames) - 1) % stride == 0 else [frames[-1]])
    _prune_gifs()
    path = _gif_directory() / f"trajectory-{quantity}-{uuid.uuid4().hex}.gif"  # the name holds no user input
    save_gif(frames, path)
    return str(path)


@functools.lru_cache(maxsize=1)
def _gif_directory() -> Path:
    return Path(tempfile.mkdtemp(prefix="playground-gif-"))


def _prune_gifs(now=None):
    """Delete our exports (GIFs, .safetensors, PNG zips) older than GIF_KEEP_SECONDS, so a public server's disk does
    not fill with them."""
    now = time.time() if now is None else now
    for path in _gif_directory().glob("*"):
        try:
            if now - path.stat().st_mtime > GIF_KEEP_SECONDS:
                path.unlink()
        except FileNotFoundError:  # another request pruned it first
            pass


# ---------------------------------------------------------------------------------------------
# B over time (t-window, timestep lie, FreeU, h-space) and the "when?" experiments
# ---------------------------------------------------------------------------------------------

OPTION_COUNT = 4 + 2 * MAX_SKIP_SLIDERS + 6  # window (2), lie (2), FreeU b and s per slider, h-space (6)
STEP_OUTPUTS, NUMBER_OUTPUTS = 10, 2  # render_step's pictures and caption; render_numbers' plot and table
FEATURE_OUTPUTS = 8  # view_features: three pictures each for A and B, the legend, the caption
# every control a setup sets: the 8 run controls, skips, attention, time, B's options, what follows its model (the
# trained note, the block dropdown, the architecture strip), the session and the lesson note
SETUP_OUTPUTS = 8 + MAX_SKIP_SLIDERS + 2 + OPTION_COUNT + 3 + 2


def _window(t_from, t_to, name):
    """A (t_from, t_to) pair from two controls; the whole range means "every step" (no window at all)."""
    t_min, t_max = _int(t_from, f"{name} from", 0, T_LAST), _int(t_to, f"{name} to", 0, T_LAST)
    if t_min > t_max:
        raise ValueError(f"{name}: 'from' ({t_min}) must not be above 'to' ({t_max})")
    return None if (t_min, t_max) == (0, T_LAST) else Window(t_min, t_max)


def _gain_values(values, name, high):
    if not isinstance(values, (list, tuple)) or len(values) != MAX_SKIP_SLIDERS:
        raise ValueError(f"{name}: expected {MAX_SKIP_SLIDERS} values (one per slider), got {_shown(values)}")
    return [_float(value, f"{name} {i}", 0.0, high) for i, value in enumerate(values)]


def _options(model, t_from, t_to, lie_mode, lie_value, b_values, s_values, h_on, probe_t, component, strength, h_from, h_to):
    """B's options beyond the plain ablation, checked: where in t it applies, what t it is told, FreeU, h-space."""
    resolutions = model.unet.skip_resolutions
    window = _window(t_from, t_to, "ablation window")
    _choice(lie_mode, "timestep lie", LIE_MODES)
    lie = None
    if lie_mode == LIE_MODES[1]:
        lie = TimestepLie(offset=_int(lie_value, "timestep lie value", -T_LAST, T_LAST))
    elif lie_mode == LIE_MODES[2]:
        lie = TimestepLie(fixed=_int(lie_value, "timestep lie value", 0, T_LAST))
    else:
        _int(lie_value, "timestep lie value", -T_LAST, T_LAST)  # unused now, but never unexamined
    backbone = dict(zip(resolutions, _gain_values(b_values, "FreeU b", 3.0)))
    low_freq = dict(zip(resolutions, _gain_values(s_values, "FreeU s", 3.0)))
    recipe = None
    probe_t, component = _int(probe_t, "h-space probe t", 0, T_LAST), _int(component, "h-space component", 0, HSPACE_COMPONENTS - 1)
    strength, h_window = _float(strength, "h-space strength", -10.0, 10.0), _window(h_from, h_to, "h-space window")
    if _switch(h_on, "h-space edit on"):
        if model.unet.mid_block is None:
            raise ValueError(f"h-space edit: model {model.name!r} has no mid block, so it has no h-space")
        recipe = HSpaceRecipe(component, strength, probe_t, PROBE_SAMPLES, h_window)
    return {"window": window, "lie": lie, "backbone": backbone, "low_freq": low_freq, "h_edit": recipe}




def _options_in(state):
    """The options last set for B in this visitor's session (they may be set before the first Generate)."""
    return state.get("options_b", NO_OPTIONS) if isinstance(state, dict) else NO_OPTIONS


def _with_freeu(ablation, options):
    return replace(ablation, backbone_scale=options["backbone"], skip_low_freq_scale=options["low_freq"])


@functools.lru_cache(maxsize=8)
def _probe(registry, model_name, sampler, steps, seed, guidance, t):
    """The h-space probe is a pure function of its inputs, so one probe serves every session (it takes seconds).

    Sampled exactly as PlaygroundSetup.sample_settings samples it, so a shared setup reproduces the same edit."""
    settings = SampleSettings(sampler=sampler, steps=steps, seed=seed, batch=PROBE_SAMPLES, guidance=guidance)
    return hspace_probe(registry.get(model_name), settings, t, components=HSPACE_COMPONENTS)


def _b_settings(registry, settings_a, b_model, ablation_b, options) -> SampleSettings:
    """B's settings: A's noise and schedule with B's ablation, its t-window, timestep lie and h-space edit."""
    ablation_b.check_against(b_model.unet.skip_resolutions, b_model.unet.attention_sites)  # FreeU gains set for another model
    edit = None
    recipe = options["h_edit"]
    if recipe is not None:
        s = settings_a
        if PROBE_SAMPLES * s.steps > MAX_IMAGE_FORWARDS:
            raise ValueError(f"h-space edit: the probe runs {PROBE_SAMPLES} samples through up to {s.steps} steps, "
                             f"more than this server allows; use at most {MAX_IMAGE_FORWARDS // PROBE_SAMPLES} steps")
        edit = _probe(registry, b_model.name, s.sampler, s.steps, s.seed, s.guidance, recipe.probe_t).edit(
            recipe.component, recipe.strength, recipe.window)
    return replace(settings_a, ablation=ablation_b, ablation_window=options["window"], timestep_lie=options["lie"], h_edit=edit)


def _describe_timing(options) -> str:
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


def set_b_options(registry, model_a, model_b, *rest, progress=gr.Progress()):
    """B's t-window, timestep lie, FreeU gains or h-space edit changed: keep them, and rerun B if there is a run."""
    *values, state, step = rest
    b_model = _model_b(registry, model_a, model_b)
    options = _options(b_model, *_split_option_values(values))
    if not _has_run(state):
        return ({"options_b": options}, *[gr.skip()] * (STEP_OUTPUTS + NUMBER_OUTPUTS))
    a_model = _model(registry, model_a, "model A")
    _check_kept_run(state, a_model, b_model)
    step = _slider_step(step, state["a"])
    ablation_b = _with_freeu(state["ablation_b"], options)
    report = _timed(time.monotonic(), lambda i, n: progress((i, n), desc="B: ablated network"))
    b = _finite(_run_b(registry, state["a"], a_model, b_model, ablation_b, report, options), "B")
    state = dict(state, b=b, ablation_b=ablation_b, options_b=options)
    _prefetch_next(registry, state, b_model)
    return (state, *render_step(state, step), *render_numbers(registry, state))


def _split_option_values(values):
    """The option controls arrive flat (as Gradio sends inputs); _options takes the FreeU sliders as two lists."""
    if len(values) != OPTION_COUNT:
        raise ValueError(f"B's options: expected {OPTION_COUNT} values, got {len(values)}")
    n = MAX_SKIP_SLIDERS
    return (*values[:4], list(values[4:4 + n]), list(values[4 + n:4 + 2 * n]), *values[4 + 2 * n:])


def options_panel(registry, model_a, model_b):
    """FreeU sliders, one b and one s per decoder stage of B's model (like the skip sliders).

    Their values stay: the session keeps the gains they last set, and the two must not disagree."""
    resolutions = _model_b(registry, model_a, model_b).unet.skip_resolutions
    return (*_freeu_sliders(resolutions, "b"), *_freeu_sliders(resolutions, "s"))


def _freeu_sliders(resolutions, knob, values=None):
    return [gr.Slider(**_per_resolution(resolutions, i, f"FreeU {knob}"), **({} if values is None else {"value": values[i]}))
            for i in range(MAX_SKIP_SLIDERS)]


def freeu_preset_values(registry, model_a, model_b):
    """FreeU's published defaults on B's two deepest decoder stages; the other stages stay at 1."""
    resolutions = _model_b(registry, model_a, model_b).unet.skip_resolutions
    preset = freeu_preset(resolutions)
    backbone, low_freq = dict(preset.backbone_scale), dict(preset.skip_low_freq_scale)
    padded = list(resolutions) + [None] * (MAX_SKIP_SLIDERS - len(resolutions))
    return (*[backbone.get(r, 1.0) for r in padded], *[low_freq.get(r, 1.0) for r in padded])


def sweep_ablation(registry, state, windows, progress=gr.Progress()):
    """B's ablation applied in one window at a time, sliding over t: how much each window changes the samples."""
    state = _session(state)
    a = state["a"]
    windows = _int(windows, "windows", 2, 20)
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
    report = _timed(time.monotonic(), lambda i, n: progress((i, n), desc=f"{windows} windows over t"))
    sweep = window_sweep(model, settings, ablation, windows, classifier=registry.classifier_for(model), intact=intact,
                         progress=report)
    figure = sweep_figure({"B's ablation in the window": sweep}, f"When does it matter? ({batch} samples; dashed: at every step)")
    rows = [f"| window (t) | mean abs Δ of final samples | same digit as intact | confident > {CONFIDENCE} |", "|---|---|---|---|"]
    for k, window in enumerate(sweep.windows):
        quality = sweep.quality[k] if sweep.quality else {}
        kept, confident = (f"{quality[key]:.0%}" if key in quality else "–" for key in ("kept", "confident"))
        rows.append(f"| {window.t_max} → {window.t_min} | {float(sweep.change[k]):.4f} | {kept} | {confident} |")
    whole = "" if sweep.full_change is None else f" Applied at every step instead: mean abs Δ = **{sweep.full_change:.4f}**."
    rows += ["", f"B's ablation: {_describe(ablation)}. {windows} windows, {batch} samples, {steps} {settings.sampler} steps, {sweep.seconds:.1f} s.{whole} "
                 "The reverse process meets the windows top to bottom (large t first)."]
    return figure, "\n".join(rows)


def digit_decides(registry, state, sample_index):
    """Our classifier on x̂0 at every step of A and B: when each sample's digit is decided, and how surely."""
    state = _session(state)
    model = registry.get(state["model_a"])
    classifier = registry.classifier_for(model)
    if classifier is None and registry.classifier() is not None:
        raise ValueError(not_digits(model))
    if classifier is None:
        raise ValueError("This server has no working digit classifier (weights/classifier), so it cannot read the digits.")
    sample_index = _slider_sample(sample_index, state["a"])
    decisions = {"A": digit_decision(classifier, state["a"]), "B": digit_decision(classifier, state["b"])}
    figure = decision_figure({f"A: {state['model_a']}": decisions["A"], f"B: {state['model_b']}": decisions["B"]})
    per_sample = []
    for label, decision in decisions.items():
        probabilities = class_probability_figure(decision, sample_index)
        probabilities.axes[0].set_title(f"{label}: " + probabilities.axes[0].get_title(), fontsize=10)
        per_sample.append(probabilities)
    a, b = decisions["A"], decisions["B"]
    samples = range(len(a.final_class))
    # one column per sample: a batch of 16 stays a short table
    rows = ["| sample | " + " | ".join(str(i) for i in samples) + " |", "|---" * (len(samples) + 1) + "|"]
    for label, decision in decisions.items():
        rows.append(f"| {label} reads | " + " | ".join(str(int(c)) for c in decision.final_class) + " |")
        rows.append(f"| {label} decided at t | " + " | ".join("never" if t is None else str(t) for t in decision.decided_t) + " |")
    rows += ["", f"'Decided' = the first step from which x̂0 is read as the final digit with p > {a.confidence:g} at every later "
                 "step; 'never' = not that sure even at the end."]
    return figure, *per_sample, "\n".join(rows)


# ---- shareable setup and lessons


def _digit_of(label):
    """A setup's digit: one digit, or None for both unconditional and the cycling choice (which a setup cannot say)."""
    return label if isinstance(label, int) else None


def current_setup(registry, state) -> str:
    """The session's setup as PlaygroundSetup JSON: paste it back here, or pass it to the CLIs with --setup."""
    state = _session(state)
    a, options = state["a"], _options_in(state)
    s = a.settings
    recipe = options["h_edit"]
    setup = PlaygroundSetup(model=state["model_a"], seed=s.seed, sampler=s.sampler, steps=s.steps, batch=s.batch,
                            digit=_digit_of(s.label), guidance=s.guidance, ablation=state["ablation_b"],
                            window=options["window"], timestep_lie=options["lie"], h_edit=recipe)
    return setup.to_json()


def refresh_setup(registry, state):
    """After a run: the setup box follows it (nothing to show before the first run)."""
    if not _has_run(state):
        return gr.skip()
    return current_setup(registry, state)


def _setup_controls(registry, setup: PlaygroundSetup):
    """Every control set to `setup`, and a session that holds its options until the Generate that follows."""
    model = _model(registry, setup.model, "setup model")
    try:
        setup.check_against(model)
    except ValueError as error:
        raise ValueError(f"setup {error}") from None
    _int(setup.steps, "setup steps", 1, MAX_STEPS)
    _int(setup.batch, "setup batch", 1, MAX_BATCH)
    _int(setup.seed, "setup seed", 0, 2**31 - 1)
    _float(setup.guidance, "setup guidance", 0.0, 10.0)
    unet, ablation = model.unet, setup.ablation
    resolutions = unet.skip_resolutions
    gains = {}
    for name in ("skip_scale", "backbone_scale", "skip_low_freq_scale"):
        values = dict(getattr(ablation, name))
        gains[name] = [_float(values.get(r, 1.0), f"setup ablation {name} at {r}", 0.0, 3.0) for r in resolutions]
        gains[name] += [1.0] * (MAX_SKIP_SLIDERS - len(resolutions))
    window = setup.window or Window(0, T_LAST)
    _window(window.t_min, window.t_max, "setup window")
    lie = setup.timestep_lie
    if lie is None:
        lie_mode, lie_value = LIE_MODES[0], 300  # the lie the time lesson suggests trying: one click on "offset" away
    elif lie.fixed is not None:
        lie_mode, lie_value = LIE_MODES[2], _int(lie.fixed, "setup timestep_lie fixed", 0, T_LAST)
    else:
        lie_mode, lie_value = LIE_MODES[1], _int(lie.offset, "setup timestep_lie offset", -T_LAST, T_LAST)
    recipe = setup.h_edit
    h_window = (recipe.window if recipe is not None else None) or Window(0, T_LAST)
    if recipe is not None:
        _int(recipe.component, "setup h_edit component", 0, HSPACE_COMPONENTS - 1)
        _int(recipe.probe_t, "setup h_edit probe_t", 0, T_LAST)
        _float(recipe.strength, "setup h_edit strength", -10.0, 10.0)
        _window(h_window.t_min, h_window.t_max, "setup h_edit window")
        if recipe.probe_samples != PROBE_SAMPLES:
            raise ValueError(f"setup h_edit probe_samples: this app probes with {PROBE_SAMPLES} samples, got {recipe.probe_samples}")
    options = _options(model, window.t_min, window.t_max, lie_mode, lie_value, gains["backbone_scale"], gains["skip_low_freq_scale"],
                       recipe is not None, recipe.probe_t if recipe else 500, recipe.component if recipe else 0,
                       recipe.strength if recipe else 2.0, h_window.t_min, h_window.t_max)
    digit = DIGIT_CHOICES[0] if setup.digit is None else str(setup.digit)
    return (
        model.name, SAME_AS_A, digit, setup.guidance, setup.seed, setup.sampler, setup.steps, setup.batch,
        *_ablation_controls(unet, gains["skip_scale"], sorted(ablation.attention_off), ablation.time_embedding_off),
        window.t_min, window.t_max, lie_mode, lie_value, *_freeu_sliders(resolutions, "b", gains["backbone_scale"]),
        *_freeu_sliders(resolutions, "s", gains["skip_low_freq_scale"]),
        recipe is not None, options["h_edit"].probe_t if recipe else 500, options["h_edit"].component if recipe else 0,
        options["h_edit"].strength if recipe else 2.0, h_window.t_min, h_window.t_max,
        trained_note(model), block_dropdown(registry, model.name), architecture_strip(registry, model.name),
        {"options_b": options},
    )


def apply_setup(registry, text):
    """Pasted setup JSON -> every control, then a Generate (chained) runs it."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("setup: paste a setup JSON first (the box is empty)")
    if len(text) > 20_000:
        raise ValueError(f"setup: a setup is a few hundred characters; got {len(text)}")
    try:
        setup = PlaygroundSetup.from_json(text)
    except ValueError as error:  # the library names the field; say that it is the pasted setup's
        message = str(error)
        raise ValueError(message if message.startswith("setup") else f"setup {message}") from None
    return (*_setup_controls(registry, setup), "")


LESSON_NAMES = {"skips": "what skips do", "attention": "what attention does", "time": "what time conditioning does"}


def _lesson_setup(registry, key, model_a):
    """A lesson's setup, on model A when the lesson's own model is not served here (its ablation mapped onto A's parts)."""
    setup = LESSONS[key].setup
    if setup.model in registry.available:
        return setup
    model = _model(registry, model_a, "model A")
    ablation = setup.ablation
    mapped = Ablation(
        skip_scale={r: min(g for _, g in ablation.skip_scale) for r in model.unet.skip_resolutions} if ablation.skip_scale else {},
        attention_off=model.unet.attention_sites if ablation.attention_off else (),
        time_embedding_off=ablation.time_embedding_off)
    return replace(setup, model=model.name, ablation=mapped,
                   digit=setup.digit if model.null_label is not None else None)


def apply_lesson(registry, lesson, model_a):
    """A lesson preset -> every control and its explanation, then a Generate (chained) runs it."""
    _choice(lesson, "lesson", list(LESSONS))
    setup = _lesson_setup(registry, lesson, model_a)
    return (*_setup_controls(registry, setup), f"**{LESSONS[lesson].title}.** {LESSONS[lesson].explanation}")


def open_from_query(registry, model_a, request: gr.Request):
    """?setup=<url-encoded JSON> or ?lesson=skips|attention|time opens the app in that state; otherwise nothing changes."""
    params = dict(request.query_params) if request is not None else {}
    if "setup" in params:
        return apply_setup(registry, params["setup"])
    if "lesson" in params:
        key = LESSON_NAMES.get(params["lesson"], params["lesson"])
        if key not in LESSONS:
            raise ValueError(f"lesson must be one of {list(LESSON_NAMES)}, got {_shown(params['lesson'])}")
        return apply_lesson(registry, key, model_a)
    return tuple(gr.skip() for _ in range(SETUP_OUTPUTS))


# ---- export and the architecture strip


def export_tensors(state, which):
    """A or B's whole trajectory (x_t, ε̂, x̂0 per step, timesteps) as .safetensors, with what made it as metadata."""
    state = _session(state)
    trajectory = state["a" if _choice(which, "network", EXPORT_CHOICES) == "A" else "b"]
    _prune_gifs()
    path = _gif_directory() / f"trajectory-{which}-{uuid.uuid4().hex}.safetensors"  # the name holds no user input
    export_safetensors(trajectory_tensors(trajectory), path, trajectory_metadata(trajectory))
    return str(path)


def export_frames(state, which):
    """x̂0 of every step of A or B as numbered PNG grids in one zip."""
    state = _session(state)
    trajectory = state["a" if _choice(which, "network", EXPORT_CHOICES) == "A" else "b"]
    frames = trajectory_frames(trajectory, "x0", columns=min(4, trajectory.settings.batch), size=IMAGE_PX)
    _prune_gifs()
    path = _gif_directory() / f"frames-{which}-{uuid.uuid4().hex}.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:  # PNG is compressed already
        for i, frame in enumerate(frames):
            buffer = io.BytesIO()
            frame.save(buffer, format="PNG")
            name = "final" if i == len(frames) - 1 else f"step-{i + 1:04d}-t{int(trajectory.timesteps[i]):03d}"
            archive.writestr(f"x0-{which}-{name}.png", buffer.getvalue())
    return str(path)


def architecture_choices(registry, model_a):
    """One entry per block of the U-Net, in the order data flows: the block's output map (not its inner taps)."""
    unet = _model(registry, model_a, "model A").unet
    blocks = {}
    for name, shape in unet.feature_shapes().items():
        if name.endswith((".update", ".backbone", ".skip")) or "samplers" in name:
            continue
        block = name if name == "conv_in" else ".".join(name.split(".")[:2]) if name.startswith(("down", "up")) else "mid_block"
        blocks[block] = (name, shape)  # the last map of a block is its output
    arrows = {"encoder": "↓", "bottleneck": "•", "decoder": "↑"}
    choices = []
    for block, (name, (c, h, w)) in blocks.items():
        group = feature_group(name)
        choices.append((f"{arrows.get(group, '')} {block.replace('_blocks', '').replace('_block', '')} {h}px·{c}ch", name))
    return choices


def architecture_strip(registry, model_a):
    return gr.Radio(choices=architecture_choices(registry, model_a), value=None)


def open_block(registry, model_a, name):
    """A click on the strip: that block in the feature-map dropdown (the chained view shows its maps)."""
    names = [value for _, value in architecture_choices(registry, model_a)]
    if not isinstance(name, str) or name not in names:
        raise ValueError(f"block must be one of the architecture strip's blocks {names}, got {_shown(name)}")
    return name


# ---------------------------------------------------------------------------------------------
# Layout and wiring
# ---------------------------------------------------------------------------------------------


def build_demo(weights_dir: str | os.PathLike | None = None, prefetch: bool = True) -> gr.Blocks:
    registry = ModelRegistry(weights_dir or os.environ.get("PLAYGROUND_WEIGHTS", "weights"), prefetch=prefetch)
    on_network_thread(registry.load_all)()  # loading checks every weight: the first of many parallel torch calls
    models = registry.available
    default_a = "mnist" if "mnist" in models else (models[0] if models else None)
    default_model = registry.get(default_a) if default_a else None
    default_unet = default_model.unet if default_model else None
    default_resolutions = default_unet.skip_resolutions if default_unet else ()
    bound = lambda handler: user_errors(functools.partial(handler, registry))  # noqa: E731
    networked = lambda handler: user_errors(on_network_thread(figures_drawn(functools.partial(handler, registry))))  # noqa: E731

    # every picture an event returns is written to Gradio's cache; on a public server that cache must be swept
    with gr.Blocks(title="U-Net Diffusion Playground", delete_cache=(600, GIF_KEEP_SECONDS * 3)) as demo:
        state = gr.State(None, time_to_live=STATE_TTL_SECONDS)
        gr.Markdown(INTRO)
        gr.Markdown(describe_models(registry), elem_id="model-status")
        with gr.Row():
            lesson = gr.Dropdown([(item.title, key) for key, item in LESSONS.items()], value=None, label="Lesson presets",
                                 elem_id="lesson", scale=1, info="sets every control to one question, then generates")
            lesson_note = gr.Markdown(elem_id="lesson-note")
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
                # built for the default model: a page opens with no event to set them up, and API clients, who get no
                # page-load event, see them as a visitor does
                skip_sliders = [gr.Slider(0, 3, value=1, step=0.05, elem_id=f"skip-{i}", **_skip_slider_look(default_unet, i))
                                for i in range(MAX_SKIP_SLIDERS)]
                attention_off = gr.CheckboxGroup(label="Attention switched off", elem_id="attention-off",
                                                 info="the site's residual path alone flows on", **_attention_look(default_unet))
                time_off = gr.Checkbox(False, label="Hide the timestep (time embedding → 0)", elem_id="time-off",
                                       **_time_look(default_unet))
                model_note = gr.Markdown(trained_note(default_model) if default_model else "", elem_id="trained-note")
                gr.Markdown("Skip scale: 0 = off, below 1 weakens, above 1 amplifies (FreeU-style).")
        with gr.Accordion("Network B over time: t-window, timestep lie, FreeU, h-space (any change reruns B)", open=False,
                          elem_id="b-options"):
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
                    freeu_button = gr.Button("FreeU preset", size="sm", scale=0, min_width=130, elem_id="freeu-preset")
                with gr.Row():
                    freeu_b = [gr.Slider(0, 3, value=1, step=0.05, elem_id=f"freeu-b-{i}", **_per_resolution(default_resolutions, i, "FreeU b"))
                               for i in range(MAX_SKIP_SLIDERS)]
                with gr.Row():
                    freeu_s = [gr.Slider(0, 3, value=1, step=0.05, elem_id=f"freeu-s-{i}", **_per_resolution(default_resolutions, i, "FreeU s"))
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

        gr.Markdown("## The reverse process\nSlide through the steps; nothing is recomputed. "
                    "Columns: predicted clean image x̂0 (what the network believes the final digit is), "
                    "its noisy input x_t, and its predicted noise ε̂.")
        step = gr.Slider(0, 50, value=50, step=1, label="Step (0 = pure noise, last = finished sample)", elem_id="step")
        step_caption = gr.Markdown(elem_id="step-caption")
        pictures = []
        for row_label, row_id in (("A (intact)", "A"), ("B (ablated / other model)", "B"), ("A − B", "AminusB")):
            with gr.Row():
                for column, column_id in (("x̂0", "x0"), ("x_t", "x_t"), ("ε̂", "eps")):
                    pictures.append(gr.Image(label=f"{row_label}: {column}", type="pil", interactive=False, height=260, format=LOSSLESS,
                                             elem_id=f"img-{row_id}-{column_id}"))
        with gr.Row():
            gif_which = gr.Radio(["x̂0 (predicted clean image)", "x_t (noisy input)"], value="x̂0 (predicted clean image)",
                                 label="Animate network A's trajectory", elem_id="gif-which")
            gif_button = gr.Button("Make GIF", elem_id="gif-button")
            gif = gr.Image(label="Trajectory animation", type="filepath", interactive=False, height=240, elem_id="gif")

        gr.Markdown("## Feature maps\nAny block's output at the slider's step, for one sample, from A and B "
                    "(the conditional pass). Signed values on blue–white–red; PCA-RGB colours pixels with similar "
                    "feature vectors alike.")
        strip = gr.Radio(architecture_choices(registry, default_a) if default_a else [], value=None, elem_id="arch-strip",
                         label="Architecture: click a block (↓ encoder, • bottleneck, ↑ decoder) to open its output maps")
        with gr.Row():
            choices = block_choices(registry, default_a) if default_a else []
            # twice the room of its neighbours: its entries are long ("bottleneck · 7×7 · mid_block.attentions.0 (96 ch)")
            block = gr.Dropdown(choices, value=opening_block(choices), label="Block", elem_id="block", scale=2)
            sample_index = gr.Slider(0, 3, value=0, step=1, label="Sample", elem_id="sample-index")
            range_mode = gr.Radio(list(RANGE_MODES), value="block", label="Colour range", elem_id="range-mode",
                                  info="per channel / one range for the block / one range for every block")
        feature_images = []
        for row_label in ("A", "B"):
            with gr.Row():
                for column, height in (("channels", 320), ("mean |activation|", 200), ("PCA → RGB", 200)):
                    feature_images.append(gr.Image(label=f"{row_label}: {column}", type="pil", interactive=False, height=height, format=LOSSLESS,
                                                   elem_id=f"feat-{row_label}-{column.split()[0].strip('|')}"))
        with gr.Row():
            legend = gr.Image(label="Colour legend", type="pil", interactive=False, height=70, format=LOSSLESS, elem_id="legend")
            feature_caption = gr.Markdown(elem_id="feature-caption")

        gr.Markdown("## Numbers")
        numbers = gr.Markdown(elem_id="numbers")
        drift_plot = gr.Plot(format=LOSSLESS, label="Divergence per step", show_label=False, elem_id="drift-plot")
        numbers_button = gr.Button("Compute ε-error per timestep and spectra (a few seconds)", elem_id="numbers-button")
        with gr.Row():
            eps_plot = gr.Plot(format=LOSSLESS, label="ε-error per timestep", show_label=False, elem_id="eps-plot")
            spectrum_plot = gr.Plot(format=LOSSLESS, label="Skip vs backbone spectra", show_label=False, elem_id="spectrum-plot")

        gr.Markdown("## When? Share, export")
        with gr.Tabs():
            with gr.Tab("When does it matter?", elem_id="tab-sweep"):
                gr.Markdown("B's ablation (skips, attention, time, FreeU) applied in one window of t at a time, on "
                            f"up to {SWEEP_MAX_BATCH} samples of this run: which windows change the final digits?")
                with gr.Row():
                    sweep_windows = gr.Slider(2, 20, value=10, step=1, label="Windows", elem_id="sweep-windows")
                    sweep_button = gr.Button("When does it matter? (sweep the window over t)", elem_id="sweep-button")
                with gr.Row():
                    sweep_plot = gr.Plot(format=LOSSLESS, show_label=False, elem_id="sweep-plot")
                    sweep_table = gr.Markdown(elem_id="sweep-table")
            with gr.Tab("When does the digit decide?", elem_id="tab-decide"):
                gr.Markdown("Our digit classifier reads x̂0 at every step of A and B. The right-hand plots follow the "
                            "sample chosen by the feature maps' Sample slider.")
                decide_button = gr.Button("When does the digit decide?", elem_id="decide-button")
                decision_plot = gr.Plot(format=LOSSLESS, show_label=False, elem_id="decision-plot")
                with gr.Row():
                    probability_a = gr.Plot(format=LOSSLESS, show_label=False, elem_id="probability-a")
                    probability_b = gr.Plot(format=LOSSLESS, show_label=False, elem_id="probability-b")
                decision_table = gr.Markdown(elem_id="decision-table")
            with gr.Tab("Share and export", elem_id="tab-share"):
                gr.Markdown("The setup of the last run as JSON: copy it, paste one back and press **Apply setup**, pass it "
                            "to the CLIs (`--setup file.json`), or open the app with `?setup=<url-encoded JSON>` or "
                            "`?lesson=skips|attention|time`. A setup holds one model and one digit (or none): B as another "
                            "model and the cycling digits are not part of it.")
                setup_box = gr.Textbox(label="Setup (JSON)", lines=6, max_lines=24, elem_id="setup-json")
                apply_button = gr.Button("Apply setup", elem_id="apply-setup")
                with gr.Row():
                    export_which = gr.Radio(list(EXPORT_CHOICES), value="A", label="Network", elem_id="export-which")
                    tensors_button = gr.Button("Download tensors (.safetensors)", elem_id="tensors-button")
                    frames_button = gr.Button("PNG frames of x̂0 (.zip)", elem_id="frames-button")
                export_file = gr.File(label="Download", interactive=False, elem_id="export-file")

        # ---- events
        panel_outputs = [*skip_sliders, attention_off, time_off, model_note]
        ablation_inputs = [*skip_sliders, attention_off, time_off]
        step_outputs = [*pictures, step_caption]
        number_outputs = [drift_plot, numbers]
        model_events = dict(concurrency_id="model", concurrency_limit=1)
        view_events = dict(concurrency_id="view", concurrency_limit=4, show_progress="hidden")
        # For events that read the step or sample slider, whose range each run sets. Gradio checks a slider's value
        # against the range the session's copy has when the event is *processed*, so a view or an ablation change the
        # browser sent at step 50, reaching the server after a Generate of 8 steps, was refused with "Value 50 is
        # greater than maximum value 8". Skipping Gradio's preprocessing changes no value these components send;
        # the handlers check every input anyway, and hold a step or sample to the run (_slider_step, _slider_sample).
        reads_run_sliders = dict(preprocess=False)
        # For the views, which read those sliders and return only pictures and text: filed by `pictures_filed`.
        pictures_only = dict(reads_run_sliders, postprocess=False)

        generate_inputs = [model_a, model_b, digit, guidance, seed, sampler, steps, batch, *ablation_inputs, state]
        generate_outputs = [state, step, sample_index, *step_outputs, *number_outputs]
        feature_inputs = [state, step, block, sample_index, range_mode]
        feature_outputs = [*feature_images, legend, feature_caption]
        refresh = dict(fn=bound(refresh_setup), inputs=state, outputs=setup_box, api_name=False, show_progress="hidden")
        follow = dict(fn=pictures_filed(networked(features_after_run)), inputs=feature_inputs, outputs=feature_outputs,
                      api_name=False, **view_events, **pictures_only)

        def after_run(event):
            """Whatever ran A or B: the setup box shows the run, the open block's feature maps follow it."""
            event.success(**refresh)
            event.success(**follow)

        guess = dict(fn=networked(guess_first_generate), inputs=generate_inputs, outputs=None, api_name=False, show_progress="hidden")
        # a visitor who picks another digit or seed will likely press Generate next
        for control in (digit, seed, sampler):
            control.input(networked(guess_generate), generate_inputs, None, api_name=False, show_progress="hidden")
        for control in (guidance, steps, batch):
            control.release(networked(guess_generate), generate_inputs, None, api_name=False, show_progress="hidden")

        def b_changed(event):
            """B's ablation or options changed: after a run B reran; before the first, the Generate they set up is guessed."""
            after_run(event)
            event.success(**guess)

        after_run(generate_button.click(networked(generate), generate_inputs, generate_outputs, api_name="generate", **model_events))
        for control in skip_sliders:
            b_changed(control.release(networked(rerun_b), [model_a, model_b, *ablation_inputs, state, step],
                                      [state, *step_outputs, *number_outputs], api_name="ablate" if control is skip_sliders[0] else False,
                                      **model_events, **reads_run_sliders))
        for control in (attention_off, time_off):
            b_changed(control.input(networked(rerun_b), [model_a, model_b, *ablation_inputs, state, step],
                                    [state, *step_outputs, *number_outputs], api_name=False, **model_events, **reads_run_sliders))
        option_inputs = [window_from, window_to, lie_mode, lie_value, *freeu_b, *freeu_s, h_on, probe_t, component, strength, h_from, h_to]
        for control in option_inputs:
            trigger = control.input if isinstance(control, (gr.Radio, gr.Checkbox)) else control.release
            b_changed(trigger(networked(set_b_options), [model_a, model_b, *option_inputs, state, step], [state, *step_outputs, *number_outputs],
                              api_name="b_options" if control is window_from else False, **model_events, **reads_run_sliders))
        after_run(freeu_button.click(bound(freeu_preset_values), [model_a, model_b], [*freeu_b, *freeu_s], api_name="freeu_preset").success(
            networked(set_b_options), [model_a, model_b, *option_inputs, state, step], [state, *step_outputs, *number_outputs],
            api_name=False, **model_events, **reads_run_sliders))
        sweep_button.click(networked(sweep_ablation), [state, sweep_windows], [sweep_plot, sweep_table], api_name="sweep", **model_events)
        decide_button.click(networked(digit_decides), [state, sample_index], [decision_plot, probability_a, probability_b, decision_table],
                            api_name="digit_decides", **model_events, **reads_run_sliders)
        setup_outputs = [model_a, model_b, digit, guidance, seed, sampler, steps, batch, *skip_sliders, attention_off, time_off,
                         *option_inputs, model_note, block, strip, state, lesson_note]
        then_generate = dict(fn=networked(generate), inputs=generate_inputs, outputs=generate_outputs, api_name=False,
                             **model_events)
        after_run(apply_button.click(bound(apply_setup), setup_box, setup_outputs, api_name="apply_setup").success(**then_generate))
        after_run(lesson.input(bound(apply_lesson), [lesson, model_a], setup_outputs, api_name="lesson").success(**then_generate))
        tensors_button.click(user_errors(export_tensors), [state, export_which], export_file, api_name="export_tensors", **view_events)
        frames_button.click(user_errors(export_frames), [state, export_which], export_file, api_name="export_frames", **view_events)
        step.change(pictures_filed(user_errors(scrub)), [state, step], step_outputs, api_name="scrub", **view_events,
                    **pictures_only)
        for trigger in (step.release, block.input, sample_index.release, range_mode.input):
            trigger(pictures_filed(networked(view_features)), feature_inputs, feature_outputs,
                    api_name="features" if trigger == block.input else False, **view_events, **pictures_only)
        strip.input(bound(open_block), [model_a, strip], block, api_name="open_block").success(
            pictures_filed(networked(view_features)), feature_inputs, feature_outputs, api_name=False, **view_events,
            **pictures_only)
        numbers_button.click(networked(compute_numbers), [state, step], [eps_plot, spectrum_plot], api_name="numbers",
                             **model_events, **reads_run_sliders)
        gif_button.click(user_errors(export_gif), [state, gif_which], gif, api_name="gif", **view_events)
        panel_for = {}
        for selector in (model_a, model_b):
            panel_for[selector] = selector.input(bound(ablation_panel), [model_a, model_b], panel_outputs,
                                                 api_name="ablation_panel" if selector is model_a else False)
            selector.input(bound(options_panel), [model_a, model_b], [*freeu_b, *freeu_s],
                           api_name="options_panel" if selector is model_a else False)
        # B's model is one of B's controls: B reruns from A's noise, on the panel the new model brings (intact) ...
        b_changed(panel_for[model_b].success(networked(rerun_b), [model_a, model_b, *ablation_inputs, state, step],
                                             [state, *step_outputs, *number_outputs], api_name=False, **model_events,
                                             **reads_run_sliders))
        # ... while A's sets up the next Generate, as a digit or seed does (guessed once the panel fits it)
        panel_for[model_a].success(networked(guess_generate), generate_inputs, None, api_name=False, show_progress="hidden")
        model_a.input(bound(block_dropdown), model_a, block, api_name="block_choices")
        model_a.input(bound(architecture_strip), model_a, strip, api_name="architecture")

        def load_query(model_a, request: gr.Request):  # annotated here: Gradio finds gr.Request by the hint, not via partial
            try:
                return user_errors(open_from_query)(registry, model_a, request)
            except UserError as refused:  # a broken link: said in a toast, and the page still opens on its defaults' run
                gr.Warning(refused.message)
                return tuple(gr.skip() for _ in range(SETUP_OUTPUTS))

        if default_a:
            # the controls are built for the default model, so a plain address needs no event before the Generate
            after_run(demo.load(load_query, model_a, setup_outputs, api_name=False).success(
                # the page opens on a finished run (its defaults', usually kept from an earlier visitor); it queues
                # behind other visitors' runs: no full-page spinners meanwhile
                **then_generate, show_progress="minimal"))
            # ... so that run is guessed from the start: the server's first visitor finds it kept, or part-done
            _prefetch_generate(registry, *(control.value for control in generate_inputs[:-1]), None)
    return demo


# Gradio's queue looks for new events every 1 ms, waking its event loop, which takes the GIL and a core from the
# networks: with both cores busy (A and B side by side) the networks of a generate took 1.43-1.54 s with the served
# app idle beside them, against 1.12-1.24 s at 2-20 ms (bare runs on the network thread, interleaved, 4 rounds).
# No public setting; a looser look costs an event at most these seconds before it starts.
QUEUE_POLL_S = 0.005


# The theme draws a locked slider (a skip that B's model was trained without) like a live one: grey it out.
PAGE_CSS = """
.gradio-container {max-width: 1400px !important}
input[type=range]:disabled {filter: grayscale(1); opacity: 0.4}
"""


def serve(demo: gr.Blocks, queue_size: int = 64, **launch_options):
    """Queue and launch as the public app does (benchmarks and tests call this too, so they measure the same server)."""
    demo.queue(default_concurrency_limit=2, max_size=queue_size)
    demo._queue.sleep_when_free = QUEUE_POLL_S
    return demo.launch(**{"theme": gr.themes.Soft(), "css": PAGE_CSS, "state_session_capacity": STATE_SESSIONS,
                          **launch_options})


def main():
    serve(build_demo())


if __name__ == "__main__":
    main()
