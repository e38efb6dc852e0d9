"""The ablation study: every single-part ablation of each model -> sample quality and ε-error by t.

    python -m playground.study --models weights/mnist weights/mnist-noskip weights/mnist-noattn \
        --data-dir ../shared/data/mnist --num 256 --out docs/study

Writes `<out>/study.md` (one table row per model × ablation) and `<out>/eps-<model>.png` (ε-error per
timestep, one curve per ablation), and prints the table. Parts: each skip resolution off, each attention
site off, the time embedding off, and FreeU-style scaling of every skip by 0.5.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .ablation import Ablation
from .classifier import load_classifier
from .data import load_mnist
from .evaluate import evaluate_model
from .sampling import DiffusionModel, load_pipeline
from .viz import curves_figure

BANDS = {"small t (≤50)": (0, 50), "medium t (100–500)": (100, 500), "large t (≥600)": (600, 999)}


def single_part_ablations(model: DiffusionModel) -> dict[str, Ablation]:
    unet = model.unet
    ablations = {"intact": Ablation()}
    ablations |= {f"skips {r}px off": Ablation(skip_scale={r: 0.0}) for r in unet.skip_resolutions}
    ablations |= {f"attn {site} off": Ablation(attention_off={site}) for site in unet.attention_sites
                  if site not in unet.training_ablation.attention_off}
    ablations["time off"] = Ablation(time_embedding_off=True)
    ablations["skips ×0.5 (FreeU-style)"] = Ablation(skip_scale={r: 0.5 for r in unet.skip_resolutions})
    if unet.training_ablation.skip_scale:  # skips of a no-skip model are already off
        ablations = {k: v for k, v in ablations.items() if not k.startswith("skips")}
    return ablations


def band_means(eps_mse: dict[str, float]) -> dict[str, float]:
    result = {}
    for band, (low, high) in BANDS.items():
        values = [v for t, v in eps_mse.items() if low <= int(t) <= high]
        result[band] = sum(values) / len(values)
    return result


def run_study(model_paths, data_dir, classifier_path, out: Path, num=256, steps=50, guidance=1.5, per_digit=25, log=print) -> list[dict]:
    classifier = load_classifier(classifier_path)
    test_images, _ = load_mnist(data_dir, "test")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in model_paths:
        model = load_pipeline(path)
        curves = {}
        for label, ablation in single_part_ablations(model).items():
            started = time.perf_counter()
            result = evaluate_model(model, classifier, test_images, ablation=ablation, num=num, steps=steps,
                                    guidance=guidance, per_digit=per_digit)
            row = {"model": model.name, "ablation": label, **{k: result[k] for k in ("confident", "class_entropy", "fd")},
                   "digit_accuracy": result.get("digit_accuracy"), **band_means(result["eps_mse"]),
                   "eps_mse": result["eps_mse"]}
            rows.append(row)
            curves[label] = ([int(t) for t in result["eps_mse"]], list(result["eps_mse"].values()))
            log(f"{model.name:14s} {label:40s} confident {row['confident']:.3f} entropy {row['class_entropy']:.3f} "
                f"fd {row['fd']:.2f} ({time.perf_counter() - started:.0f} s)")
        figure = curves_figure(curves, f"{model.name}: denoising error per timestep, one curve per ablation",
                               "timestep t (0 = clean, 999 = pure noise)", "mean (ε̂ − ε)²", logy=True)
        figure.savefig(out / f"eps-{model.name}.png", dpi=110)
    (out / "study.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "study.md").write_text(markdown_table(rows, num, steps, guidance))
    return rows


def markdown_table(rows, num, steps, guidance) -> str:
    lines = [f"DDIM {steps} steps; {num} unconditional samples per row for confident / entropy / FD; "
             f"25 per digit at guidance {guidance} for digit accuracy; ε-MSE on 512 test digits.", "",
             "| model | ablation | confident > 0.9 | class entropy | FD | digit accuracy | " + " | ".join(f"ε-MSE {b}" for b in BANDS) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(BANDS)]
    for r in rows:
        digit = "–" if r["digit_accuracy"] is None else f"{r['digit_accuracy']:.3f}"
        lines.append(f"| {r['model']} | {r['ablation']} | {r['confident']:.3f} | {r['class_entropy']:.3f} | {r['fd']:.2f} | {digit} | "
                     + " | ".join(f"{r[b]:.4f}" for b in BANDS) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m playground.study", description="Every single-part ablation of each model.")
    p.add_argument("--models", nargs="+", default=["weights/mnist", "weights/mnist-noskip", "weights/mnist-noattn"])
    p.add_argument("--data-dir", default="../shared/data/mnist")
    p.add_argument("--classifier", default="weights/classifier")
    p.add_argument("--num", type=int, default=256)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=1.5)
    p.add_argument("--per-digit", type=int, default=25)
    p.add_argument("--out", default="docs/study")
    args = p.parse_args(argv)
    try:
        rows = run_study([Path(m) for m in args.models], args.data_dir, args.classifier, Path(args.out),
                         num=args.num, steps=args.steps, guidance=args.guidance, per_digit=args.per_digit)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown_table(rows, args.num, args.steps, args.guidance))
    return 0


if __name__ == "__main__":
    sys.exit(main())
