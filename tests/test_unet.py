"""PlaygroundUNet is a diffusers.UNet2DModel to every observer: same config, keys, shapes, function, files."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DModel

from helpers import TINY_UNET, make_input, randomize
from playground import PlaygroundUNet

BASE = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)

# Each config varies a few options away from the base; together they cover every option we claim to support.
PARITY_CONFIGS = {
    "down-attn-mix": dict(
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
    ),
    "attention-everywhere": dict(
        down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
        attention_head_dim=4,
    ),
    "no-attention-blocks": dict(down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D")),
    "three-levels-two-layers-scale-shift": dict(
        sample_size=16, in_channels=3, out_channels=2, block_out_channels=(8, 16, 16), layers_per_block=2,
        down_block_types=("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"),
        resnet_time_scale_shift="scale_shift", attention_head_dim=8,
    ),
    "three-layers-sin-first-freq-shift-1": dict(
        layers_per_block=3, flip_sin_to_cos=False, freq_shift=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ),
    "attention-head-dim-none": dict(
        block_out_channels=(8, 16, 16), sample_size=16, attention_head_dim=None,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ),
    "no-mid-attention": dict(
        add_attention=False, down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ),
    "no-mid-block": dict(
        mid_block_type=None, down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ),
    "downsample-padding-0": dict(
        sample_size=16, block_out_channels=(8, 16, 16), downsample_padding=0, layers_per_block=2,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    ),
    "class-conditional": dict(
        num_class_embeds=5, down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ),
    "center-input-sample": dict(
        center_input_sample=True, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ),
    "mid-block-scale-factor": dict(
        mid_block_scale_factor=1.414, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
    ),
    "scale-shift-mid-scale-factor": dict(
        resnet_time_scale_shift="scale_shift", mid_block_scale_factor=2.0,
        down_block_types=("AttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "AttnUpBlock2D"),
    ),
    "time-embedding-dim": dict(
        time_embedding_dim=24, num_class_embeds=3,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ),
    "attn-norm-num-groups-and-eps": dict(
        attn_norm_num_groups=2, norm_eps=1e-6,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ),
}

DDPM_CIFAR10_CONFIG = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    norm_eps=1e-6, resnet_time_scale_shift="default", attention_head_dim=None, dropout=0.1,
)


def relative_max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def call_args(model, config: dict, batch: int = 2) -> tuple[tuple, dict]:
    """Seeded inputs, one timestep per batch element, and class labels where the model needs them."""
    x = make_input(model, batch=batch)
    t = torch.tensor([3, 871][:batch])
    labels = {"class_labels": torch.arange(batch) % config["num_class_embeds"]} if config.get("num_class_embeds") else {}
    return (x, t), labels


@pytest.fixture(params=list(PARITY_CONFIGS), ids=list(PARITY_CONFIGS))
def parity_config(request) -> dict:
    return {**BASE, **PARITY_CONFIGS[request.param]}


def test_state_dict_has_the_same_keys_and_shapes_as_unet2dmodel(parity_config):
    reference = UNet2DModel(**parity_config).state_dict()
    ours = PlaygroundUNet(**parity_config).state_dict()
    assert sorted(ours) == sorted(reference)  # the same keys (registration order may differ)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in reference.items()}


def test_unet2dmodel_weights_loaded_into_ours_give_the_same_output(parity_config):
    torch.manual_seed(0)
    reference = randomize(UNet2DModel(**parity_config), seed=1)
    ours = PlaygroundUNet(**parity_config).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    args, kwargs = call_args(ours, parity_config)
    with torch.no_grad():
        expected, actual = reference(*args, **kwargs).sample, ours(*args, **kwargs).sample
    assert actual.shape == expected.shape
    assert relative_max_error(actual, expected) < 1e-4


def test_our_weights_loaded_into_unet2dmodel_give_the_same_output(parity_config):
    torch.manual_seed(0)
    ours = randomize(PlaygroundUNet(**parity_config), seed=2)
    reference = UNet2DModel(**parity_config).eval()
    reference.load_state_dict(ours.state_dict(), strict=True)
    args, kwargs = call_args(ours, parity_config)
    with torch.no_grad():
        expected, actual = reference(*args, **kwargs).sample, ours(*args, **kwargs).sample
    assert relative_max_error(actual, expected) < 1e-4


def test_a_scalar_timestep_is_broadcast_like_unet2dmodel():
    config = {**BASE, **PARITY_CONFIGS["down-attn-mix"]}
    reference = randomize(UNet2DModel(**config), seed=3)
    ours = PlaygroundUNet(**config).eval()
    ours.load_state_dict(reference.state_dict())
    x = make_input(ours)
    with torch.no_grad():
        for t in (500, torch.tensor(500), torch.tensor([500])):
            assert relative_max_error(ours(x, t).sample, reference(x, t).sample) < 1e-4


def test_a_python_float_timestep_is_a_whole_step_like_unet2dmodel():
    """UNet2DModel turns a Python number into a long tensor (10.7 -> step 10); tensors keep their values."""
    config = {**BASE, **PARITY_CONFIGS["down-attn-mix"]}
    reference = randomize(UNet2DModel(**config), seed=3)
    ours = PlaygroundUNet(**config).eval()
    ours.load_state_dict(reference.state_dict())
    x = make_input(ours)
    with torch.no_grad():
        for t in (10.7, torch.tensor(10.7), torch.tensor([10.7, 3.2])):
            assert relative_max_error(ours(x, t).sample, reference(x, t).sample) < 1e-4
        assert torch.equal(ours(x, 10.7).sample, ours(x, 10).sample)


def test_a_model_without_sample_size_runs_intact_but_cannot_name_resolutions():
    config = {**BASE, **PARITY_CONFIGS["down-attn-mix"], "sample_size": None}
    unet = PlaygroundUNet(**config).eval()
    with torch.no_grad():
        assert unet(torch.randn(2, 1, 8, 8), 10).sample.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="sample_size"):
        unet.skip_resolutions


def _safetensors_only(folder) -> None:
    assert (folder / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(folder.glob("*.bin"))


def test_a_folder_saved_by_unet2dmodel_loads_into_playgroundunet(tmp_path):
    config = {**TINY_UNET, "num_class_embeds": 4}
    reference = randomize(UNet2DModel(**config), seed=4)
    reference.save_pretrained(tmp_path)
    _safetensors_only(tmp_path)
    ours = PlaygroundUNet.from_pretrained(tmp_path).eval()
    assert isinstance(ours, PlaygroundUNet)
    args, kwargs = call_args(ours, config)
    with torch.no_grad():
        assert relative_max_error(ours(*args, **kwargs).sample, reference(*args, **kwargs).sample) < 1e-4


def test_a_folder_saved_by_playgroundunet_loads_into_unet2dmodel(tmp_path):
    config = {**TINY_UNET, "num_class_embeds": 4}
    ours = randomize(PlaygroundUNet(**config), seed=5)
    ours.save_pretrained(tmp_path)
    _safetensors_only(tmp_path)
    reference = UNet2DModel.from_pretrained(tmp_path).eval()
    assert isinstance(reference, UNet2DModel)
    args, kwargs = call_args(ours, config)
    with torch.no_grad():
        assert relative_max_error(reference(*args, **kwargs).sample, ours(*args, **kwargs).sample) < 1e-4


def _channels_last_convolutions(model) -> bool:
    convolutions = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1]
    return bool(convolutions) and all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions)


def test_convolutions_are_channels_last_however_the_model_is_made_and_saved_files_are_standard(tmp_path):
    config = {**TINY_UNET, "num_class_embeds": 4}
    built = randomize(PlaygroundUNet(**config), seed=6)
    assert _channels_last_convolutions(built)
    assert all(tensor.is_contiguous() for tensor in built.state_dict().values())  # what safetensors requires
    assert all(isinstance(p, torch.nn.Parameter) for p in built.state_dict(keep_vars=True).values())
    built.save_pretrained(tmp_path)
    loaded = PlaygroundUNet.from_pretrained(tmp_path)  # diffusers fills weights in after __init__, in the file's layout
    assert _channels_last_convolutions(loaded)
    assert _channels_last_convolutions(PlaygroundUNet.from_config(built.config))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), built.state_dict().values()))


def test_a_ddpm_cifar10_sized_model_matches_unet2dmodel():
    torch.manual_seed(0)
    reference = randomize(UNet2DModel(**DDPM_CIFAR10_CONFIG), seed=6, scale=0.02)
    ours = PlaygroundUNet.from_config(reference.config).eval()  # built from the stock model's config
    assert sorted(ours.state_dict()) == sorted(reference.state_dict())
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():  # eval mode: dropout 0.1 must be inactive in both
        assert relative_max_error(ours(x, 421).sample, reference(x, 421).sample) < 1e-4


@pytest.mark.parametrize(
    "option, value",
    [
        ("act_fn", "gelu"),
        ("time_embedding_type", "fourier"),
        ("down_block_types", ("DownBlock2D", "CrossAttnDownBlock2D")),
        ("up_block_types", ("SkipUpBlock2D", "UpBlock2D")),
        ("resnet_time_scale_shift", "ada_group"),
        ("class_embed_type", "timestep"),
        ("downsample_type", "resnet"),
        ("upsample_type", "resnet"),
        ("mid_block_type", "UNetMidBlock2DCrossAttn"),
    ],
)
def test_an_unsupported_option_raises_valueerror_naming_it(option, value):
    with pytest.raises(ValueError, match=option) as error:
        PlaygroundUNet(**{**TINY_UNET, option: value})
    assert "supported" in str(error.value)


def test_return_dict_false_gives_a_tuple_starting_with_the_sample(tiny_unet):
    x = make_input(tiny_unet)
    with torch.no_grad():
        as_tuple = tiny_unet(x, 10, return_dict=False)
        as_output = tiny_unet(x, 10)
    assert isinstance(as_tuple, tuple)
    assert torch.equal(as_tuple[0], as_output.sample)


def test_a_class_conditional_model_requires_class_labels():
    unet = PlaygroundUNet(**TINY_UNET, num_class_embeds=11)
    with pytest.raises(ValueError, match="class_labels"):
        unet(make_input(unet), 10)


def test_an_unconditional_model_refuses_class_labels(tiny_unet):
    with pytest.raises(ValueError, match="class"):
        tiny_unet(make_input(tiny_unet), 10, class_labels=torch.tensor([1, 2]))


def test_class_labels_change_the_output():
    unet = randomize(PlaygroundUNet(**TINY_UNET, num_class_embeds=11))
    x = make_input(unet)
    with torch.no_grad():
        first = unet(x, 10, class_labels=torch.tensor([1, 2])).sample
        second = unet(x, 10, class_labels=torch.tensor([3, 10])).sample
    assert not torch.allclose(first, second)
