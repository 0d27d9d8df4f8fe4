"""Tiny models, generated data and training arguments for the tests (CPU, offline, seconds)."""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DeiTConfig,
    DeiTForImageClassification,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
)

from kakurenbo_hf import KakurenboTrainingArguments

# A tiny, quiet, deterministic CPU run: the base of every `training_args`.
TINY_RUN = dict(per_device_train_batch_size=16, learning_rate=3e-3, use_cpu=True, report_to=[], logging_steps=1,
                save_strategy="no", seed=7, disable_tqdm=True, dataloader_pin_memory=False, num_train_epochs=3)


def training_args(output_dir, *presets: dict, cls: type[TrainingArguments] = KakurenboTrainingArguments,
                  **overrides) -> TrainingArguments:
    """The training arguments of an in-process test run: `cls(output_dir=str(output_dir), **values)`.

    values: `TINY_RUN`, updated by each preset in turn (a dict of a test module's own defaults), then
    by the keyword `overrides` (any field of `cls`).
    cls: `KakurenboTrainingArguments` (default) or `TrainingArguments`, for the plain Trainer's run.

        training_args(tmp_path / "out", hiding_fraction=0.3)
        training_args(tmp_path / "plain", cls=TrainingArguments, num_train_epochs=1)
        training_args(out, RESUME_RUN, save_steps=3)   # RESUME_RUN: a dict of the module's defaults
    """
    values = dict(TINY_RUN)
    for preset in presets:
        values.update(preset)
    values.update(overrides)
    return cls(output_dir=str(output_dir), **values)


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


def make_text_dataset(num_samples=96, seed=0):
    """Token sequences of very different lengths; the label is whether token 5 appears."""
    rng = np.random.default_rng(seed)
    rows = {"input_ids": [], "label": []}
    for _ in range(num_samples):
        length = int(rng.choice([4, 8, 16, 40]))
        ids = rng.integers(6, 50, size=length)
        label = int(rng.random() < 0.5)
        if label:
            ids[rng.integers(length)] = 5
        rows["input_ids"].append([2] + ids.tolist())
        rows["label"].append(label)
    return Dataset.from_dict(rows)


def pad_collate(features):
    """A padding collator (as DataCollatorWithPadding): pads to the longest row of the batch."""
    longest = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros(len(features), longest, dtype=torch.long)
    mask = torch.zeros(len(features), longest, dtype=torch.long)
    for row, feature in enumerate(features):
        ids[row, : len(feature["input_ids"])] = torch.tensor(feature["input_ids"])
        mask[row, : len(feature["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([f["label"] for f in features])}


def make_bert(seed=0) -> BertForSequenceClassification:
    """A tiny BERT sequence classifier (2 labels) for `make_text_dataset`."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(config)


def logged(trainer, key):
    """(step, value) of every log entry of `trainer` that has `key`."""
    return [(e["step"], e[key]) for e in trainer.state.log_history if key in e]
