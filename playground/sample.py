"""Generate a grid of samples (and optionally a GIF of the reverse process) from a shipped model.

    python -m playground.sample --model weights/mnist --sampler ddim --steps 50 --seed 0 --num 16 \
        --out grid.png [--digit 7] [--guidance 1.5] [--gif traj.gif] [--ablate skip:14=0] [--ablate attn:SITE] [--ablate time]
        [--ablate freeu] [--window 0:300] [--lie-offset 200] [--setup setup.json] [--tensors run.safetensors]

`--setup` reads a PlaygroundSetup JSON (as the app shares it); flags given explicitly override its fields.
Identical arguments give identical PNG bytes.
"""

from __future__ import annotations

import argparse
import sys

from .cli import ShowDefaults
from .explore import export_safetensors, trajectory_metadata, trajectory_tensors
from .sampling import sample
from .setup import add_setup_arguments, setup_from_arguments
from .viz import image_grid, save_gif, trajectory_frames


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m playground.sample", description="Sample digits from a pipeline folder.",
                                formatter_class=ShowDefaults)
    add_setup_arguments(p, batch_flag="--num")
    p.add_argument("--out", required=True, help="PNG grid of the final samples")
    p.add_argument("--gif", help="also write the x̂0 of every step as a GIF")
    p.add_argument("--tensors", help="also write x_t, ε̂ and x̂0 of every step as .safetensors")
    p.add_argument("--size", type=int, default=56, help="pixels per sample in the outputs")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        setup, model = setup_from_arguments(args)
        trajectory = sample(model, setup.sample_settings(model))
        image_grid(trajectory.final, size=args.size).save(args.out, format="PNG")
        if args.gif:
            save_gif(trajectory_frames(trajectory, "x0", size=args.size), args.gif)
        if args.tensors:
            export_safetensors(trajectory_tensors(trajectory), args.tensors, trajectory_metadata(trajectory))
    except (ValueError, FloatingPointError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(args.out + (f" and {args.gif}" if args.gif else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
