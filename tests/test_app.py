"""The app: handlers called directly, then the real server driven through gradio_client."""

import contextvars
import functools
import inspect
import os
import threading
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
import torch  # noqa: E402
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from explainer import checks  # noqa: E402
from explainer import delivery  # noqa: E402
from explainer import features  # noqa: E402
from explainer import numbers  # noqa: E402
from explainer import options  # noqa: E402
from explainer import page  # noqa: E402
from explainer import sessions  # noqa: E402
from explainer import runs  # noqa: E402
from explainer import share  # noqa: E402
from explainer import switches  # noqa: E402
from explainer import when  # noqa: E402
from playground import exports  # noqa: E402
from playground import sampling  # noqa: E402
from playground import serving  # noqa: E402
import playground.sampling  # noqa: E402
import playground.trajectories  # noqa: E402
from playground import PlaygroundUNet  # noqa: E402
from playground.network_thread import use_threads  # noqa: E402
from playground.registry import ModelRegistry  # noqa: E402

from tiny_weights import TINY_UNET, make_tiny_weights, write_pipeline  # noqa: E402

SITE = "down_blocks.1.attentions.0"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    return make_tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(autouse=True)
def close_figures():
    """Handlers return matplotlib figures that Gradio would close after sending; called directly, the test does."""
    yield
    import matplotlib.pyplot as plt
    plt.close("all")


class NoProgress:
    def __call__(self, *args, **kwargs):
        pass


@pytest.fixture(scope="module")
def registry(tiny_weights):
    return ModelRegistry(tiny_weights)


def run_generate(registry, model_b=checks.SAME_AS_A, skips=(1, 1), attention_off=(), time_off=False, steps=8, batch=2, seed=0,
                 state=None, digit=checks.DIGIT_CHOICES[1]):
    skip_values = list(skips) + [1] * (checks.MAX_SKIP_SLIDERS - len(skips))
    return runs.generate(registry, "tiny", model_b, digit, 3, seed, "ddim", steps, batch,
                        *skip_values, list(attention_off), time_off, state, progress=NoProgress())


def test_generate_keeps_both_trajectories_in_the_session_state(registry):
    state, *_ = run_generate(registry, steps=8, batch=2)
    assert state["a"].x0.shape == (8, 2, 1, 28, 28) and state["b"].x0.shape == (8, 2, 1, 28, 28)


def test_intact_b_is_a_and_its_frames_say_so(registry):
    state, frames, *_ = run_generate(registry)
    assert state["b"] is state["a"]
    assert frames["b_is_a"] and "b" not in frames["sheets"]


def test_an_ablation_changes_b_but_not_a(registry):
    intact, *_ = run_generate(registry)
    ablated, *_ = run_generate(registry, skips=(0, 1))
    assert (intact["a"].final == ablated["a"].final).all()
    assert not (intact["b"].final == ablated["b"].final).all()
    _, frames, *_ = run_generate(registry, skips=(0, 1))
    assert not frames["b_is_a"] and max(frames["drift"]["x0"]) > 0


def record_sampling_threads(monkeypatch):
    """{"A" or "B": the thread that ran it}, for every reverse process the kept trajectories (which every run of the app
    goes through) run from now on; and the real `sample`."""
    threads, real_sample = {}, playground.trajectories.sample

    def recording_sample(model, settings, *args, **kwargs):
        threads["A" if settings.ablation.is_intact else "B"] = threading.current_thread().name
        return real_sample(model, settings, *args, **kwargs)

    monkeypatch.setattr(playground.trajectories, "sample", recording_sample)
    return threads, real_sample


def test_a_and_b_run_side_by_side_and_equal_runs_one_after_the_other(tiny_weights, monkeypatch):
    registry = ModelRegistry(tiny_weights)  # nothing kept from other tests' runs
    threads, real_sample = record_sampling_threads(monkeypatch)
    state, *_ = run_generate(registry, skips=(0, 1))
    assert threads["A"] == threading.current_thread().name and threads["B"].startswith("networks-pair")
    model = registry.get("tiny")
    assert torch.equal(state["a"].x_t, real_sample(model, state["a"].settings).x_t)
    assert torch.equal(state["b"].x_t, real_sample(model, state["b"].settings).x_t)


def test_a_run_seen_before_is_answered_from_the_kept_trajectories_for_any_visitor(tiny_weights, monkeypatch):
    registry = ModelRegistry(tiny_weights)
    first, *_ = run_generate(registry, skips=(0, 1), seed=5)
    monkeypatch.setattr(registry.get("tiny").unet, "forward", forbidden_forward)
    again, *_ = run_generate(registry, skips=(0, 1), seed=5)  # another visitor: no state of its own yet
    assert again["a"] is first["a"] and again["b"] is first["b"]
    # the ablation switched on (B is A, nothing to run) and off again: the B seen before, not a rerun
    intact = runs.rerun_b(registry, "tiny", checks.SAME_AS_A, *[1] * checks.MAX_SKIP_SLIDERS, [], False, again, 8, progress=NoProgress())[0]
    assert intact["b"] is intact["a"]
    skip_values = [0] + [1] * (checks.MAX_SKIP_SLIDERS - 1)
    off_again = runs.rerun_b(registry, "tiny", checks.SAME_AS_A, *skip_values, [], False, intact, 8, progress=NoProgress())[0]
    assert off_again["b"] is first["b"]
    with pytest.raises(AssertionError, match="the model ran"):  # a new seed is computed
        run_generate(registry, skips=(0, 1), seed=6)


def test_with_a_kept_only_b_runs_and_on_both_cores(tiny_weights, monkeypatch):
    registry = ModelRegistry(tiny_weights)
    run_generate(registry, skips=(1, 1), seed=7)  # keeps A (B is A)
    threads, _ = record_sampling_threads(monkeypatch)
    state, *_ = run_generate(registry, skips=(0, 1), seed=7)
    assert threads == {"B": threading.current_thread().name}  # not the pair thread, which would leave one core idle
    assert not torch.equal(state["b"].final, state["a"].final)


def forbidden_forward(*args, **kwargs):
    raise AssertionError("the model ran")


def rerun(registry, state, skips=(1, 1), attention_off=(), time_off=False, model_b=checks.SAME_AS_A):
    skip_values = list(skips) + [1] * (checks.MAX_SKIP_SLIDERS - len(skips))
    return runs.rerun_b(registry, "tiny", model_b, *skip_values, list(attention_off), time_off, state, 8,
                       progress=NoProgress())[0]


def test_the_runs_one_switch_away_are_computed_while_idle_and_answer_the_next_switch(tiny_weights, monkeypatch):
    registry = ModelRegistry(tiny_weights, prefetch=True)
    state, *_ = run_generate(registry, skips=(0, 1), seed=11)
    assert serving.NETWORK_THREAD.wait_until_idle(timeout=120)
    # A and B, then every neighbour of B but the one that is A (28×28 back on): the other model picked as B,
    # 14×14 off, four sites, time
    assert len(registry.trajectories) == 2 + 1 + 4 + 1 + 1
    real_forward = registry.get("tiny").unet.forward
    monkeypatch.setattr(registry.get("tiny").unet, "forward", forbidden_forward)
    # first, while no answer below has named new guesses: each has its own neighbours, this one among them (CI once
    # saw it guessed, with the real forward back for a check, before this line)
    with pytest.raises(AssertionError, match="the model ran"):  # two switches away: not guessed
        rerun(registry, state, skips=(0, 0), time_off=True)
    for switched in (dict(skips=(0, 0)), dict(skips=(0, 1), attention_off=["mid_block.attentions.0"]),
                     dict(skips=(0, 1), time_off=True)):
        answered = rerun(registry, state, **switched)
        monkeypatch.setattr(registry.get("tiny").unet, "forward", real_forward)
        assert torch.equal(answered["b"].x_t, playground.sampling.sample(registry.get("tiny"), answered["b"].settings).x_t)
        monkeypatch.setattr(registry.get("tiny").unet, "forward", forbidden_forward)
    other = registry.get("tiny-noskip")
    real_other_forward = other.unet.forward
    monkeypatch.setattr(other.unet, "forward", forbidden_forward)
    answered = rerun(registry, state, model_b="tiny-noskip")  # the panel it brings is intact
    monkeypatch.setattr(other.unet, "forward", real_other_forward)
    assert torch.equal(answered["b"].x_t, playground.sampling.sample(other, answered["b"].settings).x_t)


def test_b_s_skips_that_training_cut_are_locked_and_not_guessed(tiny_weights):
    """On a model trained without skips a skip slider would move nothing: it is locked, and no idle time goes on it."""
    registry = ModelRegistry(tiny_weights, prefetch=True)
    *sliders, sites, time_off, note = switches.ablation_panel(registry, "tiny", "tiny-noskip")
    assert [(s.label, s.interactive) for s in sliders[:2]] == [
        ("skips joining at 28×28 (trained without)", False), ("skips joining at 14×14 (trained without)", False)]
    assert "*trained* with skips" in note and sites.visible and time_off.interactive
    *sliders, _, _, note = switches.ablation_panel(registry, "tiny", checks.SAME_AS_A)
    assert [(s.label, s.interactive) for s in sliders[:2]] == [("skips joining at 28×28", True), ("skips joining at 14×14", True)]
    run_generate(registry, model_b="tiny-noskip", seed=41)
    assert serving.NETWORK_THREAD.wait_until_idle(timeout=120)
    # A and B, then B one switch away: four sites and time, no skip (and tiny picked as B, intact, is A)
    assert len(registry.trajectories) == 2 + 4 + 1


def test_attention_trained_off_is_not_offered_and_with_none_left_the_group_hides():
    sites = PlaygroundUNet(**TINY_UNET).attention_sites
    partly = PlaygroundUNet(**TINY_UNET, training_ablation={"attention_off": [sites[0]]})
    *_, group, _ = switches.ablation_controls(partly, attention_off=[sites[0], sites[1]])  # a setup may name either
    assert [choice[1] for choice in group.choices] == list(sites[1:]) and group.value == [sites[1]] and group.visible
    without = PlaygroundUNet(**TINY_UNET, training_ablation={"attention_off": list(sites), "time_embedding_off": True})
    *_, group, time_off = switches.ablation_controls(without)
    assert group.choices == [] and not group.visible and not time_off.interactive


def test_the_run_a_page_opens_on_is_guessed_as_the_server_starts(tiny_weights, monkeypatch):
    assert serving.NETWORK_THREAD.wait_until_idle(timeout=120)
    guessed_before = serving.NETWORK_THREAD.prefetched
    demo = page.build_demo(tiny_weights)
    assert serving.NETWORK_THREAD.wait_until_idle(timeout=120)
    assert serving.NETWORK_THREAD.prefetched - guessed_before == 1  # A alone: the page's B is A
    # a Generate with what the controls hold when the page opens (as its own Generate sends them) runs no network
    generate = next(fn for fn in demo.fns.values() if getattr(inspect.unwrap(fn.fn), "func", None) is runs.generate)
    registry = inspect.unwrap(generate.fn).args[0]
    monkeypatch.setattr(registry.get(demo_default_model(demo)).unet, "forward", forbidden_forward)
    state, *_ = runs.generate(registry, *(component.value for component in generate.inputs[:-1]), None, progress=NoProgress())
    assert state["b"] is state["a"] and len(state["a"]) == 50
    assert serving.NETWORK_THREAD.wait_until_idle(timeout=120)  # that Generate's own guesses (B one switch away)
    guessed_before = serving.NETWORK_THREAD.prefetched
    page.build_demo(tiny_weights, prefetch=False)
    assert serving.NETWORK_THREAD.wait_until_idle(timeout=120) and serving.NETWORK_THREAD.prefetched == guessed_before


def demo_default_model(demo):
    return next(block.value for block in demo.blocks.values() if getattr(block, "elem_id", None) == "model-a")


def test_an_ablation_set_before_the_first_generate_is_guessed_with_it(tiny_weights, monkeypatch):
    registry = ModelRegistry(tiny_weights, prefetch=True)
    controls = ["tiny", checks.SAME_AS_A, checks.DIGIT_CHOICES[1], 3, 23, "ddim", 8, 2, 0, *[1] * (checks.MAX_SKIP_SLIDERS - 1), [], False]
    runs.guess_first_generate(registry, *controls, None)
    assert serving.NETWORK_THREAD.wait_until_idle(timeout=120)
    monkeypatch.setattr(registry.get("tiny").unet, "forward", forbidden_forward)
    state, *_ = runs.generate(registry, *controls, None, progress=NoProgress())  # the click: no network
    assert not state["b"].settings.ablation.is_intact
    assert serving.NETWORK_THREAD.wait_until_idle(timeout=120)  # that Generate's own guesses (B one switch away)
    kept = len(registry.trajectories)
    runs.guess_first_generate(registry, *controls[:8], *[1] * checks.MAX_SKIP_SLIDERS, [], False, state)  # after a run: B reran
    assert serving.NETWORK_THREAD.wait_until_idle(timeout=120) and len(registry.trajectories) == kept


def test_another_seed_picked_after_a_run_is_guessed_for_the_next_generate(tiny_weights, monkeypatch):
    registry = ModelRegistry(tiny_weights, prefetch=True)
    state, *_ = run_generate(registry, skips=(0, 1), seed=31)
    controls = ["tiny", checks.SAME_AS_A, checks.DIGIT_CHOICES[1], 3, 32, "ddim", 8, 2, 0, *[1] * (checks.MAX_SKIP_SLIDERS - 1), [], False]
    runs.guess_generate(registry, *controls, state)
    assert serving.NETWORK_THREAD.wait_until_idle(timeout=120)
    monkeypatch.setattr(registry.get("tiny").unet, "forward", forbidden_forward)
    again, *_ = runs.generate(registry, *controls, state, progress=NoProgress())  # the click: no network
    assert again["a"].settings.seed == 32 and not again["b"].settings.ablation.is_intact


def test_no_run_is_guessed_without_prefetch_nor_beyond_the_page_defaults_nor_for_an_h_space_edit(tiny_weights):
    assert serving.NETWORK_THREAD.wait_until_idle(timeout=120)
    computed_before = serving.NETWORK_THREAD.prefetched
    quiet = ModelRegistry(tiny_weights)  # a library caller's registry
    run_generate(quiet, skips=(0, 1))
    large = ModelRegistry(tiny_weights, prefetch=True)
    steps = serving.PREFETCH_MAX_STEPS_X_BATCH // 2 + 1
    run_generate(large, skips=(0, 1), steps=steps, batch=2)
    edited = ModelRegistry(tiny_weights, prefetch=True)
    state, *_ = run_generate(edited, steps=4)
    set_options(edited, state, h_on=True, component=1, strength=5.0)
    assert serving.NETWORK_THREAD.wait_until_idle(timeout=120)
    assert len(quiet.trajectories) == len(large.trajectories) == 2
    assert len(edited.trajectories) == 1 + 2 + 4 + 1 + 1  # the intact run's neighbours (the other model as B among them) ...
    assert serving.NETWORK_THREAD.prefetched - computed_before == 2 + 4 + 1 + 1  # ... and none of the edit's (never kept)


def test_side_by_side_passes_b_s_error_on_and_restores_the_thread_count():
    before = torch.get_num_threads()
    assert serving.side_by_side(lambda: "a", lambda: torch.get_num_threads()) == ("a", 1)

    def b_fails():
        raise FloatingPointError("B diverged")

    with pytest.raises(FloatingPointError, match="B diverged"):
        serving.side_by_side(lambda: "a", b_fails)
    assert torch.get_num_threads() == before


def test_networks_run_on_one_thread_whoever_asks_with_the_askers_context():
    asker = contextvars.ContextVar("asker")

    def where():
        inner = serving.on_network_thread(lambda: threading.current_thread().name)()  # nested: must not deadlock
        return threading.current_thread().name, inner, asker.get()

    answers = []

    def ask(name):
        asker.set(name)
        answers.append(serving.on_network_thread(where)())

    askers = [threading.Thread(target=ask, args=(f"visitor {i}",)) for i in range(3)]
    for thread in askers:
        thread.start()
    for thread in askers:
        thread.join(30)
    assert len(answers) == 3 and {(outer, inner) for outer, inner, _ in answers} == {("networks_0", "networks_0")}
    assert sorted(visitor for *_, visitor in answers) == ["visitor 0", "visitor 1", "visitor 2"]


def test_rerun_b_keeps_a_and_applies_the_new_ablation(registry):
    state, *_ = run_generate(registry)
    new_state, *_ = runs.rerun_b(registry, "tiny", checks.SAME_AS_A, 1, 1, 1, 1, 1, [SITE], False, state, 3, progress=NoProgress())
    assert new_state["a"] is state["a"]
    assert new_state["ablation_b"].attention_off == {SITE}
    assert not (new_state["b"].final == state["b"].final).all()


def test_b_can_be_a_model_trained_without_skips(registry):
    state, *_ = run_generate(registry, model_b="tiny-noskip")
    assert state["model_b"] == "tiny-noskip"
    assert not state["b"].settings.ablation.skip_scale  # its training ablation applies inside the model


def test_picking_another_model_for_b_reruns_b_alone_from_a_s_noise(registry):
    """As every other B control does: it used to leave the old B on show, and the next B control then refused."""
    intact = [1] * checks.MAX_SKIP_SLIDERS  # the panel a newly picked model brings
    state, *_ = run_generate(registry)
    switched, *_, numbers = runs.rerun_b(registry, "tiny", "tiny-noskip", *intact, [], False, state, 8, progress=NoProgress())
    assert switched["a"] is state["a"] and switched["model_b"] == "tiny-noskip"
    generated, *_ = run_generate(registry, model_b="tiny-noskip")
    assert torch.equal(switched["b"].final, generated["b"].final)  # what Generate would show for that B
    assert "**B** = `tiny-noskip`" in numbers
    back, *_ = runs.rerun_b(registry, "tiny", checks.SAME_AS_A, *intact, [], False, switched, 8, progress=NoProgress())
    assert back["model_b"] == "tiny" and torch.equal(back["b"].final, state["a"].final)


def test_b_is_not_rerun_against_a_run_of_another_model_a(registry):
    state, *_ = run_generate(registry)
    intact = [1] * checks.MAX_SKIP_SLIDERS
    with pytest.raises(gr.Error, match="model A is now 'tiny-noskip', but the run shown is 'tiny''s: press Generate"):
        checks.user_errors(runs.rerun_b)(registry, "tiny-noskip", checks.SAME_AS_A, *intact, [], False, state, 8,
                                     progress=NoProgress())
    # an option change keeps B's kept ablation, which belongs to B's kept model
    with pytest.raises(gr.Error, match="network B is now 'tiny-noskip', but the run shown is 'tiny''s"):
        checks.user_errors(runs.set_b_options)(registry, "tiny", "tiny-noskip", *option_values(), state, 2,
                                           progress=NoProgress())


def handler_of(fn):
    """The panel function an event runs, out of its wrappers (user_errors, the network thread, the registry)."""
    handler = inspect.unwrap(fn.fn)
    return getattr(handler, "func", handler)


def test_a_model_picked_for_b_reruns_b_and_one_for_a_is_guessed_once_the_panel_fits_it(tiny_weights):
    demo = page.build_demo(tiny_weights, prefetch=False)
    by_id = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}

    def chained_after_the_panel(selector):
        panel = [fn for fn in demo.fns.values() if (selector._id, "input") in fn.targets
                 and handler_of(fn) is switches.ablation_panel]
        assert len(panel) == 1
        return [handler_of(fn) for fn in demo.fns.values() if fn.trigger_after == panel[0]._id]

    assert chained_after_the_panel(by_id["model-b"]) == [page.switches.diagram_of, sessions.supersede_runs]
    assert chained_after_the_panel(by_id["model-a"]) == [page.switches.diagram_of, runs.guess_generate]


def test_feature_view_shows_three_views_for_a_and_b_with_a_caption(registry):
    state, *_ = run_generate(registry)
    *images, legend, caption = features.view_features(registry, state, 2, "mid_block.attentions.0", 1, "channel")
    assert len(images) == 6 and legend.size[0] > 0
    assert "mid_block.attentions.0" in caption and "shape (16, 14, 14)" in caption


def test_a_switched_off_attention_site_still_has_maps_to_compare(registry):
    """Found by the load test: B with a site off had no maps there, so viewing that block failed."""
    site = "mid_block.attentions.0"
    state, *_ = run_generate(registry, attention_off=[site])
    for block in (site, f"{site}.update"):
        *images, legend, caption = features.view_features(registry, state, 2, block, 0, "block")
        assert caption.count(f"`{block}`") == 2  # A and B
    assert "values in [0, 0]" in caption.split("**B**")[1]  # B's update: the site adds nothing


def test_the_open_blocks_maps_follow_every_run_and_clear_without_one(registry):
    """Found by hand: after an ablation change, B's panels kept showing the B of the run before."""
    block, step = "mid_block.attentions.0", 4
    state, *_ = run_generate(registry)
    *before, _, caption_before = features.features_after_run(registry, state, step, block, 0, "block")
    state, *_ = runs.rerun_b(registry, "tiny", checks.SAME_AS_A, 0, 0, 1, 1, 1, [], False, state, step, progress=NoProgress())
    *after, _, caption_after = features.features_after_run(registry, state, step, block, 0, "block")
    pixels = [[np.asarray(image) for image in images] for images in (before, after)]
    assert all((old == new).all() for old, new in zip(pixels[0][:3], pixels[1][:3]))  # A is the same run
    assert not all((old == new).all() for old, new in zip(pixels[0][3:], pixels[1][3:]))  # B is the new one
    assert caption_before.split("**B**")[0] == caption_after.split("**B**")[0]
    *cleared, caption = features.features_after_run(registry, state, step, None, 0, "block")
    assert cleared == [None] * 7 and "Pick a block" in caption
    # B set up before the page's own run ended follows no run: nothing to draw, and no "no run yet" error
    assert all(output == gr.skip() for output in features.features_after_run(registry, None, 0, block, 0, "block"))
    assert len(features.features_after_run(registry, state, step, block, 0, "block")) == features.FEATURE_OUTPUTS


def test_maps_that_hold_nan_show_as_a_sentence_not_as_pictures(registry, monkeypatch):
    state, *_ = run_generate(registry, skips=(0, 1))
    real_features_at = features.features_at

    def b_overflows(model, trajectory, *args):
        features = real_features_at(model, trajectory, *args)
        return {name: f * float("nan") for name, f in features.items()} if trajectory is state["b"] else features

    monkeypatch.setattr(features, "features_at", b_overflows)
    *images, legend, caption = features.view_features(registry, state, 2, "mid_block.attentions.0", 0, "block")
    assert all(image.size[0] > 0 for image in images[:3]) and images[3:] == [None] * 3
    assert "**B** · no maps to show: its feature maps at this step hold NaN" in caption


def test_an_intact_b_shows_a_s_maps_without_a_second_forward(registry, monkeypatch):
    state, *_ = run_generate(registry)
    calls = []
    real_features_at = features.features_at
    monkeypatch.setattr(features, "features_at", lambda *args: calls.append(args[1]) or real_features_at(*args))
    *images, legend, caption = features.view_features(registry, state, 2, "mid_block.attentions.0", 0, "block")
    assert calls == [state["a"]]
    assert [np.asarray(image).tolist() for image in images[:3]] == [np.asarray(image).tolist() for image in images[3:]]


def test_a_nan_in_another_block_matters_only_to_the_global_colour_range(registry, monkeypatch):
    state, *_ = run_generate(registry, skips=(0, 1))
    real_features_at = features.features_at
    shown, elsewhere = "mid_block.attentions.0", "mid_block.resnets.0"

    def b_overflows_elsewhere(model, trajectory, *args):
        features = real_features_at(model, trajectory, *args)
        return {name: f * float("nan") if name == elsewhere and trajectory is state["b"] else f for name, f in features.items()}

    monkeypatch.setattr(features, "features_at", b_overflows_elsewhere)
    *images, legend, caption = features.view_features(registry, state, 2, shown, 0, "block")
    assert all(image is not None for image in images) and "no maps to show" not in caption
    *images, legend, caption = features.view_features(registry, state, 2, shown, 0, "global")
    assert images[:3] != [None] * 3 and images[3:] == [None] * 3
    assert "**B** · no maps to show: its feature maps at this step hold NaN" in caption


@pytest.fixture(scope="module")
def deeper_registry(tiny_weights, tmp_path_factory):
    """tiny and a model with more blocks, so A has maps that B lacks."""
    root = tmp_path_factory.mktemp("deeper")
    write_pipeline(root / "tiny", PlaygroundUNet.from_pretrained(tiny_weights / "tiny", subfolder="unet"))
    write_pipeline(root / "tiny-deeper", PlaygroundUNet(**{**TINY_UNET, "layers_per_block": 2}))
    return ModelRegistry(root)


def test_a_block_that_b_lacks_shows_as_a_only_and_says_why(deeper_registry):
    state, *_ = runs.generate(deeper_registry, "tiny-deeper", "tiny", checks.DIGIT_CHOICES[1], 3, 0, "ddim", 4, 1,
                             *[1] * checks.MAX_SKIP_SLIDERS, [], False, None, progress=NoProgress())
    block = "down_blocks.0.resnets.1"
    assert block in deeper_registry.get("tiny-deeper").unet.feature_names
    assert block not in deeper_registry.get("tiny").unet.feature_names
    *images, legend, caption = features.view_features(deeper_registry, state, 2, block, 0, "block")
    assert all(image.size[0] > 0 for image in images[:3]) and images[3:] == [None] * 3
    assert f"`{block}`" in caption.split("**B**")[0] and f"`tiny` has no block `{block}`" in caption


def test_block_choices_cover_every_captured_map_with_group_and_resolution(registry):
    choices = features.block_choices(registry, "tiny")
    names = [value for _, value in choices]
    assert names == list(registry.get("tiny").unet.feature_names)
    assert any(label.startswith("skip · 28×28") for label, _ in choices)


def test_numbers_give_two_labelled_figures(registry):
    state, *_ = run_generate(registry)
    eps_figure, spectrum_figure = numbers.compute_numbers(registry, state, 1, progress=NoProgress())
    assert eps_figure.axes[0].get_xlabel().startswith("timestep") and len(eps_figure.axes[0].lines) == 2
    assert spectrum_figure.axes[0].get_ylabel() == "share of power"


def test_the_numbers_warn_when_a_run_has_left_the_data_range_and_only_then(registry):
    import dataclasses

    state, *_ = run_generate(registry)
    table = numbers.verdicts(registry, state)
    assert "far outside the data range" not in table  # an ordinary run: no warning
    x_t = state["b"].x_t.clone()
    x_t[-1, 0, 0, 0, 0] = -530.0  # one pixel of one final image, as a diverged ablation leaves them
    diverged = dict(state, b=dataclasses.replace(state["b"], x_t=x_t))
    table = numbers.verdicts(registry, diverged)
    assert "**B's final images reach |x| = 530**" in table and "A's final images" not in table
    assert "| B |" in table  # the classifier's row is still shown, with the warning beside it


def test_the_spectra_show_a_and_b_in_panels_of_their_own_and_a_skip_switched_off_has_no_power(registry):
    top = registry.get("tiny").unet.skip_resolutions[0]
    state, *_ = run_generate(registry, skips=(0, 1))
    _, spectrum_figure = numbers.compute_numbers(registry, state, 1, progress=NoProgress())
    panel_a, panel_b = spectrum_figure.axes
    assert panel_a.get_title() == "A: tiny, intact" and panel_b.get_title().startswith(f"B: tiny, skips at {top}×{top} × 0")

    def power(panel, label):
        (line,) = [line for line in panel.lines if line.get_label() == label]
        values = line.get_ydata()
        return values[np.isfinite(values)]

    assert (power(panel_a, f"skip {top}×{top}") > 0).all() and (power(panel_b, f"backbone {top}×{top}") > 0).all()
    assert not (power(panel_b, f"skip {top}×{top}") > 0).any()


def test_gif_export_writes_a_gif_of_every_step(registry):
    state, *_ = run_generate(registry)
    path = share.export_gif(state, "x̂0 (predicted clean image)")
    with open(path, "rb") as f:
        assert f.read(6) in (b"GIF87a", b"GIF89a")


@pytest.mark.parametrize("bad", [
    dict(steps=0), dict(steps=1001), dict(batch=17), dict(batch=2.5), dict(seed=-1), dict(seed=float("nan")),
])
def test_bad_generate_inputs_raise_a_plain_gr_error(registry, bad):
    args = dict(steps=4, batch=1, seed=0) | bad
    with pytest.raises(gr.Error):
        checks.user_errors(run_generate)(registry, **args)


@pytest.mark.parametrize("handler, args", [
    (functools.partial(features.sample_clicked, None), (None, {"index": 0})),
    (share.export_gif, (None, "x̂0 (predicted clean image)")),
])
def test_views_before_any_run_say_there_is_none_yet(handler, args):
    with pytest.raises(gr.Error, match="No run yet"):
        checks.user_errors(handler)(*args)


def test_before_the_first_run_an_ablation_change_waits_for_it_without_an_error(registry):
    """A visitor may set B up while the page's own run is on its way: each control they set must not raise a
    "no run yet" toast (and an error badge on every picture), as it did."""
    skips_28_off = [0] + [1] * (checks.MAX_SKIP_SLIDERS - 1)
    outputs = checks.user_errors(runs.rerun_b)(registry, "tiny", checks.SAME_AS_A, *skips_28_off, [SITE], False, None, 50,
                                           progress=NoProgress())
    assert len(outputs) == runs.B_OUTPUTS
    assert all(isinstance(output, type(gr.skip())) for output in outputs)
    with pytest.raises(gr.Error, match="skip"):  # a bad value is still refused at once
        checks.user_errors(runs.rerun_b)(registry, "tiny", checks.SAME_AS_A, 7, *skips_28_off[1:], [], False, None, 50,
                                     progress=NoProgress())


def test_unknown_model_and_site_are_refused_by_name(registry):
    with pytest.raises(gr.Error, match="unknown model"):
        checks.user_errors(runs.generate)(registry, "../../etc", checks.SAME_AS_A, checks.DIGIT_CHOICES[0], 3, 0, "ddim", 4, 1,
                                      1, 1, 1, 1, 1, [], False, None, progress=NoProgress())
    with pytest.raises(gr.Error, match="valid attention sites"):
        checks.user_errors(run_generate)(registry, attention_off=["no.such.site"])


def test_a_broken_model_is_reported_and_the_others_still_load(tmp_path, tiny_weights):
    import shutil
    shutil.copytree(tiny_weights, tmp_path / "w")
    (tmp_path / "w" / "tiny-noskip" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    registry = ModelRegistry(tmp_path / "w")
    errors = registry.load_all()
    assert list(errors) == ["tiny-noskip"] and registry.available == ["tiny"]
    assert "could not be loaded" in switches.describe_models(registry)


# ---- the real server, through gradio_client


@pytest.fixture(scope="module")
def served(tiny_weights):
    demo = page.build_demo(tiny_weights)
    _, url, _ = page.serve(demo, server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    yield url
    demo.close()


def test_the_served_queue_looks_for_events_every_few_milliseconds(tiny_weights):
    """Gradio's queue looks every 1 ms, which took 11-13 % from generate and the ablation change (page.QUEUE_POLL_S)."""
    import inspect

    import gradio.queueing

    # the setting serve() overrides is still the one the queue's loop reads (a renamed one would be a dead attribute)
    assert "await asyncio.sleep(self.sleep_when_free)" in inspect.getsource(gradio.queueing.Queue.start_processing)
    demo = page.build_demo(tiny_weights)
    page.serve(demo, server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        assert demo._queue.sleep_when_free == page.QUEUE_POLL_S > 0.001
    finally:
        demo.close()


def test_every_event_is_listed_in_the_api(served):
    endpoints = Client(served, verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/generate", "/ablate", "/features", "/numbers", "/gif"} <= set(endpoints)
    assert "/scrub" not in endpoints  # a run's frames come with it: the page scrubs without the server


def test_client_generates_ablates_and_views_features(served):
    client = Client(served, verbose=False)
    frames, _, verdicts = client.predict("tiny", checks.SAME_AS_A, "3", 3, 0, "ddim", 6, 2, 1, 1, 1, 1, 1, [], False,
                                         api_name="/generate")
    assert "**A** = `tiny` intact · **B** = `tiny` with nothing switched off" in verdicts
    # every step's pictures come with the run, as PNG sheets the page draws from
    assert frames["steps"] == 6 and frames["step"] == 6 and len(frames["timesteps"]) == 6
    assert frames["sheets"]["a"]["x0"].startswith("data:image/png;base64,")
    ablated = client.predict("tiny", checks.SAME_AS_A, 0, 1, 1, 1, 1, [], False, 2, api_name="/ablate")
    assert "skips at 28×28 × 0" in ablated[-1]
    features = client.predict(2, "mid_block.attentions.0", 0, "global", api_name="/features")
    assert "mid_block.attentions.0" in features[-1]
    switched = client.predict("tiny", "tiny-noskip", 1, 1, 1, 1, 1, [], False, 2, api_name="/ablate")
    assert "**B** = `tiny-noskip` with nothing switched off" in switched[-1]


def test_network_events_draw_their_figures_on_the_network_thread(served, monkeypatch):
    """Left to Gradio's postprocessing, a figure is drawn after the handler returns, when the idle-time guesses start
    and compete with matplotlib for the GIL (delivery.drawn)."""
    from matplotlib.figure import Figure

    threads, real_drawn = [], delivery.drawn

    def recording_drawn(value):
        if isinstance(value, Figure):
            threads.append(threading.current_thread().name)
        return real_drawn(value)

    monkeypatch.setattr(delivery, "drawn", recording_drawn)
    client = Client(served, verbose=False)
    client.predict("tiny", checks.SAME_AS_A, "3", 3, 0, "ddim", 4, 1, 0, 1, 1, 1, 1, [], False, api_name="/generate")
    eps_error, spectra = client.predict(2, api_name="/numbers")
    assert threads == ["networks_0", "networks_0"]
    assert eps_error["type"] == "matplotlib" and eps_error["plot"].startswith("data:image/png;base64,")


def test_a_drawn_figure_is_a_png_for_gr_plot_and_is_closed():
    import matplotlib.pyplot as plt

    figure = plt.figure()
    plot = delivery.drawn(figure)
    assert plot.type == "matplotlib" and plot.plot.startswith("data:image/png;base64,")
    assert not plt.fignum_exists(figure.number)
    assert delivery.drawn("a table") == "a table"


def test_an_ablation_change_before_any_generate_is_no_error(served):
    outputs = Client(served, verbose=False).predict("tiny", checks.SAME_AS_A, 0, 1, 1, 1, 1, [], False, 8, api_name="/ablate")
    assert all(output["__type__"] == "update" and len(output.get("props", {})) <= 1 for output in outputs)  # nothing ran yet


def test_sessions_do_not_share_state(served):
    first, second = Client(served, verbose=False), Client(served, verbose=False)
    first.predict("tiny", checks.SAME_AS_A, "3", 3, 0, "ddim", 4, 1, 1, 1, 1, 1, 1, [], False, api_name="/generate")
    with pytest.raises(AppError, match="No run yet"):
        second.predict(1, "mid_block.attentions.0", 0, "block", api_name="/features")


def test_bad_input_is_an_error_and_the_server_still_answers(served):
    client = Client(served, verbose=False)
    with pytest.raises(AppError):
        client.predict("tiny", checks.SAME_AS_A, "3", 3, 0, "ddim", 5000, 1, 1, 1, 1, 1, 1, [], False, api_name="/generate")
    with pytest.raises(AppError):
        client.predict("tiny", checks.SAME_AS_A, "3", 3, 0, "euler", 4, 1, 1, 1, 1, 1, 1, [], False, api_name="/generate")
    result = client.predict("tiny", checks.SAME_AS_A, "3", 3, 0, "ddim", 3, 1, 1, 1, 1, 1, 1, [], False, api_name="/generate")
    assert "Mean |A − B|" in result[-1]


def test_a_view_sent_before_a_shorter_run_shows_that_run_instead_of_an_error(served):
    """The browser sends the values its sliders hold. A feature view or an ablation change asked for at step 50 of
    a 50-step run (sample 3 of 4) can reach the server after a Generate of 8 steps and 1 sample: it shows the new
    run's end, where that Generate put the sliders, not Gradio's "Value 50 is greater than maximum value 8"."""
    client = Client(served, verbose=False)
    client.predict("tiny", checks.SAME_AS_A, "3", 3, 0, "ddim", 8, 1, 1, 1, 1, 1, 1, [], False, api_name="/generate")
    features = client.predict(50, "mid_block.attentions.0", 3, "global", api_name="/features")
    assert "`mid_block.attentions.0`" in features[-1] and "t = 0 ·" in features[-1]  # the last of 8 DDIM steps
    ablated = client.predict("tiny", checks.SAME_AS_A, 0, 1, 1, 1, 1, [], False, 50, api_name="/ablate")
    assert ablated[0]["step"] == 8 and "skips at 28×28 × 0" in ablated[-1]
    # a value no run can have is still refused, by name
    with pytest.raises(AppError, match="step must be"):
        client.predict(5000, "mid_block.attentions.0", 0, "global", api_name="/features")
    with pytest.raises(AppError, match="sample must be"):
        client.predict(1, "mid_block.attentions.0", 99, "global", api_name="/features")


def test_every_event_that_reads_the_step_or_sample_slider_leaves_its_range_to_the_handlers(tiny_weights):
    demo = page.build_demo(tiny_weights)
    run_sliders = {block for block in demo.blocks.values() if getattr(block, "elem_id", None) in ("step", "sample-index")}
    readers = [fn for fn in demo.fns.values() if run_sliders & set(fn.inputs)]
    assert len(readers) > 10  # views, scrub, ablation changes, B's options, numbers, the digit decision
    assert [fn.name for fn in readers if fn.preprocess] == []


def test_every_element_id_on_the_page_is_unique(tiny_weights):
    demo = page.build_demo(tiny_weights)
    ids = [block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)]
    assert len(ids) > 30 and sorted(i for i in set(ids) if ids.count(i) > 1) == []


# ---- B over time, the "when?" tools, sharing and export


def option_values(t_from=0, t_to=999, lie_mode=options.LIE_MODES[0], lie_value=0, b=(), s=(), h_on=False, probe_t=500, component=0,
                  strength=2.0, h_from=0, h_to=999):
    def padded(gains):
        return list(gains) + [1.0] * (checks.MAX_SKIP_SLIDERS - len(gains))
    return [t_from, t_to, lie_mode, lie_value, *padded(b), *padded(s), h_on, probe_t, component, strength, h_from, h_to]


def set_options(registry, state, **options):
    return runs.set_b_options(registry, "tiny", checks.SAME_AS_A, *option_values(**options), state, 2, progress=NoProgress())


def test_a_t_window_keeps_b_equal_to_a_before_the_window_and_changes_it_inside(registry):
    state, *_ = run_generate(registry, skips=(0, 0), steps=8)
    windowed, *pictures = set_options(registry, state, t_from=0, t_to=400)
    a, b = windowed["a"], windowed["b"]
    before = a.timesteps > 400
    assert before.any() and (~before).any()
    assert torch.equal(a.x0[before], b.x0[before])
    assert not torch.equal(a.final, b.final)
    assert "only for 0 ≤ t ≤ 400" in pictures[-1]


def test_options_set_before_generate_apply_to_the_next_run(registry):
    stored, *skipped = set_options(registry, None, lie_mode=options.LIE_MODES[1], lie_value=300)
    assert stored["options_b"]["lie"].offset == 300 and "a" not in stored
    state, *outputs = run_generate(registry, state=stored)
    assert state["b"].settings.timestep_lie.offset == 300 and not torch.equal(state["a"].final, state["b"].final)
    assert "told t' = t +300" in outputs[-1]


def test_the_freeu_preset_goes_to_the_two_deepest_stages_and_changes_b(registry):
    values = options.freeu_preset_values(registry, "tiny", checks.SAME_AS_A)
    assert values[:2] == (1.4, 1.2) and values[5:7] == (0.2, 0.9)  # tiny's stages: 28 px, then 14 px (the deepest)
    state, *_ = run_generate(registry)
    freeu, *_ = set_options(registry, state, b=values[:2], s=values[5:7])
    assert dict(freeu["ablation_b"].backbone_scale) == {28: 1.4, 14: 1.2}
    assert not torch.equal(freeu["b"].final, state["b"].final)


def test_an_h_space_edit_changes_b_and_its_probe_is_cached(registry):
    state, *_ = run_generate(registry, steps=4)
    options.probe.cache_clear()
    edited, *_ = set_options(registry, state, h_on=True, component=1, strength=5.0)
    again, *_ = set_options(registry, state, h_on=True, component=1, strength=-5.0)
    assert options.probe.cache_info().hits == 1
    assert not torch.equal(edited["b"].final, state["a"].final) and not torch.equal(edited["b"].final, again["b"].final)


def test_the_sweep_plots_one_point_per_window_and_tabulates_them(registry):
    state, *_ = run_generate(registry, skips=(0, 0), steps=6)
    figure, table = when.sweep_ablation(registry, state, 3, progress=NoProgress())
    assert len(figure.axes[0].lines[0].get_xdata()) == 3
    assert table.count("\n| ") == 3 and "Applied at every step" in table


def test_the_sweep_needs_an_ablation_of_model_a(registry):
    state, *_ = run_generate(registry)
    with pytest.raises(gr.Error, match="Set an ablation for B first"):
        checks.user_errors(when.sweep_ablation)(registry, state, 3, progress=NoProgress())
    other, *_ = run_generate(registry, model_b="tiny-noskip")
    with pytest.raises(gr.Error, match="set Network B to 'A with the ablation' first"):
        checks.user_errors(when.sweep_ablation)(registry, other, 3, progress=NoProgress())


def test_digit_decision_gives_curves_for_a_and_b_and_a_step_per_sample(registry):
    state, *_ = run_generate(registry, skips=(0, 1), batch=3)
    figure, probability_a, probability_b, table = when.digit_decides(registry, state, 2)
    assert [line.get_label() for line in figure.axes[0].lines] == ["A: tiny", "B: tiny"]
    assert probability_a.axes[0].get_title().startswith("A: sample 2")
    assert table.count("\n| ") == 4 and "| B decided at t |" in table


def test_the_setup_json_round_trips_to_the_same_pixels(registry):
    state, *_ = run_generate(registry, skips=(0, 1), steps=5, batch=2, digit="7")  # a setup holds one digit, not the cycle
    state, *_ = set_options(registry, state, t_from=100, t_to=700, lie_mode=options.LIE_MODES[2], lie_value=50)
    text = share.refresh_setup(registry, state)
    controls = share.apply_setup(registry, text)
    assert len(controls) == share.SETUP_OUTPUTS
    *values, session, note = controls
    assert session == {"options_b": state["options_b"]}  # a session of options alone, until the Generate that follows
    model_a, model_b, digit, *rest = values
    replay, *_ = runs.generate(registry, model_a, model_b, digit, *rest[:5],
                              *[slider.value for slider in rest[5:10]], rest[10].value, rest[11].value, session, progress=NoProgress())
    assert torch.equal(replay["b"].final, state["b"].final)


def test_bad_setup_json_names_the_field(registry):
    for text, field in [("{", "not valid JSON"), ('{"steps": "many"}', "steps"), ('{"colour": 1}', "unknown setup field"),
                        ('{"model": "nope"}', "setup model"), ('{"model": "tiny", "batch": 99}', "setup batch")]:
        with pytest.raises(gr.Error, match=field):
            checks.user_errors(share.apply_setup)(registry, text)


def test_a_lesson_sets_the_controls_and_explains_itself(registry):
    *controls, state, note = share.apply_lesson(registry, "what skips do", "tiny")
    skip_sliders = controls[8:8 + checks.MAX_SKIP_SLIDERS]
    assert [s.value for s in skip_sliders[:2]] == [0.0, 0.0] and set(state) == {"options_b"}
    assert "What skips do" in note and "sweep" in note


class FakeRequest:
    def __init__(self, **query):
        self.query_params = query


def test_query_parameters_open_a_lesson_or_a_setup_and_nothing_else_changes_without(registry):
    assert all(v == gr.skip() for v in share.open_from_query(registry, "tiny", FakeRequest()))
    lesson = share.open_from_query(registry, "tiny", FakeRequest(lesson="time"))
    assert lesson[9 + checks.MAX_SKIP_SLIDERS].value is True  # the time-embedding switch
    setup = share.open_from_query(registry, "tiny", FakeRequest(setup='{"model": "tiny", "seed": 7, "steps": 3}'))
    assert setup[4] == 7 and setup[6] == 3
    with pytest.raises(gr.Error, match="lesson"):
        checks.user_errors(share.open_from_query)(registry, "tiny", FakeRequest(lesson="../etc"))


def test_a_setup_applied_is_generated_with_the_options_it_set_for_b(registry):
    *_, session, _ = share.apply_setup(registry, '{"model": "tiny", "steps": 3, "batch": 1, "window": [0, 400]}')
    state, *_ = runs.generate(registry, "tiny", checks.SAME_AS_A, "3", 2, 0, "ddim", 3, 1, 0, 1, 1, 1, 1, [], False,
                             session, progress=NoProgress())
    assert len(state["a"]) == 3
    assert state["b"].settings.ablation_window == sampling.Window(0, 400)


def test_exports_write_safetensors_and_a_zip_of_png_frames(registry):
    import zipfile
    from safetensors import safe_open
    state, *_ = run_generate(registry, steps=4, batch=2)
    path = share.export_tensors(state, "B")
    assert os.path.dirname(path) == str(exports.export_directory())
    with safe_open(path, "pt") as f:
        assert f.get_tensor("x0").shape == (4, 2, 1, 28, 28) and f.metadata()["steps"] == "4"
    with zipfile.ZipFile(share.export_frames(state, "A")) as archive:
        names = archive.namelist()
        assert len(names) == 5 and archive.read(names[0])[:4] == b"\x89PNG"


def test_a_block_opens_by_its_map_name_and_an_unknown_one_is_refused(registry):
    assert features.block_clicked(registry, "tiny", {"name": "mid_block.resnets.1"}) == "mid_block.resnets.1"
    with pytest.raises(gr.Error, match="block must be one of the model's feature maps"):
        checks.user_errors(features.block_clicked)(registry, "tiny", {"name": "mid_block.resnets.9"})


def test_the_new_events_are_listed_in_the_api(served):
    endpoints = Client(served, verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/b_options", "/freeu_preset", "/sweep", "/digit_decides", "/apply_setup", "/lesson", "/export_tensors",
            "/export_frames", "/lesson_question", "/options_panel"} <= set(endpoints)


def test_client_windows_b_sweeps_reads_digits_shares_and_exports(served):
    client = Client(served, verbose=False)
    client.predict("tiny", checks.SAME_AS_A, "3", 3, 0, "ddim", 6, 2, 0, 0, 1, 1, 1, [], False, api_name="/generate")
    windowed = client.predict("tiny", checks.SAME_AS_A, *option_values(t_from=0, t_to=500), 6, api_name="/b_options")
    assert "only for 0 ≤ t ≤ 500" in windowed[-1]
    figure, table = client.predict(3, api_name="/sweep")
    assert figure["type"] == "matplotlib" and table.count("\n| ") == 3
    *figures, decided = client.predict(1, api_name="/digit_decides")
    assert "A decided at t" in decided
    with open(client.predict("A", api_name="/export_tensors"), "rb") as f:
        assert f.read(8)  # a safetensors header length
    controls = client.predict("what attention does", "tiny", api_name="/lesson")  # the browser chains a Generate; a client calls it
    assert "What attention does" in controls[-1]
    with pytest.raises(AppError, match="setup"):
        client.predict('{"steps": "many"}', api_name="/apply_setup")


def test_a_setup_brings_what_follows_its_model_the_trained_note_and_the_block_lists(registry):
    *_, note, dropdown, _, _ = share.apply_setup(registry, '{"model": "tiny-noskip"}')
    assert "*trained* with skips at 28×28 × 0" in note
    assert [choice[1] for choice in dropdown.choices] == [value for _, value in features.block_choices(registry, "tiny-noskip")]
    assert dropdown.value == features.OPENING_BLOCK  # the page's first maps, as a plain page opens on
    *_, note, _, _, _ = share.apply_setup(registry, '{"model": "tiny"}')
    assert note == ""  # the note of a model trained without skips does not stay once another is set up


def test_the_controls_are_built_for_the_default_model_and_a_page_opens_in_one_event_before_its_run(tiny_weights):
    demo = page.build_demo(tiny_weights, prefetch=False)
    by_id = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    resolutions = ModelRegistry(tiny_weights).get(demo_default_model(demo)).unet.skip_resolutions
    for knob, prefix in (("skips joining", "skip"), ("FreeU b", "freeu-b"), ("FreeU s", "freeu-s")):
        sliders = [by_id[f"{prefix}-{i}"] for i in range(checks.MAX_SKIP_SLIDERS)]
        assert [(s.visible, s.label) for s in sliders[:len(resolutions)]] == [(True, f"{knob} at {r}×{r}") for r in resolutions]
        assert not any(s.visible for s in sliders[len(resolutions):])
    assert by_id["block"].value == features.OPENING_BLOCK
    loads = [fn for fn in demo.fns.values() if (demo._id, "load") in fn.targets]
    after_load = [fn for fn in demo.fns.values() if fn.trigger_after in {load._id for load in loads}]
    assert len(loads) == 1 and [handler_of(fn) for fn in after_load] == [sessions.supersede_runs]
    # then the run itself: the old one (none yet) is stopped first, as for every run
    after_supersede = [fn for fn in demo.fns.values() if fn.trigger_after == after_load[0]._id]
    assert [handler_of(fn) for fn in after_supersede] == [runs.generate]


def test_old_exports_of_every_kind_are_pruned(registry):
    import time
    state, *_ = run_generate(registry, steps=2, batch=1)
    paths = [share.export_tensors(state, "A"), share.export_frames(state, "B"), share.export_gif(state, "x_t (noisy input)")]
    old = time.time() - exports.EXPORT_KEEP_SECONDS - 1
    for path in paths:
        os.utime(path, (old, old))
    exports.prune_exports()
    assert not any(os.path.exists(path) for path in paths)


def test_the_setup_json_gives_the_clis_the_same_b_bit_for_bit(registry):
    """Window, lie, FreeU and h-space edit included: the library path the CLIs take (setup.sample_settings) is B's."""
    from playground.sampling import sample
    from playground.setup import PlaygroundSetup
    state, *_ = run_generate(registry, skips=(0, 1), steps=4, batch=2, digit="5")
    state, *_ = set_options(registry, state, t_from=100, t_to=800, lie_mode=options.LIE_MODES[1], lie_value=200, b=(1.4, 1.2),
                            s=(0.2, 0.9), h_on=True, component=1, strength=3.0, h_to=600)
    model = registry.get("tiny")
    setup = PlaygroundSetup.from_json(share.current_setup(registry, state))
    assert torch.equal(sample(model, setup.sample_settings(model)).final, state["b"].final)


def test_a_picture_two_sessions_are_shown_at_once_is_never_served_half_written():
    """Gradio names a returned picture by its content hash: a rewrite of the file must never be visible."""
    from PIL import Image

    image_output = gr.Image(type="pil", format=delivery.LOSSLESS)
    picture = Image.fromarray(torch.randint(0, 256, (280, 280, 3), generator=torch.Generator().manual_seed(0),
                                            dtype=torch.uint8).numpy())
    path = image_output.postprocess(picture).path
    writes_done = threading.Event()
    broken_reads, reads, paths_served = [], 0, set()

    def show_again():
        try:
            for _ in range(300):
                paths_served.add(image_output.postprocess(picture).path)
        finally:
            writes_done.set()

    writer = threading.Thread(target=show_again)
    writer.start()
    while not writes_done.is_set():
        try:
            with Image.open(path) as served:
                served.load()
        except Exception as error:  # PIL raises several kinds for an empty or truncated file
            broken_reads.append(error)
        reads += 1
    writer.join()
    assert paths_served == {path}
    assert reads > 10 and not broken_reads, f"{len(broken_reads)} of {reads} reads broken: {broken_reads[:1]}"


# ---- one OpenMP team in the process: the network thread's


def _threads_python_did_not_start():
    """OS threads of this process that are not Python threads: libgomp's workers, one per extra thread of a team."""
    return set(map(int, os.listdir("/proc/self/task"))) - {thread.native_id for thread in threading.enumerate()}


def _forms_an_openmp_team(handler, *args):
    """Call handler(*args) on a fresh thread whose torch count is 2, as a Gradio worker's may be; did a team form?

    Looked at before the thread ends: libgomp lets a team's workers go with the thread that led it."""

    def call():
        use_threads(2)
        before = _threads_python_did_not_start()
        handler(*args)
        return bool(_threads_python_did_not_start() - before)

    with ThreadPoolExecutor(max_workers=1) as fresh:
        return fresh.submit(call).result()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads the process's threads from Linux's /proc")
def test_events_off_the_network_thread_form_no_openmp_team(registry, tiny_weights):
    """A second thread with an OpenMP team makes libgomp count more threads than cores, and from then on every
    parallel operation of every network waits for its workers to wake: a batch-16 GIF export, run on a Gradio
    thread, took the flagship's guided step on the network thread from 16-24 ms to 36-38 ms, for the server's
    lifetime. The events that do not queue for the network thread (a scrub, the exports) use one torch thread."""
    state, *_ = run_generate(registry, steps=6, batch=checks.MAX_BATCH)
    assert _forms_an_openmp_team(share.export_gif, state, "x̂0 (predicted clean image)")  # the check sees a team

    events = {fn.api_name: fn.fn for fn in page.build_demo(tiny_weights).fns.values()}
    inputs = {"gif": (state, "x̂0 (predicted clean image)"), "export_frames": (state, "A"), "export_tensors": (state, "B")}
    assert {name: _forms_an_openmp_team(events[name], *args) for name, args in inputs.items()} == dict.fromkeys(inputs, False)


def test_the_probes_read_a_run_where_a_model_has_them_and_say_so_where_not(tmp_path, tiny_weights):
    import shutil

    from explainer import probing
    from playground.data import load_mnist
    from playground.probes import train_probes
    from helpers import MNIST_SLICE

    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    registry = ModelRegistry(weights)
    state, *_ = run_generate(registry, steps=3, batch=2)
    with pytest.raises(gr.Error, match="probes: `tiny` has no linear probes"):
        checks.user_errors(probing.read_probes)(registry, state, 0, progress=NoProgress())

    images, labels = load_mnist(MNIST_SLICE, "test")
    train_probes(registry.get("tiny"), (images[:48], labels[:48]), (images[48:], labels[48:]), timesteps=(0, 999),
                 batch_size=32).save(weights / "tiny" / "probes")
    registry = ModelRegistry(weights)
    ablated, *_ = run_generate(registry, skips=(0, 1), steps=3, batch=2)
    accuracy, reading, table = probing.read_probes(registry, ablated, 1, progress=NoProgress())
    assert accuracy.axes and len(reading.axes) >= 2
    assert "Sample 1." in table and "| A reads, last step | B reads, last step |" in table


def test_a_clicked_pixel_shows_its_filter_for_a_and_b_and_a_pixel_off_the_image_is_refused(registry):
    from explainer import filtering

    state, *_ = run_generate(registry, skips=(0, 1), steps=4, batch=2)
    filter_a, filter_b, note = filtering.filter_at_pixel(registry, state, {"index": 1, "step": 4, "row": 14, "col": 9})
    assert filter_a.axes and filter_b.axes
    assert "pixel (14, 9), step 4 (t = " in note and "B **" in note  # the finished sample: the last step's filter
    with pytest.raises(gr.Error, match="pixel row must be from 0 to 27"):
        checks.user_errors(filtering.filter_at_pixel)(registry, state, {"index": 0, "step": 1, "row": 28, "col": 0})


def test_patching_a_s_block_into_b_restores_part_of_a_and_the_map_covers_every_level(registry):
    from explainer import patches

    intact, *_ = run_generate(registry, steps=4, batch=2)
    with pytest.raises(gr.Error, match="patch: B is A"):
        checks.user_errors(patches.patch_one)(registry, intact, "mid_block.resnets.1", 0, 999, progress=NoProgress())
    state, *_ = run_generate(registry, skips=(0, 1), steps=4, batch=2)
    blocks = patches.patch_blocks(registry, "tiny")
    picture, note = patches.patch_one(registry, state, blocks[-1], 0, 999, progress=NoProgress())
    # the last decoder map lies downstream of the cut skip: patched at every step, B is A again
    assert picture.size[0] > 0 and "restores **100%**" in note
    with pytest.raises(gr.Error, match="patched block must be one of"):
        checks.user_errors(patches.patch_one)(registry, state, "conv_in.nope", 0, 999, progress=NoProgress())
    figure, map_note = patches.map_patches(registry, state, 2, progress=NoProgress())
    assert figure.axes and "The most A's computation brings back" in map_note


def test_a_drawn_digit_is_classified_by_the_generator_and_drawn_again_from_its_inverted_noise(registry):
    from explainer import own_digit

    canvas = np.zeros((140, 140, 4), dtype=np.uint8)
    canvas[30:110, 60:75, 3] = 255  # a "1" drawn on a transparent sketchpad layer
    switches_off = [0, 1, 1, 1, 1, [], False]
    figure, note = own_digit.classify_drawing(registry, {"composite": canvas}, "tiny", checks.SAME_AS_A, *switches_off)
    assert figure.axes and "A reads it as" in note and "B** (A with its switches) reads it as" in note
    picture, note = own_digit.invert_drawing(registry, {"composite": canvas}, "tiny", checks.SAME_AS_A, 1, 10, *switches_off,
                                             progress=NoProgress())
    assert picture.size[0] > 2 * picture.size[1] and "Mean |again − yours|: A" in note
    with pytest.raises(gr.Error, match="drawing: it is empty"):
        checks.user_errors(own_digit.classify_drawing)(registry, {"composite": None}, "tiny", checks.SAME_AS_A, *switches_off)
