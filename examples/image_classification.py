#!/usr/bin/env python
"""Image classification with KAKURENBO sample hiding: the Hugging Face image-classification recipe
(transformers' examples/pytorch/image-classification/run_image_classification.py) with
`KakurenboTrainer` / `KakurenboTrainingArguments` in place of `Trainer` / `TrainingArguments`.

Default run (no arguments): trains a tiny DeiT from scratch (random init from a `DeiTConfig`:
32 px, patch 8, hidden 96, 4 layers) on embedded, formula-driven fractal images (10 classes x 80
train / 10 test at 32 px; nothing is downloaded), for 10 epochs with hiding (F = 0.5, the
default of `KakurenboTrainingArguments`), then evaluates it; output in outputs/image_classification
(its time and top-1: the README's examples table, from benchmarks/results/examples.json):

    python examples/image_classification.py

Defaults. Every run starts from this recipe's defaults (`DEFAULT_ARGS`: 10 epochs, lr 2e-3,
weight decay 0.05, warm-up 0.1, train batch 32, eval batch 64, no checkpoints, logging per epoch,
report_to none, seed 42, output_dir outputs/image_classification), not from the `TrainingArguments`
ones; every flag you pass overrides its default (`--learning_rate 5e-5` wins over 2e-3). If you
pass neither `--do_train` nor `--do_eval`, both are on; pass one of them to choose (e.g.
`--do_eval --model_name_or_path DIR` only evaluates). A run with both off stops with an error
(exit status 1) instead of doing nothing. A single JSON file (`script.py args.json`) is read the
same way: its keys override the defaults.

Any argument of the HF recipe works, plus every `TrainingArguments` field and the hiding fields of
`kakurenbo_hf/core/config.py` (`--hiding_fraction`, `--confidence_threshold`, `--hiding_strategy`, ...):

    python examples/image_classification.py --train_dir my_images/train --validation_dir my_images/val \
        --output_dir out --num_train_epochs 20 --hiding_fraction 0.3

`--remove_unused_columns` keeps its meaning (default true, as in `TrainingArguments`): the image
column is renamed `pixel_values` and a label column not named label/labels is renamed `labels`
(zero-copy renames), and the transforms turn the images into tensors in place, so the columns the
model needs survive the Trainer's column removal; with true, other columns (file paths, ids, ...)
are dropped, with false they are kept and ignored by the collator.

Data (first that is given):
    --dataset_name beans [--dataset_config_name ...]        # load_dataset from the Hub
    --train_dir DIR [--validation_dir DIR]                   # "imagefolder": DIR/<class>/<img>.png
    (nothing)                                                # fractal generator, --fractal_* flags
A missing validation split is cut from train (`--train_val_split`, default 0.15); a "test" split
is used for evaluation when there is no "validation" one.

Model (first that is given):
    --model_name_or_path facebook/deit-tiny-patch16-224 [--ignore_mismatched_sizes]  # Hub or local
                                                            # folder written by save_pretrained
    --config_name CONFIG                                    # AutoConfig, random init
    --timm_model resnet18 | vit_tiny_patch16_224 [--timm_model_args '{"patch_size": 4}']
        # a timm architecture through transformers' TimmWrapperForImageClassification, built from
        # TimmWrapperConfig(architecture=..., model_args=...) with random weights (nothing is
        # downloaded). For vit/deit architectures img_size defaults to --image_size and patch_size
        # to 4; the normalisation is timm's (resolve_data_config) at --image_size px.
    (nothing)                                               # DeiTConfig(image_size=32, patch 8,
                                                            # hidden 96, 4 layers), random init

Multi-process on CPU (nothing in the script is rank-specific):

    accelerate launch --multi_gpu --num_processes 2 examples/image_classification.py \
        --use_cpu --do_train --do_eval --output_dir outputs/ic_ddp --num_train_epochs 10 \
        --learning_rate 1e-3 --per_device_train_batch_size 16

Accuracy is computed with `evaluate.load("accuracy")` when it can be loaded (it needs the Hub or
the evaluate cache) and otherwise with an equivalent numpy implementation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    DeiTConfig,
    DeiTForImageClassification,
    HfArgumentParser,
    ViTImageProcessor,
)
from transformers.utils import logging

from kakurenbo_hf import KakurenboTrainer, KakurenboTrainingArguments

logger = logging.get_logger("image_classification")

DEFAULT_OUTPUT_DIR = "outputs/image_classification"
# A short CPU recipe that learns the fractals (shared with fractal_pretrain.py).
TRAINING_DEFAULTS = [
    "--learning_rate", "2e-3",
    "--weight_decay", "0.05",
    "--warmup_steps", "0.1",
    "--per_device_train_batch_size", "32",
    "--per_device_eval_batch_size", "64",
    "--eval_strategy", "no",
    "--save_strategy", "no",
    "--logging_strategy", "epoch",
    "--dataloader_num_workers", "0",
    "--report_to", "none",
    "--seed", "42",
]
# The defaults of every run: the user's own flags come after them on the command line and win.
DEFAULT_ARGS = ["--num_train_epochs", "10"] + TRAINING_DEFAULTS
# Added when the user passes neither --do_train nor --do_eval.
DEFAULT_ACTIONS = ["--do_train", "--do_eval"]


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Hub model id or local folder (save_pretrained) to fine-tune. None: a tiny DeiT "
                  "built from a DeiTConfig (or --timm_model / --config_name), randomly initialised."},
    )
    model_type: Optional[str] = field(default=None, metadata={"help": "Unused; kept for compatibility."})
    config_name: Optional[str] = field(default=None, metadata={"help": "Config name or path if not the model's."})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Where to store Hub downloads."})
    model_revision: str = field(default="main", metadata={"help": "Model version (branch, tag or commit)."})
    image_processor_name: Optional[str] = field(default=None, metadata={"help": "Image processor name or path."})
    token: Optional[str] = field(default=None, metadata={"help": "Hub token for private models/data sets."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom code from the Hub."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise a classification head whose size differs."}
    )
    timm_model: Optional[str] = field(
        default=None,
        metadata={"help": "timm architecture (e.g. resnet18, vit_tiny_patch16_224) built, without download, "
                  "through transformers' TimmWrapperForImageClassification."},
    )
    timm_model_args: Optional[str] = field(
        default=None, metadata={"help": "JSON dict of timm.create_model kwargs, e.g. '{\"embed_dim\": 96}'."}
    )
    image_size: int = field(default=32, metadata={"help": "Image size of the locally built models."})
    patch_size: int = field(default=8, metadata={"help": "Patch size of the locally built DeiT."})
    hidden_size: int = field(default=96, metadata={"help": "Hidden size of the locally built DeiT."})
    num_hidden_layers: int = field(default=4, metadata={"help": "Layers of the locally built DeiT."})
    num_attention_heads: int = field(default=4, metadata={"help": "Heads of the locally built DeiT."})


@dataclass
class DataTrainingArguments:
    dataset_name: Optional[str] = field(default=None, metadata={"help": "Data set on the Hub."})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Its configuration name."})
    train_dir: Optional[str] = field(default=None, metadata={"help": "Image folder of the training data."})
    validation_dir: Optional[str] = field(default=None, metadata={"help": "Image folder of the validation data."})
    train_val_split: Optional[float] = field(default=0.15, metadata={"help": "Train fraction used for validation."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the evaluation set."})
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the labels."})
    min_crop_scale: float = field(
        default=0.8, metadata={"help": "Smallest area fraction of RandomResizedCrop (HF recipe: 0.08)."}
    )
    fractal_num_classes: int = field(default=10, metadata={"help": "Fractal data: number of classes."})
    fractal_train_per_class: int = field(default=80, metadata={"help": "Fractal data: train images per class."})
    fractal_test_per_class: int = field(default=10, metadata={"help": "Fractal data: test images per class."})
    fractal_image_size: int = field(default=32, metadata={"help": "Fractal data: image side in pixels."})
    fractal_seed: int = field(default=0, metadata={"help": "Fractal data: generator seed."})

    def __post_init__(self):
        if self.dataset_name is None and self.train_dir is None and self.validation_dir is not None:
            raise ValueError("--validation_dir needs --train_dir.")


# --------------------------------------------------------------------------------------------
# Helpers shared with fractal_pretrain.py
# --------------------------------------------------------------------------------------------


def parse_args(args_list=None, default_output_dir=DEFAULT_OUTPUT_DIR, default_args=DEFAULT_ARGS,
               dataclass_types=None, default_actions=DEFAULT_ACTIONS):
    """Parse `args_list` (default sys.argv[1:]), or a single JSON file, over the recipe's defaults.

    The defaults (`--output_dir default_output_dir` and `default_args`) are put before the user's
    arguments, so a flag the user passes wins over its default (argparse keeps the last value) and a
    flag the user leaves out keeps the recipe's value, not the `TrainingArguments` one.
    `default_actions` (`--do_train --do_eval`) are added only if the user sets neither `do_train`
    nor `do_eval` (in any spelling argparse accepts). A JSON file's keys override the defaults the
    same way.
    """
    args_list = list(sys.argv[1:] if args_list is None else args_list)
    defaults = ["--output_dir", default_output_dir] + list(default_args)
    parser = HfArgumentParser(dataclass_types)
    if len(args_list) == 1 and args_list[0].endswith(".json"):
        with open(os.path.abspath(args_list[0])) as f:
            given = json.load(f)
        if not {"do_train", "do_eval"} & set(given):
            defaults += list(default_actions)
        values = vars(parser.parse_args(defaults))  # every field, typed, with the recipe's defaults
        values.update(given)
        return parser.parse_dict(values)
    if not {"do_train", "do_eval"} & given_fields(dataclass_types, args_list):
        defaults += list(default_actions)
    return parser.parse_args_into_dataclasses(args=defaults + args_list)


def given_fields(dataclass_types, args_list) -> set:
    """The names of the fields `args_list` sets explicitly (`--do_train`, `--do-train false`, ...)."""
    parser = HfArgumentParser(dataclass_types, add_help=False)
    for action in parser._actions:
        action.default = argparse.SUPPRESS  # unset fields stay out of the namespace
        action.required = False
    namespace, _ = parser.parse_known_args(args_list)
    return set(vars(namespace))


def require_work(training_args, script: str) -> None:
    """Stop (exit status 1, a message on stderr) when the arguments ask for neither training nor evaluation."""
    if not (training_args.do_train or training_args.do_eval):
        raise SystemExit(
            f"{script}: nothing to do: --do_train and --do_eval are both off. Pass --do_train and/or --do_eval "
            "(or neither of them: both are on by default)."
        )


def setup_logging(training_args) -> None:
    """As in the HF recipes: the Trainer's per-process log level for transformers, datasets and us."""
    if training_args.should_log:
        logging.set_verbosity_info()  # the default of training_args.log_level is passive ("warning")
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    logging.set_verbosity(log_level)
    logging.enable_default_handler()
    logging.enable_explicit_format()
    try:
        import datasets

        datasets.utils.logging.set_verbosity(log_level)
    except ImportError:
        pass


def accuracy_metric():
    """`compute_metrics` for the Trainer: evaluate's accuracy when loadable, else numpy's."""
    metric = None
    try:
        import evaluate

        metric = evaluate.load("accuracy")
    except Exception as err:  # offline, no cached module, ...
        logger.info(f"evaluate.load('accuracy') unavailable ({type(err).__name__}); using numpy accuracy.")

    def compute_metrics(eval_pred):
        predictions = np.argmax(eval_pred.predictions, axis=1)
        references = eval_pred.label_ids
        if metric is not None:
            return metric.compute(predictions=predictions, references=references)
        return {"accuracy": float((predictions == references).mean())}

    return compute_metrics


def processor_geometry(image_processor, fallback: int = 32):
    """(size for Resize/RandomResizedCrop, mean, std) of an image processor."""
    size = getattr(image_processor, "size", None) or {}
    if not isinstance(size, dict):
        size = dict(size)
    if "shortest_edge" in size and size["shortest_edge"]:
        hw = size["shortest_edge"]
    elif size.get("height") and size.get("width"):
        hw = (size["height"], size["width"])
    else:
        hw = fallback
    mean = getattr(image_processor, "image_mean", None) or [0.5, 0.5, 0.5]
    std = getattr(image_processor, "image_std", None) or [0.5, 0.5, 0.5]
    return hw, list(mean), list(std)


def make_transforms(image_processor, image_column_name, min_crop_scale=0.8):
    """(train_fn, eval_fn) for `Dataset.with_transform`: `pixel_values` = the transformed images of
    `image_column_name` (which may be `pixel_values` itself: the images are then replaced)."""
    from torchvision.transforms import (
        CenterCrop,
        Compose,
        Normalize,
        RandomHorizontalFlip,
        RandomResizedCrop,
        Resize,
        ToTensor,
    )

    size, mean, std = processor_geometry(image_processor)
    crop = size if isinstance(size, tuple) else (size, size)
    normalize = Normalize(mean=mean, std=std)
    train_tf = Compose([RandomResizedCrop(crop, scale=(min_crop_scale, 1.0)), RandomHorizontalFlip(), ToTensor(), normalize])
    eval_tf = Compose([Resize(size), CenterCrop(crop), ToTensor(), normalize])

    def train_transforms(batch):
        batch["pixel_values"] = [train_tf(img.convert("RGB")) for img in batch[image_column_name]]
        return batch

    def val_transforms(batch):
        batch["pixel_values"] = [eval_tf(img.convert("RGB")) for img in batch[image_column_name]]
        return batch

    return train_transforms, val_transforms


def make_collate_fn(label_column_name="label"):
    def collate_fn(examples):
        pixel_values = torch.stack([example["pixel_values"] for example in examples])
        labels = torch.tensor([example[label_column_name] for example in examples])
        return {"pixel_values": pixel_values, "labels": labels}

    return collate_fn


def tiny_deit(num_labels, label2id, id2label, image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=4,
              num_attention_heads=4):
    """A small randomly initialised DeiT and a matching local ViTImageProcessor (no download)."""
    config = DeiTConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=2 * hidden_size,
        num_labels=num_labels,
        label2id=label2id,
        id2label=id2label,
        finetuning_task="image-classification",
    )
    model = DeiTForImageClassification(config)
    image_processor = ViTImageProcessor(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return model, image_processor


def timm_model(architecture, num_labels, label2id, id2label, image_size=32, model_args_json=None):
    """A timm architecture wrapped by transformers (TimmWrapperForImageClassification), random init."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    model_args = json.loads(model_args_json) if model_args_json else {}
    if architecture.split("_")[0] in ("vit", "deit", "deit3", "eva", "beit"):
        model_args.setdefault("img_size", image_size)
        model_args.setdefault("patch_size", 4)
    config = TimmWrapperConfig(
        architecture=architecture, model_args=model_args or None, num_labels=num_labels, label2id=label2id,
        id2label=id2label,
    )
    model = TimmWrapperForImageClassification(config)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    try:
        import timm

        data_config = timm.data.resolve_data_config({}, model=model.timm_model)
        mean, std = list(data_config["mean"]), list(data_config["std"])
    except Exception as err:
        logger.info(f"timm data config unavailable ({err}); using ImageNet mean/std.")
    image_processor = ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=mean, image_std=std)
    return model, image_processor


def load_data(data_args, model_args, training_args):
    """DatasetDict with "train" and "validation" (and the label names)."""
    import datasets
    from datasets import load_dataset

    if data_args.dataset_name is not None:
        dataset = load_dataset(
            data_args.dataset_name, data_args.dataset_config_name, cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
    elif data_args.train_dir is not None:
        data_files = {"train": os.path.join(data_args.train_dir, "**")}
        if data_args.validation_dir is not None:
            data_files["validation"] = os.path.join(data_args.validation_dir, "**")
        dataset = load_dataset("imagefolder", data_files=data_files, cache_dir=model_args.cache_dir)
    else:
        from kakurenbo_hf.data import make_fractal_dataset

        with training_args.main_process_first(desc="fractal data"):
            dataset = make_fractal_dataset(
                num_classes=data_args.fractal_num_classes,
                instances_per_class=data_args.fractal_train_per_class,
                image_size=data_args.fractal_image_size,
                seed=data_args.fractal_seed,
                test_instances_per_class=max(1, data_args.fractal_test_per_class),
                cache_dir=model_args.cache_dir,
            )
    if not isinstance(dataset, datasets.DatasetDict):
        dataset = datasets.DatasetDict({"train": dataset})
    if "validation" not in dataset and "test" in dataset:
        dataset["validation"] = dataset.pop("test")
    if "validation" not in dataset and data_args.train_val_split and data_args.train_val_split > 0:
        split = dataset["train"].train_test_split(data_args.train_val_split, seed=training_args.seed)
        dataset["train"], dataset["validation"] = split["train"], split["test"]

    for name in (data_args.image_column_name, data_args.label_column_name):
        if name not in dataset["train"].column_names:
            raise ValueError(
                f"Column {name!r} not found in the data set (columns: {dataset['train'].column_names}); set "
                "--image_column_name / --label_column_name."
            )
    labels = dataset["train"].features[data_args.label_column_name].names
    return dataset, labels


def model_input_columns(dataset, image_column_name, label_column_name):
    """Rename the image column to `pixel_values` and the label column to `labels` (unless it is
    already `label` or `labels`), so that the Trainer's `remove_unused_columns` keeps both.

    The transforms then turn the `pixel_values` images into tensors in place. Renaming is a
    zero-copy change of the Arrow schema. Returns (dataset, label key).
    """
    renames = {image_column_name: "pixel_values"}
    label_key = label_column_name if label_column_name in ("label", "labels") else "labels"
    renames[label_column_name] = label_key
    columns = dataset["train"].column_names
    for old, new in renames.items():
        if old != new and new in columns:
            raise ValueError(
                f"Cannot rename column {old!r} to {new!r}: the data set already has a {new!r} column "
                f"(columns: {columns}). Remove it, or set --image_column_name / --label_column_name to it."
            )
    renames = {old: new for old, new in renames.items() if old != new}
    return (dataset.rename_columns(renames) if renames else dataset), label_key


def build_model(model_args, labels):
    label2id = {label: str(i) for i, label in enumerate(labels)}
    id2label = {str(i): label for i, label in enumerate(labels)}
    common = dict(cache_dir=model_args.cache_dir, revision=model_args.model_revision, token=model_args.token,
                  trust_remote_code=model_args.trust_remote_code)
    if model_args.model_name_or_path is not None:
        config = AutoConfig.from_pretrained(
            model_args.config_name or model_args.model_name_or_path, num_labels=len(labels), label2id=label2id,
            id2label=id2label, finetuning_task="image-classification", **common,
        )
        model = AutoModelForImageClassification.from_pretrained(
            model_args.model_name_or_path, config=config, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            **common,
        )
        image_processor = AutoImageProcessor.from_pretrained(
            model_args.image_processor_name or model_args.model_name_or_path, **common
        )
        return model, image_processor
    if model_args.timm_model is not None:
        return timm_model(model_args.timm_model, len(labels), label2id, id2label, model_args.image_size,
                          model_args.timm_model_args)
    if model_args.config_name is not None:
        config = AutoConfig.from_pretrained(
            model_args.config_name, num_labels=len(labels), label2id=label2id, id2label=id2label, **common
        )
        model = AutoModelForImageClassification.from_config(config, trust_remote_code=model_args.trust_remote_code)
        if model_args.image_processor_name is not None:
            image_processor = AutoImageProcessor.from_pretrained(model_args.image_processor_name, **common)
        else:
            size = getattr(config, "image_size", model_args.image_size)
            image_processor = ViTImageProcessor(size={"height": size, "width": size})
        return model, image_processor
    return tiny_deit(
        len(labels), label2id, id2label, image_size=model_args.image_size, patch_size=model_args.patch_size,
        hidden_size=model_args.hidden_size, num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
    )


def main(args_list=None):
    model_args, data_args, training_args = parse_args(
        args_list, dataclass_types=(ModelArguments, DataTrainingArguments, KakurenboTrainingArguments)
    )
    require_work(training_args, "image_classification.py")
    setup_logging(training_args)
    logger.warning(
        f"Process rank: {training_args.local_process_index}, device: {training_args.device}, "
        f"n_gpu: {training_args.n_gpu}, distributed: {training_args.parallel_mode.value == 'distributed'}"
    )
    logger.info(f"Training/evaluation parameters {training_args}")
    transformers.set_seed(training_args.seed)

    dataset, labels = load_data(data_args, model_args, training_args)
    model, image_processor = build_model(model_args, labels)
    logger.info(
        f"Model {type(model).__name__}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"{len(labels)} labels"
    )

    dataset, label_key = model_input_columns(dataset, data_args.image_column_name, data_args.label_column_name)
    train_transforms, val_transforms = make_transforms(image_processor, "pixel_values", data_args.min_crop_scale)
    if training_args.do_train:
        if data_args.max_train_samples is not None:
            dataset["train"] = dataset["train"].shuffle(seed=training_args.seed).select(
                range(min(data_args.max_train_samples, len(dataset["train"])))
            )
        dataset["train"].set_transform(train_transforms)
    if training_args.do_eval:
        if "validation" not in dataset:
            raise ValueError("--do_eval requires a validation split (or --train_val_split > 0).")
        if data_args.max_eval_samples is not None:
            dataset["validation"] = dataset["validation"].shuffle(seed=training_args.seed).select(
                range(min(data_args.max_eval_samples, len(dataset["validation"])))
            )
        dataset["validation"].set_transform(val_transforms)

    # remove_unused_columns stays the user's: the columns the transforms and the collator read
    # (pixel_values, label/labels) are arguments of the model's forward, so they are never removed.
    trainer = KakurenboTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset["train"] if training_args.do_train else None,
        eval_dataset=dataset["validation"] if training_args.do_eval else None,
        compute_metrics=accuracy_metric(),
        processing_class=image_processor,
        data_collator=make_collate_fn(label_key),
    )

    return train_and_evaluate(trainer, training_args, "image_classification", num_labels=len(labels))


def train_and_evaluate(trainer, training_args, name, num_labels):
    """The HF recipe's tail: train (resuming if asked), save, log and save metrics, evaluate,
    and print a one-line summary. Returns the train and eval metrics."""
    results = {}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
        results.update(train_result.metrics)
    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        results.update(metrics)
    if trainer.is_world_process_zero():
        summary = []
        if "train_runtime" in results:
            summary.append(f"train_runtime={results['train_runtime']:.1f}s train_loss={results.get('train_loss', float('nan')):.4f}")
        if "eval_accuracy" in results:
            summary.append(f"eval_accuracy={results['eval_accuracy']:.4f} (chance {1 / num_labels:.3f})")
        if summary:
            print(f"[{name}] " + "  ".join(summary), flush=True)
    return results


if __name__ == "__main__":
    main()
