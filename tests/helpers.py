"""Tiny model configs and helpers shared by the tests (the fixtures built on them are in conftest.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from diffusers import DDPMScheduler

from playground import DiffusionModel, PlaygroundUNet

MNIST_SLICE = Path(__file__).parent / "data" / "mnist-slice"  # the first 64 MNIST test images and labels

# Two levels (16 -> 8 px), attention at the coarse level, one resnet per level: the smallest real U-Net.
TINY_UNET = dict(
    sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=8, norm_num_groups=4,
)

# Three levels (16 / 8 / 4 px), attention at 8 px, 4 px and in the bottleneck: several skip resolutions
# and several attention sites, for ablation and feature capture.
THREE_LEVEL_UNET = dict(
    sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16, 16), layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=8, norm_num_groups=4,
)


def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Add seeded Gaussian noise to every parameter, so no layer is left at a zero or identity init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return model.eval()


def build_unet(config: dict, seed: int = 0, **overrides) -> PlaygroundUNet:
    """A PlaygroundUNet of `config` with randomised weights, in eval mode."""
    torch.manual_seed(seed)
    return randomize(PlaygroundUNet(**{**config, **overrides}), seed)


def make_input(unet, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """A seeded (batch, in_channels, H, W) input at the model's sample_size."""
    size = unet.config.sample_size
    return torch.randn(batch, unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(seed))


class FormulaUNet(torch.nn.Module):
    """A stand-in for a U-Net whose ε̂ is a given function `eps_of(x_t, t, labels)`: a model with a known answer.

    It takes the keyword arguments `PlaygroundUNet.forward` takes (ablation, capture_features, bottleneck_shift) and
    ignores them; `calls` keeps every (x_t, t, labels) it was given.
    """

    def __init__(self, eps_of, sample_size: int = 8, in_channels: int = 1, num_class_embeds: int | None = None,
                 dtype=torch.float64):
        super().__init__()
        self.eps_of = eps_of
        self.config = SimpleNamespace(sample_size=sample_size, in_channels=in_channels, num_class_embeds=num_class_embeds)
        self.conv_in = torch.nn.Conv2d(in_channels, 1, 1).to(dtype)  # DiffusionModel.to_unet reads device and dtype here
        self.calls = []

    def forward(self, sample, timestep, class_labels=None, return_dict=True, **ignored):
        t = torch.as_tensor(timestep).reshape(-1).expand(len(sample))
        self.calls.append((sample.detach().clone(), t.clone(), None if class_labels is None else class_labels.clone()))
        return SimpleNamespace(sample=self.eps_of(sample, t, class_labels), features={})


def formula_model(eps_of, **unet_options) -> DiffusionModel:
    """A DiffusionModel over a FormulaUNet, on the flagship's schedule: 1000 linear steps, x̂0 never clipped."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    return DiffusionModel("formula", FormulaUNet(eps_of, **unet_options), dict(scheduler.config))


def alphas_cumprod() -> torch.Tensor:
    """(1000,) ᾱ_t of the standard linear schedule (the one `formula_model` and the tiny weights use), float64."""
    return DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.double()
