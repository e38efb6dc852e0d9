"""Our MNIST digit classifier: the judge of sample quality.

A small CNN (two conv stages, then a 128-d feature layer). Its softmax gives the "recognised with
confidence > 0.9" share and the class histogram of generated digits; its 128-d features are the space
where the Fréchet distance between generated and real digits is measured (FID's idea, with a judge
trained on the data at hand rather than ImageNet's Inception).

    python -m playground.classifier --out weights/classifier   # MNIST from the Hugging Face Hub (fetched once)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .checkpoint import CheckedLoading
from .cli import ShowDefaults
from .data import mnist


class DigitClassifier(CheckedLoading, ModelMixin, ConfigMixin):
    """(B, 1, 28, 28) images in [-1, 1] -> (B, num_classes) logits; `.features` gives the 128-d embedding."""

    @register_to_config
    def __init__(self, channels: tuple[int, int] = (32, 64), feature_dim: int = 128, num_classes: int = 10, dropout: float = 0.3):
        super().__init__()
        c1, c2 = channels
        self.stage1 = nn.Sequential(nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.Conv2d(c1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.stage2 = nn.Sequential(nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.embed = nn.Linear(c2 * 7 * 7, feature_dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) -> (B, feature_dim) after ReLU: the space Fréchet distances are measured in."""
        return F.relu(self.embed(self.stage2(self.stage1(images)).flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(images)))


def load_classifier(path: str | Path) -> DigitClassifier:
    model = DigitClassifier.from_pretrained(path, use_safetensors=True).eval()
    model.requires_grad_(False)
    return model


CONFIDENCE = 0.9  # a verdict counts as sure above this probability of its most likely digit
DIGIT_SHAPE = (1, 28, 28)  # what the classifier reads: its verdicts on any other kind of image mean nothing


@torch.inference_mode()
def classify(classifier: DigitClassifier, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 28, 28) -> class probabilities (N, 10) and features (N, D)."""
    images = images.clamp(-1, 1)
    features = classifier.features(images)
    return classifier.head(features).softmax(1), features


def confident_share(confidence: torch.Tensor) -> float:
    """Share of samples whose most likely digit has probability above CONFIDENCE (the classifier is sure)."""
    return (confidence > CONFIDENCE).double().mean().item()


def class_entropy(predicted: torch.Tensor, classes: int) -> float:
    """Entropy of the predicted-class histogram / log(classes): 1 when every class is predicted equally often."""
    histogram = torch.bincount(predicted, minlength=classes)
    share = histogram.double() / histogram.sum()
    seen = share[share > 0]
    # Σ p·log(1/p) rather than −Σ p·log p, which is −0.0 (printed "-0.000") when a single class takes every sample
    return (seen * seen.reciprocal().log()).sum().item() / math.log(classes)


@torch.inference_mode()
def accuracy(model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = sum((model(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum().item() for i in range(0, len(images), batch))
    return correct / len(images)


def train_classifier(data_dir, out, epochs=3, batch_size=128, lr=2e-3, seed=0, limit=None) -> dict:
    torch.manual_seed(seed)
    images, labels = mnist("train", data_dir, limit=limit)
    test_images, test_labels = mnist("test", data_dir, limit=limit)
    model = DigitClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(images) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1))
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        for i in range(len(images) // batch_size):
            index = order[i * batch_size:(i + 1) * batch_size]
            batch = images[index]
            # small random shifts (±2 px): generated digits are not always centred like MNIST's
            dx, dy = torch.randint(-2, 3, (2,), generator=generator).tolist()
            batch = torch.roll(batch, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(batch), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"epoch {epoch + 1}/{epochs} loss {loss.item():.4f} test accuracy {accuracy(model, test_images, test_labels):.4f}", flush=True)
    result = {"test_accuracy": accuracy(model, test_images, test_labels), "epochs": epochs,
              "train_images": len(images), "wall_seconds": round(time.perf_counter() - started, 1),
              "torch_threads": torch.get_num_threads()}
    model.save_pretrained(out, safe_serialization=True)
    (Path(out) / "training.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m playground.classifier", description="Train our MNIST digit classifier.",
                                formatter_class=ShowDefaults)
    p.add_argument("--data-dir", help="folder with the MNIST gzip IDX files (default: fetch MNIST from the Hugging Face "
                   "Hub once, ylecun/mnist at a pinned commit, cached under HF_HOME)")
    p.add_argument("--out", required=True, help="folder to write the classifier to")
    p.add_argument("--epochs", type=int, default=3, help="passes over the training set")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights and the data order")
    p.add_argument("--limit", type=int, help="train on the first N images only")
    args = p.parse_args(argv)
    try:
        print(json.dumps(train_classifier(args.data_dir, args.out, epochs=args.epochs, seed=args.seed, limit=args.limit)))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
