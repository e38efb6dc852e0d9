"""The generator as a classifier (Li et al. 2023): errors per label, the posterior, its figure and its CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from matplotlib.figure import Figure
from PIL import Image

from helpers import TINY_UNET, alphas_cumprod, build_unet, formula_model
from playground import Ablation, DiffusionModel
from playground.denoising_classifier import denoising_errors, denoising_posterior, posterior_figure, trial_timesteps

SIZE = 8
TEMPLATES = torch.rand((10, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1


def template_model():
    """Denoises perfectly for the label whose template the image is: ε̂ = (x_t − √ᾱ·template_y) / √(1−ᾱ)."""
    a_bar = alphas_cumprod()

    def eps_of(x, t, labels):
        a = a_bar[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * TEMPLATES[labels.clamp(max=9)]) / (1 - a).sqrt()

    return formula_model(eps_of, sample_size=SIZE, num_class_embeds=11)


def label_blind_model():
    """A nonlinear ε̂ of x_t and t that ignores the label: every label should score the same."""
    return formula_model(lambda x, t, labels: torch.tanh(3 * x) * (t.view(-1, 1, 1, 1) / 1000.0),
                         sample_size=SIZE, num_class_embeds=11)


@pytest.fixture(scope="module")
def tiny_conditional() -> DiffusionModel:
    unet = build_unet(TINY_UNET, num_class_embeds=11)
    return DiffusionModel("tiny", unet, dict(DDPMScheduler(num_train_timesteps=1000, clip_sample=False).config))


def digits(*labels) -> torch.Tensor:
    return TEMPLATES[list(labels)]


def test_the_label_the_model_denoises_best_ranks_first_for_every_image():
    posterior = denoising_posterior(template_model(), digits(3, 7, 0), timesteps=5)
    assert posterior.argmax(1).tolist() == [3, 7, 0]
    errors = denoising_errors(template_model(), digits(3), timesteps=5)
    assert errors[0, 3] < 1e-9 and errors[0].sort().values[1] > 1e-2  # the right template denoises perfectly


def test_the_posterior_is_a_distribution_over_the_ten_digits(tiny_conditional):
    image = torch.rand((2, 1, 16, 16), generator=torch.Generator().manual_seed(2)) * 2 - 1
    posterior = denoising_posterior(tiny_conditional, image, timesteps=3)
    assert posterior.shape == (2, 10) and (posterior >= 0).all()
    assert torch.allclose(posterior.sum(1), torch.ones(2), atol=1e-6)


def test_every_label_sees_the_same_noisy_inputs_so_a_label_blind_model_gives_a_uniform_posterior():
    model = label_blind_model()
    posterior = denoising_posterior(model, digits(3), timesteps=4, n_noise=2)
    assert torch.allclose(posterior, torch.full((1, 10), 0.1), atol=1e-6)
    (x_t, t, labels), = model.unet.calls  # one call: 10 labels × 8 trials
    assert labels.tolist() == [y for y in range(10) for _ in range(8)]
    for y in range(1, 10):
        assert torch.equal(x_t[8 * y:8 * (y + 1)], x_t[:8]) and torch.equal(t[8 * y:8 * (y + 1)], t[:8])


def test_temperature_one_is_the_papers_softmax_of_the_summed_squared_error_and_higher_is_flatter():
    model, image = template_model(), digits(4) * 0.7  # no template fits exactly: finite errors everywhere
    errors = denoising_errors(model, image, timesteps=6)
    paper = torch.softmax(-errors.double() * SIZE * SIZE, dim=1).float()
    assert torch.allclose(denoising_posterior(model, image, timesteps=6), paper, atol=1e-6)
    warm = denoising_posterior(model, image, timesteps=6, temperature=50.0)
    entropy = [-(p * p.clamp_min(1e-30).log()).sum() for p in (paper, warm)]
    assert entropy[0] < entropy[1]


def test_a_different_seed_draws_different_noise():
    model = template_model()
    image = digits(2) * 0.5
    assert not torch.equal(denoising_errors(model, image, timesteps=3, seed=0), denoising_errors(model, image, timesteps=3, seed=1))


def test_the_ablation_reaches_the_unet(tiny_conditional):
    image = torch.rand((1, 1, 16, 16), generator=torch.Generator().manual_seed(2)) * 2 - 1
    intact = denoising_errors(tiny_conditional, image, timesteps=2)
    assert not torch.allclose(intact, denoising_errors(tiny_conditional, image, timesteps=2, ablation=Ablation(skip_scale={16: 0.0})))


def test_a_count_of_timesteps_is_spread_evenly_and_a_list_is_taken_as_given():
    model = template_model()
    assert trial_timesteps(model, 4).tolist() == [125, 375, 625, 875]
    assert trial_timesteps(model, [0, 999, 500]).tolist() == [0, 999, 500]


@pytest.mark.parametrize("kwargs, named", [({"timesteps": 0}, "timesteps"), ({"timesteps": [1000]}, "timesteps"),
                                           ({"timesteps": []}, "timesteps"), ({"n_noise": 0}, "n_noise"),
                                           ({"ablation": "skip"}, "ablation"), ({"temperature": 0}, "temperature")])
def test_bad_arguments_are_refused_by_name(kwargs, named):
    with pytest.raises(ValueError, match=rf"^{named}\b"):
        denoising_posterior(template_model(), digits(1), **kwargs)


def test_an_unconditional_model_is_refused():
    model = formula_model(lambda x, t, labels: x, sample_size=SIZE)
    with pytest.raises(ValueError, match="^model: 'formula' is not class-conditional"):
        denoising_posterior(model, digits(1))


@pytest.mark.parametrize("image", [digits(1)[0], digits(1) * 2, torch.zeros(1, 1, SIZE, SIZE, dtype=torch.float64)],
                         ids=["no batch", "outside [-1, 1]", "blank"])
def test_an_image_the_model_cannot_take_is_refused_by_name(image):
    with pytest.raises(ValueError, match="^image"):
        denoising_posterior(template_model(), image)


def test_the_figure_draws_ten_bars_the_best_in_colour_and_the_true_digit_outlined():
    posterior = torch.full((10,), 0.05)
    posterior[6] = 0.55
    figure = posterior_figure(posterior, true_label=2)
    assert isinstance(figure, Figure)
    bars = figure.axes[0].patches
    assert len(bars) == 10 and bars[6].get_height() == pytest.approx(0.55)
    assert bars[6].get_facecolor() != bars[0].get_facecolor() and bars[2].get_linewidth() == 2.0


def test_the_cli_classifies_a_png_and_the_held_out_digits(weights, tmp_path, capsys):
    from playground.denoising_classify import main
    drawing = np.zeros((60, 40), np.uint8)
    drawing[10:50, 15:25] = 255  # a "1"
    Image.fromarray(drawing).save(tmp_path / "one.png")
    assert main(["--model", str(weights / "tiny"), "--image", str(tmp_path / "one.png"), "--timesteps", "2",
                 "--out", str(tmp_path / "bars.png")]) == 0
    one = json.loads(capsys.readouterr().out)
    assert len(one["posterior"]) == 10 and sum(one["posterior"]) == pytest.approx(1, abs=1e-3)
    assert (tmp_path / "bars.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["--model", str(weights / "tiny"), "--mnist-test", "3", "--timesteps", "2", "--ablate", "skip:28=0"]) == 0
    held_out = json.loads(capsys.readouterr().out)
    assert held_out["images"] == 3 and 0 <= held_out["accuracy"] <= 1


@pytest.mark.parametrize("args, named", [(["--mnist-test", "0"], "--mnist-test"), (["--mnist-test", "2", "--timesteps", "0"],
                                          "timesteps"), (["--mnist-test", "2", "--ablate", "skip:13=0"], "skip_scale")])
def test_the_cli_refuses_bad_arguments_in_one_line(weights, capsys, args, named):
    from playground.denoising_classify import main
    assert main(["--model", str(weights / "tiny"), *args]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and message.startswith(f"error: {named}")


def test_the_cli_refuses_an_unconditional_model(weights, tmp_path, capsys):
    from playground import PlaygroundUNet
    from tiny_weights import TINY_UNET as SHIPPED_LAYOUT, write_pipeline
    write_pipeline(tmp_path / "plain", PlaygroundUNet(**{**SHIPPED_LAYOUT, "num_class_embeds": None}))
    from playground.denoising_classify import main
    assert main(["--model", str(tmp_path / "plain"), "--mnist-test", "2"]) == 2
    assert "is not class-conditional" in capsys.readouterr().err
