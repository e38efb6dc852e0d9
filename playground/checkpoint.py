"""Loading a model folder as a public service must: safetensors only, and every broken file refused by name.

diffusers' `from_pretrained` is generous where a public app must not be. Given a folder without the
safetensors file it falls back to `diffusion_pytorch_model.bin`, a pickle that can run arbitrary code when
opened. Given a checkpoint with missing tensors it keeps the random initialisation and only logs a line,
so a model silently samples noise. A truncated file or a config.json that is not an object surfaces as an
OSError that says neither which file nor what is wrong with it.

`CheckedLoading` goes first in a model's bases and reads a local folder before diffusers does: the config
parses and builds the model; the weights file is there, is complete safetensors, and holds finite
floating-point tensors with exactly the names and shapes that config implies. Any problem is a ValueError
that starts with the file's path and says what is wrong. Nothing is ever unpickled.

Every layout `save_pretrained` writes is read: one file, a `variant` (`diffusion_pytorch_model.fp16.safetensors`),
and a sharded checkpoint (`max_shard_size`: an index JSON naming, for every tensor, the shard that holds it; each
shard is checked like a single file, and every tensor must sit in the shard its index names).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
WEIGHTS_NAME = "diffusion_pytorch_model"


class CheckedLoading:
    """Put before `ModelMixin` in a model's bases: `from_pretrained` then checks a local folder first."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        kwargs["use_safetensors"] = True  # diffusers then raises rather than falling back to a .bin pickle
        root = Path(pretrained_model_name_or_path)
        if not root.exists():  # a Hub id: diffusers resolves it, still safetensors only
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        folder = root / (kwargs.get("subfolder") or "")
        check_model_folder(cls, folder, kwargs.get("variant"))
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (OSError, ValueError, RuntimeError) as error:  # checked above; anything left still names the folder
            raise ValueError(f"{folder}: could not be loaded ({first_line(error)})") from None


def check_model_folder(model_class, folder: Path, variant: str | None = None) -> None:
    """Raise ValueError naming the file and the problem if `folder` does not hold a sound `model_class`."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: missing (expected a folder with {model_class.config_name} and {WEIGHTS_NAME}.safetensors)")
    config = _read_config(folder / model_class.config_name)
    weights_file, tensors, file_of = read_checkpoint(folder, variant)
    expected = _expected_shapes(model_class, config, folder / model_class.config_name)
    missing = sorted(expected.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(
            f"{weights_file}: does not match {model_class.config_name}: {len(missing)} tensors missing {missing[:3]}, "
            f"{len(unexpected)} unexpected {unexpected[:3]} (were the weights saved from another architecture?)"
        )
    for name, shape in expected.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"{file_of[name]}: tensor {name} has shape {tuple(tensor.shape)}, "
                             f"but {model_class.config_name} implies {tuple(shape)}")
        if not tensor.is_floating_point():
            raise ValueError(f"{file_of[name]}: tensor {name} is {tensor.dtype}, expected floating-point weights")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{file_of[name]}: tensor {name} holds NaN or infinite values")


def _read_config(config_file: Path, holding: str = "model arguments") -> dict:
    if not config_file.is_file():
        raise ValueError(f"{config_file}: missing (the model's architecture is read from it)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{config_file}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_file}: must hold a JSON object of {holding}, got a JSON {type(config).__name__}")
    return config


def read_checkpoint(folder: Path, variant: str | None = None) -> tuple[Path, dict[str, torch.Tensor], dict[str, Path]]:
    """A model folder's weights, one file or sharded: the file that names them all, the tensors, and each one's file."""
    suffix = f".{variant}" if variant else ""
    single = folder / f"{WEIGHTS_NAME}{suffix}.safetensors"
    index = folder / f"{WEIGHTS_NAME}.safetensors.index{suffix}.json"  # diffusers puts a variant before ".json"
    if single.is_file() or not index.is_file():
        tensors = _read_weights(single)
        return single, tensors, dict.fromkeys(tensors, single)
    weight_map = _read_config(index, holding="a weight_map").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index}: has no weight_map (tensor name -> shard file)")
    shards = set(weight_map.values())
    for shard in shards:
        if not isinstance(shard, str) or Path(shard).name != shard or not shard.endswith(".safetensors"):
            raise ValueError(f"{index}: names a shard {str(shard)[:80]!r} that is not a .safetensors file beside it")
    tensors = {}
    for shard in sorted(shards):
        held = _read_weights(index.parent / shard)
        misplaced = sorted(name for name in held if weight_map.get(name) != shard)
        if misplaced:
            raise ValueError(f"{index.parent / shard}: holds {misplaced[:3]}, which {index.name} places elsewhere")
        tensors |= held
    absent = sorted(weight_map.keys() - tensors.keys())
    if absent:
        raise ValueError(f"{index}: lists {len(absent)} tensors no shard holds {absent[:3]}")
    return index, tensors, {name: index.parent / weight_map[name] for name in tensors}


def _read_weights(weights_file: Path) -> dict[str, torch.Tensor]:
    if not weights_file.is_file():
        pickles = sorted(p.name for p in weights_file.parent.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ValueError(
                f"{weights_file}: missing; the folder holds only {', '.join(pickles)}, a pickle format that can run code "
                f"when opened, so it is never loaded. Convert it to safetensors (safetensors.torch.save_file)."
            )
        raise ValueError(f"{weights_file}: missing (the model's weights, in safetensors format)")
    try:
        return load_file(weights_file)
    except Exception as error:  # safetensors raises its own SafetensorError for a bad header or a short file
        raise ValueError(f"{weights_file}: not a complete safetensors file, it may be truncated or corrupt "
                         f"({first_line(error)})") from None


def _expected_shapes(model_class, config: dict, config_file: Path) -> dict[str, torch.Size]:
    """name -> shape of every tensor the config's model holds; built on the meta device, so nothing is allocated."""
    try:
        with torch.device("meta"):
            model = model_class.from_config(config)
    except Exception as error:  # any value in an untrusted file may break construction in its own way
        raise ValueError(f"{config_file}: does not describe a model {model_class.__name__} can build "
                         f"({type(error).__name__}: {first_line(error)})") from None
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
