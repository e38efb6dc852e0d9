"""Checkpoints of every kind diffusers writes (variant, sharded, both), in both directions, through the checked
loader; the training ablation stored where stock diffusers ignores it quietly; gradient checkpointing."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file, save_file

from helpers import THREE_LEVEL_UNET, build_unet, make_input
from playground import PlaygroundUNet
from playground.train import model_settings

LAYOUTS = {"variant": dict(variant="fp16"), "sharded": dict(max_shard_size="40KB"),
           "sharded variant": dict(variant="fp16", max_shard_size="40KB")}


def outputs(unet, x):
    with torch.no_grad():
        return unet(x, torch.tensor([5, 700]), return_dict=False)[0]


@pytest.fixture
def unet():
    return build_unet(THREE_LEVEL_UNET)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_ours_saved_in_every_layout_loads_in_stock_diffusers_and_back(unet, layout, tmp_path):
    unet.save_pretrained(tmp_path, **LAYOUTS[layout])
    if "sharded" in layout:
        assert len(list(tmp_path.glob("*.safetensors"))) > 1 and list(tmp_path.glob("*.index*.json"))
    load = dict(variant=LAYOUTS[layout].get("variant"))
    x = make_input(unet)
    expected = outputs(unet, x)
    assert torch.allclose(outputs(UNet2DModel.from_pretrained(tmp_path, **load).eval(), x), expected, atol=1e-5)
    assert torch.equal(outputs(PlaygroundUNet.from_pretrained(tmp_path, **load).eval(), x), expected)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_stock_diffusers_saved_in_every_layout_loads_through_the_checked_loader(unet, layout, tmp_path):
    stock = UNet2DModel(**THREE_LEVEL_UNET)
    stock.load_state_dict(unet.state_dict())
    stock.save_pretrained(tmp_path, **LAYOUTS[layout])
    loaded = PlaygroundUNet.from_pretrained(tmp_path, variant=LAYOUTS[layout].get("variant")).eval()
    x = make_input(unet)
    assert torch.allclose(outputs(loaded, x), outputs(stock.eval(), x), atol=1e-5)


def shards(folder):
    index = next(folder.glob("*.index.json"))
    return index, json.loads(index.read_text())


def test_a_shard_with_a_bad_tensor_is_refused_by_its_file_name(unet, tmp_path):
    unet.save_pretrained(tmp_path, max_shard_size="40KB")
    index, data = shards(tmp_path)
    name, shard = next(iter(data["weight_map"].items()))
    tensors = load_file(tmp_path / shard)
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, tmp_path / shard)
    with pytest.raises(ValueError, match=f"{shard}.*{name}.*NaN"):
        PlaygroundUNet.from_pretrained(tmp_path)


def test_an_index_that_points_outside_its_folder_or_loses_a_tensor_is_refused(unet, tmp_path):
    unet.save_pretrained(tmp_path, max_shard_size="40KB")
    index, data = shards(tmp_path)
    name = next(iter(data["weight_map"]))
    index.write_text(json.dumps({**data, "weight_map": {**data["weight_map"], name: "../elsewhere.safetensors"}}))
    with pytest.raises(ValueError, match="not a .safetensors file beside it"):
        PlaygroundUNet.from_pretrained(tmp_path)
    index.write_text(json.dumps({**data, "weight_map": {**data["weight_map"], "conv_in.extra": data["weight_map"][name]}}))
    with pytest.raises(ValueError, match="1 tensors no shard holds"):
        PlaygroundUNet.from_pretrained(tmp_path)


def test_stock_diffusers_loads_a_variant_trained_without_parts_with_no_warning_and_ours_keeps_them(tmp_path):
    variant = build_unet(THREE_LEVEL_UNET, training_ablation={"skip_scale": {"16": 0}})
    variant.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "training_ablation" not in config and config["_training_ablation"] == {"skip_scale": {"16": 0}}
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("diffusers.configuration_utils")
    logger.addHandler(handler)
    try:
        UNet2DModel.from_pretrained(tmp_path)
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "not expected" in r.getMessage()]
    loaded = PlaygroundUNet.from_pretrained(tmp_path)
    assert not loaded.training_ablation.is_intact  # never run as if intact
    assert not PlaygroundUNet.from_config(model_settings(config)).training_ablation.is_intact  # a soup's route too


def test_a_config_with_the_older_plain_key_still_loads_as_the_variant(tmp_path):
    variant = build_unet(THREE_LEVEL_UNET, training_ablation={"skip_scale": {"16": 0}})
    variant.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["training_ablation"] = config.pop("_training_ablation")
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert PlaygroundUNet.from_pretrained(tmp_path).training_ablation.skip_gain(16) == 0.0


def saved_bytes_and_gradients(unet, x, t):
    saved = []

    def keep(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        loss = unet(x, t).sample.pow(2).mean()
    loss.backward()
    return sum(saved), loss.detach(), {name: p.grad.clone() for name, p in unet.named_parameters()}


def test_gradient_checkpointing_gives_the_same_loss_and_gradients_keeping_less_for_the_backward_pass():
    unet = build_unet(THREE_LEVEL_UNET).train()
    x, t = make_input(unet, batch=4), torch.tensor([3, 300, 600, 900])
    plain_bytes, plain_loss, plain_grads = saved_bytes_and_gradients(unet, x, t)
    unet.zero_grad()
    unet.enable_gradient_checkpointing()
    checkpointed_bytes, loss, grads = saved_bytes_and_gradients(unet, x, t)
    assert torch.equal(loss, plain_loss)
    assert all(torch.allclose(grads[name], plain_grads[name], atol=1e-6) for name in plain_grads)
    assert checkpointed_bytes < 0.6 * plain_bytes
    unet.disable_gradient_checkpointing()
    assert saved_bytes_and_gradients(unet, x, t)[0] == plain_bytes
