"""Checks that stop a run before its first step, with an error naming the cause and the fix.

What a hiding run needs from its inputs: a map-style training set, epochs (not `max_steps`), a
sampling strategy whose order can leave out a shared hidden set, labels in every batch, and one
sample per row (no packing). Each function raises `ValueError`; nothing here changes state.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import IterableDataset

from ..distributed.rng import preserved_rng_state
from ..strategies.base import strategy_class
from .batch_selection import take_rows
from .indexing import SAMPLE_INDEX_KEY

# The Trainer's train_sampling_strategy -> the HidingSampler's order rule.
SAMPLER_ORDERS = {"random": "random", "sequential": "sequential", "group_by_length": "custom"}

# Batch keys of packed / flattened batches (flash-attention varlen boundaries, TRL, Mamba).
PACKING_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "cu_seqlens", "max_length_q", "max_length_k", "seq_idx")


def check_train_dataset(dataset) -> None:
    """A map-style training set: hiding needs to know and index every sample."""
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise ValueError(
            "KakurenboTrainer needs a map-style training set (with __len__ and indexing) to know which "
            f"samples to hide; got {type(dataset).__name__}. Use a `datasets.Dataset` (not streaming), "
            "or the plain Trainer for iterable data."
        )


def check_training_arguments(args, hiding_args) -> None:
    """Whole epochs (hiding works per epoch) and a sampling strategy the hiding sampler can follow."""
    if hiding_args.hiding_fraction > 0:
        if args.max_steps > 0:
            raise ValueError(
                "KakurenboTrainer hides samples per epoch: set num_train_epochs (an integer) instead of "
                f"max_steps={args.max_steps}, or set hiding_fraction=0."
            )
        if float(args.num_train_epochs) != int(args.num_train_epochs):
            raise ValueError(
                f"KakurenboTrainer needs a whole number of epochs, got num_train_epochs={args.num_train_epochs}."
            )
    strategy = getattr(args, "train_sampling_strategy", "random")
    if strategy not in SAMPLER_ORDERS:
        raise ValueError(
            f"KakurenboTrainer does not support train_sampling_strategy={strategy!r}: its samplers decide per rank "
            "which samples to train, which cannot leave out a hidden set that every rank shares. Use one of "
            f"{sorted(SAMPLER_ORDERS)} ('group_by_length' also groups by length), or the plain Trainer."
        )


def check_first_batch(dataset, collate_fn, labels_of, label_names, hiding_strategy: str) -> None:
    """Fail before training if batches carry no labels or pack several samples into a row (random
    transforms do not disturb the RNG)."""
    with preserved_rng_state():
        batch = collate_fn(dataset.__getitems__(list(range(min(2, len(dataset))))))
    labels = labels_of(batch)
    if labels is None:
        raise ValueError(
            "KakurenboTrainer needs labels in every training batch to compute per-sample statistics, but the "
            f"batch has only {sorted(k for k in batch.keys() if k != SAMPLE_INDEX_KEY)}. Put them under "
            f"{label_names or ['labels']} (or set `label_names`)."
        )
    check_one_row_per_sample(batch, labels)
    if strategy_class(hiding_strategy).selects_per_batch:  # fails now, not after the warm-up
        take_rows(batch, np.arange(1), len(batch[SAMPLE_INDEX_KEY]))


def check_one_row_per_sample(batch, labels) -> None:
    """Refuse batches that pack several documents into one row (packing / flattening collators).

    Hiding and the statistics are per row of the training set. A packed row holds several
    documents whose positions restart (`position_ids`), a flattened batch is one row for many
    samples (`DataCollatorWithFlattening`, TRL's `padding_free`): neither maps rows to samples.
    """
    indices = batch.get(SAMPLE_INDEX_KEY)
    num_samples = len(indices) if indices is not None else None
    packed_keys = sorted(key for key in PACKING_KEYS if key in batch)
    reason = None
    if packed_keys:
        reason = f"the batch carries {packed_keys} (sequence boundaries of packed rows)"
    elif (num_samples is not None and isinstance(labels, torch.Tensor) and labels.ndim >= 1
          and labels.shape[0] != num_samples):
        reason = f"the batch has {labels.shape[0]} label row(s) for {num_samples} samples"
    elif isinstance(batch.get("position_ids"), torch.Tensor) and _positions_restart(
            batch["position_ids"], batch.get("attention_mask")):
        reason = "its `position_ids` restart inside a row (several documents per row)"
    if reason is not None:
        raise ValueError(
            f"KakurenboTrainer hides rows of the training set, so one row must be one sample; {reason}. A packing "
            "collator breaks that: hiding a row would hide every document in it and its statistics would average "
            "over them. Packing is not supported: turn it off (TRL: `packing=False`, `padding_free=False`; no "
            "`DataCollatorWithFlattening`). Fixed-length blocks made before training (the HF language-modeling "
            "recipe's `group_texts`) are fine: each block is a sample."
        )


def _positions_restart(position_ids: torch.Tensor, attention_mask=None) -> bool:
    """Whether positions go down inside a row, among attended tokens (left/right padding is fine)."""
    if position_ids.ndim != 2 or position_ids.shape[1] < 2:
        return False
    valid = torch.ones_like(position_ids, dtype=torch.bool)
    if isinstance(attention_mask, torch.Tensor) and attention_mask.shape == position_ids.shape:
        valid = attention_mask.bool()
    drops = (position_ids[:, 1:] < position_ids[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    return bool(drops.any())
