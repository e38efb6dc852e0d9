"""A weights folder of tiny random models in the shipped layout, for tests of the app and the CLIs."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from playground import PlaygroundUNet
from playground.classifier import DigitClassifier

TINY_UNET = dict(
    sample_size=28, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=8, norm_num_groups=4, num_class_embeds=11,
)


def write_pipeline(folder: Path, unet: PlaygroundUNet) -> Path:
    unet.save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "DDPMPipeline", "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}))
    return folder


def make_tiny_weights(root: Path) -> Path:
    """root/{tiny, tiny-noskip, classifier}: seeded random weights, loadable like the shipped ones."""
    torch.manual_seed(0)
    write_pipeline(root / "tiny", PlaygroundUNet(**TINY_UNET))
    write_pipeline(root / "tiny-noskip", PlaygroundUNet(**TINY_UNET, training_ablation={"skip_scale": {"28": 0, "14": 0}}))
    DigitClassifier(channels=(4, 8), feature_dim=16).save_pretrained(root / "classifier")
    return root
