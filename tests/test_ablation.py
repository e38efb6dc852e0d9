"""Ablation: a frozen value passed per call that scales skips, bypasses attention or hides t."""

from __future__ import annotations

import dataclasses
import math
import threading

import pytest
import torch

from helpers import THREE_LEVEL_UNET, build_unet
from playground import Ablation, PlaygroundUNet
from playground.ablation import parse_ablation_specs

# The parts of THREE_LEVEL_UNET, written out so the cases below read as a specification
# (test_the_cases_below_cover_every_part_of_the_model checks they are the model's own).
RESOLUTIONS = (16, 8, 4)
SITES = (
    "down_blocks.1.attentions.0", "down_blocks.2.attentions.0", "mid_block.attentions.0",
    "up_blocks.0.attentions.0", "up_blocks.0.attentions.1", "up_blocks.1.attentions.0", "up_blocks.1.attentions.1",
)

SINGLE_ABLATIONS = {
    **{f"skip-{r}px-x{g}": Ablation(skip_scale={r: g}) for r in RESOLUTIONS for g in (0, 0.5, 2)},
    **{f"attention-off-{site}": Ablation(attention_off={site}) for site in SITES},
    "time-embedding-off": Ablation(time_embedding_off=True),
}


def run(unet, x, t, ablation=None, **kwargs):
    with torch.no_grad():
        return unet(x, t, ablation=ablation, **kwargs) if ablation is not None else unet(x, t, **kwargs)


def test_the_cases_below_cover_every_part_of_the_model(three_level_unet):
    assert three_level_unet.skip_resolutions == RESOLUTIONS
    assert three_level_unet.attention_sites == SITES


# --- effect on the forward pass -------------------------------------------------------------------


def test_the_intact_ablation_is_bit_identical_to_no_ablation(three_level_unet, sample_input, timesteps):
    plain = run(three_level_unet, sample_input, timesteps).sample
    intact = run(three_level_unet, sample_input, timesteps, Ablation()).sample
    assert torch.equal(plain, intact)


@pytest.mark.parametrize("ablation", SINGLE_ABLATIONS.values(), ids=SINGLE_ABLATIONS.keys())
def test_every_single_ablation_changes_the_output(three_level_unet, sample_input, timesteps, ablation):
    plain = run(three_level_unet, sample_input, timesteps).sample
    ablated = run(three_level_unet, sample_input, timesteps, ablation).sample
    assert ablated.shape == plain.shape
    assert torch.isfinite(ablated).all()
    assert (ablated - plain).abs().max() > 1e-4


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_skip_scale_zero_feeds_zeros_at_that_resolution_only(three_level_unet, sample_input, timesteps, resolution):
    features = run(three_level_unet, sample_input, timesteps, Ablation(skip_scale={resolution: 0}), capture_features=True).features
    skips = {name: f for name, f in features.items() if name.endswith(".skip")}
    zeroed = {name for name, f in skips.items() if f.shape[-1] == resolution}
    assert len(zeroed) == THREE_LEVEL_UNET["layers_per_block"] + 1  # every skip joining at that resolution
    for name, skip in skips.items():
        if name in zeroed:
            assert torch.equal(skip, torch.zeros_like(skip)), name
        else:
            assert skip.abs().max() > 0, name


def test_skip_scale_multiplies_the_skips_at_that_resolution(three_level_unet, sample_input, timesteps):
    """Skip maps at other resolutions change too (the decoder input above them changed), so compare at the
    coarsest resolution, whose skips come straight from an encoder that no skip scale touches."""
    plain = run(three_level_unet, sample_input, timesteps, capture_features=True).features
    halved = run(three_level_unet, sample_input, timesteps, Ablation(skip_scale={4: 0.5}), capture_features=True).features
    for name in ("up_blocks.0.resnets.0.skip", "up_blocks.0.resnets.1.skip"):
        assert torch.equal(halved[name], plain[name] * 0.5)


def test_attention_off_leaves_only_the_residual_path(three_level_unet, sample_input, timesteps):
    site = "mid_block.attentions.0"
    features = run(three_level_unet, sample_input, timesteps, Ablation(attention_off={site}), capture_features=True).features
    # the site's maps still exist, so A and B compare block for block: no update, its input passes unchanged
    assert not features[f"{site}.update"].any()
    assert torch.equal(features[site], features["mid_block.resnets.0"])
    intact = run(three_level_unet, sample_input, timesteps, capture_features=True).features
    # the resnet after the switched-off attention sees the resnet before it, unchanged
    resnet_after = three_level_unet.mid_block.resnets[1]
    temb = torch.nn.functional.silu(
        three_level_unet.time_embedding(three_level_unet.time_proj(timesteps))
    )
    with torch.no_grad():
        expected = resnet_after(intact["mid_block.resnets.0"], temb)
    assert torch.allclose(features["mid_block.resnets.1"], expected, atol=1e-6)


def test_time_embedding_off_makes_the_output_independent_of_t(three_level_unet, sample_input):
    off = Ablation(time_embedding_off=True)
    early = run(three_level_unet, sample_input, torch.tensor([0, 0]), off).sample
    late = run(three_level_unet, sample_input, torch.tensor([999, 500]), off).sample
    assert torch.equal(early, late)
    assert not torch.allclose(run(three_level_unet, sample_input, 0).sample, run(three_level_unet, sample_input, 999).sample)


# --- the value itself --------------------------------------------------------------------------------


def test_ablation_is_hashable_and_usable_as_a_cache_key():
    cache = {Ablation(skip_scale={8: 0}, attention_off={"mid_block.attentions.0"}): "cached"}
    assert cache[Ablation(skip_scale=[(8, 0.0)], attention_off=["mid_block.attentions.0"])] == "cached"
    assert hash(Ablation()) == hash(Ablation())


def test_one_switch_away_flips_each_control_once_and_keeps_the_rest():
    sites = ("down_blocks.1.attentions.0", "mid_block.attentions.0")
    current = Ablation(skip_scale={16: 0.0, 8: 0.5}, attention_off={sites[1]}, backbone_scale={8: 1.2})
    assert current.one_switch_away((16, 8, 4), sites) == [
        Ablation(skip_scale={8: 0.5}, attention_off={sites[1]}, backbone_scale={8: 1.2}),  # 16 back on
        Ablation(skip_scale={16: 0, 8: 0}, attention_off={sites[1]}, backbone_scale={8: 1.2}),  # a weakened skip: off
        Ablation(skip_scale={16: 0, 8: 0.5, 4: 0}, attention_off={sites[1]}, backbone_scale={8: 1.2}),
        Ablation(skip_scale={16: 0, 8: 0.5}, attention_off=set(sites), backbone_scale={8: 1.2}),
        Ablation(skip_scale={16: 0, 8: 0.5}, backbone_scale={8: 1.2}),  # the site that was off: back on
        Ablation(skip_scale={16: 0, 8: 0.5}, attention_off={sites[1]}, time_embedding_off=True, backbone_scale={8: 1.2}),
    ]
    assert Ablation(time_embedding_off=True).one_switch_away((), ()) == [Ablation()]


def test_ablation_is_frozen():
    ablation = Ablation()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ablation.time_embedding_off = True


@pytest.mark.parametrize(
    "skip_scale",
    [{16: 0.5, 4: 0}, [(4, 0), (16, 0.5)], ((16, 0.5), (4, 0.0)), {"16": 0.5, "4": 0}, {(4, 0), (16, 0.5)}],
    ids=["dict", "list-of-pairs", "tuple-of-pairs", "json-string-keys", "set-of-pairs"],
)
def test_equal_skip_scales_in_any_container_give_equal_ablations(skip_scale):
    assert Ablation(skip_scale=skip_scale) == Ablation(skip_scale={16: 0.5, 4: 0.0})
    assert hash(Ablation(skip_scale=skip_scale)) == hash(Ablation(skip_scale={16: 0.5, 4: 0.0}))


@pytest.mark.parametrize(
    "sites", [["a", "b"], ("b", "a"), {"a", "b"}, frozenset({"a", "b"}), ["a", "b", "a"]],
    ids=["list", "tuple", "set", "frozenset", "list-with-duplicate"],
)
def test_equal_attention_sets_in_any_container_give_equal_ablations(sites):
    assert Ablation(attention_off=sites) == Ablation(attention_off={"a", "b"})


def test_a_single_site_name_is_one_site_not_its_letters():
    assert Ablation(attention_off="mid_block.attentions.0").attention_off == frozenset({"mid_block.attentions.0"})


def test_skip_scale_entries_of_one_are_dropped():
    assert Ablation(skip_scale={16: 1.0, 8: 1}) == Ablation()
    assert Ablation(skip_scale={16: 1.0}).is_intact
    assert Ablation(skip_scale={16: 1.0, 8: 0.5}) == Ablation(skip_scale={8: 0.5})


@pytest.mark.parametrize(
    "skip_scale",
    [{8: -0.5}, {8: math.nan}, {8: math.inf}, {8: "half"}, {8: None}, {0: 0.5}, {-8: 0.5}, {8.5: 0.5}, {"eight": 0.5}, 7],
    ids=["negative", "nan", "inf", "non-numeric", "none", "zero-resolution", "negative-resolution",
         "fractional-resolution", "named-resolution", "not-a-mapping"],
)
def test_invalid_skip_scales_raise_valueerror(skip_scale):
    with pytest.raises(ValueError, match="skip_scale"):
        Ablation(skip_scale=skip_scale)


def test_invalid_attention_off_and_time_flag_raise_valueerror():
    with pytest.raises(ValueError, match="attention_off"):
        Ablation(attention_off=[1, 2])
    with pytest.raises(ValueError, match="time_embedding_off"):
        Ablation(time_embedding_off="yes")


def test_combined_with_multiplies_gains_and_unites_sets():
    first = Ablation(skip_scale={16: 0.5, 8: 2}, attention_off={"a"})
    second = Ablation(skip_scale={16: 0.5, 4: 0}, attention_off={"b"}, time_embedding_off=True)
    assert first.combined_with(second) == Ablation(
        skip_scale={16: 0.25, 8: 2, 4: 0}, attention_off={"a", "b"}, time_embedding_off=True
    )


def test_to_dict_and_from_dict_round_trip():
    ablation = Ablation(skip_scale={16: 0.5, 4: 0}, attention_off={"mid_block.attentions.0"}, time_embedding_off=True)
    assert Ablation.from_dict(ablation.to_dict()) == ablation
    assert Ablation.from_dict(None) == Ablation.from_dict({}) == Ablation()


# --- checked against the model -----------------------------------------------------------------------


def test_an_unknown_resolution_in_forward_raises_listing_the_valid_ones(three_level_unet, sample_input):
    with pytest.raises(ValueError, match=r"15") as error:
        three_level_unet(sample_input, 10, ablation=Ablation(skip_scale={15: 0}))
    assert "[16, 8, 4]" in str(error.value)


def test_an_unknown_attention_site_in_forward_raises_listing_the_valid_ones(three_level_unet, sample_input):
    with pytest.raises(ValueError, match="down_blocks.0.attentions.0") as error:
        three_level_unet(sample_input, 10, ablation=Ablation(attention_off={"down_blocks.0.attentions.0"}))
    for site in SITES:
        assert site in str(error.value)


def test_a_non_ablation_argument_raises_valueerror(three_level_unet, sample_input):
    with pytest.raises(ValueError, match="Ablation"):
        three_level_unet(sample_input, 10, ablation={"skip_scale": {16: 0}})


# --- the training ablation ---------------------------------------------------------------------------


def _same_weights_without_training_ablation(unet: PlaygroundUNet) -> PlaygroundUNet:
    plain = PlaygroundUNet(**THREE_LEVEL_UNET).eval()
    plain.load_state_dict(unet.state_dict())
    return plain


TRAINING_ABLATION = {"skip_scale": {"8": 0.5}, "attention_off": ["mid_block.attentions.0"]}


@pytest.fixture
def trained_without_parts() -> PlaygroundUNet:
    return build_unet(THREE_LEVEL_UNET, training_ablation=TRAINING_ABLATION)


def test_the_training_ablation_is_applied_by_default(trained_without_parts, sample_input, timesteps):
    plain = _same_weights_without_training_ablation(trained_without_parts)
    expected = run(plain, sample_input, timesteps, Ablation.from_dict(TRAINING_ABLATION)).sample
    assert torch.equal(run(trained_without_parts, sample_input, timesteps).sample, expected)
    assert torch.equal(run(trained_without_parts, sample_input, timesteps, Ablation()).sample, expected)


def test_the_training_ablation_survives_save_and_load(trained_without_parts, sample_input, timesteps, tmp_path):
    trained_without_parts.save_pretrained(tmp_path)
    loaded = PlaygroundUNet.from_pretrained(tmp_path).eval()
    assert Ablation.from_dict(loaded.config.training_ablation) == Ablation.from_dict(TRAINING_ABLATION)
    assert torch.equal(run(loaded, sample_input, timesteps).sample, run(trained_without_parts, sample_input, timesteps).sample)


def test_an_explicit_ablation_composes_with_the_training_ablation(trained_without_parts, sample_input, timesteps):
    explicit = Ablation(skip_scale={8: 0.5, 16: 2}, attention_off={"up_blocks.0.attentions.1"})
    combined = Ablation(
        skip_scale={8: 0.25, 16: 2}, attention_off={"mid_block.attentions.0", "up_blocks.0.attentions.1"}
    )
    plain = _same_weights_without_training_ablation(trained_without_parts)
    assert torch.equal(
        run(trained_without_parts, sample_input, timesteps, explicit).sample,
        run(plain, sample_input, timesteps, combined).sample,
    )


def test_only_parts_training_left_in_are_switchable(trained_without_parts):
    unet = trained_without_parts
    assert unet.switchable_skip_resolutions == unet.skip_resolutions  # a gain of 0.5 still has a skip to scale
    assert unet.switchable_attention_sites == tuple(s for s in unet.attention_sites if s != "mid_block.attentions.0")
    cut = build_unet(THREE_LEVEL_UNET, training_ablation={"skip_scale": {"8": 0}})
    assert cut.switchable_skip_resolutions == tuple(r for r in cut.skip_resolutions if r != 8)


def test_a_training_ablation_naming_missing_parts_is_refused():
    with pytest.raises(ValueError, match="valid skip resolutions"):
        PlaygroundUNet(**THREE_LEVEL_UNET, training_ablation={"skip_scale": {"28": 0}})


# --- command-line specs ------------------------------------------------------------------------------


def parse(*specs: str) -> Ablation:
    return parse_ablation_specs(specs, RESOLUTIONS, SITES)


@pytest.mark.parametrize(
    "specs, expected",
    [
        (["skip:8=0"], Ablation(skip_scale={8: 0})),
        (["skip:16=0.5"], Ablation(skip_scale={16: 0.5})),
        (["skip:all=0.5"], Ablation(skip_scale={16: 0.5, 8: 0.5, 4: 0.5})),
        (["attn:mid_block.attentions.0"], Ablation(attention_off={"mid_block.attentions.0"})),
        (["attn:all"], Ablation(attention_off=SITES)),
        (["time"], Ablation(time_embedding_off=True)),
        (["skip:all=0.5", "skip:8=0.5", "attn:down_blocks.1.attentions.0", "time"],
         Ablation(skip_scale={16: 0.5, 8: 0.25, 4: 0.5}, attention_off={"down_blocks.1.attentions.0"}, time_embedding_off=True)),
        ([], Ablation()),
    ],
    ids=["skip-res-zero", "skip-res-half", "skip-all", "attn-site", "attn-all", "time", "combined", "none"],
)
def test_parse_ablation_specs_grammar(specs, expected):
    assert parse(*specs) == expected


@pytest.mark.parametrize("spec", ["skip:8", "skip:8=", "skip:eight=0", "skip:8=half", "attn:", "attn", "time:1", "tim", "", "skip=0"])
def test_a_malformed_spec_raises_valueerror_naming_it(spec):
    with pytest.raises(ValueError) as error:
        parse(spec)
    assert repr(spec) in str(error.value)


def test_a_spec_naming_a_missing_part_raises_listing_the_valid_ones():
    with pytest.raises(ValueError, match=r"\[16, 8, 4\]"):
        parse("skip:28=0")
    with pytest.raises(ValueError, match="mid_block.attentions.0"):
        parse("attn:mid_block.attentions.1")


# --- one model, many users -----------------------------------------------------------------------------


def test_two_threads_with_different_ablations_on_one_model_get_the_serial_results(three_level_unet, sample_input, timesteps):
    ablations = [Ablation(skip_scale={16: 0, 4: 2}), Ablation(attention_off=SITES[:3], time_embedding_off=True)]
    serial = [run(three_level_unet, sample_input, timesteps, ablation).sample for ablation in ablations]
    results: list[list[torch.Tensor]] = [[], []]
    start = threading.Barrier(2)
    errors = []

    def worker(index: int) -> None:
        try:
            start.wait()
            for _ in range(20):
                results[index].append(run(three_level_unet, sample_input, timesteps, ablations[index]).sample)
        except Exception as error:  # surfaced below: an exception in a thread would otherwise be lost
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for index in range(2):
        assert len(results[index]) == 20
        assert all(torch.equal(result, serial[index]) for result in results[index])
