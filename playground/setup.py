"""The whole state of a playground session as one JSON value: copy it, paste it back, pass it to a CLI.

`PlaygroundSetup` holds what determines the pixels: model, seed, sampler, steps, batch, digit, guidance,
the ablation (FreeU gains included), its t-window, a timestep lie and an h-space edit. The h-space edit is
stored as a *recipe* (which principal component, how strong, probed where), not as a direction tensor, so
the JSON stays a few hundred bytes and means the same thing on any machine.

`LESSONS` are named setups that open the playground on one question each. The CLIs accept
`--setup file.json`; flags given explicitly override its fields (`add_setup_arguments`, `setup_from_arguments`).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Mapping

from .ablation import Ablation, parse_ablation_specs
from .sampling import DiffusionModel, SampleSettings, TimestepLie, Window, load_pipeline

DEFAULT_WEIGHTS = Path("weights")


@dataclass(frozen=True)
class HSpaceRecipe:
    """How to make an h-space edit: PCA of the bottleneck over `probe_samples` unconditional samples at
    `probe_t`, then `strength` standard deviations of principal `component` added while t is in `window`."""

    component: int = 0
    strength: float = 2.0
    probe_t: int = 500
    probe_samples: int = 64
    window: Window | None = None

    def __post_init__(self):
        for name, low in (("component", 0), ("probe_t", 0), ("probe_samples", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"h_edit {name} must be a whole number >= {low}, got {value!r}")
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) or not math.isfinite(self.strength):
            raise ValueError(f"h_edit strength must be a finite number, got {self.strength!r}")
        object.__setattr__(self, "window", Window.of(self.window, "h_edit window"))


@dataclass(frozen=True)
class PlaygroundSetup:
    """Everything that determines what the playground shows. Invalid values raise ValueError naming the field.

    model: a folder name under weights/ (or a pipeline folder path, for the CLIs). digit: 0-9, or None for
    no digit. window: the t-window of the ablation (None: every step).
    """

    model: str = "mnist"
    seed: int = 0
    sampler: str = "ddim"
    steps: int = 50
    batch: int = 16
    digit: int | None = None
    guidance: float = 1.5
    ablation: Ablation = field(default_factory=Ablation)
    window: Window | None = None
    timestep_lie: TimestepLie | None = None
    h_edit: HSpaceRecipe | None = None

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model must be a non-empty name, got {self.model!r}")
        if self.digit is not None and (isinstance(self.digit, bool) or not isinstance(self.digit, int) or self.digit < 0):
            raise ValueError(f"digit must be a whole number >= 0 or None, got {self.digit!r}")
        if not isinstance(self.ablation, Ablation):
            raise ValueError(f"ablation must be an Ablation, got {type(self.ablation).__name__}")
        object.__setattr__(self, "window", Window.of(self.window, "window"))
        if self.timestep_lie is not None and not isinstance(self.timestep_lie, TimestepLie):
            raise ValueError(f"timestep_lie must be a TimestepLie or None, got {type(self.timestep_lie).__name__}")
        if self.h_edit is not None and not isinstance(self.h_edit, HSpaceRecipe):
            raise ValueError(f"h_edit must be an HSpaceRecipe or None, got {type(self.h_edit).__name__}")
        self._settings()  # sampler, steps, batch, seed and guidance are checked (and named) there

    def _settings(self, h_edit=None) -> SampleSettings:
        return SampleSettings(sampler=self.sampler, steps=self.steps, seed=self.seed, batch=self.batch, label=self.digit,
                              guidance=self.guidance, ablation=self.ablation, ablation_window=self.window,
                              timestep_lie=self.timestep_lie, h_edit=h_edit)

    def sample_settings(self, model: DiffusionModel | None = None, progress=None) -> SampleSettings:
        """The SampleSettings this setup means. An h-space edit needs `model` (its probe runs the model once)."""
        if self.h_edit is None:
            return self._settings()
        if model is None:
            raise ValueError("h_edit: the model is needed to compute the edit's direction")
        from .explore import hspace_probe  # explore builds on sampling; imported here to keep the JSON layer light

        recipe = self.h_edit
        probe_settings = SampleSettings(sampler=self.sampler, steps=self.steps, seed=self.seed, batch=recipe.probe_samples,
                                        guidance=self.guidance)
        probe = hspace_probe(model, probe_settings, recipe.probe_t, components=recipe.component + 1, progress=progress)
        if recipe.component >= len(probe.components):
            raise ValueError(f"h_edit component must be below {len(probe.components)} for {recipe.probe_samples} probe samples")
        return self._settings(probe.edit(recipe.component, recipe.strength, recipe.window))

    def check_against(self, model: DiffusionModel) -> None:
        """Raise ValueError, naming the field, if this setup asks for parts or labels the model does not have."""
        unet = model.unet
        self.ablation.check_against(unet.skip_resolutions, unet.attention_sites)
        if self.digit is not None:
            if model.null_label is None:
                raise ValueError(f"digit: model {model.name!r} is not class-conditional; use digit null")
            if self.digit >= model.null_label:
                raise ValueError(f"digit must be from 0 to {model.null_label - 1}, got {self.digit}")
        if self.h_edit is not None and unet.mid_block is None:
            raise ValueError(f"h_edit: model {model.name!r} has no mid block (no h-space)")

    # --- JSON ------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        def window(w):
            return None if w is None else [w.t_min, w.t_max]

        return {
            "model": self.model, "seed": self.seed, "sampler": self.sampler, "steps": self.steps, "batch": self.batch,
            "digit": self.digit, "guidance": self.guidance, "ablation": self.ablation.to_dict(),
            "window": window(self.window),
            "timestep_lie": None if self.timestep_lie is None else {"offset": self.timestep_lie.offset, "fixed": self.timestep_lie.fixed},
            "h_edit": None if self.h_edit is None else {
                "component": self.h_edit.component, "strength": self.h_edit.strength, "probe_t": self.h_edit.probe_t,
                "probe_samples": self.h_edit.probe_samples, "window": window(self.h_edit.window)},
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping) -> "PlaygroundSetup":
        if not isinstance(data, Mapping):
            raise ValueError(f"a setup must be a JSON object, got {type(data).__name__}")
        _check_fields(cls, data, "setup")
        values = {k: v for k, v in data.items() if k in ("model", "seed", "sampler", "steps", "batch", "digit", "guidance")}
        if "ablation" in data:
            try:
                values["ablation"] = Ablation.from_dict(data["ablation"])
            except ValueError as error:
                raise ValueError(f"ablation: {error}") from None
        if data.get("window") is not None:
            values["window"] = Window.of(data["window"], "window")
        if data.get("timestep_lie") is not None:
            values["timestep_lie"] = _from_mapping(TimestepLie, data["timestep_lie"], "timestep_lie")
        if data.get("h_edit") is not None:
            values["h_edit"] = _from_mapping(HSpaceRecipe, data["h_edit"], "h_edit")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "PlaygroundSetup":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as error:
            raise ValueError(f"setup: not valid JSON ({error})") from None
        except RecursionError:  # a short text can nest deeper than the parser's stack: "[[[[…"
            raise ValueError("setup: nested too deeply to be a setup (a setup is one flat object of a few fields)") from None
        try:
            return cls.from_dict(data)
        except RecursionError:
            raise ValueError("setup: nested too deeply to be a setup (a setup is one flat object of a few fields)") from None

    @classmethod
    def load(cls, path: str | Path) -> "PlaygroundSetup":
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise ValueError(f"setup: cannot read {path} ({error.strerror or error})") from None
        return cls.from_json(text)


def _check_fields(kind, data: Mapping, name: str) -> None:
    valid = [f.name for f in fields(kind)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ValueError(f"unknown {name} field(s) {unknown}; valid: {', '.join(valid)}")


def _from_mapping(kind, data, name: str):
    if not isinstance(data, Mapping):
        raise ValueError(f"{name} must be a JSON object or null, got {data!r}")
    _check_fields(kind, data, name)
    values = dict(data)
    if values.get("window") is not None:
        values["window"] = Window.of(values["window"], f"{name} window")
    try:
        return kind(**values)
    except TypeError as error:
        raise ValueError(f"{name}: {error}") from None


# ---------------------------------------------------------------------------------------------
# Lessons: one question each, as a setup of the flagship model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lesson:
    """A question to predict before the run (`question`), the setup that answers it, and what to look for after."""

    title: str
    explanation: str
    setup: PlaygroundSetup
    question: str


_FLAGSHIP_RESOLUTIONS = (28, 14, 7)
_FLAGSHIP_ATTENTION = (
    "down_blocks.1.attentions.0", "down_blocks.2.attentions.0", "mid_block.attentions.0",
    "up_blocks.0.attentions.0", "up_blocks.0.attentions.1", "up_blocks.1.attentions.0", "up_blocks.1.attentions.1",
)

LESSONS: dict[str, Lesson] = {
    "what skips do": Lesson(
        "What skips do",
        "Every skip connection is switched off: the decoder must rebuild the digit from the 7×7 bottleneck "
        "alone. Compare x̂0 of A and B early and late: what survives without what the encoder used to hand "
        "across, and what is lost? When do skips matter? The literature says at small t, where fine detail is "
        "drawn; find out for this model: press the window sweep and see in which windows of t switching "
        "the skips off changes the digit.",
        # batch 4: few enough samples to look at each one
        PlaygroundSetup(digit=3, seed=0, batch=4, ablation=Ablation(skip_scale={r: 0.0 for r in _FLAGSHIP_RESOLUTIONS})),
        "Every skip is switched off, at 28×28, 14×14 and 7×7: the decoder gets only what the bottleneck kept. "
        "What will B draw for the digit 3: a blurred 3, a sharp 3, another digit, or no digit at all?",
    ),
    "what attention does": Lesson(
        "What attention does",
        "Every self-attention layer is bypassed: each position sees only its convolutional neighbourhood. "
        "Watch whether strokes far apart still belong to one digit, and at which t the samples drift from "
        "the intact run.",
        PlaygroundSetup(digit=8, seed=0, batch=4, ablation=Ablation(attention_off=_FLAGSHIP_ATTENTION)),
        "Every attention layer is switched off. An 8 has two loops far apart: will B still close both, "
        "and will its samples stay near A's?",
    ),
    "what time conditioning does": Lesson(
        "What time conditioning does",
        "The time embedding is replaced by zeros: the network no longer knows how noisy its input is, so "
        "it must guess the noise level from the image. Then try a timestep lie (tell it t' = t + 300) to see "
        "ε̂ mis-scaled and x̂0 over- or under-denoised while the scheduler still steps at the true t.",
        PlaygroundSetup(digit=5, seed=0, batch=4, ablation=Ablation(time_embedding_off=True)),
        "B no longer knows the timestep: it must tell how noisy x_t is from the picture alone. Will it still "
        "draw a clean 5, and at which steps will its x̂0 be furthest from A's?",
    ),
}


# ---------------------------------------------------------------------------------------------
# Command line: --setup file.json, explicit flags override
# ---------------------------------------------------------------------------------------------


def add_setup_arguments(parser: argparse.ArgumentParser, batch_flag: str | None = "--num", window_flag: bool = True) -> None:
    """The setup's fields as flags (all optional; a given flag overrides `--setup`'s value).

    window_flag: offer --window for the ablation's t-window; a CLI whose --window means another window leaves it out
    (a --setup file's window still applies).
    """
    parser.add_argument("--setup", help="a PlaygroundSetup JSON file; flags given explicitly override its fields")
    parser.add_argument("--model", help="pipeline folder, e.g. weights/mnist (default: the setup's model under weights/)")
    parser.add_argument("--sampler", help="ddim (default), ddpm or dpm++")
    parser.add_argument("--steps", type=int, help="sampling steps (default 50)")
    parser.add_argument("--seed", type=int, help="noise seed (default 0)")
    if batch_flag:
        parser.add_argument(batch_flag, dest="batch", type=int, help="samples in the batch (default 16)")
    parser.add_argument("--digit", type=int, help="the digit to draw (class-conditional models); default: no digit")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 1.5)")
    parser.add_argument("--ablate", action="append", default=[], metavar="SPEC",
                        help="skip:RES=SCALE, skip:all=SCALE, attn:SITE, attn:all, time, freeu, freeu:RES=B,S "
                             "(repeatable; replaces the setup's ablation)")
    if window_flag:
        parser.add_argument("--window", metavar="T_MIN:T_MAX", help="apply the ablation only for T_MIN <= t <= T_MAX")
    parser.add_argument("--lie-offset", type=int, help="timestep lie: tell the model t + OFFSET")
    parser.add_argument("--lie-fixed", type=int, help="timestep lie: tell the model this fixed t'")


def setup_from_arguments(args: argparse.Namespace, weights_root: Path = DEFAULT_WEIGHTS) -> tuple[PlaygroundSetup, DiffusionModel]:
    """The setup file (or the default setup) with explicit flags applied, checked against the loaded model."""
    setup = PlaygroundSetup.load(args.setup) if args.setup else PlaygroundSetup()
    overrides = {name: getattr(args, name) for name in ("sampler", "steps", "seed", "batch", "digit", "guidance")
                 if getattr(args, name, None) is not None}
    if getattr(args, "window", None) is not None:
        t_min, colon, t_max = args.window.partition(":")
        try:
            overrides["window"] = Window(int(t_min), int(t_max))
        except ValueError as error:
            raise ValueError(f"--window expects T_MIN:T_MAX with whole numbers, got {args.window!r}"
                             + ("" if not colon else f" ({error})")) from None
    if args.lie_offset is not None or args.lie_fixed is not None:
        overrides["timestep_lie"] = TimestepLie(offset=args.lie_offset or 0, fixed=args.lie_fixed)
    setup = replace(setup, **overrides)

    path = Path(args.model) if args.model else Path(setup.model)
    if not args.model and not path.is_dir() and (weights_root / setup.model).is_dir():
        path = weights_root / setup.model
    model = load_pipeline(path)
    setup = replace(setup, model=model.name)
    if args.ablate:
        setup = replace(setup, ablation=parse_ablation_specs(args.ablate, model.unet.skip_resolutions, model.unet.attention_sites))
    setup.check_against(model)
    return setup, model
