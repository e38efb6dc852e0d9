"""The denoiser as an adaptive filter: the Jacobian of x̂0, its width and its figure — on tiny and formula models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from matplotlib.figure import Figure

from helpers import TINY_UNET, alphas_cumprod, build_unet, formula_model
from playground import Ablation, DiffusionModel, SampleSettings
from playground.filters import filter_width, jacobian_at, jacobian_figure, x0_jacobian
from playground.sampling import sample

SIZE = 8


def blurring_model(kernel: torch.Tensor) -> DiffusionModel:
    """A model whose x̂0 is exactly `kernel` correlated with x_t (zero padding): ε̂ = (x_t − √ᾱ·K⋆x_t) / √(1−ᾱ)."""
    a_bar = alphas_cumprod()

    def eps_of(x, t, labels):
        a = a_bar[t].view(-1, 1, 1, 1).to(x.dtype)
        return (x - a.sqrt() * F.conv2d(x, kernel[None, None].to(x.dtype), padding=kernel.shape[-1] // 2)) / (1 - a).sqrt()

    return formula_model(eps_of, sample_size=SIZE)


def gaussian(sigma: float, size: int = 7) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-r.pow(2) / (2 * sigma ** 2))
    return torch.outer(g, g) / g.sum() ** 2


@pytest.fixture(scope="module")
def conditional_model() -> DiffusionModel:
    """A tiny class-conditional U-Net in float64, so finite differences are exact to many digits."""
    unet = build_unet(TINY_UNET, num_class_embeds=11).double()
    return DiffusionModel("tiny64", unet, dict(DDPMScheduler(num_train_timesteps=1000).config))


def x0_by_the_sampler(model, settings, x, t) -> torch.Tensor:
    """x̂0 of one step of `sample` begun at x (B, C, H, W) lying at t."""
    return sample(model, settings, start=x, start_t=t, stop_after=0).x0[0]


def test_the_jacobian_equals_finite_differences_of_the_samplers_own_x0(conditional_model):
    model, pixel, t = conditional_model, (5, 9), 500
    ablation = Ablation(skip_scale={16: 0.5})
    x = torch.randn((1, 1, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    jacobian = x0_jacobian(model, x, t, pixel, label=3, guidance=2.0, ablation=ablation)  # (1, 16, 16)
    # J·v for random directions v, each a central difference along v: a wrong entry anywhere in J shows in all of them
    directions = torch.randn((24, 1, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h = 1e-6
    settings = SampleSettings(batch=len(directions), label=3, guidance=2.0, ablation=ablation)
    plus, minus = (x0_by_the_sampler(model, settings, x + sign * h * directions, t) for sign in (1, -1))
    estimate = (plus - minus)[:, 0, pixel[0], pixel[1]] / (2 * h)  # (24,)
    exact = (directions * jacobian).flatten(1).sum(1)
    assert jacobian.abs().max() > 0.1
    assert torch.allclose(exact, estimate, atol=1e-6)


def test_guidance_and_the_label_change_the_filter(conditional_model):
    x = torch.randn((1, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    plain = x0_jacobian(conditional_model, x, 300, (8, 8), label=3)
    assert not torch.allclose(plain, x0_jacobian(conditional_model, x, 300, (8, 8), label=3, guidance=3.0))
    assert not torch.allclose(plain, x0_jacobian(conditional_model, x, 300, (8, 8), label=5))


def test_a_model_linear_in_x_has_the_same_jacobian_at_every_input_and_it_is_its_kernel():
    kernel = torch.arange(9, dtype=torch.float64).reshape(3, 3) / 36
    model = blurring_model(kernel)
    first, second = (x0_jacobian(model, torch.randn((1, SIZE, SIZE), generator=torch.Generator().manual_seed(s),
                                                    dtype=torch.float64), 400, (3, 4)) for s in (0, 1))
    expected = torch.zeros(1, SIZE, SIZE, dtype=torch.float64)
    expected[0, 2:5, 3:6] = kernel  # x̂0[3, 4] = Σ K[i, j] x_t[3 − 1 + i, 4 − 1 + j]
    assert torch.allclose(first, second, atol=1e-9)
    assert torch.allclose(first, expected, atol=1e-9)


def test_the_width_grows_with_the_blur_of_a_known_kernel():
    x = torch.randn((1, SIZE, SIZE), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    widths = [filter_width(x0_jacobian(blurring_model(gaussian(sigma)), x, 200, (4, 4))) for sigma in (0.4, 0.8, 1.6)]
    assert widths[0] < widths[1] < widths[2]
    assert widths[1] == pytest.approx(math.sqrt(2 * math.pi) * 0.8, rel=0.1)  # a Gaussian's width is √(2π)·σ


@pytest.mark.parametrize("k", [1, 3, 5])
def test_a_box_of_k_by_k_equal_weights_is_k_pixels_wide_wherever_it_sits_and_whatever_its_sign(k):
    box = torch.zeros(1, 12, 12)
    box[0, 2:2 + k, 6:6 + k] = -0.3
    assert filter_width(box) == pytest.approx(k)


def test_an_all_zero_map_has_no_width():
    with pytest.raises(ValueError, match="jacobian"):
        filter_width(torch.zeros(1, 4, 4))


def test_jacobian_at_a_step_uses_that_steps_input_label_guidance_and_windowed_ablation(conditional_model):
    cut = Ablation(skip_scale={16: 0.0})
    settings = SampleSettings(steps=5, batch=2, seed=0, label=(4, 7), guidance=2.0, ablation=cut, ablation_window=(0, 500))
    run = sample(conditional_model, settings)
    assert run.timesteps.tolist() == [999, 749, 500, 250, 0]
    for step, ablation in ((0, None), (3, cut)):  # t = 999 lies outside the window, t = 250 inside
        expected = x0_jacobian(conditional_model, run.x_t[step, 1], int(run.timesteps[step]), (2, 3), label=7,
                               guidance=2.0, ablation=ablation)
        assert torch.equal(jacobian_at(conditional_model, run, step, (2, 3), sample_index=1), expected)


@pytest.mark.parametrize("call, named", [
    (lambda m, run, x: jacobian_at(m, run, 5, (0, 0)), "step"),
    (lambda m, run, x: jacobian_at(m, run, -1, (0, 0)), "step"),
    (lambda m, run, x: jacobian_at(m, run, 0, (0, 0), sample_index=2), "sample_index"),
    (lambda m, run, x: jacobian_at(m, run, 0, (16, 0)), "pixel"),
    (lambda m, run, x: x0_jacobian(m, x, 100, (0, -1)), "pixel"),
    (lambda m, run, x: x0_jacobian(m, x, 100, 3), "pixel"),
    (lambda m, run, x: x0_jacobian(m, x, 100, (0, 0), channel=1), "channel"),
    (lambda m, run, x: x0_jacobian(m, x, 1000, (0, 0)), "t"),
    (lambda m, run, x: x0_jacobian(m, x[..., :8], 100, (0, 0)), "x_t"),
    (lambda m, run, x: x0_jacobian(m, x, 100, (0, 0), label=11), "label"),
])
def test_out_of_range_arguments_are_refused_by_name(conditional_model, call, named):
    run = sample(conditional_model, SampleSettings(steps=5, batch=2, label=1))
    with pytest.raises(ValueError, match=rf"^{named}\b"):
        call(conditional_model, run, torch.zeros(1, 16, 16, dtype=torch.float64))


def test_the_figure_shows_the_map_with_a_colour_bar_and_the_pixel_marked():
    jacobian = torch.zeros(1, SIZE, SIZE)
    jacobian[0, 3, 4], jacobian[0, 3, 5] = 1.0, -0.5
    figure = jacobian_figure(jacobian, (3, 4), image=torch.zeros(1, SIZE, SIZE))
    assert isinstance(figure, Figure) and len(figure.axes) == 3  # input, map, colour bar
    image = figure.axes[1].images[0]
    assert image.get_cmap().name == "RdBu_r" and image.get_clim() == (-1.0, 1.0)  # centred on 0
    marker = figure.axes[1].lines[0]
    assert (marker.get_xdata()[0], marker.get_ydata()[0]) == (4, 3)  # (col, row) on the axes


def test_the_cli_writes_the_figure_and_prints_the_width(weights, tmp_path, capsys):
    import json

    from playground.jacobian import main
    out = tmp_path / "jacobian.png"
    assert main(["--model", str(weights / "tiny"), "--steps", "3", "--num", "2", "--digit", "4", "--step", "1",
                 "--pixel", "3", "20", "--sample", "1", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert printed["step"] == 1 and printed["pixel"] == [3, 20] and printed["width"] >= 1.0


@pytest.mark.parametrize("args, named", [(["--step", "3"], "--step"), (["--sample", "2"], "--sample"),
                                         (["--pixel", "28", "0"], "pixel")])
def test_the_cli_refuses_a_step_sample_or_pixel_out_of_range_in_one_line(weights, tmp_path, capsys, args, named):
    from playground.jacobian import main
    assert main(["--model", str(weights / "tiny"), "--steps", "3", "--num", "2", "--step", "1", "--out", str(tmp_path / "j.png"),
                 *args]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and message.startswith(f"error: {named}")
