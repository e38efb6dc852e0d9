"""The page: the panels laid out and their events wired, and the queue a public server runs them on.
"""

from __future__ import annotations

import functools
import os

import gradio as gr

from explainer.checks import (
    DIGIT_CHOICES,
    MAX_BATCH,
    MAX_SKIP_SLIDERS,
    SAME_AS_A,
    T_LAST,
    UserError,
    user_errors,
)
from explainer.delivery import LOSSLESS, figures_drawn, pictures_filed
from explainer.features import (
    architecture_choices,
    architecture_strip,
    block_choices,
    block_dropdown,
    features_after_run,
    open_block,
    opening_block,
    view_features,
)
from explainer.numbers import compute_numbers
from explainer.options import (
    FREEU_HELP,
    HSPACE_COMPONENTS,
    HSPACE_HELP,
    LIE_MODES,
    WINDOW_HELP,
    freeu_preset_values,
    options_panel,
)
from explainer.pictures import scrub
from explainer.runs import (
    generate,
    guess_first_generate,
    guess_generate,
    prefetch_generate,
    rerun_b,
    set_b_options,
)
from explainer import sessions
from explainer.share import (
    EXPORT_CHOICES,
    SETUP_OUTPUTS,
    apply_lesson,
    apply_setup,
    export_frames,
    export_gif,
    export_tensors,
    open_from_query,
    refresh_setup,
)
from explainer.switches import (
    ablation_panel,
    attention_look,
    describe_models,
    per_resolution,
    skip_slider_look,
    time_look,
    trained_note,
)
from explainer.when import SWEEP_MAX_BATCH, digit_decides, sweep_ablation
from playground.exports import EXPORT_KEEP_SECONDS
from playground.registry import ModelRegistry
from playground.sampling import MAX_STEPS, SAMPLERS
from playground.serving import on_network_thread
from playground.setup import LESSONS
from playground.viz import (
    RANGE_MODES,
)

INTRO = """
# U-Net Diffusion Playground
Look inside a diffusion model's U-Net while it generates MNIST digits, and take it apart.
The page opens on a finished run. **1.** Pick a model, a digit and a seed, press **Generate**: network **A** runs
intact, network **B** with the ablation you set (or another model), both from the *same* noise. **2.** Slide
through the reverse process: the predicted clean image x̂0, the noisy input x_t and the predicted noise ε̂ at every
step. **3.** Open the feature maps of any block. **4.** Read the numbers. The model works directly in pixel space:
no VAE blurs what the U-Net did.
"""


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
    with gr.Blocks(title="U-Net Diffusion Playground", delete_cache=(600, EXPORT_KEEP_SECONDS * 3)) as demo:
        state = gr.State(None, time_to_live=sessions.STATE_TTL_SECONDS)
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
                skip_sliders = [gr.Slider(0, 3, value=1, step=0.05, elem_id=f"skip-{i}", **skip_slider_look(default_unet, i))
                                for i in range(MAX_SKIP_SLIDERS)]
                attention_off = gr.CheckboxGroup(label="Attention switched off", elem_id="attention-off",
                                                 info="the site's residual path alone flows on", **attention_look(default_unet))
                time_off = gr.Checkbox(False, label="Hide the timestep (time embedding → 0)", elem_id="time-off",
                                       **time_look(default_unet))
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
                    freeu_b = [gr.Slider(0, 3, value=1, step=0.05, elem_id=f"freeu-b-{i}", **per_resolution(default_resolutions, i, "FreeU b"))
                               for i in range(MAX_SKIP_SLIDERS)]
                with gr.Row():
                    freeu_s = [gr.Slider(0, 3, value=1, step=0.05, elem_id=f"freeu-s-{i}", **per_resolution(default_resolutions, i, "FreeU s"))
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
        # the handlers check every input anyway, and hold a step or sample to the run (slider_step, slider_sample).
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
            prefetch_generate(registry, *(control.value for control in generate_inputs[:-1]), None)
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
    return demo.launch(**{"theme": gr.themes.Soft(), "css": PAGE_CSS, "state_session_capacity": sessions.STATE_SESSIONS,
                          **launch_options})


