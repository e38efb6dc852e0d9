"""A model soup: the uniform average of the U-Net weights of several fine-tunes of one model.

    python -m playground.soup --out weights/mnist weights/mnist runs/mnist-branch1 runs/mnist-branch2

Fine-tunes started from the same weights stay in one basin of the loss, so their average is itself a good
model, and usually a better one than any of them (Wortsman et al., "Model soups", 2022): the noise each
branch's last steps left in its weights averages out. The ingredients must share architecture and noise
schedule. The soup is written as a pipeline folder like the trainer's, and its `training.json` keeps every
ingredient's record, so its card tells the whole story (`playground.card`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file

from .checkpoint import check_model_folder
from .cli import ShowDefaults
from .train import model_settings, write_pipeline_folder
from .unet import PlaygroundUNet

WEIGHTS_FILE = Path("unet") / "diffusion_pytorch_model.safetensors"


def make_soup(ingredients: list[str | Path], out: str | Path) -> Path:
    """Average the U-Nets of the pipeline folders `ingredients` into a pipeline folder at `out` (may be one of them)."""
    folders = [Path(folder) for folder in ingredients]
    if len(folders) < 2:
        raise ValueError(f"ingredients: a soup needs at least two pipeline folders, got {len(folders)}")
    for folder in folders:
        check_model_folder(PlaygroundUNet, folder / "unet")
    first = folders[0]
    for part, what in (("unet/config.json", "architecture"), ("scheduler/scheduler_config.json", "noise schedule")):
        expected = _settings(first / part)
        for folder in folders[1:]:
            if _settings(folder / part) != expected:
                raise ValueError(f"ingredients: {folder / part} differs from {first / part}: "
                                 f"a soup averages models of one {what}")
    records = [_training_record(folder) for folder in folders]

    # read everything before writing anything: `out` may be an ingredient
    states = [load_file(folder / WEIGHTS_FILE) for folder in folders]
    average = {name: torch.stack([state[name] for state in states]).mean(dim=0) for name in states[0]}
    unet = PlaygroundUNet.from_config(_settings(first / "unet" / "config.json"))
    unet.load_state_dict(average)
    scheduler = DDPMScheduler.from_pretrained(first, subfolder="scheduler")
    return write_pipeline_folder(Path(out), unet, scheduler, {"soup_of": records})


def _settings(config_file: Path) -> dict:
    return model_settings(_json_object(config_file))


def _training_record(folder: Path) -> dict:
    return _json_object(folder / "training.json")  # the soup's card tells how each ingredient was trained


def _json_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"ingredients: {path} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"ingredients: {path} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"ingredients: {path} must hold a JSON object")
    return value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=ShowDefaults)
    p.add_argument("--out", required=True, help="pipeline folder to write (may be one of the ingredients)")
    p.add_argument("ingredients", nargs="+", help="pipeline folders to average (same architecture and schedule)")
    args = p.parse_args(argv)
    try:
        print(make_soup(args.ingredients, args.out))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
