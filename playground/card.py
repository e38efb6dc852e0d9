"""Model cards for `weights/<name>/README.md`, written from what training and evaluation recorded.

    python -m playground.card weights/mnist --eval eval-mnist.json [--hardware "2-core AMD EPYC, CPU only"]

Every figure in a card comes from `training.json` (written by the trainer) or an evaluation JSON
(written by `python -m playground.evaluate --json --baseline`), never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from .train import TrainConfig

# training settings a reproduce command must state when a stage changed them (epochs, lr and warmup always)
STATED_ALWAYS = ("epochs", "lr", "warmup_steps")
STATED_IF_CHANGED = ("batch_size", "min_lr_ratio", "ema_decay", "uncond_prob", "seed", "beta_schedule",
                     "block_out_channels", "layers_per_block", "attention_levels")

WHAT_DIFFUSERS_DOES = {
    True: "Stock diffusers loads every component and computes the same function: "
          "`UNet2DModel.from_pretrained(folder, subfolder=\"unet\")` gives the same outputs as ours, and "
          "`DDPMPipeline.from_pretrained(folder)` loads unet and scheduler. Sampling needs `class_labels` "
          "(10 = no digit), which `DDPMPipeline.__call__` does not pass: use `playground.sampling` for labels and guidance.",
    False: "Stock diffusers loads every component (`DDPMPipeline.from_pretrained(folder)`, "
           "`UNet2DModel.from_pretrained(folder, subfolder=\"unet\")`) but **cannot reproduce this model**: "
           "it has no way to switch off the parts this variant was trained without, so it computes the intact "
           "network with these weights, which was never trained. `PlaygroundUNet.from_pretrained` applies the "
           "recorded `training_ablation` on every call.",
}


def render_card(folder: Path, evaluation: dict | None, hardware: str) -> str:
    training = json.loads((folder / "training.json").read_text())
    unet = json.loads((folder / "unet" / "config.json").read_text())
    parameters = _count_parameters(folder)
    trained_without = unet.get("training_ablation") or {}
    intact = not any(trained_without.get(k) for k in ("skip_scale", "attention_off", "time_embedding_off"))
    cfg = training["train_config"]
    lines = [
        f"# {folder.name}", "",
        f"A class-conditional DDPM ε-predictor for 28×28 MNIST digits, `PlaygroundUNet` "
        f"(the `diffusers.UNet2DModel` layout), {parameters / 1e6:.2f} M parameters.",
        "" if intact else f"**Trained with parts switched off throughout:** `{json.dumps(trained_without)}`.", "",
        "## Architecture",
        f"- channels {tuple(unet['block_out_channels'])}, {unet['layers_per_block']} ResnetBlock(s) per encoder level "
        f"(+1 in the decoder), resolutions {unet['sample_size']} → … (3×3 stride-2 downsampling)",
        f"- down blocks {unet['down_block_types']}, up blocks {unet['up_block_types']}, bottleneck with self-attention",
        f"- attention head dim {unet['attention_head_dim']}, GroupNorm({unet['norm_num_groups']}), SiLU, sinusoidal time "
        f"embedding + MLP, class embedding of {unet['num_class_embeds']} labels (0–9 digits, 10 = no digit) added to it",
        "", "## Training",
        "- data: MNIST train (60,000 images, [-1, 1]); each label is replaced by the null label with the stage's probability",
        *_stage_lines(training, hardware),
        "", "## Compatibility", WHAT_DIFFUSERS_DOES[intact],
    ]
    if evaluation:
        lines += ["", "## Measured", _metrics_table(evaluation)]
    lines += ["", "## Reproduce", *_reproduce_lines(folder.name, training.get("earlier_stages", []) + [training]),
              f"- measure: `python -m playground.evaluate --model weights/{folder.name} --json --baseline`", ""]
    return "\n".join(lines)


def _reproduce_lines(name: str, stages: list[dict]) -> list[str]:
    lines = []
    for number, stage in enumerate(stages, 1):
        cfg = stage["train_config"]
        flags = "".join(f" --ablation {spec}" for spec in cfg.get("ablation") or [])
        if number > 1:  # its own checkpoints, or --resume would pick up the previous stage's
            flags += f" --init-from weights/{name} --checkpoint-dir checkpoints/{name}-stage{number}"
        flags += _setting_flags(cfg)
        lines.append(f"- {'stage ' + str(number) + ': ' if len(stages) > 1 else ''}`python -m playground.train --data-dir "
                     f"../shared/data/mnist --out weights/{name}{flags}`")
    return lines


def _setting_flags(cfg: dict) -> str:
    defaults = asdict(TrainConfig(data_dir="", out=""))
    flags = ""
    for key in STATED_ALWAYS + STATED_IF_CHANGED:
        values = _as_list(cfg.get(key, defaults[key]))  # JSON gives lists where the config has tuples
        if key in STATED_ALWAYS or values != _as_list(defaults[key]):
            flags += f" --{key.replace('_', '-')} " + " ".join(str(v) for v in values)
    return flags


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _stage_lines(training: dict, hardware: str) -> list[str]:
    """One bullet per training stage (a run started from earlier weights continues their story), then totals."""
    stages = training.get("earlier_stages", []) + [training]
    lines = []
    for number, stage in enumerate(stages, 1):
        cfg = stage["train_config"]
        start = "from the previous stage's EMA weights" if number > 1 else "from random initialisation"
        lines.append(
            f"- {'stage ' + str(number) + ', ' if len(stages) > 1 else ''}{start}: {stage['steps']} steps of batch "
            f"{cfg['batch_size']} = {stage['epochs_done']} epochs ({stage['images_seen']:,} images); AdamW lr {cfg['lr']}, "
            f"{cfg['warmup_steps']} warmup steps, cosine decay to {cfg['min_lr_ratio']}×, gradient clip {cfg['grad_clip']}, "
            f"EMA {cfg['ema_decay']}, null label for {cfg['uncond_prob']:.0%} of examples; wall time {stage['wall_seconds'] / 3600:.2f} h ({stage['torch_threads']} torch threads, "
            f"device {stage['device']}); final training loss (running mean) {stage['final_loss_ema']:.4f}")
    cfg = training["train_config"]
    lines.append(f"- noise: DDPMScheduler, {cfg['num_train_timesteps']} steps, {cfg['beta_schedule']} β; seed {cfg['seed']}; "
                 "the EMA weights are shipped")
    if len(stages) > 1:
        lines.append(f"- in all: {sum(s['epochs_done'] for s in stages):.2f} epochs, "
                     f"{sum(s['wall_seconds'] for s in stages) / 3600:.2f} h on {hardware}")
    else:
        lines.append(f"- hardware: {hardware}")
    return lines


def _metrics_table(e: dict) -> str:
    real = e.get("real_baseline", {})

    def of_real(key, digits):  # variants are measured without the (shared) real-data baseline
        return f"{real[key]:.{digits}f}" if key in real else "see `weights/mnist/README.md`"

    rows = [
        "| | this model | real MNIST test digits |", "|---|---|---|",
        f"| unconditional samples confident > 0.9 (DDIM {e['steps']}, {e['num']} samples) | {e['confident']:.3f} | {of_real('confident', 3)} |",
        f"| class-histogram entropy / log 10 | {e['class_entropy']:.3f} | {of_real('class_entropy', 3)} |",
        f"| Fréchet distance in classifier features | {e['fd']:.2f} | {of_real('fd', 2)} (two disjoint real sets) |",
    ]
    if "digit_accuracy" in e:
        rows.append(f"| conditional samples recognised as the digit asked for (guidance {e['guidance']}) | "
                    f"{e['digit_accuracy']:.3f} | – |")
    for w, accuracy in e.get("digit_accuracy_by_guidance", {}).items():
        rows.append(f"| conditional samples recognised as the digit asked for, guidance {w} | {accuracy:.3f} | – |")
    eps = e["eps_mse"]
    rows.append("| ε-MSE at t = 10 / 100 / 500 / 900 (512 test digits) | "
                + " / ".join(f"{eps[t]:.4f}" for t in ("10", "100", "500", "900") if t in eps) + " | – |")
    return "\n".join(rows)


def _count_parameters(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(folder / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        for key in f.keys():
            count = 1
            for n in f.get_slice(key).get_shape():
                count *= n
            total += count
    return total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m playground.card", description="Write a weights folder's model card.")
    p.add_argument("folder")
    p.add_argument("--eval", help="JSON written by `python -m playground.evaluate --json --baseline`")
    p.add_argument("--hardware", default="2 CPU cores (AMD EPYC), no GPU")
    args = p.parse_args(argv)
    folder = Path(args.folder)
    try:
        evaluation = json.loads(Path(args.eval).read_text()) if args.eval else None
        (folder / "README.md").write_text(render_card(folder, evaluation, args.hardware))
    except (OSError, KeyError, json.JSONDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(folder / "README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
