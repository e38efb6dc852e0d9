"""Generate a grid of samples (and optionally a GIF of the reverse process) from a shipped model.

    python -m playground.sample --model weights/mnist --sampler ddim --steps 50 --seed 0 --num 16 \
        --out grid.png [--digit 7] [--guidance 1.5] [--gif traj.gif] [--ablate skip:14=0] [--ablate attn:SITE] [--ablate time]

Identical arguments give identical PNG bytes.
"""

from __future__ import annotations

import argparse
import sys

from .ablation import parse_ablation_specs
from .sampling import MAX_BATCH, SAMPLERS, SampleSettings, load_pipeline, sample
from .viz import image_grid, save_gif, trajectory_frames


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m playground.sample", description="Sample digits from a pipeline folder.")
    p.add_argument("--model", required=True, help="pipeline folder, e.g. weights/mnist")
    p.add_argument("--sampler", default="ddim", help=f"one of {', '.join(SAMPLERS)}")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num", type=int, default=16, help=f"samples, 1-{MAX_BATCH}")
    p.add_argument("--digit", type=int, help="the digit to draw (class-conditional models); default: no digit")
    p.add_argument("--guidance", type=float, default=1.5, help="classifier-free guidance scale (with --digit)")
    p.add_argument("--ablate", action="append", default=[], metavar="SPEC",
                   help="skip:RES=SCALE, skip:all=SCALE, attn:SITE, attn:all or time (repeatable)")
    p.add_argument("--out", required=True, help="PNG grid of the final samples")
    p.add_argument("--gif", help="also write the x̂0 of every step as a GIF")
    p.add_argument("--size", type=int, default=56, help="pixels per sample in the outputs")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = SampleSettings(sampler=args.sampler, steps=args.steps, seed=args.seed, batch=args.num, guidance=args.guidance)
        model = load_pipeline(args.model)
        if args.digit is not None and model.null_label is not None and not 0 <= args.digit < model.null_label:
            raise ValueError(f"--digit must be from 0 to {model.null_label - 1}, got {args.digit}")
        ablation = parse_ablation_specs(args.ablate, model.unet.skip_resolutions, model.unet.attention_sites)
        settings = SampleSettings(sampler=args.sampler, steps=args.steps, seed=args.seed, batch=args.num,
                                  label=args.digit, guidance=args.guidance, ablation=ablation)
        trajectory = sample(model, settings)
        image_grid(trajectory.final, size=args.size).save(args.out, format="PNG")
        if args.gif:
            save_gif(trajectory_frames(trajectory, "x0", size=args.size), args.gif)
    except (ValueError, FloatingPointError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(args.out + (f" and {args.gif}" if args.gif else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
