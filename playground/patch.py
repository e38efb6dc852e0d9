"""Activation patching from the command line: put A's output of a block into B's run and see how much of A comes back.

    python -m playground.patch --model weights/mnist --ablate skip:28=0 --digit 3 --batch 1 \
        --block up_blocks.1.attentions.1 [--window 0 400] [--b-model weights/mnist-noskip] [--out abp.png] [--json]
    python -m playground.patch --model weights/mnist --ablate skip:28=0 --digit 3 --batch 1 --map [--windows 5] \
        [--block NAME ...] [--classifier weights/classifier] [--out map.png] [--json]

A is the setup's model with no ablation; B is --b-model (default: the same model) with the setup's ablation (--ablate
or --setup's), from the same noise. Prints the restored fraction 1 − mean|patched − A| / mean|B − A| (1: A's images
back, 0: no closer than B), or with --map the table of it for every block × t-window (see playground/patching.py).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from .ablation import Ablation
from .classifier import load_classifier
from .cli import ShowDefaults
from .patching import default_patch_blocks, digit_back, patch_map, patch_map_figure, patched_run, restored_fraction
from .sampling import Window, load_pipeline, sample
from .setup import add_setup_arguments, setup_from_arguments
from .viz import image_grid


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m playground.patch", formatter_class=ShowDefaults,
                                description="Patch A's output of a block into B's run (activation patching). A: the model, "
                                            "intact; B: --b-model (default: the same) with the --ablate ablation.")
    add_setup_arguments(p, batch_flag="--batch", window_flag=False)
    p.add_argument("--b-model", help="B's pipeline folder, of the same architecture (default: the same model as A)")
    p.add_argument("--block", action="append", default=[], metavar="NAME",
                   help="the feature map to patch (a name from feature_names); with --map, repeatable: the rows "
                        "(default there: one per level and the bottleneck)")
    p.add_argument("--window", nargs=2, type=int, metavar=("T_MIN", "T_MAX"), dest="patch_window",
                   help="patch only the steps with T_MIN <= t <= T_MAX (default: every step)")
    p.add_argument("--map", action="store_true", help="every block × --windows consecutive t-windows")
    p.add_argument("--windows", type=int, default=5, help="number of t-windows of --map")
    p.add_argument("--classifier", default="weights/classifier", help="our digit classifier (is A's digit back?); 'none' to skip")
    p.add_argument("--out", help="PNG: the map's heatmap, or the final samples of A, B and the patched run (one row each)")
    p.add_argument("--size", type=int, default=56, help="pixels per sample in the --out grid of a single patched run")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        setup, model_a = setup_from_arguments(args)
        model_b = load_pipeline(args.b_model) if args.b_model else model_a
        if args.b_model:
            setup.ablation.check_against(model_b.unet.skip_resolutions, model_b.unet.attention_sites)
        classifier = None
        if args.classifier != "none" and (Path(args.classifier) / "config.json").is_file():
            classifier = load_classifier(args.classifier)
        settings_a = replace(setup.sample_settings(model_a), ablation=Ablation())
        report = None if args.json else _report_progress
        if args.map:
            if args.patch_window is not None:
                raise ValueError("--window chooses one patch window; --map sweeps --windows of them: give one of the two")
            blocks = args.block or default_patch_blocks(model_a.unet)
            result = patch_map(model_a, model_b, settings_a, setup.ablation, blocks, args.windows, classifier=classifier,
                               progress=report)
            if args.out:
                patch_map_figure(result).savefig(args.out, dpi=110)
            output = result.as_dict()
        else:
            output = _one_run(args, model_a, model_b, settings_a, setup.ablation, classifier, report)
    except (ValueError, FloatingPointError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(output))
        return 0
    print(file=sys.stderr)
    if args.map:
        _print_table("restored fraction", output)
        if output["digit_back"] is not None:
            _print_table(f"A's digit back (B unpatched: {output['b_digit_same']:.2f})", output, "digit_back")
    else:
        window = output["window"]
        where = "every step" if window is None else f"t {window[1]}..{window[0]}"
        digit = "" if output["digit_back"] is None else (f"; A's digit back in {output['digit_back']:.0%} of the samples "
                                                          f"(B unpatched: {output['b_digit_same']:.0%})")
        print(f"{output['block']} patched at {where}: restored fraction {_cell(output['fraction'])} "
              f"of mean |B − A| {output['gap']:.4f}{digit}")
    print(f"{output['seconds']:.1f} s" + (f"; figure: {args.out}" if args.out else ""))
    return 0


def _one_run(args, model_a, model_b, settings_a, ablation_b, classifier, progress) -> dict:
    if len(args.block) != 1:
        raise ValueError("--block: give exactly one feature map to patch (or --map for a table of several)")
    started = time.perf_counter()
    window = None if args.patch_window is None else Window.of(tuple(args.patch_window), "--window")
    settings_b = replace(settings_a, ablation=ablation_b)
    a = sample(model_a, settings_a)
    b = sample(model_b, settings_b)
    patched = patched_run(model_b, settings_b, a, model_a, args.block[0], window, reuse=b, progress=progress)
    if args.out:
        image_grid(torch.cat([a.final, b.final, patched.final]), columns=settings_a.batch, size=args.size).save(args.out, format="PNG")
    fraction = restored_fraction(patched.final, a.final, b.final)
    back = same = None
    if classifier is not None:
        back = float(digit_back(classifier, patched.final[None], a.final)[0])
        same = float(digit_back(classifier, b.final[None], a.final)[0])
    return {"model_a": model_a.name, "model_b": model_b.name, "ablation_b": ablation_b.to_dict(), "block": args.block[0],
            "window": None if window is None else [window.t_min, window.t_max],
            "fraction": None if math.isnan(fraction) else round(fraction, 4),
            "gap": round(float((b.final.clamp(-1, 1) - a.final.clamp(-1, 1)).abs().mean()), 6),
            "digit_back": back, "b_digit_same": same, "seconds": round(time.perf_counter() - started, 2)}


def _report_progress(done: int, total: int) -> None:
    print(f"\r{done}/{total} model steps", end="", file=sys.stderr, flush=True)


def _cell(value) -> str:
    return "  n/a" if value is None else f"{value:5.2f}"


def _print_table(title: str, output: dict, key: str = "fractions") -> None:
    width = max(len(block) for block in output["blocks"])
    print(f"{title}: rows the patched map, columns the t-window (the reverse process runs left to right)")
    print(" " * width + "".join(f"  {t_max:>3d}-{t_min:<3d}" for t_min, t_max in output["windows"]))
    for block, row in zip(output["blocks"], output[key]):
        print(block.ljust(width) + "".join(f"    {_cell(v)}" for v in row))


if __name__ == "__main__":
    sys.exit(main())
