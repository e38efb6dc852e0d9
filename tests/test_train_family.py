"""The flagship and its variants trained side by side: sized to a time budget, the same as one run of that length."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from playground.train_family import last_rate, sized_epochs

ROOT = Path(__file__).resolve().parent.parent
TINY_FLAGS = ["--limit", "64", "--batch-size", "16", "--warmup-steps", "6", "--block-out-channels", "8", "16",
              "--attention-levels", "1", "--log-every", "2", "--checkpoint-every", "3", "--threads", "1"]
WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_a_budgeted_family_trains_each_member_exactly_as_one_run_of_the_epochs_it_chose(train_data, tmp_path):
    family = tmp_path / "family"
    run("playground.train_family", "--data-dir", str(train_data), "--out-root", str(family), "--budget-seconds", "600",
        "--max-epochs", "2", "--calibration-steps", "4", "--members", "mnist", "mnist-noskip", *TINY_FLAGS)
    summary = json.loads((family / "family.json").read_text())
    assert summary["epochs"] == 2  # a tiny run fits the budget many times over: the cap decides
    assert summary["calibration_img_per_s_each"] > 0

    straight = tmp_path / "straight"
    run("playground.train", "--data-dir", str(train_data), "--out", str(straight), "--checkpoint-dir",
        str(tmp_path / "straight-checkpoints"), "--ablation", "skip:all=0", "--epochs", "2", *TINY_FLAGS)
    expected, actual = load_file(straight / WEIGHTS), load_file(family / "mnist-noskip" / WEIGHTS)
    assert sorted(actual) == sorted(expected)
    assert all(torch.equal(actual[key], expected[key]) for key in expected)  # calibrated, stopped, resumed: bit for bit
    intact = load_file(family / "mnist" / WEIGHTS)
    assert not all(torch.equal(intact[key], actual[key]) for key in actual)  # the members are different models
    for member in ("mnist", "mnist-noskip"):
        record = json.loads((family / member / "training.json").read_text())
        assert record["steps"] == 2 * 64 // 16 and record["train_config"]["epochs"] == 2


def test_the_budget_sets_whole_epochs_from_the_measured_rate_within_the_cap():
    assert sized_epochs(seconds_left=100, images_per_second=6000, images_per_epoch=60000, max_epochs=50) == 6  # 0.65 × 10
    assert sized_epochs(seconds_left=10_000, images_per_second=6000, images_per_epoch=60000, max_epochs=50) == 50
    assert sized_epochs(seconds_left=-5, images_per_second=6000, images_per_epoch=60000, max_epochs=50) == 1


def test_the_rate_is_read_off_the_last_log_window():
    log = "step 50/900 epoch 0.2 loss 0.5 (avg 0.6) lr 1e-4 3100 img/s\nstep 100/900 epoch 0.4 loss 0.4 (avg 0.5) lr 2e-4 5383 img/s\n"
    assert last_rate(log) == 5383
    with pytest.raises(RuntimeError, match="--log-every"):
        last_rate("resumed from x at step 0/900\n")


def test_calibration_must_lie_inside_the_warmup(train_data, tmp_path):
    result = subprocess.run([sys.executable, "-m", "playground.train_family", "--data-dir", str(train_data), "--out-root",
                             str(tmp_path), "--budget-seconds", "60", "--calibration-steps", "10", *TINY_FLAGS],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--calibration-steps (10) must lie inside the warmup (6 steps)" in result.stderr
