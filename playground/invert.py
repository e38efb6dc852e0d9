"""Invert (or noise) your own digit and let the model draw it again, as itself or as another digit.

    python -m playground.invert --model weights/mnist --image my-digit.png --digit 3 --steps 50 --out strip.png
        [--as-digit 5 --swap-at 600] [--noise-t 500 --seed 0]

The image is made MNIST-like first (`inversion.image_from_sketch`). Without --noise-t it is DDIM-inverted to noise; with
it, noised to the schedule's timestep nearest T. The strip shows: the image, the start (x_T or x_t, clipped), the
regenerated image and, with --as-digit, the one drawn as that digit from --swap-at on. Prints the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from PIL import Image

from .cli import ShowDefaults
from .inversion import ddim_invert, image_from_sketch, noised, regenerate
from .sampling import SampleSettings, load_pipeline, make_scheduler
from .viz import image_grid


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m playground.invert", formatter_class=ShowDefaults,
                                description="DDIM-invert or noise a digit image, then regenerate it.")
    p.add_argument("--model", default="weights/mnist", help="pipeline folder")
    p.add_argument("--image", required=True, help="PNG of a digit: a drawing or an MNIST image, any size")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps, for the inversion and the regeneration")
    p.add_argument("--digit", type=int, help="the digit it shows: the label for inversion and regeneration "
                   "(default: the null label)")
    p.add_argument("--as-digit", type=int, help="also regenerate it as this digit from --swap-at on")
    p.add_argument("--swap-at", type=int, default=500, help="the t from which --as-digit replaces --digit")
    p.add_argument("--noise-t", type=int, help="noise it to (the schedule's step nearest) this t instead of inverting")
    p.add_argument("--seed", type=int, default=0, help="the noise of --noise-t")
    p.add_argument("--out", required=True, help="PNG strip: image | start | regenerated [| as --as-digit]")
    p.add_argument("--size", type=int, default=84, help="pixels per image in the strip")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model = load_pipeline(args.model)
        try:
            with Image.open(args.image) as drawing:
                image = image_from_sketch(drawing)
        except OSError as error:
            raise ValueError(f"--image: cannot read {args.image} as an image ({error})") from None
        if image.shape[1:] != model.image_shape:
            raise ValueError(f"--model: {model.name!r} draws {model.image_shape} images, not MNIST's (1, 28, 28)")
        settings = SampleSettings(sampler="ddim", steps=args.steps, batch=1, label=args.digit, guidance=1.0, seed=args.seed)
        if args.noise_t is None:
            start, inversion = ddim_invert(model, image, args.steps, label=args.digit)
            from_t = int(inversion.timesteps[-1])
        else:
            schedule = make_scheduler(model, "ddim", args.steps).timesteps
            from_t = int(schedule[(schedule - args.noise_t).abs().argmin()])
            start = noised(model, image, from_t, seed=args.seed)
        again = regenerate(model, start, settings, from_t=from_t)
        images = [image, start.clamp(-1, 1), again.final]
        result = {"out": args.out, "start_t": from_t, "reconstruction_error": round(float((again.final - image).abs().mean()), 4)}
        if args.as_digit is not None:
            other = regenerate(model, start, settings, from_t=from_t, swap_label_at=args.swap_at, new_label=args.as_digit)
            images.append(other.final)
            result.update(as_digit=args.as_digit, swap_at=args.swap_at)
        image_grid(torch.cat(images), columns=len(images), size=args.size).save(args.out, format="PNG")
    except (ValueError, FloatingPointError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
