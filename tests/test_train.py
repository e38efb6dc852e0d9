"""Training: a few steps on 64 MNIST digits export a loadable pipeline, and a stopped run resumes exactly."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from diffusers import DDPMPipeline, UNet2DModel
from safetensors.torch import load_file

from helpers import MNIST_SLICE
from playground import PlaygroundUNet
from playground.data import MNIST_FILES
from playground.train import CHECKPOINT_STATE, CHECKPOINT_TENSORS, TrainConfig, parse_args, train

STEPS_PER_EPOCH = 64 // 16


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    """The committed slice of MNIST *test* files, under the *train* names train() reads."""
    folder = tmp_path_factory.mktemp("mnist")
    for source, target in zip(MNIST_FILES["test"], MNIST_FILES["train"]):
        shutil.copy(MNIST_SLICE / source, folder / target)
    return folder


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

    continued = train(tiny_config(train_data, tmp_path, epochs=1, init_from=str(trained), lr=5e-4, uncond_prob=0.4))
    record = json.loads((continued / "training.json").read_text())
    first_stage = json.loads((trained / "training.json").read_text())
    assert first_stage.pop("earlier_stages") == []
    assert record["earlier_stages"] == [first_stage]  # flattened: a third stage would list two, oldest first
    assert record["train_config"]["init_from"] == str(trained)

    card = render_card(continued, None, "a test machine")
    assert "stage 1, from random initialisation" in card
    assert "stage 2, from the previous stage's EMA weights" in card
    assert f"in all: {2 * first_stage['epochs_done']:.2f} epochs" in card
    assert "--checkpoint-dir checkpoints/out-stage2" in card  # stage 2 must not resume stage 1's checkpoints
    stage_1, stage_2 = (line for line in card.splitlines() if line.startswith("- stage") and "python -m playground.train" in line)
    assert "--uncond-prob" not in stage_1 and "--uncond-prob 0.4" in stage_2  # a changed setting is stated
    assert "null label for 15% of examples" in card and "null label for 40% of examples" in card
    assert parse_args(stage_2.split("`")[1].split()[3:]).uncond_prob == 0.4  # the command parses back
