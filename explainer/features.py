"""Feature maps: any block's output at the current step, for one sample, from A and B.
"""

from __future__ import annotations

import functools

import gradio as gr
import torch

from explainer.checks import choice, model_named, shown, slider_sample, slider_step
from explainer.sessions import has_run, kept_run
from playground import feature_group, features_at
from playground.serving import side_by_side
from playground.viz import (
    DIVERGING,
    RANGE_MODES,
    channel_grid,
    colour_bar,
    mean_abs_map,
    pca_rgb,
    signed_range,
)

FEATURE_OUTPUTS = 8  # view_features: three pictures each for A and B, the legend, the caption


def block_choices(registry, model_a):
    """Dropdown entries for every captured map, grouped by where it sits and its resolution."""
    unet = model_named(registry, model_a, "model A").unet
    return [(f"{feature_group(name)} · {shape[1]}×{shape[2]} · {name} ({shape[0]} ch)", name)
            for name, shape in unet.feature_shapes().items()]


OPENING_BLOCK = "mid_block.attentions.0"


def block_dropdown(registry, model_a):
    choices = block_choices(registry, model_a)
    return gr.Dropdown(choices=choices, value=opening_block(choices))


def opening_block(choices) -> str | None:
    """The block whose maps a page shows first, where its model has one: the bottleneck's attention."""
    return OPENING_BLOCK if any(value == OPENING_BLOCK for _, value in choices) else None


def view_features(registry, state, step, block, sample_index, range_mode):
    """Channel grid, mean |activation| and PCA-RGB of one block at the slider's step, for A and B.

    A network that has no such block (B as another model) or whose maps hold NaN shows no pictures, and its
    caption says why: the other network's maps are still worth seeing."""
    state = kept_run(state)
    choice(range_mode, "colour range", RANGE_MODES)
    a, b = state["a"], state["b"]
    step = min(slider_step(step, a), len(a) - 1)
    sample_index = slider_sample(sample_index, a)
    names = registry.get(state["model_a"]).unet.feature_names
    if not isinstance(block, str) or block not in names:
        raise ValueError(f"block must be one of the model's feature maps, e.g. {names[-1]!r}; got {shown(block)}")

    def maps_of(trajectory, model_name):
        return lambda: features_at(registry.get(model_name), trajectory, step, sample_index)

    def pictures_of(features, trajectory, model_name):
        """Three pictures of the block and the caption after the network's label; None pictures if none to show."""
        feature = features.get(block)
        # only the maps the pictures are drawn from are checked (checking all ~40 took 7 ms of a view)
        drawn_from = features.values() if range_mode == "global" else [feature]
        missing = (f"`{model_name}` has no block `{block}`" if feature is None else
                   "its feature maps at this step hold NaN or infinite values"
                   if not all(torch.isfinite(f).all() for f in drawn_from) else None)
        if missing:
            return [None, None, None], f"no maps to show: {missing}"
        global_max = max(signed_range(f) for f in features.values()) if range_mode == "global" else None
        grid, shown = channel_grid(feature, range_mode, global_max, size=300)
        magnitude, magnitude_max = mean_abs_map(feature, size=150)
        pca, shares = pca_rgb(feature, size=150)
        c, h, w = feature.shape
        scale = "each channel over its own ±max" if range_mode == "channel" else f"±{shown:.3g}"
        return [grid, magnitude, pca], (
            f"`{block}` ({feature_group(block)}) · shape ({c}, {h}, {w}) · t = {int(trajectory.timesteps[step])} · "
            f"values in [{feature.min():.3g}, {feature.max():.3g}] · channels: {scale} · mean|act| up to {magnitude_max:.3g} · "
            f"PCA explains {sum(shares):.0%} of variance"
        )

    # a batch-1 forward cannot use two cores: A's and B's run side by side; a B that is A (an intact B on A's
    # model shares A's trajectory) is neither run nor drawn again
    same = b is a
    maps_a, maps_b = side_by_side(maps_of(a, state["model_a"]), None if same else maps_of(b, state["model_b"]))
    pictures_a, caption_a = pictures_of(maps_a, a, state["model_a"])
    pictures_b, caption_b = (pictures_a, caption_a) if same else pictures_of(maps_b, b, state["model_b"])
    outputs = pictures_a + pictures_b
    captions = [f"**A** · {caption_a}", f"**B** · {caption_b}"]
    legend = feature_legend()
    return (*outputs, legend, "\n\n".join(captions))


def features_after_run(registry, state, step, block, sample_index, range_mode):
    """After every run (Generate, an ablation change, a setup): the open block's maps follow the new A and B,
    so the panels never show a run that is no longer on screen. With no block open they are cleared."""
    if not has_run(state):
        return tuple(gr.skip() for _ in range(FEATURE_OUTPUTS))  # B set up before the page's run ended: none to follow yet
    if not block:
        return (None,) * (FEATURE_OUTPUTS - 1) + ("Pick a block (above, or in the architecture strip) to see its feature maps.",)
    return view_features(registry, state, step, block, sample_index, range_mode)


@functools.lru_cache(maxsize=1)
def feature_legend():
    """The same picture for every view: drawn once (matplotlib takes ~90 ms, half a feature view's time)."""
    return colour_bar(-1, 1, DIVERGING, "channel value / its colour range (blue < 0 < red)")


def architecture_choices(registry, model_a):
    """One entry per block of the U-Net, in the order data flows: the block's output map (not its inner taps)."""
    unet = model_named(registry, model_a, "model A").unet
    blocks = {}
    for name, shape in unet.feature_shapes().items():
        if name.endswith((".update", ".backbone", ".skip")) or "samplers" in name:
            continue
        block = name if name == "conv_in" else ".".join(name.split(".")[:2]) if name.startswith(("down", "up")) else "mid_block"
        blocks[block] = (name, shape)  # the last map of a block is its output
    arrows = {"encoder": "↓", "bottleneck": "•", "decoder": "↑"}
    choices = []
    for block, (name, (c, h, w)) in blocks.items():
        group = feature_group(name)
        choices.append((f"{arrows.get(group, '')} {block.replace('_blocks', '').replace('_block', '')} {h}px·{c}ch", name))
    return choices


def architecture_strip(registry, model_a):
    return gr.Radio(choices=architecture_choices(registry, model_a), value=None)


def open_block(registry, model_a, name):
    """A click on the strip: that block in the feature-map dropdown (the chained view shows its maps)."""
    names = [value for _, value in architecture_choices(registry, model_a)]
    if not isinstance(name, str) or name not in names:
        raise ValueError(f"block must be one of the architecture strip's blocks {names}, got {shown(name)}")
    return name
