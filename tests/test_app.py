"""The app: handlers called directly, then the real server driven through gradio_client."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import pytest  # noqa: E402
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

import app  # noqa: E402
from playground.registry import ModelRegistry  # noqa: E402

from tiny_weights import make_tiny_weights  # noqa: E402

SITE = "down_blocks.1.attentions.0"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    return make_tiny_weights(tmp_path_factory.mktemp("weights"))


class NoProgress:
    def __call__(self, *args, **kwargs):
        pass


@pytest.fixture(scope="module")
def registry(tiny_weights):
    return ModelRegistry(tiny_weights)


def run_generate(registry, model_b=app.SAME_AS_A, skips=(1, 1), attention_off=(), time_off=False, steps=8, batch=2, seed=0):
    skip_values = list(skips) + [1] * (app.MAX_SKIP_SLIDERS - len(skips))
    return app.generate(registry, "tiny", model_b, app.DIGIT_CHOICES[1], 3, seed, "ddim", steps, batch,
                        *skip_values, list(attention_off), time_off, None, progress=NoProgress())


def test_generate_keeps_both_trajectories_in_the_session_state(registry):
    state, *_ = run_generate(registry, steps=8, batch=2)
    assert state["a"].x0.shape == (8, 2, 1, 28, 28) and state["b"].x0.shape == (8, 2, 1, 28, 28)


def test_intact_b_equals_a_and_the_difference_row_is_blank(registry):
    state, *_ = run_generate(registry)
    assert (state["a"].final == state["b"].final).all()


def test_an_ablation_changes_b_but_not_a(registry):
    intact, *_ = run_generate(registry)
    ablated, *_ = run_generate(registry, skips=(0, 1))
    assert (intact["a"].final == ablated["a"].final).all()
    assert not (intact["b"].final == ablated["b"].final).all()


def test_scrub_renders_every_step_without_calling_the_model(registry, monkeypatch):
    state, *_ = run_generate(registry)
    def forbidden(*args, **kwargs):
        raise AssertionError("the model was called while scrubbing")
    monkeypatch.setattr(registry.get("tiny").unet, "forward", forbidden)
    for step in range(0, len(state["a"]) + 1):
        *pictures, caption = app.scrub(state, step)
        assert len(pictures) == 9 and all(p.size[0] > 0 for p in pictures)
        assert ("finished sample" in caption) == (step == len(state["a"]))


def test_rerun_b_keeps_a_and_applies_the_new_ablation(registry):
    state, *_ = run_generate(registry)
    new_state, *_ = app.rerun_b(registry, "tiny", app.SAME_AS_A, 1, 1, 1, 1, 1, [SITE], False, state, 3, progress=NoProgress())
    assert new_state["a"] is state["a"]
    assert new_state["ablation_b"].attention_off == {SITE}
    assert not (new_state["b"].final == state["b"].final).all()


def test_b_can_be_a_model_trained_without_skips(registry):
    state, *_ = run_generate(registry, model_b="tiny-noskip")
    assert state["model_b"] == "tiny-noskip"
    assert not state["b"].settings.ablation.skip_scale  # its training ablation applies inside the model


def test_feature_view_shows_three_views_for_a_and_b_with_a_caption(registry):
    state, *_ = run_generate(registry)
    *images, legend, caption = app.view_features(registry, state, 2, "mid_block.attentions.0", 1, "channel")
    assert len(images) == 6 and legend.size[0] > 0
    assert "mid_block.attentions.0" in caption and "shape (16, 14, 14)" in caption


def test_block_choices_cover_every_captured_map_with_group_and_resolution(registry):
    choices = app.block_choices(registry, "tiny")
    names = [value for _, value in choices]
    assert names == list(registry.get("tiny").unet.feature_names)
    assert any(label.startswith("skip · 28×28") for label, _ in choices)


def test_numbers_give_two_labelled_figures(registry):
    state, *_ = run_generate(registry)
    eps_figure, spectrum_figure = app.compute_numbers(registry, state, 1, progress=NoProgress())
    assert eps_figure.axes[0].get_xlabel().startswith("timestep") and len(eps_figure.axes[0].lines) == 2
    assert spectrum_figure.axes[0].get_ylabel() == "share of power"


def test_gif_export_writes_a_gif_of_every_step(registry):
    state, *_ = run_generate(registry)
    path = app.export_gif(state, "x̂0 (predicted clean image)")
    with open(path, "rb") as f:
        assert f.read(6) in (b"GIF87a", b"GIF89a")


@pytest.mark.parametrize("bad", [
    dict(steps=0), dict(steps=1001), dict(batch=17), dict(batch=2.5), dict(seed=-1), dict(seed=float("nan")),
])
def test_bad_generate_inputs_raise_a_plain_gr_error(registry, bad):
    args = dict(steps=4, batch=1, seed=0) | bad
    with pytest.raises(gr.Error):
        app.user_errors(run_generate)(registry, **args)


@pytest.mark.parametrize("handler, args", [
    (app.scrub, (None, 3)),
    (app.export_gif, (None, "x̂0 (predicted clean image)")),
])
def test_views_before_generate_ask_the_user_to_generate_first(handler, args):
    with pytest.raises(gr.Error, match="Generate first"):
        app.user_errors(handler)(*args)


def test_unknown_model_and_site_are_refused_by_name(registry):
    with pytest.raises(gr.Error, match="unknown model"):
        app.user_errors(app.generate)(registry, "../../etc", app.SAME_AS_A, app.DIGIT_CHOICES[0], 3, 0, "ddim", 4, 1,
                                      1, 1, 1, 1, 1, [], False, None, progress=NoProgress())
    with pytest.raises(gr.Error, match="valid attention sites"):
        app.user_errors(run_generate)(registry, attention_off=["no.such.site"])


def test_a_broken_model_is_reported_and_the_others_still_load(tmp_path, tiny_weights):
    import shutil
    shutil.copytree(tiny_weights, tmp_path / "w")
    (tmp_path / "w" / "tiny-noskip" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    registry = ModelRegistry(tmp_path / "w")
    errors = registry.load_all()
    assert list(errors) == ["tiny-noskip"] and registry.available == ["tiny"]
    assert "could not be loaded" in app.describe_models(registry)


# ---- the real server, through gradio_client


@pytest.fixture(scope="module")
def served(tiny_weights):
    demo = app.build_demo(tiny_weights)
    demo.queue(default_concurrency_limit=2)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    yield url
    demo.close()


def test_every_event_is_listed_in_the_api(served):
    endpoints = Client(served, verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/generate", "/ablate", "/scrub", "/features", "/numbers", "/gif"} <= set(endpoints)


def test_client_generates_scrubs_ablates_and_views_features(served):
    client = Client(served, verbose=False)
    generated = client.predict("tiny", app.SAME_AS_A, "3", 3, 0, "ddim", 6, 2, 1, 1, 1, 1, 1, [], False, api_name="/generate")
    assert "step" not in generated[-1] or generated[-1]  # numbers markdown present
    scrubbed = client.predict(2, api_name="/scrub")
    assert "step 3 of 6" in scrubbed[-1]
    ablated = client.predict("tiny", app.SAME_AS_A, 0, 1, 1, 1, 1, [], False, 2, api_name="/ablate")
    assert "skips at 28×28 × 0" in ablated[-1]
    features = client.predict(2, "mid_block.attentions.0", 0, "global", api_name="/features")
    assert "mid_block.attentions.0" in features[-1]


def test_sessions_do_not_share_state(served):
    first, second = Client(served, verbose=False), Client(served, verbose=False)
    first.predict("tiny", app.SAME_AS_A, "3", 3, 0, "ddim", 4, 1, 1, 1, 1, 1, 1, [], False, api_name="/generate")
    with pytest.raises(AppError, match="Generate first"):
        second.predict(1, api_name="/scrub")


def test_bad_input_is_an_error_and_the_server_still_answers(served):
    client = Client(served, verbose=False)
    with pytest.raises(AppError):
        client.predict("tiny", app.SAME_AS_A, "3", 3, 0, "ddim", 5000, 1, 1, 1, 1, 1, 1, [], False, api_name="/generate")
    with pytest.raises(AppError):
        client.predict("tiny", app.SAME_AS_A, "3", 3, 0, "euler", 4, 1, 1, 1, 1, 1, 1, [], False, api_name="/generate")
    result = client.predict("tiny", app.SAME_AS_A, "3", 3, 0, "ddim", 3, 1, 1, 1, 1, 1, 1, [], False, api_name="/generate")
    assert "Mean |A − B|" in result[-1]
