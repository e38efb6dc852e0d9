"""Draw the filter one pixel of x̂0 applies to x_t at one step of a run (see `playground/filters.py`).

    python -m playground.jacobian --model weights/mnist --digit 3 --step 40 --pixel 14 14 --out jacobian.png
        [--setup setup.json] [--seed 0] [--ablate skip:28=0] [--sample 0]

The run is the one `python -m playground.sample` draws with the same flags, stopped after `--step`. Prints the step's
t, the filter's width (pixels) and the seconds the Jacobian took, as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .cli import ShowDefaults
from .filters import filter_width, jacobian_at, jacobian_figure
from .sampling import sample
from .setup import add_setup_arguments, setup_from_arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m playground.jacobian", formatter_class=ShowDefaults,
                                description="The Jacobian row ∂x̂0[pixel]/∂x_t at one step of a run, as a figure.")
    add_setup_arguments(p, batch_flag="--num")
    p.add_argument("--step", type=int, default=40, help="step index of the run (0 is the first, noisiest step)")
    p.add_argument("--pixel", type=int, nargs=2, default=[14, 14], metavar=("ROW", "COL"), help="the pixel of x̂0")
    p.add_argument("--sample", type=int, default=0, help="which sample of the batch")
    p.add_argument("--out", required=True, help="PNG of the figure")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        setup, model = setup_from_arguments(args)
        settings = setup.sample_settings(model)
        if not 0 <= args.step < settings.steps:  # checked before the run, which stops there
            raise ValueError(f"--step must be from 0 to {settings.steps - 1}, got {args.step}")
        if not 0 <= args.sample < settings.batch:
            raise ValueError(f"--sample must be from 0 to {settings.batch - 1} (--num samples), got {args.sample}")
        trajectory = sample(model, settings, stop_after=args.step)
        started = time.perf_counter()
        jacobian = jacobian_at(model, trajectory, args.step, tuple(args.pixel), sample_index=args.sample)
        seconds = time.perf_counter() - started
        t = int(trajectory.timesteps[args.step])
        jacobian_figure(jacobian, tuple(args.pixel), image=trajectory.x_t[args.step, args.sample],
                        title=f"{model.name}, step {args.step} (t = {t})").savefig(args.out, format="png")
    except (ValueError, FloatingPointError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"out": args.out, "step": args.step, "t": t, "pixel": args.pixel,
                      "width": round(filter_width(jacobian), 3), "seconds": round(seconds, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
