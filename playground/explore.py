"""Questions about *when*: the experiments no other explainer runs, each a function the app and CLIs call.

- `window_sweep`: the same ablation applied in a window sliding over t; how much the final samples
  change (and how recognisable they stay) for each window position. The curve says when skips,
  attention or the time signal matter. Steps before a window equal the intact run's, so every
  windowed run starts from the intact trajectory (`sample(..., reuse=)`) instead of from noise.
- `digit_decision`: our classifier on x̂0 at every step; the step from which the final digit is read
  with confidence and stays ("when does the digit decide?").
- `hspace_probe`: PCA of the bottleneck output (h-space, Kwon et al. 2023, "Diffusion models already
  have a semantic latent space") over many samples at one t; `HSpaceProbe.edit` turns a component into
  an `HSpaceEdit` that sampling adds during a t-window.
- `trajectory_tensors` / `export_safetensors`: captured tensors as a .safetensors file.

Every function returns tensors, dataclasses with `as_dict()` (JSON-ready) or matplotlib figures.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save as safetensors_bytes

from .ablation import Ablation
from .classifier import DigitClassifier
from .classifier import CONFIDENCE, classify
from .sampling import DiffusionModel, HSpaceEdit, SampleSettings, Trajectory, Window, make_scheduler, sample
from .viz import plt

BOTTLENECK = "mid_block.resnets.1"  # the bottleneck's output: the tap h-space is read from


# ---------------------------------------------------------------------------------------------
# Time-windowed ablation, swept over t
# ---------------------------------------------------------------------------------------------


def sliding_windows(timesteps: torch.Tensor | list[int], count: int) -> list[Window]:
    """Split a schedule's timesteps (decreasing) into `count` consecutive windows of (nearly) equal step counts.

    Returned in the order the reverse process meets them (largest t first); together they cover every step once.
    """
    timesteps = [int(t) for t in timesteps]
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(timesteps):
        raise ValueError(f"windows must be a whole number from 1 to the {len(timesteps)} steps, got {count!r}")
    bounds = [round(k * len(timesteps) / count) for k in range(count + 1)]
    return [Window(min(timesteps[a:b]), max(timesteps[a:b])) for a, b in zip(bounds, bounds[1:])]


@dataclass
class WindowSweep:
    """One ablation, applied in each of `windows` in turn, compared with the intact run from the same noise.

    change: (n,) mean |Δ| between each windowed run's final samples and the intact ones, both clipped to
        [-1, 1] as they are shown (so 2 is the most a pixel can change; unclipped runs can diverge wildly).
    finals: (n, B, C, H, W) the windowed runs' final samples. full_change: the same number when the ablation
    applies at every step (None if not run). quality: per window, from our classifier (None without one):
    `confident` (share read with confidence > 0.9), `kept` (share read as the same digit as in the intact run)
    and, for a fixed digit, `accuracy` (share read as that digit).
    """

    ablation: Ablation
    windows: list[Window]
    intact: Trajectory
    finals: torch.Tensor
    change: torch.Tensor
    full_change: float | None
    quality: list[dict] | None
    intact_quality: dict | None
    seconds: float

    def as_dict(self) -> dict:
        return {
            "ablation": self.ablation.to_dict(),
            "sampler": self.intact.settings.sampler, "steps": self.intact.settings.steps,
            "batch": self.intact.settings.batch, "seed": self.intact.settings.seed,
            "windows": [[w.t_min, w.t_max] for w in self.windows],
            "change": [round(float(c), 6) for c in self.change],
            "full_change": None if self.full_change is None else round(self.full_change, 6),
            "quality": self.quality, "intact_quality": self.intact_quality,
            "seconds": round(self.seconds, 2),
        }


def window_sweep(model: DiffusionModel, settings: SampleSettings, ablation: Ablation, windows: int = 10, *,
                 classifier: DigitClassifier | None = None, intact: Trajectory | None = None,
                 with_full_run: bool = True, progress=None, seconds: float | None = None) -> WindowSweep:
    """Apply `ablation` in each of `windows` consecutive t-windows; measure the change of the final samples.

    settings: sampler, steps, seed, batch, digit and guidance (its own ablation and window are ignored).
    intact: the intact trajectory if the caller has it already (it must match `settings`), else it is sampled.
    progress(done, total) counts model steps over the whole sweep.
    seconds: a time budget: a window (or the run at every step) that would not finish within it, at the pace of the
    steps so far, is left out, and so is every one after it: the sweep then holds the first windows, in the order the
    reverse process meets them, so a slow host gets a shorter answer instead of none.
    """
    if not isinstance(ablation, Ablation) or ablation.is_intact:
        raise ValueError("ablation must be an Ablation that changes something (Ablation() has nothing to sweep)")
    started = time.perf_counter()
    base = replace(settings, ablation=Ablation(), ablation_window=None, capture_steps=())
    timesteps = make_scheduler(model, base.sampler, base.steps).timesteps
    spans = sliding_windows(timesteps, windows)
    # the windowed runs only compute the steps from their window on: count them for the progress bar
    first_steps = [next(i for i, t in enumerate(timesteps.tolist()) if t in w) for w in spans]
    total = (0 if intact is not None else base.steps) + sum(base.steps - i for i in first_steps) + (base.steps if with_full_run else 0)
    done = 0

    def advance(i, n):
        if progress is not None:
            progress(done + i, total)

    if intact is None:
        intact = sample(model, base, advance)
        done += base.steps
    def fits(steps: int) -> bool:
        """Whether `steps` more model steps, at the pace so far, end within the budget."""
        if seconds is None or done == 0:
            return True
        elapsed = time.perf_counter() - started
        return elapsed + elapsed / done * steps <= seconds

    finals = []
    for window, first in zip(spans, first_steps):
        if finals and not fits(base.steps - first):  # the first window always runs: a sweep of none says nothing
            break
        run = sample(model, replace(base, ablation=ablation, ablation_window=window), advance, reuse=intact)
        finals.append(run.final)
        done += base.steps - first
    spans = spans[:len(finals)]
    with_full_run = with_full_run and len(finals) == windows and fits(base.steps)
    finals = torch.stack(finals)  # (n, B, C, H, W)
    shown = intact.final.clamp(-1, 1)
    change = (finals.clamp(-1, 1) - shown).abs().flatten(1).mean(1)  # (n,)
    full_final = sample(model, replace(base, ablation=ablation), advance).final if with_full_run else None
    full_change = None if full_final is None else float((full_final.clamp(-1, 1) - shown).abs().mean())

    quality = intact_quality = None
    if classifier is not None:
        label = base.label if isinstance(base.label, int) else None
        intact_quality, intact_classes = _quality(classifier, intact.final, None, label)
        quality = [_quality(classifier, f, intact_classes, label)[0] for f in finals]
        if full_final is not None:
            intact_quality["full_run"] = _quality(classifier, full_final, intact_classes, label)[0]
    return WindowSweep(ablation, spans, intact, finals, change, full_change, quality, intact_quality,
                       time.perf_counter() - started)


def _quality(classifier, images, reference_classes, label) -> tuple[dict, torch.Tensor]:
    probabilities, _ = classify(classifier, images)
    confidence, predicted = probabilities.max(1)
    result = {"confident": float((confidence > CONFIDENCE).double().mean())}
    if reference_classes is not None:
        result["kept"] = float((predicted == reference_classes).double().mean())
    if label is not None:
        result["accuracy"] = float((predicted == label).double().mean())
    return result, predicted


def sweep_figure(sweeps: WindowSweep | Mapping[str, WindowSweep], title: str = ""):
    """Final-sample change against the window's position in t, one curve per sweep; `kept` share on the right.

    The x axis runs as the reverse process does (t from large to small). Dashed lines: the ablation
    applied at every step.
    """
    if isinstance(sweeps, WindowSweep):
        sweeps = {describe_ablation(sweeps.ablation): sweeps}
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    right = None
    for k, (label, sweep) in enumerate(sweeps.items()):
        colour = f"C{k}"
        centres = [(w.t_min + w.t_max) / 2 for w in sweep.windows]
        ax.plot(centres, sweep.change.tolist(), "o-", color=colour, label=label, linewidth=1.6)
        if sweep.full_change is not None:
            ax.axhline(sweep.full_change, color=colour, linestyle="--", linewidth=0.9, alpha=0.7)
        if sweep.quality and "kept" in sweep.quality[0]:
            right = right or ax.twinx()
            right.plot(centres, [q["kept"] for q in sweep.quality], ":", color=colour, linewidth=1.2)
    if right is not None:
        right.set_ylim(-0.02, 1.02)
        right.set_ylabel("same digit as intact (dotted)", fontsize=8)
    ax.set_xlim(1000, -1)
    ax.set_xlabel("window centre t (the reverse process runs left to right)")
    ax.set_ylabel("mean |Δ| of final samples")
    ax.set_title(title or "When does it matter? One ablation, in a window sliding over t", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def describe_ablation(ablation: Ablation) -> str:
    parts = [f"skips {r}px ×{g:g}" for r, g in ablation.skip_scale] + sorted(f"{s} off" for s in ablation.attention_off)
    parts += ["time off"] if ablation.time_embedding_off else []
    parts += [f"FreeU {r}px b={b:g}" for r, b in ablation.backbone_scale]
    parts += [f"FreeU {r}px s={s:g}" for r, s in ablation.skip_low_freq_scale]
    return ", ".join(parts) or "intact"


# ---------------------------------------------------------------------------------------------
# When does the digit decide?
# ---------------------------------------------------------------------------------------------


@dataclass
class DigitDecision:
    """Our classifier's reading of x̂0 at every step of one trajectory.

    timesteps: (S,). probabilities: (S, B, K) class probabilities of x̂0 at each step. entropy: (S, B) in
    [0, 1] (divided by log K). final_class / final_confidence: (B,) the reading of the final sample.
    decided_step: (B,) the first step from which x̂0 is read as the final class with confidence > `confidence`
    at every later step; -1 when that never happens.
    """

    timesteps: torch.Tensor
    probabilities: torch.Tensor
    entropy: torch.Tensor
    final_class: torch.Tensor
    final_confidence: torch.Tensor
    decided_step: torch.Tensor
    confidence: float

    @property
    def decided_t(self) -> list[int | None]:
        return [None if s < 0 else int(self.timesteps[s]) for s in self.decided_step.tolist()]

    def as_dict(self) -> dict:
        return {
            "timesteps": self.timesteps.tolist(), "mean_entropy": self.entropy.mean(1).tolist(),
            "final_class": self.final_class.tolist(), "final_confidence": self.final_confidence.tolist(),
            "decided_step": self.decided_step.tolist(), "decided_t": self.decided_t, "confidence": self.confidence,
        }


def decided_steps(probabilities: torch.Tensor, final_class: torch.Tensor, confidence: float = CONFIDENCE) -> torch.Tensor:
    """(S, B, K) probabilities, (B,) classes -> (B,) first step from which that class wins with p > confidence for good; -1 if never."""
    steps = probabilities.shape[0]
    winning = probabilities.argmax(2) == final_class[None]  # (S, B)
    sure = probabilities.gather(2, final_class[None, :, None].expand(steps, -1, 1))[..., 0] > confidence  # (S, B)
    holds_from_here = (winning & sure).flip(0).cumprod(0).flip(0)  # (S, B): true on a suffix of the steps
    decided = steps - holds_from_here.sum(0)
    return torch.where(holds_from_here.any(0), decided, torch.full_like(decided, -1))


def digit_decision(classifier: DigitClassifier, trajectory: Trajectory, confidence: float = CONFIDENCE) -> DigitDecision:
    """Classify x̂0 at every step (one batched pass) and find when each sample's digit is decided."""
    steps, batch = trajectory.x0.shape[:2]
    images = torch.cat([trajectory.x0.flatten(0, 1), trajectory.final])  # (S·B + B, C, H, W)
    probabilities, _ = classify(classifier, images)
    per_step = probabilities[: steps * batch].unflatten(0, (steps, batch))  # (S, B, K)
    final_confidence, final_class = probabilities[steps * batch:].max(1)
    entropy = -(per_step * per_step.clamp_min(1e-12).log()).sum(2) / math.log(per_step.shape[2])
    return DigitDecision(trajectory.timesteps.clone(), per_step, entropy, final_class, final_confidence,
                         decided_steps(per_step, final_class, confidence), confidence)


def decision_figure(decisions: DigitDecision | Mapping[str, DigitDecision], title: str = "", colours: list[str] | None = None):
    """Left: mean entropy of the classifier's reading of x̂0 over t. Right: share of samples already decided.

    One curve per run (e.g. A intact, B ablated), in `colours` if given; t runs from large to small as in the
    reverse process.
    """
    if isinstance(decisions, DigitDecision):
        decisions = {"run": decisions}
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 3.3), dpi=100)
    for i, (label, decision) in enumerate(decisions.items()):
        colour = colours[i] if colours else None
        t = decision.timesteps.tolist()
        left.plot(t, decision.entropy.mean(1).tolist(), label=label, linewidth=1.6, color=colour)
        steps = torch.arange(len(t))[:, None]
        decided = decision.decided_step[None]
        share = ((decided >= 0) & (decided <= steps)).double().mean(1)  # (S,) decided by step i
        right.plot(t, share.tolist(), label=label, linewidth=1.6, color=colour)
    left.set_ylabel("classifier entropy of x̂0 (0 = sure, 1 = clueless)", fontsize=8)
    right.set_ylabel(f"share of samples whose digit is decided (p > {next(iter(decisions.values())).confidence:g})", fontsize=8)
    for ax in (left, right):
        ax.set_xlim(1000, -1)
        ax.set_xlabel("t (the reverse process runs left to right)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    right.set_ylim(-0.02, 1.02)
    fig.suptitle(title or "When does the digit decide?", fontsize=10)
    fig.tight_layout()
    return fig


def class_probability_figure(decision: DigitDecision, sample_index: int = 0):
    """The ten class probabilities of one sample's x̂0 over t, the decided step marked."""
    if not 0 <= sample_index < decision.probabilities.shape[1]:
        raise ValueError(f"sample_index must be from 0 to {decision.probabilities.shape[1] - 1}, got {sample_index}")
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    t = decision.timesteps.tolist()
    for digit in range(decision.probabilities.shape[2]):
        bold = digit == int(decision.final_class[sample_index])
        ax.plot(t, decision.probabilities[:, sample_index, digit].tolist(), label=str(digit),
                linewidth=2.4 if bold else 0.9, alpha=1.0 if bold else 0.6)
    decided_t = decision.decided_t[sample_index]
    if decided_t is not None:
        ax.axvline(decided_t, color="k", linestyle="--", linewidth=0.9)
    ax.set_xlim(1000, -1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("t")
    ax.set_ylabel("p(digit | x̂0)")
    ax.set_title(f"sample {sample_index}: decided at t = {decided_t}", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# h-space: the bottleneck as a semantic latent space
# ---------------------------------------------------------------------------------------------


@dataclass
class HSpaceProbe:
    """Principal components of the bottleneck output over N samples at one step.

    step / t: where it was read. mean: (C, h, w). components: (K, C, h, w), unit norm, strongest first.
    scales: (K,) standard deviation of the samples along each component. explained: (K,) share of variance.
    projections: (N, K) each sample's coordinate along each component, in standard deviations.
    """

    step: int
    t: int
    mean: torch.Tensor
    components: torch.Tensor
    scales: torch.Tensor
    explained: torch.Tensor
    projections: torch.Tensor

    def edit(self, component: int, strength: float, window: Window | tuple[int, int] | None = None) -> HSpaceEdit:
        """An edit adding `strength` standard deviations of `component` to h (at the steps in `window`)."""
        if isinstance(component, bool) or not isinstance(component, int) or not 0 <= component < len(self.components):
            raise ValueError(f"component must be from 0 to {len(self.components) - 1}, got {component!r}")
        return HSpaceEdit(self.components[component] * self.scales[component], strength, window)

    def as_dict(self) -> dict:
        return {"step": self.step, "t": self.t, "explained": self.explained.tolist(), "scales": self.scales.tolist(),
                "shape": list(self.mean.shape)}


def hspace_probe(model: DiffusionModel, settings: SampleSettings, t: int, components: int = 8, progress=None) -> HSpaceProbe:
    """PCA of `mid_block.resnets.1` over the `settings.batch` samples of one run, at the step nearest to t.

    Use a large batch (64-256) for stable directions; the run's own ablation and edits apply.
    """
    if model.unet.mid_block is None:
        raise ValueError(f"model {model.name!r} has no mid block, so it has no h-space to probe")
    scheduler = make_scheduler(model, settings.sampler, settings.steps)
    timesteps, last = scheduler.timesteps, scheduler.config.num_train_timesteps - 1
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= last:
        raise ValueError(f"t must be a whole number from 0 to {last}, got {t!r}")
    step = int((timesteps - t).abs().argmin())
    trajectory = sample(model, replace(settings, capture_steps=(step,)), progress, stop_after=step)
    h = trajectory.features[step][BOTTLENECK].float()  # (N, C, h, w)
    vectors = h.flatten(1)  # (N, D)
    mean = vectors.mean(0)
    centred = vectors - mean
    count = max(1, min(components, *centred.shape))
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    scales = singular[:count] / math.sqrt(max(len(vectors) - 1, 1))
    variance = singular.pow(2)
    explained = variance[:count] / variance.sum().clamp_min(1e-20)
    projections = centred @ vh[:count].T / scales.clamp_min(1e-12)
    return HSpaceProbe(step, int(timesteps[step]), mean.reshape(h.shape[1:]), vh[:count].reshape(count, *h.shape[1:]),
                       scales, explained, projections)


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def trajectory_tensors(trajectory: Trajectory, include_features: bool = True) -> dict[str, torch.Tensor]:
    """Every tensor of a trajectory by a stable name: x_t, eps, x0, timesteps, features.{step}.{feature name}."""
    tensors = {"timesteps": trajectory.timesteps, "x_t": trajectory.x_t, "eps": trajectory.eps, "x0": trajectory.x0}
    if include_features:
        for step, features in trajectory.features.items():
            tensors |= {f"features.{step}.{name}": f for name, f in features.items()}
    return tensors


def export_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path | None = None,
                       metadata: Mapping[str, object] | None = None) -> bytes:
    """Serialise named tensors as .safetensors (written to `path` if given); returns the file's bytes.

    metadata values that are not strings are stored as JSON. Tensors are copied contiguous to the CPU,
    because safetensors refuses views that share memory (features of one batch often do).
    """
    if not tensors:
        raise ValueError("tensors: nothing to export")
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise ValueError(f"tensors must map names to tensors, got {name!r}: {type(tensor).__name__}")
    stored = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in tensors.items()}
    text_metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    data = safetensors_bytes(stored, metadata=text_metadata or None)
    if path is not None:
        Path(path).write_bytes(data)
    return data


def trajectory_metadata(trajectory: Trajectory) -> dict[str, str]:
    """What made a trajectory, as safetensors metadata (h-space edits by strength and window only)."""
    s = trajectory.settings
    edit = s.h_edit
    return {
        "model": trajectory.model_name, "sampler": s.sampler, "steps": str(s.steps), "seed": str(s.seed),
        "batch": str(s.batch), "label": json.dumps(s.label), "guidance": str(s.guidance),
        "ablation": json.dumps(s.ablation.to_dict()),
        "ablation_window": json.dumps(None if s.ablation_window is None else [s.ablation_window.t_min, s.ablation_window.t_max]),
        "timestep_lie": json.dumps(None if s.timestep_lie is None else {"offset": s.timestep_lie.offset, "fixed": s.timestep_lie.fixed}),
        "h_edit": json.dumps(None if edit is None else {
            "strength": edit.strength, "window": None if edit.window is None else [edit.window.t_min, edit.window.t_max]}),
    }
