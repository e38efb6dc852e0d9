"""Sharing and export: the run's setup as JSON (paste one back, open one from the address), lessons, and files.
"""

from __future__ import annotations

from dataclasses import replace

from types import SimpleNamespace

import gradio as gr

from explainer.checks import (
    DIGIT_CHOICES,
    MAX_BATCH,
    MAX_SKIP_SLIDERS,
    SAME_AS_A,
    T_LAST,
    choice,
    integer,
    model_named,
    real,
    shown,
    window_of,
)
from explainer.features import block_dropdown
from explainer.options import (
    HSPACE_COMPONENTS,
    LIE_MODES,
    OPTION_COUNT,
    PROBE_SAMPLES,
    freeu_sliders,
    options_of,
)

from playground.exports import write_frames, write_gif, write_tensors
from explainer.sessions import has_run, kept_run, options_in
from explainer.switches import ablation_controls, trained_note
from playground import Ablation
from playground.sampling import MAX_STEPS, Window
from playground.setup import LESSONS, PlaygroundSetup

EXPORT_CHOICES = ("A", "B")
IMAGE_PX = 84  # height of one 28-pixel sample in an exported GIF or PNG frame


# every control a setup sets: the 8 run controls, skips, attention, time, B's options, what follows its model (the
# trained note, the block dropdown), the session and the lesson note
SETUP_OUTPUTS = 8 + MAX_SKIP_SLIDERS + 2 + OPTION_COUNT + 2 + 2


def _digit_of(label):
    """A setup's digit: one digit, or None for both unconditional and the cycling choice (which a setup cannot say)."""
    return label if isinstance(label, int) else None


def current_setup(registry, state) -> str:
    """The session's setup as PlaygroundSetup JSON: paste it back here, or pass it to the CLIs with --setup."""
    state = kept_run(state)
    a, options = state["a"], options_in(state)
    s = a.settings
    recipe = options["h_edit"]
    setup = PlaygroundSetup(model=state["model_a"], seed=s.seed, sampler=s.sampler, steps=s.steps, batch=s.batch,
                            digit=_digit_of(s.label), guidance=s.guidance, ablation=state["ablation_b"],
                            window=options["window"], timestep_lie=options["lie"], h_edit=recipe)
    return setup.to_json()


def refresh_setup(registry, state):
    """After a run: the setup box follows it (nothing to show before the first run)."""
    if not has_run(state):
        return gr.skip()
    return current_setup(registry, state)


def _setup_controls(registry, setup: PlaygroundSetup):
    """Every control set to `setup`, and a session that holds its options until the Generate that follows."""
    model = model_named(registry, setup.model, "setup model")
    try:
        setup.check_against(model)
    except ValueError as error:
        raise ValueError(f"setup {error}") from None
    integer(setup.steps, "setup steps", 1, MAX_STEPS)
    integer(setup.batch, "setup batch", 1, MAX_BATCH)
    integer(setup.seed, "setup seed", 0, 2**31 - 1)
    real(setup.guidance, "setup guidance", 0.0, 10.0)
    unet, ablation = model.unet, setup.ablation
    resolutions = unet.skip_resolutions
    gains = {}
    for name in ("skip_scale", "backbone_scale", "skip_low_freq_scale"):
        values = dict(getattr(ablation, name))
        gains[name] = [real(values.get(r, 1.0), f"setup ablation {name} at {r}", 0.0, 3.0) for r in resolutions]
        gains[name] += [1.0] * (MAX_SKIP_SLIDERS - len(resolutions))
    window = setup.window or Window(0, T_LAST)
    window_of(window.t_min, window.t_max, "setup window")
    lie = setup.timestep_lie
    if lie is None:
        lie_mode, lie_value = LIE_MODES[0], 300  # the lie the time lesson suggests trying: one click on "offset" away
    elif lie.fixed is not None:
        lie_mode, lie_value = LIE_MODES[2], integer(lie.fixed, "setup timestep_lie fixed", 0, T_LAST)
    else:
        lie_mode, lie_value = LIE_MODES[1], integer(lie.offset, "setup timestep_lie offset", -T_LAST, T_LAST)
    recipe = setup.h_edit
    h_window = (recipe.window if recipe is not None else None) or Window(0, T_LAST)
    if recipe is not None:
        integer(recipe.component, "setup h_edit component", 0, HSPACE_COMPONENTS - 1)
        integer(recipe.probe_t, "setup h_edit probe_t", 0, T_LAST)
        real(recipe.strength, "setup h_edit strength", -10.0, 10.0)
        window_of(h_window.t_min, h_window.t_max, "setup h_edit window")
        if recipe.probe_samples != PROBE_SAMPLES:
            raise ValueError(f"setup h_edit probe_samples: this app probes with {PROBE_SAMPLES} samples, got {recipe.probe_samples}")
    options = options_of(model, window.t_min, window.t_max, lie_mode, lie_value, gains["backbone_scale"], gains["skip_low_freq_scale"],
                       recipe is not None, recipe.probe_t if recipe else 500, recipe.component if recipe else 0,
                       recipe.strength if recipe else 2.0, h_window.t_min, h_window.t_max)
    digit = DIGIT_CHOICES[0] if setup.digit is None else str(setup.digit)
    return (
        model.name, SAME_AS_A, digit, setup.guidance, setup.seed, setup.sampler, setup.steps, setup.batch,
        *ablation_controls(unet, gains["skip_scale"], sorted(ablation.attention_off), ablation.time_embedding_off),
        window.t_min, window.t_max, lie_mode, lie_value, *freeu_sliders(resolutions, "b", gains["backbone_scale"]),
        *freeu_sliders(resolutions, "s", gains["skip_low_freq_scale"]),
        recipe is not None, options["h_edit"].probe_t if recipe else 500, options["h_edit"].component if recipe else 0,
        options["h_edit"].strength if recipe else 2.0, h_window.t_min, h_window.t_max,
        trained_note(model), block_dropdown(registry, model.name),
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
    model = model_named(registry, model_a, "model A")
    ablation = setup.ablation
    mapped = Ablation(
        skip_scale={r: min(g for _, g in ablation.skip_scale) for r in model.unet.skip_resolutions} if ablation.skip_scale else {},
        attention_off=model.unet.attention_sites if ablation.attention_off else (),
        time_embedding_off=ablation.time_embedding_off)
    return replace(setup, model=model.name, ablation=mapped,
                   digit=setup.digit if model.null_label is not None else None)


def lesson_question(lesson) -> str:
    """A lesson picked: its question, to answer before the run reveals it."""
    item = LESSONS[choice(lesson, "lesson", list(LESSONS))]
    return f"**Predict first.** {item.question}\n\nThen press **Reveal** to run it."


def apply_lesson(registry, lesson, model_a):
    """A lesson revealed -> every control and what to look for, then a Generate (chained) runs it."""
    choice(lesson, "lesson", list(LESSONS))
    setup = _lesson_setup(registry, lesson, model_a)
    item = LESSONS[lesson]
    return (*_setup_controls(registry, setup), f"**{item.title}.** {item.question}\n\n**What to look for.** {item.explanation}")


# Copies the page's address with the shown setup in it (?setup=...): opening it reproduces this run
COPY_LINK_JS = """(setup) => {
  const link = location.origin + location.pathname + (setup ? '?setup=' + encodeURIComponent(setup) : '');
  navigator.clipboard?.writeText(link);
  const button = document.querySelector('#copy-link');
  if (button) { button.dataset.link = link; button.textContent = 'Link copied'; setTimeout(() => button.textContent = 'Copy link', 1500); }
}"""


def build_lessons() -> SimpleNamespace:
    with gr.Row():
        lesson = gr.Dropdown([(item.title, key) for key, item in LESSONS.items()], value=None, label="Lesson",
                             elem_id="lesson", scale=2, info="one question each: predict, then reveal")
        reveal = gr.Button("Reveal: run it", elem_id="lesson-reveal", scale=1, variant="secondary")
    note = gr.Markdown(elem_id="lesson-note")
    return SimpleNamespace(lesson=lesson, reveal=reveal, note=note)


def build_share() -> SimpleNamespace:
    gr.Markdown("The setup of the last run as JSON: copy it, paste one back and press **Apply setup**, pass it "
                "to the CLIs (`--setup file.json`), or open the app with `?setup=<url-encoded JSON>` or "
                "`?lesson=skips|attention|time`. A setup holds one model and one digit (or none): B as another "
                "model and the cycling digits are not part of it.")
    setup_box = gr.Textbox(label="Setup (JSON)", lines=6, max_lines=24, elem_id="setup-json")
    with gr.Row():
        apply_button = gr.Button("Apply setup", elem_id="apply-setup")
        copy_link = gr.Button("Copy link", elem_id="copy-link")
    with gr.Row():
        export_which = gr.Radio(list(EXPORT_CHOICES), value="A", label="Network", elem_id="export-which")
        tensors_button = gr.Button("Download tensors (.safetensors)", elem_id="tensors-button")
        frames_button = gr.Button("PNG frames of x̂0 (.zip)", elem_id="frames-button")
    with gr.Row():
        gif_which = gr.Radio(["x̂0 (predicted clean image)", "x_t (noisy input)"], value="x̂0 (predicted clean image)",
                             label="Animate network A's trajectory", elem_id="gif-which")
        gif_button = gr.Button("Make GIF", elem_id="gif-button")
    export_file = gr.File(label="Download", interactive=False, elem_id="export-file")
    return SimpleNamespace(setup_box=setup_box, apply_button=apply_button, copy_link=copy_link, export_which=export_which,
                           tensors_button=tensors_button, frames_button=frames_button, gif_which=gif_which,
                           gif_button=gif_button, export_file=export_file)


def open_from_query(registry, model_a, request: gr.Request):
    """?setup=<url-encoded JSON> or ?lesson=skips|attention|time opens the app in that state; otherwise nothing changes."""
    params = dict(request.query_params) if request is not None else {}
    if "setup" in params:
        return apply_setup(registry, params["setup"])
    if "lesson" in params:
        key = LESSON_NAMES.get(params["lesson"], params["lesson"])
        if key not in LESSONS:
            raise ValueError(f"lesson must be one of {list(LESSON_NAMES)}, got {shown(params['lesson'])}")
        return apply_lesson(registry, key, model_a)
    return tuple(gr.skip() for _ in range(SETUP_OUTPUTS))


def export_gif(state, which):
    """The whole trajectory of A (x̂0 or x_t per step) as a looping GIF file."""
    state = kept_run(state)
    quantities = {"x̂0 (predicted clean image)": "x0", "x_t (noisy input)": "x_t"}
    return str(write_gif(state["a"], quantities[choice(which, "animation", quantities)], IMAGE_PX))


def export_tensors(state, which):
    """A or B's whole trajectory (x_t, ε̂, x̂0 per step, timesteps) as .safetensors, with what made it as metadata."""
    state = kept_run(state)
    network = choice(which, "network", EXPORT_CHOICES)
    return str(write_tensors(state[network.lower()], network))


def export_frames(state, which):
    """x̂0 of every step of A or B as numbered PNG grids in one zip."""
    state = kept_run(state)
    network = choice(which, "network", EXPORT_CHOICES)
    return str(write_frames(state[network.lower()], network, IMAGE_PX))
