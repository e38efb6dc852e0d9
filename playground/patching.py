"""Activation patching between two runs from the same noise: which block, at which t, carries what B lost?

A is a model run as it is (the clean run), B the same model with an ablation, or another model of the same
architecture (one trained without skips), from the same seeded noise and settings. `patched_run` runs B's reverse
process again, but at every step whose t lies in a window, B's forward gets A's output of one block (A's feature on
A's own input x_t at that step) in place of its own, through `PlaygroundUNet.forward(patch=)`: the same forward,
no hooks. `restored_fraction` says how much of A's final image that brings back; `patch_map` asks it for every
block × t-window and `patch_map_figure` draws the answer.

This is causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", restoring clean
states into a corrupted run) in the form Basu et al. (ICLR 2024, "Localizing and Editing Knowledge in Text-to-Image
Generative Models") use for diffusion U-Nets: the restored state is a block's output, over the steps of a window.
Steps before the window are B's own, so a patched run copies them from B's trajectory (`sample(..., reuse=)`).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, replace

import torch

from .ablation import Ablation
from .classifier import DigitClassifier, classify
from .explore import describe_ablation, sliding_windows
from .sampling import DiffusionModel, SampleSettings, Trajectory, Window, guided_labels, make_scheduler, sample
from .viz import DIVERGING, plt

# What A's and B's runs must share to start from the same noise and meet the same timesteps
SHARED_SETTINGS = ("sampler", "steps", "seed", "batch", "label", "guidance")


def default_patch_blocks(unet) -> list[str]:
    """One map per level and the bottleneck, in forward order: each encoder level's, the bottleneck's and each
    decoder level's output (its last resnet or attention map before any resampler, as the U-Net diagram shows)."""
    names = list(unet.feature_names)
    levels = len(unet.config.block_out_channels)
    parts = [f"down_blocks.{i}" for i in range(levels)] + ["mid_block"] * (unet.mid_block is not None)
    parts += [f"up_blocks.{i}" for i in range(levels)]
    blocks = []
    for part in parts:
        own = re.compile(rf"{re.escape(part)}\.(resnets|attentions)\.\d+")
        blocks.append([name for name in names if own.fullmatch(name)][-1])
    return blocks


def restored_fraction(patched_final: torch.Tensor, a_final: torch.Tensor, b_final: torch.Tensor) -> float:
    """1 − mean|patched − A| / mean|B − A| over the whole batch, images clipped to [-1, 1] as they are shown.

    1: the patched run ends exactly on A's images; 0: no closer than B; negative: farther from A than B was (not
    clipped, so a patch that makes things worse shows). Never above 1. NaN when B equals A: nothing to restore.
    """
    a = a_final.clamp(-1, 1)
    gap = (b_final.clamp(-1, 1) - a).abs().mean()
    if gap == 0:
        return math.nan
    return float(1 - (patched_final.clamp(-1, 1) - a).abs().mean() / gap)


def digit_back(classifier: DigitClassifier, finals: torch.Tensor, a_final: torch.Tensor) -> torch.Tensor:
    """(..., B, C, H, W) finals, (B, C, H, W) A's -> (...) share of each run's samples our classifier reads as the
    digit it reads in A's sample from the same noise."""
    batch = a_final.shape[0]
    probabilities, _ = classify(classifier, torch.cat([a_final, finals.reshape(-1, *a_final.shape[1:])]))
    predicted = probabilities.argmax(1)  # (B + N·B,)
    same = predicted[batch:].reshape(-1, batch) == predicted[:batch]  # (N, B)
    return same.double().mean(1).reshape(finals.shape[:-4])


class _Progress:
    """One progress(done, total) over several runs, each of which reports its own (i, n)."""

    def __init__(self, progress, total: int):
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self, i: int, n: int) -> None:
        if self.progress is not None:
            self.progress(self.done + i, self.total)

    def ran(self, steps: int) -> None:
        self.done += steps


def _check_block(unet, block: str, argument: str = "block") -> None:
    names = unet.feature_names
    if block not in names:
        examples = ", ".join(repr(n) for n in default_patch_blocks(unet)[:3])
        raise ValueError(f"{argument}: {block!r} is not one of the model's feature maps, e.g. {examples} (see feature_names)")


def _check_pair(model_b: DiffusionModel, settings_b: SampleSettings, source: Trajectory, source_model: DiffusionModel,
                blocks: list[str]) -> torch.Tensor:
    """Raise ValueError, naming what differs, unless A's run can be patched into B's; returns the timesteps."""
    if source.model_name != source_model.name:
        raise ValueError(f"source: the trajectory comes from model {source.model_name!r}, not {source_model.name!r}")
    if not source.complete or source.patched_from is not None:
        raise ValueError("source: A's run must be a complete, unpatched run")
    for name in SHARED_SETTINGS:
        if getattr(source.settings, name) != getattr(settings_b, name):
            raise ValueError(f"source: A's run was sampled with a different {name} ({getattr(source.settings, name)!r}, "
                             f"not B's {getattr(settings_b, name)!r}), so it does not start from B's noise")
    return _check_models(source_model, model_b, settings_b, blocks)


def _check_models(model_a: DiffusionModel, model_b: DiffusionModel, settings: SampleSettings, blocks: list[str]) -> torch.Tensor:
    """Raise ValueError unless both models have every block, in the same shape, and meet the same timesteps;
    returns them."""
    for block in blocks:
        _check_block(model_a.unet, block)
        _check_block(model_b.unet, block)
        if model_a.unet.feature_shapes()[block] != model_b.unet.feature_shapes()[block]:
            raise ValueError(f"block: {block!r} has a different shape in model {model_a.name!r} than in {model_b.name!r}")
    timesteps = make_scheduler(model_b, settings.sampler, settings.steps).timesteps
    if not torch.equal(timesteps, make_scheduler(model_a, settings.sampler, settings.steps).timesteps):
        raise ValueError(f"model {model_a.name!r} and model {model_b.name!r} have different noise schedules")
    return timesteps


@torch.inference_mode()
def source_features(source_model: DiffusionModel, source: Trajectory, blocks: list[str], steps: list[int],
                    progress=None) -> dict[int, dict[str, torch.Tensor]]:
    """step -> {block -> A's map at that step}: A's forward on its own input x_t[step], called as `sample` called it
    (told timestep, ablation and h-space shift of the step), on the whole model batch (2B, both guidance passes)."""
    settings, unet = source.settings, source_model.unet
    labels, guided = guided_labels(source_model, settings)
    labels = None if labels is None else labels.to(unet.conv_in.weight.device)
    num_train_timesteps = make_scheduler(source_model, settings.sampler, settings.steps).config.num_train_timesteps
    features = {}
    for k, i in enumerate(steps):
        t = source.timesteps[i]
        x = source_model.to_unet(source.x_t[i])  # (B, C, H, W)
        told = settings.told_timestep(int(t), num_train_timesteps)
        edit = settings.h_edit_at(int(t))
        shift = None if edit is None else source_model.to_unet(edit.strength * edit.direction)
        out = unet(torch.cat([x, x]) if guided else x, t if told == int(t) else torch.tensor(told), labels,
                   ablation=settings.ablation_at(int(t)), capture_features=True, bottleneck_shift=shift)
        features[i] = {block: out.features[block] for block in blocks}  # (2B or B, C, h, w) each
        if progress is not None:
            progress(k + 1, len(steps))
    return features


def _window_steps(timesteps: torch.Tensor, window: Window | None, settings: SampleSettings) -> list[int]:
    steps = [i for i, t in enumerate(timesteps.tolist()) if window is None or t in window]
    if not steps:
        raise ValueError(f"window: no step of the {settings.steps}-step {settings.sampler} run has {window.t_min} <= t <= "
                         f"{window.t_max} (its timesteps run from {int(timesteps[0])} down to {int(timesteps[-1])})")
    return steps


def _check_reuse(model_b: DiffusionModel, settings_b: SampleSettings, reuse: Trajectory | None) -> None:
    # B's very run, so exactly the steps before the window are copied (and the progress count is known)
    if reuse is not None and not (reuse.model_name == model_b.name and reuse.settings == settings_b and reuse.complete
                                  and reuse.patched_from is None):
        raise ValueError("reuse: must be B's own complete run of settings_b (e.g. sample(model_b, settings_b))")


def patched_run(model_b: DiffusionModel, settings_b: SampleSettings, source: Trajectory, source_model: DiffusionModel,
                block: str, window: Window | tuple[int, int] | None, *, reuse: Trajectory | None = None,
                progress=None) -> Trajectory:
    """B's reverse process with A's output of `block` in place of B's own at every step whose t is in `window`.

    source: A's run (same sampler, steps, seed, batch, label and guidance as settings_b); source_model: A's model.
    window: None patches every step. reuse: B's own run of settings_b, whose steps before the window are copied
    instead of recomputed. progress(done, total) counts model steps: A's forwards, then B's.
    Returns B's patched trajectory (its `patched_from` is the window's first step).
    """
    window = Window.of(window)
    timesteps = _check_pair(model_b, settings_b, source, source_model, [block])
    _check_reuse(model_b, settings_b, reuse)
    steps = _window_steps(timesteps, window, settings_b)
    counter = _Progress(progress, len(steps) + settings_b.steps - (steps[0] if reuse is not None else 0))
    features = source_features(source_model, source, [block], steps, counter)
    counter.ran(len(steps))
    return sample(model_b, settings_b, counter, reuse=reuse, patches={i: features[i] for i in steps})


@dataclass
class PatchMap:
    """How much of A's final images each block, patched in over each t-window, brings back into B.

    blocks: the patched maps (rows, forward order). windows: the t-windows (columns, in the order the reverse process
    meets them). fractions: (blocks, windows) `restored_fraction` of each patched run. finals: (blocks, windows, B, C,
    H, W) their final samples. digit_back: (blocks, windows) share of samples our classifier reads as A's digit
    after patching, and b_digit_same that share for B unpatched (both None without a classifier).
    a, b: A's and B's own runs. gap: mean |B − A| of the final samples (clipped): what there is to restore.
    """

    blocks: list[str]
    windows: list[Window]
    fractions: torch.Tensor
    finals: torch.Tensor
    digit_back: torch.Tensor | None
    b_digit_same: float | None
    a: Trajectory
    b: Trajectory
    gap: float
    seconds: float

    def as_dict(self) -> dict:
        def rounded(values):
            return [[None if math.isnan(v) else round(v, 4) for v in row] for row in values.tolist()]

        s = self.b.settings
        return {
            "model_a": self.a.model_name, "model_b": self.b.model_name, "ablation_b": s.ablation.to_dict(),
            "sampler": s.sampler, "steps": s.steps, "seed": s.seed, "batch": s.batch, "label": s.label, "guidance": s.guidance,
            "blocks": self.blocks, "windows": [[w.t_min, w.t_max] for w in self.windows],
            "fractions": rounded(self.fractions), "digit_back": None if self.digit_back is None else rounded(self.digit_back),
            "b_digit_same": self.b_digit_same, "gap": round(self.gap, 6), "seconds": round(self.seconds, 2),
        }


def patch_map(model_a: DiffusionModel, model_b: DiffusionModel, settings: SampleSettings, ablation_b: Ablation | None,
              blocks: list[str], windows: int, *, classifier: DigitClassifier | None = None, progress=None) -> PatchMap:
    """`restored_fraction` for every block × each of `windows` consecutive t-windows (`explore.sliding_windows`).

    A = model_a with `settings`; B = model_b with `ablation_b` in place of settings.ablation (None: the same, as
    `compare` has it), same noise. A's maps are computed once for every step (A's forward at each step, every block
    captured at once); each patched run computes only from its window's first step on, copying B's steps before it.
    progress(done, total) counts model steps over the map.
    """
    started = time.perf_counter()
    if not blocks:
        raise ValueError("blocks: give at least one feature map to patch (e.g. default_patch_blocks(unet))")
    settings_a = replace(settings, capture_steps=())
    settings_b = replace(settings_a, ablation=settings.ablation if ablation_b is None else ablation_b)
    timesteps = _check_models(model_a, model_b, settings, blocks)
    spans = sliding_windows(timesteps, windows)
    first_steps = [_window_steps(timesteps, w, settings)[0] for w in spans]
    steps = settings.steps
    counter = _Progress(progress, 3 * steps + len(blocks) * sum(steps - first for first in first_steps))

    a = sample(model_a, settings_a, counter)
    counter.ran(steps)
    b = sample(model_b, settings_b, counter)
    counter.ran(steps)
    finals = torch.empty((len(blocks), len(spans), *a.final.shape), dtype=a.final.dtype)  # (blocks, windows, B, C, H, W)
    for column, (window, first) in enumerate(zip(spans, first_steps)):
        # A's maps one window at a time: all of them at once would hold every step's maps of every block
        window_steps = _window_steps(timesteps, window, settings)
        features = source_features(model_a, a, blocks, window_steps, counter)
        counter.ran(len(window_steps))
        for row, block in enumerate(blocks):
            patches = {i: {block: features[i][block]} for i in window_steps}
            finals[row, column] = sample(model_b, settings_b, counter, reuse=b, patches=patches).final
            counter.ran(steps - first)
    fractions = torch.tensor([[restored_fraction(f, a.final, b.final) for f in row] for row in finals])  # (blocks, windows)

    back = b_same = None
    if classifier is not None:
        back = digit_back(classifier, finals, a.final)
        b_same = float(digit_back(classifier, b.final[None], a.final)[0])
    gap = float((b.final.clamp(-1, 1) - a.final.clamp(-1, 1)).abs().mean())
    return PatchMap(list(blocks), spans, fractions, finals, back, b_same, a, b, gap, time.perf_counter() - started)


def patch_map_figure(patch_map: PatchMap, title: str = ""):
    """Heatmap of the restored fraction, blocks (rows, forward order) × t-windows (columns, t from large on the left
    to small on the right, as the reverse process runs), each cell annotated; diverging map centred on 0, so red
    restores A and blue moves farther from it. With a classifier, each cell also says how often A's digit is back."""
    fractions = patch_map.fractions.numpy()
    rows, columns = fractions.shape
    fig, ax = plt.subplots(figsize=(1.3 * columns + 3.6, 0.45 * rows + 1.6), dpi=100)
    cmap = plt.get_cmap(DIVERGING).copy()
    cmap.set_bad("0.85")  # NaN: B equals A, nothing to restore
    image = ax.imshow(fractions, cmap=cmap, vmin=-1, vmax=1, aspect="auto")
    for r in range(rows):
        for c in range(columns):
            value = fractions[r, c]
            text = "n/a" if math.isnan(value) else f"{value:.2f}"
            if patch_map.digit_back is not None:
                text += f"\ndigit {float(patch_map.digit_back[r, c]):.0%}"
            ax.text(c, r, text, ha="center", va="center", fontsize=7, color="white" if abs(value) > 0.6 else "black")
    ax.set_xticks(range(columns), [f"{w.t_max}–{w.t_min}" for w in patch_map.windows], fontsize=8)
    ax.set_yticks(range(rows), patch_map.blocks, fontsize=8)
    ax.set_xlabel("t-window in which A's map is patched into B (the reverse process runs left to right)", fontsize=8)
    bar = fig.colorbar(image, ax=ax, extend="min")
    bar.set_label("restored fraction 1 − |P − A| / |B − A|", fontsize=8)
    s = patch_map.b.settings
    ax.set_title(title or f"Which block, when, brings A back? A = {patch_map.a.model_name}, B = {patch_map.b.model_name} "
                          f"({describe_ablation(s.ablation)})\n{s.sampler} {s.steps} steps, batch {s.batch}, "
                          f"mean |B − A| {patch_map.gap:.3f}", fontsize=9)
    fig.tight_layout()
    return fig

