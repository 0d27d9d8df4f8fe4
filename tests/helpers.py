"""Tiny models and generated data for the tests (CPU, offline, seconds)."""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from transformers import DeiTConfig, DeiTForImageClassification, ViTConfig, ViTForImageClassification


def make_image_dataset(num_samples: int = 96, num_classes: int = 4, image_size: int = 16, seed: int = 0,
                       noise: float = 1.0) -> Dataset:
    """A `datasets.Dataset` of `pixel_values` (3 x S x S floats) and `label`: class templates plus noise.

    Easy and hard samples mixed (noise varies per sample), so per-sample losses spread out.
    """
    rng = np.random.default_rng(seed)
    templates = rng.normal(size=(num_classes, 3, image_size, image_size)).astype(np.float32)
    labels = np.arange(num_samples) % num_classes
    rng.shuffle(labels)
    scale = rng.uniform(0.2, 2.0, size=(num_samples, 1, 1, 1)).astype(np.float32) * noise
    pixels = templates[labels] + scale * rng.normal(size=(num_samples, 3, image_size, image_size)).astype(np.float32)
    return Dataset.from_dict({"pixel_values": pixels, "label": labels.astype(np.int64)}).with_format("torch")


def vit_config(num_classes: int = 4, image_size: int = 16, **overrides) -> ViTConfig:
    config = dict(image_size=image_size, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=64, num_labels=num_classes)
    config.update(overrides)
    return ViTConfig(**config)


def make_vit(num_classes: int = 4, image_size: int = 16, seed: int = 0, **overrides) -> ViTForImageClassification:
    torch.manual_seed(seed)
    return ViTForImageClassification(vit_config(num_classes, image_size, **overrides))


def make_deit(num_classes: int = 4, image_size: int = 16, seed: int = 0) -> DeiTForImageClassification:
    torch.manual_seed(seed)
    config = DeiTConfig(image_size=image_size, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, num_labels=num_classes)
    return DeiTForImageClassification(config)


def collate(features):
    """A user-style collate_fn that builds a fresh dict (drops any other key)."""
    return {
        "pixel_values": torch.stack([torch.as_tensor(f["pixel_values"]) for f in features]),
        "labels": torch.tensor([int(f["label"]) for f in features]),
    }


def accuracy(eval_pred):
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def augmented(dataset):
    """Random flip and noise drawn from the global torch RNG on every read (`set_transform`), the shape
    of the HF image recipe's random transforms."""
    dataset = dataset.with_format(None)

    def augment(batch):
        pixels = torch.tensor(np.asarray(batch["pixel_values"], dtype=np.float32))
        flip = torch.rand(len(pixels)) < 0.5
        pixels[flip] = pixels[flip].flip(-1)
        pixels = pixels + 0.3 * torch.randn_like(pixels)
        return {"pixel_values": list(pixels), "label": batch["label"]}

    dataset.set_transform(augment)
    return dataset
