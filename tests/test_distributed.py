"""Training on N processes (`accelerate launch`): each trains on its own slice of one global batch, so two processes
of batch 8 take the steps one process of batch 16 takes, and a second process adds images, not copies."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from playground import PlaygroundUNet

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--limit", "64", "--warmup-steps", "2", "--block-out-channels", "8", "16", "--attention-levels", "1",
         "--log-every", "1", "--checkpoint-every", "2", "--epochs", "2", "--threads", "1"]
STEP_LOSS = re.compile(r"step (\d+)/\d+ epoch [\d.]+ loss ([\d.]+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(root: Path, data: Path, name: str, batch: int, processes: int = 1) -> tuple[torch.Tensor, dict[int, str]]:
    """The trained network's prediction on a fixed input, and the loss it printed at each step."""
    launcher = ([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                 "--main_process_port", str(free_port()), "-m", "playground.train"] if processes > 1
                else [sys.executable, "-m", "playground.train"])
    result = subprocess.run([*launcher, "--data-dir", str(data), "--out", str(root / name), "--checkpoint-dir",
                             str(root / f"{name}-checkpoints"), "--batch-size", str(batch), *FLAGS],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    losses = {int(step): loss for step, loss in STEP_LOSS.findall(result.stdout)}
    unet = PlaygroundUNet.from_pretrained(root / name, subfolder="unet").eval()
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return unet(x, torch.tensor([10, 300, 600, 900]), torch.tensor([1, 5, 10, 3])).sample, losses


def test_two_processes_train_as_one_process_at_their_global_batch(train_data, tmp_path):
    two, two_losses = train(tmp_path, train_data, "two", batch=8, processes=2)
    one, one_losses = train(tmp_path, train_data, "one", batch=16)
    alone, _ = train(tmp_path, train_data, "alone", batch=8)  # what each process would do without its peer

    assert sorted(two_losses) == list(range(1, 9))  # 64 images / global batch 16 = 4 steps an epoch; printed once
    assert two_losses == one_losses  # the loss of the whole global batch, to the printed digit, at every step
    # the same network to rounding (DDP sums the halves' gradients in another order), far from a lone process's.
    # Compared by what it computes: biases whose true gradient is zero (GroupNorm removes them) take Adam steps
    # of rounding noise, so the weights themselves differ by up to lr × steps.
    assert (two - one).abs().max() < 1e-4 and (alone - one).abs().max() > 0.1
    record = json.loads((tmp_path / "two" / "training.json").read_text())
    assert (record["processes"], record["global_batch"], record["images_seen"]) == (2, 16, 8 * 16)
