#!/usr/bin/env python
"""Causal language modelling with KAKURENBO sample hiding: the Hugging Face language-modeling recipe
(transformers' examples/pytorch/language-modeling/run_clm.py) with `KakurenboTrainer` /
`KakurenboTrainingArguments`. The per-sample statistics of a causal LM are built in (labels
shifted as the model shifts them, -100 ignored, computed in chunks from the logits' own dtype).

Default run (no arguments; nothing is downloaded): the docstrings of about 70 standard-library
modules (text that ships with Python) are the corpus; a byte-level BPE tokenizer is trained on
the training documents with the `tokenizers` library; a small GPT-2 is built from a `GPT2Config`
(2 layers, hidden 128); texts are concatenated and cut into blocks of `--block_size` (64) tokens
(the recipe's `group_texts`): one block = one sample; the first `--embedded_blocks` (800) are kept. The training set also holds, as web corpora do,
repeated boilerplate (`--embedded_duplicates`: copies of a few blocks) and garbage
(`--embedded_noise`: blocks of uniformly random tokens). After training the script prints, per
kind of block, how many were ever hidden, and the held-out perplexity; `--compare_plain` also
trains the plain `Trainer` with the same arguments and prints both side by side:

    python examples/causal_lm.py                       # hiding only
    python examples/causal_lm.py --compare_plain       # and the plain Trainer, side by side

The recipe's arguments select other data and models:

    python examples/causal_lm.py --dataset_name wikitext --dataset_config_name wikitext-2-raw-v1 \
        --model_name_or_path gpt2 --block_size 512 --do_train --do_eval --output_dir out
    python examples/causal_lm.py --train_file train.txt --validation_file val.txt --tokenizer_name gpt2 ...

Every `TrainingArguments` field and the hiding fields of kakurenbo_hf/core/config.py are accepted
(`--hiding_fraction 0.3 --confidence_threshold 0.7 ...`). Defaults: `DEFAULT_ARGS` (10 epochs, lr
2e-3, cosine, warm-up 0.05, batch 16, no checkpoints, logging per epoch, seed 42, output
outputs/causal_lm); every flag you pass overrides them. Neither `--do_train` nor `--do_eval`
given: both are on.

What gets hidden. A block is hidden only if it is among the lowest-loss F_e x N blocks and the
model already predicts (argmax) at least tau = 0.7 of its tokens (the built-in confidence of
language models is the token accuracy, see kakurenbo_hf/tasks): blocks the model has learned to
reproduce. The summary prints, per kind of block, the candidate definitions side by side (token
accuracy, mean target probability, mean top probability, exp(-loss)) and how many blocks reach
tau with each: repeated blocks reach it with the token accuracy, not with probabilities; unique
text and random blocks reach it with none.

Multi-process on CPU:

    accelerate launch --multi_gpu --num_processes 2 examples/causal_lm.py --use_cpu --output_dir out/clm_ddp
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import os
import sys
import time
from dataclasses import dataclass, field
from itertools import chain
from typing import Optional

import numpy as np
import transformers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
    default_data_collator,
)
from transformers.utils import logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from image_classification import parse_args, require_work, setup_logging  # noqa: E402

from kakurenbo_hf import KakurenboTrainer, KakurenboTrainingArguments  # noqa: E402

logger = logging.get_logger("causal_lm")

DEFAULT_OUTPUT_DIR = "outputs/causal_lm"
DEFAULT_ARGS = [
    "--num_train_epochs", "10",
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
    "--report_to", "none",
    "--seed", "42",
]

# Standard-library modules whose docstrings make the embedded corpus (those that import are used).
CORPUS_MODULES = (
    "abc argparse base64 bisect calendar collections configparser contextlib copy csv dataclasses datetime "
    "decimal difflib email enum fractions functools glob gzip hashlib heapq hmac html http.client imaplib "
    "inspect io ipaddress itertools json logging mailbox math mimetypes operator optparse os pathlib pickle "
    "pprint queue random re shlex shutil smtplib socket sqlite3 statistics string subprocess tarfile tempfile "
    "textwrap threading timeit tokenize traceback typing unittest urllib.parse uuid warnings weakref "
    "xml.dom.minidom zipfile"
).split()

# Kinds of training blocks in the embedded data.
UNIQUE, DUPLICATE, NOISE = "unique", "duplicate", "noise"


def python_docstring_corpus(min_length: int = 200) -> list[str]:
    """Docstrings of standard-library modules and of their public classes and functions (ships with Python)."""
    documents = []
    for name in CORPUS_MODULES:
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a module this Python lacks
            continue
        doc = inspect.getdoc(module)
        if doc:
            documents.append(doc)
        for attribute, value in sorted(vars(module).items()):
            if attribute.startswith("_") or getattr(value, "__module__", None) != module.__name__:
                continue
            if inspect.isclass(value) or inspect.isfunction(value):
                doc = inspect.getdoc(value)
                if doc and len(doc) >= min_length:
                    documents.append(doc)
    return documents


def make_embedded_text(validation_fraction: float = 0.1, seed: int = 0):
    """A DatasetDict of `text` documents (train / validation split by document, deterministic)."""
    from datasets import Dataset, DatasetDict

    documents = python_docstring_corpus()
    order = np.random.default_rng(seed).permutation(len(documents))
    num_validation = max(1, int(len(documents) * validation_fraction))
    validation = [documents[i] for i in order[:num_validation]]
    train = [documents[i] for i in order[num_validation:]]
    return DatasetDict({"train": Dataset.from_dict({"text": train}), "validation": Dataset.from_dict({"text": validation})})


def train_bpe_tokenizer(texts, vocab_size: int = 2048, model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style) trained on `texts`, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", model_max_length=model_max_length)


def group_texts(examples, block_size: int):
    """The recipe's `group_texts`: concatenate, drop the remainder, cut into blocks; labels = input_ids."""
    concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
    total = (len(concatenated[list(examples.keys())[0]]) // block_size) * block_size
    result = {k: [t[i:i + block_size] for i in range(0, total, block_size)] for k, t in concatenated.items()}
    result["labels"] = [list(block) for block in result["input_ids"]]
    return result


def add_duplicates_and_noise(blocks, duplicates: float, noise: float, vocab_size: int, seed: int = 0):
    """Append copies of a few blocks (`duplicates` x N blocks: 10 copies of each source) and `noise` x N
    blocks of uniformly random tokens. Returns the new dataset and the kind of each row."""
    from datasets import concatenate_datasets

    rng = np.random.default_rng(seed)
    n = len(blocks)
    kinds = [UNIQUE] * n
    parts = [blocks]
    num_copies = int(round(duplicates * n))
    if num_copies:
        sources = rng.choice(n, size=max(1, num_copies // 10), replace=False)
        picks = np.resize(sources, num_copies)
        parts.append(blocks.select(picks.tolist()))
        kinds += [DUPLICATE] * num_copies
        for source in set(sources.tolist()):
            kinds[source] = DUPLICATE  # the originals are repeated text too
    num_noise = int(round(noise * n))
    if num_noise:
        length = len(blocks[0]["input_ids"])
        random_ids = rng.integers(0, vocab_size, (num_noise, length))
        rows = {"input_ids": random_ids.tolist(), "attention_mask": np.ones_like(random_ids).tolist(),
                "labels": random_ids.tolist()}
        parts.append(blocks.from_dict({k: rows[k] for k in blocks.column_names}, features=blocks.features))
        kinds += [NOISE] * num_noise
    return concatenate_datasets(parts), kinds


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Hub id or local folder. None: a small GPT-2 built from a GPT2Config."})
    config_name: Optional[str] = field(default=None, metadata={"help": "Config name or path if not the model's."})
    tokenizer_name: Optional[str] = field(
        default=None, metadata={"help": "Tokenizer name or path. None: the model's, else a BPE trained on the data."})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Where to store Hub downloads."})
    model_revision: str = field(default="main", metadata={"help": "Model version (branch, tag or commit)."})
    token: Optional[str] = field(default=None, metadata={"help": "Hub token."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom code from the Hub."})
    n_embd: int = field(default=128, metadata={"help": "Hidden size of the locally built GPT-2."})
    n_layer: int = field(default=2, metadata={"help": "Layers of the locally built GPT-2."})
    n_head: int = field(default=4, metadata={"help": "Heads of the locally built GPT-2."})
    vocab_size: int = field(default=2048, metadata={"help": "Vocabulary of the trained BPE tokenizer."})


@dataclass
class DataTrainingArguments:
    dataset_name: Optional[str] = field(default=None, metadata={"help": "Data set on the Hub."})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Its configuration name."})
    train_file: Optional[str] = field(default=None, metadata={"help": "txt, csv or json(l) training file."})
    validation_file: Optional[str] = field(default=None, metadata={"help": "Its validation counterpart."})
    text_column_name: Optional[str] = field(default=None, metadata={"help": "Text column (default: text or the first)."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the training blocks."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the evaluation blocks."})
    block_size: int = field(default=64, metadata={"help": "Tokens per block (one block = one training sample)."})
    validation_split_percentage: int = field(default=5, metadata={"help": "% of train used for validation if none."})
    preprocessing_num_workers: Optional[int] = field(default=None, metadata={"help": "Processes for map()."})
    keep_linebreaks: bool = field(default=True, metadata={"help": "Keep line breaks of txt files."})
    embedded_blocks: int = field(default=800, metadata={"help": "Embedded data: unique training blocks kept."})
    embedded_duplicates: float = field(
        default=0.1, metadata={"help": "Embedded data: repeated blocks, as a fraction of the unique blocks."})
    embedded_noise: float = field(
        default=0.1, metadata={"help": "Embedded data: random-token blocks, as a fraction of the unique blocks."})
    compare_plain: bool = field(
        default=False, metadata={"help": "Also train the plain Trainer with the same arguments; print both."})


def load_raw(data_args, model_args):
    import datasets
    from datasets import load_dataset

    if data_args.dataset_name is not None:
        raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=model_args.cache_dir,
                           token=model_args.token)
    elif data_args.train_file is not None:
        files = {"train": data_args.train_file}
        if data_args.validation_file is not None:
            files["validation"] = data_args.validation_file
        extension = data_args.train_file.rsplit(".", 1)[-1]
        extension = {"txt": "text", "jsonl": "json"}.get(extension, extension)
        extra = {"keep_linebreaks": data_args.keep_linebreaks} if extension == "text" else {}
        raw = load_dataset(extension, data_files=files, cache_dir=model_args.cache_dir, **extra)
    else:
        return make_embedded_text(), True
    if not isinstance(raw, datasets.DatasetDict):
        raw = datasets.DatasetDict({"train": raw})
    if "validation" not in raw:
        split = raw["train"].train_test_split(data_args.validation_split_percentage / 100, seed=0)
        raw["train"], raw["validation"] = split["train"], split["test"]
    return raw, False


def build_model_and_tokenizer(model_args, data_args, raw, text_column):
    common = dict(cache_dir=model_args.cache_dir, revision=model_args.model_revision, token=model_args.token,
                  trust_remote_code=model_args.trust_remote_code)
    source = model_args.tokenizer_name or model_args.model_name_or_path
    if source is not None:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
    else:
        tokenizer = train_bpe_tokenizer(raw["train"][text_column], model_args.vocab_size)
    if model_args.model_name_or_path is not None:
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, **common)
    elif model_args.config_name is not None:
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_args.config_name, **common))
    else:
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=max(data_args.block_size, 64),
                            n_embd=model_args.n_embd, n_layer=model_args.n_layer, n_head=model_args.n_head,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        model = GPT2LMHeadModel(config)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer


def blocks_of(raw, tokenizer, data_args, training_args, text_column):
    """Tokenize every split and cut it into blocks (the recipe's preprocessing)."""
    eos = tokenizer.eos_token or ""

    def tokenize(batch):
        return tokenizer([text + eos for text in batch[text_column]])

    with training_args.main_process_first(desc="tokenize and group"):
        tokenized = raw.map(tokenize, batched=True, remove_columns=raw["train"].column_names,
                            num_proc=data_args.preprocessing_num_workers, desc="Tokenizing")
        return tokenized.map(group_texts, batched=True, fn_kwargs={"block_size": data_args.block_size},
                             num_proc=data_args.preprocessing_num_workers, desc="Grouping into blocks")


def kind_report(hiding, kinds):
    """Per kind of block: how many exist, how many were hidden in some epoch, and the final statistics,
    from the run's `HidingReport` (`trainer.hiding_report()`)."""
    samples = hiding.samples()
    ever = samples["epochs_hidden"] > 0
    last = samples["hidden_last_epoch"]
    kinds = np.asarray(kinds)
    report = {}
    for kind in (UNIQUE, DUPLICATE, NOISE):
        rows = kinds == kind
        if not rows.any():
            continue
        report[kind] = {
            "blocks": int(rows.sum()),
            "ever_hidden": int(ever[rows].sum()),
            "hidden_last_epoch": int(last[rows].sum()),
            "mean_confidence": float(samples["confidence"][rows].mean()),
            "correct": float(samples["correct"][rows].mean()),
            "mean_loss": float(np.mean(finite)) if (finite := samples["loss"][rows][np.isfinite(samples["loss"][rows])]).size
            else float("nan"),
        }
    return report


def definitions_report(model, dataset, kinds, threshold, batch_size=64):
    """Per kind of block, after training (eval mode): the mean of each candidate per-sample
    confidence, and the fraction of blocks at or above `threshold` (tau).

    token accuracy: fraction of tokens whose target is the argmax (the built-in confidence);
    target probability: mean probability of the target tokens; top probability: mean probability
    of the argmax token; exp(-loss): the geometric mean of the target probabilities.
    """
    import torch

    model.eval()
    device = next(model.parameters()).device
    values = {name: [] for name in ("token accuracy", "target probability", "top probability", "exp(-loss)")}
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            rows = dataset[start:start + batch_size]
            input_ids = torch.as_tensor(rows["input_ids"], device=device)
            labels = torch.as_tensor(rows["labels"], device=device)[:, 1:]
            log_probs = model(input_ids=input_ids).logits[:, :-1].float().log_softmax(-1)
            valid = labels != -100
            count = valid.sum(1).clamp(min=1)
            target = log_probs.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
            top, prediction = log_probs.max(-1)
            mean = lambda x: (x * valid).sum(1) / count  # noqa: E731
            values["token accuracy"].append(mean((prediction == labels).float()))
            values["target probability"].append(mean(target.exp()))
            values["top probability"].append(mean(top.exp()))
            values["exp(-loss)"].append(mean(target).exp())
    values = {k: torch.cat(v).cpu().numpy() for k, v in values.items()}
    kinds = np.asarray(kinds)
    return {kind: {name: (float(v[kinds == kind].mean()), float((v[kinds == kind] >= threshold).mean()))
                   for name, v in values.items()}
            for kind in (UNIQUE, DUPLICATE, NOISE) if (kinds == kind).any()}


def run(training_args, model, tokenizer, train_dataset, eval_dataset, plain=False):
    if plain:
        args = TrainingArguments(**{f.name: getattr(training_args, f.name) for f in dataclasses.fields(TrainingArguments)
                                    if f.init})
        trainer = Trainer(model=model, args=args, train_dataset=train_dataset if args.do_train else None,
                          eval_dataset=eval_dataset if args.do_eval else None, processing_class=tokenizer,
                          data_collator=default_data_collator)
    else:
        trainer = KakurenboTrainer(
            model=model, args=training_args, train_dataset=train_dataset if training_args.do_train else None,
            eval_dataset=eval_dataset if training_args.do_eval else None, processing_class=tokenizer,
            data_collator=default_data_collator)
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
        metrics["perplexity"] = math.exp(metrics["eval_loss"]) if metrics["eval_loss"] < 50 else float("inf")
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
    require_work(training_args, "causal_lm.py")
    setup_logging(training_args)
    transformers.set_seed(training_args.seed)

    raw, embedded = load_raw(data_args, model_args)
    columns = raw["train"].column_names
    text_column = data_args.text_column_name or ("text" if "text" in columns else columns[0])
    model, tokenizer = build_model_and_tokenizer(model_args, data_args, raw, text_column)
    initial_state = {k: v.clone() for k, v in model.state_dict().items()} if data_args.compare_plain else None
    blocks = blocks_of(raw, tokenizer, data_args, training_args, text_column)
    train_dataset, eval_dataset = blocks["train"], blocks["validation"]
    if data_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(data_args.max_train_samples, len(train_dataset))))
    if data_args.max_eval_samples is not None:
        eval_dataset = eval_dataset.select(range(min(data_args.max_eval_samples, len(eval_dataset))))
    kinds = [UNIQUE] * len(train_dataset)
    if embedded:
        train_dataset = train_dataset.select(range(min(data_args.embedded_blocks, len(train_dataset))))
        train_dataset, kinds = add_duplicates_and_noise(train_dataset, data_args.embedded_duplicates,
                                                        data_args.embedded_noise, len(tokenizer),
                                                        seed=training_args.seed)
    logger.info(f"{type(model).__name__}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; "
                f"{len(train_dataset)} training blocks of {data_args.block_size} tokens")

    trainer, results = run(training_args, model, tokenizer, train_dataset, eval_dataset)
    if training_args.do_train:
        hiding = trainer.hiding_report()  # what was hidden, epoch by epoch and sample by sample
        results["kinds"] = kind_report(hiding, kinds)
        results["hidden_per_epoch"] = [row["num_hidden"] for row in hiding.epochs()]
        if embedded:
            results["definitions"] = definitions_report(trainer.model, train_dataset, kinds,
                                                        training_args.confidence_threshold)
            results["threshold"] = training_args.confidence_threshold
    if data_args.compare_plain:
        model.load_state_dict(initial_state)
        transformers.set_seed(training_args.seed)
        _, plain_results = run(training_args, model, tokenizer, train_dataset, eval_dataset, plain=True)
        results["plain"] = plain_results
    if trainer.is_world_process_zero():
        print_summary(results, len(train_dataset))
    return results


def print_summary(results, num_blocks):
    rows = [("KakurenboTrainer", results)] + ([("Trainer", results["plain"])] if "plain" in results else [])
    print("\n[causal_lm] trainer | train s | optimizer steps | eval perplexity")
    for name, r in rows:
        print(f"[causal_lm] {name} | {r.get('train_seconds', float('nan')):.1f} | {r.get('optimizer_steps', '-')} | "
              f"{r.get('perplexity', float('nan')):.2f}")
    if "hidden_per_epoch" in results:
        print(f"[causal_lm] hidden per epoch (of {num_blocks} blocks): {results['hidden_per_epoch']}")
    if "definitions" in results:
        tau = results["threshold"]
        print(f"[causal_lm] after training (eval mode), per kind of block: mean, and fraction >= tau = {tau}")
        names = list(next(iter(results["definitions"].values())))
        print("[causal_lm] kind | " + " | ".join(names))
        for kind, values in results["definitions"].items():
            print(f"[causal_lm] {kind} | " + " | ".join(f"{values[n][0]:.3f} ({values[n][1]:.0%})" for n in names))
    for kind, values in results.get("kinds", {}).items():
        print(f"[causal_lm] {kind:9s} blocks {values['blocks']:5d}  ever hidden {values['ever_hidden']:5d}  "
              f"hidden in the last epoch {values['hidden_last_epoch']:5d}  mean confidence "
              f"{values['mean_confidence']:.3f}  correct {values['correct']:.3f}  mean loss {values['mean_loss']:.3f}")


if __name__ == "__main__":
    main()
