"""Activation patching: A's map in B's forward (`forward(patch=)`), patched runs, the restored fraction, the patch map
and its CLI — on tiny random models, a few steps each."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from diffusers import DDPMScheduler
from matplotlib.figure import Figure

from helpers import THREE_LEVEL_UNET, TINY_UNET, build_unet, make_input
from playground import Ablation, SampleSettings, Window
from playground.classifier import load_classifier
from playground.explore import sliding_windows
from playground.patching import (default_patch_blocks, patch_map, patch_map_figure, patched_run, restored_fraction,
                                 source_features)
from playground.sampling import DiffusionModel, make_scheduler, sample

SAMPLERS = ["ddim", "ddpm", "dpm++"]
# The 8 px decoder level's output: every 8 px skip joins before it, the 16 px ones after
LEVEL_8PX_OUTPUT = "up_blocks.1.attentions.1"
LAST_DECODER_MAP = "up_blocks.2.resnets.1"  # what conv_out reads: nothing downstream of it is ever ablated


@pytest.fixture(scope="module")
def three_level() -> DiffusionModel:
    """A class-conditional three-level model (16 / 8 / 4 px), so guidance doubles every forward's batch."""
    unet = build_unet(THREE_LEVEL_UNET, num_class_embeds=11)
    return DiffusionModel("three-level", unet, dict(DDPMScheduler(num_train_timesteps=1000).config))


def settings_for(sampler="ddim", **changes) -> SampleSettings:
    return SampleSettings(**{"sampler": sampler, "steps": 4, "seed": 1, "batch": 2, "label": 3, "guidance": 2.0, **changes})


# --- forward(patch=) ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["conv_in", "down_blocks.1.attentions.0", "mid_block.resnets.1",
                                  "up_blocks.0.resnets.1.skip", "up_blocks.1.attentions.0.update", "up_blocks.2.resnets.1"])
@pytest.mark.parametrize("layout", ["as-captured", "standard"])
def test_patching_a_map_with_its_own_value_changes_nothing_to_the_bit(three_level_unet, sample_input, timesteps, name, layout):
    # the model computes channels-last; a patch in the standard layout must compute as the map itself would
    with torch.no_grad():
        own = three_level_unet(sample_input, timesteps, capture_features=True)
        value = own.features[name].clone() if layout == "as-captured" else own.features[name].double().contiguous()
        assert layout == "as-captured" or value.stride() != own.features[name].stride()
        patched = three_level_unet(sample_input, timesteps, patch={name: value})
    assert torch.equal(patched.sample, own.sample)


def test_a_patched_map_is_what_the_rest_of_the_forward_continues_from(three_level_unet, sample_input, timesteps):
    with torch.no_grad():
        own = three_level_unet(sample_input, timesteps, capture_features=True).features
        other = three_level_unet(make_input(three_level_unet, seed=7), timesteps, capture_features=True).features
        patched = three_level_unet(sample_input, timesteps, patch={"mid_block.resnets.0": other["mid_block.resnets.0"]},
                                   capture_features=True).features
    assert torch.equal(patched["mid_block.resnets.0"], other["mid_block.resnets.0"])
    assert torch.equal(patched["down_blocks.2.attentions.0"], own["down_blocks.2.attentions.0"])  # upstream: untouched
    assert not torch.allclose(patched["mid_block.attentions.0"], own["mid_block.attentions.0"])  # downstream: from the patch


def test_an_update_patched_into_a_switched_off_attention_is_added_back(three_level_unet, sample_input, timesteps):
    site = "down_blocks.1.attentions.0"
    with torch.no_grad():
        intact = three_level_unet(sample_input, timesteps, capture_features=True).features
        restored = three_level_unet(sample_input, timesteps, ablation=Ablation(attention_off={site}),
                                    patch={f"{site}.update": intact[f"{site}.update"]}, capture_features=True).features
    assert torch.equal(restored[site], intact[site])


def test_patching_leaves_no_trace_on_the_model(three_level_unet, sample_input, timesteps):
    with torch.no_grad():
        before = three_level_unet(sample_input, timesteps).sample
        three_level_unet(sample_input, timesteps, patch={"mid_block.resnets.1": torch.zeros(2, 16, 4, 4)})
        after = three_level_unet(sample_input, timesteps).sample
        empty = three_level_unet(sample_input, timesteps, patch={}).sample
    assert torch.equal(after, before) and torch.equal(empty, before)
    assert not torch.equal(three_level_unet(sample_input, timesteps, patch={"mid_block.resnets.1": torch.zeros(2, 16, 4, 4)}).sample,
                           before)


def test_an_unknown_map_name_raises_naming_the_argument_and_the_name(three_level_unet, sample_input, timesteps):
    with pytest.raises(ValueError, match=r"patch: 'mid_block\.nothing' is not one of the model's feature maps, e\.g\."):
        three_level_unet(sample_input, timesteps, patch={"mid_block.nothing": torch.zeros(2, 16, 4, 4)})


@pytest.mark.parametrize("shape", [(1, 16, 4, 4), (2, 8, 4, 4), (2, 16, 8, 8)], ids=["batch", "channels", "size"])
def test_a_patch_of_the_wrong_shape_raises_naming_the_map_and_the_expected_shape(three_level_unet, sample_input, timesteps, shape):
    with pytest.raises(ValueError, match=r"patch: 'mid_block\.resnets\.1' must be a tensor of shape \(2, 16, 4, 4\)"):
        three_level_unet(sample_input, timesteps, patch={"mid_block.resnets.1": torch.zeros(shape)})


# --- patched runs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_patching_b_with_its_own_maps_gives_b_own_run_to_the_bit(three_level, sampler):
    settings_b = settings_for(sampler, ablation=Ablation(skip_scale={8: 0.0}))
    b = sample(three_level, settings_b)
    patched = patched_run(three_level, settings_b, b, three_level, "mid_block.attentions.0", None)
    for name in ("x_t", "eps", "x0"):
        assert torch.equal(getattr(patched, name), getattr(b, name)), name


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("ablation, block", [
    (Ablation(skip_scale={8: 0.0}), LEVEL_8PX_OUTPUT),  # both 8 px skips join before the patched map
    (Ablation(skip_scale={4: 0.0}, attention_off={"down_blocks.1.attentions.0"}), LEVEL_8PX_OUTPUT),
    (Ablation(time_embedding_off=True, skip_scale={16: 0.0}), LAST_DECODER_MAP),
], ids=["8px-skips-cut", "4px-cut-and-encoder-attention", "time-and-16px-cut"])
def test_patching_a_map_downstream_of_every_ablated_part_at_every_step_restores_a_exactly(three_level, sampler, ablation, block):
    # B's maps after the patched one see only A's patched map and A's own skips from upstream: from step 0 on,
    # B computes A's ε̂ on A's x_t, both guidance passes, so its run is A's
    a = sample(three_level, settings_for(sampler))
    settings_b = settings_for(sampler, ablation=ablation)
    b = sample(three_level, settings_b)
    patched = patched_run(three_level, settings_b, a, three_level, block, None)
    assert not torch.equal(b.final, a.final)
    assert torch.equal(patched.final, a.final)
    assert restored_fraction(patched.final, a.final, b.final) == 1.0


def test_the_bottleneck_does_not_restore_an_encoder_ablation_the_skips_carry_around_it(three_level):
    a = sample(three_level, settings_for())
    settings_b = settings_for(ablation=Ablation(attention_off={"down_blocks.1.attentions.0"}))
    b = sample(three_level, settings_b)
    fraction = restored_fraction(patched_run(three_level, settings_b, a, three_level, "mid_block.resnets.1", None).final,
                                 a.final, b.final)
    assert fraction < 0.99


def test_patching_only_the_conditional_pass_would_not_restore_a_guided_run(three_level):
    # the exact restorations above hold only because both halves of the guided batch get A's map of the same half
    a = sample(three_level, settings_for())
    settings_b = settings_for(ablation=Ablation(time_embedding_off=True))
    features = source_features(three_level, a, [LAST_DECODER_MAP], list(range(4)))
    assert all(f[LAST_DECODER_MAP].shape[0] == 4 for f in features.values())  # [conditional | unconditional]
    b_features = source_features(three_level, sample(three_level, settings_b), [LAST_DECODER_MAP], [0])[0][LAST_DECODER_MAP]
    half_patched = {0: {LAST_DECODER_MAP: torch.cat([features[0][LAST_DECODER_MAP][:2], b_features[2:]])}}
    assert not torch.equal(sample(three_level, settings_b, patches=half_patched).x_t[1], a.x_t[1])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_windowed_patch_leaves_the_steps_before_its_window_b_own_and_copies_them(three_level, sampler):
    settings_a, settings_b = settings_for(sampler), settings_for(sampler, ablation=Ablation(skip_scale={8: 0.0}))
    a, b = sample(three_level, settings_a), sample(three_level, settings_b)
    timesteps = make_scheduler(three_level, sampler, 4).timesteps.tolist()
    window = Window(timesteps[3], timesteps[2])  # steps 2 and 3
    seen = []
    reused = patched_run(three_level, settings_b, a, three_level, LEVEL_8PX_OUTPUT, window, reuse=b,
                         progress=lambda done, total: seen.append((done, total)))
    fresh = patched_run(three_level, settings_b, a, three_level, LEVEL_8PX_OUTPUT, window)
    assert torch.equal(reused.x_t, fresh.x_t) and torch.equal(reused.eps, fresh.eps)
    assert torch.equal(reused.x_t[:3], b.x_t[:3]) and torch.equal(reused.eps[:2], b.eps[:2])
    assert not torch.equal(reused.eps[2], b.eps[2])
    assert reused.patched_from == 2
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]  # A's two maps, then B's two patched steps; nothing before


def test_a_patched_run_is_never_reused_as_the_unpatched_one(three_level):
    settings_b = settings_for(ablation=Ablation(skip_scale={8: 0.0}))
    a, b = sample(three_level, settings_for()), sample(three_level, settings_b)
    window = Window(0, int(make_scheduler(three_level, "ddim", 4).timesteps[1]))
    patched = patched_run(three_level, settings_b, a, three_level, LEVEL_8PX_OUTPUT, window)
    again = sample(three_level, settings_b, reuse=patched)
    assert torch.equal(again.x_t, b.x_t) and again.patched_from is None


def test_a_window_that_holds_no_step_raises(three_level):
    settings = settings_for()
    a = sample(three_level, settings)
    timesteps = make_scheduler(three_level, "ddim", 4).timesteps.tolist()
    between = Window(timesteps[1] + 1, timesteps[0] - 1)
    with pytest.raises(ValueError, match=rf"window: no step of the 4-step ddim run has {between.t_min} <= t <= {between.t_max}"):
        patched_run(three_level, settings, a, three_level, LEVEL_8PX_OUTPUT, between)


def test_an_unknown_block_raises_naming_it(three_level):
    settings = settings_for()
    a = sample(three_level, settings)
    with pytest.raises(ValueError, match=r"block: 'up_blocks\.9\.resnets\.0' is not one of the model's feature maps"):
        patched_run(three_level, settings, a, three_level, "up_blocks.9.resnets.0", None)
    with pytest.raises(ValueError, match=r"block: 'mid_block' is not one of the model's feature maps"):
        patch_map(three_level, three_level, settings, Ablation(skip_scale={8: 0.0}), ["mid_block"], 2)


@pytest.mark.parametrize("field, value", [("seed", 2), ("steps", 5), ("guidance", 1.5)])
def test_a_source_run_from_other_noise_or_schedule_raises_naming_what_differs(three_level, field, value):
    a = sample(three_level, settings_for())
    with pytest.raises(ValueError, match=f"source: A's run was sampled with a different {field}"):
        patched_run(three_level, settings_for(**{field: value}), a, three_level, LEVEL_8PX_OUTPUT, None)


def test_reuse_must_be_b_own_run(three_level):
    a = sample(three_level, settings_for())
    with pytest.raises(ValueError, match="reuse: must be B's own complete run"):
        patched_run(three_level, settings_for(ablation=Ablation(skip_scale={8: 0.0})), a, three_level, LEVEL_8PX_OUTPUT, None,
                    reuse=a)


# --- the restored fraction ---------------------------------------------------------------------------------


def test_the_restored_fraction_is_one_on_a_zero_on_b_and_negative_farther_away():
    a, b = torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5)
    assert restored_fraction(a, a, b) == 1.0
    assert restored_fraction(b, a, b) == 0.0
    assert restored_fraction(torch.full((1, 1, 2, 2), 0.25), a, b) == 0.5
    assert restored_fraction(torch.full((1, 1, 2, 2), -1.0), a, b) == -1.0  # not clipped: twice as far as B


def test_the_restored_fraction_compares_images_as_shown_clipped_to_the_pixel_range():
    a, b = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    assert restored_fraction(torch.full((1, 1, 2, 2), 5.0), a, b) == 0.0


def test_the_restored_fraction_is_nan_when_b_equals_a():
    a = torch.zeros(1, 1, 2, 2)
    assert math.isnan(restored_fraction(torch.ones(1, 1, 2, 2), a, a.clone()))


# --- the patch map -------------------------------------------------------------------------------------------


def test_default_patch_blocks_are_each_level_output_and_the_bottleneck_in_forward_order(three_level_unet, tiny_unet):
    assert default_patch_blocks(three_level_unet) == [
        "down_blocks.0.resnets.0", "down_blocks.1.attentions.0", "down_blocks.2.attentions.0", "mid_block.resnets.1",
        "up_blocks.0.attentions.1", "up_blocks.1.attentions.1", "up_blocks.2.resnets.1"]
    no_mid = build_unet(TINY_UNET, mid_block_type=None)
    assert default_patch_blocks(no_mid) == ["down_blocks.0.resnets.0", "down_blocks.1.attentions.0",
                                            "up_blocks.0.attentions.1", "up_blocks.1.resnets.1"]
    assert len(default_patch_blocks(tiny_unet)) == 5


def test_a_patch_map_holds_every_block_by_every_window_and_counts_its_model_steps(three_level):
    settings = settings_for(steps=5)
    blocks = ["mid_block.resnets.1", LAST_DECODER_MAP]
    seen = []
    result = patch_map(three_level, three_level, settings, Ablation(time_embedding_off=True), blocks, 2,
                       progress=lambda done, total: seen.append((done, total)))
    timesteps = make_scheduler(three_level, "ddim", 5).timesteps
    assert result.windows == sliding_windows(timesteps, 2)
    assert result.fractions.shape == (2, 2) and result.finals.shape == (2, 2, 2, 1, 16, 16)
    # A, B and A's maps: 5 steps each; then per block the windows from step 0 (5 steps) and from step 2 (3 steps)
    total = 3 * 5 + 2 * (5 + 3)
    assert seen[-1] == (total, total) and len(seen) == total and all(t == total for _, t in seen)
    windowed = patched_run(three_level, replace(settings, ablation=Ablation(time_embedding_off=True)), result.a, three_level,
                           blocks[0], result.windows[1])
    assert result.fractions[0, 1] == restored_fraction(windowed.final, result.a.final, result.b.final)
    as_json = json.loads(json.dumps(result.as_dict()))
    assert result.digit_back is None and as_json["fractions"] == [[round(v, 4) for v in row] for row in result.fractions.tolist()]


def test_a_one_window_patch_map_of_the_last_map_is_a_run_exactly(three_level):
    result = patch_map(three_level, three_level, settings_for(), Ablation(time_embedding_off=True), [LAST_DECODER_MAP], 1)
    assert result.windows == [Window(0, 999)] and result.fractions.tolist() == [[1.0]]


def test_a_patch_map_with_a_classifier_says_whether_a_digit_comes_back(model, weights):
    classifier = load_classifier(weights / "classifier")
    settings = SampleSettings(steps=3, batch=2, label=4, guidance=1.5)
    result = patch_map(model, model, settings, Ablation(skip_scale={28: 0.0}), ["mid_block.resnets.1", "up_blocks.1.resnets.1"], 1,
                       classifier=classifier)
    assert result.digit_back.shape == (2, 1) and ((result.digit_back >= 0) & (result.digit_back <= 1)).all()
    assert result.digit_back[1, 0] == 1.0  # the last map at every step: A's very samples, so A's digits
    assert 0 <= result.b_digit_same <= 1


def test_a_patch_map_of_b_equal_to_a_is_all_nan(three_level):
    result = patch_map(three_level, three_level, settings_for(), None, [LEVEL_8PX_OUTPUT], 2)
    assert result.gap == 0 and torch.isnan(result.fractions).all()
    assert result.as_dict()["fractions"] == [[None, None]]


def test_the_patch_map_figure_is_a_heatmap_with_t_falling_left_to_right_and_every_cell_annotated(three_level):
    result = patch_map(three_level, three_level, settings_for(), Ablation(skip_scale={8: 0.0}),
                       ["mid_block.resnets.1", LEVEL_8PX_OUTPUT], 2)
    figure = patch_map_figure(result)
    assert isinstance(figure, Figure) and len(figure.axes) == 2  # the map and its colour bar
    ax = figure.axes[0]
    labels = [label.get_text() for label in ax.get_xticklabels()]
    assert labels == [f"{w.t_max}–{w.t_min}" for w in result.windows] and result.windows[0].t_max > result.windows[1].t_max
    assert sorted(text.get_text() for text in ax.texts) == sorted(f"{v:.2f}" for v in result.fractions.flatten().tolist())


# --- the command line ---------------------------------------------------------------------------------------


def test_the_cli_prints_one_patched_run_and_a_map(weights, capsys, tmp_path):
    from playground.patch import main

    common = ["--model", str(weights / "tiny"), "--steps", "3", "--batch", "1", "--digit", "2", "--ablate", "skip:28=0",
              "--classifier", "none"]
    assert main(common + ["--block", "up_blocks.1.resnets.1", "--window", "0", "999", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["fraction"] == 1.0 and one["block"] == "up_blocks.1.resnets.1" and one["window"] == [0, 999]
    figure = tmp_path / "map.png"
    assert main(common + ["--map", "--windows", "3", "--out", str(figure)]) == 0
    table = capsys.readouterr().out
    assert "restored fraction" in table and "mid_block.resnets.1" in table and figure.stat().st_size > 0


def test_the_cli_names_a_bad_block(weights, capsys):
    from playground.patch import main

    assert main(["--model", str(weights / "tiny"), "--steps", "2", "--batch", "1", "--ablate", "skip:28=0",
                 "--classifier", "none", "--block", "nowhere"]) == 2
    assert "block: 'nowhere' is not one of the model's feature maps" in capsys.readouterr().err
