"""Data loading: MNIST from its standard gzip IDX files or the Hugging Face Hub, or a folder of images, as tensors in [-1, 1].

The fixture tests/data/mnist-slice/ holds the first 64 MNIST test images and labels, in the standard
file names and format (gzip of: 0, 0, 0x08, ndim, one big-endian uint32 per dimension, raw bytes).

The Hub download runs for real, through hf_hub_download, against a stand-in on 127.0.0.1 that answers as
the Hub's resolve URLs do (HEAD: X-Repo-Commit, ETag, Content-Length; GET: the bytes), serving a parquet
file in the Hub's MNIST layout written here from the slice. CI cannot reach the Hub itself.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from huggingface_hub import constants as hub_constants
from PIL import Image

import playground.data as data
from playground.data import MNIST_FILES, load_image_folder, load_mnist, read_idx

ROOT = Path(__file__).resolve().parent.parent

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


# --- MNIST from the Hugging Face Hub ---------------------------------------------------------------------

HUB_TEST_FILE = data.HUB_FILES["test"][0]
RESOLVE = f"/datasets/{data.HUB_REPO}/resolve/{data.HUB_REVISION}/{HUB_TEST_FILE}"


def hub_parquet(images: np.ndarray, labels: np.ndarray, pngs: list | None = None) -> bytes:
    """A parquet file as the Hub's MNIST has it: image {bytes: PNG, path}, label int64."""
    if pngs is None:
        pngs = []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            pngs.append(buffer.getvalue())
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array([{"bytes": png, "path": None} for png in pngs], type=image_type),
                      "label": pa.array(labels.astype(np.int64))})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


@pytest.fixture
def slice_parquet(mnist_slice) -> bytes:
    return hub_parquet(read_idx(mnist_slice / IMAGES), read_idx(mnist_slice / LABELS))


class StandInHub(ThreadingHTTPServer):
    """The Hub's file-resolve URLs for one repo at one commit: `files` maps a path in the repo to its bytes."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), StandInHandler)
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"

    def file_requests(self) -> list[tuple[str, str]]:
        """Those for repo files: huggingface_hub also asks {endpoint}/api/agent-harnesses once a day for its user agent."""
        return [(method, path) for method, path in self.requests if path.startswith("/datasets/")]


class StandInHandler(BaseHTTPRequestHandler):
    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)

    def answer(self, body: bool):
        path = unquote(self.path)
        self.server.requests.append((self.command, path))
        prefix = f"/datasets/{data.HUB_REPO}/resolve/{data.HUB_REVISION}/"
        content = self.server.files.get(path[len(prefix):]) if path.startswith(prefix) else None
        if content is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Repo-Commit", data.HUB_REVISION)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", data.HUB_REVISION)
        self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')  # an LFS file's ETag is its sha256
        self.send_header("Content-Length", str(len(content)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if body:
            self.wfile.write(content)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(monkeypatch):
    """The stand-in, running; online for huggingface_hub (conftest sets HF_HUB_OFFLINE for every other test)."""
    server = StandInHub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def serve_test_split(hub, slice_parquet, monkeypatch):
    """The slice as the Hub's test split, its sha256 the pinned one."""
    hub.files[HUB_TEST_FILE] = slice_parquet
    monkeypatch.setattr(data, "HUB_FILES", {**data.HUB_FILES, "test": (HUB_TEST_FILE, hashlib.sha256(slice_parquet).hexdigest())})
    return hub


def test_the_hub_split_is_downloaded_at_the_pinned_commit_and_decodes_as_the_idx_files_do(serve_test_split, tmp_path, mnist_slice):
    images, labels = data.load_hub_mnist("test", endpoint=serve_test_split.endpoint, cache_dir=tmp_path)
    expected_images, expected_labels = load_mnist(mnist_slice, "test")
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
    assert serve_test_split.file_requests() == [("HEAD", RESOLVE), ("GET", RESOLVE)]


def test_the_hub_split_keeps_the_first_images_under_a_limit(serve_test_split, tmp_path, mnist_slice):
    images, labels = data.load_hub_mnist("test", 10, endpoint=serve_test_split.endpoint, cache_dir=tmp_path)
    expected_images, expected_labels = load_mnist(mnist_slice, "test", limit=10)
    assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)


def test_a_cached_split_loads_without_asking_the_hub_online_or_offline(serve_test_split, tmp_path, monkeypatch):
    first = data.load_hub_mnist("test", endpoint=serve_test_split.endpoint, cache_dir=tmp_path)
    asked = len(serve_test_split.file_requests())
    online = data.load_hub_mnist("test", endpoint=serve_test_split.endpoint, cache_dir=tmp_path)
    assert len(serve_test_split.file_requests()) == asked  # a commit, not a branch: nothing to look up
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    serve_test_split.files.clear()
    offline = data.load_hub_mnist("test", endpoint=serve_test_split.endpoint, cache_dir=tmp_path)
    assert len(serve_test_split.file_requests()) == asked
    for again in (online, offline):
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_a_download_whose_sha256_is_not_the_pinned_one_is_refused(hub, slice_parquet, tmp_path, monkeypatch):
    hub.files[HUB_TEST_FILE] = slice_parquet
    monkeypatch.setattr(data, "HUB_FILES", {**data.HUB_FILES, "test": (HUB_TEST_FILE, "0" * 64)})
    with pytest.raises(ValueError, match=f"{HUB_TEST_FILE}: sha256 {hashlib.sha256(slice_parquet).hexdigest()} is not {'0' * 64}"):
        data.load_hub_mnist("test", endpoint=hub.endpoint, cache_dir=tmp_path)


def test_a_cached_copy_damaged_after_download_is_refused_and_the_advice_recovers(serve_test_split, tmp_path):
    path = data.fetch_hub_mnist("test", endpoint=serve_test_split.endpoint, cache_dir=tmp_path)
    blob = path.resolve()
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match="sha256") as refused:
        data.load_hub_mnist("test", endpoint=serve_test_split.endpoint, cache_dir=tmp_path)
    message = str(refused.value)
    assert f"delete {path} and {blob}" in message
    path.unlink()
    blob.unlink()
    images, _ = data.load_hub_mnist("test", endpoint=serve_test_split.endpoint, cache_dir=tmp_path)
    assert images.shape == (64, 1, 28, 28)


def one_line_error_naming_the_remedy(error: ValueError, filename: str) -> str:
    message = str(error)
    assert "\n" not in message
    assert f"{filename} of the Hub dataset {data.HUB_REPO}" in message
    assert "--data-dir FOLDER" in message and "go online once" in message
    for names in MNIST_FILES.values():
        for name in names:
            assert name in message
    return message


def test_offline_without_a_cached_copy_the_error_is_one_line_saying_how_to_provide_the_data(tmp_path, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError) as failed:
        data.load_hub_mnist("train", cache_dir=tmp_path)
    assert "HF_HUB_OFFLINE is set" in one_line_error_naming_the_remedy(failed.value, data.HUB_FILES["train"][0])


def test_a_hub_without_the_file_gives_the_same_one_line_error(hub, tmp_path):
    with pytest.raises(ValueError) as failed:
        data.load_hub_mnist("test", endpoint=hub.endpoint, cache_dir=tmp_path)
    one_line_error_naming_the_remedy(failed.value, HUB_TEST_FILE)
    assert hub.file_requests() == [("HEAD", RESOLVE)]


def test_mnist_reads_a_folder_when_given_and_the_hub_cache_otherwise(mnist_slice, tmp_path, monkeypatch):
    images, labels = data.mnist("test", mnist_slice, limit=5)
    assert images.shape == (5, 1, 28, 28) and labels.tolist() == [7, 2, 1, 0, 4]
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))  # not a real cache a developer may have
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set"):
        data.mnist("test")


def test_the_default_fetch_follows_hf_endpoint_and_hf_home(serve_test_split, tmp_path):
    """A fresh interpreter, as a CLI runs: huggingface_hub reads HF_ENDPOINT and HF_HOME when it is imported."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(HF_ENDPOINT=serve_test_split.endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="0", PYTHONPATH=str(ROOT))
    code = ("import sys; import playground.data as d; d.HUB_FILES['test'] = (d.HUB_FILES['test'][0], sys.argv[1]); "
            "x, y = d.mnist('test'); print(tuple(x.shape), y[:5].tolist())")
    result = subprocess.run([sys.executable, "-c", code, data.HUB_FILES["test"][1]], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(64, 1, 28, 28) [7, 2, 1, 0, 4]"
    assert serve_test_split.file_requests() == [("HEAD", RESOLVE), ("GET", RESOLVE)]
    snapshot = tmp_path / "hf" / "hub" / "datasets--ylecun--mnist" / "snapshots" / data.HUB_REVISION / HUB_TEST_FILE
    assert snapshot.is_file()


def test_a_row_that_is_not_a_28x28_greyscale_png_is_named(tmp_path, mnist_slice):
    images, labels = read_idx(mnist_slice / IMAGES)[:3], read_idx(mnist_slice / LABELS)[:3]
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((28, 28, 3), dtype=np.uint8)).save(buffer, format="PNG")
    good = hub_parquet(images[:1], labels[:1])
    path = tmp_path / "broken.parquet"
    path.write_bytes(hub_parquet(images, labels, pngs=[pq.read_table(io.BytesIO(good))["image"][0]["bytes"].as_py(),
                                                       buffer.getvalue(), b"not a png"]))
    with pytest.raises(ValueError, match="broken.parquet: row 1 is not a 28x28 greyscale PNG"):
        data.read_hub_parquet(path)
    assert data.read_hub_parquet(path, limit=1)[0].shape == (1, 1, 28, 28)


def test_a_file_that_is_not_parquet_or_lacks_the_columns_is_named(tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="a.parquet: cannot read as a parquet file"):
        data.read_hub_parquet(tmp_path / "a.parquet")
    pq.write_table(pa.table({"pixels": [1, 2]}), tmp_path / "b.parquet")
    with pytest.raises(ValueError, match="b.parquet: cannot read as a parquet file"):
        data.read_hub_parquet(tmp_path / "b.parquet")


def test_the_training_clis_default_to_the_hub_and_the_evaluation_clis_to_the_shipped_slice(tmp_path, monkeypatch, capsys):
    from playground import classifier, evaluate, study, train

    assert train.parse_args(["--out", "weights/x"]).data_dir is None
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    assert classifier.main(["--out", str(tmp_path / "classifier")]) == 2
    assert "--data-dir FOLDER" in capsys.readouterr().err
    monkeypatch.setenv("COLUMNS", "1000")  # argparse would break a long path across lines
    for cli in (evaluate, study):
        with pytest.raises(SystemExit):
            cli.main(["--help"])
        assert f"(default: {data.HELDOUT_DIR}, the 512 held-out test digits the package ships)" in capsys.readouterr().out
    assert len(load_mnist(data.HELDOUT_DIR, "test")[1]) == 512
