"""Model cards for `weights/<name>/README.md`, written from what training and evaluation recorded.

    python -m playground.card weights/mnist --eval eval-mnist.json [--hardware "2-core AMD EPYC, CPU only"]

Every figure in a card comes from `training.json` (written by the trainer) or an evaluation JSON
(written by `python -m playground.evaluate --json --baseline`), never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from dataclasses import asdict
from pathlib import Path

from .cli import ShowDefaults
from .evaluate import CONFIDENCE, UNCONDITIONAL_SAMPLES
from .train import TrainConfig
from .unet import TRAINING_ABLATION_KEY

# training settings a reproduce command must state when a stage changed them (epochs, lr and warmup always)
STATED_ALWAYS = ("epochs", "lr", "warmup_steps")
STATED_IF_CHANGED = ("batch_size", "min_lr_ratio", "ema_decay", "uncond_prob", "min_snr_gamma", "seed", "beta_schedule",
                     "block_out_channels", "layers_per_block", "attention_levels", "mixed_precision", "end_at_step",
                     "curve_every")

WHAT_DIFFUSERS_DOES = {
    True: "Stock diffusers loads every component and computes the same function: "
          "`UNet2DModel.from_pretrained(folder, subfolder=\"unet\")` gives the same outputs as ours, and "
          "`DDPMPipeline.from_pretrained(folder)` loads unet and scheduler. Sampling needs `class_labels` "
          "(10 = no digit), which `DDPMPipeline.__call__` does not pass: `playground.pipeline.GuidedDDPMPipeline` "
          "takes digits and a guidance scale (`GuidedDDPMPipeline.from_pretrained(folder)`).",
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
    trained_without = unet.get(TRAINING_ABLATION_KEY) or unet.get("training_ablation") or {}
    intact = not any(trained_without.get(k) for k in ("skip_scale", "attention_off", "time_embedding_off"))
    stages = training_stages(training)
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
        *_stage_lines(stages, hardware),
        "", "## Compatibility", WHAT_DIFFUSERS_DOES[intact],
    ]
    if evaluation:
        lines += ["", "## Measured", _metrics_table(evaluation)]
    lines += ["", "## Reproduce", *_reproduce_lines(folder.name, stages),
              f"- measure: `python -m playground.evaluate --model weights/{folder.name} --json --baseline{_evaluation_flags(evaluation)} "
              "--data-dir FOLDER`, FOLDER holding the full MNIST test files (the figures above; without it, the 512 "
              "held-out test digits the package ships)", ""]
    return "\n".join(lines)


def _evaluation_flags(evaluation: dict | None) -> str:
    """The evaluate options behind the figures beyond its defaults, so the measure command gives them all."""
    evaluation = evaluation or {}
    flags = " --full"
    flags += f" --num {evaluation['num']}" if evaluation.get("num", UNCONDITIONAL_SAMPLES) != UNCONDITIONAL_SAMPLES else ""
    flags += f" --guidance {evaluation['guidance']}" if "guidance" in evaluation else ""
    if evaluation.get("digit_accuracy_by_guidance"):
        flags += " --guidance-sweep " + " ".join(evaluation["digit_accuracy_by_guidance"])
    if "confident_over_draws" in evaluation:
        flags += f" --draws {len(evaluation['confident_over_draws']['seeds'])}"
    return flags


def training_stages(record: dict) -> list[dict]:
    """The stages that made a weights folder, oldest first, from its `training.json`.

    A stage is a trainer's record, or a soup (`playground.soup`): {"branches": [...]}, one list of stages per
    ingredient, each continuing from the stages all the ingredients share (empty for those shared weights themselves).
    """
    if "soup_of" in record:
        histories = [training_stages(ingredient) for ingredient in record["soup_of"]]
        shared = 0
        while all(len(h) > shared for h in histories) and all(h[shared] == histories[0][shared] for h in histories):
            shared += 1
        return histories[0][:shared] + [{"branches": [h[shared:] for h in histories]}]
    earlier = [stage for earlier_record in record.get("earlier_stages", []) for stage in training_stages(earlier_record)]
    return earlier + [{key: value for key, value in record.items() if key != "earlier_stages"}]


def _reproduce_lines(name: str, stages: list[dict]) -> list[str]:
    lines = []
    for number, stage in enumerate(stages, 1):
        label = f"stage {number}: " if len(stages) > 1 else ""
        if "branches" not in stage:
            # its own checkpoints, or --resume would pick up the previous stage's
            start = f" --init-from weights/{name} --checkpoint-dir checkpoints/{name}-stage{number}" if number > 1 else ""
            lines.append(f"- {label}{_train_command(f'weights/{name}', start, stage)}")
            continue
        ingredients = []
        for letter, branch in zip(string.ascii_lowercase, stage["branches"]):
            out = f"runs/{name}-stage{number}{letter}"
            ingredients.append(out if branch else f"weights/{name}")
            for step, branch_stage in enumerate(branch, 1):
                start = f" --init-from {f'weights/{name}' if step == 1 else out} --checkpoint-dir checkpoints/{name}-stage{number}{letter}{step}"
                lines.append(f"- {label}ingredient {letter}: {_train_command(out, start, branch_stage)}")
        lines.append(f"- {label}the soup: `python -m playground.soup --out weights/{name} {' '.join(ingredients)}`")
    return lines


def _train_command(out: str, start: str, stage: dict) -> str:
    cfg = stage["train_config"]
    ablation = "".join(f" --ablation {spec}" for spec in cfg.get("ablation") or [])
    # no --data-dir: the default, MNIST from the Hub at a pinned commit, is there for any clone, a local folder is not
    return f"`python -m playground.train --out {out}{ablation}{start}{_setting_flags(cfg)}`"


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


def _stage_lines(stages: list[dict], hardware: str) -> list[str]:
    """One bullet per stage (a run started from earlier weights continues their story), then totals."""
    lines = []
    for number, stage in enumerate(stages, 1):
        label = f"stage {number}, " if len(stages) > 1 else ""
        if "branches" not in stage:
            start = "from the previous stage's EMA weights" if number > 1 else "from random initialisation"
            lines.append(f"- {label}{start}: {_run_summary(stage)}")
            continue
        lines.append(f"- {label}a model soup (`playground.soup`): the uniform average of the EMA weights of "
                     f"{len(stage['branches'])} models, each from stage {number - 1}'s:")
        for letter, branch in zip(string.ascii_lowercase, stage["branches"]):
            runs = "; then ".join(_run_summary(branch_stage) for branch_stage in branch)
            lines.append(f"  - {letter}: {f'trained further, {runs}' if branch else f'stage {number - 1} itself'}")
    last = _trained(stages)[-1]["train_config"]
    lines.append(f"- noise: DDPMScheduler, {last['num_train_timesteps']} steps, {last['beta_schedule']} β; "
                 "the EMA weights are shipped")
    if len(stages) > 1:
        runs = _trained(stages)
        lines.append(f"- in all: {sum(s['epochs_done'] for s in runs):.2f} epochs, "
                     f"{sum(s['wall_seconds'] for s in runs) / 3600:.2f} h on {hardware}")
    else:
        lines.append(f"- hardware: {hardware}")
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _run_summary(stage: dict) -> str:
    cfg = stage["train_config"]
    loss = stage.get("final_loss_ema")
    cut = "" if not cfg.get("end_at_step") else (
        f" (ended at step {stage['steps']} of the {cfg['epochs']:g}-epoch schedule, `--end-at-step`)")
    precision = ", bf16 autocast" if cfg.get("mixed_precision", "no") != "no" else ""
    processes = stage.get("processes", 1)
    batch = f"batch {cfg['batch_size']}" if processes == 1 else (
        f"global batch {cfg['batch_size'] * processes} ({cfg['batch_size']} on each of {processes} processes)")
    return (f"{stage['steps']} steps of {batch} = {stage['epochs_done']} epochs ({stage['images_seen']:,} images){cut}; "
            f"AdamW lr {cfg['lr']}, {cfg['warmup_steps']} warmup steps, cosine decay to {cfg['min_lr_ratio']}×, gradient clip "
            f"{cfg['grad_clip']}, EMA {cfg['ema_decay']}, null label for {cfg['uncond_prob']:.0%} of examples, "
            f"{_loss_weighting(cfg)}, seed {cfg['seed']}; "
            f"wall time {stage['wall_seconds'] / 3600:.2f} h ({_count(stage['torch_threads'], 'torch thread')}, "
            f"device {stage['device']}{precision}); "
            + ("final training loss not recorded" if loss is None else f"final training loss (running mean) {loss:.4f}")
            + _curve_summary(stage.get("curve")))


def _curve_summary(curve: list[dict] | None) -> str:
    if not curve:
        return ""
    points = ", ".join(f"{p['epochs']:g}: {p['confident']:.3f}" for p in curve)
    return (f"; learning curve (EMA weights, {UNCONDITIONAL_SAMPLES} unconditional samples on the curve's own seed), "
            f"confident share by epoch: {points}")


def _loss_weighting(cfg: dict) -> str:
    gamma = cfg.get("min_snr_gamma")  # records older than the option trained with uniform weights
    return "uniform loss weights" if gamma is None else f"Min-SNR loss weights (γ = {gamma})"


def _trained(stages: list[dict]) -> list[dict]:
    """Every training run behind the stages, soup branches included."""
    return [run for stage in stages for run in ([stage] if "branches" not in stage else sum(stage["branches"], []))]


def _metrics_table(e: dict) -> str:
    real = e.get("real_baseline", {})

    def of_real(key, digits):  # variants are measured without the (shared) real-data baseline
        return f"{real[key]:.{digits}f}" if key in real else "see `weights/mnist/README.md`"

    rows = [
        "| | this model | real MNIST test digits |", "|---|---|---|",
        f"| unconditional samples confident > {CONFIDENCE} (DDIM {e['steps']}, {e['num']} samples) | {e['confident']:.3f} | {of_real('confident', 3)} |",
    ]
    if "confident_over_draws" in e:
        draws = e["confident_over_draws"]
        rows.append(f"| the same, mean ± standard error of {len(draws['seeds'])} draws of {e['num']} (seeds "
                    f"{draws['seeds'][0]}–{draws['seeds'][-1]}; each: {', '.join(f'{c:.3f}' for c in draws['confident'])}) | "
                    f"**{draws['mean']:.3f} ± {draws['standard_error']:.3f}** | – |")
    rows += [
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
    p = argparse.ArgumentParser(prog="python -m playground.card", description="Write a weights folder's model card.",
                                formatter_class=ShowDefaults)
    p.add_argument("folder", help="the weights folder whose README.md is written")
    p.add_argument("--eval", help="JSON written by `python -m playground.evaluate --json --baseline`")
    p.add_argument("--hardware", default="2 CPU cores (AMD EPYC), no GPU", help="what the model was trained on, in words")
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
