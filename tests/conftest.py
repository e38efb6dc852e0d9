"""Shared fixtures for the specification tests.

Every model here is a few thousand parameters at 8-16 pixels, so the whole suite runs in seconds on a
busy 2-core machine. Weights are always randomised with a fixed seed (`helpers.randomize`), so
zero-initialised layers cannot hide a difference and every run sees the same numbers.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach the network
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest
import torch

torch.set_num_threads(1)  # the machine is shared; tiny models gain nothing from more threads

from helpers import MNIST_SLICE, THREE_LEVEL_UNET, TINY_UNET, build_unet, make_input
from playground import PlaygroundUNet, load_pipeline
from playground.data import MNIST_FILES
from tiny_weights import make_tiny_weights


@pytest.fixture(autouse=True)
def no_idle_time_run_outlives_its_test():
    """A server's idle-time runs (serving.NETWORK_THREAD) must not reach into the next test's monkeypatches."""
    yield
    serving = sys.modules.get("playground.serving")
    if serving is not None:
        assert serving.NETWORK_THREAD.wait_until_idle(timeout=120), "the network thread is still busy after the test"


@pytest.fixture
def tiny_unet() -> PlaygroundUNet:
    return build_unet(TINY_UNET)


@pytest.fixture
def three_level_unet() -> PlaygroundUNet:
    return build_unet(THREE_LEVEL_UNET)


@pytest.fixture
def sample_input(three_level_unet) -> torch.Tensor:
    """A batch of 2 inputs for `three_level_unet`."""
    return make_input(three_level_unet)


@pytest.fixture
def timesteps() -> torch.Tensor:
    """One timestep per batch element, far apart, so a per-sample mix-up would show."""
    return torch.tensor([3, 871])


@pytest.fixture
def mnist_slice() -> Path:
    return MNIST_SLICE


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    """The committed slice of MNIST *test* files, under the *train* names train() reads."""
    folder = tmp_path_factory.mktemp("mnist")
    for source, target in zip(MNIST_FILES["test"], MNIST_FILES["train"]):
        shutil.copy(MNIST_SLICE / source, folder / target)
    return folder


# A tiny pipeline folder (unet + scheduler, class-conditional), written once per test module.
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def model(weights):
    return load_pipeline(weights / "tiny")
