"""The ablation study: every single-part ablation of each model -> sample quality and ε-error by t.

    python -m playground.study --models weights/mnist weights/mnist-noskip weights/mnist-noattn \
        --num 256 --out docs/study

Writes `<out>/study.md` (one table row per model × ablation, then the window sweeps),
`<out>/eps-<model>.png` (ε-error per timestep, one curve per ablation) and `<out>/sweep-<model>.png` (when
does each part matter: every skip, every attention site, or the time embedding switched off only inside a
t-window sliding over the reverse process), and prints the tables. Parts ablated singly: each skip
resolution off, each attention site off, the time embedding off, and FreeU-style scaling of every skip by 0.5.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .ablation import Ablation
from .classifier import load_classifier
from .cli import ShowDefaults
from .data import HELDOUT_DIR, mnist
from .evaluate import CONFIDENCE, DIVERGED, evaluate_model
from .explore import sweep_figure, window_sweep
from .sampling import DiffusionModel, SampleSettings, digits_cycle, load_pipeline, sample
from .viz import curves_figure

BANDS = {"small t (≤50)": (0, 50), "medium t (100–500)": (100, 500), "large t (≥600)": (600, 999)}


def single_part_ablations(model: DiffusionModel) -> dict[str, Ablation]:
    """One part at a time, of those training left in (a variant's missing parts are already off)."""
    unet = model.unet
    resolutions = unet.switchable_skip_resolutions
    ablations = {"intact": Ablation()}
    ablations |= {f"skips {r}px off": Ablation(skip_scale={r: 0.0}) for r in resolutions}
    ablations |= {f"attn {site} off": Ablation(attention_off={site}) for site in unet.switchable_attention_sites}
    ablations["time off"] = Ablation(time_embedding_off=True)
    if resolutions:
        ablations["skips ×0.5 (FreeU-style)"] = Ablation(skip_scale={r: 0.5 for r in resolutions})
    return ablations


def part_groups(model: DiffusionModel) -> dict[str, Ablation]:
    """Whole parts for the window sweeps (each one switched off everywhere training left it in this model)."""
    unet = model.unet
    groups = {}
    if unet.switchable_skip_resolutions:
        groups["skips off"] = Ablation(skip_scale={r: 0.0 for r in unet.switchable_skip_resolutions})
    if unet.switchable_attention_sites:
        groups["attention off"] = Ablation(attention_off=unet.switchable_attention_sites)
    groups["time off"] = Ablation(time_embedding_off=True)
    return groups


def run_sweeps(model: DiffusionModel, classifier, out: Path, windows: int, batch: int, steps: int, guidance: float, log=print) -> dict:
    """Window sweeps of every part group from the same noise (one digit per sample, cycling 0–9)."""
    settings = SampleSettings(steps=steps, batch=batch, label=digits_cycle(batch) if model.null_label is not None else None,
                              guidance=guidance)
    intact = sample(model, settings)
    sweeps = {}
    for label, ablation in part_groups(model).items():
        sweeps[label] = window_sweep(model, settings, ablation, windows, classifier=classifier, intact=intact)
        log(f"{model.name:14s} sweep {label:14s} {sweeps[label].seconds:.0f} s")
    figure = sweep_figure(sweeps, f"{model.name}: when does each part matter? (batch {batch}, DDIM {steps})")
    figure.savefig(out / f"sweep-{model.name}.png", dpi=110)
    return {label: sweep.as_dict() for label, sweep in sweeps.items()}


def sweep_table(sweeps_by_model: dict[str, dict]) -> str:
    """Per model and part: the change of the final samples, and the share still read as the same digit, per window."""
    lines = []
    for model_name, sweeps in sweeps_by_model.items():
        windows = next(iter(sweeps.values()))["windows"]
        lines += ["", f"**{model_name}**: mean |Δ| of the final samples / share still the same digit, part switched off "
                  "only for t in the window (reverse process left to right); last column: switched off at every step", "",
                  "| part | " + " | ".join(f"{hi}–{lo}" for lo, hi in windows) + " | every step |",
                  "|---|" + "---|" * (len(windows) + 1)]
        for label, sweep in sweeps.items():
            kept = [q["kept"] for q in sweep["quality"]] if sweep["quality"] else [None] * len(windows)
            full = sweep["intact_quality"].get("full_run", {}) if sweep["intact_quality"] else {}
            cells = [f"{c:.2f} / {k:.0%}" if k is not None else f"{c:.2f}" for c, k in zip(sweep["change"], kept)]
            cells.append(f"{sweep['full_change']:.2f} / {full['kept']:.0%}" if "kept" in full else f"{sweep['full_change']:.2f}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def band_means(eps_mse: dict[str, float]) -> dict[str, float]:
    result = {}
    for band, (low, high) in BANDS.items():
        values = [v for t, v in eps_mse.items() if low <= int(t) <= high]
        result[band] = sum(values) / len(values)
    return result


def run_study(model_paths, data_dir, classifier_path, out: Path, num=256, steps=50, guidance=1.5, per_digit=25,
              eps_images=512, windows=10, sweep_batch=16, log=print) -> list[dict]:
    classifier = load_classifier(classifier_path)
    test_images, _ = mnist("test", data_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, sweeps = [], {}
    for path in model_paths:
        model = load_pipeline(path)
        if windows:
            sweeps[model.name] = run_sweeps(model, classifier, out, windows, sweep_batch, steps, guidance, log)
        curves = {}
        for label, ablation in single_part_ablations(model).items():
            started = time.perf_counter()
            result = evaluate_model(model, classifier, test_images, ablation=ablation, num=num, steps=steps,
                                    guidance=guidance, per_digit=per_digit, eps_images=eps_images)
            row = {"model": model.name, "ablation": label, **{k: result[k] for k in ("confident", "class_entropy", "fd", "peak")},
                   "digit_accuracy": result.get("digit_accuracy"), **band_means(result["eps_mse"]),
                   "eps_mse": result["eps_mse"]}
            rows.append(row)
            curves[label] = ([int(t) for t in result["eps_mse"]], list(result["eps_mse"].values()))
            log(f"{model.name:14s} {label:40s} confident {row['confident']:.3f} entropy {row['class_entropy']:.3f} "
                f"fd {row['fd']:.2f} ({time.perf_counter() - started:.0f} s)")
        figure = curves_figure(curves, f"{model.name}: denoising error per timestep, one curve per ablation",
                               "timestep t (0 = clean, 999 = pure noise)", "mean (ε̂ − ε)²", logy=True)
        figure.savefig(out / f"eps-{model.name}.png", dpi=110)
    (out / "study.json").write_text(json.dumps({"ablations": rows, "sweeps": sweeps}, indent=1) + "\n")
    (out / "study.md").write_text(markdown_table(rows, num, steps, guidance, per_digit, eps_images) + sweep_table(sweeps))
    return rows


def markdown_table(rows, num, steps, guidance, per_digit, eps_images) -> str:
    lines = [f"DDIM {steps} steps; {num} unconditional samples per row for confident / entropy / FD / max |x|; "
             f"{per_digit} per digit at guidance {guidance} for digit accuracy; ε-MSE on {eps_images} test digits.", "",
             f"| model | ablation | confident > {CONFIDENCE} | class entropy | FD | max \\|x\\| | digit accuracy | "
             + " | ".join(f"ε-MSE {b}" for b in BANDS) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(BANDS)]
    for r in rows:
        digit = "–" if r["digit_accuracy"] is None else f"{r['digit_accuracy']:.3f}"
        lines.append(f"| {r['model']} | {r['ablation']} | {r['confident']:.3f} | {r['class_entropy']:.3f} | {r['fd']:.2f} | "
                     f"{r['peak']:.3g} | {digit} | " + " | ".join(f"{r[b]:.4f}" for b in BANDS) + " |")
    if any(r["peak"] > DIVERGED for r in rows):
        lines += ["", f"max |x| is the largest pixel of a row's samples; data lie in [−1, 1]. Above {DIVERGED:g}, at least one "
                  "sample has left the data range. The classifier sees such samples clipped to [−1, 1], where saturated noise "
                  "can read as a confident digit: where most of a row's samples left it (entropy 0, every one read as the same "
                  "digit), its confident share says nothing about digits, and its FD shows how far off they are."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m playground.study", description="Every single-part ablation of each model.",
                                formatter_class=ShowDefaults)
    p.add_argument("--models", nargs="+", default=["weights/mnist", "weights/mnist-noskip", "weights/mnist-noattn"],
                   help="pipeline folders to study")
    p.add_argument("--data-dir", default=str(HELDOUT_DIR),
                   help="folder with the MNIST gzip IDX files; its test split is used (default: %(default)s, the 512 "
                   "held-out test digits the package ships)")
    p.add_argument("--classifier", default="weights/classifier", help="the digit classifier that judges the samples")
    p.add_argument("--num", type=int, default=256, help="unconditional samples per ablation")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps per run")
    p.add_argument("--guidance", type=float, default=1.5, help="classifier-free guidance for digit accuracy")
    p.add_argument("--per-digit", type=int, default=25, help="conditional samples per digit")
    p.add_argument("--eps-images", type=int, default=512, help="held-out test digits for the ε-error")
    p.add_argument("--windows", type=int, default=10, help="window positions per sweep (0: no sweeps)")
    p.add_argument("--sweep-batch", type=int, default=16, help="samples per window sweep")
    p.add_argument("--out", default="docs/study", help="folder for the tables, study.json and figures")
    args = p.parse_args(argv)
    try:
        rows = run_study([Path(m) for m in args.models], args.data_dir, args.classifier, Path(args.out),
                         num=args.num, steps=args.steps, guidance=args.guidance, per_digit=args.per_digit,
                         eps_images=args.eps_images, windows=args.windows, sweep_batch=args.sweep_batch)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print((Path(args.out) / "study.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
