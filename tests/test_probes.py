"""Linear probes: pooled features of noised real digits, a logistic-regression probe per block × t, safetensors
round trips, the reading along a run (B under its ablation), figures, the command line and the shipped probes."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure
from safetensors.torch import load_file, save_file

from helpers import MNIST_SLICE
from playground import Ablation, SampleSettings, load_pipeline, sample
from playground.data import MNIST_FILES, load_mnist
from playground.probes import (CONFIG_FILE, TENSORS_FILE, TIMESTEPS, LinearProbes, Probe, default_blocks, fit_probe, main,
                               pooled_features, probe_accuracy_figure, probe_reading, probe_reading_figure, train_probes)

SHIPPED = Path(__file__).resolve().parent.parent / "weights" / "mnist" / "probes"
TINY_BLOCKS = ("down_blocks.0.resnets.0", "down_blocks.1.attentions.0", "mid_block.resnets.1", "up_blocks.0.attentions.1",
               "up_blocks.1.resnets.1")


@pytest.fixture(scope="module")
def digits():
    return load_mnist(MNIST_SLICE, "test")  # (64, 1, 28, 28), (64,)


@pytest.fixture(scope="module")
def probes(model, digits):
    images, labels = digits
    return train_probes(model, (images[:48], labels[:48]), (images[48:], labels[48:]), timesteps=(0, 999), batch_size=32)


def labelled_features(count: int, channels: int, carry: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, channels) Gaussian noise plus `carry` × a fixed random mean per label, and the labels."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (count,), generator=generator)
    means = torch.randn(10, channels, generator=torch.Generator().manual_seed(99))
    return torch.randn(count, channels, generator=generator) + carry * means[labels], labels


# --- pooled features -----------------------------------------------------------------------------------


def test_default_blocks_are_the_last_map_of_each_level_and_of_the_bottleneck_in_forward_order(model):
    assert default_blocks(model.unet) == TINY_BLOCKS


def test_pooled_features_are_one_vector_per_image_and_block(model, digits):
    features = pooled_features(model, digits[0][:5], None, 500, seed=0)
    shapes = model.unet.feature_shapes()
    assert list(features) == list(TINY_BLOCKS)
    assert all(f.shape == (5, shapes[block][0]) and f.dtype == torch.float32 for block, f in features.items())


def test_pooled_features_are_the_same_for_the_same_seed_whatever_the_batch_and_differ_for_another(model, digits):
    images = digits[0][:6]
    first = pooled_features(model, images, None, 500, ["mid_block.resnets.1"], seed=3, batch_size=6)
    again = pooled_features(model, images, None, 500, ["mid_block.resnets.1"], seed=3, batch_size=6)
    other = pooled_features(model, images, None, 500, ["mid_block.resnets.1"], seed=4, batch_size=6)
    batched = pooled_features(model, images, None, 500, ["mid_block.resnets.1"], seed=3, batch_size=4)
    assert torch.equal(first["mid_block.resnets.1"], again["mid_block.resnets.1"])
    assert torch.allclose(first["mid_block.resnets.1"], batched["mid_block.resnets.1"], atol=1e-5)
    assert not torch.allclose(first["mid_block.resnets.1"], other["mid_block.resnets.1"], atol=1e-3)


def test_pooled_features_tell_the_model_no_digit_unless_labels_are_given(model, digits):
    images, labels = digits[0][:4], digits[1][:4]
    blocks = ["mid_block.resnets.1"]
    untold = pooled_features(model, images, None, 200, blocks, seed=0)["mid_block.resnets.1"]
    null = pooled_features(model, images, torch.full((4,), model.null_label), 200, blocks, seed=0)["mid_block.resnets.1"]
    told = pooled_features(model, images, labels, 200, blocks, seed=0)["mid_block.resnets.1"]
    assert torch.equal(untold, null) and not torch.allclose(untold, told, atol=1e-3)


def test_pooled_features_refuse_an_unknown_block_and_timestep_by_name(model, digits):
    with pytest.raises(ValueError, match="mid_block.nowhere"):
        pooled_features(model, digits[0][:2], None, 0, ["mid_block.nowhere"], seed=0)
    with pytest.raises(ValueError, match="t must be"):
        pooled_features(model, digits[0][:2], None, 1000, seed=0)


# --- probes --------------------------------------------------------------------------------------------


def test_a_probe_reads_a_label_the_features_carry():
    features, labels = labelled_features(700, 16, carry=2.0, seed=0)
    probe = fit_probe(features[:500], labels[:500])
    assert probe.accuracy(features[500:], labels[500:]) > 0.9


def test_a_probe_on_features_that_carry_no_label_stays_near_chance():
    features, labels = labelled_features(2000, 16, carry=0.0, seed=1)
    probe = fit_probe(features[:1000], labels[:1000])
    assert probe.accuracy(features[1000:], labels[1000:]) < 0.16


def test_a_probe_standardises_its_features_so_their_units_do_not_matter():
    features, labels = labelled_features(300, 8, carry=0.7, seed=3)
    rescaled = features * torch.logspace(-3, 3, 8) + 50.0  # one channel in thousandths, another in thousands
    plain, scaled = fit_probe(features[:200], labels[:200]), fit_probe(rescaled[:200], labels[:200])
    assert torch.allclose(scaled.mean, rescaled[:200].mean(0)) and torch.allclose(scaled.std, rescaled[:200].std(0))
    assert torch.allclose(plain.probabilities(features[200:]), scaled.probabilities(rescaled[200:]), atol=1e-3)


def test_a_probe_gives_probabilities_and_the_same_data_the_same_probe():
    features, labels = labelled_features(200, 8, carry=1.0, seed=2)
    a, b = fit_probe(features, labels), fit_probe(features, labels)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert torch.allclose(a.probabilities(features).sum(1), torch.ones(200))


def test_trained_probes_cover_every_block_and_timestep_noisiest_first(probes):
    assert probes.blocks == TINY_BLOCKS and probes.timesteps == (999, 0)
    assert set(probes.probes) == set(probes.accuracy) == {(b, t) for b in TINY_BLOCKS for t in (999, 0)}
    assert all(0 <= a <= 1 for a in probes.accuracy.values())
    assert probes.record["train_images"] == 48 and probes.record["test_images"] == 16


def test_a_step_is_read_by_the_probe_of_the_nearest_probed_t_a_tie_by_the_noisier(probes):
    spaced = replace(probes, timesteps=(800, 600, 0))
    assert [spaced.nearest_t(t) for t in (999, 750, 700, 650, 299, 300, 10)] == [800, 800, 800, 600, 0, 600, 0]


# --- saving and loading ---------------------------------------------------------------------------------


def test_saved_probes_load_bit_identical(probes, tmp_path):
    probes.save(tmp_path)
    loaded = LinearProbes.load(tmp_path)
    assert (loaded.blocks, loaded.timesteps, loaded.accuracy, loaded.record) == (
        probes.blocks, probes.timesteps, probes.accuracy, probes.record)
    for key, probe in probes.probes.items():
        for part in ("weight", "bias", "mean", "std"):
            assert torch.equal(getattr(loaded.probes[key], part), getattr(probe, part)), (key, part)
    assert set(load_file(tmp_path / TENSORS_FILE)) == {f"{b}@{t}.{p}" for b in TINY_BLOCKS for t in (999, 0)
                                                         for p in ("weight", "bias", "mean", "std")}


def test_loading_refuses_a_pickle_in_place_of_the_safetensors(probes, tmp_path):
    probes.save(tmp_path)
    tensors = {name: tensor.clone() for name, tensor in load_file(tmp_path / TENSORS_FILE).items()}  # off the mapped file
    torch.save(tensors, tmp_path / TENSORS_FILE)
    with pytest.raises(ValueError, match="not a safetensors file"):
        LinearProbes.load(tmp_path)


def test_loading_refuses_a_folder_that_holds_only_a_pickle(probes, tmp_path):
    probes.save(tmp_path)
    (tmp_path / TENSORS_FILE).rename(tmp_path / "probes.pt")
    with pytest.raises(ValueError, match="probes.pt is a pickle"):
        LinearProbes.load(tmp_path)


def test_loading_names_a_missing_tensor(probes, tmp_path):
    probes.save(tmp_path)
    tensors = {name: tensor.clone() for name, tensor in load_file(tmp_path / TENSORS_FILE).items()}
    del tensors["mid_block.resnets.1@999.std"]
    save_file(tensors, tmp_path / TENSORS_FILE)
    with pytest.raises(ValueError, match=r"lacks 1 tensors \['mid_block.resnets.1@999.std'\]"):
        LinearProbes.load(tmp_path)


def test_loading_refuses_a_probe_of_mismatched_shapes(probes, tmp_path):
    probes.save(tmp_path)
    tensors = {name: tensor.clone() for name, tensor in load_file(tmp_path / TENSORS_FILE).items()}
    tensors["mid_block.resnets.1@0.mean"] = torch.zeros(3)
    save_file(tensors, tmp_path / TENSORS_FILE)
    with pytest.raises(ValueError, match="mid_block.resnets.1@0 is not"):
        LinearProbes.load(tmp_path)


# --- reading a run --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(model):
    a = SampleSettings(steps=4, batch=2, seed=0, label=3)
    b = replace(a, ablation=Ablation(skip_scale={28: 0.0, 14: 0.0}))
    return sample(model, a), sample(model, b)


def test_a_reading_gives_each_block_ten_probabilities_at_every_step(probes, model, runs):
    reading = probe_reading(probes, model, runs[0], sample_index=1)
    assert reading.shape == (len(TINY_BLOCKS), 4, 10)
    assert torch.allclose(reading.sum(-1), torch.ones(len(TINY_BLOCKS), 4), atol=1e-5)


def test_a_reading_is_each_steps_probe_on_the_null_label_features_of_that_step(probes, model, runs):
    trajectory, step = runs[0], 2
    t = int(trajectory.timesteps[step])
    x = trajectory.x_t[step, 1:2]
    with torch.no_grad():
        features = model.unet(x, t, torch.tensor([model.null_label]), capture_features=True).features
    expected = probes.probabilities("mid_block.resnets.1", t, features["mid_block.resnets.1"].mean((2, 3)))
    reading = probe_reading(probes, model, trajectory, sample_index=1)
    assert torch.allclose(reading[TINY_BLOCKS.index("mid_block.resnets.1"), step], expected[0], atol=1e-5)


def test_b_is_read_under_its_ablation(probes, model, runs):
    a, b = (probe_reading(probes, model, run) for run in runs)
    # the first step's x_t is the same noise for both: only the decoder, where the skips join, can differ there
    encoder = [i for i, block in enumerate(TINY_BLOCKS) if not block.startswith("up_blocks")]
    assert torch.allclose(a[encoder, 0], b[encoder, 0], atol=1e-6)
    assert not torch.allclose(a[-1, 0], b[-1, 0], atol=1e-4)


def test_a_reading_refuses_probes_of_another_architecture(probes, model, runs):
    other = replace(probes, probes={key: Probe(p.weight[:, :2], p.bias, p.mean[:2], p.std[:2]) for key, p in probes.probes.items()})
    with pytest.raises(ValueError, match="channels"):
        probe_reading(other, model, runs[0])


# --- figures --------------------------------------------------------------------------------------------


def test_the_accuracy_figure_is_an_annotated_heatmap_from_999_to_0_with_a_colour_bar(probes):
    fig = probe_accuracy_figure(probes)
    heatmap, colour_bar = fig.axes
    assert [label.get_text() for label in heatmap.get_xticklabels()] == ["999", "0"]
    assert [label.get_text() for label in heatmap.get_yticklabels()] == list(TINY_BLOCKS)
    assert len(heatmap.texts) == len(TINY_BLOCKS) * 2 and "accuracy" in colour_bar.get_ylabel()


def test_the_reading_figure_has_a_panel_per_block_and_a_curve_per_run(probes, model, runs):
    readings = {"A": probe_reading(probes, model, runs[0]), "B": probe_reading(probes, model, runs[1])}
    fig = probe_reading_figure(probes, readings, runs[0].timesteps, digit=3)
    assert isinstance(fig, Figure) and len(fig.axes) == len(TINY_BLOCKS)
    assert all(len(ax.get_lines()) == 3 for ax in fig.axes)  # A, B and the chance line
    assert fig.axes[-1].get_xlim()[0] > fig.axes[-1].get_xlim()[1]  # t decreasing left to right
    with pytest.raises(ValueError, match="shape"):
        probe_reading_figure(probes, {"A": readings["A"][:, :2]}, runs[0].timesteps)


# --- command line ---------------------------------------------------------------------------------------


def test_the_cli_trains_probes_writes_their_card_and_shows_them(weights, mnist_slice, tmp_path):
    data = tmp_path / "mnist"
    data.mkdir()
    for source, target in zip(MNIST_FILES["test"], MNIST_FILES["train"]):
        shutil.copy(mnist_slice / source, data / target)
        shutil.copy(mnist_slice / source, data / source)
    out = tmp_path / "probes"
    assert main(["train", "--model", str(weights / "tiny"), "--data-dir", str(data), "--train", "40", "--test", "20",
                 "--timesteps", "0", "999", "--blocks", "mid_block.resnets.1", "--out", str(out)]) == 0
    loaded = LinearProbes.load(out)
    card = (out / "README.md").read_text()
    assert loaded.blocks == ("mid_block.resnets.1",) and loaded.timesteps == (999, 0)
    assert loaded.accuracy_table() in card and "--train 40 --test 20 --seed 0 --timesteps 999 0 --blocks mid_block.resnets.1 --out" in card and "first 40 MNIST train" in card
    assert main(["show", "--probes", str(out), "--out", str(tmp_path / "a.png"), "--reading", str(tmp_path / "r.png"),
                 "--model", str(weights / "tiny"), "--steps", "3", "--digit", "2", "--ablate", "skip:14=0"]) == 0
    assert (tmp_path / "a.png").read_bytes()[:4] == (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_the_cli_names_a_broken_probes_folder(tmp_path, capsys):
    assert main(["show", "--probes", str(tmp_path)]) == 2
    assert CONFIG_FILE in capsys.readouterr().err


# --- the shipped probes ---------------------------------------------------------------------------------


@pytest.mark.skipif(not (SHIPPED / TENSORS_FILE).is_file(), reason="no probes shipped in weights/mnist/probes")
def test_the_shipped_probes_load_with_the_documented_blocks_and_timesteps():
    probes = LinearProbes.load(SHIPPED)
    assert probes.blocks == default_blocks(load_pipeline(SHIPPED.parent).unet)
    assert probes.timesteps == TIMESTEPS
    assert probes.accuracy_table() in (SHIPPED / "README.md").read_text()
    assert sum(path.stat().st_size for path in SHIPPED.iterdir()) < 500 * 2**10
    # clean digits are readable from the bottleneck; pure noise (t = 999) is not
    assert probes.accuracy[("mid_block.resnets.1", 0)] > 0.8 > 0.2 > probes.accuracy[("mid_block.resnets.1", 999)]
