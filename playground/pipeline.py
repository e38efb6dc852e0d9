"""GuidedDDPMPipeline: diffusers' `DDPMPipeline` for class-conditional models, with classifier-free guidance.

Stock `DDPMPipeline` has no class labels, so it can only run unconditional models. This pipeline takes digits,
guides them as the project does (ε̂ = ε̂_∅ + w·(ε̂_y − ε̂_∅), both halves in one batch, ∅ the null label
`num_class_embeds − 1`) and otherwise behaves like `DDPMPipeline`: it steps with the scheduler it holds and
returns `ImagePipelineOutput` in [0, 1]. It runs unconditional models too, then exactly as `DDPMPipeline` does.

    import torch
    from diffusers import DDIMScheduler
    from playground.pipeline import GuidedDDPMPipeline

    pipe = GuidedDDPMPipeline.from_pretrained("weights/mnist")        # unet loaded as PlaygroundUNet
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    images = pipe(class_labels=[0, 1, 2, 3], guidance_scale=1.5, num_inference_steps=50,
                  generator=torch.Generator().manual_seed(0)).images    # four PIL images

diffusers' own loader runs this file as a custom pipeline (it must trust local code, and `playground` must be
importable, e.g. from the repository root); the path may also name the file, "playground/pipeline.py":

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("weights/mnist", custom_pipeline="playground", trust_remote_code=True)

That route builds the unet named in model_index.json, diffusers' `UNet2DModel`, which ignores a variant's
`training_ablation`; the pipeline refuses such a variant there unless given
`unet=PlaygroundUNet.from_pretrained(folder, subfolder="unet")`. `GuidedDDPMPipeline.from_pretrained` does that itself.

Same pixels as `playground.sampling.sample(model, SampleSettings(sampler, steps, seed, batch, label, guidance))`:
call `pipe(label, batch_size=batch, guidance_scale=guidance, num_inference_steps=steps, seed=seed, sampler=sampler)`
with the unet a PlaygroundUNet. Two things must match besides the model:
- the noise: `seed=` seeds as the project does (the start from `seed`, DDPM's per-step noise from `seed + 1`).
  One `generator` draws both from one stream, as in diffusers: the same pixels for DDIM and DPM-Solver (which
  add no noise) given `torch.Generator().manual_seed(seed)`, other pixels for DDPM.
- the timesteps: `sampler=` builds the scheduler with `make_scheduler`, which picks the spacing per step count
  so that a run starts at pure noise. The held scheduler keeps its own `timestep_spacing` ("leading" in our
  folders), which agrees only at some counts: of the multiples of 50, at 50, 100, 200, 250, 500 and 1000 for
  DDPM and DDIM and at none for DPM-Solver (whose "leading" starts 50 steps at t = 950); DDIM starts 20 steps
  at t = 950 and 600 at t = 599. After a call, `pipe.scheduler.timesteps` shows what it ran.
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

# Absolute imports: diffusers' custom_pipeline loader runs a copy of this file outside the package, where
# relative ones cannot resolve.
from playground.ablation import Ablation
from playground.sampling import SAMPLERS, DiffusionModel, make_scheduler
from playground.unet import TRAINING_ABLATION_KEY, PlaygroundUNet

OUTPUT_TYPES = ("pil", "np", "pt")
# Options of `from_pretrained` that concern how the unet is loaded, passed on when we load it as a PlaygroundUNet.
UNET_LOADING_OPTIONS = ("torch_dtype", "dtype", "variant")


class GuidedDDPMPipeline(DiffusionPipeline):
    """Class-conditional DDPM sampling with classifier-free guidance, on any diffusers scheduler.

    unet: a `PlaygroundUNet` or a stock `UNet2DModel` predicting ε; class-conditional iff it has
        `num_class_embeds`, whose last index is the null label ("no digit").
    scheduler: the sampler, e.g. `DDPMScheduler` or `DDIMScheduler.from_config(pipe.scheduler.config)`.
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel | PlaygroundUNet, scheduler: SchedulerMixin):
        super().__init__()
        # A PlaygroundUNet applies the ablation a variant was trained with on every call; a UNet2DModel built from
        # the same config keeps it in its config unread and would sample with the parts the model never learned to use.
        training_ablation = unet.config.get(TRAINING_ABLATION_KEY) or unet.config.get("training_ablation")
        if not isinstance(unet, PlaygroundUNet) and not Ablation.from_dict(training_ablation).is_intact:
            raise ValueError(
                f"unet: this model was trained with parts switched off (training_ablation={training_ablation}), which "
                f"a {type(unet).__name__} ignores; pass unet=PlaygroundUNet.from_pretrained(folder, subfolder='unet')")
        self.register_modules(unet=unet, scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """As `DiffusionPipeline.from_pretrained`; a local folder whose unet was saved by PlaygroundUNet gets one.

        model_index.json names diffusers' UNet2DModel so that stock DDPMPipeline loads our folders; that class
        would drop a variant's training_ablation, and its forward differs from ours by float rounding (~1e-6).
        """
        unet_config = Path(pretrained_model_name_or_path) / "unet" / PlaygroundUNet.config_name
        if "unet" not in kwargs and unet_config.is_file() and _names_playground_unet(unet_config):
            options = {name: kwargs[name] for name in UNET_LOADING_OPTIONS if name in kwargs}
            kwargs["unet"] = PlaygroundUNet.from_pretrained(pretrained_model_name_or_path, subfolder="unet", **options)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @property
    def null_label(self) -> int | None:
        """The label meaning "no digit" (the last class), or None for an unconditional unet."""
        classes = self.unet.config.num_class_embeds
        return None if classes is None else classes - 1

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | list[int] | None = None,
        batch_size: int | None = None,
        guidance_scale: float = 1.5,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        *,
        seed: int | None = None,
        sampler: str | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Generate images.

        class_labels: a digit for every image, one label per image, or None for no digit (the null label; the
            only choice for an unconditional unet). The null label itself may appear in a list.
        batch_size: images to make; None means one per label of a list, else 1. Must match a list's length.
        guidance_scale: w >= 0; 1 is plain conditional sampling. Images with no digit are never guided.
        num_inference_steps: from 1 to the scheduler's training timesteps.
        generator: draws the starting noise, then the noise a stochastic scheduler (DDPM) adds at each step.
        output_type: "pil" (list of PIL images), "np" ((B, H, W, C) float array) or "pt" ((B, C, H, W) tensor).
        seed: instead of `generator`, seed as `playground.sampling.sample` does, for the same pixels.
        sampler: a name of `playground.sampling.SAMPLERS` ("ddpm", "ddim", "dpm++"): for this call, step with that
            scheduler built from the held one's config by `make_scheduler`, as `sample` does; None uses the held one.
        Returns ImagePipelineOutput(images) in [0, 1], or (images,) when return_dict is False.
        """
        batch, labels = self._labels_of(class_labels, batch_size)
        _check_number("guidance_scale", guidance_scale, minimum=0)
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        _check_whole("num_inference_steps", num_inference_steps, 1, num_train_timesteps)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {list(OUTPUT_TYPES)}, got {output_type!r}")
        noise_generator, step_generator = _generators(generator, seed, batch)
        if sampler is None:
            scheduler = self.scheduler
            scheduler.set_timesteps(num_inference_steps)
        elif sampler in SAMPLERS:
            schedule = DiffusionModel("pipeline", self.unet, dict(self.scheduler.config))
            scheduler = make_scheduler(schedule, sampler, num_inference_steps)
        else:
            raise ValueError(f"sampler must be one of {list(SAMPLERS)} or None, got {sampler!r}")

        device, dtype = self._execution_device, self.unet.dtype
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else size
        # drawn in float32 and cast, as playground.sampling does: a half-precision unet starts from the same noise
        noise = randn_tensor((batch, self.unet.config.in_channels, height, width), generator=noise_generator,
                             device=device, dtype=torch.float32)
        x = noise.to(device, dtype) * scheduler.init_noise_sigma  # 1.0 for DDPM, DDIM, DPM-Solver: bits unchanged

        # as playground.sampling.sample decides it, so both take the same path through the same float operations
        guided = labels is not None and guidance_scale != 1.0 and bool((labels != self.null_label).any())
        if guided:  # one forward for both halves: [conditional | unconditional]
            labels = torch.cat([labels, torch.full_like(labels, self.null_label)])
        model_labels = None if labels is None else labels.to(device)
        # DDPM adds noise at every step; schedulers whose step takes no generator draw none
        step_options = {"generator": step_generator} if "generator" in inspect.signature(scheduler.step).parameters else {}

        for t in self.progress_bar(scheduler.timesteps):
            model_input = scheduler.scale_model_input(torch.cat([x, x]) if guided else x, t)
            eps = self.unet(model_input, t, model_labels).sample
            if guided:
                eps_cond, eps_uncond = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            x = scheduler.step(eps, t, x, **step_options).prev_sample
        if not torch.isfinite(x).all():
            raise FloatingPointError("the reverse process produced NaN or infinite values")

        images = (x / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            images = images.cpu().float().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _labels_of(self, class_labels, batch_size) -> tuple[int, torch.Tensor | None]:
        """(batch, (B,) long labels or None for an unconditional unet), checked against the model."""
        if batch_size is not None:
            _check_whole("batch_size", batch_size, 1)
        if isinstance(class_labels, torch.Tensor):
            class_labels = class_labels.tolist()
        null = self.null_label
        if null is None:
            if class_labels is not None:
                raise ValueError(f"class_labels: this unet is not class-conditional (no num_class_embeds); "
                                 f"use class_labels=None, got {class_labels!r}")
            return batch_size or 1, None
        if class_labels is None or _is_whole(class_labels):
            batch = batch_size or 1
            labels = [null if class_labels is None else class_labels] * batch
        elif isinstance(class_labels, (list, tuple)) and class_labels:
            labels, batch = list(class_labels), batch_size or len(class_labels)
            if batch != len(labels):
                raise ValueError(f"class_labels: {len(labels)} labels given for batch_size={batch}")
        else:
            raise ValueError(f"class_labels must be an int, a non-empty list of ints or None, got {class_labels!r}")
        if not all(_is_whole(label) and 0 <= label <= null for label in labels):
            raise ValueError(f"class_labels must be digits from 0 to {null - 1}, or {null} (the null label, "
                             f"no digit), got {class_labels!r}")
        return batch, torch.tensor([int(label) for label in labels], dtype=torch.long)


def _names_playground_unet(config_file: Path) -> bool:
    """Whether a unet's config.json was saved by PlaygroundUNet. An unreadable one counts: PlaygroundUNet's
    checked loading then refuses it by file and problem, where diffusers would not say which file."""
    try:
        return json.loads(config_file.read_text()).get("_class_name") == PlaygroundUNet.__name__
    except (OSError, ValueError, AttributeError):
        return True


def _generators(generator, seed, batch: int) -> tuple:
    """(generator of the starting noise, generator of each step's noise)."""
    if seed is None:
        if not (generator is None or isinstance(generator, torch.Generator) or (
                isinstance(generator, list) and len(generator) == batch
                and all(isinstance(g, torch.Generator) for g in generator))):
            raise ValueError(f"generator must be a torch.Generator, a list of {batch} (one per image) or None, "
                             f"got {generator!r}")
        return generator, generator
    if generator is not None:
        raise ValueError("seed: give seed or generator, not both")
    _check_whole("seed", seed, 0, 2**63 - 1)
    # playground.sampling.sample's seeding: the noise from `seed`, DDPM's per-step noise from its own stream
    return torch.Generator().manual_seed(int(seed)), torch.Generator().manual_seed(int(seed) + 1)


def _is_whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_whole(name: str, value, minimum: int, maximum: int | None = None) -> None:
    if not _is_whole(value) or value < minimum or (maximum is not None and value > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be a whole number {bounds}, got {value!r}")


def _check_number(name: str, value, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}")


if __name__ != "playground.pipeline":
    # diffusers' custom_pipeline loader executes a copy of this file as a module of its own; hand it the package's
    # class, so isinstance checks hold and only one implementation exists. (diffusers takes the one DiffusionPipeline
    # subclass defined outside diffusers that it finds here.)
    from playground.pipeline import GuidedDDPMPipeline  # noqa: E402,F811
