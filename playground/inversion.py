"""Your own digit: noise it or invert it, then let the model draw it again — as itself, or as another digit.

- `noised(model, image, t, seed)`: the forward process q(x_t | x_0), x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε, through the model's
  own `DDPMScheduler.add_noise` (what training fed it, Ho et al. 2020);
- `ddim_invert(model, image, steps)`: deterministic DDIM inversion (Song et al., ICLR 2021, "Denoising Diffusion
  Implicit Models", §4.3; Dhariwal & Nichol 2021, App. F): the DDIM update run backwards from the clean image to the
  noise the sampler starts from, one step per step of the sampler's own schedule, with diffusers'
  `DDIMInverseScheduler.step` (its convention: ε̂ of the current sample, told the timestep it is heading for);
- `regenerate(model, start, settings, ...)`: the reverse process from a given x_t (`sample(..., start=)`), optionally
  with the class label swapped from some t on (SDEdit's idea, Meng et al., ICLR 2022: keep the coarse layout the noisy
  steps settled, let a new label decide the rest);
- `image_from_sketch(drawing)`: a drawing made MNIST-like as MNIST was made (LeCun et al. 1998): grey, white on
  black, cropped to its strokes, scaled to fit 20×20, its centre of mass put at the centre of 28×28.

    python -m playground.invert --model weights/mnist --image my-digit.png --digit 3 --steps 50 --out strip.png
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMInverseScheduler, DDPMScheduler
from PIL import Image

from .sampling import DiffusionModel, SampleSettings, Trajectory, class_labels, make_scheduler, sample

BLANK = 1e-3  # an image whose pixels span less than this has nothing in it to invert or to denoise
MNIST_BOX, MNIST_SIZE = 20, 28  # MNIST's digits were scaled to fit 20×20 and centred in 28×28
EMPTY = 0.1  # a drawing whose strongest ink stands out from its background by less than this has nothing drawn
FAINT = 0.02  # ink below this share of the strongest is left out of the bounding box (anti-aliasing, paper grain)


@dataclass
class Inversion:
    """One DDIM inversion, every step kept. Index i is the i-th model call (t increasing).

    timesteps: (S,) long, the timestep each call was told. x_t: (S+1, B, C, H, W) — x_t[0] the image, x_t[S] the
    noise `regenerate` starts from. eps: (S, B, C, H, W) ε̂. x0: (S, B, C, H, W) the clean image each step implied.
    settings: what regenerates it (DDIM, the same steps and label, guidance 1).
    """

    settings: SampleSettings
    timesteps: torch.Tensor
    x_t: torch.Tensor
    eps: torch.Tensor
    x0: torch.Tensor

    @property
    def noise(self) -> torch.Tensor:
        """(B, C, H, W) the inverted noise x_T, at the sampler's first timestep."""
        return self.x_t[-1]

    def __len__(self) -> int:
        return len(self.timesteps)


@dataclass
class Regeneration:
    """A reverse process from a given x_t, in one leg, or two when the label was swapped part-way.

    legs: each a Trajectory of its own label (the second begins where the first stopped).
    swap_step: the step index (over both legs) from which the new label applies; None without a swap.
    """

    legs: tuple[Trajectory, ...]
    swap_step: int | None = None

    @property
    def final(self) -> torch.Tensor:
        """(B, C, H, W) the regenerated images."""
        return self.legs[-1].final

    @property
    def timesteps(self) -> torch.Tensor:
        return torch.cat([leg.timesteps for leg in self.legs])

    @property
    def x0(self) -> torch.Tensor:
        """(S, B, C, H, W) x̂0 at every step of both legs."""
        return torch.cat([leg.x0 for leg in self.legs])


def noised(model: DiffusionModel, image: torch.Tensor, t: int, seed: int = 0) -> torch.Tensor:
    """(B, C, H, W) x_t: `image` (B, C, H, W) in [-1, 1] carried forward to timestep t with noise drawn from `seed`."""
    image = check_image(model, image)
    scheduler = DDPMScheduler.from_config(model.scheduler_config)
    last = scheduler.config.num_train_timesteps - 1
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= last:
        raise ValueError(f"t must be a whole number from 0 to {last} (the model's schedule), got {t!r}")
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed), dtype=image.dtype)
    return scheduler.add_noise(image, noise, torch.full((len(image),), t, dtype=torch.long))


@torch.inference_mode()
def ddim_invert(model: DiffusionModel, image: torch.Tensor, steps: int = 50, *, label: int | tuple[int, ...] | None = None,
                progress=None) -> tuple[torch.Tensor, Inversion]:
    """(x_T (B, C, H, W), the record): the noise from which `steps`-step DDIM at guidance 1 draws `image` again.

    image: (B, C, H, W) in [-1, 1]. label: the digit the image shows (one for all or one per image), None for the null
    label. Every step of the sampler's schedule (`make_scheduler(model, "ddim", steps)`) is undone in reverse order, so
    the inversion ends exactly at the timestep `regenerate` (and `sample`) starts from, for any step count. A schedule
    that clips x̂0 (`clip_sample`, not the flagship's) clips it here too, and clipping cannot be undone exactly.
    progress(i, steps) after each step.
    """
    image = check_image(model, image)
    settings = SampleSettings(sampler="ddim", steps=steps, batch=len(image), label=label, guidance=1.0)
    sampler = make_scheduler(model, "ddim", steps)
    # only its step() is used, on the sampler's timesteps: its spacing sets the stride, which "leading" shares with DDIM
    inverse = DDIMInverseScheduler.from_config(model.scheduler_config, timestep_spacing="leading")
    inverse.set_timesteps(steps)
    labels = class_labels(model, settings)
    x = model.to_unet(image)
    labels = None if labels is None else labels.to(x.device)
    timesteps = sampler.timesteps.flip(0)  # (S,) increasing: 0 → the first timestep of the sampler
    x_t = torch.empty((steps + 1, *x.shape), dtype=x.dtype)
    eps_all, x0_all = torch.empty((steps, *x.shape), dtype=x.dtype), torch.empty((steps, *x.shape), dtype=x.dtype)
    for i, t in enumerate(timesteps):
        x_t[i] = x
        eps_all[i] = eps = model.unet(x, t, labels).sample
        out = inverse.step(eps, t, x)
        x0_all[i], x = out.pred_original_sample, out.prev_sample
        if progress is not None:
            progress(i + 1, steps)
    x_t[steps] = x
    if not torch.isfinite(x).all():
        raise FloatingPointError("the inversion produced NaN or infinite values")
    return x_t[steps], Inversion(settings, timesteps.clone(), x_t, eps_all, x0_all)


def regenerate(model: DiffusionModel, start: torch.Tensor, settings: SampleSettings, *, from_t: int | None = None,
               swap_label_at: int | None = None, new_label: int | tuple[int, ...] | None = None,
               progress=None) -> Regeneration:
    """The reverse process of `settings` from `start` (B, C, H, W), lying at `from_t` (default: the schedule's first t).

    From inverted noise at DDIM, the inversion's steps and label and guidance 1 (`inversion.settings`), this draws the
    image again. swap_label_at: from the first step with t <= this on, `new_label` replaces settings.label ("as another
    digit"). The run then has two legs; DDIM goes on exactly as one run with the label switched would, DPM-Solver++
    restarts its multistep history at the swap and DDPM its noise draws. progress(i, steps) counts both legs' steps.
    """
    scheduler = make_scheduler(model, settings.sampler, settings.steps)
    schedule, last = scheduler.timesteps.tolist(), scheduler.config.num_train_timesteps - 1
    from_t = schedule[0] if from_t is None else from_t
    if isinstance(from_t, bool) or from_t not in schedule:
        raise ValueError(f"from_t must be one of the {settings.steps}-step {settings.sampler} schedule's timesteps "
                         f"(from {schedule[0]} down to {schedule[-1]}, e.g. {schedule[:3]}), got {from_t!r}")
    begin = schedule.index(from_t)
    if swap_label_at is None:
        if new_label is not None:
            raise ValueError("new_label: given without swap_label_at, the t from which it applies")
        return Regeneration((sample(model, settings, progress, start=start, start_t=from_t),))
    if isinstance(swap_label_at, bool) or not isinstance(swap_label_at, int) or not 0 <= swap_label_at <= last:
        raise ValueError(f"swap_label_at must be a whole number from 0 to {last}, got {swap_label_at!r}")
    try:
        class_labels(model, replace(settings, label=new_label))
    except ValueError as error:
        raise ValueError(f"new_label: {error}") from None
    before = sum(t > swap_label_at for t in schedule[begin:])  # steps still drawn with the old label
    total = len(schedule) - begin

    def counted(offset):
        return None if progress is None else (lambda i, n: progress(offset + i, total))

    if before == 0:
        return Regeneration((sample(model, replace(settings, label=new_label), counted(0), start=start, start_t=from_t),), 0)
    first = sample(model, settings, counted(0), start=start, start_t=from_t, stop_after=before - 1)
    if before == total:  # the swap lies below the last step: nothing is left to draw with the new label
        return Regeneration((first,))
    second = sample(model, replace(settings, label=new_label), counted(before), start=first.final,
                    start_t=schedule[begin + before])
    return Regeneration((first, second), before)


def check_image(model: DiffusionModel, image, name: str = "image") -> torch.Tensor:
    """`image` as a float tensor, or ValueError naming `name`: shape (B, C, H, W) of the model, in [-1, 1], not blank."""
    shape = model.image_shape
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or tuple(image.shape[1:]) != shape or not len(image):
        raise ValueError(f"{name} must be a tensor of shape (B, {', '.join(map(str, shape))}), got "
                         f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    image = image if image.is_floating_point() else image.float()
    if not torch.isfinite(image).all() or image.min() < -1 or image.max() > 1:
        raise ValueError(f"{name} must hold values in [-1, 1] (the model's range), got "
                         f"[{float(image.min()):.3g}, {float(image.max()):.3g}]")
    spans = (image.flatten(1).max(1).values - image.flatten(1).min(1).values)
    if (spans < BLANK).any():
        raise ValueError(f"{name}: image {int((spans < BLANK).nonzero()[0])} is blank (one value everywhere): "
                         "nothing to invert or denoise")
    return image


def image_from_sketch(drawing) -> torch.Tensor:
    """(1, 1, 28, 28) in [-1, 1], white on black: a drawing made MNIST-like.

    drawing: a PIL image or an (H, W), (H, W, 3) or (H, W, 4) array (uint8, or floats in [0, 1]) of any size: strokes
    of any colour on a plain background, light or dark (the border's median says which), or on a transparent one (a
    sketchpad's layer: the alpha is the ink). It is cropped to its strokes, scaled to fit 20×20 keeping its aspect,
    brightest stroke to white, and shifted so its centre of mass sits at pixel (14, 14), where MNIST's digits have
    theirs. ValueError("drawing: it is empty ...") when nothing stands out from the background.
    """
    ink = _ink(drawing)  # (H, W) in [0, 1]
    if ink.max() < EMPTY:
        raise ValueError("drawing: it is empty (no stroke stands out from its background); draw a digit first")
    rows, cols = np.nonzero(ink > FAINT * ink.max())
    ink = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    scale = MNIST_BOX / max(ink.shape)
    size = [max(1, round(side * scale)) for side in ink.shape]
    box = F.interpolate(torch.from_numpy(ink)[None, None].float(), size=size, mode="bilinear", antialias=True,
                        align_corners=False)[0, 0]  # (h, w), h and w <= 20
    box = (box / box.max()).clamp(0, 1)
    ys, xs = torch.arange(size[0], dtype=torch.float32), torch.arange(size[1], dtype=torch.float32)
    centre_y, centre_x = float((box.sum(1) * ys).sum() / box.sum()), float((box.sum(0) * xs).sum() / box.sum())
    middle = MNIST_SIZE / 2  # MNIST's centres of mass average 14.0 in pixel indices (not 13.5, the field's middle)
    top, left = round(middle - centre_y), round(middle - centre_x)
    canvas = torch.zeros(MNIST_SIZE, MNIST_SIZE)
    # a very lopsided drawing can reach past the field once centred by mass: that part is cut, as MNIST's would be
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + size[0], MNIST_SIZE), min(left + size[1], MNIST_SIZE)
    canvas[y0:y1, x0:x1] = box[y0 - top:y1 - top, x0 - left:x1 - left]
    return (canvas * 2 - 1)[None, None]


def _ink(drawing) -> np.ndarray:
    """(H, W) float in [0, 1]: how much stroke each pixel holds, the background at 0."""
    if isinstance(drawing, Image.Image):
        transparent = drawing.mode in ("RGBA", "LA", "PA") or "transparency" in drawing.info
        drawing = np.asarray(drawing.convert("RGBA" if transparent else "RGB"))
    array = np.asarray(drawing)
    if array.dtype == bool:
        array = array.astype(np.float32)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or min(array.shape[:2]) < 2 \
            or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"drawing must be a PIL image or an (H, W), (H, W, 3) or (H, W, 4) array of numbers, got "
                         f"{array.dtype} {array.shape}")
    array = array.astype(np.float32) / (255.0 if array.dtype == np.uint8 or array.max() > 1 else 1.0)
    if not np.isfinite(array).all():
        raise ValueError("drawing must hold finite values")
    if array.ndim == 3 and array.shape[2] == 4:
        if array[..., 3].min() < 0.99:  # some of it is transparent: what was drawn is what is opaque
            return np.clip(array[..., 3], 0, 1)
        array = array[..., :3]
    grey = array if array.ndim == 2 else array @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    ink = 1 - grey if np.median(border) > 0.5 else grey  # MNIST is white strokes on black
    background = float(np.median(np.concatenate([ink[0], ink[-1], ink[:, 0], ink[:, -1]])))
    return np.clip((ink - background) / max(1 - background, 1e-6), 0, 1)
