"""What to switch off or scale in a U-Net, for one forward call.

An `Ablation` is a value, not a setting: it travels through `PlaygroundUNet.forward` as an argument,
so two users with two different ablations can share one model object at the same time. It is frozen
and hashable because the app uses it as a cache key. `Ablation()` is the intact network.

Vocabulary (the same names the state dict, the feature maps and the UI use):
- skip resolutions are pixel sizes, from `unet.skip_resolutions` (e.g. 28, 14, 7);
- attention sites are module paths, from `unet.attention_sites` (e.g. "mid_block.attentions.0").

FreeU (Si et al. 2023, "FreeU: Free Lunch in Diffusion U-Net") is here in its faithful form next to
plain skip scaling: `backbone_scale` (FreeU's b) and `skip_low_freq_scale` (FreeU's s), per decoder
stage, keyed by the stage's resolution like `skip_scale`. `freeu_preset(unet)` adapts the paper's
SD1.x defaults to a model's stages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

# FreeU's SD1.x defaults (b1, s1) for the deepest decoder stage and (b2, s2) for the next one.
FREEU_SD1_DEFAULTS = ((1.2, 0.9), (1.4, 0.2))
# FreeU's Fourier box: frequencies within ±1 bin of DC in each axis count as "low" (threshold=1 in the paper's code).
FREEU_LOW_FREQ_BINS = 1


@dataclass(frozen=True)
class Ablation:
    """Parts of the U-Net to switch off or scale.

    skip_scale: resolution (pixels) -> multiplier for every skip tensor that joins the decoder at that
        resolution. 0 switches those skips off (zeros of the same shape, so the decoder's weights still
        apply), values in (0, 1) weaken them, values > 1 amplify them (FreeU-style). Entries equal to
        1 are dropped: they change nothing.
    attention_off: attention sites whose attention is bypassed; only their residual path flows on.
    time_embedding_off: the time embedding is replaced by zeros, so the network no longer knows t
        (a class embedding, if any, still flows).
    backbone_scale: resolution -> FreeU's b. Multiplies the first half of the channels of the decoder's
        own features (the backbone) at every join of that decoder stage, before the skip is concatenated.
        The backbone carries the denoising "what is here"; b > 1 strengthens it (smoother, more
        coherent shapes), b < 1 weakens it. Only half the channels, as FreeU, so textures survive.
    skip_low_freq_scale: resolution -> FreeU's s. Multiplies only the lowest spatial frequencies of
        every skip joining at that resolution (FreeU's FFT box around DC: the mean by s, its nearest
        neighbours partly), leaving its higher frequencies (edges, fine detail) untouched. s < 1 lets the decoder rely less on the
        encoder's coarse layout and more on its backbone; this is what offsets b > 1 in FreeU.
    """

    skip_scale: tuple[tuple[int, float], ...] | Mapping[int, float] = field(default_factory=tuple)
    attention_off: frozenset[str] | Iterable[str] = field(default_factory=frozenset)
    time_embedding_off: bool = False
    backbone_scale: tuple[tuple[int, float], ...] | Mapping[int, float] = field(default_factory=tuple)
    skip_low_freq_scale: tuple[tuple[int, float], ...] | Mapping[int, float] = field(default_factory=tuple)

    def __post_init__(self):
        for name in ("skip_scale", "backbone_scale", "skip_low_freq_scale"):
            object.__setattr__(self, name, _normalise_gains(getattr(self, name), name))
        object.__setattr__(self, "attention_off", _normalise_sites(self.attention_off))
        if not isinstance(self.time_embedding_off, bool):
            raise ValueError(f"time_embedding_off must be True or False, got {self.time_embedding_off!r}")

    @property
    def is_intact(self) -> bool:
        return not (self.skip_scale or self.attention_off or self.time_embedding_off
                    or self.backbone_scale or self.skip_low_freq_scale)

    @property
    def uses_freeu(self) -> bool:
        return bool(self.backbone_scale or self.skip_low_freq_scale)

    def skip_gain(self, resolution: int) -> float:
        """The multiplier for skips joining at `resolution` (1.0 when not ablated)."""
        return dict(self.skip_scale).get(resolution, 1.0)

    def combined_with(self, other: "Ablation") -> "Ablation":
        """Both ablations at once: gains multiply, switched-off sets unite."""
        def multiplied(name):
            gains = dict(getattr(self, name))
            for resolution, gain in getattr(other, name):
                gains[resolution] = gains.get(resolution, 1.0) * gain
            return gains

        return Ablation(
            skip_scale=multiplied("skip_scale"),
            attention_off=self.attention_off | other.attention_off,
            time_embedding_off=self.time_embedding_off or other.time_embedding_off,
            backbone_scale=multiplied("backbone_scale"),
            skip_low_freq_scale=multiplied("skip_low_freq_scale"),
        )

    def one_switch_away(self, skip_resolutions: Iterable[int], attention_sites: Iterable[str]) -> list["Ablation"]:
        """The ablations one control away, in the order the app shows its controls: each skip resolution
        switched off (or back on), each attention site flipped, then time. FreeU's gains stay as they are."""
        neighbours = []
        for resolution in skip_resolutions:
            gains = dict(self.skip_scale)
            gains[resolution] = 1.0 if gains.get(resolution, 1.0) == 0.0 else 0.0
            neighbours.append(replace(self, skip_scale=gains))
        neighbours += [replace(self, attention_off=self.attention_off ^ {site}) for site in attention_sites]
        neighbours.append(replace(self, time_embedding_off=not self.time_embedding_off))
        return neighbours

    def check_against(self, skip_resolutions: Iterable[int], attention_sites: Iterable[str]) -> None:
        """Raise ValueError, listing the valid choices, if this names parts a model does not have."""
        skip_resolutions, attention_sites = tuple(skip_resolutions), tuple(attention_sites)
        for name in ("skip_scale", "backbone_scale", "skip_low_freq_scale"):
            unknown_resolutions = sorted(r for r, _ in getattr(self, name) if r not in skip_resolutions)
            if unknown_resolutions:
                raise ValueError(
                    f"{name} names resolution(s) {unknown_resolutions} that this model does not have; "
                    f"valid skip resolutions: {sorted(skip_resolutions, reverse=True)}"
                )
        unknown_sites = sorted(self.attention_off - set(attention_sites))
        if unknown_sites:
            raise ValueError(
                f"attention_off names site(s) {unknown_sites} that this model does not have; "
                f"valid attention sites: {list(attention_sites) or 'none (this model has no attention)'}"
            )

    # JSON form, for configs (the training ablation of a variant) and shareable app state.
    # The FreeU fields appear only when set, so configs written before they existed stay byte-identical.
    def to_dict(self) -> dict:
        data = {
            "skip_scale": {str(r): g for r, g in self.skip_scale},
            "attention_off": sorted(self.attention_off),
            "time_embedding_off": self.time_embedding_off,
        }
        for name in ("backbone_scale", "skip_low_freq_scale"):
            if getattr(self, name):
                data[name] = {str(r): g for r, g in getattr(self, name)}
        return data

    @classmethod
    def from_dict(cls, data: Mapping | None) -> "Ablation":
        if not data:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError(f"an ablation must be a mapping, got {type(data).__name__}")
        valid = ("skip_scale", "attention_off", "time_embedding_off", "backbone_scale", "skip_low_freq_scale")
        unknown = set(data) - set(valid)
        if unknown:
            raise ValueError(f"unknown ablation field(s) {sorted(unknown)}; valid: {', '.join(valid)}")
        return cls(
            skip_scale=data.get("skip_scale") or {},
            attention_off=data.get("attention_off") or (),
            time_embedding_off=data.get("time_embedding_off", False),
            backbone_scale=data.get("backbone_scale") or {},
            skip_low_freq_scale=data.get("skip_low_freq_scale") or {},
        )


def freeu_preset(skip_resolutions: Iterable[int]) -> Ablation:
    """FreeU's SD1.x defaults (b1=1.2, s1=0.9; b2=1.4, s2=0.2) adapted to a model's decoder stages.

    SD1.x applies them to its two deepest decoder stages (8 and 16 latent pixels); here they go to the
    two deepest decoder stages of the given model (7 and 14 px for the flagship), the same place
    relative to the bottleneck. A model with one level gets stage 1's values only.
    """
    deepest_first = sorted(skip_resolutions)
    stages = list(zip(deepest_first, FREEU_SD1_DEFAULTS))
    return Ablation(backbone_scale={r: b for r, (b, _) in stages}, skip_low_freq_scale={r: s for r, (_, s) in stages})


def _normalise_gains(gains, name: str) -> tuple[tuple[int, float], ...]:
    if isinstance(gains, Mapping):
        items = gains.items()
    else:
        try:
            items = [tuple(pair) for pair in gains]
        except TypeError:
            raise ValueError(f"{name} must map resolution -> scale, got {gains!r}") from None
    normalised = {}
    for resolution, gain in items:
        try:
            resolution_int, gain_float = int(resolution), float(gain)
        except (TypeError, ValueError):
            raise ValueError(f"{name} entries must be resolution -> number, got {resolution!r}: {gain!r}") from None
        if resolution_int != float(resolution) or resolution_int <= 0:
            raise ValueError(f"{name} resolution must be a positive whole number of pixels, got {resolution!r}")
        if not math.isfinite(gain_float) or gain_float < 0:
            raise ValueError(f"{name} for resolution {resolution_int} must be a finite number >= 0, got {gain!r}")
        if gain_float != 1.0:
            normalised[resolution_int] = gain_float
    return tuple(sorted(normalised.items(), reverse=True))


def _normalise_sites(sites) -> frozenset[str]:
    if isinstance(sites, str):
        sites = [sites]  # one site name, not a set of its characters
    try:
        sites = frozenset(sites)
    except TypeError:
        raise ValueError(f"attention_off must be a collection of site names, got {sites!r}") from None
    if not all(isinstance(site, str) for site in sites):
        raise ValueError(f"attention_off must hold site names (strings), got {sorted(map(repr, sites))}")
    return sites


def parse_ablation_specs(specs: Iterable[str], skip_resolutions: Iterable[int], attention_sites: Iterable[str]) -> Ablation:
    """Build an Ablation from command-line specs, checked against a model's parts.

    Grammar (repeatable, combined): `skip:RES=SCALE` (e.g. skip:14=0, skip:28=0.5), `skip:all=SCALE`,
    `attn:SITE` (a name from `unet.attention_sites`), `attn:all`, `time`, `freeu` (the adapted paper
    preset, see `freeu_preset`), `freeu:RES=B,S` (FreeU's b and s at one decoder stage).
    """
    skip_resolutions, attention_sites = tuple(skip_resolutions), tuple(attention_sites)
    gains: dict[int, float] = {}
    sites: set[str] = set()
    time_off = False
    freeu = Ablation()
    for spec in specs:
        kind, _, rest = spec.partition(":")
        if kind == "time" and not rest:
            time_off = True
        elif kind == "freeu" and not rest:
            freeu = freeu.combined_with(freeu_preset(skip_resolutions))
        elif kind == "freeu" and "=" in rest:
            where, _, value = rest.partition("=")
            try:
                resolution = int(where)
                b, s = (float(v) for v in value.split(","))
            except ValueError:
                raise ValueError(f"--ablate {spec!r}: expected freeu:RES=B,S with numbers, e.g. freeu:7=1.2,0.9") from None
            freeu = freeu.combined_with(Ablation(backbone_scale={resolution: b}, skip_low_freq_scale={resolution: s}))
        elif kind == "attn" and rest:
            sites.update(attention_sites if rest == "all" else [rest])
        elif kind == "skip" and "=" in rest:
            where, _, value = rest.partition("=")
            try:
                gain = float(value)
                targets = skip_resolutions if where == "all" else [int(where)]
            except ValueError:
                raise ValueError(f"--ablate {spec!r}: expected skip:RES=SCALE with numbers, e.g. skip:14=0") from None
            for resolution in targets:
                gains[resolution] = gains.get(resolution, 1.0) * gain
        else:
            raise ValueError(f"--ablate {spec!r}: expected skip:RES=SCALE, skip:all=SCALE, attn:SITE, attn:all, time, "
                             "freeu or freeu:RES=B,S")
    ablation = Ablation(skip_scale=gains, attention_off=sites, time_embedding_off=time_off).combined_with(freeu)
    ablation.check_against(skip_resolutions, attention_sites)
    return ablation
