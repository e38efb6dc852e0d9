"""Your own digit: noising, DDIM inversion, regeneration (as itself, as another digit) and a drawing made MNIST-like."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler, DDPMScheduler
from PIL import Image

from helpers import MNIST_SLICE, alphas_cumprod, formula_model
from playground import SampleSettings
from playground.data import load_mnist
from playground.inversion import ddim_invert, image_from_sketch, noised, regenerate
from playground.sampling import make_scheduler, sample

SIZE = 8


def templates() -> torch.Tensor:
    """(11, 1, 8, 8) one clean image per label in [-1, 1], the last (the null label) their mean."""
    digits = torch.rand((10, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.6 - 0.8
    return torch.cat([digits, digits.mean(0, keepdim=True)])


def gaussian_data_model(spread: float = 0.3):
    """The exact denoiser of Gaussian data around each label's template: E[x0 | x_t, y] for x0 ~ N(μ_y, spread²·I)."""
    a_bar, means = alphas_cumprod(), templates()

    def eps_of(x, t, labels):
        a, mu = a_bar[t].view(-1, 1, 1, 1), means[labels]
        x0 = mu + a.sqrt() * spread ** 2 * (x - a.sqrt() * mu) / (a * spread ** 2 + 1 - a)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    return formula_model(eps_of, sample_size=SIZE, num_class_embeds=11)


def constant_eps_model():
    """ε̂ is one fixed image whatever x_t and t: DDIM's steps are then exactly invertible."""
    eps = torch.randn((1, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return formula_model(lambda x, t, labels: eps.expand(len(x), -1, -1, -1), sample_size=SIZE, num_class_embeds=11)


def images(labels=(3, 7)) -> torch.Tensor:
    """(B, 1, 8, 8) images near the templates of `labels`, in [-1, 1]."""
    noise = torch.randn((len(labels), 1, SIZE, SIZE), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return (templates()[list(labels)] + 0.1 * noise).clamp(-1, 1)


# --- noising ----------------------------------------------------------------------------------------------------


def test_noised_at_t_is_the_schedulers_add_noise_of_the_seeded_noise():
    model, image = gaussian_data_model(), images()
    x_t = noised(model, image, 600, seed=5)
    eps = torch.randn(image.shape, generator=torch.Generator().manual_seed(5), dtype=image.dtype)
    a = alphas_cumprod()[600]
    assert torch.allclose(x_t, a.sqrt() * image + (1 - a).sqrt() * eps, atol=1e-6)
    assert torch.equal(x_t, DDPMScheduler(num_train_timesteps=1000).add_noise(image, eps, torch.tensor([600, 600])))
    assert not torch.equal(x_t, noised(model, image, 600, seed=6))


@pytest.mark.parametrize("image, t, named", [
    (lambda: images(), 1000, "t"), (lambda: images(), -1, "t"), (lambda: images(), 5.5, "t"),
    (lambda: images() * 1.5, 10, "image"), (lambda: images()[:, :, :4], 10, "image"), (lambda: images()[0], 10, "image"),
    (lambda: torch.full((1, 1, SIZE, SIZE), -1.0), 10, "image"),
])
def test_noised_refuses_a_t_outside_the_schedule_and_an_image_it_cannot_take(image, t, named):
    with pytest.raises(ValueError, match=rf"^{named}\b"):
        noised(gaussian_data_model(), image(), t)


# --- inversion and regeneration -------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [10, 50])  # linspace and leading spacing
def test_with_an_eps_that_ignores_x_inversion_undoes_every_ddim_step_exactly(steps):
    model, image = constant_eps_model(), images()
    noise, inversion = ddim_invert(model, image, steps, label=(3, 7))
    again = regenerate(model, noise, inversion.settings)
    assert inversion.timesteps.tolist() == make_scheduler(model, "ddim", steps).timesteps.flip(0).tolist()
    assert torch.equal(inversion.x_t[0], image) and torch.equal(inversion.noise, noise)
    assert torch.allclose(again.final, image, atol=1e-9)


def test_inversion_then_regeneration_draws_the_image_again_closer_with_more_steps_and_fresh_noise_does_not():
    model, image = gaussian_data_model(), images()
    errors = {}
    for steps in (50, 100):
        noise, inversion = ddim_invert(model, image, steps, label=(3, 7))
        errors[steps] = float((regenerate(model, noise, inversion.settings).final - image).abs().mean())
    fresh = float((sample(model, inversion.settings).final - image).abs().mean())
    assert errors[100] < errors[50] < 0.02 and fresh > 10 * errors[50]


def test_inversion_is_diffusers_ddim_inverse_scheduler_run_its_own_way(model):
    image = load_mnist(MNIST_SLICE, "test", limit=2)[0]
    noise, _ = ddim_invert(model, image, 50, label=(1, 2))
    inverse = DDIMInverseScheduler.from_config(model.scheduler_config)
    inverse.set_timesteps(50)
    x, labels = image, torch.tensor([1, 2])
    with torch.no_grad():
        for t in inverse.timesteps:
            x = inverse.step(model.unet(x, t, labels).sample, t, x).prev_sample
    assert torch.equal(noise, x)


def test_swapping_the_label_part_way_draws_the_first_steps_as_before_and_the_rest_as_the_new_digit():
    model, image = gaussian_data_model(), images((3,))
    noise, inversion = ddim_invert(model, image, 50, label=3)
    plain = regenerate(model, noise, inversion.settings)
    swapped = regenerate(model, noise, inversion.settings, swap_label_at=500, new_label=8)
    first, second = swapped.legs
    assert swapped.swap_step == len(first) == 24 and (first.timesteps > 500).all() and (second.timesteps <= 500).all()
    assert torch.equal(swapped.timesteps, plain.legs[0].timesteps)
    assert torch.equal(first.x0, plain.x0[:24]) and second.settings.label == 8
    to_8, to_3 = ((swapped.final - templates()[k]).abs().mean() for k in (8, 3))
    assert to_8 < to_3  # it ends nearer the new digit


def test_a_swap_to_the_same_label_is_the_unswapped_run_to_the_bit_and_progress_counts_both_legs():
    model, image = gaussian_data_model(), images((3,))
    noise, inversion = ddim_invert(model, image, 10, label=3)
    seen = []
    swapped = regenerate(model, noise, inversion.settings, swap_label_at=400, new_label=3, progress=lambda i, n: seen.append((i, n)))
    assert torch.equal(swapped.final, regenerate(model, noise, inversion.settings).final)
    assert seen == [(i, 10) for i in range(1, 11)]


def test_regenerating_from_a_noised_image_begins_at_its_t_and_keeps_more_of_it_the_less_it_was_noised():
    model, image = gaussian_data_model(), images()
    settings = SampleSettings(steps=50, batch=2, label=(3, 7), guidance=1.0)
    runs = {t: regenerate(model, noised(model, image, t, seed=0), settings, from_t=t) for t in (100, 300, 700)}
    assert runs[300].timesteps[0] == 300 and len(runs[300].timesteps) == 16
    change = [float((runs[t].final - image).abs().mean()) for t in (100, 300, 700)]
    assert change[0] < change[1] < change[2]


@pytest.mark.parametrize("kwargs, named", [({"from_t": 301}, "from_t"), ({"new_label": 4}, "new_label"),
                                           ({"swap_label_at": 500, "new_label": 12}, "new_label"),
                                           ({"swap_label_at": 1000, "new_label": 4}, "swap_label_at")])
def test_regenerate_refuses_a_start_or_swap_it_cannot_take_by_name(kwargs, named):
    model = gaussian_data_model()
    with pytest.raises(ValueError, match=rf"^{named}\b"):
        regenerate(model, images(), SampleSettings(steps=50, batch=2, label=(3, 7)), **kwargs)


def test_inversion_refuses_a_blank_image_and_values_outside_the_models_range():
    with pytest.raises(ValueError, match="^image: image 1 is blank"):
        ddim_invert(gaussian_data_model(), torch.cat([images((3,)), torch.zeros(1, 1, SIZE, SIZE, dtype=torch.float64)]), 10)
    with pytest.raises(ValueError, match=r"^image must hold values in \[-1, 1\]"):
        ddim_invert(gaussian_data_model(), images() + 1.0, 10)


# --- a drawing, made MNIST-like ---------------------------------------------------------------------------------


def drawn_rectangle(height=300, width=400, box=(40, 90, 150, 140), ink=255, paper=0) -> np.ndarray:
    """A (height, width) uint8 canvas with one filled rectangle (top, left, box height, box width)."""
    canvas = np.full((height, width), paper, dtype=np.uint8)
    top, left, h, w = box
    canvas[top:top + h, left:left + w] = ink
    return canvas


def test_a_drawing_is_cropped_scaled_to_fit_twenty_pixels_and_centred_by_mass():
    digit = image_from_sketch(drawn_rectangle())[0, 0]  # a 150 × 140 box, far from the canvas's centre
    assert digit.shape == (28, 28) and digit.min() == -1 and digit.max() == 1
    rows, cols = np.nonzero((digit > 0).numpy())
    assert rows.max() - rows.min() + 1 == 20 and cols.max() - cols.min() + 1 == 19  # 150 → 20, 140 → 18.7
    ink = (digit + 1) / 2
    centre = [float((ink.sum(axis) * torch.arange(28.0)).sum() / ink.sum()) for axis in (1, 0)]
    assert centre == pytest.approx([14.0, 14.0], abs=0.5)


def test_black_on_white_and_a_sketchpads_transparent_layer_give_the_same_digit_as_white_on_black():
    white_on_black = image_from_sketch(drawn_rectangle())
    black_on_white = image_from_sketch(drawn_rectangle(ink=0, paper=255))
    layer = np.zeros((300, 400, 4), dtype=np.uint8)  # black strokes on a transparent layer
    layer[..., 3] = drawn_rectangle()
    for other in (black_on_white, image_from_sketch(layer), image_from_sketch(Image.fromarray(layer, "RGBA"))):
        assert torch.allclose(other, white_on_black, atol=1e-6)


def test_an_mnist_digit_comes_back_as_it_was_made():
    digits = load_mnist(MNIST_SLICE, "test", limit=16)[0]
    for digit in digits:
        redrawn = image_from_sketch(((digit[0].numpy() + 1) * 127.5).round().astype(np.uint8))
        assert (redrawn[0] - digit).abs().mean() < 0.01


@pytest.mark.parametrize("drawing", [np.zeros((50, 60), np.uint8), np.full((50, 60, 3), 255, np.uint8),
                                     np.zeros((50, 60, 4), np.uint8)], ids=["black", "white", "transparent"])
def test_an_empty_drawing_is_refused_by_name(drawing):
    with pytest.raises(ValueError, match="^drawing: it is empty"):
        image_from_sketch(drawing)


def test_something_that_is_not_a_drawing_is_refused_by_name():
    with pytest.raises(ValueError, match="^drawing must be"):
        image_from_sketch(np.zeros((5, 5, 2)))


# --- the command line -------------------------------------------------------------------------------------------


def test_the_cli_inverts_a_png_and_writes_the_strip(weights, model, tmp_path, capsys):
    from playground.invert import main
    Image.fromarray(drawn_rectangle(ink=0, paper=255)).save(tmp_path / "digit.png")
    out = tmp_path / "strip.png"
    assert main(["--model", str(weights / "tiny"), "--image", str(tmp_path / "digit.png"), "--steps", "3", "--digit", "2",
                 "--as-digit", "5", "--out", str(out), "--size", "28"]) == 0
    printed = json.loads(capsys.readouterr().out)
    with Image.open(out) as strip:
        assert strip.size == (4 * 28 + 3 * 2, 28)  # image | start | regenerated | as a 5
    assert printed["start_t"] == int(make_scheduler(model, "ddim", 3).timesteps[0]) and printed["reconstruction_error"] >= 0


@pytest.mark.parametrize("args, named", [(["--noise-t", "10", "--steps", "0"], "steps"), (["--digit", "11"], "label")])
def test_the_cli_refuses_bad_arguments_in_one_line(weights, tmp_path, capsys, args, named):
    from playground.invert import main
    Image.fromarray(drawn_rectangle()).save(tmp_path / "digit.png")
    assert main(["--model", str(weights / "tiny"), "--image", str(tmp_path / "digit.png"), "--out", str(tmp_path / "s.png"),
                 *args]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and message.startswith(f"error: {named}")


def test_the_cli_refuses_an_empty_drawing(weights, tmp_path, capsys):
    from playground.invert import main
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(tmp_path / "blank.png")
    assert main(["--model", str(weights / "tiny"), "--image", str(tmp_path / "blank.png"), "--out", str(tmp_path / "s.png")]) == 2
    assert capsys.readouterr().err.startswith("error: drawing: it is empty")
