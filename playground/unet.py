"""PlaygroundUNet: the diffusion U-Net of the seeds, written to be read and taken apart.

To every observer it is a `diffusers.UNet2DModel`: the same config arguments and defaults, the same
module tree and therefore the same state-dict keys, the same function (a parity test checks outputs
agree), `save_pretrained` / `from_pretrained` with safetensors in both directions. To a reader it is
the textbook picture, top to bottom:

    t ──sinusoid──MLP──► emb (injected into every ResnetBlock)
    x ─conv_in─► [DownBlock: ResnetBlock (+SelfAttention)]* ─► MidBlock ─► [UpBlock: cat(skip) ResnetBlock (+SelfAttention)]* ─conv_out─► ε̂
                 └──────────── skips.append(h) ───────────────────────────── skips.pop() ──┘

What UNet2DModel does not do, passed per call so one model object can serve many users at once:
- `ablation=Ablation(...)` scales or zeroes skips per resolution (plainly or FreeU's way), bypasses
  attention sites, or hides t;
- `bottleneck_shift=...` adds a direction to the bottleneck's output (an h-space edit);
- `capture_features=True` returns every intermediate map by its module path (`down_blocks.1.resnets.0`,
  `up_blocks.0.resnets.2.skip`, `mid_block.attentions.0`, ...), through explicit taps in the one forward;
- `patch={name: tensor}` puts the given tensor in place of those maps at their taps and goes on from it
  (activation patching, Meng et al. 2022; see playground/patching.py).

The blocks it is built of are in `playground/blocks.py`; this file wires them together and is the model
diffusers sees (config, forward, loading). References: diffusers `models/unets/unet_2d.py` (the interface and module names), Ho et al. 2020 and
openai/improved-diffusion (the architecture), FreeU (skip scaling).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

from .ablation import Ablation
from .blocks import (DownBlock, FeatureRecorder, MidBlock, Patcher, SelfAttention, SinusoidalTimesteps, TimestepEmbedding, UpBlock,
                     no_tap)
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


def _standard_layout_state_dict(module, state_dict, prefix, local_metadata) -> None:
    """State dicts hold standard-layout tensors, as safetensors (so `save_pretrained`) and stock diffusers expect."""
    for name, tensor in state_dict.items():
        # Parameters themselves (state_dict(keep_vars=True)) are handed over as they are
        if name.startswith(prefix) and not isinstance(tensor, nn.Parameter) and not tensor.is_contiguous():
            state_dict[name] = tensor.contiguous()



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
        patch: Mapping[str, torch.Tensor] | None = None,
    ) -> PlaygroundUNetOutput | tuple:
        """Predict the noise in `sample` at `timestep`.

        sample: (B, in_channels, H, W). timestep: a number or a (B,) / scalar tensor.
        class_labels: (B,) long, required iff the model has `num_class_embeds`.
        ablation: what to switch off or scale for this call (composes with the training ablation).
        capture_features: also return every intermediate map in `.features`.
        bottleneck_shift: (C, h, w) or (B, C, h, w) added to the bottleneck's output before the decoder
            (an edit in "h-space", Kwon et al. 2023); the tap `mid_block.resnets.1` shows h before it.
        patch: feature name (from `feature_names`) -> (B, C, h, w) tensor that replaces that map where the forward
            taps it; everything after continues from the replacement (captured features show it too).
        Returns PlaygroundUNetOutput(sample=(B, out_channels, H, W), features) or a tuple.
        """
        ablation = self._effective_ablation(ablation)
        if patch is not None:  # decided once per call: an unpatched forward's taps stay the plain ones
            tap = Patcher(patch, self.feature_shapes(*sample.shape[-2:]), sample.shape[0], record=capture_features)
        else:
            tap = FeatureRecorder() if capture_features else no_tap

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
