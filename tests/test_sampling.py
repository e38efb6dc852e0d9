"""The reverse process, comparisons, evaluation numbers and the CLIs, on tiny random models."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from playground import Ablation, HSpaceEdit, SampleSettings, TrajectoryCache, compare, features_at, load_pipeline
from playground.sampling import sample  # not `from playground`: importing the CLI module playground.sample shadows that name
from playground.evaluate import DIVERGED, eps_mse_per_timestep, frechet_distance, radial_spectrum, sample_quality
from playground.classifier import load_classifier

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_same_settings_give_the_same_pixels(model, sampler):
    settings = SampleSettings(sampler=sampler, steps=5, seed=3, batch=2, label=7)
    assert torch.equal(sample(model, settings).final, sample(model, settings).final)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_a_run_is_the_same_to_the_bit_on_one_thread_and_on_two(model, sampler):
    # the app computes a run on one thread (a guess in the idle time, A and B side by side) or two (alone), and
    # serves kept runs as the run a request would compute
    from concurrent.futures import ThreadPoolExecutor

    from playground.network_thread import use_threads

    settings = SampleSettings(sampler=sampler, steps=4, seed=5, batch=2, label=(1, 2), guidance=3.0,
                              ablation=Ablation(skip_scale={28: 0.5}))
    runs = []
    for threads in (1, 2):
        with ThreadPoolExecutor(max_workers=1) as thread:
            thread.submit(use_threads, threads).result()
            runs.append(thread.submit(sample, model, settings).result())
    for name in ("x_t", "eps", "x0"):
        assert torch.equal(getattr(runs[0], name), getattr(runs[1], name)), name


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
@pytest.mark.parametrize("steps", [1, 2, 20, 50, 499, 600, 999, 1000])
def test_every_run_starts_at_the_last_training_timestep_and_visits_distinct_ones(model, sampler, steps):
    from playground.sampling import make_scheduler

    timesteps = make_scheduler(model, sampler, steps).timesteps.tolist()
    assert len(timesteps) == steps
    assert timesteps[0] >= 979  # the initial noise is pure noise: the model is told so (to one 50-step stride)
    if steps in (1, 2, 600):
        assert timesteps[0] == 999  # where "leading" would start lower
    assert all(later < earlier for earlier, later in zip(timesteps, timesteps[1:]))


def test_fifty_steps_keep_the_spacing_the_documented_figures_were_measured_with(model):
    from playground.sampling import make_scheduler

    assert make_scheduler(model, "ddim", 50).timesteps.tolist() == list(range(980, -1, -20))


def test_dpm_solver_runs_at_the_step_maximum(model):
    run = sample(model, SampleSettings(sampler="dpm++", steps=1000, batch=1))
    assert run.timesteps[0] == 999 and run.timesteps[-1] == 0 and torch.isfinite(run.final).all()


def test_a_different_seed_gives_different_pixels(model):
    a = sample(model, SampleSettings(steps=3, seed=1, batch=2)).final
    b = sample(model, SampleSettings(steps=3, seed=2, batch=2)).final
    assert not torch.equal(a, b)


def test_trajectory_keeps_every_step_with_consistent_x0(model):
    trajectory = sample(model, SampleSettings(steps=6, seed=0, batch=3, label=(1, 2, 3)))
    assert trajectory.x_t.shape == (7, 3, 1, 28, 28) and trajectory.eps.shape == trajectory.x0.shape == (6, 3, 1, 28, 28)
    assert trajectory.timesteps.tolist() == sorted(trajectory.timesteps.tolist(), reverse=True)
    a = model.unet  # x̂0 is the clean image that x_t and ε̂ imply
    from playground.sampling import make_scheduler
    alpha = make_scheduler(model, "ddim", 6).alphas_cumprod[int(trajectory.timesteps[2])]
    expected = (trajectory.x_t[2] - (1 - alpha).sqrt() * trajectory.eps[2]) / alpha.sqrt()
    assert torch.allclose(trajectory.x0[2], expected, atol=1e-5) and a is model.unet


def test_trajectory_stores_no_more_than_its_tensors(model):
    trajectory = sample(model, SampleSettings(steps=10, seed=0, batch=4))
    one_image_set = 4 * 28 * 28 * 4
    assert trajectory.nbytes() <= (11 + 10 + 10) * one_image_set + 10 * 8


def test_guidance_changes_conditional_samples_only(model):
    low = SampleSettings(steps=4, seed=0, batch=2, label=5, guidance=1.0)
    high = SampleSettings(steps=4, seed=0, batch=2, label=5, guidance=5.0)
    assert not torch.equal(sample(model, low).final, sample(model, high).final)
    unconditional = [SampleSettings(steps=4, seed=0, batch=2, label=None, guidance=g) for g in (1.0, 5.0)]
    assert torch.equal(sample(model, unconditional[0]).final, sample(model, unconditional[1]).final)


def test_ablated_run_differs_and_comparison_starts_from_the_same_noise(model):
    settings = SampleSettings(steps=4, seed=0, batch=2)
    comparison = compare(model, model, settings, ablation_b=Ablation(attention_off={"mid_block.attentions.0"}))
    assert torch.equal(comparison.a.x_t[0], comparison.b.x_t[0])
    assert comparison.per_step_difference("x0")[-1] > 0 and comparison.final_difference().shape == (2,)


def test_captured_features_match_features_at(model):
    trajectory = sample(model, SampleSettings(steps=4, seed=0, batch=2, capture_steps=(1,)))
    kept = trajectory.features[1]
    recomputed = features_at(model, sample(model, SampleSettings(steps=4, seed=0, batch=2)), 1, 1)
    assert set(kept) == set(recomputed)
    for name in kept:
        assert torch.allclose(kept[name][1], recomputed[name], atol=1e-5), name


@pytest.mark.parametrize("bad, named", [
    (dict(sampler="euler"), "sampler"), (dict(steps=0), "steps"), (dict(steps=1001), "steps"), (dict(batch=0), "batch"),
    (dict(batch=257), "batch"), (dict(guidance=float("nan")), "guidance"), (dict(seed=-1), "seed"),
    (dict(steps=5, capture_steps=(9,)), "capture_steps"),
])
def test_bad_settings_raise_value_error_naming_the_argument(bad, named):
    with pytest.raises(ValueError, match=named):
        SampleSettings(**bad)


def test_a_digit_for_an_unconditional_model_is_refused(weights):
    from playground import PlaygroundUNet
    from tiny_weights import TINY_UNET, write_pipeline
    folder = write_pipeline(weights.parent / "uncond", PlaygroundUNet(**(TINY_UNET | {"num_class_embeds": None})))
    with pytest.raises(ValueError, match="not class-conditional"):
        sample(load_pipeline(folder), SampleSettings(steps=2, batch=1, label=3))


def test_eps_mse_uses_fixed_noise_so_reruns_agree(model):
    images = torch.rand(8, 1, 28, 28) * 2 - 1
    first = eps_mse_per_timestep(model, images, (0, 500, 999))
    assert first == eps_mse_per_timestep(model, images, (0, 500, 999))
    assert first != eps_mse_per_timestep(model, images, (0, 500, 999), ablation=Ablation(time_embedding_off=True))


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_a_shift():
    features = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    assert abs(frechet_distance(features, features)) < 1e-6
    assert frechet_distance(features, features + 1.0) == pytest.approx(8.0, rel=1e-3)


def test_sample_quality_reports_shares_between_zero_and_one(weights):
    classifier = load_classifier(weights / "classifier")
    images = torch.rand(20, 1, 28, 28) * 2 - 1
    quality = sample_quality(classifier, images, classifier.features(torch.rand(20, 1, 28, 28)))
    assert 0 <= quality.confident <= 1 and 0 <= quality.class_entropy <= 1 and sum(quality.histogram) == 20
    assert quality.peak <= 1 < DIVERGED


def test_sample_quality_flags_samples_that_left_the_data_range(weights):
    """Saturated noise, clipped to [-1, 1] for the classifier, can read as one digit: the peak says what it was."""
    classifier = load_classifier(weights / "classifier")
    saturated = torch.randn(12, 1, 28, 28, generator=torch.Generator().manual_seed(0)).sign() * 530
    quality = sample_quality(classifier, saturated, classifier.features(torch.rand(20, 1, 28, 28)))
    assert quality.peak == 530 > DIVERGED and quality.as_dict()["peak"] == 530
    one_digit = sample_quality(classifier, saturated[:1].expand(12, -1, -1, -1), classifier.features(torch.rand(20, 1, 28, 28)))
    assert max(one_digit.histogram) == 12
    assert str(one_digit.class_entropy) == "0.0"  # +0.0, not the −0.0 that printed as "-0.000" in the study's table


def test_radial_spectrum_puts_a_checkerboard_at_the_highest_frequency():
    checkerboard = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1
    frequencies, power = radial_spectrum(checkerboard[None, None])
    assert frequencies[power.argmax()] > 0.5 and power.sum() == pytest.approx(1.0)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_sample_cli_writes_identical_png_bytes_for_identical_arguments(weights, tmp_path):
    common = ["playground.sample", "--model", str(weights / "tiny"), "--steps", "3", "--num", "2", "--digit", "4",
              "--ablate", "skip:14=0", "--ablate", "attn:mid_block.attentions.0", "--ablate", "time"]
    first = run_cli(*common, "--out", str(tmp_path / "a.png"), "--gif", str(tmp_path / "a.gif"))
    second = run_cli(*common, "--out", str(tmp_path / "b.png"))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "a.gif").read_bytes()[:3] == b"GIF"


@pytest.mark.parametrize("args, named", [
    (["--ablate", "attn:nowhere"], "attention"), (["--ablate", "skip:13=0"], "resolution"), (["--sampler", "euler"], "sampler"),
    (["--steps", "0"], "steps"), (["--steps", "1001"], "steps"), (["--num", "257"], "batch"), (["--digit", "12"], "digit"),
])
def test_sample_cli_refuses_bad_arguments_in_one_line(weights, tmp_path, capsys, args, named):
    from playground.sample import main
    status = main(["--model", str(weights / "tiny"), "--steps", "2", "--out", str(tmp_path / "x.png"), *args])
    message = capsys.readouterr().err.strip()
    assert status == 2 and len(message.splitlines()) == 1
    assert message.startswith("error:") and named in message


def test_evaluate_cli_prints_the_numbers_as_json(weights):
    data_dir = ROOT / "playground" / "assets" / "mnist-heldout"
    result = run_cli("playground.evaluate", "--model", str(weights / "tiny"), "--classifier", str(weights / "classifier"),
                     "--data-dir", str(data_dir), "--num", "16", "--steps", "2", "--json")
    assert result.returncode == 0, result.stderr
    numbers = json.loads(result.stdout)
    assert {"eps_mse", "confident", "class_entropy", "fd", "digit_accuracy"} <= set(numbers)
    assert set(numbers["eps_mse"]) >= {"0", "500", "999"}


def test_evaluate_cli_refuses_too_many_samples(weights, capsys):
    from playground.evaluate import main
    assert main(["--model", str(weights / "tiny"), "--num", "300", "--json"]) == 2
    assert "--num" in capsys.readouterr().err


def test_confidence_over_draws_repeats_the_single_draw_measure_once_per_seed():
    from playground.data import load_mnist
    from playground.evaluate import confidence_over_draws, evaluate_model

    flagship = load_pipeline(ROOT / "weights" / "mnist")
    classifier = load_classifier(ROOT / "weights" / "classifier")
    test_images, _ = load_mnist(ROOT / "playground" / "assets" / "mnist-heldout", "test")
    draws = confidence_over_draws(flagship, classifier, [3, 4, 5], num=24, steps=8)
    single = evaluate_model(flagship, classifier, test_images, num=24, steps=8, seed=4, eps_images=4, per_digit=1)
    assert draws["seeds"] == [3, 4, 5] and draws["confident"][1] == single["confident"]
    assert len(set(draws["confident"])) > 1  # independent draws: the shares differ
    assert draws["mean"] == pytest.approx(sum(draws["confident"]) / 3)
    spread = torch.tensor(draws["confident"], dtype=torch.float64).std().item()
    assert draws["standard_error"] == pytest.approx(spread / 3 ** 0.5)


def test_evaluate_cli_refuses_no_draws(weights, capsys):
    from playground.evaluate import main
    assert main(["--model", str(weights / "tiny"), "--draws", "0", "--json"]) == 2
    assert "--draws" in capsys.readouterr().err


def _no_forward(*args, **kwargs):
    raise AssertionError("the model ran")


def test_a_kept_trajectory_answers_the_same_settings_again_without_the_model(model, monkeypatch):
    cache = TrajectoryCache(max_bytes=2**20)
    settings = SampleSettings(steps=4, batch=2, label=None)
    first = cache.sample(model, settings)
    assert torch.equal(first.x_t, sample(model, settings).x_t) and torch.equal(first.eps, sample(model, settings).eps)
    monkeypatch.setattr(model.unet, "forward", _no_forward)
    assert cache.sample(model, settings) is first
    with pytest.raises(AssertionError, match="the model ran"):  # other settings are computed
        cache.sample(model, SampleSettings(steps=4, batch=2, label=None, seed=1))


def test_the_cache_holds_at_most_its_bytes_and_lets_the_least_recently_used_go(model):
    settings = [SampleSettings(steps=2, batch=1, label=None, seed=seed) for seed in range(3)]
    size = sample(model, settings[0]).nbytes()
    cache = TrajectoryCache(max_bytes=2 * size)
    oldest = cache.sample(model, settings[0])
    cache.sample(model, settings[1])
    assert cache.get(model, settings[0]) is oldest  # asked for again: now the most recently used
    cache.sample(model, settings[2])  # over the budget: settings[1] goes
    assert cache.get(model, settings[1]) is None and cache.get(model, settings[0]) is oldest
    assert len(cache) == 2 and cache.bytes == 2 * size


def test_the_cache_keeps_no_h_space_edit_and_nothing_larger_than_its_budget(model):
    settings = SampleSettings(steps=2, batch=1, label=None)
    bottleneck = model.unet.feature_shapes()["mid_block.resnets.1"]
    edited = replace(settings, h_edit=HSpaceEdit(torch.zeros(bottleneck)))
    cache = TrajectoryCache(max_bytes=2**20)
    cache.sample(model, edited)  # an edit compares by identity: no later request could equal it
    assert len(cache) == 0
    small = TrajectoryCache(max_bytes=sample(model, settings).nbytes() - 1)
    small.sample(model, settings)
    assert len(small) == 0 and small.bytes == 0


def counting_forward(model, monkeypatch, fail_after=None):
    """The number of forward calls from now on, in a list; the call after `fail_after` of them raises."""
    calls, real_forward = [], model.unet.forward

    def forward(*args, **kwargs):
        if fail_after is not None and len(calls) == fail_after:
            raise RuntimeError("the model broke")
        calls.append(1)
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model.unet, "forward", forward)
    return calls


def test_a_stopped_run_is_kept_within_the_budget_and_the_next_sample_goes_on_from_it(model, monkeypatch):
    settings = SampleSettings(steps=5, batch=2, label=None, seed=7)
    full = sample(model, settings)
    cache = TrajectoryCache(max_bytes=2**20)
    calls = counting_forward(model, monkeypatch)
    stopped = cache.sample(model, settings, should_stop=lambda: len(calls) == 2)
    assert not stopped.complete and len(stopped) == 2
    assert cache.get(model, settings) is None and len(cache) == 0 and cache.bytes == stopped.nbytes()
    finished = cache.sample(model, settings)  # no should_stop: always a finished trajectory
    assert len(calls) == 5 and finished.complete  # 2 steps by the stopped run, 3 to go on
    for name in ("x_t", "eps", "x0"):
        assert torch.equal(getattr(finished, name), getattr(full, name)), name
    assert cache.get(model, settings) is finished and len(cache) == 1 and cache.bytes == finished.nbytes()


def test_a_stopped_run_counts_against_the_budget_like_a_finished_one(model):
    settings = [SampleSettings(steps=4, batch=1, label=None, seed=seed) for seed in range(2)]
    cache = TrajectoryCache(max_bytes=sample(model, settings[0]).nbytes())
    cache.sample(model, settings[0], should_stop=lambda: False)
    stopped = cache.sample(model, settings[1], should_stop=iter([False, False, True]).__next__)
    assert len(stopped) == 2 and cache.get(model, settings[0]) is None  # the older, finished one made room
    assert cache.bytes == stopped.nbytes()


def test_a_failure_while_going_on_keeps_the_steps_the_stopped_run_had(model, monkeypatch):
    settings = SampleSettings(steps=5, batch=1, label=None, seed=8)
    cache = TrajectoryCache(max_bytes=2**20)
    calls = counting_forward(model, monkeypatch, fail_after=3)
    cache.sample(model, settings, should_stop=lambda: len(calls) == 2)
    with pytest.raises(RuntimeError, match="the model broke"):
        cache.sample(model, settings)  # fails at its 2nd step
    monkeypatch.undo()
    calls = counting_forward(model, monkeypatch)
    finished = cache.sample(model, settings)
    assert len(calls) == 3 and torch.equal(finished.x_t, sample(model, settings).x_t)


def test_going_on_from_a_stopped_run_or_from_reuse_whichever_has_more_steps(model, monkeypatch):
    from playground.sampling import make_scheduler

    ts = make_scheduler(model, "ddim", 6).timesteps.tolist()
    intact = sample(model, SampleSettings(steps=6, batch=1, label=None, seed=9))
    late = SampleSettings(steps=6, batch=1, label=None, seed=9, ablation=Ablation(skip_scale={14: 0.0}), ablation_window=(0, ts[4]))
    everywhere = replace(late, ablation_window=None)
    cache = TrajectoryCache(max_bytes=2**20)
    calls = counting_forward(model, monkeypatch)
    for settings in (late, everywhere):
        cache.sample(model, settings, should_stop=lambda before=len(calls): len(calls) == before + 2)
    assert len(calls) == 4
    cache.sample(model, late, reuse=intact)  # the intact run's first 4 steps are late's: they beat the stopped 2
    assert len(calls) == 4 + 2
    cache.sample(model, everywhere, reuse=intact)  # the intact run has none of everywhere's: the stopped 2 win
    assert len(calls) == 6 + 4
    monkeypatch.undo()
    for settings in (late, everywhere):
        assert torch.equal(cache.get(model, settings).x_t, sample(model, settings).x_t)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "64"])
def test_the_cache_refuses_a_budget_that_is_not_a_byte_count(bad):
    with pytest.raises(ValueError, match="max_bytes"):
        TrajectoryCache(bad)


@pytest.mark.parametrize("bad", [-0.1, float("inf"), True, "1"])
def test_the_cache_refuses_a_wait_that_is_not_a_number_of_seconds(bad):
    with pytest.raises(ValueError, match="take_over_wait"):
        TrajectoryCache(2**20, take_over_wait=bad)


def test_evaluate_is_quick_by_default_and_runs_the_documented_protocol_with_full(weights, capsys):
    from playground.evaluate import FULL, QUICK, main

    common = ["--model", str(weights / "tiny"), "--classifier", str(weights / "classifier"), "--steps", "2", "--json"]
    assert main(common) == 0
    quick = json.loads(capsys.readouterr().out)
    assert (quick["num"], quick["per_digit"], quick["eps_images"]) == (QUICK["num"], QUICK["per_digit"], QUICK["eps_images"])
    assert main([*common, "--full", "--per-digit", "1"]) == 0  # an explicit flag still wins over the protocol
    full = json.loads(capsys.readouterr().out)
    assert (full["num"], full["per_digit"], full["eps_images"]) == (FULL["num"], 1, FULL["eps_images"])
