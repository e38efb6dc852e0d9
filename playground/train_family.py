"""Train the flagship and its variants side by side: one recipe, one budget, the same batches to the step.

    python -m playground.train_family --out-root runs/family --budget-seconds 300 [--data-dir D] [train flags]

Each member is `python -m playground.train` with the same flags and seed, so the same images and the same noise
at every step, and its own `--ablation`: `mnist` (intact), `mnist-noskip` (skip:all=0), `mnist-noattn` (attn:all).
Any flag of `playground.train` not listed under --help here is passed to every member.

With --budget-seconds the epochs are sized to the hardware: every member first runs --calibration-steps steps,
all at once, inside the learning-rate warmup (whose rate does not depend on the run's length); the slowest
member's images/s over its last log window sets the whole epochs that fit what is left of the budget; then every
member resumes with those epochs. Resume is exact, so the result is the run `playground.train --epochs E` gives.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

from .cli import ShowDefaults
from .data import mnist
from .train import parse_args as parse_train_args

MEMBERS = {"mnist": [], "mnist-noskip": ["--ablation", "skip:all=0"], "mnist-noattn": ["--ablation", "attn:all"]}
RATE = re.compile(r"step (\d+)/\d+ .* (\d+) img/s")
# of the time left after calibration: the calibration's log windows time training steps alone, while a run also
# exports, checkpoints and (with --curve-every) samples; on an H200 those took a third of the time left at 0.85
BUDGET_SHARE = 0.65


def member_command(name: str, out_root: Path, data_dir: str | None, train_flags: list[str], epochs: float,
                   extra: list[str]) -> list[str]:
    data = ["--data-dir", data_dir] if data_dir else []
    return [sys.executable, "-m", "playground.train", *data, "--out", str(out_root / name),
            "--checkpoint-dir", str(out_root / "checkpoints" / name), *MEMBERS[name], *train_flags,
            "--epochs", str(epochs), *extra]


def run_members(commands: dict[str, list[str]], logs: Path, stage: str) -> dict[str, str]:
    """Run every member at once; each one's output goes to logs/<name>.<stage>.log. Returns the outputs."""
    logs.mkdir(parents=True, exist_ok=True)
    running = {}
    for name, command in commands.items():
        log = open(logs / f"{name}.{stage}.log", "w")
        running[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log)
    failed = []
    for name, (process, log) in running.items():
        if process.wait() != 0:
            failed.append(name)
        log.close()
    outputs = {name: (logs / f"{name}.{stage}.log").read_text() for name in commands}
    if failed:
        tails = "\n".join(f"--- {name}\n{outputs[name][-2000:]}" for name in failed)
        raise RuntimeError(f"{stage}: {', '.join(failed)} failed\n{tails}")
    return outputs


def last_rate(output: str) -> float:
    """Images/s over the last log window of a training run's output."""
    rates = [float(match.group(2)) for match in RATE.finditer(output)]
    if not rates:
        raise RuntimeError("no 'img/s' line in the calibration output: lower --log-every below --calibration-steps")
    return rates[-1]


def sized_epochs(seconds_left: float, images_per_second: float, images_per_epoch: int, max_epochs: float) -> int:
    return max(1, min(int(max_epochs), math.floor(seconds_left * BUDGET_SHARE * images_per_second / images_per_epoch)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m playground.train_family", description=__doc__.split("\n\n")[0],
                                formatter_class=ShowDefaults)
    p.add_argument("--data-dir", help="folder with the MNIST gzip IDX files (default: MNIST from the Hugging Face Hub)")
    p.add_argument("--out-root", required=True, help="each member's pipeline folder goes to OUT_ROOT/<name>")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--epochs", type=float, help="train every member this many epochs")
    size.add_argument("--budget-seconds", type=float, help="size the epochs so the whole family fits this wall time")
    p.add_argument("--max-epochs", type=float, default=200, help="with --budget-seconds: never more epochs than this")
    p.add_argument("--calibration-steps", type=int, default=150, help="steps every member runs before the epochs are sized")
    p.add_argument("--members", nargs="+", default=list(MEMBERS), choices=list(MEMBERS), help="which models to train")
    args, train_flags = p.parse_known_args(argv)
    out_root, started = Path(args.out_root), time.perf_counter()
    try:
        cfg = parse_train_args([*(["--data-dir", args.data_dir] if args.data_dir else []), "--out", str(out_root / "probe"),
                                *train_flags])
    except SystemExit:
        return 2
    logs, summary = out_root / "logs", {"members": args.members, "train_flags": train_flags}
    epochs = args.epochs
    if args.budget_seconds is not None:
        if args.calibration_steps > cfg.warmup_steps:
            p.error(f"--calibration-steps ({args.calibration_steps}) must lie inside the warmup ({cfg.warmup_steps} steps)")
        images = len(mnist("train", args.data_dir, limit=cfg.limit)[1])
        images_per_epoch = images // cfg.batch_size * cfg.batch_size
        outputs = run_members({name: member_command(name, out_root, args.data_dir, train_flags, args.max_epochs,
                                                    ["--stop-after", str(args.calibration_steps)])
                               for name in args.members}, logs, "calibration")
        rate = min(last_rate(output) for output in outputs.values())
        seconds_left = args.budget_seconds - (time.perf_counter() - started)
        epochs = sized_epochs(seconds_left, rate, images_per_epoch, args.max_epochs)
        summary |= {"calibration_img_per_s_each": rate, "calibration_seconds": round(time.perf_counter() - started, 1),
                    "epochs": epochs}
        print(f"calibrated: {rate:.0f} img/s per member with {len(args.members)} at once; {seconds_left:.0f} s left "
              f"-> {epochs} epochs each", flush=True)
    resume = ["--resume"] if args.budget_seconds is not None else []
    run_members({name: member_command(name, out_root, args.data_dir, train_flags, epochs, resume) for name in args.members},
                logs, "train")
    summary |= {"epochs": epochs, "wall_seconds": round(time.perf_counter() - started, 1)}
    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / "family.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
