"""Numbers, not only pictures: how well a model (or an ablation of it) denoises and generates.

- `eps_mse_per_timestep`: mean ‖ε̂ − ε‖² over held-out images at chosen t, with noise fixed by a seed,
  so two models or ablations are compared on identical inputs.
- `sample_quality`: our classifier's verdict on generated digits — the share recognised with
  confidence > 0.9, the class-histogram entropy (1 = all ten digits equally often) and the Fréchet
  distance to real test digits in the classifier's feature space.
- `radial_spectrum`: radially averaged Fourier power of feature maps (FreeU: skips carry high
  frequencies, the backbone low ones).

    python -m playground.evaluate --model weights/mnist [--ablate skip:14=0] [--num 256] [--setup setup.json] --json

With a setup (or --window / --lie-*), its t-window, timestep lie and h-space edit apply to the samples and
to the ε-error (at each t as the sampler would meet it); explicit flags override the setup's fields.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .ablation import Ablation
from .classifier import CONFIDENCE, DigitClassifier, class_entropy, classify, confident_share, load_classifier
from .cli import ShowDefaults
from .data import HELDOUT_DIR, mnist
from .sampling import DiffusionModel, HSpaceEdit, SampleSettings, TimestepLie, Window, make_scheduler, sample
from .setup import add_setup_arguments, setup_from_arguments

UNCONDITIONAL_SAMPLES = 256  # the quality bar judges this many unconditional samples (one batch, one draw)

# evaluate's CLI: the documented protocol (--full) and the quick look it gives without the flag (~20× less work)
FULL = {"num": UNCONDITIONAL_SAMPLES, "per_digit": 25, "eps_images": 512}
QUICK = {"num": 32, "per_digit": 2, "eps_images": 64}

DEFAULT_TIMESTEPS = (0, 10, 25, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)
# |pixel| beyond twice the data range [-1, 1]: the run has left what the model and the classifier know. The
# classifier sees such images clipped to [-1, 1], where saturated noise can read as a confident digit.
DIVERGED = 2.0


@torch.inference_mode()
def eps_mse_per_timestep(model: DiffusionModel, images: torch.Tensor, timesteps=DEFAULT_TIMESTEPS,
                         ablation: Ablation | None = None, labels: torch.Tensor | None = None,
                         seed: int = 0, batch: int = 256, ablation_window: Window | None = None,
                         timestep_lie: TimestepLie | None = None, h_edit: HSpaceEdit | None = None) -> dict[int, float]:
    """t -> mean over images and pixels of (ε̂ − ε)², on noise drawn once from `seed`.

    images: (N, C, H, W) in [-1, 1]. labels: (N,) class labels; default the null label (no digit).
    ablation_window, timestep_lie, h_edit: as in SampleSettings, applied at each t as sampling would.
    """
    at_t = SampleSettings(ablation=ablation or Ablation(), ablation_window=ablation_window, timestep_lie=timestep_lie,
                          h_edit=h_edit)
    scheduler = make_scheduler(model, "ddpm", 1)
    alphas_cumprod = scheduler.alphas_cumprod
    if labels is None and model.null_label is not None:
        labels = torch.full((len(images),), model.null_label, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=generator)
    result = {}
    for t in timesteps:
        if not 0 <= int(t) < len(alphas_cumprod):
            raise ValueError(f"timesteps must lie in [0, {len(alphas_cumprod) - 1}], got {t}")
        a = alphas_cumprod[int(t)]
        told = at_t.told_timestep(int(t), len(alphas_cumprod))
        edit = at_t.h_edit_at(int(t))
        shift = None if edit is None else model.to_unet(edit.strength * edit.direction)
        total = 0.0
        for i in range(0, len(images), batch):
            x0, eps = images[i:i + batch], noise[i:i + batch]
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
            y = None if labels is None else labels[i:i + batch]
            pred = model.unet(x_t, told, y, ablation=at_t.ablation_at(int(t)), bottleneck_shift=shift).sample
            total += (pred - eps).pow(2).sum().item()
        result[int(t)] = total / images.numel()
    return result


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets (FID's formula)."""
    a, b = features_a.double(), features_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    # Tr((Σa Σb)^½) = Σ √λ of the symmetric PSD matrix Σa^½ Σb Σa^½
    values, vectors = torch.linalg.eigh(cov_a)
    sqrt_a = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
    middle = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * middle)


@dataclass
class Quality:
    confident: float  # share of samples whose top class has probability > 0.9
    class_entropy: float  # entropy of the predicted-class histogram / log(10)
    fd: float  # Fréchet distance to real test digits in classifier features
    histogram: list[int]
    predicted: list[int]
    peak: float  # the largest |pixel| of the samples: above DIVERGED, some left the data range

    def as_dict(self) -> dict:
        return {"confident": self.confident, "class_entropy": self.class_entropy, "fd": self.fd, "histogram": self.histogram,
                "peak": self.peak}


def sample_quality(classifier: DigitClassifier, samples: torch.Tensor, reference_features: torch.Tensor) -> Quality:
    probabilities, features = classify(classifier, samples)
    confidence, predicted = probabilities.max(1)
    histogram = torch.bincount(predicted, minlength=probabilities.shape[1])
    return Quality(
        confident=confident_share(confidence),
        class_entropy=class_entropy(predicted, probabilities.shape[1]),
        fd=frechet_distance(features, reference_features),
        histogram=histogram.tolist(),
        predicted=predicted.tolist(),
        peak=samples.abs().max().item(),
    )


def radial_spectrum(feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., h, w) maps -> (frequencies in cycles/pixel, (R,) mean power per radius), power summing to 1."""
    h, w = feature.shape[-2:]
    maps = feature.float().reshape(-1, h, w)
    centred = maps - maps.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fftshift(torch.fft.fft2(centred).abs().pow(2), dim=(-2, -1)).mean(0)  # (h, w)
    ys, xs = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    radius = (ys.float().pow(2) * (w / h) ** 2 + xs.float().pow(2)).sqrt().round().long()  # in units of 1/w
    bins = int(radius.max()) + 1
    totals = torch.zeros(bins).index_add_(0, radius.flatten(), power.flatten())
    counts = torch.zeros(bins).index_add_(0, radius.flatten(), torch.ones(h * w))
    spectrum = totals / counts.clamp_min(1)
    spectrum = spectrum / spectrum.sum().clamp_min(1e-20)
    return torch.arange(bins) / w, spectrum


def high_frequency_share(feature: torch.Tensor) -> float:
    """Share of a map's (radially averaged) power above half the Nyquist frequency (0.25 cycles/px)."""
    frequencies, spectrum = radial_spectrum(feature)
    return float(spectrum[frequencies > 0.25].sum())


def skip_backbone_spectra(features: dict[str, torch.Tensor]) -> dict[str, dict]:
    """For every decoder join: the skip's and the backbone's spectra and high-frequency shares."""
    result = {}
    for name, skip in features.items():
        if not name.endswith(".skip"):
            continue
        join = name[: -len(".skip")]
        backbone = features[f"{join}.backbone"]
        f_skip, s_skip = radial_spectrum(skip)
        f_back, s_back = radial_spectrum(backbone)
        result[join] = {"resolution": skip.shape[-1], "frequencies": f_skip.tolist(), "skip": s_skip.tolist(),
                        "backbone": s_back.tolist(), "skip_high": float(s_skip[f_skip > 0.25].sum()),
                        "backbone_high": float(s_back[f_back > 0.25].sum())}
    return result


def reference_features(classifier: DigitClassifier, images: torch.Tensor) -> torch.Tensor:
    return classify(classifier, images)[1]


def evaluate_model(model: DiffusionModel, classifier: DigitClassifier, test_images: torch.Tensor, *,
                   ablation: Ablation = Ablation(), num: int = UNCONDITIONAL_SAMPLES, sampler: str = "ddim", steps: int = 50,
                   guidance: float = 1.5, seed: int = 0, eps_images: int = 512, per_digit: int = 25,
                   ablation_window: Window | None = None, timestep_lie: TimestepLie | None = None,
                   h_edit: HSpaceEdit | None = None) -> dict:
    """Every number of DESIGN.md's `evaluate` for one model × ablation, as a JSON-ready dict.

    ablation_window, timestep_lie, h_edit: as in SampleSettings, for the samples and the ε-error alike.
    """
    extras = dict(ablation_window=ablation_window, timestep_lie=timestep_lie, h_edit=h_edit)
    half = len(test_images) // 2
    reference = reference_features(classifier, test_images[half:half + num]) if len(test_images) >= half + num else \
        reference_features(classifier, test_images)
    samples = sample(model, SampleSettings(sampler=sampler, steps=steps, seed=seed, batch=num, label=None,
                                           guidance=guidance, ablation=ablation, **extras)).final
    quality = sample_quality(classifier, samples, reference)
    result = {"model": model.name, "ablation": ablation.to_dict(), "sampler": sampler, "steps": steps, "num": num,
              **quality.as_dict(),
              "eps_mse": {str(t): v for t, v in eps_mse_per_timestep(model, test_images[:eps_images], ablation=ablation,
                                                                     seed=seed, **extras).items()}}
    if ablation_window is not None:
        result["ablation_window"] = [ablation_window.t_min, ablation_window.t_max]
    if timestep_lie is not None:
        result["timestep_lie"] = {"offset": timestep_lie.offset, "fixed": timestep_lie.fixed}
    if model.null_label is not None:
        result["digit_accuracy"] = digit_accuracy(model, classifier, guidance, ablation=ablation, sampler=sampler,
                                                  steps=steps, seed=seed + 1, per_digit=per_digit, **extras)
        result["guidance"] = guidance
    return result


def confidence_over_draws(model: DiffusionModel, classifier: DigitClassifier, seeds: list[int], *, num: int = UNCONDITIONAL_SAMPLES,
                          sampler: str = "ddim", steps: int = 50, ablation: Ablation = Ablation(), **extras) -> dict:
    """The confident share of `num` unconditional samples, drawn once per seed: its mean and standard error.

    One draw of 256 has a standard error of ~0.025 at a share of 0.8, too coarse to tell two good models apart.
    """
    shares = []
    for seed in seeds:
        samples = sample(model, SampleSettings(sampler=sampler, steps=steps, seed=seed, batch=num, label=None,
                                               ablation=ablation, **extras)).final
        shares.append(confident_share(classify(classifier, samples)[0].max(1).values))
    spread = statistics.stdev(shares) if len(shares) > 1 else float("nan")
    return {"seeds": list(seeds), "confident": shares, "mean": statistics.fmean(shares),
            "standard_error": spread / len(shares) ** 0.5}


def digit_accuracy(model: DiffusionModel, classifier: DigitClassifier, guidance: float, *, ablation: Ablation = Ablation(),
                   sampler: str = "ddim", steps: int = 50, seed: int = 1, per_digit: int = 25, **extras) -> float:
    """Share of conditional samples (per_digit of each digit) that our classifier reads as the digit asked for.

    extras: further SampleSettings fields (ablation_window, timestep_lie, h_edit).
    """
    digits = tuple(d for d in range(model.null_label) for _ in range(per_digit))
    conditional = sample(model, SampleSettings(sampler=sampler, steps=steps, seed=seed, batch=len(digits),
                                               label=digits, guidance=guidance, ablation=ablation, **extras)).final
    predicted = classify(classifier, conditional)[0].argmax(1)
    return (predicted == torch.tensor(digits)).double().mean().item()


CURVE_SEED = 1_000_003  # a learning curve's draws: apart from every seed an evaluation or a choice of recipe used


@torch.inference_mode()
def curve_point(model: DiffusionModel, classifier: DigitClassifier, *, num: int = UNCONDITIONAL_SAMPLES, per_digit: int = 10,
                guidance: float = 1.5, seed: int = CURVE_SEED) -> dict:
    """The numbers a learning curve tracks: confident share and class entropy of `num` unconditional samples, and
    (for a class-conditional model) digit accuracy at `guidance`."""
    samples = sample(model, SampleSettings(seed=seed, batch=num, label=None)).final
    probabilities = classify(classifier, samples)[0]
    point = {"confident": confident_share(probabilities.max(1).values),
             "class_entropy": class_entropy(probabilities.argmax(1), probabilities.shape[1])}
    if model.null_label is not None:
        point["digit_accuracy"] = digit_accuracy(model, classifier, guidance, seed=seed + 1, per_digit=per_digit)
    return point


def real_baseline(classifier: DigitClassifier, test_images: torch.Tensor, num: int) -> dict:
    """The same numbers for two disjoint sets of real test digits: what "as good as data" means."""
    half = len(test_images) // 2
    first, second = test_images[:num], test_images[half:half + num]
    quality = sample_quality(classifier, first, reference_features(classifier, second))
    return quality.as_dict()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m playground.evaluate", description="Sample quality and ε-error of a model.",
                                formatter_class=ShowDefaults)
    add_setup_arguments(p, batch_flag=None)  # --setup, --model, --sampler, --steps, --seed, --guidance, --ablate, ...
    p.add_argument("--classifier", default="weights/classifier", help="the digit classifier that judges the samples")
    p.add_argument("--data-dir", default=str(HELDOUT_DIR),
                   help="folder with the MNIST gzip IDX files; its test split is used (default: %(default)s, the 512 "
                   "held-out test digits the package ships)")
    p.add_argument("--full", action="store_true",
                   help=f"the documented protocol: {FULL['num']} unconditional samples, {FULL['per_digit']} per digit, "
                        f"{FULL['eps_images']} ε-images (a few minutes on 2 cores); without it, the quick defaults below")
    p.add_argument("--num", type=int, help=f"unconditional samples to judge (1-{UNCONDITIONAL_SAMPLES}; default "
                                           f"{QUICK['num']}, {FULL['num']} with --full)")
    p.add_argument("--per-digit", type=int, help=f"conditional samples per digit for digit_accuracy (default "
                                                 f"{QUICK['per_digit']}, {FULL['per_digit']} with --full)")
    p.add_argument("--eps-images", type=int, help=f"held-out test digits for the ε-error per timestep (default "
                                                  f"{QUICK['eps_images']}, {FULL['eps_images']} with --full)")
    p.add_argument("--guidance-sweep", type=float, nargs="+", metavar="W",
                   help="also report digit accuracy at each of these guidance scales")
    p.add_argument("--baseline", action="store_true", help="also report two disjoint sets of real test digits")
    p.add_argument("--draws", type=int, default=1, metavar="K",
                   help="also judge K draws of --num unconditional samples (seeds --seed … --seed+K-1): mean and standard error")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    for key, value in (FULL if args.full else QUICK).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        if not 1 <= args.num <= UNCONDITIONAL_SAMPLES:
            raise ValueError(f"--num must be from 1 to {UNCONDITIONAL_SAMPLES}, got {args.num}")
        if args.draws < 1:
            raise ValueError(f"--draws must be at least 1, got {args.draws}")
        if args.eps_images < 1:
            raise ValueError(f"--eps-images must be at least 1, got {args.eps_images}")
        setup, model = setup_from_arguments(args)
        settings = setup.sample_settings(model)
        extras = dict(ablation_window=settings.ablation_window, timestep_lie=settings.timestep_lie, h_edit=settings.h_edit)
        classifier = load_classifier(args.classifier)
        test_images, _ = mnist("test", args.data_dir)
        result = evaluate_model(model, classifier, test_images, ablation=setup.ablation, num=args.num, sampler=setup.sampler,
                                steps=setup.steps, guidance=setup.guidance, seed=setup.seed, per_digit=args.per_digit,
                                eps_images=args.eps_images, **extras)
        result |= {"per_digit": args.per_digit, "eps_images": min(args.eps_images, len(test_images))}
        if args.guidance_sweep and model.null_label is not None:
            result["digit_accuracy_by_guidance"] = {
                str(w): digit_accuracy(model, classifier, SampleSettings(guidance=w).guidance, ablation=setup.ablation,
                                       sampler=setup.sampler, steps=setup.steps, seed=setup.seed + 1, **extras)
                for w in args.guidance_sweep}
        if args.draws > 1:
            result["confident_over_draws"] = confidence_over_draws(
                model, classifier, list(range(setup.seed, setup.seed + args.draws)), num=args.num, sampler=setup.sampler,
                steps=setup.steps, ablation=setup.ablation, **extras)
        if args.baseline:
            result["real_baseline"] = real_baseline(classifier, test_images, args.num)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
