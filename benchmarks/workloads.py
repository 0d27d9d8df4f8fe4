"""The leaderboard's workloads: data, a seeded model builder and the training settings of each.

A workload is built once per command by `build(name, settings, cache_dir)` and holds its data in
memory (built outside every timed region); `Prepared.model(seed)` returns a fresh model whose
weights depend only on the seed, so every method of one (workload, seed) starts from the same
weights. The settings are dataclasses: every field is a command-line flag of
`python -m benchmarks.leaderboard` (`--<workload>-<field>`, dashes for underscores), so each
workload scales up by its arguments.

- `vit_fractal`: the reference workload of `benchmarks.compare` (`flags.Workload` defaults).
- `deit_transfer`: the paper's transfer setting: a DeiT pre-trained on fractal images with the
  plain Trainer (once per seed, `save_pretrained` to a cache folder, not timed), then fine-tuned
  from that folder (`from_pretrained`, a new classification head) on scikit-learn's digits.
- `text`: a small BERT from a config on the generated sentiment sentences of
  `examples/text_classification.py`, with a word-level tokenizer trained on them.
- `timm_cnn`: a small timm ResNet (BatchNorm) from random weights through transformers'
  `TimmWrapperForImageClassification` (which returns `loss` and `logits`), on fractal images.
- `vit_fractal_hard`: `vit_fractal`'s ViT on many fractal classes with few images each (the plain
  Trainer ends below 90% top-1), optionally with wrong training labels.
- `lm_templated`: a byte-level GPT-2 from a config on prose (standard-library docstrings) with a
  templated boilerplate subgroup (20% of the rows); quality = eval loss per subgroup.

Each `Prepared` declares its quality (`benchmarks.quality`): top-1 overall and per class for the
classifiers, eval loss overall and per subgroup (prose, templated) for the language model; and,
where the training rows have subgroups (`train_groups`), which rows belong to each, so the
leaderboard can count the hidden rows per subgroup.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from . import builders, flags, trainers
from . import quality as q

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


@dataclass
class DeitTransfer(flags.Training):
    """DeiT pre-trained on fractals, fine-tuned on digits (the fine-tuning is what is timed)."""

    pretrain_classes: int = 20
    pretrain_per_class: int = 100
    pretrain_test_per_class: int = 10
    pretrain_epochs: int = 10
    pretrain_lr: float = 2e-3
    image_size: int = 32
    patch_size: int = 8
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: int = 2
    finetune_train_samples: int = 1200  # of the 1797 digits; the rest is the test split
    epochs: int = 15


@dataclass
class Text(flags.Training):
    """A small BERT from a config on generated reviews whose label is a majority vote (see `make_reviews`)."""

    train_samples: int = 3000
    test_samples: int = 600
    label_noise: float = 0.05
    negation: float = 0.0
    max_length: int = 32
    vocab_size: int = 2000
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    epochs: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1


@dataclass
class TimmCnn(flags.Training):
    """A timm ResNet with BatchNorm (no pre-trained weights) on fractal images."""

    architecture: str = "resnet10t"
    channels: str = "16/32/64/128"  # stage widths, '/'-separated
    stem_width: int = 16
    # 16: the last stage keeps 2x2 positions at 32 px, so BatchNorm accepts the batch of one sample that
    # a hiding epoch can end with (N - hidden = 1 mod batch size); at 32 (1x1) such a batch raises
    output_stride: int = 16
    num_classes: int = 100  # many classes, few images each: a CNN learns 10 fractal classes in 3 epochs
    instances_per_class: int = 15
    test_instances_per_class: int = 10
    image_size: int = 32
    epochs: int = 10


@dataclass
class VitDigits(flags.Workload):
    """A ViT from scratch on scikit-learn's digits upscaled to 32x32 RGB: small data the model fits in a
    few epochs but does not generalise from as well (the plain Trainer ends below 90% top-1)."""

    num_classes: int = 10
    train_samples: int = 1200  # of the 1797 digits; the rest is the test split
    epochs: int = 12


@dataclass
class VitFractalHard(flags.Workload):
    """`vit_fractal` made hard enough that training less costs accuracy: more classes, fewer images each,
    fewer epochs (the plain Trainer ends below 90% top-1)."""

    num_classes: int = 100
    instances_per_class: int = 16
    test_instances_per_class: int = 20
    epochs: int = 10
    label_noise: float = 0.0  # training labels replaced by a random other class (seeded by data_seed)


@dataclass
class LmTemplated(flags.Training):
    """A small byte-level GPT-2 on prose with a templated boilerplate subgroup (see `lm_templated`)."""

    train_rows: int = 1000
    eval_rows: int = 300
    templated_fraction: float = 0.2  # of the train and of the eval rows
    block_size: int = 64  # bytes per row (a row = a sample; shorter rows are padded, pads not predicted)
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    epochs: int = 8
    batch_size: int = 16
    eval_batch_size: int = 100
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    data_seed: int = 0


SETTINGS = {"vit_fractal": flags.Workload, "deit_transfer": DeitTransfer, "text": Text, "timm_cnn": TimmCnn,
            "vit_fractal_hard": VitFractalHard, "lm_templated": LmTemplated, "vit_digits": VitDigits}
CHOICES = {"vit_fractal": flags.WORKLOAD_CHOICES, "vit_fractal_hard": flags.WORKLOAD_CHOICES,
           "vit_digits": {"model": ["vit", "deit"]}}
SKIP = {"vit_fractal": ("cache_dir",), "vit_fractal_hard": ("cache_dir",),
        "vit_digits": ("cache_dir", "dataset", "instances_per_class", "test_instances_per_class", "data_seed",
                       "data_format")}  # the fractal cache is one flag for all


@dataclass
class Prepared:
    """A built workload: data (in memory), a seeded model builder, the training settings."""

    name: str
    settings: Any  # a `flags.Training` (with the workload's sizes): what `trainers.make_trainer` reads
    train: Any
    test: Any
    model: Callable[[int], Any]  # seed -> a fresh model, identical for every method of that seed
    description: str
    collate: Callable | None = None  # None: `builders.collate` (pixel_values, labels)
    info: dict = field(default_factory=dict)  # untimed preparation facts for the record (pre-training, ...)
    # What is measured at each evaluation, overall and per group (None: top-1 per class of the labels).
    quality: q.Quality | None = None
    # Subgroups of the training rows ({name: row indices}), for per-group hidden counts (None: none declared).
    train_groups: dict | None = None

    def __post_init__(self):
        if self.quality is None:
            self.quality = q.classification(class_names(self.test))


def build(name: str, settings, cache_dir: str | None = None, checkpoint_dir: str | None = None) -> Prepared:
    """Build the workload `name` (data now; models on demand)."""
    if name == "deit_transfer":
        return deit_transfer(settings, cache_dir, checkpoint_dir or trainers.tempdir("kakurenbo_leaderboard_deit_"))
    return {"vit_fractal": vit_fractal, "text": text, "timm_cnn": timm_cnn, "vit_fractal_hard": vit_fractal_hard,
            "lm_templated": lm_templated, "vit_digits": vit_digits}[name](settings, cache_dir)


def class_names(dataset) -> list[str]:
    """The class names of a classification set: its `label` ClassLabel names, else 0 .. max label."""
    features = getattr(dataset, "features", None) or {}
    for key in ("labels", "label"):
        names = getattr(features.get(key), "names", None) if hasattr(features, "get") else None
        if names:
            return list(names)
    labels = getattr(dataset, "labels", None)
    if labels is None:
        try:
            labels = dataset["labels"]
        except (KeyError, TypeError, IndexError):
            return []
    return [str(c) for c in range(int(max(int(v) for v in labels)) + 1)] if len(labels) else []


# --- the workloads -------------------------------------------------------------------------------


def vit_fractal(w: flags.Workload, cache_dir=None) -> Prepared:
    """`benchmarks.compare`'s reference workload: a ViT from scratch on fractal images."""
    w.cache_dir = cache_dir
    train, test = builders.prepare_data(w)
    return Prepared(
        "vit_fractal", w, train, test, lambda seed: builders.build_model(w, seed),
        f"{dict(vit='ViT', deit='DeiT')[w.model]} (patch {w.patch_size}, hidden {w.hidden_size}, {w.num_layers} layers) from scratch on "
        f"{w.image_size}x{w.image_size} fractal images ({w.num_classes} classes x {w.instances_per_class} train, "
        f"x {w.test_instances_per_class} test); {w.epochs} epochs, batch {w.batch_size}, AdamW {w.lr:g} {w.lr_scheduler}",
        quality=q.classification([str(c) for c in range(w.num_classes)]),
    )


def digits_rows(image_size: int, train_samples: int):
    """scikit-learn's digits upscaled to `image_size` RGB, as (train, test) `TensorRows` (a fixed split)."""
    sys.path.insert(0, EXAMPLES)
    import fractal_pretrain
    import torch

    digits = fractal_pretrain.digits_dataset(image_size, train_samples, seed=0)
    return [builders.TensorRows(torch.from_numpy(builders.images_to_array(digits[k]["image"], image_size)),
                                torch.tensor(digits[k]["label"], dtype=torch.long))
            for k in ("train", "validation")]


def vit_digits(w: VitDigits, cache_dir=None) -> Prepared:
    """A ViT from scratch on upscaled digits (plain ends below 90% top-1)."""
    train, test = digits_rows(w.image_size, w.train_samples)
    return Prepared(
        "vit_digits", w, train, test, lambda seed: builders.build_model(w, seed),
        f"{dict(vit='ViT', deit='DeiT')[w.model]} (patch {w.patch_size}, hidden {w.hidden_size}, {w.num_layers} "
        f"layers) from scratch on scikit-learn digits upscaled to {w.image_size}x{w.image_size} RGB ({len(train)} "
        f"train, {len(test)} test); {w.epochs} epochs, batch {w.batch_size}, AdamW {w.lr:g} {w.lr_scheduler}",
        quality=q.classification([str(c) for c in range(10)]),
    )


def vit_fractal_hard(w: VitFractalHard, cache_dir=None) -> Prepared:
    """A ViT from scratch on many fractal classes with few images each (plain ends below 90% top-1)."""
    import torch

    w.cache_dir = cache_dir
    train, test = builders.prepare_data(w)
    flipped = 0
    if w.label_noise > 0:
        generator = torch.Generator().manual_seed(w.data_seed)
        labels = train.labels.clone()
        noisy = torch.rand(len(labels), generator=generator) < w.label_noise
        shift = torch.randint(1, w.num_classes, (len(labels),), generator=generator)
        labels[noisy] = (labels[noisy] + shift[noisy]) % w.num_classes
        train = builders.TensorRows(train.pixel_values, labels)
        flipped = int(noisy.sum())
    noise = f", {flipped} training labels replaced by another class" if flipped else ""
    return Prepared(
        "vit_fractal_hard", w, train, test, lambda seed: builders.build_model(w, seed),
        f"{dict(vit='ViT', deit='DeiT')[w.model]} (patch {w.patch_size}, hidden {w.hidden_size}, "
        f"{w.num_layers} layers) from scratch on {w.image_size}x{w.image_size} fractal images ({w.num_classes} classes x "
        f"{w.instances_per_class} train, x {w.test_instances_per_class} test{noise}); {w.epochs} epochs, batch "
        f"{w.batch_size}, AdamW {w.lr:g} {w.lr_scheduler}",
        quality=q.classification([str(c) for c in range(w.num_classes)]),
    )


def deit_transfer(s: DeitTransfer, cache_dir=None, checkpoint_dir=None) -> Prepared:
    """Fine-tune a fractal-pre-trained DeiT (pre-trained once per seed, cached) on digits."""
    sys.path.insert(0, EXAMPLES)
    import fractal_pretrain
    import torch

    digits = fractal_pretrain.digits_dataset(s.image_size, s.finetune_train_samples, seed=0)
    splits = [
        builders.TensorRows(torch.from_numpy(builders.images_to_array(digits[k]["image"], s.image_size)),
                            torch.tensor(digits[k]["label"], dtype=torch.long))
        for k in ("train", "validation")
    ]
    pretrain = flags.Workload(
        num_classes=s.pretrain_classes, instances_per_class=s.pretrain_per_class,
        test_instances_per_class=s.pretrain_test_per_class, image_size=s.image_size, cache_dir=cache_dir,
        model="deit", patch_size=s.patch_size, hidden_size=s.hidden_size, num_layers=s.num_layers,
        num_heads=s.num_heads, mlp_ratio=s.mlp_ratio, epochs=s.pretrain_epochs, batch_size=s.batch_size,
        eval_batch_size=s.eval_batch_size, lr=s.pretrain_lr, weight_decay=s.weight_decay,
    )
    key = json.dumps({k: v for k, v in asdict(pretrain).items() if k not in ("cache_dir", "extra")}, sort_keys=True)
    stem = os.path.join(checkpoint_dir, "deit_" + hashlib.sha1(key.encode()).hexdigest()[:10])
    info: dict = {"pretrain": {}, "checkpoint_dir": checkpoint_dir}

    def pretrained(seed: int) -> str:
        folder = f"{stem}_seed{seed}"
        if not os.path.exists(os.path.join(folder, "config.json")):
            info["pretrain"][seed] = pretrain_deit(pretrain, seed, folder)
        return folder

    def model(seed: int):
        from transformers import AutoModelForImageClassification
        from transformers.utils import logging

        folder = pretrained(seed)
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()  # "newly initialized: classifier" is the point of fine-tuning
        logging.disable_progress_bar()
        try:
            torch.manual_seed(seed)  # the new head's initial weights
            return AutoModelForImageClassification.from_pretrained(folder, num_labels=10, ignore_mismatched_sizes=True)
        finally:
            logging.set_verbosity(verbosity)
            logging.enable_progress_bar()

    n_train, n_test = len(splits[0]), len(splits[1])
    description = (
        f"DeiT (patch {s.patch_size}, hidden {s.hidden_size}, {s.num_layers} layers) pre-trained with the plain "
        f"Trainer on {s.image_size}x{s.image_size} fractal images ({s.pretrain_classes} classes x "
        f"{s.pretrain_per_class}, {s.pretrain_epochs} epochs, AdamW {s.pretrain_lr:g}; once per seed, not timed), "
        f"fine-tuned from the saved folder with a new head on scikit-learn digits upscaled to {s.image_size}x"
        f"{s.image_size} RGB ({n_train} train, {n_test} test); {s.epochs} epochs, batch {s.batch_size}, AdamW "
        f"{s.lr:g} {s.lr_scheduler}"
    )
    return Prepared("deit_transfer", s, splits[0], splits[1], model, description, info=info,
                    quality=q.classification([str(c) for c in range(10)]))


def pretrain_deit(w: flags.Workload, seed: int, folder: str) -> dict:
    """Pre-train `w`'s DeiT on its fractal data with the plain Trainer; `save_pretrained` to `folder`."""
    import shutil
    import time

    train, test = builders.prepare_data(w)
    out_dir = trainers.tempdir("kakurenbo_leaderboard_pretrain_")
    trainer = trainers.make_trainer("baseline", w, builders.build_model(w, seed), train, test, seed, out_dir,
                                    use_cpu=not _cuda())
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    trainer.model.save_pretrained(folder)
    accuracy = trainer.evaluate()["eval_accuracy"]
    shutil.rmtree(out_dir, ignore_errors=True)
    print(f"[leaderboard] deit_transfer: pre-trained seed {seed} in {seconds:.1f} s, fractal top-1 "
          f"{100 * (accuracy or 0):.1f}% -> {folder}", flush=True)
    return {"seconds": seconds, "accuracy": accuracy, "folder": folder}


def make_reviews(num_train: int, num_test: int, label_noise: float = 0.05, negation: float = 0.25, seed: int = 0):
    """Generated two-class reviews (train / validation `DatasetDict`), harder than the text example's set.

    Each review holds 1, 3 or 5 polarity words (the vocabulary of `examples/text_classification.py`)
    among noise words; the label is the majority polarity, and with probability `negation` a word
    is written as "not" + a word of the opposite polarity (same vote). Reviews with one word, or
    all votes alike, are easy; 3-2 votes with negations are hard: the mix that hiding works on.
    `label_noise` of the labels are flipped.
    """
    import random

    import text_classification as tc
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    rng = random.Random(seed)
    polar = {0: tc.NEGATIVE, 1: tc.POSITIVE}

    def review():
        label, votes = rng.randrange(2), rng.choice((1, 3, 5))
        own = rng.randint(votes // 2 + 1, votes)
        words = []
        for vote in [label] * own + [1 - label] * (votes - own):
            words += ["not", rng.choice(polar[1 - vote])] if rng.random() < negation else [rng.choice(polar[vote])]
        words += ["the", rng.choice(tc.SUBJECTS)] + [rng.choice(tc.NOISE) for _ in range(rng.randint(3, 10))]
        rng.shuffle(words)
        return " ".join(words), (1 - label) if rng.random() < label_noise else label

    features = Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"])})

    def split(n):
        texts, labels = zip(*(review() for _ in range(n)))
        return Dataset.from_dict({"text": list(texts), "label": list(labels)}, features=features)

    return DatasetDict({"train": split(num_train), "validation": split(num_test)})


def text(s: Text, cache_dir=None) -> Prepared:
    """A small BERT classifier (from a config) on generated reviews, tokenizer of the text example."""
    sys.path.insert(0, EXAMPLES)
    import text_classification as tc
    import torch
    from transformers import BertConfig, BertForSequenceClassification, DataCollatorWithPadding

    raw = make_reviews(s.train_samples, s.test_samples, s.label_noise, s.negation)
    tokenizer = tc.train_word_level_tokenizer(raw["train"]["text"], s.vocab_size, model_max_length=s.max_length)

    def tokenize(batch):
        out = tokenizer(batch["text"], truncation=True, max_length=s.max_length)
        out["labels"] = batch["label"]
        return out

    tokenized = raw.map(tokenize, batched=True, remove_columns=raw["train"].column_names)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=s.hidden_size, num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads, intermediate_size=2 * s.hidden_size,
        max_position_embeddings=max(64, s.max_length), pad_token_id=tokenizer.pad_token_id, num_labels=2,
    )

    def model(seed: int):
        torch.manual_seed(seed)
        return BertForSequenceClassification(config)

    return Prepared(
        "text", s, tokenized["train"], tokenized["validation"], model,
        f"BERT (hidden {s.hidden_size}, {s.num_layers} layers) from a config on generated reviews labelled by a "
        f"majority of 1/3/5 polarity words ({s.negation:.0%} negated), {s.train_samples} train, {s.test_samples} "
        f"test, {s.label_noise:.0%} flipped labels, word-level tokenizer of {len(tokenizer)} words, at most "
        f"{s.max_length} tokens; {s.epochs} epochs, batch {s.batch_size}, AdamW {s.lr:g} {s.lr_scheduler}",
        collate=DataCollatorWithPadding(tokenizer),
        quality=q.classification(raw["train"].features["label"].names),
    )


def timm_cnn(s: TimmCnn, cache_dir=None) -> Prepared:
    """A timm ResNet (BatchNorm, random weights) wrapped by transformers, on fractal images."""
    import torch
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    train, test = builders.prepare_data(flags.Workload(
        num_classes=s.num_classes, instances_per_class=s.instances_per_class,
        test_instances_per_class=s.test_instances_per_class, image_size=s.image_size, cache_dir=cache_dir))
    channels = [int(c) for c in s.channels.split("/")]
    model_args = {"channels": channels, "stem_width": s.stem_width, "output_stride": s.output_stride}
    config = TimmWrapperConfig(architecture=s.architecture, model_args=model_args, num_labels=s.num_classes)

    def model(seed: int):
        torch.manual_seed(seed)
        return TimmWrapperForImageClassification(config)

    return Prepared(
        "timm_cnn", s, train, test, model,
        f"timm {s.architecture} (widths {s.channels}, stem {s.stem_width}, output stride {s.output_stride}, BatchNorm) "
        f"from random weights through "
        f"TimmWrapperForImageClassification, on {s.image_size}x{s.image_size} fractal images ({s.num_classes} classes "
        f"x {s.instances_per_class} train, x {s.test_instances_per_class} test); {s.epochs} epochs, batch "
        f"{s.batch_size}, AdamW {s.lr:g} {s.lr_scheduler}",
        quality=q.classification([str(c) for c in range(s.num_classes)]),
    )


# --- the language-model workload -----------------------------------------------------------------

# The boilerplate of `lm_templated`: one snippet, a name and a year filled in per row (about 0.1 nats per
# byte left to learn: the fills).
TEMPLATE = "Copyright (c) 20{year:02d} {name}. All rights reserved. Licensed MIT."
TEMPLATE_NAMES = ("Ada", "Alan", "Grace", "Linus")
PAD = 256  # byte-level vocabulary: bytes 0-255, then the pad (never predicted: its labels are -100)
LM_GROUPS = ("prose", "templated")


class TokenRows:
    """A map-style dataset of fixed-length token rows (`input_ids`, `attention_mask`, `labels`), in memory."""

    def __init__(self, input_ids, attention_mask, labels):
        self.input_ids, self.attention_mask, self.labels = input_ids, attention_mask, labels

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.input_ids[index], "attention_mask": self.attention_mask[index],
                "labels": self.labels[index]}

    def __getitems__(self, indices) -> list[dict]:
        return [self[i] for i in indices]


def token_collate(features: list[dict]) -> dict:
    import torch

    keys = ("input_ids", "attention_mask", "labels")
    return {key: torch.stack([torch.as_tensor(f[key]) for f in features]) for key in keys}


def byte_rows(texts: list[bytes], block_size: int) -> TokenRows:
    """Rows of at most `block_size` bytes, padded with `PAD` (labels -100, attention 0)."""
    import numpy as np
    import torch

    ids = np.full((len(texts), block_size), PAD, dtype=np.int64)
    for i, text in enumerate(texts):
        row = np.frombuffer(text[:block_size], dtype=np.uint8)
        ids[i, :row.size] = row
    ids = torch.from_numpy(ids)
    mask = (ids != PAD).long()
    return TokenRows(ids, mask, torch.where(mask.bool(), ids, torch.full_like(ids, -100)))


def templated_texts(count: int, rng) -> list[bytes]:
    return [TEMPLATE.format(year=rng.randrange(100), name=rng.choice(TEMPLATE_NAMES)).encode() for _ in range(count)]


def prose_texts(documents: list[str], count: int, block_size: int) -> list[bytes]:
    """`count` consecutive windows of `block_size` bytes of the documents (whitespace collapsed, one per line)."""
    stream = "\n".join(" ".join(doc.split()) for doc in documents).encode()
    windows = [stream[i:i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]
    if len(windows) < count:
        raise ValueError(f"the prose corpus gives {len(windows)} rows of {block_size} bytes, {count} asked")
    return windows[:count]


def lm_templated(s: LmTemplated, cache_dir=None) -> Prepared:
    """A byte-level GPT-2 (from a config) on prose with a templated boilerplate subgroup.

    Prose: the standard-library docstrings of `examples/causal_lm.py` (shipped with Python; documents
    split between train and eval), whitespace collapsed, cut into rows of `block_size` bytes.
    Templated: `templated_fraction` of the rows are one boilerplate snippet (`TEMPLATE`) with a
    year and a name filled in (other draws in eval). The templated rows become easy
    (low loss, most bytes predicted) within an epoch or two: what a hiding rule hides first, and what
    the model forgets if it stays hidden. Quality: eval loss (nats per byte) overall and per subgroup.
    """
    import random

    import numpy as np
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    sys.path.insert(0, EXAMPLES)
    import causal_lm

    documents = causal_lm.python_docstring_corpus()
    random.Random(s.data_seed).shuffle(documents)
    num_eval_docs = max(1, len(documents) // 5)
    n_templated_train = int(round(s.templated_fraction * s.train_rows))
    n_templated_eval = int(round(s.templated_fraction * s.eval_rows))
    prose_train = prose_texts(documents[num_eval_docs:], s.train_rows - n_templated_train, s.block_size)
    prose_eval = prose_texts(documents[:num_eval_docs], s.eval_rows - n_templated_eval, s.block_size)
    rng = random.Random(s.data_seed)
    train_texts = prose_train + templated_texts(n_templated_train, rng)
    kinds = np.array([0] * len(prose_train) + [1] * n_templated_train)
    order = np.random.default_rng(s.data_seed).permutation(len(train_texts))
    train = byte_rows([train_texts[i] for i in order], s.block_size)
    kinds = kinds[order]
    test = byte_rows(prose_eval + templated_texts(n_templated_eval, random.Random(s.data_seed + 1)), s.block_size)
    group_of_eval_row = np.array([0] * len(prose_eval) + [1] * n_templated_eval)
    config = GPT2Config(vocab_size=PAD + 1, n_positions=s.block_size, n_embd=s.hidden_size, n_layer=s.num_layers,
                        n_head=s.num_heads, bos_token_id=PAD, eos_token_id=PAD, pad_token_id=PAD, use_cache=False)

    def model(seed: int):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config)

    example = TEMPLATE.format(year=17, name="Grace")
    return Prepared(
        "lm_templated", s, train, test, model,
        f"byte-level GPT-2 (hidden {s.hidden_size}, {s.num_layers} layers, {s.block_size}-byte rows) from a config on "
        f"standard-library docstrings ({len(prose_train)} train rows, {len(prose_eval)} eval rows from other "
        f"documents) plus a templated boilerplate subgroup ({n_templated_train} train, {n_templated_eval} eval rows "
        f"like {example!r}); {s.epochs} epochs, batch {s.batch_size}, AdamW {s.lr:g} {s.lr_scheduler}; quality: eval "
        f"loss (nats/byte) overall and per subgroup",
        collate=token_collate,
        quality=q.language_model(group_of_eval_row, LM_GROUPS),
        train_groups={name: np.flatnonzero(kinds == g) for g, name in enumerate(LM_GROUPS)},
        info={"documents": len(documents), "eval_documents": num_eval_docs},
    )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
