"""Linear probes: does each block of the U-Net know which digit it is looking at, at step t?

A linear probe (Alain & Bengio 2016, "Understanding intermediate layers using linear classifier probes") is a
logistic regression trained on a frozen network's features: if a linear map of a block's features predicts the
label, the block carries it in a readable form. Here the features are one block's map, global-average-pooled to
(C,), on real digits noised to timestep t; the model is given the null label, so whatever the probe finds came
from the image and not from being told. One probe per block × t gives the table "who knows the digit when"
(for diffusion features, cf. Kwon et al. 2023 on the bottleneck as a semantic "h-space", and Baranchuk et al. 2022
on probing a DDPM's decoder features for segmentation).

- `pooled_features`: real images noised to t (as `evaluate.eps_mse_per_timestep` does, seeded) -> {block: (N, C)}.
- `LinearProbes` / `train_probes`: a probe per (block, t), its held-out accuracy; saved as one safetensors file
  (`{block}@{t}.weight/bias/mean/std`) plus `probes.json` (blocks, timesteps, accuracy, what it was trained on).
- `probe_reading`: every probe read along a sampling run, for A and for B under its ablation.
- `probe_accuracy_figure`, `probe_reading_figure`: the table as a heatmap; the reading as one curve per run.

    python -m playground.probes train --model mnist --data-dir FOLDER --train 3000 --test 1000 --out weights/mnist/probes
    python -m playground.probes show --probes weights/mnist/probes --out accuracy.png [--reading reading.png --digit 7 --ablate skip:14=0]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load, save_file

from .ablation import parse_ablation_specs
from .checkpoint import PICKLE_SUFFIXES, first_line
from .cli import ShowDefaults
from .data import mnist
from .sampling import DiffusionModel, SampleSettings, Trajectory, load_pipeline, make_scheduler, sample
from .viz import SEQUENTIAL, plt

# Every 200 steps from pure noise, then 100, 50 and the clean image. On the flagship's linear β schedule the
# signal-to-noise ratio ᾱ/(1−ᾱ) is 0.0015 at t=800, 0.026 at 600, 0.24 at 400, 1.9 at 200, 8.5 at 100, 32 at 50.
TIMESTEPS = (999, 800, 600, 400, 200, 100, 50, 0)
CLASSES = 10
WEIGHT_DECAY = 1e-3  # an L2 penalty on the weights: where classes are separable, LBFGS would otherwise grow them forever
LBFGS_STEPS = 200
TENSORS_FILE, CONFIG_FILE = "probes.safetensors", "probes.json"
PARTS = ("weight", "bias", "mean", "std")
# a block's own output: a resnet or attention layer of a level, not a resampler (already the next level's
# resolution) nor a part of one layer's input or update (`.skip`, `.backbone`, `.update`)
_BLOCK_OUTPUT = re.compile(r"^(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.(resnets|attentions)\.\d+$")


def default_blocks(unet) -> tuple[str, ...]:
    """The last map of each encoder level, of the bottleneck and of each decoder level, in forward order."""
    last: dict[str, str] = {}
    for name in unet.feature_names:
        match = _BLOCK_OUTPUT.match(name)
        if match:
            last[match.group(1)] = name  # a later layer of the same level replaces the earlier one, in place
    return tuple(last.values())


def _pool(features: dict[str, torch.Tensor], blocks) -> dict[str, torch.Tensor]:
    return {block: features[block].float().mean((2, 3)).cpu() for block in blocks}  # (B, C, h, w) -> (B, C)


def _check_blocks(model: DiffusionModel, blocks) -> tuple[str, ...]:
    unknown = [block for block in blocks if block not in model.unet.feature_names]
    if unknown or not blocks:
        raise ValueError(f"blocks {unknown or '(none)'} are not maps of model {model.name!r}; its maps: {list(model.unet.feature_names)}")
    return tuple(blocks)


@torch.inference_mode()
def pooled_features(model: DiffusionModel, images: torch.Tensor, labels: torch.Tensor | None = None, t: int = 0,
                    blocks=None, *, seed: int = 0, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """block -> (N, C): each block's map, averaged over space, for `images` noised to timestep t.

    images: (N, C, H, W) in [-1, 1]; noise drawn once from `seed`, x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε.
    labels: what the model is told, (N,); None is the null label (no digit), what probes are trained on.
    blocks: feature names (default `default_blocks`).
    """
    blocks = _check_blocks(model, default_blocks(model.unet) if blocks is None else blocks)
    alphas_cumprod = make_scheduler(model, "ddpm", 1).alphas_cumprod
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < len(alphas_cumprod):
        raise ValueError(f"t must be a whole number from 0 to {len(alphas_cumprod) - 1}, got {t!r}")
    if labels is None and model.null_label is not None:
        labels = torch.full((len(images),), model.null_label, dtype=torch.long)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    a = alphas_cumprod[t]
    chunks = []
    for i in range(0, len(images), batch_size):
        x_t = a.sqrt() * images[i:i + batch_size] + (1 - a).sqrt() * noise[i:i + batch_size]
        y = None if labels is None else labels[i:i + batch_size].to(model.unet.conv_in.weight.device)
        chunks.append(_pool(model.unet(model.to_unet(x_t), t, y, capture_features=True).features, blocks))
    return {block: torch.cat([chunk[block] for chunk in chunks]) for block in blocks}


@dataclass
class Probe:
    """Logistic regression on standardised features: logits = ((f − mean) / std) · weightᵀ + bias."""

    weight: torch.Tensor  # (K, C)
    bias: torch.Tensor  # (K,)
    mean: torch.Tensor  # (C,)
    std: torch.Tensor  # (C,)

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (N, K)."""
        return (((features - self.mean) / self.std) @ self.weight.T + self.bias).softmax(1)

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        return (self.probabilities(features).argmax(1) == labels).double().mean().item()


def fit_probe(features: torch.Tensor, labels: torch.Tensor) -> Probe:
    """(N, C) features, (N,) labels -> a probe: full-batch LBFGS on cross-entropy + WEIGHT_DECAY·‖W‖², from zero weights
    (so the same data gives the same probe)."""
    with torch.inference_mode(False), torch.enable_grad():
        mean, std = features.mean(0), features.std(0).clamp_min(1e-6)  # a constant feature stays 0, not NaN
        z = (features - mean) / std  # (N, C)
        weight = torch.zeros(CLASSES, z.shape[1], requires_grad=True)
        bias = torch.zeros(CLASSES, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], max_iter=LBFGS_STEPS, history_size=20, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = F.cross_entropy(z @ weight.T + bias, labels) + WEIGHT_DECAY * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
    return Probe(weight.detach().clone(), bias.detach().clone(), mean.clone(), std.clone())


@dataclass
class LinearProbes:
    """One probe per (block, t), with its accuracy on held-out images.

    timesteps: descending, as the reverse process meets them. record: what was trained on what (JSON-ready).
    """

    blocks: tuple[str, ...]
    timesteps: tuple[int, ...]
    probes: dict[tuple[str, int], Probe]
    accuracy: dict[tuple[str, int], float]
    record: dict = field(default_factory=dict)

    def nearest_t(self, t: int) -> int:
        """The probed timestep nearest to t (a tie goes to the noisier one)."""
        return min(self.timesteps, key=lambda probed: (abs(probed - t), -probed))

    def probabilities(self, block: str, t: int, features: torch.Tensor) -> torch.Tensor:
        """(N, C) pooled features of `block` at timestep t -> (N, K), by the probe of the nearest probed t."""
        return self.probes[(block, self.nearest_t(t))].probabilities(features)

    def accuracy_table(self) -> str:
        """The held-out accuracy as a markdown table, blocks down, t across (999 on the left)."""
        rows = ["| block | " + " | ".join(f"t={t}" for t in self.timesteps) + " |", "|---" * (len(self.timesteps) + 1) + "|"]
        rows += [f"| `{b}` | " + " | ".join(f"{self.accuracy[(b, t)]:.3f}" for t in self.timesteps) + " |" for b in self.blocks]
        return "\n".join(rows)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"{b}@{t}.{part}": getattr(self.probes[(b, t)], part).contiguous()
                   for b in self.blocks for t in self.timesteps for part in PARTS}
        save_file(tensors, folder / TENSORS_FILE)
        config = {"blocks": list(self.blocks), "timesteps": list(self.timesteps),
                  "accuracy": {f"{b}@{t}": self.accuracy[(b, t)] for b in self.blocks for t in self.timesteps},
                  "record": self.record}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "LinearProbes":
        """Read what `save` wrote; safetensors only (never a pickle), every tensor present and of matching shape."""
        folder = Path(folder)
        config_file, tensors_file = folder / CONFIG_FILE, folder / TENSORS_FILE
        try:
            config = json.loads(config_file.read_text())
            blocks, timesteps = tuple(config["blocks"]), tuple(config["timesteps"])
            accuracy = {(b, t): float(config["accuracy"][f"{b}@{t}"]) for b in blocks for t in timesteps}
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{config_file}: not a probes config with blocks, timesteps and accuracy ({first_line(error)})") from None
        if not blocks or not all(isinstance(b, str) for b in blocks) or not timesteps or \
                not all(isinstance(t, int) and not isinstance(t, bool) for t in timesteps) or \
                list(timesteps) != sorted(set(timesteps), reverse=True):
            raise ValueError(f"{config_file}: blocks must be names and timesteps distinct whole numbers, noisiest first")
        if not tensors_file.is_file():
            pickles = sorted(p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES)
            raise ValueError(f"{tensors_file}: missing" + (f"; {', '.join(pickles)} is a pickle, which can run code when "
                                                           "opened, so it is never loaded" if pickles else ""))
        try:
            tensors = load(tensors_file.read_bytes())  # read, not mapped: rewriting the file later cannot pull pages away
        except Exception as error:  # safetensors' own SafetensorError: a pickle, a truncated or a corrupt file
            raise ValueError(f"{tensors_file}: not a safetensors file ({first_line(error)}); probes load from safetensors only") from None
        expected = [f"{b}@{t}.{part}" for b in blocks for t in timesteps for part in PARTS]
        missing, unexpected = [n for n in expected if n not in tensors], sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{tensors_file}: " + "; ".join(
                f"{what} {len(names)} tensors {names[:3]}" for what, names in (("lacks", missing), ("holds unexpected", unexpected)) if names))
        probes = {}
        for b in blocks:
            for t in timesteps:
                probe = Probe(*(tensors[f"{b}@{t}.{part}"] for part in PARTS))
                channels = probe.weight.shape[-1] if probe.weight.dim() else -1
                shapes = [tuple(getattr(probe, part).shape) for part in PARTS]
                if shapes != [(CLASSES, channels), (CLASSES,), (channels,), (channels,)] or not (probe.std > 0).all() or \
                        not all(torch.isfinite(getattr(probe, part)).all() for part in PARTS):
                    raise ValueError(f"{tensors_file}: the probe {b}@{t} is not a ({CLASSES}, C) weight, ({CLASSES},) bias, "
                                     "(C,) mean and (C,) std > 0, all finite")
                probes[(b, t)] = probe
        return cls(blocks, timesteps, probes, accuracy, config.get("record", {}))


def train_probes(model: DiffusionModel, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                 blocks=None, timesteps=TIMESTEPS, *, seed: int = 0, batch_size: int = 256, progress=None) -> LinearProbes:
    """A probe per block × t on `train` (images, labels), scored on `test`; the two get different noise (seed, seed + 1)."""
    blocks = _check_blocks(model, default_blocks(model.unet) if blocks is None else blocks)
    timesteps = tuple(sorted({int(t) for t in timesteps}, reverse=True))
    started = time.perf_counter()
    probes, accuracy = {}, {}
    for k, t in enumerate(timesteps):
        train_features = pooled_features(model, train[0], None, t, blocks, seed=seed, batch_size=batch_size)
        test_features = pooled_features(model, test[0], None, t, blocks, seed=seed + 1, batch_size=batch_size)
        for block in blocks:
            probes[(block, t)] = fit_probe(train_features[block], train[1])
            accuracy[(block, t)] = probes[(block, t)].accuracy(test_features[block], test[1])
        if progress is not None:
            progress(k + 1, len(timesteps))
    record = {"model": model.name, "default_blocks": blocks == default_blocks(model.unet),
              "train_images": len(train[0]), "test_images": len(test[0]), "seed": seed,
              "weight_decay": WEIGHT_DECAY, "lbfgs_steps": LBFGS_STEPS,
              "wall_seconds": round(time.perf_counter() - started, 1), "torch_threads": torch.get_num_threads()}
    return LinearProbes(blocks, timesteps, probes, accuracy, record)


@torch.inference_mode()
def probe_reading(probes: LinearProbes, model: DiffusionModel, trajectory: Trajectory, sample_index: int = 0,
                  batch_size: int = 64) -> torch.Tensor:
    """(blocks, steps, K): what each block's probe reads from one sample at every step of a run.

    Each step's features come from one capture forward on the run's x_t at its timestep, with the run's ablation,
    timestep lie and h-space edit at that step (so B is read under its ablation), and the null label: the pass
    classifier-free guidance makes at every step, and the one the probes were trained on. Step t is read by the
    probe of the nearest probed t (`LinearProbes.nearest_t`).
    """
    settings = trajectory.settings
    if not 0 <= sample_index < settings.batch:
        raise ValueError(f"sample_index must be from 0 to {settings.batch - 1}, got {sample_index}")
    shapes = model.unet.feature_shapes()
    for block in probes.blocks:
        channels = probes.probes[(block, probes.timesteps[0])].mean.shape[0]
        if block not in shapes or shapes[block][0] != channels:
            raise ValueError(f"the probes read {block} with {channels} channels, which model {model.name!r} does not have")
    timesteps = [int(t) for t in trajectory.timesteps]
    last = model.scheduler_config.get("num_train_timesteps", 1000)
    # steps that share an ablation and an edit share a forward
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(timesteps):
        groups.setdefault((settings.ablation_at(t), settings.h_edit_at(t)), []).append(i)
    reading = torch.empty(len(probes.blocks), len(timesteps), CLASSES)
    for (ablation, edit), steps in groups.items():
        shift = None if edit is None else model.to_unet(edit.strength * edit.direction)
        for start in range(0, len(steps), batch_size):
            chunk = steps[start:start + batch_size]
            x = model.to_unet(trajectory.x_t[chunk, sample_index])  # (n, C, H, W)
            told = torch.tensor([settings.told_timestep(timesteps[i], last) for i in chunk])
            labels = None if model.null_label is None else torch.full((len(chunk),), model.null_label, device=x.device)
            features = _pool(model.unet(x, told, labels, ablation=ablation, capture_features=True,
                                        bottleneck_shift=shift).features, probes.blocks)
            for b, block in enumerate(probes.blocks):
                for row, i in enumerate(chunk):
                    reading[b, i] = probes.probabilities(block, timesteps[i], features[block][row:row + 1])[0]
    return reading


def probe_accuracy_figure(probes: LinearProbes):
    """Held-out accuracy, blocks down (forward order) and t across (999 on the left, as the reverse process runs)."""
    table = [[probes.accuracy[(b, t)] for t in probes.timesteps] for b in probes.blocks]
    fig, ax = plt.subplots(figsize=(2.8 + 0.65 * len(probes.timesteps), 1.2 + 0.42 * len(probes.blocks)), dpi=100)
    image = ax.imshow(table, cmap=SEQUENTIAL, vmin=0, vmax=1, aspect="auto")
    for i, row in enumerate(table):
        for j, value in enumerate(row):  # magma is dark at the bottom: light text there
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color="black" if value > 0.55 else "white")
    ax.set_xticks(range(len(probes.timesteps)), [str(t) for t in probes.timesteps])
    ax.set_yticks(range(len(probes.blocks)), probes.blocks, fontsize=8)
    ax.set_xlabel("t (the reverse process runs left to right)")
    fig.colorbar(image, ax=ax, label=f"held-out accuracy (chance {1 / CLASSES:.2f})")
    ax.set_title("Does each block know the digit at step t? (linear probes on pooled features)", fontsize=10)
    fig.tight_layout()
    return fig


def probe_reading_figure(probes: LinearProbes, readings, timesteps: torch.Tensor, digit: int | None = None):
    """p(digit) as each block's probe reads it over the run, one panel per block, one curve per run (A, B, ...).

    readings: run name -> (blocks, steps, K) from `probe_reading`. digit: default the digit the first run's blocks
    agree on at its last step.
    """
    readings = {"run": readings} if isinstance(readings, torch.Tensor) else dict(readings)
    for name, reading in readings.items():
        if reading.shape != (len(probes.blocks), len(timesteps), CLASSES):
            raise ValueError(f"reading {name!r} has shape {tuple(reading.shape)}, not (blocks, steps, {CLASSES}) = "
                             f"({len(probes.blocks)}, {len(timesteps)}, {CLASSES})")
    digit = int(next(iter(readings.values()))[:, -1].mean(0).argmax()) if digit is None else digit
    t = [int(x) for x in timesteps]
    fig, axes = plt.subplots(len(probes.blocks), 1, sharex=True, squeeze=False, dpi=100,
                             figsize=(6.4, 0.8 + 0.75 * len(probes.blocks)))
    for b, (ax, block) in enumerate(zip(axes[:, 0], probes.blocks)):
        for k, (name, reading) in enumerate(readings.items()):
            ax.plot(t, reading[b, :, digit].tolist(), color=f"C{k}", linewidth=1.5, label=name)
        ax.axhline(1 / CLASSES, color="grey", linestyle=":", linewidth=0.8)
        ax.set_ylim(-0.03, 1.03)
        ax.set_yticks([0, 1])
        ax.set_ylabel(block, rotation=0, ha="right", va="center", fontsize=7)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="upper left", ncol=len(readings))
    axes[-1, 0].set_xlim(1000, -1)
    axes[-1, 0].set_xlabel("t (the reverse process runs left to right; dotted: chance)")
    fig.suptitle(f"p(digit {digit}) read from each block by its linear probe", fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Model card and command line
# ---------------------------------------------------------------------------------------------


def render_card(probes: LinearProbes) -> str:
    """The README.md beside the probes: what was trained on what, the accuracy table, the reproduce command."""
    r = probes.record
    # the options a reproduce command must state: those the training run changed
    options = "" if probes.timesteps == TIMESTEPS else " --timesteps " + " ".join(map(str, probes.timesteps))
    options += "" if r["default_blocks"] else " --blocks " + " ".join(probes.blocks)
    return "\n".join([
        f"# Linear probes for `weights/{r['model']}`", "",
        "Does each block of the U-Net know which digit it is looking at, at step t? One logistic-regression probe per "
        "block × timestep (Alain & Bengio 2016) on the frozen model's features; written by `python -m playground.probes train`.",
        "", "## What was trained on what",
        f"- model: `weights/{r['model']}`, frozen, told the null label (no digit), so what a probe reads came from the image",
        f"- features: each block's map at timestep t, global-average-pooled to (C,); blocks {', '.join(f'`{b}`' for b in probes.blocks)}",
        f"- data: the first {r['train_images']:,} MNIST train images to train, the first {r['test_images']:,} MNIST test "
        f"images to score, each noised to t as in training (x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε; noise seeds {r['seed']} and {r['seed'] + 1})",
        f"- probes: standardised features (train mean and std), logistic regression C → {CLASSES}, full-batch LBFGS "
        f"({r['lbfgs_steps']} iterations from zero), L2 weight decay {r['weight_decay']}",
        f"- wall time {r['wall_seconds']:.0f} s ({r['torch_threads']} torch threads, {r['hardware']})",
        "", f"## Held-out accuracy (chance {1 / CLASSES:.2f})", probes.accuracy_table(),
        "", "## Files",
        f"- `{TENSORS_FILE}`: tensors `{{block}}@{{t}}.weight` (K, C), `.bias` (K,), `.mean` (C,), `.std` (C,)",
        f"- `{CONFIG_FILE}`: blocks, timesteps, the accuracy above and this record",
        "- load: `LinearProbes.load(folder)` (safetensors only); read a run: `probe_reading(probes, model, trajectory)`, "
        "which uses the probe of the nearest probed t at each step",
        "", "## Reproduce",
        f"`python -m playground.probes train --model {r['model']} --data-dir FOLDER --train {r['train_images']} "
        f"--test {r['test_images']} --seed {r['seed']}{options} --out weights/{r['model']}/probes`, FOLDER holding the standard "
        "MNIST IDX files", ""])


def _model(value: str) -> DiffusionModel:
    """A pipeline folder, or the name of one under weights/."""
    path = Path(value)
    return load_pipeline(path if (path / "unet").is_dir() else Path("weights") / value)


def _train(args) -> None:
    model = _model(args.model)
    train, test = mnist("train", args.data_dir, limit=args.train), mnist("test", args.data_dir, limit=args.test)
    started = time.perf_counter()
    probes = train_probes(model, train, test, args.blocks, args.timesteps, seed=args.seed, batch_size=args.batch_size,
                          progress=lambda k, n: print(f"t {k}/{n} done after {time.perf_counter() - started:.0f} s", flush=True))
    probes.record["hardware"] = args.hardware
    probes.save(args.out)
    (Path(args.out) / "README.md").write_text(render_card(probes))
    print(probes.accuracy_table())


def _show(args) -> None:
    probes = LinearProbes.load(args.probes)
    print(probes.accuracy_table())
    if args.out:
        probe_accuracy_figure(probes).savefig(args.out)
    if args.reading:
        model = _model(args.model or probes.record.get("model", "mnist"))
        settings = SampleSettings(steps=args.steps, seed=args.seed, batch=1, label=args.digit)
        runs = {"A": settings}
        if args.ablate:
            ablation = parse_ablation_specs(args.ablate, model.unet.skip_resolutions, model.unet.attention_sites)
            runs["B: " + " ".join(args.ablate)] = replace(settings, ablation=ablation)
        trajectories = {name: sample(model, run) for name, run in runs.items()}
        readings = {name: probe_reading(probes, model, trajectory) for name, trajectory in trajectories.items()}
        probe_reading_figure(probes, readings, trajectories["A"].timesteps, args.digit).savefig(args.reading)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m playground.probes", formatter_class=ShowDefaults,
                                description="Linear probes: which blocks know the digit at which step t.")
    commands = p.add_subparsers(dest="command", required=True, help="train probes, or show trained ones")
    train = commands.add_parser("train", formatter_class=ShowDefaults, help="train a probe per block × t and write its card")
    train.add_argument("--model", default="mnist", help="a pipeline folder, or its name under weights/")
    train.add_argument("--data-dir", help="folder with the MNIST gzip IDX files (default: fetch MNIST from the Hugging Face "
                       "Hub once, cached under HF_HOME)")
    train.add_argument("--train", type=int, default=3000, help="the first N MNIST train images train the probes")
    train.add_argument("--test", type=int, default=1000, help="the first M MNIST test images score them")
    train.add_argument("--timesteps", type=int, nargs="+", default=list(TIMESTEPS), help="the timesteps probed")
    train.add_argument("--blocks", nargs="+", help="feature names to probe (default: the last map of each level and of the bottleneck)")
    train.add_argument("--seed", type=int, default=0, help="the noise seed of the train images (test: seed + 1)")
    train.add_argument("--batch-size", type=int, default=256, help="images per capture forward")
    train.add_argument("--hardware", default="2 CPU cores (AMD EPYC), no GPU", help="what it ran on, for the card")
    train.add_argument("--out", required=True, help="folder for probes.safetensors, probes.json and README.md")
    show = commands.add_parser("show", formatter_class=ShowDefaults, help="print the accuracy table, draw it and a reading")
    show.add_argument("--probes", required=True, help="a folder written by `train`")
    show.add_argument("--out", help="PNG of the accuracy heatmap")
    show.add_argument("--reading", help="PNG of the probes read along one sampling run (A, and B with --ablate)")
    show.add_argument("--model", help="the pipeline for --reading (default: the one the probes were trained on)")
    show.add_argument("--digit", type=int, help="the digit the run draws (default: no digit)")
    show.add_argument("--seed", type=int, default=0, help="the run's noise seed")
    show.add_argument("--steps", type=int, default=50, help="DDIM steps of the run")
    show.add_argument("--ablate", action="append", default=[], metavar="SPEC", help="B's ablation, as in playground.sample")
    args = p.parse_args(argv)
    try:
        (_train if args.command == "train" else _show)(args)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
