"""The denoiser as an adaptive filter: which pixels of x_t one pixel of x̂0 is made of.

Mohan et al. (ICLR 2020, "Robust and interpretable blind image denoising via bias-free convolutional neural
networks") showed that a CNN denoiser acts, at each input, as a linear filter: x̂0 ≈ J·x_t with J = ∂x̂0/∂x_t,
and each row of J is an adaptive filter, a weighted average over a neighbourhood that follows the image's
edges and widens as the noise grows. Kadkhodaie et al. (ICLR 2024, "Generalization in diffusion models arises
from geometry-adaptive harmonic representations") read diffusion denoisers the same way, through the same
Jacobian. Here that row is one backward pass:

- `x0_jacobian(model, x_t, t, pixel)`: ∂x̂0[channel, row, col] / ∂x_t, a (C, H, W) map, with x̂0 exactly as the
  sampler computes it, x̂0 = (x_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t, from the guided ε̂ of `sampling.py`;
- `jacobian_at(model, trajectory, step, pixel)`: the same at one step of a run, with that run's input, t,
  label, guidance, ablation (its window), timestep lie and h-space edit;
- `filter_width(jacobian)`: the filter's effective size in pixels, so "it widens as t grows" is a number;
- `jacobian_figure`: the map on a diverging colour map, the pixel marked.

    python -m playground.jacobian --model weights/mnist --digit 3 --step 40 --pixel 14 14 --out jacobian.png
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from .ablation import Ablation
from .sampling import (DiffusionModel, SampleSettings, Trajectory, class_labels, conditioning, guided_eps, make_scheduler)
from .viz import DIVERGING, plt


def x0_jacobian(model: DiffusionModel, x_t: torch.Tensor, t: int, pixel: tuple[int, int], *, label: int | None = None,
                guidance: float = 1.0, ablation: Ablation | None = None, channel: int = 0) -> torch.Tensor:
    """(C, H, W) ∂x̂0[channel, row, col] / ∂x_t at one input x_t ((C, H, W) or (1, C, H, W)) and timestep t.

    label: a digit, or None for the null label (class-conditional models); guidance: w of classifier-free guidance,
    as in SampleSettings; ablation: applied to the U-Net call. One forward and one backward pass at batch 1 (2 when
    guided). ValueError naming the argument for an x_t, t, pixel or channel the model cannot take.
    """
    settings = SampleSettings(batch=1, label=label, guidance=guidance, ablation=ablation or Ablation())
    return _jacobian(model, _one_sample(model, x_t), _timestep(model, t), settings, pixel, channel)


def jacobian_at(model: DiffusionModel, trajectory: Trajectory, step: int, pixel: tuple[int, int], sample_index: int = 0,
                channel: int = 0) -> torch.Tensor:
    """(C, H, W) the Jacobian row of x̂0[channel, pixel] at step `step` of `trajectory`, for one of its samples.

    Uses what that step's model call got: x_t[step], t, the sample's label, the guidance, the ablation if t lies in
    its window, the told timestep of a timestep lie and an h-space edit in its window. Its x̂0 is trajectory.x0[step].
    """
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < len(trajectory):
        raise ValueError(f"step must be a step index from 0 to {len(trajectory) - 1}, got {step!r}")
    settings = trajectory.settings
    if isinstance(sample_index, bool) or not isinstance(sample_index, int) or not 0 <= sample_index < settings.batch:
        raise ValueError(f"sample_index must be from 0 to {settings.batch - 1}, got {sample_index!r}")
    labels = class_labels(model, settings)
    label = None if labels is None or int(labels[sample_index]) == model.null_label else int(labels[sample_index])
    one = replace(settings, batch=1, label=label, capture_steps=())
    x = trajectory.x_t[step, sample_index:sample_index + 1]  # (1, C, H, W)
    return _jacobian(model, x, int(trajectory.timesteps[step]), one, pixel, channel)


def _jacobian(model: DiffusionModel, x: torch.Tensor, t: int, settings: SampleSettings, pixel, channel: int) -> torch.Tensor:
    """x: (1, C, H, W); settings: batch 1, read at the true timestep t as `sample` reads them."""
    channels, height, width = model.image_shape
    row, col = _pixel(pixel, height, width)
    if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < channels:
        raise ValueError(f"channel must be from 0 to {channels - 1}, got {channel!r}")
    scheduler = make_scheduler(model, "ddpm", 1)
    labels = class_labels(model, settings)
    model_labels, guided = conditioning(model, labels, settings.guidance)
    edit = settings.h_edit_at(t)
    a = float(scheduler.alphas_cumprod[t])
    noise_coefficient, scale = math.sqrt(1 - a), 1 / math.sqrt(a)  # x̂0's coefficients at the true t, as `sample` has them
    # a trajectory's tensors are inference tensors, and a caller may sit in no_grad: the graph needs both off
    with torch.inference_mode(False), torch.enable_grad():
        x = model.to_unet(x).clone().requires_grad_(True)  # (1, C, H, W)
        model_input = torch.cat([x, x]) if guided else x
        shift = None if edit is None else model.to_unet(edit.strength * edit.direction)
        eps = model.unet(model_input, settings.told_timestep(t, scheduler.config.num_train_timesteps),
                         None if model_labels is None else model_labels.to(x.device),
                         ablation=settings.ablation_at(t), bottleneck_shift=shift).sample
        eps = guided_eps(eps, settings.guidance) if guided else eps
        x0 = (x - noise_coefficient * eps) * scale  # (1, C, H, W)
        (gradient,) = torch.autograd.grad(x0[0, channel, row, col], x)
    return gradient[0].detach().cpu()


def _one_sample(model: DiffusionModel, x_t) -> torch.Tensor:
    shape = model.image_shape
    if not isinstance(x_t, torch.Tensor) or tuple(x_t.shape) not in (shape, (1, *shape)):
        raise ValueError(f"x_t must be a tensor of shape {shape} or {(1, *shape)}, got {getattr(x_t, 'shape', x_t)!r}")
    if not torch.isfinite(x_t).all():
        raise ValueError("x_t must be finite")
    return x_t.reshape(1, *shape)


def _timestep(model: DiffusionModel, t) -> int:
    last = model.scheduler_config.get("num_train_timesteps", 1000) - 1
    if isinstance(t, torch.Tensor) and t.numel() == 1 and not t.is_floating_point():
        t = int(t)
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= last:
        raise ValueError(f"t must be a whole number from 0 to {last}, got {t!r}")
    return t


def _pixel(pixel, height: int, width: int) -> tuple[int, int]:
    try:
        row, col = pixel
    except (TypeError, ValueError):
        raise ValueError(f"pixel must be a (row, col) pair, got {pixel!r}") from None
    for value, size in ((row, height), (col, width)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
            raise ValueError(f"pixel must be (row, col) with row from 0 to {height - 1} and col from 0 to {width - 1}, "
                             f"got {pixel!r}")
    return row, col


def filter_width(jacobian: torch.Tensor) -> float:
    """The filter's effective width in pixels: √n, with n = (Σ J²)² / Σ J⁴ the participation ratio of its squared weights.

    n counts the pixels the filter effectively spreads over: a k×k box of equal weights gives exactly k, a single
    pixel 1, a Gaussian of standard deviation σ about 2.5·σ (√(2π)·σ); the sign of a weight and where the filter
    sits do not matter. ValueError for an all-zero map, which filters nothing.
    """
    squared = jacobian.double().pow(2)
    total = squared.sum()
    if not torch.isfinite(total) or total == 0:
        raise ValueError("jacobian: all zero (or not finite), so it has no width")
    return math.sqrt(float(total.pow(2) / squared.pow(2).sum()))


def jacobian_figure(jacobian: torch.Tensor, pixel: tuple[int, int], *, image: torch.Tensor | None = None, title: str = ""):
    """The (C, H, W) map summed over input channels, on a diverging colour map centred on 0 with a colour bar; the pixel
    whose row it is marked. image: (C, H, W) or (H, W) in [-1, 1] (x_t or x̂0) shown beside it, the pixel marked too."""
    weights = jacobian.detach().double().reshape(-1, *jacobian.shape[-2:]).sum(0)  # (H, W)
    vmax = max(float(weights.abs().max()), 1e-12)
    panels = 1 if image is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(3.4 * panels + 0.6, 3.4), dpi=100, squeeze=False)
    row, col = pixel
    if image is not None:
        shown = image.detach().float().reshape(-1, *image.shape[-2:]).mean(0)
        axes[0, 0].imshow(shown.numpy(), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        axes[0, 0].set_title("input, the pixel marked", fontsize=9)
    ax = axes[0, -1]
    shown = ax.imshow(weights.numpy(), cmap=DIVERGING, vmin=-vmax, vmax=vmax, interpolation="nearest")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="∂x̂0[pixel] / ∂x_t")
    ax.set_title(f"filter of x̂0[{row}, {col}]: width {filter_width(jacobian):.1f} px", fontsize=9)
    for axis in axes[0]:
        axis.plot(col, row, marker="s", markersize=9, markerfacecolor="none", markeredgecolor="lime", markeredgewidth=1.6)
        axis.set_xticks([])
        axis.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
