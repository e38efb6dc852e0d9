"""Datasets as tensors in [-1, 1]: MNIST from its gzip IDX files, or a folder of images.

IDX (http://yann.lecun.com/exdb/mnist/): a big-endian header — two zero bytes, a type code (0x08 =
unsigned byte), the number of dimensions — then one uint32 per dimension, then the raw data.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzip or plain) of unsigned bytes; ValueError naming the file if it is not one."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise ValueError(f"{path}: cannot read as an IDX file ({error})") from None
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{path}: IDX header is truncated or declares no dimensions")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX header promises {expected} bytes of data for shape {shape}, file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def to_model_range(images_uint8: np.ndarray) -> torch.Tensor:
    """(N, H, W) uint8 -> (N, 1, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(images_uint8.astype(np.float32)).div_(127.5).sub_(1.0).unsqueeze(1)


def load_mnist(data_dir: str | Path, split: str = "train", limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST images (N, 1, 28, 28) in [-1, 1] and labels (N,) int64, from the standard gzip IDX files."""
    if split not in MNIST_FILES:
        raise ValueError(f"split must be one of {list(MNIST_FILES)}, got {split!r}")
    data_dir = Path(data_dir)
    image_file, label_file = (data_dir / name for name in MNIST_FILES[split])
    for path in (image_file, label_file):
        if not path.exists():
            raise ValueError(f"{path}: file not found (expected the standard MNIST file names in {data_dir})")
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or labels.ndim != 1:
        raise ValueError(f"{image_file}: expected images (N, H, W) and labels (N,), got {images.shape} and {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{label_file}: {len(labels)} labels for {len(images)} images in {image_file.name}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return to_model_range(images), torch.from_numpy(labels.astype(np.int64))


def load_image_folder(folder: str | Path, size: int, channels: int = 1) -> torch.Tensor:
    """Every image in `folder` (sorted by name), resized to size x size -> (N, channels, size, size) in [-1, 1]."""
    folder = Path(folder)
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not paths:
        raise ValueError(f"{folder}: no images found (looked for {sorted(IMAGE_SUFFIXES)})")
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    arrays = []
    for path in paths:
        try:
            with Image.open(path) as image:
                arrays.append(np.asarray(image.convert(mode).resize((size, size), Image.BICUBIC), dtype=np.float32))
        except OSError as error:
            raise ValueError(f"{path}: not a readable image ({error})") from None
    stacked = torch.from_numpy(np.stack(arrays)).div_(127.5).sub_(1.0)
    return stacked.unsqueeze(1) if channels == 1 else stacked.permute(0, 3, 1, 2).contiguous()
