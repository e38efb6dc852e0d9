"""Shared by the benchmarks: the flagship's weights in both implementations, and interleaved timing."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def flagship_pair(weights: str | Path = ROOT / "weights" / "mnist"):
    """(ours, diffusers) U-Nets holding the same weights, in eval mode."""
    from diffusers import UNet2DModel

    from playground import PlaygroundUNet

    ours = PlaygroundUNet.from_pretrained(weights, subfolder="unet").eval()
    theirs = UNet2DModel.from_pretrained(weights, subfolder="unet").eval()
    return ours, theirs


def interleaved(candidates: dict, repeats: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each candidate, measured alternately so drift hits all alike."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
