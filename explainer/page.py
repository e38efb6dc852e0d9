"""The page: one screen, pictures first. The panels are laid out here and their events wired; each panel's own
controls and handlers live in its module. Also the queue a public server runs them on.

Above the fold: the run's controls in a rail on the left, A | B | A − B large in the middle with the step scrubber
under them, the U-Net diagram on the right with the open block's feature maps under it. Everything beyond the core
loop sits in tabs below.
"""

from __future__ import annotations

import functools
import os

import gradio as gr

from explainer import (features, filtering, numbers, options, own_digit, patches, probing, runs, sessions, share, switches,
                       when)
from explainer.checks import UserError, user_errors
from explainer.delivery import figures_drawn, pictures_filed, receiving_event, unless_superseded
from explainer.diagram import build_diagram
from explainer.glossary import build_glossary
from explainer.viewer import build_viewer
from playground.exports import EXPORT_KEEP_SECONDS
from playground.registry import ModelRegistry
from playground.serving import on_network_thread

HEADER = """<div id="header"><h1>U-Net Diffusion Playground</h1>
<p>Network <b class="network-A">A</b> runs intact, <b class="network-B">B</b> with the parts you switch off on the
diagram, both from the same noise. Scrub the reverse process; click a block for its feature maps. Pixel space, no VAE.
Terms: <b>Glossary</b>, top right.</p></div>"""

# While runs are on their way, the pictures they will replace stay on screen, dimmed. Each run sent counts itself in
# (as the browser sends it) and out (as it ends, well or not): a superseded run that ends while its successor still
# runs must not undim the pictures. Stop zeroes the count.
_RUNS_JS = "const viewer = document.querySelector('#viewer'); if (viewer) {{ const runs = {count}; " \
           "viewer.dataset.runs = String(runs); viewer.classList.toggle('waiting', runs > 0); }} return inputs;"
DIM_JS = "(...inputs) => { " + _RUNS_JS.format(count="Number(viewer.dataset.runs || 0) + 1") + " }"
UNDIM_JS = "(...inputs) => { " + _RUNS_JS.format(count="Math.max(0, Number(viewer.dataset.runs || 0) - 1)") + " }"
STOPPED_JS = "(...inputs) => { " + _RUNS_JS.format(count="0") + " }"


def build_demo(weights_dir: str | os.PathLike | None = None, prefetch: bool = True) -> gr.Blocks:
    registry = ModelRegistry(weights_dir or os.environ.get("PLAYGROUND_WEIGHTS", "weights"), prefetch=prefetch)
    on_network_thread(registry.load_all)()  # loading checks every weight: the first of many parallel torch calls
    models = registry.available
    default_a = "mnist" if "mnist" in models else (models[0] if models else None)
    default_model = registry.get(default_a) if default_a else None
    bound = lambda handler: user_errors(functools.partial(handler, registry))  # noqa: E731
    networked = lambda handler: user_errors(on_network_thread(figures_drawn(functools.partial(handler, registry))))  # noqa: E731

    # every picture an event returns is written to Gradio's cache; on a public server that cache must be swept
    with gr.Blocks(title="U-Net Diffusion Playground", delete_cache=(600, EXPORT_KEEP_SECONDS * 3), fill_width=True) as demo:
        state = gr.State(None, time_to_live=sessions.STATE_TTL_SECONDS)
        # the scrubber's step, written by the viewer in the page: events that need it read it without a round trip
        step = gr.Number(value=50, precision=0, visible="hidden", elem_id="step")
        build_glossary()
        gr.HTML(HEADER)
        with gr.Row(elem_id="core", equal_height=False):
            with gr.Column(scale=0, min_width=260, elem_id="rail"):
                rail = runs.build_rail(models, default_a)
                with gr.Accordion("B's switches (also on the diagram)", open=True, elem_id="b-switches"):
                    panel = switches.build_switches(default_model)
                gr.Markdown(switches.describe_models(registry), elem_id="model-status")
            with gr.Column(scale=3, min_width=340, elem_id="stage"):
                viewer = build_viewer(elem_id="viewer", step_elem_id="step")
                verdicts = gr.Markdown(elem_id="verdicts")
            with gr.Column(scale=2, min_width=300, elem_id="side"):
                diagram = build_diagram(*switches.opening_diagram(registry, default_a), elem_id="diagram")
                maps = features.build_features(registry, default_a)
        with gr.Tabs(elem_id="more"):
            with gr.Tab("Lessons", elem_id="tab-lessons"):
                lessons = share.build_lessons()
            with gr.Tab("B over time", elem_id="tab-options"):
                b_options = options.build_options(default_model.unet.skip_resolutions if default_model else ())
            with gr.Tab("Numbers", elem_id="tab-numbers"):
                more_numbers = numbers.build_numbers()
            with gr.Tab("When does it matter?", elem_id="tab-sweep"):
                sweep = when.build_sweep()
            with gr.Tab("When does the digit decide?", elem_id="tab-decide"):
                decides = when.build_decides()
            # the causal experiments, one tab of their own: the tab bar holds this many at a desktop's width
            with gr.Tab("Causal experiments", elem_id="tab-experiments"), gr.Tabs():
                with gr.Tab("Patch A into B", elem_id="tab-patch"):
                    patching = patches.build_patches(patches.patch_blocks(registry, default_a) if default_a else [])
                with gr.Tab("Filter at a pixel", elem_id="tab-filter"):
                    pixel_filter = filtering.build_filter()
                with gr.Tab("Your own digit", elem_id="tab-own"):
                    own = own_digit.build_own_digit()
                with gr.Tab("What each block knows", elem_id="tab-probes"):
                    probes = probing.build_probes()
            with gr.Tab("Share and export", elem_id="tab-share"):
                sharing = share.build_share()

        # ---- events
        run_events = []  # what Stop cancels
        model_run = dict(concurrency_id="model", concurrency_limit=1, show_progress="minimal", show_progress_on=[verdicts],
                         trigger_mode="always_last", js=DIM_JS)
        view_events = dict(concurrency_id="view", concurrency_limit=4, show_progress="hidden", trigger_mode="always_last")
        # For events that read the step or sample, whose range each run sets: Gradio would check a slider's value
        # against the range the session's copy has when the event is *processed*, so a view sent at step 50,
        # reaching the server after a Generate of 8 steps, was refused. The handlers check every input anyway,
        # and hold a step or sample to the run (checks.slider_step, checks.slider_sample).
        reads_run_sliders = dict(preprocess=False)
        pictures_only = dict(reads_run_sliders, postprocess=False)  # the views: filed by `pictures_filed`
        # unqueued: it must act while the visitor's old run still holds the model queue
        superseding = dict(queue=False, api_name=False, show_progress="hidden", trigger_mode="always_last")

        controls = rail.inputs
        generate_inputs = [*controls, *panel.inputs, state]
        generate_outputs = [state, viewer, maps.sample_index, verdicts]
        b_inputs = [rail.model_a, rail.model_b, *panel.inputs, state, step]
        b_outputs = [state, viewer, verdicts]
        option_inputs = [rail.model_a, rail.model_b, *b_options.inputs, state, step]
        diagram_inputs = [rail.model_a, rail.model_b, *panel.inputs, maps.block]
        feature_inputs = [state, step, maps.block, maps.sample_index, maps.range_mode]
        refresh = dict(fn=bound(share.refresh_setup), inputs=state, outputs=sharing.setup_box, api_name=False,
                       show_progress="hidden")
        follow = dict(fn=pictures_filed(networked(features.features_after_run)), inputs=feature_inputs,
                      outputs=maps.outputs, api_name=False, **view_events, **pictures_only)
        show_features = dict(fn=pictures_filed(networked(features.view_features)), inputs=feature_inputs,
                             outputs=maps.outputs, **view_events, **pictures_only)
        redraw_diagram = dict(fn=bound(switches.diagram_of), inputs=diagram_inputs, outputs=diagram, api_name=False,
                              queue=False, show_progress="hidden")
        guess = dict(fn=networked(runs.guess_first_generate), inputs=generate_inputs, outputs=None, api_name=False,
                     show_progress="hidden")

        def ran(event):
            """Whatever ran A or B: the setup box shows the run, the open block's maps follow it; on an error or a
            Stop the old pictures come back to full strength."""
            run_events.append(event)
            event.success(**refresh)
            event.success(**follow)
            event.then(None, js=UNDIM_JS)
            event.failure(None, js=UNDIM_JS)  # `then` follows only a success in Gradio 6.31
            return event

        def run_b_after(trigger, fn, inputs, api_name=False):
            """B's switches, options or model changed: the visitor's older run stops, then B reruns (before the first
            run, the Generate they set up is guessed instead)."""
            event = ran(trigger.then(unless_superseded(networked(fn), len(b_outputs)), inputs, b_outputs, api_name=api_name, **model_run, **reads_run_sliders))
            event.success(**guess)

        generate_event = dict(fn=unless_superseded(networked(runs.generate), len(generate_outputs)), inputs=generate_inputs, outputs=generate_outputs, **model_run)
        ran(rail.generate.click(sessions.supersede_runs, **superseding).then(api_name="generate", **generate_event))
        for control in panel.inputs:
            started = control.input(bound(switches.switched), diagram_inputs, diagram, **superseding)
            run_b_after(started, runs.rerun_b, b_inputs, api_name="ablate" if control is panel.skip_sliders[0] else False)
        # a click on the diagram flips the control it stands for; the rerun follows as for the control itself
        for click, handler, outputs in ((diagram.skip_click, switches.click_skip, panel.skip_sliders),
                                        (diagram.attention_click, switches.click_attention, [panel.attention_off]),
                                        (diagram.time_click, switches.click_time, [panel.time_off])):
            started = click(receiving_event(bound(handler), len(diagram_inputs)), diagram_inputs, [*outputs, diagram], **superseding)
            run_b_after(started, runs.rerun_b, b_inputs)
        for control in b_options.inputs:
            started = control.input(sessions.supersede_runs, **superseding)
            run_b_after(started, runs.set_b_options, option_inputs, api_name="b_options" if control is b_options.inputs[0] else False)
        preset = b_options.preset.click(bound(options.freeu_preset_values), [rail.model_a, rail.model_b], b_options.freeu,
                                        api_name="freeu_preset")
        run_b_after(preset, runs.set_b_options, option_inputs)

        # the models: B's panel follows B's model (and B reruns); A's sets up the next Generate
        for selector in (rail.model_a, rail.model_b):
            panel_changed = selector.input(bound(switches.ablation_panel), [rail.model_a, rail.model_b], [*panel.inputs, panel.note],
                                           api_name="ablation_panel" if selector is rail.model_a else False)
            selector.input(bound(options.options_panel), [rail.model_a, rail.model_b], b_options.freeu,
                           api_name="options_panel" if selector is rail.model_a else False)
            panel_changed.success(**redraw_diagram)
            if selector is rail.model_b:
                run_b_after(panel_changed.success(sessions.supersede_runs, **superseding), runs.rerun_b, b_inputs)
            else:
                panel_changed.success(networked(runs.guess_generate), generate_inputs, None, api_name=False, show_progress="hidden")
        rail.model_a.input(bound(features.block_dropdown), rail.model_a, maps.block, api_name="block_choices")
        # a visitor who picks another digit or seed will likely press Generate next
        for control in (rail.digit, rail.seed, rail.sampler):
            control.input(networked(runs.guess_generate), generate_inputs, None, api_name=False, show_progress="hidden")
        for control in (rail.guidance, rail.steps, rail.batch):
            control.release(networked(runs.guess_generate), generate_inputs, None, api_name=False, show_progress="hidden")

        # the feature maps: a block from the dropdown or the diagram, the step from the viewer, a sample clicked
        viewer.step(api_name=False, **show_features)
        # a click on a sample: its filter at the clicked pixel, and its feature maps
        viewer.sample(receiving_event(networked(filtering.filter_at_pixel), 1), state, pixel_filter.outputs, api_name=False,
                      **view_events)
        viewer.sample(receiving_event(bound(features.sample_clicked), 1), state, maps.sample_index, api_name=False,
                      **reads_run_sliders).success(api_name=False, **show_features)
        for trigger in (maps.block.input, maps.sample_index.input, maps.range_mode.input):
            trigger(api_name="features" if trigger == maps.block.input else False, **show_features)
        maps.block.input(**redraw_diagram)
        diagram.block_click(receiving_event(bound(features.block_clicked), 1), rail.model_a, maps.block, api_name=False).success(
            api_name=False, **show_features).success(**redraw_diagram)

        # the tabs
        run_events.append(more_numbers.button.click(unless_superseded(networked(numbers.compute_numbers), 2), [state, step], more_numbers.outputs, api_name="numbers",
                                  **dict(model_run, js=None, show_progress_on=more_numbers.outputs), **reads_run_sliders))
        run_events.append(sweep.button.click(unless_superseded(networked(when.sweep_ablation), 2), [state, sweep.windows], sweep.outputs, api_name="sweep",
                           **dict(model_run, js=None, show_progress_on=sweep.outputs)))
        run_events.append(decides.button.click(networked(when.digit_decides), [state, maps.sample_index], decides.outputs, api_name="digit_decides",
                             **dict(model_run, js=None, show_progress_on=decides.outputs), **reads_run_sliders))
        run_events.append(probes.button.click(unless_superseded(networked(probing.read_probes), 3), [state, maps.sample_index],
                                              probes.outputs, api_name="probes",
                                              **dict(model_run, js=None, show_progress_on=probes.outputs), **reads_run_sliders))
        run_events.append(patching.one.click(unless_superseded(networked(patches.patch_one), 2), [state, *patching.one_inputs],
                                             patching.one_outputs, api_name="patch",
                                             **dict(model_run, js=None, show_progress_on=patching.one_outputs)))
        run_events.append(patching.every.click(unless_superseded(networked(patches.map_patches), 2), [state, patching.windows],
                                               patching.every_outputs, api_name="patch_map",
                                               **dict(model_run, js=None, show_progress_on=patching.every_outputs)))
        diagram.block_click(receiving_event(bound(patches.block_clicked), 1), rail.model_a, patching.block, api_name=False,
                            show_progress="hidden")
        own_inputs = [rail.model_a, rail.model_b, *panel.inputs]
        run_events.append(own.classify.click(unless_superseded(networked(own_digit.classify_drawing), 2), [own.sketch, *own_inputs],
                                             [own.posterior, own.note], api_name="denoising_classifier",
                                             **dict(model_run, js=None, show_progress_on=[own.posterior, own.note])))
        run_events.append(own.invert.click(unless_superseded(networked(own_digit.invert_drawing), 2),
                                           [own.sketch, rail.model_a, rail.model_b, own.digit, own.steps, *panel.inputs],
                                           [own.regenerated, own.note], api_name="invert",
                                           **dict(model_run, js=None, show_progress_on=[own.regenerated, own.note])))
        setup_outputs = [*controls, *panel.inputs, *b_options.inputs, panel.note, maps.block, state, lessons.note]
        then_generate = dict(api_name=False, **generate_event)

        def setup_then_generate(event):
            event = ran(event.success(sessions.supersede_runs, **superseding).then(**then_generate))
            event.then(**redraw_diagram)

        setup_then_generate(sharing.apply_button.click(bound(share.apply_setup), sharing.setup_box, setup_outputs,
                                                       api_name="apply_setup"))
        lessons.lesson.input(share.lesson_question, lessons.lesson, lessons.note, api_name="lesson_question")
        setup_then_generate(lessons.reveal.click(bound(share.apply_lesson), [lessons.lesson, rail.model_a], setup_outputs,
                                                 api_name="lesson"))
        sharing.copy_link.click(None, sharing.setup_box, None, js=share.COPY_LINK_JS)
        sharing.tensors_button.click(user_errors(share.export_tensors), [state, sharing.export_which], sharing.export_file,
                                     api_name="export_tensors", **view_events)
        sharing.frames_button.click(user_errors(share.export_frames), [state, sharing.export_which], sharing.export_file,
                                    api_name="export_frames", **view_events)
        sharing.gif_button.click(user_errors(share.export_gif), [state, sharing.gif_which], sharing.export_file, api_name="gif",
                                 **view_events)

        def load_query(model_a, request: gr.Request):  # annotated here: Gradio finds gr.Request by the hint, not via partial
            try:
                return user_errors(share.open_from_query)(registry, model_a, request)
            except UserError as refused:  # a broken link: said in a toast, and the page still opens on its defaults' run
                gr.Warning(refused.message)
                return tuple(gr.skip() for _ in range(share.SETUP_OUTPUTS))

        if default_a:
            # the controls are built for the default model, so a plain address needs no event before the Generate;
            # the page opens on a finished run (its defaults', usually kept from an earlier visitor)
            setup_then_generate(demo.load(load_query, rail.model_a, setup_outputs, api_name=False))
            # ... so that run is guessed from the start: the server's first visitor finds it kept, or part-done
            runs.prefetch_generate(registry, *(control.value for control in generate_inputs[:-1]), None)
        # last: it cancels every run event above
        rail.stop.click(sessions.supersede_runs, js=STOPPED_JS, cancels=run_events, **superseding)
    return demo


# Gradio's queue looks for new events every 1 ms, waking its event loop, which takes the GIL and a core from the
# networks: with both cores busy (A and B side by side) the networks of a generate took 1.43-1.54 s with the served
# app idle beside them, against 1.12-1.24 s at 2-20 ms (bare runs on the network thread, interleaved, 4 rounds).
# No public setting; a looser look costs an event at most these seconds before it starts.
QUEUE_POLL_S = 0.005
MAX_UPLOAD = "2mb"

PAGE_CSS = """
.gradio-container {max-width: 1560px !important; padding-top: 6px !important}
#header {display: flex; align-items: baseline; gap: 16px; flex-wrap: wrap}
#header h1 {font-size: 1.25rem; margin: 0; white-space: nowrap}
#header p {margin: 0; font-size: 0.85rem; color: var(--body-text-color-subdued)}
.network-A {color: #2563eb} .network-B {color: #ea580c}
/* the rail and the side keep their widths; the pictures take the rest (three across from ~620 px) */
#rail {flex: 0 0 250px !important; min-width: 250px !important}
#side {flex: 0 0 340px !important; min-width: 300px !important}
#stage {flex: 1 1 620px !important}
#viewer.waiting::after {content: "running…"; position: absolute; top: 4px; right: 8px; font-size: 12px;
  color: #475569; background: #f1f5f9; border-radius: 8px; padding: 1px 8px}
#viewer {position: relative}
/* a locked slider (a skip B's model was trained without) is drawn like a live one by the theme: grey it out */
input[type=range]:disabled {filter: grayscale(1); opacity: 0.4}
.feature-row-title {font-size: 0.8rem; font-weight: 600; margin-top: 4px}
.feature-picture img {image-rendering: pixelated; object-fit: contain}
#legend img {object-fit: contain}
@media (max-width: 600px) {#header p {display: none}}
@media (max-width: 900px) {
  /* a phone: the pictures first, the controls after them */
  #core {flex-direction: column}
  #stage {order: 1; flex: 1 1 auto !important} #rail {order: 2; flex: 1 1 auto !important} #side {order: 3; flex: 1 1 auto !important}
}
"""


def serve(demo: gr.Blocks, queue_size: int = 64, **launch_options):
    """Queue and launch as the public app does (benchmarks and tests call this too, so they measure the same server)."""
    demo.queue(default_concurrency_limit=2, max_size=queue_size)
    demo._queue.sleep_when_free = QUEUE_POLL_S
    # a drawing is a few kB: anything far larger is refused before it reaches a handler
    return demo.launch(**{"theme": gr.themes.Soft(), "css": PAGE_CSS, "state_session_capacity": sessions.STATE_SESSIONS,
                          "max_file_size": MAX_UPLOAD, **launch_options})
