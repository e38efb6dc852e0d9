"""Feature capture and introspection: every map by its module path, and the parts the UI is built from."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention

from helpers import THREE_LEVEL_UNET, TINY_UNET, build_unet, make_input
from playground import PlaygroundUNet
from playground.blocks import SelfAttention
from playground.unet import feature_group

# Two resnets per level, so the names below must count per layer, not per block.
FEATURE_UNET = dict(THREE_LEVEL_UNET, layers_per_block=2)


@pytest.fixture
def feature_unet() -> PlaygroundUNet:
    return build_unet(FEATURE_UNET)


@pytest.fixture
def captured(feature_unet):
    with torch.no_grad():
        return feature_unet(make_input(feature_unet), torch.tensor([5, 700]), capture_features=True)


def expected_feature_names(config: dict) -> list[str]:
    """The maps the specification promises, derived from the config alone, in forward order."""
    levels, layers = len(config["block_out_channels"]), config["layers_per_block"]
    names = ["conv_in"]
    for i, block in enumerate(config["down_block_types"]):
        for j in range(layers):
            names.append(f"down_blocks.{i}.resnets.{j}")
            if block.startswith("Attn"):
                names.append(f"down_blocks.{i}.attentions.{j}")
        if i < levels - 1:
            names.append(f"down_blocks.{i}.downsamplers.0")
    names += ["mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1"]
    for i, block in enumerate(config["up_block_types"]):
        for j in range(layers + 1):
            names += [f"up_blocks.{i}.resnets.{j}.skip", f"up_blocks.{i}.resnets.{j}"]
            if block.startswith("Attn"):
                names.append(f"up_blocks.{i}.attentions.{j}")
        if i < levels - 1:
            names.append(f"up_blocks.{i}.upsamplers.0")
    return names


def test_capture_covers_every_encoder_bottleneck_skip_and_decoder_map(captured):
    names = list(captured.features)
    expected = expected_feature_names(FEATURE_UNET)
    missing = [name for name in expected if name not in captured.features]
    assert not missing
    assert [name for name in names if name in expected] == expected  # and in forward order


def test_every_captured_feature_is_a_batch_of_maps(captured):
    for name, feature in captured.features.items():
        assert feature.dim() == 4, name
        assert feature.shape[0] == 2, name


def test_captured_resolutions_follow_the_levels(feature_unet, captured):
    resolutions = feature_unet.skip_resolutions  # (16, 8, 4)
    levels = len(resolutions)
    for name, feature in captured.features.items():
        parts = name.split(".")
        if parts[0] == "down_blocks":
            level = int(parts[1]) + (1 if parts[2] == "downsamplers" else 0)
        elif parts[0] == "up_blocks":
            level = levels - 1 - int(parts[1]) - (1 if parts[2] == "upsamplers" else 0)
        elif parts[0] == "mid_block":
            level = levels - 1
        else:
            level = 0
        assert tuple(feature.shape[-2:]) == (resolutions[level],) * 2, name


def test_skips_join_the_decoder_at_every_skip_resolution(feature_unet, captured):
    skip_heights = [f.shape[-2] for name, f in captured.features.items() if name.endswith(".skip")]
    assert sorted(set(skip_heights), reverse=True) == list(feature_unet.skip_resolutions)
    assert len(skip_heights) == len(feature_unet.skip_resolutions) * (FEATURE_UNET["layers_per_block"] + 1)


def test_capture_does_not_change_the_sample(feature_unet, captured):
    with torch.no_grad():
        plain = feature_unet(make_input(feature_unet), torch.tensor([5, 700]))
    assert torch.equal(plain.sample, captured.sample)


def test_features_are_empty_when_not_capturing(tiny_unet):
    with torch.no_grad():
        assert tiny_unet(make_input(tiny_unet), 10).features == {}


def test_feature_names_are_the_captured_names_in_order(feature_unet, captured):
    assert list(feature_unet.feature_names) == list(captured.features)


def test_feature_shapes_are_the_captured_shapes(feature_unet, captured):
    assert feature_unet.feature_shapes() == {name: tuple(f.shape[1:]) for name, f in captured.features.items()}


def test_feature_shapes_for_another_input_size(feature_unet):
    with torch.no_grad():
        features = feature_unet(torch.randn(1, 1, 32, 32), 10, capture_features=True).features
    assert feature_unet.feature_shapes(32, 32) == {name: tuple(f.shape[1:]) for name, f in features.items()}


def test_feature_shapes_compute_nothing_on_the_model_s_own_weights(feature_unet, captured, monkeypatch):
    """Asking for shapes must not run the real network (in the app that would be real work on a web thread)."""
    fresh = type(feature_unet).from_config(feature_unet.config)

    def no_real_forward(*args, **kwargs):
        raise AssertionError("feature_shapes ran the model itself")

    monkeypatch.setattr(fresh, "forward", no_real_forward)
    assert fresh.feature_shapes() == {name: tuple(f.shape[1:]) for name, f in captured.features.items()}


def test_attention_sites_are_the_attention_module_paths(feature_unet):
    down, up, layers = FEATURE_UNET["down_block_types"], FEATURE_UNET["up_block_types"], FEATURE_UNET["layers_per_block"]
    expected = (
        [f"down_blocks.{i}.attentions.{j}" for i, b in enumerate(down) if b.startswith("Attn") for j in range(layers)]
        + ["mid_block.attentions.0"]
        + [f"up_blocks.{i}.attentions.{j}" for i, b in enumerate(up) if b.startswith("Attn") for j in range(layers + 1)]
    )
    assert list(feature_unet.attention_sites) == expected
    for site in feature_unet.attention_sites:
        assert isinstance(feature_unet.get_submodule(site), SelfAttention)


def test_attention_sites_are_state_dict_prefixes_and_diffusers_attention_paths(feature_unet):
    keys = feature_unet.state_dict().keys()
    for site in feature_unet.attention_sites:
        assert any(key.startswith(site + ".to_q.") for key in keys), site
    reference = UNet2DModel(**FEATURE_UNET)
    # the same set of paths (UNet2DModel registers mid_block after up_blocks, so its order differs)
    assert set(feature_unet.attention_sites) == {n for n, m in reference.named_modules() if isinstance(m, Attention)}


def test_a_model_without_mid_attention_has_no_mid_site():
    unet = PlaygroundUNet(**TINY_UNET, add_attention=False)
    assert "mid_block.attentions.0" not in unet.attention_sites
    assert unet.attention_sites == ("down_blocks.1.attentions.0", "up_blocks.0.attentions.0", "up_blocks.0.attentions.1")


def test_skip_resolutions_of_a_28_pixel_three_level_model():
    unet = PlaygroundUNet(**dict(THREE_LEVEL_UNET, sample_size=28))
    assert unet.skip_resolutions == (28, 14, 7)


@pytest.mark.parametrize("padding", [0, 1])
def test_skip_resolutions_match_the_real_maps_at_28_pixels(padding):
    unet = PlaygroundUNet(**dict(THREE_LEVEL_UNET, sample_size=28, downsample_padding=padding)).eval()
    with torch.no_grad():
        features = unet(torch.randn(1, 1, 28, 28), 10, capture_features=True).features
    heights = sorted({f.shape[-2] for name, f in features.items() if name.endswith(".skip")}, reverse=True)
    assert tuple(heights) == unet.skip_resolutions == (28, 14, 7)


@pytest.mark.parametrize(
    "name, group",
    [("conv_in", "encoder"), ("down_blocks.1.attentions.0", "encoder"), ("mid_block.resnets.1", "bottleneck"),
     ("up_blocks.0.resnets.1.skip", "skip"), ("up_blocks.2.upsamplers.0", "decoder")],
)
def test_feature_group_places_a_map_in_the_u(name, group):
    assert feature_group(name) == group
