"""PlaygroundUNet: the diffusion U-Net of the seeds, written to be read and taken apart.

To every observer it is a `diffusers.UNet2DModel`: the same config arguments and defaults, the same
module tree and therefore the same state-dict keys, the same function (a parity test checks outputs
agree), `save_pretrained` / `from_pretrained` with safetensors in both directions. To a reader it is
the textbook picture, top to bottom:

    t ──sinusoid──MLP──► emb (injected into every ResnetBlock)
    x ─conv_in─► [DownBlock: ResnetBlock (+SelfAttention)]* ─► MidBlock ─► [UpBlock: cat(skip) ResnetBlock (+SelfAttention)]* ─conv_out─► ε̂
                 └──────────── skips.append(h) ───────────────────────────── skips.pop() ──┘

Two things UNet2DModel does not do, passed per call so one model object can serve many users at once:
- `ablation=Ablation(...)` scales or zeroes skips per resolution (plainly or FreeU's way), bypasses
  attention sites, or hides t;
- `bottleneck_shift=...` adds a direction to the bottleneck's output (an h-space edit);
- `capture_features=True` returns every intermediate map by its module path (`down_blocks.1.resnets.0`,
  `up_blocks.0.resnets.2.skip`, `mid_block.attentions.0`, ...), through explicit taps in the one forward.

References: diffusers `models/unets/unet_2d.py` (the interface and module names), Ho et al. 2020 and
openai/improved-diffusion (the architecture), FreeU (skip scaling).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

from .ablation import FREEU_LOW_FREQ_BINS, Ablation
from .checkpoint import CheckedLoading

SUPPORTED_DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
SUPPORTED_UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")
SUPPORTED_OPTIONS = {
    "time_embedding_type": ("positional",),
    "mid_block_type": ("UNetMidBlock2D", None),
    "downsample_type": ("conv",),
    "upsample_type": ("conv",),
    "act_fn": ("silu",),
    "resnet_time_scale_shift": ("default", "scale_shift"),
    "class_embed_type": (None,),
}


@dataclass
class PlaygroundUNetOutput(UNet2DOutput):
    """`UNet2DOutput` plus the captured feature maps (empty unless `capture_features=True`).

    sample: (B, out_channels, H, W) the prediction (ε̂ for our models).
    features: module path -> (B, C, h, w) tensor, in the order the forward pass visits them.
    """

    features: dict[str, torch.Tensor] = field(default_factory=dict)


def _ignore(name: str, h: torch.Tensor) -> torch.Tensor:
    return h


class _FeatureRecorder(dict):
    """A tap for the forward pass: records `h` under `name` and passes it on unchanged."""

    def __call__(self, name: str, h: torch.Tensor) -> torch.Tensor:
        self[name] = h
        return h


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


class SinusoidalTimesteps(nn.Module):
    """t -> [sin(t·f_i), cos(t·f_i)] with geometric frequencies f_i = 10000^(-i / (half - freq_shift)).

    The frequencies are fixed, so they are computed once here rather than in every forward.
    `flip_sin_to_cos` puts the cosines first (diffusers' and most checkpoints' convention).
    """

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, freq_shift: float, max_period: float = 10000.0):
        super().__init__()
        half = num_channels // 2
        exponent = -math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / (half - freq_shift)
        self.register_buffer("frequencies", torch.exp(exponent), persistent=False)  # (half,)
        self.flip_sin_to_cos = flip_sin_to_cos
        self.odd = num_channels % 2 == 1

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        angles = timesteps[:, None].float() * self.frequencies[None, :]  # (B, half)
        first, second = (angles.cos(), angles.sin()) if self.flip_sin_to_cos else (angles.sin(), angles.cos())
        embedding = torch.cat([first, second], dim=-1)  # (B, 2·half)
        return F.pad(embedding, (0, 1)) if self.odd else embedding


class TimestepEmbedding(nn.Module):
    """The small MLP that turns the fixed sinusoid into a learned time signal."""

    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, sinusoid: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(sinusoid)))


class PointwiseConv(nn.Conv2d):
    """A 1x1 convolution (an nn.Conv2d: same weights, same state-dict names), computed as one matrix product over
    the channels of every pixel.

    PyTorch picks a 1x1 convolution's kernel by the thread count: oneDNN on two threads, its own path on one (below
    batch 16), and the two round differently (by ~1e-7; measured on the test models, not the flagship). A run on one
    thread (a guess computed in the idle time, or A and B side by side) would then differ from the same run on two,
    and kept runs are served as the run a request would compute. The product is the same on any thread count, and
    as fast (benchmarks/README.md, stop 23).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last maps are (B, H, W, C) in memory: both permutes are views, not copies
        return F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias).permute(0, 3, 1, 2)


class ResnetBlock(nn.Module):
    """GroupNorm → SiLU → conv, time injected, GroupNorm → SiLU → conv, plus the residual path.

    The time signal enters after the first conv, either added per channel ("default") or as a
    FiLM/AdaGN scale and shift of the second normalisation ("scale_shift").
    """

    def __init__(self, in_channels, out_channels, temb_channels, groups, eps, dropout, time_scale_shift, output_scale_factor=1.0):
        super().__init__()
        self.scale_shift = time_scale_shift == "scale_shift"
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, 2 * out_channels if self.scale_shift else out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        # A 1x1 conv only where the channel count changes, so the residual can be added.
        self.conv_shortcut = PointwiseConv(in_channels, out_channels) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb_activated: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, H, W); temb_activated: (B, temb_channels), already through SiLU -> (B, C_out, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        time = self.time_emb_proj(temb_activated)[:, :, None, None]  # (B, C_out or 2·C_out, 1, 1)
        if self.scale_shift:
            scale, shift = time.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + time)
        h = self.conv2(self.dropout(F.silu(h)))
        residual = x if self.conv_shortcut is None else self.conv_shortcut(x)
        out = residual + h
        return out if self.output_scale_factor == 1.0 else out / self.output_scale_factor


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H·W positions of a feature map.

    Returns only the attention's *update*; the caller adds the residual (`h = attn(h) + h`), which
    keeps the residual path visible and makes "attention off" mean exactly "the update is skipped".
    """

    def __init__(self, channels: int, head_dim: int, norm_groups: int | None, eps: float, dropout: float = 0.0):
        super().__init__()
        self.heads = channels // head_dim
        self.head_dim = head_dim
        inner = self.heads * head_dim
        self.group_norm = nn.GroupNorm(norm_groups, channels, eps=eps) if norm_groups is not None else None
        self.to_q = nn.Linear(channels, inner)
        self.to_k = nn.Linear(channels, inner)
        self.to_v = nn.Linear(channels, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, channels), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> update of the same shape."""
        b, c, height, width = x.shape
        normed = x if self.group_norm is None else self.group_norm(x)
        # (B, H·W, C), copied once here rather than by each of to_q, to_k and to_v (2 % of a forward);
        # channels-last maps are already in this order and are not copied at all
        tokens = normed.flatten(2).transpose(1, 2).contiguous()

        def split_heads(t):  # (B, H·W, heads·d) -> (B, heads, H·W, d)
            return t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

        q, k, v = split_heads(self.to_q(tokens)), split_heads(self.to_k(tokens)), split_heads(self.to_v(tokens))
        attended = F.scaled_dot_product_attention(q, k, v)  # (B, heads, H·W, d)
        attended = attended.transpose(1, 2).flatten(2)  # (B, H·W, heads·d)
        update = self.to_out[1](self.to_out[0](attended))  # (B, H·W, C)
        return update.transpose(1, 2).reshape(b, c, height, width)


class Downsample(nn.Module):
    """Halve the resolution with a strided 3x3 conv (padding 0 pads right/bottom only, as diffusers does)."""

    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour interpolation, then a 3x3 conv to smooth it."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Checkpointed(nn.Module):
    """A block whose ResnetBlocks can be recomputed in the backward pass instead of keeping their activations.

    `ModelMixin.enable_gradient_checkpointing` finds every module with a `gradient_checkpointing` attribute and sets
    it, with the function that recomputes (`torch.utils.checkpoint.checkpoint` by default).
    """

    gradient_checkpointing = False

    def run(self, resnet: nn.Module, h: torch.Tensor, temb_activated: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(resnet, h, temb_activated)
        return resnet(h, temb_activated)


class DownBlock(Checkpointed):
    """One encoder level: ResnetBlocks (each optionally followed by attention), then a downsample.

    DownBlock2D and AttnDownBlock2D are the same block; the first just has no attentions.
    Returns the skip tensors it produced, one per ResnetBlock plus one after the downsample.
    """

    def __init__(self, name, in_channels, out_channels, num_layers, with_attention, add_downsample, common, head_dim, downsample_padding):
        super().__init__()
        self.name = name
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels if j == 0 else out_channels, out_channels, **common) for j in range(num_layers)
        )
        self.attentions = nn.ModuleList(
            SelfAttention(out_channels, head_dim, common["groups"], common["eps"], common["dropout"])
            for _ in range(num_layers if with_attention else 0)
        )
        self.downsamplers = nn.ModuleList([Downsample(out_channels, downsample_padding)] if add_downsample else [])

    def forward(self, h, temb_activated, attention_off, tap):
        skips = []
        for j, resnet in enumerate(self.resnets):
            h = tap(f"{self.name}.resnets.{j}", self.run(resnet, h, temb_activated))
            if self.attentions:
                h = _attend(self.attentions[j], f"{self.name}.attentions.{j}", h, attention_off, tap)
            skips.append(h)
        for downsampler in self.downsamplers:
            h = tap(f"{self.name}.downsamplers.0", downsampler(h))
            skips.append(h)
        return h, skips


class MidBlock(Checkpointed):
    """The bottleneck: ResnetBlock → SelfAttention → ResnetBlock at the coarsest resolution."""

    def __init__(self, channels, with_attention, common, head_dim, attn_groups, output_scale_factor):
        super().__init__()
        self.name = "mid_block"
        self.output_scale_factor = output_scale_factor
        common = dict(common, output_scale_factor=output_scale_factor)
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, **common), ResnetBlock(channels, channels, **common)])
        attention = SelfAttention(channels, head_dim, attn_groups, common["eps"], common["dropout"]) if with_attention else None
        self.attentions = nn.ModuleList([attention])

    def forward(self, h, temb_activated, attention_off, tap):
        h = tap("mid_block.resnets.0", self.run(self.resnets[0], h, temb_activated))
        if self.attentions[0] is not None:
            h = _attend(self.attentions[0], "mid_block.attentions.0", h, attention_off, tap, self.output_scale_factor)
        return tap("mid_block.resnets.1", self.run(self.resnets[1], h, temb_activated))


class UpBlock(Checkpointed):
    """One decoder level: for each ResnetBlock, concatenate a skip from the encoder, then an upsample.

    UpBlock2D and AttnUpBlock2D are the same block; the first just has no attentions.
    """

    def __init__(self, name, skip_channels, prev_channels, out_channels, num_layers, with_attention, add_upsample, common, head_dim):
        super().__init__()
        self.name = name
        self.resnets = nn.ModuleList(
            ResnetBlock((prev_channels if j == 0 else out_channels) + skip_channels[j], out_channels, **common)
            for j in range(num_layers)
        )
        self.attentions = nn.ModuleList(
            SelfAttention(out_channels, head_dim, common["groups"], common["eps"], common["dropout"])
            for _ in range(num_layers if with_attention else 0)
        )
        self.upsamplers = nn.ModuleList([Upsample(out_channels)] if add_upsample else [])

    def forward(self, h, skips, skip_gain, temb_activated, attention_off, tap, backbone_gain=1.0, low_freq_gain=1.0):
        for j, resnet in enumerate(self.resnets):
            skip = skips.pop()
            if skip_gain == 0.0:
                skip = torch.zeros_like(skip)  # not skip * 0, which would keep NaN/inf
            elif skip_gain != 1.0:
                skip = skip * skip_gain
            if backbone_gain != 1.0:
                h = scale_first_half_channels(h, backbone_gain)
            if low_freq_gain != 1.0:
                skip = scale_low_frequencies(skip, low_freq_gain)
            # the two halves of the concatenation: what came up the decoder, and what the encoder sent across
            h = tap(f"{self.name}.resnets.{j}.backbone", h)
            skip = tap(f"{self.name}.resnets.{j}.skip", skip)
            h = tap(f"{self.name}.resnets.{j}", self.run(resnet, torch.cat([h, skip], dim=1), temb_activated))
            if self.attentions:
                h = _attend(self.attentions[j], f"{self.name}.attentions.{j}", h, attention_off, tap)
        for upsampler in self.upsamplers:
            h = tap(f"{self.name}.upsamplers.0", upsampler(h))
        return h


def scale_first_half_channels(h: torch.Tensor, gain: float) -> torch.Tensor:
    """FreeU's backbone factor b: (B, C, H, W) with channels [0, C/2) multiplied by `gain`."""
    half = h.shape[1] // 2
    return torch.cat([h[:, :half] * gain, h[:, half:]], dim=1)


def scale_low_frequencies(x: torch.Tensor, gain: float, bins: int = FREEU_LOW_FREQ_BINS) -> torch.Tensor:
    """FreeU's skip factor s: scale the lowest spatial frequencies of `x` (B, C, H, W) by `gain`.

    Exactly FreeU's `fourier_filter`: a box [H/2 − bins, H/2 + bins) around DC after fftshift is scaled,
    then the real part of the inverse FFT is kept. The box is one bin off-centre, so the real part
    averages it with its mirror image: DC is scaled by `gain`, some of its nearest neighbours by
    (1 + gain) / 2, and nothing further out changes. float32 because FFTs of odd sizes (7 px) are not
    supported in half precision.
    """
    height, width = x.shape[-2:]
    spectrum = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))  # (B, C, H, W) complex
    mask = torch.ones(height, width, device=x.device)
    mask[height // 2 - bins:height // 2 + bins, width // 2 - bins:width // 2 + bins] = gain
    filtered = torch.fft.ifftn(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1)), dim=(-2, -1)).real
    return filtered.to(x.dtype)


def _standard_layout_state_dict(module, state_dict, prefix, local_metadata) -> None:
    """State dicts hold standard-layout tensors, as safetensors (so `save_pretrained`) and stock diffusers expect."""
    for name, tensor in state_dict.items():
        # Parameters themselves (state_dict(keep_vars=True)) are handed over as they are
        if name.startswith(prefix) and not isinstance(tensor, nn.Parameter) and not tensor.is_contiguous():
            state_dict[name] = tensor.contiguous()


def _attend(attention, site, h, attention_off, tap, rescale=1.0):
    """h + attention(h), unless the site is switched off; taps the update and the result."""
    if site in attention_off:
        # the same maps exist with the site off, so an ablated run compares with the intact one block for block:
        # no update, and h flows on unchanged
        if tap is not _ignore:
            tap(f"{site}.update", torch.zeros_like(h))
        return tap(site, h)
    update = tap(f"{site}.update", attention(h))
    h = update + h
    return tap(site, h if rescale == 1.0 else h / rescale)


# ---------------------------------------------------------------------------------------------
# The U-Net
# ---------------------------------------------------------------------------------------------


# Where a config.json keeps the training ablation: UNet2DModel.from_pretrained warns about any key its __init__ lacks,
# but drops "_"-prefixed ones silently; PlaygroundUNet reads it back (and still reads the older plain key).
TRAINING_ABLATION_KEY = "_training_ablation"


class PlaygroundUNet(CheckedLoading, ModelMixin, ConfigMixin):
    """A `diffusers.UNet2DModel`-compatible U-Net with per-call ablation and feature capture.

    Arguments and defaults are UNet2DModel's (see its documentation); unsupported values raise
    ValueError. One argument is ours: `training_ablation`, the Ablation (as a dict) a variant was
    trained with. It is applied on every call, so a model trained without skips samples correctly
    with no further argument; an explicit `ablation` composes with it.
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = True

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        # the training ablation is saved under a private key, which stock diffusers drops without a warning
        config_dict = dict(config_dict)
        if TRAINING_ABLATION_KEY in config_dict and "training_ablation" not in kwargs:
            kwargs["training_ablation"] = config_dict.pop(TRAINING_ABLATION_KEY)
        return super().extract_init_dict(config_dict, **kwargs)

    def to_json_string(self) -> str:
        config = json.loads(super().to_json_string())
        ablation = config.pop("training_ablation", None)
        if ablation:
            config[TRAINING_ABLATION_KEY] = ablation
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 3,
        out_channels: int = 3,
        center_input_sample: bool = False,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        freq_shift: int = 0,
        flip_sin_to_cos: bool = True,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2D",
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        block_out_channels: tuple[int, ...] = (224, 448, 672, 896),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        downsample_type: str = "conv",
        upsample_type: str = "conv",
        dropout: float = 0.0,
        act_fn: str = "silu",
        attention_head_dim: int | None = 8,
        norm_num_groups: int = 32,
        attn_norm_num_groups: int | None = None,
        norm_eps: float = 1e-5,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = None,
        num_train_timesteps: int | None = None,
        training_ablation: dict | None = None,
    ):
        super().__init__()
        _check_config(locals())
        levels = len(block_out_channels)
        time_embed_dim = time_embedding_dim or block_out_channels[0] * 4
        common = dict(
            temb_channels=time_embed_dim, groups=norm_num_groups, eps=norm_eps, dropout=dropout, time_scale_shift=resnet_time_scale_shift
        )

        # time (and class) embedding
        self.time_proj = SinusoidalTimesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim)
        self.class_embedding = nn.Embedding(num_class_embeds, time_embed_dim) if num_class_embeds is not None else None

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)

        # encoder: level i maps block_out_channels[i-1] -> block_out_channels[i], then halves H and W
        self.down_blocks = nn.ModuleList()
        skip_channels = [block_out_channels[0]]  # conv_in's output is the first skip
        for i, block_type in enumerate(down_block_types):
            channels_in, channels_out = block_out_channels[max(i - 1, 0)], block_out_channels[i]
            is_last = i == levels - 1
            self.down_blocks.append(
                DownBlock(
                    f"down_blocks.{i}", channels_in, channels_out, layers_per_block, block_type == "AttnDownBlock2D",
                    add_downsample=not is_last, common=common,
                    head_dim=attention_head_dim or channels_out, downsample_padding=downsample_padding,
                )
            )
            skip_channels += [channels_out] * (layers_per_block + (0 if is_last else 1))

        # bottleneck
        self.mid_block = None
        if mid_block_type is not None:
            bottom = block_out_channels[-1]
            attn_groups = attn_norm_num_groups
            if attn_groups is None and resnet_time_scale_shift == "default":
                attn_groups = norm_num_groups  # diffusers' rule: scale_shift models have no norm here
            self.mid_block = MidBlock(
                bottom, add_attention, common, attention_head_dim or bottom, attn_groups, mid_block_scale_factor
            )

        # decoder: mirror of the encoder, each ResnetBlock eating one skip (last in, first out)
        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(block_out_channels))
        for i, block_type in enumerate(up_block_types):
            prev_channels = reversed_channels[max(i - 1, 0)]
            channels_out = reversed_channels[i]
            consumed = [skip_channels.pop() for _ in range(layers_per_block + 1)]
            self.up_blocks.append(
                UpBlock(
                    f"up_blocks.{i}", consumed, prev_channels, channels_out, layers_per_block + 1, block_type == "AttnUpBlock2D",
                    add_upsample=i < levels - 1, common=common, head_dim=attention_head_dim or channels_out,
                )
            )

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)

        self.training_ablation = Ablation.from_dict(training_ablation)
        if not self.training_ablation.is_intact:
            self.training_ablation.check_against(self.skip_resolutions, self.attention_sites)
        self._use_channels_last()
        self.register_state_dict_post_hook(_standard_layout_state_dict)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        loaded = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        # diffusers fills the weights in after __init__ (from the meta device), in the file's layout
        (loaded[0] if isinstance(loaded, tuple) else loaded)._use_channels_last()
        return loaded

    def _use_channels_last(self) -> None:
        """Hold convolution weights channels-last (NHWC), the layout oneDNN computes convolutions in.

        With them, every activation stays channels-last from conv_in on, and no convolution reorders its input
        or weights: on 2 CPU cores a forward takes 11–21 % less time at batch 1, 2–12 % at 2 and 16, training the same
        (benchmarks/forward.py, train_step.py). Values agree with the standard layout to rounding (~1e-5).
        """
        self.to(memory_format=torch.channels_last)

    # -----------------------------------------------------------------------------------------
    # Introspection: what the UI and ablations are built from.
    # -----------------------------------------------------------------------------------------

    @cached_property
    def level_resolutions(self) -> tuple[int, ...]:
        """Pixel height of each encoder level's feature maps at the configured `sample_size`."""
        size = self.config.sample_size
        if size is None:
            raise ValueError("sample_size is not set in the config, so resolutions in pixels are unknown")
        height = size if isinstance(size, int) else size[0]
        padding = self.config.downsample_padding
        resolutions = [height]
        for _ in range(len(self.config.block_out_channels) - 1):
            # a 3x3 stride-2 conv; padding 0 is preceded by a one-pixel pad on the far side
            height = (height + (2 * padding if padding else 1) - 3) // 2 + 1
            resolutions.append(height)
        return tuple(resolutions)

    @cached_property
    def skip_resolutions(self) -> tuple[int, ...]:
        """The resolutions (pixels, largest first) at which encoder skips join the decoder."""
        return self.level_resolutions

    @cached_property
    def attention_sites(self) -> tuple[str, ...]:
        """Module paths of every attention layer, in forward order (what `Ablation.attention_off` takes)."""
        return tuple(name for name, module in self.named_modules() if isinstance(module, SelfAttention))

    @property
    def switchable_skip_resolutions(self) -> tuple[int, ...]:
        """The skip resolutions an ablation can still change: not those training cut to zero (a gain there multiplies
        nothing)."""
        return tuple(r for r in self.skip_resolutions if self.training_ablation.skip_gain(r) != 0.0)

    @property
    def switchable_attention_sites(self) -> tuple[str, ...]:
        """The attention sites an ablation can still switch off: not those training already had off."""
        return tuple(site for site in self.attention_sites if site not in self.training_ablation.attention_off)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the maps `capture_features=True` returns, in forward order."""
        return tuple(self.feature_shapes())

    def feature_shapes(self, height: int | None = None, width: int | None = None) -> dict[str, tuple[int, int, int]]:
        """name -> (C, h, w) of every captured map for an input of the given size (default sample_size)."""
        height = height or self.level_resolutions[0]
        width = width or height
        key = (height, width)
        cache = self.__dict__.setdefault("_feature_shape_cache", {})
        if key not in cache:
            # traced on the meta device: shapes without arithmetic, so asking costs no thread any real compute
            with torch.device("meta"):
                shadow = type(self).from_config(self.config)
                x = torch.zeros(1, self.config.in_channels, height, width)
                labels = None if self.class_embedding is None else torch.zeros(1, dtype=torch.long)
                features = shadow(x, 0, class_labels=labels, capture_features=True).features
            cache[key] = {name: tuple(t.shape[1:]) for name, t in features.items()}
        return cache[key]

    # -----------------------------------------------------------------------------------------

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
        *,
        ablation: Ablation | None = None,
        capture_features: bool = False,
        bottleneck_shift: torch.Tensor | None = None,
    ) -> PlaygroundUNetOutput | tuple:
        """Predict the noise in `sample` at `timestep`.

        sample: (B, in_channels, H, W). timestep: a number or a (B,) / scalar tensor.
        class_labels: (B,) long, required iff the model has `num_class_embeds`.
        ablation: what to switch off or scale for this call (composes with the training ablation).
        capture_features: also return every intermediate map in `.features`.
        bottleneck_shift: (C, h, w) or (B, C, h, w) added to the bottleneck's output before the decoder
            (an edit in "h-space", Kwon et al. 2023); the tap `mid_block.resnets.1` shows h before it.
        Returns PlaygroundUNetOutput(sample=(B, out_channels, H, W), features) or a tuple.
        """
        ablation = self._effective_ablation(ablation)
        tap = _FeatureRecorder() if capture_features else _ignore

        # 0. center input if necessary
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        # 1. time: sinusoid -> MLP, plus the class embedding; SiLU once here rather than in every block
        batch = sample.shape[0]
        if ablation.time_embedding_off:
            emb = sample.new_zeros(batch, self.time_embedding.linear_2.out_features)
        else:
            if not torch.is_tensor(timestep):  # as UNet2DModel: a Python number becomes a whole (long) step
                timestep = torch.tensor([timestep], dtype=torch.long)
            timesteps = timestep.to(sample.device).reshape(-1).expand(batch)  # (B,)
            emb = self.time_embedding(self.time_proj(timesteps).to(self.conv_in.weight.dtype))  # (B, time_embed_dim)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels should be provided when doing class conditioning")
            emb = emb + self.class_embedding(class_labels).to(emb.dtype)
        elif class_labels is not None:
            raise ValueError("class_embedding needs to be initialized in order to use class conditioning")
        temb_activated = F.silu(emb)

        # 2. pre-process
        h = tap("conv_in", self.conv_in(sample))  # (B, C0, H, W)

        # 3. down: every block hands back the skips it made
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, temb_activated, ablation.attention_off, tap)
            skips.extend(block_skips)

        # 4. mid
        if self.mid_block is not None:
            h = self.mid_block(h, temb_activated, ablation.attention_off, tap)
        if bottleneck_shift is not None:
            h = h + bottleneck_shift.to(h.dtype)

        # 5. up: the deepest level first, each consuming its skips with the gains of its resolution
        gains = dict(ablation.skip_scale)
        backbone_gains, low_freq_gains = dict(ablation.backbone_scale), dict(ablation.skip_low_freq_scale)
        scaled = bool(gains) or ablation.uses_freeu  # resolutions need sample_size: only ask when a gain is set
        for level, block in zip(reversed(range(len(self.up_blocks))), self.up_blocks):
            resolution = self.skip_resolutions[level] if scaled else None
            h = block(h, skips, gains.get(resolution, 1.0), temb_activated, ablation.attention_off, tap,
                      backbone_gains.get(resolution, 1.0), low_freq_gains.get(resolution, 1.0))

        # 6. post-process
        out = self.conv_out(self.conv_act(self.conv_norm_out(h)))  # (B, out_channels, H, W)

        features = tap if capture_features else {}
        if not return_dict:
            return (out, features) if capture_features else (out,)
        return PlaygroundUNetOutput(sample=out, features=features)

    def _effective_ablation(self, ablation: Ablation | None) -> Ablation:
        if ablation is None:
            return self.training_ablation
        if not isinstance(ablation, Ablation):
            raise ValueError(f"ablation must be an Ablation, got {type(ablation).__name__}")
        if ablation.is_intact:
            return self.training_ablation
        ablation.check_against(self.skip_resolutions, self.attention_sites)
        return self.training_ablation.combined_with(ablation) if not self.training_ablation.is_intact else ablation


def _check_config(options: dict) -> None:
    """Refuse, by name, any UNet2DModel option value this implementation does not reproduce."""
    for option, supported in SUPPORTED_OPTIONS.items():
        if options[option] not in supported:
            raise ValueError(f"{option}={options[option]!r} is not supported; supported values: {list(supported)}")
    for option, supported in (("down_block_types", SUPPORTED_DOWN_BLOCKS), ("up_block_types", SUPPORTED_UP_BLOCKS)):
        for block_type in options[option]:
            if block_type not in supported:
                raise ValueError(f"{option} contains {block_type!r}, which is not supported; supported values: {list(supported)}")
    levels = len(options["block_out_channels"])
    if not (len(options["down_block_types"]) == len(options["up_block_types"]) == levels):
        raise ValueError("down_block_types, up_block_types and block_out_channels must have the same length")
    if options["norm_num_groups"] is None:
        raise ValueError("norm_num_groups=None is not supported; give a number of groups")
    if options["class_embed_type"] is None and options["num_class_embeds"] is not None and options["num_class_embeds"] < 1:
        raise ValueError(f"num_class_embeds must be >= 1, got {options['num_class_embeds']}")


def feature_group(name: str) -> str:
    """Where a captured map sits in the U: encoder, bottleneck, skip or decoder."""
    if name.endswith(".skip"):
        return "skip"
    if name.startswith(("conv_in", "down_blocks")):
        return "encoder"
    if name.startswith("mid_block"):
        return "bottleneck"
    return "decoder"
