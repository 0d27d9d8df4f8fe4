#!/usr/bin/env python
"""Semantic segmentation with KAKURENBO sample hiding: the paper's segmentation setting (DeepCAM,
per-pixel segmentation of extreme-weather patterns in climate fields), small, with the Hugging Face
semantic-segmentation recipe's arguments (transformers'
examples/pytorch/semantic-segmentation/run_semantic_segmentation.py) and `KakurenboTrainer`.

Default run (no arguments; nothing is downloaded): generated 4-channel "climate" fields (smooth
random backgrounds, DeepCAM's three classes: background, tropical cyclone (a vortex: pressure low,
ring of strong wind), atmospheric river (a long moist band)), 64 x 64, per-pixel masks with an
ignored border (label 255, the model's `semantic_loss_ignore_index`); a SegFormer built from a
`SegformerConfig` (random init); hiding on. A fraction of the training masks is wrong
(`--noisy_mask_fraction`: the mask of another sample, as a mislabelled annotation); the script
prints how many clean and mislabelled samples were hidden, the validation mean IoU and pixel
accuracy, and with `--compare_plain` the plain `Trainer`'s side by side:

    python examples/semantic_segmentation.py
    python examples/semantic_segmentation.py --compare_plain

The per-sample statistics are built in (`kakurenbo_hf.tasks.SegmentationStatistics`, detected
from the model): the mean per-pixel cross-entropy over the sample's non-ignored pixels (logits
upsampled to the mask size, as the model's loss does); confidence = the class-balanced pixel
accuracy (the mean, over the classes present in the sample's mask, of the fraction of their
pixels predicted right); "correct" when that accuracy is at least 0.5. A sample is hidden when it
is among the lowest-loss ones and its class-balanced accuracy is at least tau = 0.7: on masks that
are mostly background, plain pixel accuracy would pass 0.7 before any cyclone or river is found
(`--statistics_confidence accuracy` uses it, to compare; docs/tasks.md). The "pixel accuracy"
the script prints after evaluation is the validation metric of `compute_metrics`, not the
statistic.

Other data / models (the recipe's arguments; columns `pixel_values`-able images and masks):

    python examples/semantic_segmentation.py --dataset_name scene_parse_150 \
        --model_name_or_path nvidia/mit-b0 --do_train --do_eval --output_dir out ...

Defaults: `DEFAULT_ARGS` (12 epochs, lr 2e-3, batch 16, no checkpoints, seed 42, output
outputs/semantic_segmentation); every flag you pass overrides them.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import transformers
from transformers import (
    AutoModelForSemanticSegmentation,
    SegformerConfig,
    SegformerForSemanticSegmentation,
    Trainer,
    TrainingArguments,
)
from transformers.utils import logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from image_classification import parse_args, require_work, setup_logging  # noqa: E402

from kakurenbo_hf import KakurenboTrainer, KakurenboTrainingArguments  # noqa: E402
from kakurenbo_hf.tasks import SegmentationStatistics  # noqa: E402

logger = logging.get_logger("semantic_segmentation")

DEFAULT_OUTPUT_DIR = "outputs/semantic_segmentation"
DEFAULT_ARGS = [
    "--num_train_epochs", "12",
    "--learning_rate", "2e-3",
    "--lr_scheduler_type", "cosine",
    "--weight_decay", "0.01",
    "--warmup_steps", "0.05",
    "--per_device_train_batch_size", "16",
    "--per_device_eval_batch_size", "32",
    "--eval_strategy", "no",
    "--save_strategy", "no",
    "--logging_strategy", "epoch",
    "--dataloader_num_workers", "0",
    "--remove_unused_columns", "false",
    "--report_to", "none",
    "--seed", "42",
]

CLASSES = ["background", "tropical_cyclone", "atmospheric_river"]
IGNORE_INDEX = 255


def _smooth_field(rng, size, scale):
    """A smooth random field: white noise low-passed in Fourier space."""
    noise = rng.normal(size=(size, size))
    fx = np.fft.fftfreq(size)[:, None]
    fy = np.fft.fftfreq(size)[None, :]
    spectrum = np.fft.fft2(noise) * np.exp(-(fx ** 2 + fy ** 2) * scale)
    field_ = np.real(np.fft.ifft2(spectrum))
    return (field_ - field_.mean()) / (field_.std() + 1e-6)


def make_climate_fields(num_samples=480, size=64, seed=0, border=2):
    """(fields (N, 4, S, S) float32, masks (N, S, S) int64): DeepCAM-like climate patterns.

    Channels: 0 pressure, 1 wind speed, 2 moisture, 3 temperature. Each sample holds 0-2 cyclones
    and 0-1 atmospheric river over a smooth background; the `border` outermost pixels are ignored.
    """
    rng = np.random.default_rng(seed)
    fields = np.zeros((num_samples, 4, size, size), dtype=np.float32)
    masks = np.zeros((num_samples, size, size), dtype=np.int64)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for i in range(num_samples):
        for c in range(4):
            fields[i, c] = 0.6 * _smooth_field(rng, size, scale=400.0)
        for _ in range(rng.integers(0, 3)):  # tropical cyclones
            cy, cx = rng.uniform(8, size - 8, 2)
            radius = rng.uniform(4, 8)
            distance = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
            core = distance < radius
            fields[i, 0] -= 2.5 * np.exp(-(distance / radius) ** 2)
            fields[i, 1] += 2.0 * np.exp(-((distance - 0.6 * radius) / (0.4 * radius)) ** 2)
            masks[i][core] = 1
        if rng.random() < 0.7:  # an atmospheric river: a long band across the field
            angle = rng.uniform(-0.6, 0.6)
            offset = rng.uniform(size * 0.25, size * 0.75)
            width = rng.uniform(2.0, 4.0)
            distance = np.abs((yy - offset) - np.tan(angle) * (xx - size / 2)) * np.cos(angle)
            band = distance < width
            fields[i, 2] += 2.0 * np.exp(-(distance / width) ** 2)
            fields[i, 1] += 0.8 * np.exp(-(distance / width) ** 2)
            masks[i][band & (masks[i] == 0)] = 2
        fields[i] += rng.normal(scale=0.3, size=(4, size, size)).astype(np.float32)
    if border:
        masks[:, :border, :] = masks[:, -border:, :] = IGNORE_INDEX
        masks[:, :, :border] = masks[:, :, -border:] = IGNORE_INDEX
    return fields, masks


def make_embedded_dataset(num_train=400, num_validation=80, size=64, noisy_mask_fraction=0.1, seed=0):
    """DatasetDict of `pixel_values` / `labels`, and the indices of the training rows whose mask is wrong."""
    from datasets import Dataset, DatasetDict

    fields, masks = make_climate_fields(num_train + num_validation, size=size, seed=seed)
    train_masks = masks[:num_train].copy()
    rng = np.random.default_rng(seed + 1)
    noisy = np.sort(rng.choice(num_train, size=int(round(noisy_mask_fraction * num_train)), replace=False))
    if noisy.size:
        train_masks[noisy] = masks[(noisy + num_train // 2) % num_train]  # another sample's mask
    split = lambda x, y: Dataset.from_dict({"pixel_values": x, "labels": y}).with_format("torch")  # noqa: E731
    return DatasetDict({"train": split(fields[:num_train], train_masks),
                        "validation": split(fields[num_train:], masks[num_train:])}), noisy


def segmentation_metrics(num_labels, ignore_index=IGNORE_INDEX):
    """compute_metrics: mean IoU over classes present, and pixel accuracy, on logits upsampled to the masks."""
    def compute(eval_pred):
        logits, labels = eval_pred
        logits = logits[0] if isinstance(logits, tuple) else logits
        labels = torch.as_tensor(labels)
        up = torch.nn.functional.interpolate(torch.as_tensor(logits).float(), size=labels.shape[-2:],
                                             mode="bilinear", align_corners=False)
        prediction = up.argmax(1)
        valid = labels != ignore_index
        accuracy = float((prediction[valid] == labels[valid]).float().mean())
        ious = []
        for c in range(num_labels):
            predicted, actual = (prediction == c) & valid, (labels == c) & valid
            union = (predicted | actual).sum()
            if union > 0:
                ious.append(float((predicted & actual).sum() / union))
        return {"mean_iou": float(np.mean(ious)), "pixel_accuracy": accuracy}

    return compute


def collate(features):
    return {"pixel_values": torch.stack([torch.as_tensor(f["pixel_values"]) for f in features]),
            "labels": torch.stack([torch.as_tensor(f["labels"]) for f in features]).long()}


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Hub id or local folder. None: a small SegFormer from a SegformerConfig."})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Where to store Hub downloads."})
    model_revision: str = field(default="main", metadata={"help": "Model version (branch, tag or commit)."})
    token: Optional[str] = field(default=None, metadata={"help": "Hub token."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom code from the Hub."})
    hidden_sizes: str = field(default="16,32,64", metadata={"help": "Locally built SegFormer: widths per stage."})
    decoder_hidden_size: int = field(default=64, metadata={"help": "Locally built SegFormer: decoder width."})


@dataclass
class DataTrainingArguments:
    dataset_name: Optional[str] = field(default=None, metadata={"help": "Data set on the Hub (image + mask)."})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Its configuration name."})
    image_column_name: str = field(default="image", metadata={"help": "Hub data: the image column."})
    label_column_name: str = field(default="annotation", metadata={"help": "Hub data: the mask column."})
    image_size: int = field(default=64, metadata={"help": "Side of the images (generated or resized)."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the evaluation set."})
    embedded_train_size: int = field(default=400, metadata={"help": "Generated data: training samples."})
    embedded_validation_size: int = field(default=80, metadata={"help": "Generated data: validation samples."})
    noisy_mask_fraction: float = field(default=0.1, metadata={"help": "Generated data: wrong training masks."})
    compare_plain: bool = field(default=False, metadata={"help": "Also train the plain Trainer; print both."})
    statistics_confidence: str = field(
        default="balanced_accuracy",
        metadata={"help": "Per-sample confidence: balanced_accuracy (built-in default), accuracy or probability."})


def load_hub_data(data_args, model_args):  # pragma: no cover - needs the Hub
    from datasets import load_dataset

    raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=model_args.cache_dir,
                       token=model_args.token)
    size = data_args.image_size

    def transform(batch):
        images = [np.asarray(img.convert("RGB").resize((size, size)), dtype=np.float32) / 127.5 - 1.0
                  for img in batch[data_args.image_column_name]]
        masks = [np.asarray(m.resize((size, size), resample=0), dtype=np.int64) for m in batch[data_args.label_column_name]]
        return {"pixel_values": [torch.from_numpy(x.transpose(2, 0, 1)) for x in images],
                "labels": [torch.from_numpy(m) for m in masks]}

    for split in raw:
        raw[split].set_transform(transform)
    if "validation" not in raw:
        parts = raw["train"].train_test_split(0.15, seed=0)
        raw["train"], raw["validation"] = parts["train"], parts["test"]
    return raw, np.zeros(0, dtype=np.int64), None


def build_model(model_args, num_labels, num_channels):
    if model_args.model_name_or_path is not None:  # pragma: no cover - needs the Hub or a local folder
        return AutoModelForSemanticSegmentation.from_pretrained(
            model_args.model_name_or_path, num_labels=num_labels, ignore_mismatched_sizes=True,
            cache_dir=model_args.cache_dir, revision=model_args.model_revision, token=model_args.token,
            trust_remote_code=model_args.trust_remote_code)
    widths = [int(w) for w in model_args.hidden_sizes.split(",")]
    config = SegformerConfig(
        num_channels=num_channels, num_encoder_blocks=len(widths), depths=[1] * len(widths),
        sr_ratios=[4, 2, 1, 1][-len(widths):], hidden_sizes=widths, num_attention_heads=[1, 2, 4, 8][:len(widths)],
        patch_sizes=[7, 3, 3, 3][:len(widths)], strides=[4, 2, 2, 2][:len(widths)], mlp_ratios=[2] * len(widths),
        decoder_hidden_size=model_args.decoder_hidden_size, num_labels=num_labels,
        id2label=dict(enumerate(CLASSES)), label2id={c: i for i, c in enumerate(CLASSES)},
        semantic_loss_ignore_index=IGNORE_INDEX)
    return SegformerForSemanticSegmentation(config)


def run(training_args, model, train_dataset, eval_dataset, num_labels, plain=False, statistics_fn=None):
    common = dict(model=model, train_dataset=train_dataset if training_args.do_train else None,
                  eval_dataset=eval_dataset if training_args.do_eval else None, data_collator=collate,
                  compute_metrics=segmentation_metrics(num_labels))
    if plain:
        args = TrainingArguments(**{f.name: getattr(training_args, f.name) for f in dataclasses.fields(TrainingArguments)
                                    if f.init})
        trainer = Trainer(args=args, **common)
    else:
        trainer = KakurenboTrainer(args=training_args, per_sample_statistics_fn=statistics_fn, **common)
    results = {}
    if training_args.do_train:
        started = time.perf_counter()
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        results["train_seconds"] = time.perf_counter() - started
        results["optimizer_steps"] = trainer.state.global_step
        if not plain:
            trainer.save_model()
            trainer.log_metrics("train", train_result.metrics)
            trainer.save_metrics("train", train_result.metrics)
        results.update(train_result.metrics)
    if training_args.do_eval:
        metrics = trainer.evaluate()
        if not plain:
            trainer.log_metrics("eval", metrics)
            trainer.save_metrics("eval", metrics)
        results.update(metrics)
    return trainer, results


def main(args_list=None):
    model_args, data_args, training_args = parse_args(
        args_list, default_output_dir=DEFAULT_OUTPUT_DIR, default_args=DEFAULT_ARGS,
        dataclass_types=(ModelArguments, DataTrainingArguments, KakurenboTrainingArguments),
    )
    require_work(training_args, "semantic_segmentation.py")
    setup_logging(training_args)
    transformers.set_seed(training_args.seed)

    if data_args.dataset_name is not None:
        data, noisy, _ = load_hub_data(data_args, model_args)
        num_labels = None
    else:
        data, noisy = make_embedded_dataset(data_args.embedded_train_size, data_args.embedded_validation_size,
                                            data_args.image_size, data_args.noisy_mask_fraction, seed=0)
        num_labels = len(CLASSES)
    train_dataset, eval_dataset = data["train"], data["validation"]
    if data_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(data_args.max_train_samples, len(train_dataset))))
        noisy = noisy[noisy < len(train_dataset)]
    if data_args.max_eval_samples is not None:
        eval_dataset = eval_dataset.select(range(min(data_args.max_eval_samples, len(eval_dataset))))
    num_channels = int(train_dataset[0]["pixel_values"].shape[0])
    model = build_model(model_args, num_labels or 150, num_channels)
    num_labels = model.config.num_labels
    initial_state = {k: v.clone() for k, v in model.state_dict().items()} if data_args.compare_plain else None

    statistics_fn = None  # the built-in statistics, detected from the model
    if data_args.statistics_confidence != "balanced_accuracy":
        statistics_fn = SegmentationStatistics(ignore_index=model.config.semantic_loss_ignore_index,
                                               confidence=data_args.statistics_confidence)
    trainer, results = run(training_args, model, train_dataset, eval_dataset, num_labels, statistics_fn=statistics_fn)
    if training_args.do_train:
        hiding = trainer.hiding_report()  # what was hidden, epoch by epoch and sample by sample
        ever = hiding.samples()["epochs_hidden"] > 0
        wrong = np.zeros(len(train_dataset), dtype=bool)
        wrong[noisy] = True
        results["hidden_per_epoch"] = [row["num_hidden"] for row in hiding.epochs()]
        results["clean_ever_hidden"] = [int(ever[~wrong].sum()), int((~wrong).sum())]
        results["mislabelled_ever_hidden"] = [int(ever[wrong].sum()), int(wrong.sum())]
    if data_args.compare_plain:
        model.load_state_dict(initial_state)
        transformers.set_seed(training_args.seed)
        _, results["plain"] = run(training_args, model, train_dataset, eval_dataset, num_labels, plain=True)
    if trainer.is_world_process_zero():
        print_summary(results, len(train_dataset))
    return results


def print_summary(results, num_samples):
    rows = [("KakurenboTrainer", results)] + ([("Trainer", results["plain"])] if "plain" in results else [])
    print("\n[semantic_segmentation] trainer | train s | optimizer steps | eval mean IoU | eval pixel accuracy")
    for name, r in rows:
        print(f"[semantic_segmentation] {name} | {r.get('train_seconds', float('nan')):.1f} | "
              f"{r.get('optimizer_steps', '-')} | {r.get('eval_mean_iou', float('nan')):.4f} | "
              f"{r.get('eval_pixel_accuracy', float('nan')):.4f}")
    if "hidden_per_epoch" in results:
        print(f"[semantic_segmentation] hidden per epoch (of {num_samples}): {results['hidden_per_epoch']}")
        clean, wrong = results["clean_ever_hidden"], results["mislabelled_ever_hidden"]
        print(f"[semantic_segmentation] ever hidden: clean {clean[0]} of {clean[1]}, mislabelled {wrong[0]} of "
              f"{wrong[1]}")


if __name__ == "__main__":
    main()
