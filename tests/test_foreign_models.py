"""Any UNet2DModel in the playground: an RGB, 32×32, four-level, unconditional model (the layout of the well-known
ddpm-cifar10-32 checkpoint, at a tiny width) goes through every view of the live server; the numbers that only mean
something for MNIST digits step aside with one sentence."""

from __future__ import annotations

import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError
from safetensors.torch import load_file

from explainer import checks
from explainer import page
from playground import PlaygroundUNet
from tiny_weights import make_tiny_weights, write_pipeline

RGB_FOUR_LEVELS = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8, norm_num_groups=4,
)
UNCONDITIONAL = checks.DIGIT_CHOICES[0]
SKIPS_ON = [1] * checks.MAX_SKIP_SLIDERS


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = make_tiny_weights(tmp_path_factory.mktemp("weights"))  # the MNIST classifier is there, as on the Space
    torch.manual_seed(0)
    write_pipeline(root / "rgb", PlaygroundUNet(**RGB_FOUR_LEVELS))
    demo = page.build_demo(root, prefetch=False)
    _, url, _ = page.serve(demo, server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    yield Client(url, verbose=False)
    demo.close()


@pytest.fixture(scope="module")
def generated(client):
    return client.predict("rgb", checks.SAME_AS_A, UNCONDITIONAL, 1.5, 0, "ddim", 6, 2, *SKIPS_ON, [], False, api_name="/generate")


def test_generate_runs_and_the_classifier_steps_aside_with_a_sentence(generated):
    numbers = generated[-1]
    assert "`rgb` draws 3×32×32 images; our digit classifier reads 1×28×28 MNIST digits" in numbers
    assert "digits our classifier sees" not in numbers


def test_frames_ablate_and_features_work_at_every_level(client, generated):
    frames = generated[0]
    assert frames["channels"] == 3 and frames["steps"] == 6 and frames["grid"]["tile"] == [32, 32]
    skips_off_at_32 = [0] + SKIPS_ON[1:]
    ablated = client.predict("rgb", checks.SAME_AS_A, *skips_off_at_32, [], False, 5, api_name="/ablate")
    assert "skips at 32×32 × 0" in ablated[-1]
    for block in ("down_blocks.3.resnets.0", "mid_block.attentions.0", "up_blocks.0.resnets.0"):  # 4 px, bottleneck, 4 px
        images = client.predict(5, block, 0, "block", api_name="/features")
        assert images[0] is not None and images[1] is not None


def test_exports_hold_the_rgb_trajectory(client, generated):
    tensors = load_file(client.predict("A", api_name="/export_tensors"))
    assert tensors["x0"].shape == (6, 2, 3, 32, 32)
    assert client.predict("B", api_name="/export_frames").endswith(".zip")


def test_numbers_and_sweep_work_without_digit_verdicts(client, generated):
    eps_plot, spectrum_plot = client.predict(5, api_name="/numbers")
    assert eps_plot is not None and spectrum_plot is not None
    figure, table = client.predict(2, api_name="/sweep")
    assert "skips at 32×32 × 0" in table
    assert "| – | – |" in table and "nan" not in table  # no classifier columns to fill: not measured, not 0 %


def test_what_needs_digits_is_refused_by_name(client, generated):
    with pytest.raises(AppError, match="draws 3×32×32 images"):
        client.predict(0, api_name="/digit_decides")
    with pytest.raises(AppError, match="^Digit: `rgb` draws without labels"):
        client.predict("rgb", checks.SAME_AS_A, "7", 1.5, 0, "ddim", 6, 2, *SKIPS_ON, [], False, api_name="/generate")
