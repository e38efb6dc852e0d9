"""The core loop: Generate runs A (intact) and B (ablated, or another model) from the same noise; a change of
B's switches, options or model reruns B alone; while idle, the runs a visitor is likely to ask for next are guessed.
"""

from __future__ import annotations

import time

from types import SimpleNamespace

import gradio as gr

from explainer.checks import (
    DIGIT_CHOICES,
    MAX_BATCH,
    SAME_AS_A,
    ablation_of,
    check_budget,
    finite,
    model_b_of,
    model_named,
    settings_of,
    slider_step,
    timed,
)
from explainer.numbers import verdicts
from explainer.options import b_settings, options_of, split_option_values, with_freeu
from explainer.viewer import frames_payload
from explainer.sessions import NO_OPTIONS, check_kept_run, has_run, options_in
from playground import Ablation
from playground.sampling import MAX_STEPS, SAMPLERS
from playground.serving import (
    GENERATE_TURN_STEPS,
    NETWORK_THREAD,
    PREFETCH_MAX_STEPS_X_BATCH,
    side_by_side,
)

B_OUTPUTS = 3  # what a rerun of B returns: the session, the viewer's frames, the verdicts


def generate(registry, model_a, model_b, digit, guidance, seed, sampler, steps, batch, *rest, progress=gr.Progress()):
    """Run A (intact) and B (ablated, or another model) from the same noise; show the final step."""
    settings, a_model, b_model, ablation_b, options = generate_request(
        registry, model_a, model_b, digit, guidance, seed, sampler, steps, batch, *rest)
    check_budget(settings, a_model, b_differs=not (b_model is a_model and ablation_b.is_intact and options["lie"] is None
                                                    and options["h_edit"] is None))
    started = time.monotonic()
    trajectories = registry.trajectories

    def shown_as(desc, offset=0, total=None):
        return timed(started, lambda i, n: progress((offset + i, total or n), desc=desc))

    if b_model is not a_model or (options["window"] is None and options["h_edit"] is None):
        # B owes A nothing (no steps to copy from it)
        settings_b = b_settings(registry, settings, b_model, ablation_b, options)
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
                                lambda: trajectories.sample(b_model, settings_b, timed(started, lambda i, n: None)))
        a, b = finite(a, "A"), finite(b, "B")
    else:
        total = 2 * settings.steps
        a = finite(trajectories.sample(a_model, settings, shown_as("A: intact network", total=total)), "A")
        b = finite(run_b(registry, a, a_model, b_model, ablation_b, shown_as("B: ablated network", settings.steps, total), options), "B")
    state = {"a": a, "b": b, "model_a": a_model.name, "model_b": b_model.name, "ablation_b": ablation_b, "options_b": options}
    prefetch_next(registry, state, b_model)
    return (state, frames_payload(a, b), gr.Slider(maximum=max(settings.batch - 1, 1), value=0, interactive=settings.batch > 1),
            verdicts(registry, state))


def generate_request(registry, model_a, model_b, digit, guidance, seed, sampler, steps, batch, *rest):
    """What Generate runs, from its controls: A's settings, A's model, B's model, B's ablation and options."""
    *skip_values, attention_off, time_off, state = rest
    settings = settings_of(sampler, steps, seed, batch, digit, guidance)
    a_model, b_model = models_of(registry, model_a, model_b)
    if settings.label is not None and a_model.null_label is None:
        raise ValueError(f"Digit: `{a_model.name}` draws without labels (an unconditional model); "
                         f"choose “{DIGIT_CHOICES[0]}”")
    options = options_in(state)
    return settings, a_model, b_model, with_freeu(ablation_of(b_model, skip_values, attention_off, time_off), options), options


def models_of(registry, model_a, model_b):
    """A's model and B's, which must make images of the same shape: B starts from A's noise."""
    a_model, b_model = model_named(registry, model_a, "model A"), model_b_of(registry, model_a, model_b)
    if a_model.image_shape != b_model.image_shape:
        raise ValueError(f"A ({a_model.name}) and B ({b_model.name}) make images of different shapes; pick matching models")
    return a_model, b_model


def rerun_b(registry, model_a, model_b, *rest, progress=gr.Progress()):
    """B's ablation or B's model changed: rerun B only, from the same noise and settings as the cached A.

    Before the session's first run (the page's own, still on its way, or one that failed) there is nothing to rerun:
    the controls are checked and wait for it, as B's other options do (set_b_options)."""
    *skip_values, attention_off, time_off, state, step = rest
    a_model, b_model = models_of(registry, model_a, model_b)
    options = options_in(state)
    ablation_b = with_freeu(ablation_of(b_model, skip_values, attention_off, time_off), options)
    if not has_run(state):
        return (gr.skip(),) * B_OUTPUTS
    check_kept_run(state, a_model)
    slider_step(step, state["a"])  # checked before the run, not after a wasted one
    report = timed(time.monotonic(), lambda i, n: progress((i, n), desc="B: ablated network"))
    b = finite(run_b(registry, state["a"], a_model, b_model, ablation_b, report, options), "B")
    state = dict(state, b=b, model_b=b_model.name, ablation_b=ablation_b)
    prefetch_next(registry, state, b_model)
    return (state, frames_payload(state["a"], b, step=slider_step(step, b)), verdicts(registry, state))


def set_b_options(registry, model_a, model_b, *rest, progress=gr.Progress()):
    """B's t-window, timestep lie, FreeU gains or h-space edit changed: keep them, and rerun B if there is a run."""
    *values, state, step = rest
    b_model = model_b_of(registry, model_a, model_b)
    options = options_of(b_model, *split_option_values(values))
    if not has_run(state):
        return ({"options_b": options}, *[gr.skip()] * (B_OUTPUTS - 1))
    a_model = model_named(registry, model_a, "model A")
    check_kept_run(state, a_model, b_model)
    step = slider_step(step, state["a"])
    ablation_b = with_freeu(state["ablation_b"], options)
    report = timed(time.monotonic(), lambda i, n: progress((i, n), desc="B: ablated network"))
    b = finite(run_b(registry, state["a"], a_model, b_model, ablation_b, report, options), "B")
    state = dict(state, b=b, ablation_b=ablation_b, options_b=options)
    prefetch_next(registry, state, b_model)
    return (state, frames_payload(state["a"], b, step=step), verdicts(registry, state))


def run_b(registry, a, a_model, b_model, ablation_b, progress, options=NO_OPTIONS):
    """B's trajectory from A's settings and noise; A itself when B would compute exactly the same thing.

    On A's own model, the steps before B first differs (e.g. before its t-window) are copied from A, not rerun;
    a B computed before, for this visitor or another, is not computed again."""
    settings = b_settings(registry, a.settings, b_model, ablation_b, options)
    if b_model is a_model and settings == a.settings:
        return a
    return registry.trajectories.sample(b_model, settings, progress, reuse=a if b_model is a_model else None)


def _worth_prefetching(registry, settings, options) -> bool:
    return (registry.prefetch and options["h_edit"] is None  # an edit is never kept, so never found
            and settings.steps * settings.batch <= PREFETCH_MAX_STEPS_X_BATCH)


def prefetch_next(registry, state, b_model):
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
            runs.append((other, b_settings(registry, settings, other, with_freeu(Ablation(), options), options)))
        except ValueError:
            continue  # a broken model, or FreeU gains at resolutions it lacks: picking it will say so
    unet = b_model.unet  # the switches its panel offers
    runs += [(b_model, b_settings(registry, settings, b_model, ablation, options)) for ablation in
             state["ablation_b"].one_switch_away(unet.switchable_skip_resolutions, unet.switchable_attention_sites)]
    NETWORK_THREAD.prefetch(registry.trajectories, runs)


def prefetch_generate(registry, *controls):
    """Name the runs of a Generate with these controls for the idle time: the click they set up."""
    try:
        settings, a_model, b_model, ablation_b, options = generate_request(registry, *controls)
    except ValueError:
        return  # the click itself will say what is wrong
    if not _worth_prefetching(registry, settings, options):
        return
    settings_b = b_settings(registry, settings, b_model, ablation_b, options)
    same = b_model is a_model and settings_b == settings
    NETWORK_THREAD.prefetch(registry.trajectories, [(a_model, settings)] + ([] if same else [(b_model, settings_b)]),
                            turn_steps=GENERATE_TURN_STEPS)


def guess_generate(registry, *controls):
    """A control of Generate changed (digit, seed, guidance, ...): the Generate it sets up is guessed in the idle time,
    so the click that follows is answered from it."""
    prefetch_generate(registry, *controls)


def guess_first_generate(registry, *controls):
    """B's ablation or options changed: after a run B reran (and its neighbours are guessed); before the first
    Generate, the Generate they set up is guessed."""
    if not has_run(controls[-1]):
        prefetch_generate(registry, *controls)


def build_rail(models, default_a) -> SimpleNamespace:
    """The run's controls, compact: what A and B are, what they draw, and Generate / Stop."""
    model_a = gr.Dropdown(models, value=default_a, label="Model A (runs intact)", elem_id="model-a")
    model_b = gr.Dropdown([SAME_AS_A] + models, value=SAME_AS_A, label="Network B", elem_id="model-b",
                          info="A with B's switches, or another model (e.g. one trained without skips)")
    digit = gr.Dropdown(DIGIT_CHOICES, value=DIGIT_CHOICES[1], label="Digit", elem_id="digit")
    guidance = gr.Slider(0, 10, value=1.5, step=0.25, label="Guidance scale", elem_id="guidance")
    with gr.Row():
        # no `minimum`: Gradio would refuse −5 itself, in a sentence naming no control; checks.settings_of names it
        seed = gr.Number(0, precision=0, label="Seed", elem_id="seed", min_width=90)
        sampler = gr.Dropdown(list(SAMPLERS), value="ddim", label="Sampler", elem_id="sampler", min_width=110)
    with gr.Row():
        steps = gr.Slider(1, MAX_STEPS, value=50, step=1, label="Steps", elem_id="steps", min_width=100)
        batch = gr.Slider(1, MAX_BATCH, value=4, step=1, label="Batch", elem_id="batch", min_width=100)
    with gr.Row():
        generate_button = gr.Button("Generate", variant="primary", elem_id="generate", min_width=100)
        stop_button = gr.Button("Stop", variant="stop", elem_id="stop", min_width=70, scale=0)
    return SimpleNamespace(model_a=model_a, model_b=model_b, digit=digit, guidance=guidance, seed=seed, sampler=sampler,
                           steps=steps, batch=batch, generate=generate_button, stop=stop_button,
                           inputs=[model_a, model_b, digit, guidance, seed, sampler, steps, batch])
