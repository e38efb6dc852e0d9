"""Input checking: every value a visitor (or an API client) sends is checked here before it reaches the
library, and refused with a sentence that names its control. Also the per-request limits.
"""

from __future__ import annotations

import functools
import logging
import math
import time

import gradio as gr
import torch

from explainer.sessions import EVENT_TICKET, RUN_TICKETS, visitor
from playground import Ablation, SampleSettings
from playground.network_thread import use_threads
from playground.sampling import MAX_STEPS, SAMPLERS, Window
from playground.serving import on_a_network_thread

MAX_BATCH = 16


MAX_SKIP_SLIDERS = 5  # the UI holds this many skip-scale sliders; a model shows as many as it has resolutions


SAME_AS_A = "A with the ablation"


DIGIT_CHOICES = ["no digit (unconditional)", "every digit (0–9 cycling)"] + [str(d) for d in range(10)]


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


T_LAST = 999  # the flagship's schedule, like every model here, has 1000 training timesteps


log = logging.getLogger("playground.app")


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
        if not on_a_network_thread():
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


def shown(value, limit=40) -> str:
    """A value as an error message may quote it: short, so a megabyte of input is not echoed back."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def numeric(value, name):
    """Sliders and number boxes send int or float; a string, a bool or a list is a wrong type, not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def integer(value, name, low, high):
    number = numeric(value, name)
    if number != int(number):
        raise ValueError(f"{name} must be a whole number, got {shown(value)}")
    if not low <= number <= high:
        raise ValueError(f"{name} must be from {low} to {high}, got {shown(value)}")
    return int(number)


def slider_step(step, run) -> int:
    """The step slider's value (0 = pure noise, len(run) = the finished sample), held to the run it is applied to.

    Any step a run can have is accepted: the browser sends what its slider held when the event left, and an event
    sent before a Generate that made the run shorter reaches the server after it. It shows the new run's end,
    where that Generate put the slider anyway."""
    return min(integer(step, "step", 0, MAX_STEPS), len(run))


def slider_sample(sample_index, run) -> int:
    """The sample slider's value, held to the run's batch for the same reason as `slider_step`."""
    return min(integer(sample_index, "sample", 0, MAX_BATCH - 1), run.settings.batch - 1)


def real(value, name, low, high):
    number = numeric(value, name)
    if not low <= number <= high:
        raise ValueError(f"{name} must be a number from {low} to {high}, got {shown(value)}")
    return float(number)


def choice(value, name, choices):
    """One of a fixed list of strings (a dropdown or radio value)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {shown(value)}")
    return value


def model_named(registry, name, role):
    """A model by its name: looked up among the loaded models, never joined onto a path."""
    if not isinstance(name, str) or name not in registry.names:
        raise ValueError(f"{role} must be one of the models {registry.available}, got {shown(name)} (unknown model)")
    return registry.get(name)


def switch(value, name):
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {shown(value)}")
    return value


def digit_label(digit, batch):
    choice(digit, "digit", DIGIT_CHOICES)
    if digit == DIGIT_CHOICES[0]:
        return None
    if digit == DIGIT_CHOICES[1]:
        return tuple(i % 10 for i in range(batch))
    return int(digit)


def ablation_of(model, skip_values, attention_off, time_off) -> Ablation:
    resolutions = model.unet.skip_resolutions
    if len(skip_values) != MAX_SKIP_SLIDERS:
        raise ValueError(f"skip scales: expected {MAX_SKIP_SLIDERS} values (one per slider), got {len(skip_values)}")
    # hidden sliders (beyond this model's resolutions) are checked too: no value goes unexamined
    gains = [real(value, f"skip scale {i}", 0.0, 3.0) for i, value in enumerate(skip_values)]
    gains = dict(zip(resolutions, gains))
    if attention_off is None:
        attention_off = []
    if not isinstance(attention_off, (list, tuple)) or not all(isinstance(site, str) for site in attention_off):
        raise ValueError(f"attention switched off must be a list of site names from {list(model.unet.attention_sites)}, "
                         f"got {shown(attention_off)}")
    unknown = [site for site in attention_off if site not in model.unet.attention_sites]
    if unknown:
        raise ValueError(f"attention site {shown(unknown[0])} is not one of the model's valid attention sites "
                         f"{list(model.unet.attention_sites)}")
    sites = list(attention_off)
    ablation = Ablation(skip_scale=gains, attention_off=sites, time_embedding_off=switch(time_off, "time embedding off"))
    ablation.check_against(resolutions, model.unet.attention_sites)
    return ablation


def settings_of(sampler, steps, seed, batch, digit, guidance) -> SampleSettings:
    choice(sampler, "sampler", SAMPLERS)
    batch = integer(batch, "batch", 1, MAX_BATCH)
    return SampleSettings(
        sampler=sampler, steps=integer(steps, "steps", 1, MAX_STEPS), seed=integer(seed, "seed", 0, 2**31 - 1), batch=batch,
        label=digit_label(digit, batch), guidance=real(guidance, "guidance", 0.0, 10.0),
    )


def model_b_of(registry, model_a, model_b):
    if model_b is None or model_b == "" or model_b == SAME_AS_A:
        return model_named(registry, model_a, "model A")
    return model_named(registry, model_b, "network B")


def check_budget(settings, a_model, b_differs):
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


class Superseded(UserError):
    """A run its visitor replaced with a newer request, or stopped: the page has moved on, so no toast says so."""

    def __init__(self, message: str):
        super().__init__(message, visible=False, print_exception=False)


def timed(started, progress):
    """Wrap a progress callback (called after every step) so the request stops REQUEST_SECONDS after `started`, or
    as soon as its visitor asks for another run (sessions.RUN_TICKETS)."""
    session = visitor()
    ticket = EVENT_TICKET.get()
    if ticket is None:
        ticket = RUN_TICKETS.take(session)

    def report(done, total):
        if not RUN_TICKETS.is_latest(session, ticket):
            raise Superseded("Stopped: this run was replaced by a newer request, or by Stop.")
        if time.monotonic() - started > REQUEST_SECONDS:
            raise UserError(f"The request ran over the {REQUEST_SECONDS} s limit and was stopped; "
                            "use fewer steps or a smaller batch.")
        # every update is a message through the queue to the browser: a few per second are enough to watch
        if done == total or done % max(1, total // PROGRESS_UPDATES) == 0:
            progress(done, total)

    return report


def finite(trajectory, network):
    """NaN or inf must never reach an image: a blown-up run is reported, not drawn."""
    for quantity in ("x_t", "eps", "x0"):
        if not torch.isfinite(getattr(trajectory, quantity)).all():
            raise FloatingPointError(
                f"network {network}'s reverse process produced NaN or infinite values in {quantity}; "
                "a strong ablation (e.g. skip scales near 3 everywhere) can make it diverge, so try gentler settings."
            )
    return trajectory


def window_of(t_from, t_to, name):
    """A (t_from, t_to) pair from two controls; the whole range means "every step" (no window at all)."""
    t_min, t_max = integer(t_from, f"{name} from", 0, T_LAST), integer(t_to, f"{name} to", 0, T_LAST)
    if t_min > t_max:
        raise ValueError(f"{name}: 'from' ({t_min}) must not be above 'to' ({t_max})")
    return None if (t_min, t_max) == (0, T_LAST) else Window(t_min, t_max)


def gain_values(values, name, high):
    if not isinstance(values, (list, tuple)) or len(values) != MAX_SKIP_SLIDERS:
        raise ValueError(f"{name}: expected {MAX_SKIP_SLIDERS} values (one per slider), got {shown(values)}")
    return [real(value, f"{name} {i}", 0.0, high) for i, value in enumerate(values)]
