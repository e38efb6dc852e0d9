"""U-Net Diffusion Playground: a diffusers-compatible U-Net you can look inside and take apart."""

from .ablation import Ablation, freeu_preset
from .unet import PlaygroundUNet, PlaygroundUNetOutput, feature_group
from .sampling import (Comparison, DiffusionModel, HSpaceEdit, SampleSettings, TimestepLie, Trajectory, Window, compare,
                       features_at, load_pipeline, sample)
from .trajectories import TrajectoryCache
from .setup import LESSONS, PlaygroundSetup
from .network_thread import NetworkThread

__all__ = [
    "Ablation", "Comparison", "DiffusionModel", "PlaygroundUNet", "PlaygroundUNetOutput", "SampleSettings", "Trajectory",
    "TrajectoryCache", "NetworkThread",
    "compare", "feature_group", "features_at", "load_pipeline", "sample",
    "HSpaceEdit", "LESSONS", "PlaygroundSetup", "TimestepLie", "Window", "freeu_preset",
]
