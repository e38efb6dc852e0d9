"""Data loading: MNIST from its standard gzip IDX files, or a folder of images, as tensors in [-1, 1].

The fixture tests/data/mnist-slice/ holds the first 64 MNIST test images and labels, in the standard
file names and format (gzip of: 0, 0, 0x08, ndim, one big-endian uint32 per dimension, raw bytes).
"""

from __future__ import annotations

import gzip
import shutil
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from playground.data import MNIST_FILES, load_image_folder, load_mnist, read_idx

IMAGES, LABELS = MNIST_FILES["test"]


def raw_idx(path) -> bytes:
    return gzip.decompress(path.read_bytes())


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


@pytest.fixture
def broken_copy(tmp_path, mnist_slice):
    """A copy of the slice in tmp_path, with one file's content replaced by the test."""
    for name in (IMAGES, LABELS):
        shutil.copy(mnist_slice / name, tmp_path / name)

    def replace(name: str, content: bytes, compress: bool = True):
        (tmp_path / name).write_bytes(gzip.compress(content) if compress else content)
        return tmp_path

    return replace


def test_the_slice_loads_as_64_images_in_model_range(mnist_slice):
    images, labels = load_mnist(mnist_slice, "test")
    assert images.shape == (64, 1, 28, 28)
    assert images.dtype == torch.float32
    assert images.min() == -1.0 and images.max() == 1.0  # MNIST uses the full 0..255 range


def test_the_slice_labels_are_the_first_64_test_labels(mnist_slice):
    _, labels = load_mnist(mnist_slice, "test")
    on_disk = np.frombuffer(raw_idx(mnist_slice / LABELS), dtype=np.uint8, offset=8)
    assert labels.dtype == torch.int64
    assert labels.tolist() == on_disk.tolist()
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the well-known start of the MNIST test set
    assert 0 <= labels.min() and labels.max() <= 9


def test_pixels_map_linearly_from_bytes_to_model_range(mnist_slice):
    images, _ = load_mnist(mnist_slice, "test")
    on_disk = np.frombuffer(raw_idx(mnist_slice / IMAGES), dtype=np.uint8, offset=16).reshape(64, 1, 28, 28)
    assert torch.allclose(images, torch.from_numpy(on_disk.astype(np.float32)) / 127.5 - 1)


def test_limit_keeps_the_first_images(mnist_slice):
    images, labels = load_mnist(mnist_slice, "test", limit=10)
    all_images, all_labels = load_mnist(mnist_slice, "test")
    assert torch.equal(images, all_images[:10]) and torch.equal(labels, all_labels[:10])


def test_read_idx_reads_plain_and_gzip_files(tmp_path, mnist_slice):
    plain = tmp_path / "labels-idx1-ubyte"
    plain.write_bytes(raw_idx(mnist_slice / LABELS))
    assert np.array_equal(read_idx(plain), read_idx(mnist_slice / LABELS))


def test_an_unknown_split_raises_valueerror(mnist_slice):
    with pytest.raises(ValueError, match="split"):
        load_mnist(mnist_slice, "validation")


def test_a_missing_file_raises_valueerror_naming_it(tmp_path, mnist_slice):
    shutil.copy(mnist_slice / LABELS, tmp_path / LABELS)
    with pytest.raises(ValueError, match=IMAGES):
        load_mnist(tmp_path, "test")


def test_truncated_data_raises_valueerror_naming_the_file(broken_copy, mnist_slice):
    folder = broken_copy(IMAGES, raw_idx(mnist_slice / IMAGES)[:-100])
    with pytest.raises(ValueError, match=IMAGES):
        load_mnist(folder, "test")


def test_a_truncated_gzip_stream_raises_valueerror_naming_the_file(broken_copy, mnist_slice):
    folder = broken_copy(LABELS, (mnist_slice / LABELS).read_bytes()[:-10], compress=False)
    with pytest.raises(ValueError, match=LABELS):
        load_mnist(folder, "test")


def test_a_truncated_header_raises_valueerror_naming_the_file(broken_copy):
    folder = broken_copy(LABELS, bytes([0, 0, 0x08, 1, 0, 0]))
    with pytest.raises(ValueError, match=LABELS):
        load_mnist(folder, "test")


@pytest.mark.parametrize("magic", [b"\x00\x00\x0d\x03", b"\x1f\x8b\x08\x00", b"PK\x03\x04"], ids=["float-type", "gzip-twice", "zip"])
def test_a_wrong_magic_number_raises_valueerror_naming_the_file(broken_copy, mnist_slice, magic):
    folder = broken_copy(IMAGES, magic + raw_idx(mnist_slice / IMAGES)[4:])
    with pytest.raises(ValueError, match=IMAGES):
        load_mnist(folder, "test")


def test_a_file_that_is_not_gzip_raises_valueerror_naming_the_file(broken_copy):
    folder = broken_copy(IMAGES, b"this is not gzip", compress=False)
    with pytest.raises(ValueError, match=IMAGES):
        load_mnist(folder, "test")


def test_images_and_labels_of_different_lengths_raise_valueerror(broken_copy):
    folder = broken_copy(LABELS, idx_bytes(np.arange(10) % 10))
    with pytest.raises(ValueError, match=LABELS):
        load_mnist(folder, "test")


# --- a folder of images -------------------------------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path):
    """Three constant 20x20 greyscale PNGs, written out of name order, and a file that is not an image."""
    for name, value in (("b.png", 255), ("a.png", 0), ("c.png", 128)):
        Image.fromarray(np.full((20, 20), value, dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_load_image_folder_gives_resized_images_in_model_range_sorted_by_name(image_folder):
    images = load_image_folder(image_folder, size=16)
    assert images.shape == (3, 1, 16, 16)
    assert images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert torch.allclose(images.mean(dim=(1, 2, 3)), torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]), atol=1e-5)  # a, b, c


def test_load_image_folder_converts_to_rgb_on_request(image_folder):
    images = load_image_folder(image_folder, size=8, channels=3)
    assert images.shape == (3, 3, 8, 8)
    assert torch.allclose(images[:, 0], images[:, 2])  # grey stays grey


def test_an_empty_image_folder_raises_valueerror_naming_it(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        load_image_folder(tmp_path, size=16)


def test_an_unreadable_image_raises_valueerror_naming_it(image_folder):
    (image_folder / "d.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="d.png"):
        load_image_folder(image_folder, size=16)


def test_an_unsupported_channel_count_raises_valueerror(image_folder):
    with pytest.raises(ValueError, match="channels"):
        load_image_folder(image_folder, size=16, channels=2)
