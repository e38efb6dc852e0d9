"""When does a part of the U-Net matter? One ablation in a t-window sliding over the reverse process.

    python -m playground.sweep --model weights/mnist --ablate skip:all=0 --windows 10 --batch 8 \
        --out sweep.png [--digit 3] [--classifier weights/classifier] [--setup setup.json] [--json]

Prints, per window, the mean |Δ| of the final samples against the intact run from the same noise (and,
with a classifier, the share still read as the same digit); writes the curve to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .classifier import load_classifier
from .cli import ShowDefaults
from .explore import sweep_figure, window_sweep
from .setup import add_setup_arguments, setup_from_arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m playground.sweep", description="An ablation in a t-window sliding over the reverse process.",
                                formatter_class=ShowDefaults)
    add_setup_arguments(p, batch_flag="--batch")
    p.add_argument("--windows", type=int, default=10, help="number of consecutive t-windows (default 10)")
    p.add_argument("--classifier", default="weights/classifier", help="our digit classifier; 'none' to skip quality")
    p.add_argument("--no-full-run", action="store_true", help="skip the reference run with the ablation at every step")
    p.add_argument("--out", help="PNG of the curve")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        setup, model = setup_from_arguments(args)
        classifier = None
        if args.classifier != "none" and (Path(args.classifier) / "config.json").is_file():
            classifier = load_classifier(args.classifier)
        settings = setup.sample_settings(model)

        def report(done, total):
            if not args.json:
                print(f"\r{done}/{total} model steps", end="", file=sys.stderr, flush=True)

        sweep = window_sweep(model, settings, setup.ablation, args.windows, classifier=classifier,
                             with_full_run=not args.no_full_run, progress=report)
        if args.out:
            sweep_figure(sweep, f"{model.name}: {args.windows} windows, {setup.sampler} {setup.steps} steps, batch {setup.batch}").savefig(args.out, dpi=110)
    except (ValueError, FloatingPointError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result = {"model": model.name, **sweep.as_dict()}
    if args.json:
        print(json.dumps(result))
    else:
        print(file=sys.stderr)
        for (t_min, t_max), change, quality in zip(result["windows"], result["change"], sweep.quality or [None] * len(result["windows"])):
            extra = "" if quality is None else "  " + "  ".join(f"{k} {v:.2f}" for k, v in quality.items())
            print(f"t {t_max:4d}..{t_min:<4d}  mean |Δ| {change:.4f}{extra}")
        if sweep.full_change is not None:
            print(f"every step         mean |Δ| {sweep.full_change:.4f}")
        print(f"{sweep.seconds:.1f} s" + (f"; figure: {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
