"""U-Net Diffusion Playground: a diffusers-compatible U-Net you can look inside and take apart."""

from .ablation import Ablation
from .unet import PlaygroundUNet, PlaygroundUNetOutput, feature_group
from .sampling import Comparison, DiffusionModel, SampleSettings, Trajectory, compare, features_at, load_pipeline, sample

__all__ = [
    "Ablation", "Comparison", "DiffusionModel", "PlaygroundUNet", "PlaygroundUNetOutput", "SampleSettings", "Trajectory",
    "compare", "feature_group", "features_at", "load_pipeline", "sample",
]
