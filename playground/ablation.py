"""What to switch off or scale in a U-Net, for one forward call.

An `Ablation` is a value, not a setting: it travels through `PlaygroundUNet.forward` as an argument,
so two users with two different ablations can share one model object at the same time. It is frozen
and hashable because the app uses it as a cache key. `Ablation()` is the intact network.

Vocabulary (the same names the state dict, the feature maps and the UI use):
- skip resolutions are pixel sizes, from `unet.skip_resolutions` (e.g. 28, 14, 7);
- attention sites are module paths, from `unet.attention_sites` (e.g. "mid_block.attentions.0").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping


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
    """

    skip_scale: tuple[tuple[int, float], ...] | Mapping[int, float] = field(default_factory=tuple)
    attention_off: frozenset[str] | Iterable[str] = field(default_factory=frozenset)
    time_embedding_off: bool = False

    def __post_init__(self):
        object.__setattr__(self, "skip_scale", _normalise_skip_scale(self.skip_scale))
        object.__setattr__(self, "attention_off", _normalise_sites(self.attention_off))
        if not isinstance(self.time_embedding_off, bool):
            raise ValueError(f"time_embedding_off must be True or False, got {self.time_embedding_off!r}")

    @property
    def is_intact(self) -> bool:
        return not (self.skip_scale or self.attention_off or self.time_embedding_off)

    def skip_gain(self, resolution: int) -> float:
        """The multiplier for skips joining at `resolution` (1.0 when not ablated)."""
        return dict(self.skip_scale).get(resolution, 1.0)

    def combined_with(self, other: "Ablation") -> "Ablation":
        """Both ablations at once: skip gains multiply, switched-off sets unite."""
        gains = dict(self.skip_scale)
        for resolution, gain in other.skip_scale:
            gains[resolution] = gains.get(resolution, 1.0) * gain
        return Ablation(
            skip_scale=gains,
            attention_off=self.attention_off | other.attention_off,
            time_embedding_off=self.time_embedding_off or other.time_embedding_off,
        )

    def check_against(self, skip_resolutions: Iterable[int], attention_sites: Iterable[str]) -> None:
        """Raise ValueError, listing the valid choices, if this names parts a model does not have."""
        skip_resolutions, attention_sites = tuple(skip_resolutions), tuple(attention_sites)
        unknown_resolutions = sorted(r for r, _ in self.skip_scale if r not in skip_resolutions)
        if unknown_resolutions:
            raise ValueError(
                f"skip_scale names resolution(s) {unknown_resolutions} that this model does not have; "
                f"valid skip resolutions: {sorted(skip_resolutions, reverse=True)}"
            )
        unknown_sites = sorted(self.attention_off - set(attention_sites))
        if unknown_sites:
            raise ValueError(
                f"attention_off names site(s) {unknown_sites} that this model does not have; "
                f"valid attention sites: {list(attention_sites) or 'none (this model has no attention)'}"
            )

    # JSON form, for configs (the training ablation of a variant) and shareable app state.
    def to_dict(self) -> dict:
        return {
            "skip_scale": {str(r): g for r, g in self.skip_scale},
            "attention_off": sorted(self.attention_off),
            "time_embedding_off": self.time_embedding_off,
        }

    @classmethod
    def from_dict(cls, data: Mapping | None) -> "Ablation":
        if not data:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError(f"an ablation must be a mapping, got {type(data).__name__}")
        unknown = set(data) - {"skip_scale", "attention_off", "time_embedding_off"}
        if unknown:
            raise ValueError(f"unknown ablation field(s) {sorted(unknown)}; valid: skip_scale, attention_off, time_embedding_off")
        return cls(
            skip_scale=data.get("skip_scale") or {},
            attention_off=data.get("attention_off") or (),
            time_embedding_off=data.get("time_embedding_off", False),
        )


def _normalise_skip_scale(skip_scale) -> tuple[tuple[int, float], ...]:
    if isinstance(skip_scale, Mapping):
        items = skip_scale.items()
    else:
        try:
            items = [tuple(pair) for pair in skip_scale]
        except TypeError:
            raise ValueError(f"skip_scale must map resolution -> scale, got {skip_scale!r}") from None
    normalised = {}
    for resolution, gain in items:
        try:
            resolution_int, gain_float = int(resolution), float(gain)
        except (TypeError, ValueError):
            raise ValueError(f"skip_scale entries must be resolution -> number, got {resolution!r}: {gain!r}") from None
        if resolution_int != float(resolution) or resolution_int <= 0:
            raise ValueError(f"skip_scale resolution must be a positive whole number of pixels, got {resolution!r}")
        if not math.isfinite(gain_float) or gain_float < 0:
            raise ValueError(f"skip_scale for resolution {resolution_int} must be a finite number >= 0, got {gain!r}")
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
    `attn:SITE` (a name from `unet.attention_sites`), `attn:all`, `time`.
    """
    skip_resolutions, attention_sites = tuple(skip_resolutions), tuple(attention_sites)
    gains: dict[int, float] = {}
    sites: set[str] = set()
    time_off = False
    for spec in specs:
        kind, _, rest = spec.partition(":")
        if kind == "time" and not rest:
            time_off = True
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
            raise ValueError(f"--ablate {spec!r}: expected skip:RES=SCALE, skip:all=SCALE, attn:SITE, attn:all or time")
    ablation = Ablation(skip_scale=gains, attention_off=sites, time_embedding_off=time_off)
    ablation.check_against(skip_resolutions, attention_sites)
    return ablation
