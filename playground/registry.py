"""The models in a weights folder: found by their layout, loaded once, failures kept with their reason.

A folder counts as a diffusion model when it holds `model_index.json` and `unet/`; the digit classifier
lives in `classifier/`. Names are folder names; a user's choice is looked up among them, never joined
onto a path, so no input can reach the filesystem.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from .classifier import DigitClassifier, load_classifier
from .classifier import DIGIT_SHAPE
from .data import HELDOUT_DIR, load_mnist
from .sampling import DiffusionModel, load_pipeline
from .trajectories import TrajectoryCache



class ModelRegistry:
    """Discovers pipeline folders under `root`; loads each on first use, thread-safely, at most once.

    `trajectories` keeps what these models computed, for every caller of this registry (see TrajectoryCache).
    `prefetch`: whether a server on this registry computes the runs a visitor may ask for next in its idle
    time (see NetworkThread); off for a library caller, who asks for exactly what it needs.
    """

    def __init__(self, root: str | Path, trajectory_cache_bytes: int = 64 * 2**20, prefetch: bool = False):
        self.root = Path(root)
        self.trajectories = TrajectoryCache(trajectory_cache_bytes)
        self.prefetch = prefetch
        self._lock = threading.Lock()
        self._models: dict[str, DiffusionModel] = {}
        self._errors: dict[str, str] = {}
        self._classifier: DigitClassifier | None = None
        self._probes: dict[str, object] = {}
        self._heldout: tuple[torch.Tensor, torch.Tensor] | None = None
        self.names = sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and (p / "model_index.json").is_file()
        ) if self.root.is_dir() else []

    def load_all(self) -> dict[str, str]:
        """Try every model; returns name -> error message for those that failed."""
        for name in self.names:
            try:
                self.get(name)
            except ValueError:
                pass
        self.classifier()
        return dict(self._errors)

    @property
    def available(self) -> list[str]:
        return [n for n in self.names if n not in self._errors]

    @property
    def errors(self) -> dict[str, str]:
        return dict(self._errors)

    def get(self, name: str) -> DiffusionModel:
        if name not in self.names:
            raise ValueError(f"unknown model {name!r}; available: {self.names or 'none'}")
        with self._lock:
            if name in self._errors:
                raise ValueError(f"model {name!r} failed to load: {self._errors[name]}")
            if name not in self._models:
                try:
                    self._models[name] = load_pipeline(self.root / name, name=name)
                except Exception as error:  # any broken file must not take the app down
                    self._errors[name] = self._public_message(error)
                    raise ValueError(f"model {name!r} failed to load: {self._errors[name]}") from None
            return self._models[name]

    def classifier(self) -> DigitClassifier | None:
        """Our digit classifier, or None when the weights folder has none or a broken one (quality numbers are then off)."""
        with self._lock:
            if self._classifier is None and "classifier" not in self._errors and (self.root / "classifier").is_dir():
                try:
                    self._classifier = load_classifier(self.root / "classifier")
                except Exception as error:  # a broken judge switches the quality numbers off, not the app
                    self._errors["classifier"] = self._public_message(error)
            return self._classifier

    def _public_message(self, error: Exception) -> str:
        """The first line of a load error, with paths shown from the weights folder: the server's own
        directory layout is nobody's business on a public page."""
        message = f"{type(error).__name__}: {error}".replace(str(self.root.resolve()), self.root.name)
        return message.replace(str(self.root), self.root.name).splitlines()[0][:400]

    def classifier_for(self, model: DiffusionModel):
        """Our digit classifier where its verdicts mean something, on models that draw MNIST-shaped images; else None."""
        return self.classifier() if model.image_shape == DIGIT_SHAPE else None

    def probes_for(self, model: DiffusionModel):
        """The linear probes shipped beside a model (`<model>/probes`, playground.probes), or None if it has none.
        A broken probes folder is an error about the probes, not the model: the model still serves."""
        from .probes import LinearProbes  # the probes' own imports (matplotlib figures) are no part of loading models

        folder = self.root / model.name / "probes"
        key = f"{model.name}/probes"
        with self._lock:
            if key not in self._probes and key not in self._errors and folder.is_dir():
                try:
                    self._probes[key] = LinearProbes.load(folder)
                except Exception as error:
                    self._errors[key] = self._public_message(error)
            if key in self._errors:
                raise ValueError(f"probes of {model.name!r} failed to load: {self._errors[key]}")
            return self._probes.get(key)

    def heldout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out MNIST test digits shipped with the library (for ε-error in the app)."""
        with self._lock:
            if self._heldout is None:
                self._heldout = load_mnist(HELDOUT_DIR, "test")
            return self._heldout
