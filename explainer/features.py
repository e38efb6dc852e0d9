"""Feature maps: any block's output at the current step, for one sample, from A and B.
"""

from __future__ import annotations

import functools

from types import SimpleNamespace

import gradio as gr
import torch
from PIL import Image

from explainer.delivery import LOSSLESS
from explainer.checks import choice, model_named, shown, slider_sample, slider_step
from explainer.sessions import has_run, kept_run
from playground import feature_group, features_at
from playground.serving import side_by_side
from playground.viz import (
    DIVERGING,
    RANGE_MODES,
    SEQUENTIAL,
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
        return (None,) * (FEATURE_OUTPUTS - 1) + ("Pick a block (above, or click one on the diagram) to see its feature maps.",)
    return view_features(registry, state, step, block, sample_index, range_mode)


@functools.lru_cache(maxsize=1)
def feature_legend():
    """The legends of both colour maps, side by side: the channels' diverging one and the mean |activation|'s
    sequential one. The same picture for every view: drawn once (matplotlib takes ~90 ms, half a view's time)."""
    channels = colour_bar(-1, 1, DIVERGING, "channel value / its colour range (blue < 0 < red)")
    magnitude = colour_bar(0, 1, SEQUENTIAL, "mean |activation| / its max (in the caption)")
    legend = Image.new("RGB", (channels.width + magnitude.width, max(channels.height, magnitude.height)), "white")
    legend.paste(channels, (0, 0))
    legend.paste(magnitude, (channels.width, 0))
    return legend


def open_block(registry, model_a, name):
    """A block clicked on the diagram: its map in the block dropdown (the chained view shows its maps)."""
    names = model_named(registry, model_a, "model A").unet.feature_names
    if not isinstance(name, str) or name not in names:
        raise ValueError(f"block must be one of the model's feature maps, e.g. {names[-1]!r}; got {shown(name)}")
    return name


def build_features(registry, model_a) -> SimpleNamespace:
    """The feature-map panel beside the pictures: a block's channels, mean |activation| and PCA-RGB for A and B."""
    choices = block_choices(registry, model_a) if model_a else []
    block = gr.Dropdown(choices, value=opening_block(choices), label="Block (or click one on the diagram)", elem_id="block")
    pictures = []
    for network in ("A", "B"):
        gr.HTML(f'<div class="feature-row-title network-{network}">{network}: channels · mean |activation| · PCA → RGB</div>')
        with gr.Row(elem_classes="feature-row"):
            for view, scale in (("channels", 2), ("mean", 1), ("PCA", 1)):
                pictures.append(gr.Image(type="pil", interactive=False, show_label=False, buttons=[], format=LOSSLESS,
                                         scale=scale, min_width=60, container=False,
                                         elem_id=f"feat-{network}-{view}", elem_classes="feature-picture"))
    with gr.Row():
        sample_index = gr.Slider(0, 3, value=0, step=1, label="Sample (or click one in A or B)", elem_id="sample-index",
                                 min_width=140)
        range_mode = gr.Dropdown(list(RANGE_MODES), value="block", label="Colour range", elem_id="range-mode", min_width=110,
                                 info="per channel / block / every block")
    legend = gr.Image(feature_legend(), type="pil", interactive=False, show_label=False, buttons=[], format=LOSSLESS,
                      height=44, container=False, elem_id="legend")
    caption = gr.Markdown(elem_id="feature-caption")
    return SimpleNamespace(block=block, sample_index=sample_index, range_mode=range_mode, outputs=[*pictures, legend, caption])


def block_clicked(registry, model_a, payload):
    """A block clicked on the diagram (payload {"name": map}): its map in the block dropdown."""
    return open_block(registry, model_a, payload.get("name"))


def sample_clicked(registry, state, payload):
    """A sample clicked in A or B (payload {"index": i}): the feature maps show that sample."""
    return slider_sample(payload.get("index"), kept_run(state)["a"])
