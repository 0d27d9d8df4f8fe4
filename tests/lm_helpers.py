"""A tiny causal LM and generated token data for the LM tests (CPU, offline, seconds).

A "learnable" row repeats a fixed pattern (rolled); a "noise" row is uniform random tokens. The
learnable rows come first: after a few epochs they are predicted confidently and get hidden; the
noise rows never can be.
"""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel

VOCAB = 24
LENGTH = 16


def lm_dataset(num_learnable=32, num_noise=32, seed=0, pad_some=True):
    """input_ids/attention_mask/labels rows: learnable ones first, noise after."""
    rng = np.random.default_rng(seed)
    pattern = (np.arange(LENGTH) % 5) + 3
    rows = [np.roll(pattern, int(rng.integers(5))) for _ in range(num_learnable)]
    rows += [rng.integers(3, VOCAB, LENGTH) for _ in range(num_noise)]
    ids = np.stack(rows).astype(np.int64)
    mask = np.ones_like(ids)
    if pad_some:
        mask[1::4, -4:] = 0  # right padding on some rows
    labels = np.where(mask == 1, ids, -100)
    ids = np.where(mask == 1, ids, 0)
    return Dataset.from_dict({"input_ids": ids, "attention_mask": mask, "labels": labels}).with_format("torch")


def tiny_gpt2(seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=32, n_layer=1, n_head=2,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2))
