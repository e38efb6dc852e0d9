"""Classify digits with the generator itself: the label under which it denoises them best (Li et al., ICCV 2023).

    python -m playground.denoising_classify --model weights/mnist --image my-digit.png [--out posterior.png]
    python -m playground.denoising_classify --model weights/mnist --mnist-test 100 [--timesteps 20] [--ablate skip:28=0]

--image reads a drawing or an MNIST image (made MNIST-like first) and prints its posterior; --mnist-test N classifies
the first N shipped held-out test digits (or --data-dir's test split) and prints the accuracy. JSON either way.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from PIL import Image

from .ablation import parse_ablation_specs
from .cli import ShowDefaults
from .data import HELDOUT_DIR, load_mnist
from .denoising_classifier import DEFAULT_TIMESTEPS, denoising_posterior, posterior_figure, trial_timesteps
from .inversion import image_from_sketch
from .sampling import load_pipeline


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m playground.denoising_classify", formatter_class=ShowDefaults,
                                description="Classify digits by how well a class-conditional model denoises them.")
    p.add_argument("--model", default="weights/mnist", help="pipeline folder of a class-conditional model")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="PNG of one digit (a drawing or an MNIST image, any size)")
    source.add_argument("--mnist-test", type=int, metavar="N", help="classify the first N held-out MNIST test digits")
    p.add_argument("--data-dir", help="folder with the MNIST test IDX files (default: the held-out digits shipped in "
                   "playground/assets/mnist-heldout)")
    p.add_argument("--timesteps", type=int, default=DEFAULT_TIMESTEPS, help="K: timesteps per image, spread evenly")
    p.add_argument("--noise", type=int, default=1, help="noise draws per timestep")
    p.add_argument("--seed", type=int, default=0, help="seeds the noise, the same for every label")
    p.add_argument("--ablate", action="append", default=[], metavar="SPEC", help="skip:RES=SCALE, attn:SITE, time, ... "
                   "(as python -m playground.sample; repeatable)")
    p.add_argument("--out", help="with --image: PNG bar chart of the posterior")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model = load_pipeline(args.model)
        ablation = parse_ablation_specs(args.ablate, model.unet.skip_resolutions, model.unet.attention_sites)
        if args.image is not None:
            try:
                with Image.open(args.image) as drawing:
                    images = image_from_sketch(drawing)
            except OSError as error:
                raise ValueError(f"--image: cannot read {args.image} as an image ({error})") from None
            labels = None
        else:
            if args.mnist_test < 1:
                raise ValueError(f"--mnist-test must be at least 1, got {args.mnist_test}")
            images, labels = load_mnist(args.data_dir or HELDOUT_DIR, "test", limit=args.mnist_test)
        trial_timesteps(model, args.timesteps)  # a bad K is named before any work
        started = time.perf_counter()
        posterior = denoising_posterior(model, images, timesteps=args.timesteps, n_noise=args.noise, seed=args.seed,
                                        ablation=ablation)
        seconds = (time.perf_counter() - started) / len(images)
        predicted = posterior.argmax(1)
        if labels is None:
            result = {"digit": int(predicted[0]), "posterior": [round(float(p), 4) for p in posterior[0]]}
            if args.out:
                posterior_figure(posterior[0]).savefig(args.out, format="png")
                result["out"] = args.out
        else:
            result = {"accuracy": float((predicted == labels).double().mean()), "images": len(images)}
        result.update(timesteps=args.timesteps, noise=args.noise, seconds_per_image=round(seconds, 3))
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
