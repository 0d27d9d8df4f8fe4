#!/usr/bin/env python
"""Text (sequence) classification with KAKURENBO sample hiding, in the style of the Hugging Face
text-classification recipe, with `KakurenboTrainer` / `KakurenboTrainingArguments`.

Default run (no arguments: a generated, deterministic sentiment-like data set of 3000 train / 600
validation sentences, a word-level tokenizer trained on the training text with the `tokenizers`
library, a small BERT built from a `BertConfig`; output in outputs/text_classification; its time
and accuracy on a 2-core CPU: benchmarks/results/examples.json, `python -m benchmarks.run_examples`):

    python examples/text_classification.py

Other data (columns `--text_column_name` / `--label_column_name`, default text / label):

    python examples/text_classification.py --train_file train.csv --validation_file val.csv \
        --do_train --do_eval --output_dir out --num_train_epochs 3 --learning_rate 1e-3
    python examples/text_classification.py --dataset_name imdb ...        # from the Hub

A pretrained model / tokenizer (Hub id or a local folder written by save_pretrained):

    python examples/text_classification.py --model_name_or_path bert-base-uncased ...
    python examples/text_classification.py --tokenizer_name path/to/tokenizer ...  # small BERT, this tokenizer

Every `TrainingArguments` field and the hiding fields of kakurenbo_hf/core/config.py are accepted
(`--hiding_fraction 0.3 --hiding_strategy random ...`).

Defaults. Every run starts from this recipe's defaults (`DEFAULT_ARGS`: 4 epochs, lr 1e-3, weight
decay 0.01, warm-up 0.1, train batch 32, eval batch 128, no checkpoints, logging per epoch,
report_to none, seed 42, output_dir outputs/text_classification), not from the `TrainingArguments`
ones; every flag you pass overrides its default. If you pass neither `--do_train` nor `--do_eval`,
both are on; pass one of them to choose. A run with both off stops with an error (exit status 1)
instead of doing nothing. A single JSON file (`script.py args.json`) is read the same way.

Multi-process on CPU:

    accelerate launch --multi_gpu --num_processes 2 examples/text_classification.py \
        --use_cpu --do_train --do_eval --output_dir outputs/tc_ddp --num_train_epochs 4 \
        --learning_rate 1e-3 --per_device_train_batch_size 32
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass, field
from typing import Optional

import transformers
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from image_classification import (  # noqa: E402
    accuracy_metric,
    parse_args,
    require_work,
    setup_logging,
    train_and_evaluate,
)

from kakurenbo_hf import KakurenboTrainer, KakurenboTrainingArguments  # noqa: E402

logger = logging.get_logger("text_classification")

DEFAULT_OUTPUT_DIR = "outputs/text_classification"
# The defaults of every run (the user's flags come after them and win); --do_train --do_eval are
# added when the user passes neither.
DEFAULT_ARGS = [
    "--num_train_epochs", "4",
    "--learning_rate", "1e-3",
    "--weight_decay", "0.01",
    "--warmup_steps", "0.1",
    "--per_device_train_batch_size", "32",
    "--per_device_eval_batch_size", "128",
    "--eval_strategy", "no",
    "--save_strategy", "no",
    "--logging_strategy", "epoch",
    "--report_to", "none",
    "--seed", "42",
]

POSITIVE = ["good", "great", "excellent", "wonderful", "lovely", "superb", "enjoyable", "brilliant", "pleasant",
            "delightful", "fantastic", "charming", "moving", "fun", "solid"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dull", "poor", "horrible", "weak", "tedious", "mediocre",
            "disappointing", "messy", "clumsy", "bland", "annoying"]
SUBJECTS = ["movie", "film", "book", "story", "show", "plot", "cast", "ending", "soundtrack", "script", "album",
            "game", "restaurant", "meal", "service"]
NOISE = ["the", "a", "it", "was", "really", "quite", "and", "but", "i", "think", "this", "that", "very", "so",
         "overall", "honestly", "also", "with", "some", "of", "my", "friend", "said", "yesterday", "we", "saw",
         "at", "in", "time", "long", "short", "new", "old", "again", "then", "just"]
TEMPLATES = [
    "the {s} was {w}",
    "i think this {s} is {w} {n}",
    "{n} {n} the {s} felt {w} {n}",
    "honestly a {w} {s} {n} {n}",
    "{n} my friend said the {s} was {w} and {w2}",
    "what a {w} {s} {n} {n} {n}",
    "{n} {n} {n} {s} {w} {n} {n}",
]


def make_sentiment_dataset(num_train=3000, num_validation=600, seed=0, label_noise=0.05):
    """Deterministic two-class data set: templates filled with positive / negative words plus noise words.

    Some sentences also carry one word of the other polarity ("... was great and dull"), and
    `label_noise` of the labels are flipped, so the task is not perfectly separable.
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    rng = random.Random(seed)

    def sentence():
        label = rng.randrange(2)
        own, other = (POSITIVE, NEGATIVE) if label == 1 else (NEGATIVE, POSITIVE)
        template = rng.choice(TEMPLATES)
        w2 = rng.choice(other) if rng.random() < 0.2 else rng.choice(own)
        text = template.replace("{w2}", w2)
        while "{n}" in text:
            text = text.replace("{n}", rng.choice(NOISE), 1)
        text = text.format(s=rng.choice(SUBJECTS), w=rng.choice(own))
        if rng.random() < label_noise:
            label = 1 - label
        return text, label

    features = Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"])})

    def split(n):
        rows = [sentence() for _ in range(n)]
        return Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]}, features=features)

    return DatasetDict({"train": split(num_train), "validation": split(num_validation)})


def train_word_level_tokenizer(texts, vocab_size=2000, model_max_length=128):
    """A lower-casing word-level tokenizer trained on `texts`, as a PreTrainedTokenizerFast (offline)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=special))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=model_max_length,
    )


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Hub id or local folder. None: a small BERT built from a BertConfig."}
    )
    config_name: Optional[str] = field(default=None, metadata={"help": "Config name or path if not the model's."})
    tokenizer_name: Optional[str] = field(
        default=None, metadata={"help": "Tokenizer name or path. None: the model's, else one trained on the data."}
    )
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Where to store Hub downloads."})
    model_revision: str = field(default="main", metadata={"help": "Model version (branch, tag or commit)."})
    token: Optional[str] = field(default=None, metadata={"help": "Hub token."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom code from the Hub."})
    ignore_mismatched_sizes: bool = field(default=False, metadata={"help": "Re-initialise a mismatched head."})
    hidden_size: int = field(default=64, metadata={"help": "Hidden size of the locally built BERT."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Layers of the locally built BERT."})
    num_attention_heads: int = field(default=2, metadata={"help": "Heads of the locally built BERT."})
    vocab_size: int = field(default=2000, metadata={"help": "Max vocabulary of the trained tokenizer."})


@dataclass
class DataTrainingArguments:
    dataset_name: Optional[str] = field(default=None, metadata={"help": "Data set on the Hub."})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Its configuration name."})
    train_file: Optional[str] = field(default=None, metadata={"help": "csv or json(l) training file."})
    validation_file: Optional[str] = field(default=None, metadata={"help": "csv or json(l) validation file."})
    train_val_split: float = field(default=0.15, metadata={"help": "Train fraction for validation if none."})
    text_column_name: str = field(default="text", metadata={"help": "Column holding the text."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the labels."})
    max_seq_length: int = field(default=64, metadata={"help": "Truncate the tokenized texts to this length."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the evaluation set."})
    synthetic_train_size: int = field(default=3000, metadata={"help": "Generated data: training rows."})
    synthetic_validation_size: int = field(default=600, metadata={"help": "Generated data: validation rows."})
    synthetic_seed: int = field(default=0, metadata={"help": "Generated data: seed."})


def load_data(data_args, model_args, training_args):
    import datasets
    from datasets import load_dataset

    if data_args.dataset_name is not None:
        raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=model_args.cache_dir,
                           token=model_args.token)
    elif data_args.train_file is not None:
        data_files = {"train": data_args.train_file}
        if data_args.validation_file is not None:
            data_files["validation"] = data_args.validation_file
        ext = data_args.train_file.rsplit(".", 1)[-1]
        ext = "json" if ext in ("json", "jsonl") else ext
        raw = load_dataset(ext, data_files=data_files, cache_dir=model_args.cache_dir)
    else:
        raw = make_sentiment_dataset(data_args.synthetic_train_size, data_args.synthetic_validation_size,
                                     seed=data_args.synthetic_seed)
    if not isinstance(raw, datasets.DatasetDict):
        raw = datasets.DatasetDict({"train": raw})
    if "validation" not in raw and "test" in raw:
        raw["validation"] = raw.pop("test")
    if "validation" not in raw and data_args.train_val_split > 0:
        split = raw["train"].train_test_split(data_args.train_val_split, seed=training_args.seed)
        raw["train"], raw["validation"] = split["train"], split["test"]
    for name in (data_args.text_column_name, data_args.label_column_name):
        if name not in raw["train"].column_names:
            raise ValueError(f"Column {name!r} not in {raw['train'].column_names}; set --text_column_name / "
                             "--label_column_name.")
    feature = raw["train"].features[data_args.label_column_name]
    if isinstance(feature, datasets.ClassLabel):
        labels = list(feature.names)
    else:  # plain ints or strings: one ClassLabel over the sorted values of every split
        raw = raw.class_encode_column(data_args.label_column_name)
        labels = list(raw["train"].features[data_args.label_column_name].names)
    return raw, labels


def main(args_list=None):
    model_args, data_args, training_args = parse_args(
        args_list, default_output_dir=DEFAULT_OUTPUT_DIR, default_args=DEFAULT_ARGS,
        dataclass_types=(ModelArguments, DataTrainingArguments, KakurenboTrainingArguments),
    )
    require_work(training_args, "text_classification.py")
    setup_logging(training_args)
    logger.warning(f"Process rank: {training_args.local_process_index}, device: {training_args.device}")
    transformers.set_seed(training_args.seed)

    raw, labels = load_data(data_args, model_args, training_args)
    label2id = {label: i for i, label in enumerate(labels)}
    id2label = {i: label for i, label in enumerate(labels)}
    common = dict(cache_dir=model_args.cache_dir, revision=model_args.model_revision, token=model_args.token,
                  trust_remote_code=model_args.trust_remote_code)

    tokenizer_source = model_args.tokenizer_name or model_args.model_name_or_path
    if tokenizer_source is not None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, **common)
    else:
        tokenizer = train_word_level_tokenizer(raw["train"][data_args.text_column_name], model_args.vocab_size,
                                               model_max_length=max(data_args.max_seq_length, 8))
    if model_args.model_name_or_path is not None:
        config = AutoConfig.from_pretrained(
            model_args.config_name or model_args.model_name_or_path, num_labels=len(labels), label2id=label2id,
            id2label=id2label, finetuning_task="text-classification", **common,
        )
        model = AutoModelForSequenceClassification.from_pretrained(
            model_args.model_name_or_path, config=config, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            **common,
        )
    else:
        config = BertConfig(
            vocab_size=len(tokenizer), hidden_size=model_args.hidden_size,
            num_hidden_layers=model_args.num_hidden_layers, num_attention_heads=model_args.num_attention_heads,
            intermediate_size=2 * model_args.hidden_size, max_position_embeddings=max(128, data_args.max_seq_length),
            pad_token_id=tokenizer.pad_token_id, num_labels=len(labels), label2id=label2id, id2label=id2label,
        )
        model = BertForSequenceClassification(config)
    logger.info(f"Model {type(model).__name__}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")

    text_column, label_column = data_args.text_column_name, data_args.label_column_name

    def tokenize(batch):
        out = tokenizer(batch[text_column], truncation=True, max_length=data_args.max_seq_length)
        out["labels"] = batch[label_column]
        return out

    with training_args.main_process_first(desc="tokenize"):
        tokenized = raw.map(tokenize, batched=True, remove_columns=raw["train"].column_names, desc="Tokenizing")
    train_dataset = tokenized["train"]
    if data_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(data_args.max_train_samples, len(train_dataset))))
    eval_dataset = tokenized.get("validation")
    if eval_dataset is not None and data_args.max_eval_samples is not None:
        eval_dataset = eval_dataset.select(range(min(data_args.max_eval_samples, len(eval_dataset))))

    trainer = KakurenboTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy_metric(),
    )

    return train_and_evaluate(trainer, training_args, "text_classification", num_labels=len(labels))


if __name__ == "__main__":
    main()
