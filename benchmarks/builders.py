"""Data and models of the benchmarks, built once and outside every timed region.

The reference workload (`flags.Workload`): a small ViT (or DeiT) built from a config, trained
from scratch on formula-driven fractal images (`kakurenbo_hf.data.make_fractal_dataset`) or on
class templates plus noise (`--dataset synthetic`). Images are converted once to normalised
float tensors and held in memory (`--data-format memory`, the default) or as a torch-formatted
Arrow `datasets.Dataset` (`--data-format arrow`, what most Hugging Face scripts use). Both
trainers read the same rows through the same collate function.

The loading-bound job (`linear_dataset`, `LinearClassifier`): a linear classifier on a large
Arrow dataset of fixed-size float vectors, where reading and collating rows costs more than the
model's step.
"""

from __future__ import annotations

import functools
import time

import numpy as np

from .flags import Workload


class TensorRows:
    """A map-style dataset of in-memory tensors: rows are dicts, batched reads in one indexing."""

    def __init__(self, pixel_values, labels):
        self.pixel_values = pixel_values
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}

    def __getitems__(self, indices) -> list[dict]:
        return [{"pixel_values": self.pixel_values[i], "labels": self.labels[i]} for i in indices]


def collate(features: list[dict]) -> dict:
    """A user-style collate_fn (builds a fresh dict), identical for every trainer."""
    import torch

    return {
        "pixel_values": torch.stack([torch.as_tensor(f["pixel_values"]) for f in features]),
        "labels": torch.as_tensor([int(f["labels"]) for f in features], dtype=torch.long),
    }


def images_to_array(images, image_size: int) -> np.ndarray:
    """PIL images -> (N, 3, S, S) float32 in [-1, 1]."""
    array = np.stack([np.asarray(img.convert("RGB").resize((image_size, image_size))) for img in images])
    array = array.astype(np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(array.transpose(0, 3, 1, 2))


def _synthetic_arrays(w: Workload):
    rng = np.random.default_rng(w.data_seed)
    templates = rng.normal(size=(w.num_classes, 3, w.image_size, w.image_size)).astype(np.float32)

    def split(per_class):
        labels = np.tile(np.arange(w.num_classes), per_class)
        scale = rng.uniform(0.3, 2.5, size=(labels.size, 1, 1, 1)).astype(np.float32)
        noise = rng.normal(size=(labels.size, 3, w.image_size, w.image_size)).astype(np.float32)
        return (templates[labels] + scale * noise).astype(np.float32), labels.astype(np.int64)

    return split(w.instances_per_class), split(w.test_instances_per_class)


def prepare_data(w: Workload):
    """(train, test) datasets of `pixel_values` (float tensors) and `labels`; built once, untimed."""
    import torch

    started = time.perf_counter()
    if w.dataset == "fractal":
        from kakurenbo_hf.data import make_fractal_dataset

        splits = make_fractal_dataset(
            num_classes=w.num_classes,
            instances_per_class=w.instances_per_class,
            image_size=w.image_size,
            seed=w.data_seed,
            test_instances_per_class=w.test_instances_per_class,
            cache_dir=w.cache_dir,
        )
        arrays = []
        for name in ("train", "test"):
            split = splits[name]
            arrays.append((images_to_array(split["image"], w.image_size), np.asarray(split["label"], dtype=np.int64)))
    else:
        arrays = list(_synthetic_arrays(w))
    out = []
    for x, y in arrays:
        if w.data_format == "memory":
            out.append(TensorRows(torch.from_numpy(x), torch.from_numpy(y)))
        else:
            from datasets import Dataset

            out.append(Dataset.from_dict({"pixel_values": x, "labels": y}).with_format("torch"))
    w.extra["data_prepare_seconds"] = time.perf_counter() - started
    return out[0], out[1]


def build_model(w: Workload, seed: int):
    """A freshly initialised ViT/DeiT classifier (seeded: same weights for every method)."""
    import torch
    from transformers import DeiTConfig, DeiTForImageClassification, ViTConfig, ViTForImageClassification

    config_cls, model_cls = (ViTConfig, ViTForImageClassification) if w.model == "vit" else (
        DeiTConfig,
        DeiTForImageClassification,
    )
    config = config_cls(
        image_size=w.image_size,
        patch_size=w.patch_size,
        num_channels=3,
        hidden_size=w.hidden_size,
        num_hidden_layers=w.num_layers,
        num_attention_heads=w.num_heads,
        intermediate_size=w.mlp_ratio * w.hidden_size,
        num_labels=w.num_classes,
    )
    torch.manual_seed(seed)
    return model_cls(config)


def accuracy_metric(eval_pred) -> dict:
    """`compute_metrics` of the classification benchmarks: top-1 accuracy."""
    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


# --- the loading-bound job ---------------------------------------------------------------------

LINEAR_FORMATS = ("python", "numpy", "torch")


def linear_dataset(num_samples: int, num_features: int, num_classes: int = 2, seed: int = 0,
                   data_format: str = "torch"):
    """A `datasets.Dataset` of `num_samples` rows: `inputs` (a fixed-size list of `num_features`
    float32, standard normal) and `label` (int64, the argmax of a fixed random linear map of the
    inputs: separable, so most samples become confidently correct after an epoch and hiding hides
    its full fraction). Built from Arrow arrays directly (no Python rows), in `data_format`
    (`python`: lists, what an unformatted dataset returns; `numpy`; `torch`)."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(num_samples, num_features)).astype(np.float32)
    teacher = rng.normal(size=(num_features, num_classes)).astype(np.float32)
    labels = np.argmax(inputs @ teacher, axis=1).astype(np.int64)
    table = pa.table({"inputs": pa.FixedSizeListArray.from_arrays(pa.array(inputs.reshape(-1)), num_features),
                      "label": pa.array(labels)})
    dataset = Dataset(InMemoryTable(table))
    return dataset if data_format == "python" else dataset.with_format(data_format)


@functools.cache
def _linear_classes():
    """`LinearConfig` and `LinearClassifier`, defined on first use (transformers is imported late)."""
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import SequenceClassifierOutput

    class LinearConfig(PretrainedConfig):
        model_type = "kakurenbo_benchmark_linear"

        def __init__(self, num_features: int = 8, num_labels: int = 2, **kwargs):
            super().__init__(num_labels=num_labels, **kwargs)
            self.num_features = num_features

    class LinearClassifier(PreTrainedModel):
        """`inputs` (batch, features) -> logits (batch, classes); cross-entropy with `labels`."""

        config_class = LinearConfig
        base_model_prefix = "linear"

        def __init__(self, config):
            super().__init__(config)
            self.classifier = nn.Linear(config.num_features, config.num_labels)
            self.post_init()

        def forward(self, inputs, labels=None, **kwargs):
            logits = self.classifier(inputs)
            loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
            return SequenceClassifierOutput(loss=loss, logits=logits)

    return LinearConfig, LinearClassifier


def build_linear_model(num_features: int, num_classes: int, seed: int):
    """A freshly initialised `LinearClassifier` (a tiny `PreTrainedModel`; seeded: same weights for both
    trainers). Its outputs are logits + loss, so the built-in classification statistics apply."""
    import torch

    config_cls, model_cls = _linear_classes()
    torch.manual_seed(seed)
    return model_cls(config_cls(num_features=num_features, num_labels=num_classes))
