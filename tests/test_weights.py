"""The shipped weights: every model loads in ours and in stock diffusers, computes the same function, and
the variants carry their training ablation."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, UNet2DModel

from playground import Ablation, load_pipeline
from playground.classifier import accuracy, load_classifier
from playground.registry import HELDOUT_DIR, ModelRegistry
from playground.data import load_mnist

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
PIPELINES = sorted(p.name for p in WEIGHTS.iterdir() if (p / "model_index.json").is_file())
EXPECTED_TRAINING_ABLATION = {"mnist": Ablation(), "mnist-noskip": "skip", "mnist-noattn": "attention"}


def test_the_flagship_and_the_classifier_are_shipped():
    assert "mnist" in PIPELINES
    assert (WEIGHTS / "classifier" / "diffusion_pytorch_model.safetensors").is_file()


def test_weights_are_safetensors_only_and_small():
    for path in WEIGHTS.rglob("*"):
        if path.is_file():
            assert path.suffix not in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}, path
            assert path.stat().st_size < 10 * 2**20, f"{path} is over 10 MB (Spaces would need LFS)"


@pytest.mark.parametrize("name", PIPELINES)
def test_stock_diffusers_computes_the_same_function(name):
    ours = load_pipeline(WEIGHTS / name).unet
    theirs = UNet2DModel.from_pretrained(WEIGHTS / name, subfolder="unet").eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 28, 28, generator=generator)
    t = torch.tensor([10, 500, 990])
    y = torch.tensor([3, 7, 10])
    intact_for_diffusers = ours.training_ablation.is_intact
    with torch.inference_mode():
        a, b = ours(x, t, y).sample, theirs(x, t, y).sample
    if intact_for_diffusers:
        assert (a - b).abs().max() / b.abs().max() < 1e-4
    else:  # stock diffusers cannot switch parts off: it computes the intact network with these weights
        assert not torch.allclose(a, b, atol=1e-3)


@pytest.mark.parametrize("name", PIPELINES)
def test_ddpm_pipeline_loads_every_component(name):
    pipeline = DDPMPipeline.from_pretrained(WEIGHTS / name)
    assert pipeline.unet.config.sample_size == 28 and pipeline.scheduler.config.num_train_timesteps == 1000


@pytest.mark.parametrize("name", PIPELINES)
def test_variants_record_what_they_were_trained_without(name):
    ablation = load_pipeline(WEIGHTS / name).unet.training_ablation
    expected = EXPECTED_TRAINING_ABLATION.get(name)
    if expected == "skip":
        assert ablation.skip_scale and all(gain == 0 for _, gain in ablation.skip_scale)
    elif expected == "attention":
        assert ablation.attention_off == set(load_pipeline(WEIGHTS / name).unet.attention_sites)
    else:
        assert ablation.is_intact


def test_flagship_is_class_conditional_with_a_null_label():
    config = json.loads((WEIGHTS / "mnist" / "unet" / "config.json").read_text())
    assert config["num_class_embeds"] == 11


def test_classifier_recognises_held_out_digits():
    images, labels = load_mnist(HELDOUT_DIR, "test")
    assert accuracy(load_classifier(WEIGHTS / "classifier"), images, labels) >= 0.98


def test_the_app_finds_every_shipped_model():
    registry = ModelRegistry(WEIGHTS)
    assert registry.load_all() == {} and registry.available == PIPELINES
