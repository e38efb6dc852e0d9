"""Datasets as tensors in [-1, 1]: MNIST from its gzip IDX files or from the Hugging Face Hub, or a folder of images.

IDX (http://yann.lecun.com/exdb/mnist/): a big-endian header — two zero bytes, a type code (0x08 =
unsigned byte), the number of dimensions — then one uint32 per dimension, then the raw data.

The Hub's MNIST (dataset ylecun/mnist) is one parquet file per split, one row per digit: `image`, a
struct {bytes: a 28x28 greyscale PNG, path}, and `label` (int64). `mnist` is what the CLIs call: a folder
given reads its IDX files; none fetches the split from the Hub on first use (hf_hub_download: cached
under HF_HOME, HF_ENDPOINT and HF_HUB_OFFLINE apply) and checks the file's sha256 on every load.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
from pathlib import Path

import httpx2
import numpy as np
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import hf_hub_download
from PIL import Image

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
# the last 512 test digits, shipped so that evaluation runs in a fresh clone with nothing fetched
HELDOUT_DIR = Path(__file__).parent / "assets" / "mnist-heldout"

HUB_REPO = "ylecun/mnist"
# A commit, not "main": the bytes behind a model card's reproduce command cannot change under it, and a
# cached copy loads without asking the Hub. This is the commit that converted the dataset to parquet.
HUB_REVISION = "77f3279092a1c1579b2250db8eafed0ad422088c"
HUB_FILES = {  # split: (file in the repo, its sha256)
    "train": ("mnist/train-00000-of-00001.parquet", "f2c01285a9f89399335b00ee4e8d499dc4e46db5e39c74903ce5618d895eb3bf"),
    "test": ("mnist/test-00000-of-00001.parquet", "d49fcf556ce25b002b302e318ce4a11098bbfe5d4499c3f35d7c72297c52374b"),
}
HOW_TO_PROVIDE = ("go online once (the file is cached for later runs), or pass --data-dir FOLDER holding the standard IDX files "
                  + ", ".join(name for pair in MNIST_FILES.values() for name in pair))


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


def mnist(split: str = "train", data_dir: str | Path | None = None, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST as `load_mnist` gives it: from the IDX files in `data_dir`, or, with none, from the Hub."""
    if data_dir is not None:
        return load_mnist(data_dir, split, limit)
    return load_hub_mnist(split, limit)


def load_hub_mnist(split: str = "train", limit: int | None = None, *, endpoint: str | None = None,
                   cache_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A split of the Hub's MNIST, fetched once and checked every time; endpoint/cache_dir: None for the Hub's own defaults."""
    return read_hub_parquet(fetch_hub_mnist(split, endpoint=endpoint, cache_dir=cache_dir), limit)


def fetch_hub_mnist(split: str, *, endpoint: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """The split's parquet file in the Hub cache (downloaded if missing); ValueError if it is not the pinned file."""
    if split not in HUB_FILES:
        raise ValueError(f"split must be one of {list(HUB_FILES)}, got {split!r}")
    filename, expected = HUB_FILES[split]
    try:
        path = Path(hf_hub_download(HUB_REPO, filename, repo_type="dataset", revision=HUB_REVISION,
                                    endpoint=endpoint, cache_dir=cache_dir))
    except (OSError, httpx2.HTTPError) as error:  # hf_hub_download's own errors are OSErrors; a dropped download is httpx2's
        # hf_hub_download wraps a failed connection in a paragraph about the cache: the cause says what happened
        reason = "HF_HUB_OFFLINE is set and it is not in the cache" if hub_constants.is_offline_mode() else \
            _first_line(error.__cause__ or error)
        raise ValueError(f"{filename} of the Hub dataset {HUB_REPO}: cannot fetch the MNIST {split} split ({reason}); "
                         f"{HOW_TO_PROVIDE}") from None
    actual = _sha256(path)
    if actual != expected:
        stale = " and ".join(dict.fromkeys(str(p) for p in (path, path.resolve())))  # the snapshot link and its blob
        raise ValueError(f"{path}: sha256 {actual} is not {expected}, that of {HUB_REPO}/{filename} at {HUB_REVISION[:7]}: "
                         f"the cached copy is damaged or not the pinned file; delete {stale} to download it again, "
                         f"or pass --data-dir FOLDER with the standard IDX files")
    return path


def read_hub_parquet(path: str | Path, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Hub's image-dataset parquet layout -> what `load_mnist` returns; ValueError naming the file otherwise."""
    import pyarrow as pa  # only the Hub's files need it: a folder of IDX files loads without it
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        table = pq.read_table(path, columns=["image", "label"])
    except (OSError, pa.ArrowException) as error:
        raise ValueError(f"{path}: cannot read as a parquet file with image and label columns ({_first_line(error)})") from None
    if limit is not None:
        table = table.slice(0, limit)
    image_type, label_type = table.schema.field("image").type, table.schema.field("label").type
    if not pa.types.is_struct(image_type) or image_type.get_field_index("bytes") < 0:
        raise ValueError(f"{path}: column image is {image_type}, not a struct with the PNG in its bytes field")
    if not pa.types.is_integer(label_type) or table.column("label").null_count:
        raise ValueError(f"{path}: column label is {label_type} with {table.column('label').null_count} missing, not integers")
    arrays = []
    for row, png in enumerate(table.column("image").combine_chunks().field("bytes").to_pylist()):
        try:
            with Image.open(io.BytesIO(png or b"")) as image:
                if image.mode != "L" or image.size != (28, 28):
                    raise ValueError(f"a {image.mode} image of {image.size}")
                arrays.append(np.asarray(image, dtype=np.uint8))
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: row {row} is not a 28x28 greyscale PNG ({error})") from None
    images = np.stack(arrays) if arrays else np.zeros((0, 28, 28), dtype=np.uint8)
    return to_model_range(images), torch.from_numpy(table.column("label").to_numpy().astype(np.int64))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


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
