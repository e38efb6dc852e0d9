"""Training: a few steps on 64 MNIST digits export a loadable pipeline, and a stopped run resumes exactly."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, UNet2DModel
from safetensors.torch import load_file

from playground import PlaygroundUNet
from playground.train import CHECKPOINT_STATE, CHECKPOINT_TENSORS, TrainConfig, parse_args, timestep_loss_weights, train

STEPS_PER_EPOCH = 64 // 16


def tiny_config(data_dir, root, **overrides) -> TrainConfig:
    """Four steps an epoch on 64 images, a two-level (8, 16) U-Net with attention at 14 px."""
    values = dict(
        data_dir=str(data_dir), out=str(root / "out"), checkpoint_dir=str(root / "checkpoints"),
        epochs=2, batch_size=16, limit=64, warmup_steps=2, block_out_channels=(8, 16), attention_levels=(1,),
        attention_head_dim=8, norm_num_groups=4, checkpoint_every=2, export_every=1000, log_every=1000,
    )
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def trained(train_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    return train(tiny_config(train_data, root, epochs=1))


def test_training_exports_a_pipeline_folder_with_safetensors(trained):
    assert (trained / "model_index.json").is_file()
    assert (trained / "unet" / "config.json").is_file()
    assert (trained / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(trained.rglob("*.bin"))
    assert (trained / "scheduler" / "scheduler_config.json").is_file()


def test_training_records_a_finite_loss_and_its_steps(trained):
    card = json.loads((trained / "training.json").read_text())
    assert card["steps"] == STEPS_PER_EPOCH
    assert math.isfinite(card["final_loss_ema"])


def test_the_exported_unet_loads_as_playgroundunet_and_as_unet2dmodel_alike(trained):
    ours = PlaygroundUNet.from_pretrained(trained, subfolder="unet").eval()
    stock = UNet2DModel.from_pretrained(trained, subfolder="unet").eval()
    x, t, labels = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 900]), torch.tensor([3, 10])
    with torch.no_grad():
        expected = stock(x, t, labels).sample
        assert torch.isfinite(expected).all()
        assert ((ours(x, t, labels).sample - expected).abs().max() / expected.abs().max()) < 1e-4


def test_the_exported_folder_loads_as_a_stock_ddpm_pipeline(trained):
    pipeline = DDPMPipeline.from_pretrained(trained)
    assert isinstance(pipeline.unet, UNet2DModel)
    assert pipeline.unet.config.sample_size == 28


def test_a_run_stopped_and_resumed_ends_exactly_where_an_uninterrupted_run_ends(train_data, tmp_path, capsys):
    total_steps = 2 * STEPS_PER_EPOCH  # two epochs, so the resumed run also crosses an epoch boundary
    half = total_steps // 2

    straight = tiny_config(train_data, tmp_path / "straight")
    train(straight)

    interrupted = tiny_config(train_data, tmp_path / "interrupted", stop_after=half)
    train(interrupted)
    stopped_state = json.loads((tmp_path / "interrupted" / "checkpoints" / CHECKPOINT_STATE).read_text())
    assert stopped_state["step"] == half
    assert not (tmp_path / "interrupted" / "out").exists()  # stopped as if killed: nothing exported yet
    capsys.readouterr()
    train(tiny_config(train_data, tmp_path / "interrupted", resume=True))
    assert f"at step {half}/{total_steps}" in capsys.readouterr().out  # it resumed, rather than starting over

    for run in ("straight", "interrupted"):
        assert json.loads((tmp_path / run / "checkpoints" / CHECKPOINT_STATE).read_text())["step"] == total_steps
    expected = load_file(tmp_path / "straight" / "checkpoints" / CHECKPOINT_TENSORS)
    actual = load_file(tmp_path / "interrupted" / "checkpoints" / CHECKPOINT_TENSORS)
    assert sorted(actual) == sorted(expected)  # model, EMA and optimizer tensors
    assert any(key.startswith("model.") for key in expected)
    mismatched = [key for key in expected if not torch.equal(actual[key], expected[key])]
    assert not mismatched  # bit-identical: data order and noise are seeded by (seed, epoch) and (seed, step)


def test_stop_after_is_a_command_line_option():
    cfg = parse_args(["--data-dir", "data", "--out", "weights/x", "--stop-after", "250"])
    assert cfg.stop_after == 250
    assert parse_args(["--data-dir", "data", "--out", "weights/x"]).stop_after is None
    with pytest.raises(SystemExit):
        parse_args(["--data-dir", "data", "--out", "weights/x", "--stop-after", "0"])


def test_a_run_started_from_shipped_weights_records_their_training_and_its_card_tells_both_stages(trained, train_data, tmp_path):
    from playground.card import render_card

    continued = train(tiny_config(train_data, tmp_path, epochs=1, init_from=str(trained), lr=5e-4, uncond_prob=0.4,
                                  min_snr_gamma=5.0))
    record = json.loads((continued / "training.json").read_text())
    first_stage = json.loads((trained / "training.json").read_text())
    assert first_stage.pop("earlier_stages") == []
    assert record["earlier_stages"] == [first_stage]  # flattened: a third stage would list two, oldest first
    assert record["train_config"]["init_from"] == str(trained)
    assert "_name_or_path" not in json.loads((continued / "unet" / "config.json").read_text())  # no path of this machine

    card = render_card(continued, None, "a test machine")
    assert "stage 1, from random initialisation" in card
    assert "stage 2, from the previous stage's EMA weights" in card
    assert f"in all: {2 * first_stage['epochs_done']:.2f} epochs" in card
    assert "--checkpoint-dir checkpoints/out-stage2" in card  # stage 2 must not resume stage 1's checkpoints
    train_lines = [line for line in card.splitlines() if "python -m playground.train" in line]
    assert train_lines and not any("--data-dir" in line for line in train_lines)  # the Hub's MNIST is there in any clone
    stage_1, stage_2 = (line for line in card.splitlines() if line.startswith("- stage") and "python -m playground.train" in line)
    assert "--uncond-prob" not in stage_1 and "--uncond-prob 0.4" in stage_2  # a changed setting is stated
    assert "null label for 15% of examples" in card and "null label for 40% of examples" in card
    assert "--min-snr-gamma" not in stage_1 and "--min-snr-gamma 5.0" in stage_2
    assert "uniform loss weights" in card and "Min-SNR loss weights (γ = 5.0)" in card
    stage_2_args = parse_args(stage_2.split("`")[1].split()[3:])  # the command parses back
    assert (stage_2_args.uncond_prob, stage_2_args.min_snr_gamma) == (0.4, 5.0)


def test_min_snr_weights_turn_down_only_the_timesteps_whose_snr_exceeds_gamma():
    from diffusers import DDPMScheduler

    alphas_cumprod = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    snr = alphas_cumprod / (1 - alphas_cumprod)
    weights = timestep_loss_weights(alphas_cumprod, 5.0)
    noisy = snr <= 5.0
    assert 0 < noisy.sum() < 1000  # the linear schedule crosses SNR 5 (near t = 100)
    assert torch.equal(weights[noisy], torch.ones(int(noisy.sum())))
    torch.testing.assert_close(weights[~noisy], 5.0 / snr[~noisy])
    assert weights[0] < 0.01  # the cleanest step: SNR ~ 10^4
    assert torch.equal(timestep_loss_weights(alphas_cumprod, None), torch.ones(1000))


def test_min_snr_gamma_must_be_positive():
    args = ["--data-dir", "data", "--out", "weights/x"]
    assert parse_args(args).min_snr_gamma is None
    assert parse_args(args + ["--min-snr-gamma", "5"]).min_snr_gamma == 5.0
    with pytest.raises(SystemExit):
        parse_args(args + ["--min-snr-gamma", "0"])


@pytest.fixture(scope="module")
def branch(trained, train_data, tmp_path_factory):
    """A fine-tune of `trained`: a soup's other ingredient."""
    return train(tiny_config(train_data, tmp_path_factory.mktemp("branch"), epochs=1, init_from=str(trained), seed=1, uncond_prob=0.5))


def test_a_soup_is_the_mean_of_its_ingredients_and_loads_in_both_libraries(trained, branch, tmp_path):
    from playground.soup import make_soup

    soup = make_soup([trained, branch], tmp_path / "soup")
    weights = [load_file(folder / "unet" / "diffusion_pytorch_model.safetensors") for folder in (trained, branch, soup)]
    assert weights[0].keys() == weights[2].keys()
    assert all(torch.allclose(weights[2][name], (weights[0][name] + weights[1][name]) / 2, atol=1e-7) for name in weights[2])
    assert any(not torch.equal(weights[2][name], weights[0][name]) for name in weights[2])
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([10, 900]), torch.tensor([3, 10])
    with torch.no_grad():
        ours = PlaygroundUNet.from_pretrained(soup, subfolder="unet")(x, t, y).sample
        stock = UNet2DModel.from_pretrained(soup, subfolder="unet")(x, t, y).sample
    assert torch.allclose(ours, stock, atol=1e-5)
    assert (soup / "scheduler" / "scheduler_config.json").is_file() and not list(soup.rglob("*.bin"))


def test_a_soup_card_tells_each_ingredient_and_how_to_make_them(trained, branch, tmp_path):
    from playground.card import render_card
    from playground.soup import make_soup

    soup = make_soup([trained, branch], tmp_path / "mnist")
    card = render_card(soup, None, "a test machine")
    assert "stage 1, from random initialisation" in card
    assert "stage 2, a model soup (`playground.soup`): the uniform average of the EMA weights of 2 models" in card
    assert "  - a: stage 1 itself" in card and "  - b: trained further" in card and "null label for 50% of examples, uniform loss weights, seed 1" in card
    ingredient_b = next(line for line in card.splitlines() if line.startswith("- stage 2: ingredient b:"))
    assert "--init-from weights/mnist" in ingredient_b and "--seed 1" in ingredient_b
    assert parse_args(ingredient_b.split("`")[1].split()[3:]).out == "runs/mnist-stage2b"  # the command parses back
    assert "- stage 2: the soup: `python -m playground.soup --out weights/mnist weights/mnist runs/mnist-stage2b`" in card
    records = [json.loads((folder / "training.json").read_text()) for folder in (trained, branch)]
    assert f"in all: {sum(r['epochs_done'] for r in records):.2f} epochs" in card


def test_training_from_a_soup_continues_its_story(trained, branch, train_data, tmp_path):
    from playground.card import render_card
    from playground.soup import make_soup

    soup = make_soup([trained, branch], tmp_path / "soup")
    continued = train(tiny_config(train_data, tmp_path / "run", epochs=1, init_from=str(soup)))
    card = render_card(continued, None, "a test machine")
    assert "stage 2, a model soup" in card and "stage 3, from the previous stage's EMA weights" in card


def test_a_soup_refuses_ingredients_of_different_architectures_naming_the_file(trained, train_data, tmp_path):
    from playground.soup import main, make_soup

    other = train(tiny_config(train_data, tmp_path / "other", epochs=1, block_out_channels=(8, 8)))
    with pytest.raises(ValueError, match=r"ingredients: .*other.*unet/config.json differs .* one architecture"):
        make_soup([trained, other], tmp_path / "soup")
    with pytest.raises(ValueError, match="ingredients: a soup needs at least two"):
        make_soup([trained], tmp_path / "soup")
    assert main(["--out", str(tmp_path / "soup"), str(trained), str(tmp_path / "missing")]) == 2
    assert not (tmp_path / "soup").exists()


def test_a_soup_refuses_an_ingredient_without_its_training_record_or_schedule(trained, branch, tmp_path):
    from playground.soup import make_soup

    for missing in ("training.json", "scheduler/scheduler_config.json"):
        broken = tmp_path / missing.replace("/", "-")
        shutil.copytree(branch, broken)
        (broken / missing).unlink()
        with pytest.raises(ValueError, match=f"ingredients: .*{missing} is missing"):
            make_soup([trained, broken], tmp_path / "soup")


def test_a_card_gives_the_mean_and_standard_error_of_repeated_draws(trained):
    from playground.card import render_card

    evaluation = {"steps": 50, "num": 256, "confident": 0.797, "class_entropy": 0.99, "fd": 160.0, "eps_mse": {"10": 0.1},
                  "confident_over_draws": {"seeds": [0, 1, 2], "confident": [0.797, 0.84, 0.809], "mean": 0.8153,
                                           "standard_error": 0.0128}}
    card = render_card(trained, evaluation, "a test machine")
    row = next(line for line in card.splitlines() if "standard error of 3 draws" in line)
    assert "seeds 0–2; each: 0.797, 0.840, 0.809" in row and "**0.815 ± 0.013**" in row
    assert "--baseline --full --draws 3 --data-dir FOLDER`" in card  # the measure command gives every figure


def test_a_cards_measure_command_states_a_sample_count_other_than_the_default(trained):
    from playground.card import render_card

    evaluation = {"steps": 50, "num": 128, "confident": 0.55, "class_entropy": 0.6, "fd": 1800.0, "eps_mse": {"10": 0.2},
                  "guidance": 1.5}
    assert "--baseline --full --num 128 --guidance 1.5 --data-dir FOLDER`" in render_card(trained, evaluation, "a test machine")
    assert "--num" not in render_card(trained, dict(evaluation, num=256), "a test machine")


def test_a_learning_curve_is_recorded_in_the_card_and_survives_a_resume(train_data, tmp_path):
    classifier = str(Path(__file__).resolve().parent.parent / "weights" / "classifier")
    train(tiny_config(train_data, tmp_path, curve_every=1, curve_classifier=classifier, stop_after=STEPS_PER_EPOCH + 1))
    out = train(tiny_config(train_data, tmp_path, curve_every=1, curve_classifier=classifier, resume=True))
    curve = json.loads((out / "training.json").read_text())["curve"]
    assert [point["step"] for point in curve] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]  # the first from before the stop
    assert [point["epochs"] for point in curve] == [1.0, 2.0]
    for point in curve:
        assert 0 <= point["confident"] <= 1 and 0 <= point["class_entropy"] <= 1 and 0 <= point["digit_accuracy"] <= 1


def test_a_run_ended_early_keeps_the_planned_schedule_exports_and_its_card_says_how(train_data, tmp_path):
    from playground.card import render_card

    ended = train(tiny_config(train_data, tmp_path / "ended", end_at_step=5))
    train(tiny_config(train_data, tmp_path / "stopped", stop_after=5))  # same 8-step schedule, stopped as if killed
    expected = load_file(tmp_path / "stopped" / "checkpoints" / CHECKPOINT_TENSORS)
    actual = load_file(tmp_path / "ended" / "checkpoints" / CHECKPOINT_TENSORS)
    assert all(torch.equal(actual[key], expected[key]) for key in expected)  # the learning rate followed the 2 epochs
    record = json.loads((ended / "training.json").read_text())
    assert record["steps"] == 5 and record["train_config"]["end_at_step"] == 5

    card = render_card(ended, None, "a test machine")
    assert "ended at step 5 of the 2-epoch schedule" in card
    command = next(line for line in card.splitlines() if "python -m playground.train" in line).split("`")[1]
    assert parse_args(command.split()[3:]).end_at_step == 5  # the reproduce command ends where the run did
