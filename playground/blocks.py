"""The U-Net's building blocks, each the module of `diffusers.UNet2DModel` it stands for (same names, same
parameters): time embedding, ResnetBlock, SelfAttention, down/up sampling, and the encoder, bottleneck and decoder
levels built of them. Every block reports its intermediate maps through a tap, `tap(name, h) -> h`, and goes on
with what the tap hands back: feature capture (`FeatureRecorder`) and activation patching (`Patcher`) are part of the
one forward pass and cost nothing when the tap is `no_tap`.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .ablation import FREEU_LOW_FREQ_BINS


def no_tap(name: str, h: torch.Tensor) -> torch.Tensor:
    return h


class FeatureRecorder(dict):
    """A tap for the forward pass: records `h` under `name` and passes it on unchanged."""

    def __call__(self, name: str, h: torch.Tensor) -> torch.Tensor:
        self[name] = h
        return h


class Patcher(FeatureRecorder):
    """A tap that hands on the given tensor in place of each map named in `patch` (activation patching), so the rest
    of the forward continues from it; records every map it hands on when `record` is set.

    patch: name -> (batch, C, h, w), checked against `shapes` (name -> (C, h, w), the model's maps for this input).
    """

    def __init__(self, patch: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]], batch: int, record: bool):
        super().__init__()
        if not isinstance(patch, Mapping):
            raise ValueError(f"patch must map feature names to tensors, got {type(patch).__name__}")
        for name, tensor in patch.items():
            if name not in shapes:
                examples = ", ".join(repr(n) for n in list(shapes)[1::max(1, len(shapes) // 4)][:4])
                raise ValueError(f"patch: {name!r} is not one of the model's feature maps, e.g. {examples} (see feature_names)")
            expected = (batch, *shapes[name])
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != expected:
                got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ValueError(f"patch: {name!r} must be a tensor of shape {expected} (batch, channels, height, width), got {got}")
        self.patch = dict(patch)
        self.record = record

    def __call__(self, name: str, h: torch.Tensor) -> torch.Tensor:
        replacement = self.patch.get(name)
        if replacement is not None:
            h = _laid_out_like(replacement, h)
        if self.record:
            self[name] = h
        return h


def _laid_out_like(replacement: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """`replacement` in h's dtype, device and memory layout: convolutions pick their kernel by the layout, and a
    patch with h's own values must compute exactly what h would."""
    if replacement.dtype == h.dtype and replacement.device == h.device and replacement.stride() == h.stride():
        return replacement
    return torch.empty_like(h).copy_(replacement)


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
    as fast.
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
                h = attend(self.attentions[j], f"{self.name}.attentions.{j}", h, attention_off, tap)
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
            h = attend(self.attentions[0], "mid_block.attentions.0", h, attention_off, tap, self.output_scale_factor)
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
                h = attend(self.attentions[j], f"{self.name}.attentions.{j}", h, attention_off, tap)
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


def attend(attention, site, h, attention_off, tap, rescale=1.0):
    """h + attention(h), unless the site is switched off; taps the update and the result."""
    if site in attention_off:
        # the same maps exist with the site off, so an ablated run compares with the intact one block for block:
        # no update, and h flows on unchanged, unless a patch hands an update back in its place
        if tap is not no_tap:
            zeros = torch.zeros_like(h)
            update = tap(f"{site}.update", zeros)
            if update is not zeros:
                h = update + h
        return tap(site, h)
    update = tap(f"{site}.update", attention(h))
    h = update + h
    return tap(site, h if rescale == 1.0 else h / rescale)
