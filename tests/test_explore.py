"""Questions about *when*: windowed ablation and its sweep, FreeU, the timestep lie, the digit's decision,
h-space edits, shareable setups and tensor export — on tiny random models."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure
from safetensors.torch import load as load_safetensors

from playground import (LESSONS, Ablation, HSpaceEdit, PlaygroundSetup, PlaygroundUNet, SampleSettings, TimestepLie,
                        Window, freeu_preset, sample)
from playground.ablation import parse_ablation_specs
from playground.classifier import load_classifier
from playground.explore import (BOTTLENECK, class_probability_figure, decided_steps, decision_figure, digit_decision,
                                export_safetensors, hspace_probe, sliding_windows, sweep_figure, trajectory_metadata,
                                trajectory_tensors, window_sweep)
from playground.sampling import make_scheduler

ROOT = Path(__file__).resolve().parent.parent
SKIPS_OFF = Ablation(skip_scale={28: 0.0, 14: 0.0})


@pytest.fixture(scope="module")
def classifier(weights):
    return load_classifier(weights / "classifier")


def steps_of(model, sampler, steps):
    return make_scheduler(model, sampler, steps).timesteps.tolist()


# --- FreeU in the forward pass ------------------------------------------------------------------------


def test_freeu_scaling_at_a_join_is_exactly_diffusers_apply_freeu(three_level_unet, sample_input, timesteps):
    from diffusers.utils.torch_utils import apply_freeu

    with torch.no_grad():
        intact = three_level_unet(sample_input, timesteps, capture_features=True).features
        ablation = Ablation(backbone_scale={4: 1.3}, skip_low_freq_scale={4: 0.4})
        freeu = three_level_unet(sample_input, timesteps, ablation=ablation, capture_features=True).features
    # the deepest stage's first join sees the bottleneck and an encoder skip, neither touched upstream
    backbone, skip = apply_freeu(0, intact["up_blocks.0.resnets.0.backbone"].clone(), intact["up_blocks.0.resnets.0.skip"],
                                 b1=1.3, s1=0.4, b2=1.0, s2=1.0)
    assert torch.allclose(freeu["up_blocks.0.resnets.0.backbone"], backbone, atol=1e-6)
    assert torch.allclose(freeu["up_blocks.0.resnets.0.skip"], skip, atol=1e-6)
    assert not torch.allclose(freeu["up_blocks.0.resnets.0.skip"], intact["up_blocks.0.resnets.0.skip"])


def test_freeu_backbone_scale_touches_only_the_first_half_of_the_channels(three_level_unet, sample_input, timesteps):
    with torch.no_grad():
        intact = three_level_unet(sample_input, timesteps, capture_features=True).features["up_blocks.0.resnets.0.backbone"]
        scaled = three_level_unet(sample_input, timesteps, ablation=Ablation(backbone_scale={4: 2.0}),
                                  capture_features=True).features["up_blocks.0.resnets.0.backbone"]
    half = intact.shape[1] // 2
    assert torch.equal(scaled[:, :half], intact[:, :half] * 2.0) and torch.equal(scaled[:, half:], intact[:, half:])


def test_freeu_low_frequency_scale_keeps_the_high_frequencies_of_the_skip(three_level_unet, sample_input, timesteps):
    with torch.no_grad():
        intact = three_level_unet(sample_input, timesteps, capture_features=True).features["up_blocks.2.resnets.0.skip"]
        filtered = three_level_unet(sample_input, timesteps, ablation=Ablation(skip_low_freq_scale={16: 0.0}),
                                    capture_features=True).features["up_blocks.2.resnets.0.skip"]
    spectrum = lambda x: torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1)).abs()  # noqa: E731
    high = torch.ones(16, 16, dtype=torch.bool)
    high[7:10, 7:10] = False  # DC is at (8, 8): everything more than one bin away counts as high
    assert spectrum(filtered)[..., 8, 8].max() < 1e-4 < spectrum(intact)[..., 8, 8].min()
    assert torch.allclose(spectrum(filtered)[..., high], spectrum(intact)[..., high], atol=1e-4)


@pytest.mark.parametrize("ablation", [Ablation(backbone_scale={8: 1.4}), Ablation(skip_low_freq_scale={16: 0.2}), freeu_preset((16, 8, 4))],
                         ids=["b", "s", "preset"])
def test_every_freeu_knob_changes_the_output(three_level_unet, sample_input, timesteps, ablation):
    with torch.no_grad():
        plain = three_level_unet(sample_input, timesteps).sample
        changed = three_level_unet(sample_input, timesteps, ablation=ablation).sample
    assert (changed - plain).abs().max() > 1e-4


def test_freeu_gains_of_one_are_the_intact_network(three_level_unet, sample_input, timesteps):
    ablation = Ablation(backbone_scale={4: 1.0}, skip_low_freq_scale={8: 1})
    assert ablation.is_intact
    with torch.no_grad():
        assert torch.equal(three_level_unet(sample_input, timesteps).sample,
                           three_level_unet(sample_input, timesteps, ablation=ablation).sample)


def test_freeu_preset_puts_the_sd1_defaults_on_the_two_deepest_stages():
    assert freeu_preset((28, 14, 7)) == Ablation(backbone_scale={7: 1.2, 14: 1.4}, skip_low_freq_scale={7: 0.9, 14: 0.2})
    assert parse_ablation_specs(["freeu"], (28, 14, 7), ()) == freeu_preset((28, 14, 7))
    assert parse_ablation_specs(["freeu:28=1.1,0.5"], (28, 14, 7), ()) == Ablation(backbone_scale={28: 1.1}, skip_low_freq_scale={28: 0.5})


def test_freeu_fields_round_trip_and_stay_out_of_old_configs():
    ablation = Ablation(skip_scale={8: 0.5}, backbone_scale={4: 1.2}, skip_low_freq_scale={4: 0.9})
    assert Ablation.from_dict(json.loads(json.dumps(ablation.to_dict()))) == ablation
    assert set(Ablation(skip_scale={8: 0}).to_dict()) == {"skip_scale", "attention_off", "time_embedding_off"}


@pytest.mark.parametrize("field_name", ["backbone_scale", "skip_low_freq_scale"])
def test_freeu_at_an_unknown_resolution_raises_naming_the_field(three_level_unet, sample_input, field_name):
    with pytest.raises(ValueError, match=field_name):
        three_level_unet(sample_input, 10, ablation=Ablation(**{field_name: {15: 0.5}}))
    with pytest.raises(ValueError, match=field_name):
        Ablation(**{field_name: {8: -1}})


# --- h-space shift in the forward pass ---------------------------------------------------------------


def test_a_bottleneck_shift_is_added_to_what_the_decoder_receives(three_level_unet, sample_input, timesteps):
    with torch.no_grad():
        plain = three_level_unet(sample_input, timesteps, capture_features=True)
        shape = plain.features[BOTTLENECK].shape[1:]
        shift = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        shifted = three_level_unet(sample_input, timesteps, capture_features=True, bottleneck_shift=shift)
        zero = three_level_unet(sample_input, timesteps, bottleneck_shift=torch.zeros(shape))
    assert torch.equal(shifted.features[BOTTLENECK], plain.features[BOTTLENECK])
    assert torch.allclose(shifted.features["up_blocks.0.resnets.0.backbone"], plain.features[BOTTLENECK] + shift)
    assert not torch.allclose(shifted.sample, plain.sample) and torch.equal(zero.sample, plain.sample)


# --- time-windowed ablation ---------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_a_window_leaves_the_steps_before_it_bit_identical_and_changes_those_in_it(model, sampler):
    ts = steps_of(model, sampler, 8)
    window = Window(ts[5], ts[3])  # steps 3, 4 and 5
    intact = sample(model, SampleSettings(sampler=sampler, steps=8, seed=1, batch=2))
    windowed = sample(model, SampleSettings(sampler=sampler, steps=8, seed=1, batch=2, ablation=SKIPS_OFF, ablation_window=window))
    assert torch.equal(windowed.x_t[:4], intact.x_t[:4]) and torch.equal(windowed.eps[:3], intact.eps[:3])
    assert not torch.equal(windowed.eps[3], intact.eps[3]) and not torch.equal(windowed.final, intact.final)


def test_the_ablation_is_off_outside_its_window(model):
    ts = steps_of(model, "ddim", 6)
    settings = SampleSettings(steps=6, seed=2, batch=2, ablation=SKIPS_OFF, ablation_window=(ts[2], ts[2]))
    assert [settings.ablation_at(t) for t in ts] == [Ablation()] * 2 + [SKIPS_OFF] + [Ablation()] * 3
    # after the window the runs are intact again: ε̂ differs only through x_t, so re-running step 3 intact on
    # the windowed x_t reproduces it
    windowed = sample(model, settings)
    eps = model.unet(windowed.x_t[3], ts[3], torch.full((2,), 10)).sample
    assert torch.allclose(eps, windowed.eps[3], atol=1e-6)


def test_a_window_over_every_step_is_the_plain_ablation_and_one_over_none_is_intact(model):
    base = SampleSettings(steps=5, seed=0, batch=2)
    everywhere = sample(model, replace(base, ablation=SKIPS_OFF, ablation_window=(0, 999))).final
    assert torch.equal(everywhere, sample(model, replace(base, ablation=SKIPS_OFF)).final)
    ts = steps_of(model, "ddim", 5)
    between = Window(ts[1] + 1, ts[0] - 1)  # lies between two sampled timesteps: no step is ablated
    assert torch.equal(sample(model, replace(base, ablation=SKIPS_OFF, ablation_window=between)).final, sample(model, base).final)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_reusing_the_intact_prefix_is_bit_identical_and_calls_the_model_only_from_the_window_on(model, sampler):
    ts = steps_of(model, sampler, 10)
    settings = SampleSettings(sampler=sampler, steps=10, seed=4, batch=3, label=(1, 2, 3), ablation=SKIPS_OFF,
                              ablation_window=(ts[7], ts[6]))
    intact = sample(model, replace(settings, ablation=Ablation(), ablation_window=None))
    calls = []
    reused = sample(model, settings, progress=lambda i, n: calls.append(n), reuse=intact)
    scratch = sample(model, settings)
    assert len(calls) == 4  # steps 6..9
    for name in ("x_t", "eps", "x0"):
        assert torch.equal(getattr(reused, name), getattr(scratch, name)), name


def test_stop_after_keeps_the_first_steps_of_the_full_run(model):
    settings = SampleSettings(sampler="dpm++", steps=6, seed=2, batch=2, capture_steps=(2,))
    full, partial = sample(model, settings), sample(model, settings, stop_after=2)
    assert len(partial) == 3 and torch.equal(partial.x_t, full.x_t[:4]) and torch.equal(partial.eps, full.eps[:3])
    assert torch.equal(partial.features[2][BOTTLENECK], full.features[2][BOTTLENECK])
    with pytest.raises(ValueError, match="stop_after"):
        sample(model, settings, stop_after=6)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_a_run_stopped_part_way_goes_on_from_its_steps_bit_for_bit(model, sampler):
    settings = SampleSettings(sampler=sampler, steps=6, seed=2, batch=2, label=(4, 5), capture_steps=(1, 4))
    full = sample(model, settings)
    asked = []
    stopped = sample(model, settings, should_stop=lambda: asked.append(len(asked)) or len(asked) > 3)
    assert not stopped.complete and full.complete and len(asked) == 4  # asked before each step; the 4th is not run
    assert len(stopped) == 3 and torch.equal(stopped.x_t, full.x_t[:4]) and torch.equal(stopped.x0, full.x0[:3])
    assert list(stopped.features) == [1]
    calls = []
    resumed = sample(model, settings, progress=lambda i, n: calls.append(n), reuse=stopped)
    assert calls == [3, 3, 3] and resumed.complete  # steps 3..5 only
    for name in ("timesteps", "x_t", "eps", "x0"):
        assert torch.equal(getattr(resumed, name), getattr(full, name)), name
    assert torch.equal(resumed.features[4][BOTTLENECK], full.features[4][BOTTLENECK])


def test_a_run_stopped_before_its_first_step_holds_only_the_starting_noise(model):
    settings = SampleSettings(steps=4, seed=3, batch=2)
    stopped = sample(model, settings, should_stop=lambda: True)
    assert len(stopped) == 0 and not stopped.complete
    assert torch.equal(stopped.final, sample(model, settings).x_t[0])


def test_reuse_refuses_a_trajectory_from_different_noise(model):
    intact = sample(model, SampleSettings(steps=4, seed=1, batch=2))
    with pytest.raises(ValueError, match="reuse.*seed"):
        sample(model, SampleSettings(steps=4, seed=2, batch=2, ablation=SKIPS_OFF), reuse=intact)


@pytest.mark.parametrize("bad, named", [
    (dict(ablation_window=(5, 3)), "t_min"), (dict(ablation_window=(1,)), "ablation_window"),
    (dict(ablation_window=(-1, 3)), "t_min"), (dict(timestep_lie=3), "timestep_lie"), (dict(h_edit="up"), "h_edit"),
])
def test_bad_interventions_raise_value_error_naming_the_argument(bad, named):
    with pytest.raises(ValueError, match=named):
        SampleSettings(**bad)


# --- timestep lie -------------------------------------------------------------------------------------


def test_a_timestep_lie_changes_eps_while_the_scheduler_steps_at_the_true_t(model):
    truthful = sample(model, SampleSettings(steps=5, seed=0, batch=2))
    # told t − 300: the run starts at t = 999, where t + 300 would clamp back to the truth
    lied = sample(model, SampleSettings(steps=5, seed=0, batch=2, timestep_lie=TimestepLie(offset=-300)))
    assert torch.equal(lied.timesteps, truthful.timesteps)
    assert torch.equal(lied.x_t[0], truthful.x_t[0]) and not torch.allclose(lied.eps[0], truthful.eps[0])
    t0 = int(lied.timesteps[0])
    told = model.unet(lied.x_t[0], max(t0 - 300, 0), torch.full((2,), 10)).sample
    assert torch.allclose(lied.eps[0], told, atol=1e-6)  # the model was told t − 300 ...
    scheduler = make_scheduler(model, "ddim", 5)  # ... and the scheduler stepped at the true t
    assert torch.allclose(lied.x_t[1], scheduler.step(lied.eps[0], lied.timesteps[0], lied.x_t[0]).prev_sample, atol=1e-6)


def test_a_fixed_timestep_lie_tells_every_step_the_same_t():
    lie = TimestepLie(fixed=500)
    assert [lie.told(t, 1000) for t in (999, 500, 0)] == [500, 500, 500]
    assert TimestepLie(offset=-100).told(50, 1000) == 0 and TimestepLie(offset=100).told(950, 1000) == 999


# --- h-space probe and edit ---------------------------------------------------------------------------


def test_hspace_probe_finds_orthonormal_components_of_the_bottleneck(model):
    probe = hspace_probe(model, SampleSettings(steps=4, seed=0, batch=12), t=500, components=4)
    flat = probe.components.flatten(1)
    assert probe.components.shape[1:] == probe.mean.shape == model.unet.feature_shapes()[BOTTLENECK]
    assert torch.allclose(flat @ flat.T, torch.eye(4), atol=1e-4)
    assert (probe.explained[:-1] >= probe.explained[1:]).all() and float(probe.explained.sum()) <= 1 + 1e-6
    assert probe.t in steps_of(model, "ddim", 4) and abs(probe.t - 500) <= 250
    assert torch.allclose(probe.projections.std(0), torch.ones(4), atol=1e-4)  # coordinates in standard deviations


def test_an_hspace_edit_acts_only_in_its_window(model):
    probe = hspace_probe(model, SampleSettings(steps=6, seed=0, batch=8), t=500, components=2)
    ts = steps_of(model, "ddim", 6)
    base = SampleSettings(steps=6, seed=3, batch=2)
    edited = sample(model, replace(base, h_edit=probe.edit(0, 5.0, (ts[4], ts[2]))))
    intact = sample(model, base)
    assert torch.equal(edited.eps[:2], intact.eps[:2]) and not torch.allclose(edited.eps[2], intact.eps[2])
    assert torch.equal(sample(model, replace(base, h_edit=probe.edit(0, 0.0))).final, intact.final)
    with pytest.raises(ValueError, match="component"):
        probe.edit(5, 1.0)
    with pytest.raises(ValueError, match="direction"):
        HSpaceEdit(torch.zeros(3), 1.0)


# --- the window sweep ---------------------------------------------------------------------------------


def test_sliding_windows_cover_every_step_once_in_order(model):
    ts = steps_of(model, "ddim", 50)
    windows = sliding_windows(ts, 10)
    assert len(windows) == 10 and windows[0].t_max == ts[0] and windows[-1].t_min == ts[-1]
    assert [sum(t in w for w in windows) for t in ts] == [1] * 50
    with pytest.raises(ValueError, match="windows"):
        sliding_windows(ts, 51)


def test_a_window_sweep_equals_running_each_window_from_scratch(model, classifier):
    settings = SampleSettings(steps=6, seed=5, batch=2, label=7)
    sweep = window_sweep(model, settings, SKIPS_OFF, 3, classifier=classifier)
    assert sweep.change.shape == (3,) and sweep.finals.shape == (3, 2, 1, 28, 28) and (sweep.change > 0).all()
    middle = sample(model, replace(settings, ablation=SKIPS_OFF, ablation_window=sweep.windows[1]))
    assert torch.equal(sweep.finals[1], middle.final)
    expected = (middle.final.clamp(-1, 1) - sweep.intact.final.clamp(-1, 1)).abs().mean()
    assert torch.allclose(sweep.change[1], expected)
    assert set(sweep.quality[0]) == {"confident", "kept", "accuracy"} and sweep.full_change > 0
    assert json.loads(json.dumps(sweep.as_dict()))["windows"] == [[w.t_min, w.t_max] for w in sweep.windows]
    assert isinstance(sweep_figure({"skips off": sweep}), Figure)


def test_a_window_sweep_out_of_time_keeps_the_windows_it_ran_first(model, classifier):
    settings = SampleSettings(steps=6, seed=5, batch=2, label=7)
    whole = window_sweep(model, settings, SKIPS_OFF, 3, classifier=classifier)
    cut = window_sweep(model, settings, SKIPS_OFF, 3, classifier=classifier, seconds=0.0)  # spent after the first window
    assert cut.windows == whole.windows[:1] and cut.change.shape == (1,) and len(cut.quality) == 1
    assert torch.equal(cut.finals[0], whole.finals[0]) and cut.full_change is None


def test_a_window_sweep_reuses_a_given_intact_run_and_reports_progress(model):
    settings = SampleSettings(steps=6, seed=5, batch=2)
    intact = sample(model, settings)
    progress = []
    sweep = window_sweep(model, settings, SKIPS_OFF, 3, intact=intact, with_full_run=False, progress=lambda i, n: progress.append((i, n)))
    assert sweep.intact is intact and sweep.full_change is None and sweep.quality is None
    assert progress[-1] == (6 + 4 + 2, 12)  # windows start at steps 0, 2 and 4
    with pytest.raises(ValueError, match="ablation"):
        window_sweep(model, settings, Ablation(), 3)


# --- when does the digit decide? ----------------------------------------------------------------------


def one_hot_steps(classes, confidence=0.95):
    """(S, B) class indices -> (S, B, 10) probabilities with `confidence` on that class."""
    classes = torch.tensor(classes)
    probabilities = torch.full((*classes.shape, 10), (1 - confidence) / 9)
    return probabilities.scatter(2, classes[..., None], confidence)


def test_the_decided_step_is_where_the_final_class_wins_for_good():
    # sample 0 decides at step 1; sample 1 wavers back at step 2, so decides at 3; sample 2 never matches
    probabilities = one_hot_steps([[5, 3, 1], [3, 3, 2], [3, 4, 2], [3, 3, 2]])  # (steps, samples)
    assert decided_steps(probabilities, torch.tensor([3, 3, 9])).tolist() == [1, 3, -1]
    unsure = one_hot_steps([[3], [3]], confidence=0.8)  # right class, never confident
    assert decided_steps(unsure, torch.tensor([3])).tolist() == [-1]


def test_digit_decision_reads_x0_at_every_step(model, classifier):
    trajectory = sample(model, SampleSettings(steps=5, seed=0, batch=3, label=2))
    decision = digit_decision(classifier, trajectory)
    assert decision.probabilities.shape == (5, 3, 10)
    assert torch.allclose(decision.probabilities.sum(2), torch.ones(5, 3))
    assert ((decision.entropy >= 0) & (decision.entropy <= 1 + 1e-6)).all()
    assert decision.final_class.shape == decision.decided_step.shape == (3,)
    assert len(json.loads(json.dumps(decision.as_dict()))["decided_t"]) == 3
    assert isinstance(decision_figure({"A": decision, "B": decision}), Figure)
    assert isinstance(class_probability_figure(decision, 1), Figure)


# --- export -------------------------------------------------------------------------------------------


def test_captured_tensors_export_as_safetensors_that_load_back_identically(model, tmp_path):
    trajectory = sample(model, SampleSettings(steps=3, seed=0, batch=2, capture_steps=(1,)))
    tensors = trajectory_tensors(trajectory)
    data = export_safetensors(tensors, tmp_path / "run.safetensors", trajectory_metadata(trajectory))
    loaded = load_safetensors((tmp_path / "run.safetensors").read_bytes())
    assert data == (tmp_path / "run.safetensors").read_bytes()
    assert set(loaded) == set(tensors) and f"features.1.{BOTTLENECK}" in loaded
    assert all(torch.equal(loaded[name], tensors[name]) for name in tensors)
    with pytest.raises(ValueError, match="tensors"):
        export_safetensors({})


# --- shareable setups and lessons ---------------------------------------------------------------------


FULL_SETUP = PlaygroundSetup(
    model="tiny", seed=3, sampler="dpm++", steps=7, batch=2, digit=4, guidance=2.0,
    ablation=Ablation(skip_scale={14: 0}, attention_off={"mid_block.attentions.0"}, backbone_scale={14: 1.2}),
    window=Window(100, 600), timestep_lie=TimestepLie(offset=50),
    h_edit=None,
)


def test_a_setup_survives_a_json_round_trip():
    from playground.setup import HSpaceRecipe
    setup = replace(FULL_SETUP, h_edit=HSpaceRecipe(component=1, strength=-2.5, probe_t=400, probe_samples=8, window=(0, 300)))
    assert PlaygroundSetup.from_json(setup.to_json()) == setup
    assert PlaygroundSetup.from_json(PlaygroundSetup().to_json()) == PlaygroundSetup()


@pytest.mark.parametrize("change, named", [
    ({"steps": 0}, "steps"), ({"sampler": "euler"}, "sampler"), ({"batch": "8"}, "batch"), ({"digit": -1}, "digit"),
    ({"guidance": -1}, "guidance"), ({"window": [9, 3]}, "window"), ({"window": "all"}, "window"),
    ({"ablation": {"skip_scale": {"14": -1}}}, "ablation"), ({"ablation": {"gain": 1}}, "ablation"),
    ({"timestep_lie": {"offset": 1.5}}, "timestep_lie"), ({"timestep_lie": {"later": 1}}, "timestep_lie"),
    ({"h_edit": {"component": -1}}, "h_edit"), ({"colour": "red"}, "colour"), ({"model": ""}, "model"),
])
def test_a_bad_setup_raises_value_error_naming_the_field(change, named):
    data = FULL_SETUP.to_dict() | change
    with pytest.raises(ValueError, match=named):
        PlaygroundSetup.from_dict(data)


def test_invalid_json_raises_value_error():
    with pytest.raises(ValueError, match="JSON"):
        PlaygroundSetup.from_json("{not json")


def test_a_setup_with_an_hspace_edit_builds_its_direction_with_the_model(model):
    from playground.setup import HSpaceRecipe
    setup = PlaygroundSetup(model="tiny", steps=4, batch=2, h_edit=HSpaceRecipe(component=0, strength=1.0, probe_samples=6))
    with pytest.raises(ValueError, match="h_edit"):
        setup.sample_settings()
    settings = setup.sample_settings(model)
    assert settings.h_edit.direction.shape == model.unet.feature_shapes()[BOTTLENECK]


def test_every_lesson_is_a_valid_setup_for_the_flagship_architecture():
    config = json.loads((ROOT / "weights" / "mnist" / "unet" / "config.json").read_text())
    unet = PlaygroundUNet(**{k: v for k, v in config.items() if not k.startswith("_")})
    assert set(LESSONS) == {"what skips do", "what attention does", "what time conditioning does"}
    for lesson in LESSONS.values():
        lesson.setup.ablation.check_against(unet.skip_resolutions, unet.attention_sites)
        assert not lesson.setup.ablation.is_intact and lesson.explanation
        assert PlaygroundSetup.from_json(lesson.setup.to_json()) == lesson.setup


# --- command lines ------------------------------------------------------------------------------------


def test_sample_cli_reads_a_setup_and_explicit_flags_override_it(weights, tmp_path):
    from playground.sample import main
    setup = PlaygroundSetup(model=str(weights / "tiny"), steps=3, batch=2, digit=4, ablation=SKIPS_OFF, window=(0, 500),
                            timestep_lie=TimestepLie(offset=20))
    (tmp_path / "setup.json").write_text(setup.to_json())
    assert main(["--setup", str(tmp_path / "setup.json"), "--out", str(tmp_path / "a.png"), "--tensors", str(tmp_path / "a.safetensors")]) == 0
    explicit = ["--model", str(weights / "tiny"), "--steps", "3", "--num", "2", "--digit", "4", "--ablate", "skip:all=0",
                "--window", "0:500", "--lie-offset", "20", "--out", str(tmp_path / "b.png")]
    assert main(explicit) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert main(["--setup", str(tmp_path / "setup.json"), "--digit", "5", "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes() != (tmp_path / "a.png").read_bytes()
    assert "x0" in load_safetensors((tmp_path / "a.safetensors").read_bytes())


def test_sample_cli_refuses_a_bad_setup_file_in_one_line(weights, tmp_path, capsys):
    from playground.sample import main
    (tmp_path / "bad.json").write_text(json.dumps({"steps": 0}))
    assert main(["--setup", str(tmp_path / "bad.json"), "--model", str(weights / "tiny"), "--out", str(tmp_path / "x.png")]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "steps" in message


def test_sweep_cli_prints_one_change_per_window_and_writes_the_curve(weights, tmp_path, capsys):
    from playground.sweep import main
    status = main(["--model", str(weights / "tiny"), "--ablate", "skip:all=0", "--windows", "3", "--batch", "2",
                   "--steps", "6", "--classifier", str(weights / "classifier"), "--out", str(tmp_path / "sweep.png"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert status == 0 and len(result["change"]) == len(result["windows"]) == 3 and len(result["quality"]) == 3
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_cli_applies_the_setups_window_and_lie(weights, tmp_path, capsys):
    from playground.evaluate import main
    setup = PlaygroundSetup(model=str(weights / "tiny"), steps=2, ablation=SKIPS_OFF, window=(0, 300), timestep_lie=TimestepLie(fixed=10))
    (tmp_path / "setup.json").write_text(setup.to_json())
    data_dir = ROOT / "playground" / "assets" / "mnist-heldout"
    status = main(["--setup", str(tmp_path / "setup.json"), "--classifier", str(weights / "classifier"), "--data-dir", str(data_dir),
                   "--num", "8", "--per-digit", "1", "--eps-images", "8", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert status == 0 and result["ablation_window"] == [0, 300] and result["timestep_lie"] == {"offset": 0, "fixed": 10}


@pytest.mark.parametrize("text", ["[" * 5000 + "]" * 5000, '{"a":' * 1800 + "1" + "}" * 1800])
def test_a_setup_nested_deeper_than_the_parser_goes_is_refused_by_name(text):
    assert len(text) < 20_000  # within the app's size cap: only the nesting is wrong
    with pytest.raises(ValueError, match="^setup: nested too deeply"):
        PlaygroundSetup.from_json(text)
