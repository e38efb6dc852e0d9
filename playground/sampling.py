"""The reverse process on diffusers schedulers, with every step kept for looking at later.

`sample(model, settings)` runs one reverse process from seeded noise and returns a `Trajectory`:
for every step, the timestep t, the model's input x_t, its noise prediction ε̂ and the clean image it
implies, x̂0 = (x_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t. Scrubbing through a trajectory never calls the model again.
`compare(a, b)` runs two models or ablations from the *same* noise and reports how far they drift apart.

Class-conditional models (our flagship) use classifier-free guidance: ε̂ = ε̂_∅ + w·(ε̂_y − ε̂_∅),
where ∅ is the null label (the last class index); both halves go through the network in one batch.

Three interventions act on chosen steps only, so one can ask *when* a part of the network matters:
- `ablation_window`: the ablation applies only while t_min ≤ t ≤ t_max; other steps run intact;
- `timestep_lie`: the model is told t' (t + offset, or a fixed t') while the scheduler steps at the true t;
- `h_edit`: a direction added to the bottleneck's output (h-space) during its own window.
`sample(..., reuse=intact)` copies the steps before the first intervened step from an earlier
trajectory instead of recomputing them (they are identical), and replays the scheduler over them. The same
goes on from a run stopped part-way (`should_stop`): `TrajectoryCache` keeps such a run and resumes it.
`sample(..., start=x_t, start_t=t)` begins at a given sample instead of seeded noise (a noised or inverted image,
`playground/inversion.py`): the run takes its schedule's steps from t on.
`sample(..., patches=)` puts given feature maps into chosen steps' forwards (activation patching, patching.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import torch

from .ablation import Ablation
from .schedules import SAMPLERS, make_scheduler
from .unet import PlaygroundUNet

MAX_STEPS = 1000
MAX_BATCH = 256
MAX_GUIDANCE = 30.0


@dataclass
class DiffusionModel:
    """A U-Net and the noise schedule it was trained with: what `weights/<name>/` holds."""

    name: str
    unet: PlaygroundUNet
    scheduler_config: dict

    @property
    def null_label(self) -> int | None:
        """The label that means "no digit" (the last class), or None for an unconditional model."""
        classes = self.unet.config.num_class_embeds
        return None if classes is None else classes - 1

    def to_unet(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` on the U-Net's device and dtype, read off its first weight: ModelMixin's `.device` and
        `.dtype` search every module for offloading hooks first (~1 ms each), too slow for a slider's event."""
        weight = self.unet.conv_in.weight
        return tensor.to(weight.device, weight.dtype)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, height, width)


def load_pipeline(path: str | Path, name: str | None = None) -> DiffusionModel:
    """Load a diffusers pipeline folder (unet/ + scheduler/), safetensors only; never unpickles."""
    path = Path(path)
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    if not (path / "unet").is_dir():
        raise ValueError(f"{path}: not a pipeline folder (no unet/ subfolder)")
    try:
        scheduler_config = json.loads(scheduler_file.read_text())
    except FileNotFoundError:
        raise ValueError(f"{scheduler_file}: missing (the noise schedule the model was trained with)") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{scheduler_file}: invalid JSON ({error})") from None
    _check_scheduler_config(scheduler_file, scheduler_config)
    unet = PlaygroundUNet.from_pretrained(path, subfolder="unet", use_safetensors=True).eval()
    unet.requires_grad_(False)
    return DiffusionModel(name=name or path.name, unet=unet, scheduler_config=scheduler_config)


def _check_scheduler_config(scheduler_file: Path, scheduler_config) -> None:
    """Build every sampler once at load time, so a bad schedule fails here, by file, not in a user's request."""
    if not isinstance(scheduler_config, dict):
        raise ValueError(f"{scheduler_file}: must hold a JSON object of scheduler settings, got a JSON {type(scheduler_config).__name__}")
    for sampler, (scheduler_class, overrides) in SAMPLERS.items():
        try:
            scheduler = scheduler_class.from_config(scheduler_config, **overrides)
            scheduler.set_timesteps(min(MAX_STEPS, scheduler.config.num_train_timesteps))
            if not torch.isfinite(scheduler.alphas_cumprod).all() or not (scheduler.alphas_cumprod > 0).all():
                raise ValueError("the noise schedule has non-positive or non-finite ᾱ_t")
        except Exception as error:  # any value in an untrusted file may break a scheduler in its own way
            raise ValueError(f"{scheduler_file}: {sampler} cannot be built from it ({type(error).__name__}: "
                             f"{str(error).strip().splitlines()[0] if str(error).strip() else ''})") from None


@dataclass(frozen=True)
class Window:
    """The timesteps t_min ≤ t ≤ t_max of the reverse process (which meets t_max first)."""

    t_min: int
    t_max: int

    def __post_init__(self):
        for name in ("t_min", "t_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"window {name} must be a whole number >= 0, got {value!r}")
        if self.t_min > self.t_max:
            raise ValueError(f"window t_min must be <= t_max, got t_min={self.t_min}, t_max={self.t_max}")

    def __contains__(self, t: int) -> bool:
        return self.t_min <= t <= self.t_max

    @classmethod
    def of(cls, value, name: str = "window") -> "Window | None":
        """None, a Window, or a (t_min, t_max) pair -> Window | None; ValueError naming `name` otherwise."""
        if value is None or isinstance(value, Window):
            return value
        try:
            t_min, t_max = value
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a (t_min, t_max) pair or None, got {value!r}") from None
        try:
            return cls(t_min, t_max)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None


@dataclass(frozen=True)
class TimestepLie:
    """Tell the model t' instead of the true t: t' = `fixed` if given, else t + `offset`, clamped to [0, T−1].

    The scheduler still steps at the true t, so the noise level the sample really has and the one the
    network is told about disagree: what the time embedding is for, made visible.
    """

    offset: int = 0
    fixed: int | None = None

    def __post_init__(self):
        if isinstance(self.offset, bool) or not isinstance(self.offset, int):
            raise ValueError(f"timestep_lie offset must be a whole number, got {self.offset!r}")
        if self.fixed is not None and (isinstance(self.fixed, bool) or not isinstance(self.fixed, int) or self.fixed < 0):
            raise ValueError(f"timestep_lie fixed must be a whole number >= 0 or None, got {self.fixed!r}")

    def told(self, t: int, num_train_timesteps: int) -> int:
        told = self.fixed if self.fixed is not None else t + self.offset
        return min(max(told, 0), num_train_timesteps - 1)


@dataclass(frozen=True, eq=False)
class HSpaceEdit:
    """strength × direction added to the bottleneck's output at every step whose t lies in `window`.

    direction: (C, h, w), the shape of `mid_block.resnets.1` (see `explore.hspace_probe`). Compared and
    hashed by identity: a tensor has no cheap value hash, and one edit object is one cache entry.
    window: None applies it at every step.
    """

    direction: torch.Tensor
    strength: float = 1.0
    window: Window | None = None

    def __post_init__(self):
        if not isinstance(self.direction, torch.Tensor) or self.direction.dim() != 3:
            raise ValueError(f"h_edit direction must be a (C, h, w) tensor, got {getattr(self.direction, 'shape', self.direction)!r}")
        if not torch.isfinite(self.direction).all():
            raise ValueError("h_edit direction must be finite")
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) or not math.isfinite(self.strength):
            raise ValueError(f"h_edit strength must be a finite number, got {self.strength!r}")
        object.__setattr__(self, "window", Window.of(self.window, "h_edit window"))


@dataclass(frozen=True)
class SampleSettings:
    """Everything that determines a trajectory's pixels (hashable: a cache key).

    label: a digit for every sample, None for the null label (unconditional), or one label per sample.
    guidance: classifier-free guidance scale w (1 = plain conditional; ignored without a digit).
    """

    sampler: str = "ddim"
    steps: int = 50
    seed: int = 0
    batch: int = 16
    label: int | tuple[int, ...] | None = None
    guidance: float = 1.5  # measured best for the flagship (see weights/mnist/README.md)
    ablation: Ablation = field(default_factory=Ablation)
    capture_steps: tuple[int, ...] = ()  # step indices whose feature maps are kept
    ablation_window: Window | None = None  # None: the ablation applies at every step
    timestep_lie: TimestepLie | None = None
    h_edit: HSpaceEdit | None = None

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {self.sampler!r}")
        if not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be a whole number from 1 to {MAX_STEPS}, got {self.steps!r}")
        if not isinstance(self.batch, int) or not 1 <= self.batch <= MAX_BATCH:
            raise ValueError(f"batch must be a whole number from 1 to {MAX_BATCH}, got {self.batch!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be a whole number from 0 to 2**63-1, got {self.seed!r}")
        if not isinstance(self.guidance, (int, float)) or not math.isfinite(self.guidance) or not 0 <= self.guidance <= MAX_GUIDANCE:
            raise ValueError(f"guidance must be a number from 0 to {MAX_GUIDANCE}, got {self.guidance!r}")
        if not isinstance(self.ablation, Ablation):
            raise ValueError(f"ablation must be an Ablation, got {type(self.ablation).__name__}")
        if isinstance(self.label, list):
            object.__setattr__(self, "label", tuple(self.label))
        object.__setattr__(self, "capture_steps", tuple(sorted(set(self.capture_steps))))
        if any(not 0 <= s < self.steps for s in self.capture_steps):
            raise ValueError(f"capture_steps must be step indices from 0 to {self.steps - 1}, got {self.capture_steps}")
        object.__setattr__(self, "ablation_window", Window.of(self.ablation_window, "ablation_window"))
        if self.timestep_lie is not None and not isinstance(self.timestep_lie, TimestepLie):
            raise ValueError(f"timestep_lie must be a TimestepLie or None, got {type(self.timestep_lie).__name__}")
        if self.h_edit is not None and not isinstance(self.h_edit, HSpaceEdit):
            raise ValueError(f"h_edit must be an HSpaceEdit or None, got {type(self.h_edit).__name__}")

    def ablation_at(self, t: int) -> Ablation:
        """The ablation the model gets at timestep t (intact outside the window)."""
        if self.ablation_window is None or t in self.ablation_window:
            return self.ablation
        return Ablation()

    def h_edit_at(self, t: int) -> HSpaceEdit | None:
        edit = self.h_edit
        return edit if edit is not None and (edit.window is None or t in edit.window) else None

    def told_timestep(self, t: int, num_train_timesteps: int) -> int:
        """The timestep the model is told at true timestep t."""
        return t if self.timestep_lie is None else self.timestep_lie.told(t, num_train_timesteps)


@dataclass
class Trajectory:
    """One reverse process, every step kept. Index i is the i-th model call (t decreasing).

    timesteps: (S,) long. x_t: (S+1, B, C, H, W) — x_t[i] is the model's input at step i and
    x_t[S] the final sample. eps: (S, B, C, H, W) ε̂ (guided). x0: (S, B, C, H, W) x̂0 implied by ε̂.
    features: step index -> {feature name -> (B, C, h, w)} for the steps in settings.capture_steps.
    """

    settings: SampleSettings
    model_name: str
    timesteps: torch.Tensor
    x_t: torch.Tensor
    eps: torch.Tensor
    x0: torch.Tensor
    features: dict[int, dict[str, torch.Tensor]]
    complete: bool = True  # False: stopped part-way (stop_after, should_stop); `final` is the next step's input
    patched_from: int | None = None  # the first step whose forward got patched maps: no longer `settings`' own run

    @property
    def final(self) -> torch.Tensor:
        """(B, C, H, W) the generated images in [-1, 1] (not clipped)."""
        return self.x_t[-1]

    def __len__(self) -> int:
        return len(self.timesteps)

    def nbytes(self) -> int:
        tensors = [self.timesteps, self.x_t, self.eps, self.x0]
        tensors += [t for step in self.features.values() for t in step.values()]
        return sum(t.numel() * t.element_size() for t in tensors)


def initial_noise(model: DiffusionModel, settings: SampleSettings) -> torch.Tensor:
    """The seeded starting noise (B, C, H, W): same seed and shape, same noise, whatever the model."""
    generator = torch.Generator().manual_seed(settings.seed)
    return torch.randn((settings.batch, *model.image_shape), generator=generator)


def guided_labels(model: DiffusionModel, settings: SampleSettings) -> tuple[torch.Tensor | None, bool]:
    """(the labels of the batch the model gets at every step, whether it is guided): `conditioning` of the run's labels."""
    return conditioning(model, class_labels(model, settings), settings.guidance)


def class_labels(model: DiffusionModel, settings: SampleSettings) -> torch.Tensor | None:
    """(B,) labels for the conditional pass, or None for an unconditional model."""
    if model.null_label is None:
        if settings.label is not None:
            raise ValueError(f"label: model {model.name!r} is not class-conditional; use label=None")
        return None
    label = settings.label
    labels = [model.null_label] * settings.batch if label is None else (
        [label] * settings.batch if isinstance(label, int) else list(label))
    if len(labels) != settings.batch:
        raise ValueError(f"label: {len(labels)} labels given for a batch of {settings.batch}")
    if any(not isinstance(y, int) or not 0 <= y <= model.null_label for y in labels):
        raise ValueError(f"label must be a digit from 0 to {model.null_label - 1} (or None for no digit), got {label!r}")
    return torch.tensor(labels, dtype=torch.long)


def conditioning(model: DiffusionModel, labels: torch.Tensor | None, guidance: float) -> tuple[torch.Tensor | None, bool]:
    """(the labels one U-Net call gets, whether it is guided). Guided: [conditional | null label], both halves in one
    batch, so (2B,); samples without a digit are never guided, so a batch of null labels runs once."""
    guided = labels is not None and guidance != 1.0 and bool((labels != model.null_label).any())
    if guided:
        return torch.cat([labels, torch.full_like(labels, model.null_label)]), True
    return labels, False


def guided_eps(eps: torch.Tensor, guidance: float) -> torch.Tensor:
    """(2B, C, H, W) ε̂ of a guided call -> (B, C, H, W) ε̂_∅ + w·(ε̂_y − ε̂_∅)."""
    eps_cond, eps_uncond = eps.chunk(2)
    return eps_uncond + guidance * (eps_cond - eps_uncond)


@dataclass(frozen=True)
class _StepCall:
    """What the model gets at one step besides x_t: the told timestep, the ablation, the h-space shift."""

    told: int
    ablation: Ablation
    h_edit: HSpaceEdit | None


def _step_calls(settings: SampleSettings, timesteps: torch.Tensor, num_train_timesteps: int) -> list[_StepCall]:
    return [_StepCall(settings.told_timestep(t, num_train_timesteps), settings.ablation_at(t), settings.h_edit_at(t))
            for t in timesteps.tolist()]


_MUST_MATCH_FOR_REUSE = ("sampler", "steps", "seed", "batch", "label", "guidance")


def _reusable_steps(model: DiffusionModel, settings: SampleSettings, calls: list[_StepCall], reuse: Trajectory,
                    num_train_timesteps: int) -> int:
    """How many leading steps of `reuse` are exactly the steps `settings` would compute."""
    if reuse.model_name != model.name:
        raise ValueError(f"reuse: the trajectory comes from model {reuse.model_name!r}, not {model.name!r}")
    for name in _MUST_MATCH_FOR_REUSE:
        if getattr(reuse.settings, name) != getattr(settings, name):
            raise ValueError(f"reuse: the trajectory was sampled with a different {name} "
                             f"({getattr(reuse.settings, name)!r}, not {getattr(settings, name)!r})")
    reused_calls = _step_calls(reuse.settings, reuse.timesteps, num_train_timesteps)
    if reuse.patched_from is not None:
        reused_calls = reused_calls[:reuse.patched_from]
    steps = 0
    while steps < min(len(calls), len(reused_calls)) and calls[steps] == reused_calls[steps] and (
            steps not in settings.capture_steps or steps in reuse.features):
        steps += 1
    return steps


def steps_to_copy(model: DiffusionModel, settings: SampleSettings, reuse: Trajectory) -> int:
    """How many leading steps `sample(model, settings, reuse=reuse)` would copy from `reuse` instead of computing."""
    scheduler = make_scheduler(model, settings.sampler, settings.steps)
    num_train_timesteps = scheduler.config.num_train_timesteps
    calls = _step_calls(settings, scheduler.timesteps, num_train_timesteps)
    return _reusable_steps(model, settings, calls, reuse, num_train_timesteps)


@torch.inference_mode()
def sample(model: DiffusionModel, settings: SampleSettings, progress=None, *, reuse: Trajectory | None = None,
           stop_after: int | None = None, should_stop=None, start: torch.Tensor | None = None,
           start_t: int | None = None, patches: Mapping[int, Mapping[str, torch.Tensor]] | None = None) -> Trajectory:
    """Run the reverse process and keep every step. `progress(i, steps)` is called after each step.

    reuse: an earlier trajectory of the same model, sampler, steps, seed, batch, label and guidance
    (e.g. the intact run, or this very run stopped part-way). Its steps up to the first one this run does
    differently are copied instead of recomputed; the result is bit-identical to a run without `reuse`.
    stop_after: stop after this step index (for probes that need one step's features); the trajectory then
    holds steps 0..stop_after only, and its `final` is the next step's input, not a finished sample.
    should_stop: called before each step is computed; True stops the run there, as `stop_after` would (the
    trajectory holds the steps done, possibly none, and `complete` is False).
    patches: step index -> {feature name -> tensor of the model's batch, (2B, C, h, w) when guided (see
    `guided_labels`)} put in place of those maps in that step's forward (`PlaygroundUNet.forward(patch=)`). The
    trajectory's `patched_from` says from which step it is no longer the run of `settings`.
    start: (B, C, H, W) the sample to begin from instead of the seeded noise, lying at timestep `start_t` (default:
    the schedule's first), which must be one of the schedule's; the trajectory then holds the steps from `start_t` on
    (step indices, `capture_steps` and `stop_after` count from there). DDIM continues exactly as the full run would
    from there; DPM-Solver++ starts its multistep history afresh, DDPM its noise draws. Not with `reuse`.
    """
    scheduler = make_scheduler(model, settings.sampler, settings.steps)
    unet = model.unet
    if start is None and start_t is None:
        x, timesteps = model.to_unet(initial_noise(model, settings)), scheduler.timesteps
    else:
        x, timesteps = _started(model, settings, scheduler.timesteps, start, start_t, reuse)
    labels = class_labels(model, settings)
    model_labels, guided = conditioning(model, labels, settings.guidance)
    if model_labels is not None:
        model_labels = model_labels.to(x.device)
    # DDPM adds fresh noise at every step: draw it from its own seeded generator
    step_kwargs = {"generator": torch.Generator().manual_seed(settings.seed + 1)} if settings.sampler == "ddpm" else {}

    steps = len(timesteps)
    num_train_timesteps = scheduler.config.num_train_timesteps
    calls = _step_calls(settings, timesteps, num_train_timesteps)
    # the told timesteps and the h-space shift as tensors once, not in every step
    told = [t if call.told == int(t) else torch.tensor(call.told) for t, call in zip(timesteps, calls)]
    edit = settings.h_edit
    shift = None if edit is None else model.to_unet(edit.strength * edit.direction)
    x_t = torch.empty((steps + 1, *x.shape), dtype=x.dtype)
    eps_all = torch.empty((steps, *x.shape), dtype=x.dtype)
    x0_all = torch.empty((steps, *x.shape), dtype=x.dtype)
    # x̂0 = (x_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t at the *true* t: the two coefficients of every step, computed once
    alphas = [float(scheduler.alphas_cumprod[int(t)]) for t in timesteps]
    x0_coefficients = [(math.sqrt(1 - a), 1 / math.sqrt(a)) for a in alphas]
    features: dict[int, dict[str, torch.Tensor]] = {}
    capture = set(settings.capture_steps)
    in_place = x.device == x0_all.device  # x̂0 written straight into the kept trajectory, no temporary

    if stop_after is not None and not 0 <= stop_after < steps:
        raise ValueError(f"stop_after must be a step index from 0 to {steps - 1}, got {stop_after!r}")
    end = steps if stop_after is None else stop_after + 1
    first = 0 if reuse is None else min(end, _reusable_steps(model, settings, calls, reuse, num_train_timesteps))
    patched_from = None
    if patches:
        if any(not 0 <= i < steps for i in patches):
            raise ValueError(f"patches: step indices must be from 0 to {steps - 1}, got {sorted(patches)}")
        patched_from = min(patches)
        first = min(first, patched_from)
    if first:
        x_t[:first], eps_all[:first], x0_all[:first] = reuse.x_t[:first], reuse.eps[:first], reuse.x0[:first]
        features = {i: reuse.features[i] for i in capture if i < first}
        # replay the scheduler over the kept ε̂: its state (DPM++'s history, DDPM's noise generator) must be
        # where the model calls left it; x then equals reuse.x_t[first] bit for bit
        for i in range(first):
            x = scheduler.step(eps_all[i].to(x.device), timesteps[i], x, **step_kwargs).prev_sample

    for i in range(first, end):
        if should_stop is not None and should_stop():
            end = i
            break
        t, call = timesteps[i], calls[i]
        x_t[i] = x
        model_input = torch.cat([x, x]) if guided else x
        out = unet(model_input, told[i], model_labels, ablation=call.ablation, capture_features=i in capture,
                   bottleneck_shift=None if call.h_edit is None else shift, patch=None if patches is None else patches.get(i))
        eps = guided_eps(out.sample, settings.guidance) if guided else out.sample
        if i in capture:  # keep the conditional half only; a view would pin the doubled batch in memory
            features[i] = {name: f[: settings.batch].clone() if guided else f for name, f in out.features.items()}
        noise_coefficient, scale = x0_coefficients[i]
        eps_all[i] = eps
        if in_place:
            torch.mul(x - noise_coefficient * eps, scale, out=x0_all[i])
        else:  # the U-Net runs on a GPU: compute there, keep on the CPU
            x0_all[i] = (x - noise_coefficient * eps).mul_(scale)
        x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
        if progress is not None:
            progress(i + 1 - first, end - first)
    x_t[end] = x
    if not torch.isfinite(x).all():
        raise FloatingPointError("the reverse process produced NaN or infinite values")
    if end < steps:
        timesteps, x_t, eps_all, x0_all = timesteps[:end], x_t[:end + 1].clone(), eps_all[:end].clone(), x0_all[:end].clone()
    return Trajectory(settings, model.name, timesteps.clone(), x_t, eps_all, x0_all, features, complete=end == steps,
                      patched_from=patched_from)


def _started(model: DiffusionModel, settings: SampleSettings, timesteps: torch.Tensor, start: torch.Tensor,
             start_t: int | None, reuse: Trajectory | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample`'s start checked: (x on the U-Net's device, the timesteps from start_t on); ValueError naming the argument."""
    if start is None:
        raise ValueError("start_t: given without start, the sample that lies at that timestep")
    if reuse is not None:
        raise ValueError("reuse: a run with a given start has no earlier run to copy steps from")
    shape = (settings.batch, *model.image_shape)
    if not isinstance(start, torch.Tensor) or tuple(start.shape) != shape:
        raise ValueError(f"start must be a tensor of shape {shape} (settings.batch, C, H, W), got {getattr(start, 'shape', start)!r}")
    if not torch.isfinite(start).all():
        raise ValueError("start must be finite")
    schedule = timesteps.tolist()
    start_t = schedule[0] if start_t is None else start_t
    if isinstance(start_t, bool) or start_t not in schedule:
        raise ValueError(f"start_t must be one of the {settings.steps}-step {settings.sampler} schedule's timesteps "
                         f"(from {schedule[0]} down to {schedule[-1]}, e.g. {schedule[:3]}), got {start_t!r}")
    return model.to_unet(start), timesteps[schedule.index(start_t):]


@dataclass
class Comparison:
    """Runs A and B from the same noise, and how far apart they are at every step."""

    a: Trajectory
    b: Trajectory

    def __post_init__(self):
        if len(self.a) != len(self.b) or self.a.final.shape != self.b.final.shape:
            raise ValueError("A and B must have the same steps and batch to be compared")

    def per_step_difference(self, quantity: str = "x0") -> torch.Tensor:
        """(S,) mean |A − B| of x_t, eps or x0 at every step (pixel units of [-1, 1])."""
        if quantity not in ("x_t", "eps", "x0"):
            raise ValueError(f"quantity must be one of x_t, eps, x0; got {quantity!r}")
        a, b = getattr(self.a, quantity), getattr(self.b, quantity)
        return (a[: len(self.a)] - b[: len(self.b)]).abs().flatten(1).mean(1)

    def final_difference(self) -> torch.Tensor:
        """(B,) mean |A − B| of each final image."""
        return (self.a.final - self.b.final).abs().flatten(1).mean(1)


def compare(model_a: DiffusionModel, model_b: DiffusionModel, settings: SampleSettings,
            ablation_b: Ablation | None = None, progress=None) -> Comparison:
    """A = model_a with settings.ablation; B = model_b with ablation_b (default: the same), same noise."""
    a = sample(model_a, settings, progress)
    b = sample(model_b, replace(settings, ablation=ablation_b if ablation_b is not None else settings.ablation), progress)
    return Comparison(a, b)


def digits_cycle(batch: int) -> tuple[int, ...]:
    """0, 1, ..., 9, 0, 1, ... for a batch that shows every digit."""
    return tuple(i % 10 for i in range(batch))


@torch.inference_mode()
def features_at(model: DiffusionModel, trajectory: Trajectory, step: int, sample_index: int = 0) -> dict[str, torch.Tensor]:
    """name -> (C, h, w): every feature map of one sample at one step, from the conditional pass.

    Uses the features kept during sampling when `step` was in `capture_steps`; otherwise one forward at
    batch 1 on the stored x_t (the same input and label the trajectory used), so no step is re-run.
    """
    if not 0 <= step < len(trajectory):
        raise ValueError(f"step must be from 0 to {len(trajectory) - 1}, got {step}")
    if not 0 <= sample_index < trajectory.settings.batch:
        raise ValueError(f"sample_index must be from 0 to {trajectory.settings.batch - 1}, got {sample_index}")
    if step in trajectory.features:
        return {name: f[sample_index] for name, f in trajectory.features[step].items()}
    labels = class_labels(model, trajectory.settings)
    label = None if labels is None else labels[sample_index:sample_index + 1]
    x = model.to_unet(trajectory.x_t[step, sample_index:sample_index + 1])
    settings, t = trajectory.settings, int(trajectory.timesteps[step])
    edit = settings.h_edit_at(t)
    shift = None if edit is None else model.to_unet(edit.strength * edit.direction)
    told = settings.told_timestep(t, model.scheduler_config.get("num_train_timesteps", 1000))
    out = model.unet(x, told, label, ablation=settings.ablation_at(t), capture_features=True, bottleneck_shift=shift)
    return {name: f[0] for name, f in out.features.items()}
