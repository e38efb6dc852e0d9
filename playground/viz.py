"""Tensors -> pictures: image grids, feature-map views, difference maps, figures and GIFs.

Conventions: images live in [-1, 1] and are shown in grey; signed quantities (ε̂, differences, feature
maps) on a diverging map centred on zero (blue < 0 < red) with a symmetric range the caller chooses;
magnitudes on a sequential map. Colour maps are 256-entry lookup tables built once, so colouring a map
is one indexing operation — these run inside slider events.
"""

from __future__ import annotations

import io
from functools import lru_cache

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullLocator  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

DIVERGING = "RdBu_r"
SEQUENTIAL = "magma"
RANGE_MODES = ("channel", "block", "global")
# A and B keep one colour each in every picture title, curve and plot of the app
NETWORK_COLOURS = {"A": "#2563eb", "B": "#ea580c"}


@lru_cache(maxsize=None)
def colour_table(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table of a matplotlib colour map."""
    return (plt.get_cmap(name)(np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def _as_numpy(t) -> np.ndarray:
    return t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float32)


def grey(images: torch.Tensor) -> np.ndarray:
    """(..., H, W) in [-1, 1] -> uint8 (..., H, W), clipped."""
    return np.clip((_as_numpy(images) + 1) * 127.5, 0, 255).round().astype(np.uint8)


def colourise(values, vmin: float, vmax: float, cmap: str = DIVERGING) -> np.ndarray:
    """Any-shaped array -> uint8 RGB (..., 3) through a colour map over [vmin, vmax]."""
    values = _as_numpy(values)
    span = max(vmax - vmin, 1e-12)
    index = np.clip((values - vmin) / span * 255, 0, 255).astype(np.uint8)
    return colour_table(cmap)[index]


def signed_range(values) -> float:
    """The symmetric range ±v that holds all values (never 0, so a blank map stays white)."""
    return max(float(np.abs(_as_numpy(values)).max()), 1e-6)


def enlarge(array: np.ndarray, size: int) -> Image.Image:
    """uint8 (H, W) or (H, W, 3) -> PIL image of about `size` pixels tall, pixels kept sharp."""
    image = Image.fromarray(array)
    factor = max(1, round(size / image.height))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def tile(arrays: list[np.ndarray], columns: int, pad: int = 1, fill: int = 255) -> np.ndarray:
    """Lay equally sized uint8 (H, W[, 3]) arrays on a grid with `pad` pixels between them."""
    if not arrays:
        raise ValueError("nothing to tile")
    h, w = arrays[0].shape[:2]
    extra = arrays[0].shape[2:]
    columns = max(1, min(columns, len(arrays)))
    rows = -(-len(arrays) // columns)
    canvas = np.full((rows * (h + pad) - pad, columns * (w + pad) - pad, *extra), fill, dtype=np.uint8)
    for k, array in enumerate(arrays):
        r, c = divmod(k, columns)
        canvas[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = array
    return canvas


def image_grid(images: torch.Tensor, columns: int | None = None, size: int = 0) -> Image.Image:
    """(B, 1, H, W) images in [-1, 1] -> one grey grid; enlarged to about `size` px per row if given."""
    pixels = grey(images[:, 0])
    columns = columns or int(np.ceil(np.sqrt(len(pixels))))
    grid = tile(list(pixels), columns, pad=2)
    rows = -(-len(pixels) // columns)
    return enlarge(grid, size * rows) if size else Image.fromarray(grid)


def signed_grid(values: torch.Tensor, vmax: float | None = None, columns: int | None = None, size: int = 0) -> Image.Image:
    """(B, 1, H, W) signed values (ε̂, a difference) -> diverging-colour grid over ±vmax."""
    vmax = vmax or signed_range(values)
    coloured = colourise(values[:, 0], -vmax, vmax)
    columns = columns or int(np.ceil(np.sqrt(len(coloured))))
    grid = tile(list(coloured), columns, pad=2)
    rows = -(-len(coloured) // columns)
    return enlarge(grid, size * rows) if size else Image.fromarray(grid)


def channel_grid(feature: torch.Tensor, range_mode: str = "channel", global_vmax: float | None = None,
                 max_channels: int = 64, size: int = 0) -> tuple[Image.Image, float]:
    """(C, h, w) feature map -> grid of its channels on the diverging map, and the range used.

    range_mode "channel": each channel over its own ±max (shapes visible, magnitudes not comparable);
    "block": one ±max for the whole block; "global": ±global_vmax shared across blocks (given by caller).
    """
    if range_mode not in RANGE_MODES:
        raise ValueError(f"range_mode must be one of {RANGE_MODES}, got {range_mode!r}")
    values = _as_numpy(feature[:max_channels])
    if range_mode == "channel":
        vmax = np.maximum(np.abs(values).reshape(len(values), -1).max(1), 1e-6)[:, None, None]
        coloured = colourise(values / vmax, -1.0, 1.0)
        shown = float(vmax.max())
    else:
        shown = global_vmax if range_mode == "global" and global_vmax else signed_range(values)
        coloured = colourise(values, -shown, shown)
    columns = int(np.ceil(np.sqrt(len(values))))
    grid = tile(list(coloured), columns, pad=1)
    return (enlarge(grid, size) if size else Image.fromarray(grid)), shown


def mean_abs_map(feature: torch.Tensor, size: int = 0) -> tuple[Image.Image, float]:
    """(C, h, w) -> mean over channels of |activation| on a sequential map, and its maximum."""
    magnitude = _as_numpy(feature).__abs__().mean(0)
    vmax = max(float(magnitude.max()), 1e-6)
    coloured = colourise(magnitude, 0.0, vmax, SEQUENTIAL)
    return (enlarge(coloured, size) if size else Image.fromarray(coloured)), vmax


def pca_rgb(feature: torch.Tensor, size: int = 0) -> tuple[Image.Image, list[float]]:
    """(C, h, w) -> the three principal directions of its per-pixel C-vectors as R, G, B.

    Pixels of similar colour have similar feature vectors. Returns the image and the share of variance
    each of the three components explains.
    """
    c, h, w = feature.shape
    vectors = feature.detach().float().reshape(c, h * w).T  # (h·w, C)
    centred = vectors - vectors.mean(0, keepdim=True)
    if c < 3 or h * w < 3:
        components = torch.zeros(h * w, 3)
        shares = [0.0, 0.0, 0.0]
    else:
        _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
        components = centred @ vh[:3].T  # (h·w, 3)
        variance = singular.pow(2)
        shares = (variance[:3] / variance.sum().clamp_min(1e-12)).tolist()
    low, high = components.min(0).values, components.max(0).values
    rgb = ((components - low) / (high - low).clamp_min(1e-6) * 255).round().to(torch.uint8).reshape(h, w, 3).numpy()
    return (enlarge(rgb, size) if size else Image.fromarray(rgb)), shares


def colour_bar(vmin: float, vmax: float, cmap: str = DIVERGING, label: str = "", width: int = 256) -> Image.Image:
    """A small horizontal legend for a colour map over [vmin, vmax]."""
    fig, ax = plt.subplots(figsize=(width / 100, 0.55), dpi=100)
    fig.subplots_adjust(left=0.07, right=0.93, bottom=0.55, top=0.95)  # room for the end labels
    ax.imshow(np.linspace(0, 1, 256)[None, :], aspect="auto", cmap=cmap, extent=(vmin, vmax, 0, 1))
    ax.set_yticks([])
    ax.locator_params(axis="x", nbins=4)  # matplotlib's default packs 9 labels into 2.5 inches, touching
    ax.tick_params(labelsize=7)
    if label:
        ax.set_xlabel(label, fontsize=7, labelpad=1)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def trajectory_frames(trajectory, quantity: str = "x0", columns: int | None = None, size: int = 0) -> list[Image.Image]:
    """One grid image per step of x_t or x0 (plus the final sample), for a GIF or a strip."""
    if quantity not in ("x_t", "x0"):
        raise ValueError(f"quantity must be x_t or x0, got {quantity!r}")
    stack = trajectory.x_t if quantity == "x_t" else torch.cat([trajectory.x0, trajectory.final[None]])
    return [image_grid(frame, columns, size) for frame in stack]


def save_gif(frames: list[Image.Image], path_or_buffer, frame_ms: int = 60, hold_last_ms: int = 1200) -> None:
    """Write frames as a looping GIF; the final frame is held so the result can be seen."""
    durations = [frame_ms] * (len(frames) - 1) + [hold_last_ms]
    frames[0].save(path_or_buffer, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)


def _short_power_of_ten(value, _position=None) -> str:
    """Log-axis tick label in at most 5 characters: 0.01, 1, 100, 1e-4, 1e5."""
    if 0.01 <= value < 1e4:
        return f"{value:g}"
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _log_y(ax) -> None:
    ax.set_yscale("log")
    # plain "0.01" tick labels: the default 10⁻² ones go through mathtext, ~30 ms of every redraw
    ax.yaxis.set_major_formatter(FuncFormatter(_short_power_of_ten))
    ax.yaxis.set_minor_locator(NullLocator())  # unlabelled minor ticks cost ~20 ms of a redraw to lay out


def curves_figure(curves: dict[str, tuple], title: str, xlabel: str, ylabel: str, logy: bool = False, invert_x: bool = False,
                  colours: list[str] | None = None):
    """One line per label: curves[label] = (x values, y values), in `colours` if given. Returns a matplotlib Figure."""
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=100)
    for i, (label, (x, y)) in enumerate(curves.items()):
        ax.plot(_as_numpy(x), _as_numpy(y), label=label, linewidth=1.6, color=colours[i] if colours else None)
    # a title at a fixed height: left to matplotlib, placing it measures every tick label first (~15 ms)
    ax.set_title(title, fontsize=10, y=1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy and any((_as_numpy(y) > 0).any() for _, y in curves.values()):  # all-zero curves (A == B) stay linear
        _log_y(ax)
    if invert_x:
        ax.invert_xaxis()
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    # fixed margins, room for the labels at this size: tight_layout measured every text first, another ~30 ms
    fig.subplots_adjust(left=0.14, right=0.98, top=0.92, bottom=0.15)
    return fig


def spectra_figure(panels: dict[str, list[dict]], title: str):
    """Skip vs backbone power spectra, one panel per network, sharing the y axis.

    panels[panel title] = spectra of decoder joins, as `evaluate.skip_backbone_spectra` gives them (one per
    resolution reads best). Colour = the join's resolution, solid = the skip, dashed = the backbone.
    """
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(7.5, 3.8), dpi=100, sharey=True, squeeze=False)
    resolutions = sorted({spectrum["resolution"] for spectra in panels.values() for spectrum in spectra}, reverse=True)
    colours = {resolution: f"C{i}" for i, resolution in enumerate(resolutions)}
    positive = False
    for ax, (panel_title, spectra) in zip(axes[0], panels.items()):
        for spectrum in spectra:
            r = spectrum["resolution"]
            # bin 0 (the mean) is removed before the transform, so the curves start at the first frequency
            for part, style in (("skip", "-"), ("backbone", "--")):
                values = _as_numpy(spectrum[part][1:])
                positive |= bool((values > 0).any())
                ax.plot(spectrum["frequencies"][1:], values, style, color=colours[r], linewidth=1.5, label=f"{part} {r}×{r}")
        ax.set_title(panel_title, fontsize=9, y=1.0)
        ax.set_xlabel("spatial frequency (cycles per pixel of that map)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("share of power")
    if positive:
        _log_y(axes[0][0])  # shared: the other panels follow
    fig.suptitle(title, fontsize=10, y=0.98)
    legend = {}  # every panel's entries: two models may not share every resolution
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=len(resolutions), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.84, bottom=0.26, wspace=0.08)
    return fig
