"""GuidedDDPMPipeline: the project's sampling as a diffusers pipeline, on tiny random weights.

The pipeline must give `playground.sampling.sample`'s pixels for the same settings, guide only images with a
digit, behave like stock DDPMPipeline on unconditional models, load by diffusers' custom_pipeline route offline,
and refuse bad arguments by name before doing any work.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DiffusionPipeline, UNet2DModel
from diffusers.utils import dynamic_modules_utils
from PIL import Image

import playground
from playground import PlaygroundUNet, SampleSettings, load_pipeline, sample
from playground.pipeline import GuidedDDPMPipeline
from playground.sampling import make_scheduler
from tiny_weights import TINY_UNET, write_pipeline

STEPS = 3  # enough for every scheduler to use its history (DPM-Solver's second order) and DDPM to add noise twice
# UNet2DModel and PlaygroundUNet agree to ~1e-6 per forward; three steps of guided sampling on random weights
# amplify that to ~1e-4 in the images. A wrong label or guidance moves them by tenths.
STOCK_UNET_TOLERANCE = 1e-3


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def as_images(x: torch.Tensor) -> torch.Tensor:
    """A trajectory's final x in [-1, 1] as the pipeline's "pt" output maps it."""
    return (x / 2 + 0.5).clamp(0, 1)


@contextmanager
def unet_calls(unet):
    """Every call of `unet` as (x_t, t, labels, ε̂). Random tiny models drive DPM-Solver's x far outside [-1, 1],
    where the clamped images hide differences: equal calls at every step mean equal trajectories."""
    calls = []

    def keep(module, args, output):
        x, t, labels = (*args, None, None)[:3]
        calls.append((x.clone(), torch.as_tensor(t).clone(), labels, output.sample.clone()))

    handle = unet.register_forward_hook(keep)
    try:
        yield calls
    finally:
        handle.remove()


def assert_same_calls(calls, expected_calls) -> None:
    assert len(calls) == len(expected_calls) == STEPS
    for step, (call, expected) in enumerate(zip(calls, expected_calls)):
        for name, value, expected_value in zip(("x_t", "t", "labels", "eps"), call, expected):
            same = value is expected_value is None or (
                value is not None and expected_value is not None and torch.equal(value, expected_value))
            assert same, f"step {step}: the unet's {name} differs"


@pytest.fixture(scope="module")
def pipe(weights):
    return quiet(GuidedDDPMPipeline.from_pretrained(weights / "tiny"))


@pytest.fixture(scope="module")
def unconditional_folder(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    unconditional = {name: value for name, value in TINY_UNET.items() if name != "num_class_embeds"}
    return write_pipeline(tmp_path_factory.mktemp("unconditional"), PlaygroundUNet(**unconditional))


@pytest.fixture
def modules_cache(tmp_path, monkeypatch):
    """diffusers copies a custom pipeline into its modules cache (~/.cache/huggingface/modules): one per test."""
    cache = tmp_path / "modules"
    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(cache))
    monkeypatch.syspath_prepend(str(cache))  # diffusers adds the cache to sys.path; monkeypatch then restores it
    return cache


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
@pytest.mark.parametrize("label", [7, None, (3, 10)], ids=["digit", "no-digit", "digit-and-null"])
def test_same_pixels_as_playground_sampling(pipe, model, sampler, label):
    settings = SampleSettings(sampler=sampler, steps=STEPS, seed=11, batch=2, label=label, guidance=2.5)
    with unet_calls(model.unet) as expected_calls:
        expected = as_images(sample(model, settings).final)
    labels = list(label) if isinstance(label, tuple) else label
    with unet_calls(pipe.unet) as calls:
        images = pipe(labels, batch_size=2, guidance_scale=2.5, num_inference_steps=STEPS, seed=11, sampler=sampler,
                      output_type="pt").images
    assert_same_calls(calls, expected_calls)
    assert torch.equal(images, expected)


def test_a_variant_trained_without_skips_runs_as_trained(weights):
    pipe = quiet(GuidedDDPMPipeline.from_pretrained(weights / "tiny-noskip"))
    assert isinstance(pipe.unet, PlaygroundUNet) and not pipe.unet.training_ablation.is_intact
    settings = SampleSettings(sampler="ddim", steps=STEPS, seed=2, batch=2, label=4)
    expected = as_images(sample(load_pipeline(weights / "tiny-noskip"), settings).final)
    images = pipe(4, batch_size=2, num_inference_steps=STEPS, seed=2, sampler="ddim", output_type="pt").images
    assert torch.equal(images, expected)


def test_the_held_scheduler_matches_playground_sampling_where_their_timesteps_agree(pipe, model):
    # 50 steps: "leading" (the folder's spacing) starts at t = 980, which make_scheduler accepts too
    ddim = quiet(GuidedDDPMPipeline(pipe.unet, DDIMScheduler.from_config(pipe.scheduler.config)))
    expected = as_images(sample(model, SampleSettings(sampler="ddim", steps=50, seed=3, batch=1, label=5)).final)
    # DDIM adds no noise per step, so diffusers' one generator draws exactly the project's starting noise
    images = ddim(5, num_inference_steps=50, generator=torch.Generator().manual_seed(3), output_type="pt").images
    assert torch.equal(images, expected)


def test_sampler_gives_playground_timesteps_where_the_held_spacing_differs(pipe, model):
    # 3 steps: "leading" would start at t = 666, far from pure noise; make_scheduler picks "linspace"
    assert make_scheduler(model, "ddpm", STEPS).timesteps.tolist() == [999, 500, 0]
    expected = as_images(sample(model, SampleSettings(sampler="ddpm", steps=STEPS, seed=4, batch=2, label=1)).final)
    held = pipe(1, batch_size=2, num_inference_steps=STEPS, seed=4, output_type="pt").images
    assert pipe.scheduler.timesteps.tolist() == [666, 333, 0]
    assert not torch.allclose(held, expected, atol=1e-3)
    chosen = pipe(1, batch_size=2, num_inference_steps=STEPS, seed=4, sampler="ddpm", output_type="pt").images
    assert torch.equal(chosen, expected)


def test_guidance_moves_digits_only(pipe):
    def run(labels, guidance):
        return pipe(labels, batch_size=2, guidance_scale=guidance, num_inference_steps=STEPS, seed=5,
                    sampler="ddpm", output_type="pt").images

    plain, guided = run(6, 1.0), run(6, 3.0)
    assert (plain - guided).abs().mean() > 1e-3
    assert torch.equal(run(None, 1.0), run(None, 3.0))  # no digit: nothing to guide towards
    # w = 0 keeps only ε̂_∅: the unconditional images, up to the rounding of a doubled batch
    assert torch.allclose(run(6, 0.0), run(None, 1.0), atol=1e-5)
    assert (run(6, 0.0) - plain).abs().mean() > 1e-3


def test_output_types_agree_in_shape_range_and_content(pipe):
    def run(output_type, **options):
        return pipe([2, 9], num_inference_steps=STEPS, seed=6, output_type=output_type, **options)

    pt, np_images, pil = run("pt").images, run("np").images, run("pil").images
    assert pt.shape == (2, 1, 28, 28) and pt.dtype == torch.float32 and 0 <= pt.min() and pt.max() <= 1
    assert isinstance(np_images, np.ndarray) and np_images.shape == (2, 28, 28, 1)
    assert np.array_equal(np_images, pt.permute(0, 2, 3, 1).numpy())
    assert len(pil) == 2 and all(isinstance(image, Image.Image) and image.mode == "L" and image.size == (28, 28)
                                 for image in pil)
    assert np.array_equal(np.stack([np.asarray(image) for image in pil]), (np_images[..., 0] * 255).round().astype(np.uint8))
    as_tuple = run("pt", return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1 and torch.equal(as_tuple[0], pt)


def test_unconditional_models_sample_as_stock_ddpm_pipeline(unconditional_folder):
    unet = PlaygroundUNet.from_pretrained(unconditional_folder, subfolder="unet")
    scheduler = DDPMScheduler.from_pretrained(unconditional_folder, subfolder="scheduler")
    with unet_calls(unet) as expected_calls:
        stock = quiet(DDPMPipeline(unet=unet, scheduler=scheduler))(
            batch_size=2, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(7), output_type="pt").images
    ours = quiet(GuidedDDPMPipeline(unet=unet, scheduler=scheduler))
    with unet_calls(unet) as calls:
        images = ours(batch_size=2, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(7),
                      output_type="pt").images
    assert_same_calls(calls, expected_calls)
    assert torch.equal(images, stock)
    strongly_guided = ours(batch_size=2, guidance_scale=4.0, num_inference_steps=STEPS,
                           generator=torch.Generator().manual_seed(7), output_type="pt").images
    assert torch.equal(strongly_guided, stock)  # without labels there is nothing to guide
    with pytest.raises(ValueError, match="^class_labels: this unet is not class-conditional"):
        ours(3, num_inference_steps=STEPS)


def test_stock_ddpm_pipeline_still_loads_and_runs_our_folders(weights, unconditional_folder):
    conditional = DDPMPipeline.from_pretrained(weights / "tiny")
    assert type(conditional.unet) is UNet2DModel and type(conditional.scheduler) is DDPMScheduler
    stock = quiet(DDPMPipeline.from_pretrained(unconditional_folder))(
        batch_size=2, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(8), output_type="pt").images
    ours = quiet(GuidedDDPMPipeline.from_pretrained(unconditional_folder))(
        batch_size=2, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(8), output_type="pt").images
    assert torch.allclose(ours, stock, atol=STOCK_UNET_TOLERANCE)


@pytest.mark.parametrize("custom_pipeline", ["folder", "file"])
def test_diffusers_loads_it_as_a_custom_pipeline_offline(weights, pipe, modules_cache, custom_pipeline):
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # conftest: any download attempt would fail
    package = Path(playground.__file__).parent
    source = str(package if custom_pipeline == "folder" else package / "pipeline.py")
    loaded = quiet(DiffusionPipeline.from_pretrained(weights / "tiny", custom_pipeline=source, trust_remote_code=True))
    assert type(loaded) is GuidedDDPMPipeline  # the package's class, not a twin defined by diffusers' copy
    assert (modules_cache / "diffusers_modules" / "local" / "pipeline.py").is_file()
    assert type(loaded.unet) is UNet2DModel  # what model_index.json names
    options = dict(class_labels=[0, 8], guidance_scale=2.0, num_inference_steps=STEPS, seed=9, output_type="pt")
    assert torch.allclose(loaded(**options).images, pipe(**options).images, atol=STOCK_UNET_TOLERANCE)


def test_the_custom_pipeline_route_refuses_a_stock_unet_for_an_ablated_variant(weights, modules_cache):
    folder = weights / "tiny-noskip"
    with pytest.raises(ValueError, match=r"^unet: .*training_ablation.*PlaygroundUNet\.from_pretrained"):
        DiffusionPipeline.from_pretrained(folder, custom_pipeline="playground", trust_remote_code=True)
    unet = PlaygroundUNet.from_pretrained(folder, subfolder="unet")
    loaded = quiet(DiffusionPipeline.from_pretrained(folder, custom_pipeline="playground", trust_remote_code=True, unet=unet))
    direct = quiet(GuidedDDPMPipeline.from_pretrained(folder))
    options = dict(class_labels=3, num_inference_steps=STEPS, seed=10, output_type="pt")
    assert loaded.unet is unet and torch.equal(loaded(**options).images, direct(**options).images)


def test_a_stock_unet2dmodel_guides_as_ours_does(weights, pipe):
    stock = quiet(GuidedDDPMPipeline(UNet2DModel.from_pretrained(weights / "tiny", subfolder="unet"), pipe.scheduler))
    options = dict(class_labels=[1, 10], guidance_scale=3.0, num_inference_steps=STEPS, seed=12, sampler="dpm++",
                   output_type="pt")
    assert torch.allclose(stock(**options).images, pipe(**options).images, atol=STOCK_UNET_TOLERANCE)


@pytest.mark.parametrize("arguments, named", [
    (dict(class_labels=10 + 1), "class_labels"),
    (dict(class_labels=-1), "class_labels"),
    (dict(class_labels=[1, 2, 3], batch_size=2), "class_labels"),
    (dict(class_labels=[]), "class_labels"),
    (dict(class_labels="7"), "class_labels"),
    (dict(class_labels=True), "class_labels"),
    (dict(batch_size=0), "batch_size"),
    (dict(guidance_scale=-0.5), "guidance_scale"),
    (dict(guidance_scale=math.nan), "guidance_scale"),
    (dict(guidance_scale=math.inf), "guidance_scale"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(num_inference_steps=1001), "num_inference_steps"),
    (dict(num_inference_steps=2.5), "num_inference_steps"),
    (dict(output_type="jpg"), "output_type"),
    (dict(sampler="euler"), "sampler"),
    (dict(seed=-1), "seed"),
    (dict(seed=0, generator=torch.Generator()), "seed"),
    (dict(generator=[torch.Generator()] * 3, batch_size=2), "generator"),
])
def test_bad_arguments_are_refused_by_name_before_any_work(pipe, monkeypatch, arguments, named):
    def no_forward(*args, **kwargs):
        raise AssertionError("the unet ran before the arguments were checked")

    monkeypatch.setattr(pipe.unet, "forward", no_forward)
    with pytest.raises(ValueError, match=f"^{named}\\b"):
        pipe(**{"num_inference_steps": STEPS, **arguments})
