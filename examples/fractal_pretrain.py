#!/usr/bin/env python
"""The paper's transfer experiment at toy scale: pre-train a DeiT on fractal images (FractalDB-style,
formula-driven, offline) with KAKURENBO hiding, save it with save_pretrained, then fine-tune it from
that folder (AutoModelForImageClassification.from_pretrained(folder, num_labels=...,
ignore_mismatched_sizes=True)) on another image set, and report both accuracies and times. With
`--compare_scratch` the same fine-tuning from random weights is run as well.

Default run (20 fractal classes x 60 images, 15 epochs, for pre-training; 15 epochs of fine-tuning on scikit-learn's digits,
upscaled to 32x32 RGB; a few minutes on a 2-core CPU):

    python examples/fractal_pretrain.py

Sizes and data:

    python examples/fractal_pretrain.py --pretrain_classes 50 --pretrain_per_class 100 \
        --pretrain_epochs 20 --finetune_epochs 10 --finetune_data fractal --compare_scratch \
        --hiding_fraction 0.3 --output_dir outputs/fractal_pretrain

`--finetune_data fractal` fine-tunes on a different fractal set (other seed, `--finetune_classes`
classes); `digits` (default) on sklearn's load_digits. Every TrainingArguments field and hiding
field (kakurenbo_hf/core/config.py) applies to both phases; `--num_train_epochs` and `--output_dir` are
set per phase (OUTPUT_DIR/pretrain, OUTPUT_DIR/pretrained_model, OUTPUT_DIR/finetune[_scratch]).

Multi-process on CPU:

    accelerate launch --multi_gpu --num_processes 2 examples/fractal_pretrain.py --use_cpu
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import transformers
from transformers import AutoModelForImageClassification
from transformers.utils import logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from image_classification import (  # noqa: E402
    TRAINING_DEFAULTS,  # training defaults of both phases (any can be overridden on the command line)
    HfArgumentParser,
    accuracy_metric,
    make_collate_fn,
    make_transforms,
    setup_logging,
    tiny_deit,
)

from kakurenbo_hf import KakurenboTrainer, KakurenboTrainingArguments  # noqa: E402

logger = logging.get_logger("fractal_pretrain")

DEFAULT_OUTPUT_DIR = "outputs/fractal_pretrain"


@dataclass
class ExperimentArguments:
    pretrain_classes: int = field(default=20, metadata={"help": "Fractal classes for pre-training."})
    pretrain_per_class: int = field(default=60, metadata={"help": "Fractal images per class for pre-training."})
    pretrain_test_per_class: int = field(default=5, metadata={"help": "Held-out fractal images per class."})
    pretrain_epochs: int = field(default=15, metadata={"help": "Pre-training epochs."})
    pretrain_seed: int = field(default=0, metadata={"help": "Seed of the pre-training fractals."})
    finetune_data: str = field(default="digits", metadata={"help": "'digits' (sklearn) or 'fractal'."})
    finetune_classes: int = field(default=10, metadata={"help": "Classes of the fractal fine-tuning set."})
    finetune_per_class: int = field(default=30, metadata={"help": "Train images per class (fractal fine-tuning)."})
    finetune_seed: int = field(default=123, metadata={"help": "Seed of the fractal fine-tuning set."})
    finetune_train_samples: int = field(default=1000, metadata={"help": "Digits: training images (rest: test)."})
    finetune_epochs: int = field(default=15, metadata={"help": "Fine-tuning epochs."})
    compare_scratch: bool = field(default=False, metadata={"help": "Also fine-tune from random weights."})
    image_size: int = field(default=32, metadata={"help": "Image side (pixels) for both phases."})
    patch_size: int = field(default=8, metadata={"help": "DeiT patch size."})
    hidden_size: int = field(default=96, metadata={"help": "DeiT hidden size."})
    num_hidden_layers: int = field(default=4, metadata={"help": "DeiT layers."})
    num_attention_heads: int = field(default=4, metadata={"help": "DeiT heads."})

    def __post_init__(self):
        if self.finetune_data not in ("digits", "fractal"):
            raise ValueError(f"finetune_data must be 'digits' or 'fractal', got {self.finetune_data!r}")


def digits_dataset(image_size=32, train_samples=600, seed=0):
    """sklearn's 8x8 digits as RGB PIL images of image_size px (train / validation DatasetDict)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))
    images = [
        PILImage.fromarray((digits.images[i] * (255.0 / 16.0)).astype(np.uint8), mode="L")
        .resize((image_size, image_size), PILImage.BILINEAR).convert("RGB")
        for i in order
    ]
    labels = [int(digits.target[i]) for i in order]
    features = Features({"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})
    n = min(train_samples, len(images) - 1)
    return DatasetDict({
        "train": Dataset.from_dict({"image": images[:n], "label": labels[:n]}, features=features),
        "validation": Dataset.from_dict({"image": images[n:], "label": labels[n:]}, features=features),
    })


def fractal_dataset(num_classes, per_class, test_per_class, image_size, seed, training_args):
    from kakurenbo_hf.data import make_fractal_dataset

    with training_args.main_process_first(desc="fractal data"):
        ds = make_fractal_dataset(num_classes=num_classes, instances_per_class=per_class, image_size=image_size,
                                  seed=seed, test_instances_per_class=max(1, test_per_class))
    ds["validation"] = ds.pop("test")
    return ds


def phase_args(argv, output_dir, epochs):
    """KakurenboTrainingArguments of one phase: the user's arguments plus this phase's dir and epochs."""
    parser = HfArgumentParser((ExperimentArguments, KakurenboTrainingArguments))
    _, args = parser.parse_args_into_dataclasses(
        args=TRAINING_DEFAULTS + argv + ["--output_dir", output_dir, "--num_train_epochs", str(epochs)]
    )
    args.remove_unused_columns = False  # the transformed datasets need their image column
    return args


def run_phase(name, model, image_processor, dataset, training_args):
    """Train and evaluate one phase; returns (metrics, trainer)."""
    train_tf, eval_tf = make_transforms(image_processor, "image")
    dataset["train"].set_transform(train_tf)
    dataset["validation"].set_transform(eval_tf)
    trainer = KakurenboTrainer(
        model=model, args=training_args, train_dataset=dataset["train"], eval_dataset=dataset["validation"],
        compute_metrics=accuracy_metric(), processing_class=image_processor, data_collator=make_collate_fn("label"),
    )
    start = time.perf_counter()
    train_result = trainer.train()
    wall = time.perf_counter() - start
    metrics = dict(train_result.metrics)
    metrics.update(trainer.evaluate())
    metrics["wall_time"] = wall
    trainer.log_metrics(name, metrics)
    trainer.save_metrics(name, metrics)
    return metrics, trainer


def main(args_list=None):
    argv = list(sys.argv[1:] if args_list is None else args_list)
    output_dir = DEFAULT_OUTPUT_DIR
    rest = []
    it = iter(argv)
    for a in it:  # --output_dir is this experiment's root; each phase gets a sub-folder
        if a == "--output_dir":
            output_dir = next(it)
        elif a.startswith("--output_dir="):
            output_dir = a.split("=", 1)[1]
        else:
            rest.append(a)
    parser = HfArgumentParser((ExperimentArguments, KakurenboTrainingArguments))
    exp, base_args = parser.parse_args_into_dataclasses(args=TRAINING_DEFAULTS + rest + ["--output_dir", output_dir])
    setup_logging(base_args)
    transformers.set_seed(base_args.seed)

    # --- phase 1: pre-train on fractals -------------------------------------------------------
    pre_data = fractal_dataset(exp.pretrain_classes, exp.pretrain_per_class, exp.pretrain_test_per_class,
                               exp.image_size, exp.pretrain_seed, base_args)
    names = pre_data["train"].features["label"].names
    model, image_processor = tiny_deit(
        len(names), {n: str(i) for i, n in enumerate(names)}, {str(i): n for i, n in enumerate(names)},
        image_size=exp.image_size, patch_size=exp.patch_size, hidden_size=exp.hidden_size,
        num_hidden_layers=exp.num_hidden_layers, num_attention_heads=exp.num_attention_heads,
    )
    pre_args = phase_args(rest, os.path.join(output_dir, "pretrain"), exp.pretrain_epochs)
    pre_metrics, pre_trainer = run_phase("pretrain", model, image_processor, pre_data, pre_args)
    pretrained_dir = os.path.join(output_dir, "pretrained_model")
    pre_trainer.save_model(pretrained_dir)  # save_pretrained of model + image processor, main process only
    pre_trainer.accelerator.wait_for_everyone()

    # --- phase 2: fine-tune from the saved folder ---------------------------------------------
    def target_data():
        if exp.finetune_data == "digits":
            return digits_dataset(exp.image_size, exp.finetune_train_samples, seed=base_args.seed)
        return fractal_dataset(exp.finetune_classes, exp.finetune_per_class, max(1, exp.finetune_per_class // 3),
                               exp.image_size, exp.finetune_seed, base_args)

    ft_data = target_data()
    labels = ft_data["train"].features["label"].names
    label2id = {n: str(i) for i, n in enumerate(labels)}
    id2label = {str(i): n for i, n in enumerate(labels)}
    model = AutoModelForImageClassification.from_pretrained(
        pretrained_dir, num_labels=len(labels), label2id=label2id, id2label=id2label, ignore_mismatched_sizes=True
    )
    ft_args = phase_args(rest, os.path.join(output_dir, "finetune"), exp.finetune_epochs)
    ft_metrics, ft_trainer = run_phase("finetune", model, image_processor, ft_data, ft_args)
    ft_trainer.save_model()

    scratch_metrics = None
    if exp.compare_scratch:
        transformers.set_seed(base_args.seed)
        model, _ = tiny_deit(
            len(labels), label2id, id2label, image_size=exp.image_size, patch_size=exp.patch_size,
            hidden_size=exp.hidden_size, num_hidden_layers=exp.num_hidden_layers,
            num_attention_heads=exp.num_attention_heads,
        )
        sc_args = phase_args(rest, os.path.join(output_dir, "finetune_scratch"), exp.finetune_epochs)
        scratch_metrics, _ = run_phase("scratch", model, image_processor, target_data(), sc_args)

    summary = {
        "pretrain": {"classes": len(names), "train_images": len(pre_data["train"]),
                     "eval_accuracy": pre_metrics.get("eval_accuracy"), "train_runtime": pre_metrics.get("train_runtime")},
        "finetune": {"data": exp.finetune_data, "classes": len(labels), "train_images": len(ft_data["train"]),
                     "eval_accuracy": ft_metrics.get("eval_accuracy"), "train_runtime": ft_metrics.get("train_runtime")},
    }
    if scratch_metrics is not None:
        summary["scratch"] = {"eval_accuracy": scratch_metrics.get("eval_accuracy"),
                              "train_runtime": scratch_metrics.get("train_runtime")}
    if ft_trainer.is_world_process_zero():
        with open(os.path.join(output_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        for phase, m in summary.items():
            print(f"[fractal_pretrain] {phase}: eval_accuracy={m['eval_accuracy']:.4f} "
                  f"train_runtime={m['train_runtime']:.1f}s", flush=True)
    return summary


if __name__ == "__main__":
    main()
