"""The refresh pass: forward-only statistics of the samples hidden in the last epoch.

Hidden samples are not trained, so their statistics go stale. Before the next selection they
are recomputed with the model in eval mode, under `torch.no_grad()`, at the eval batch size.

Every rank runs the same number of forward passes of the same batch size
(`plan_refresh_batches`): under FSDP or DeepSpeed ZeRO-3 each forward is a collective, and ranks
that ran different numbers of them would hang or pair the wrong collectives. Rank r takes every
P-th hidden sample; a share shorter than the others is padded with samples from the start of the
list, whose rows are computed but not recorded. The forward goes through the model as the
training loop holds it (the DDP/FSDP/DeepSpeed wrapper), never through a module stripped of its
sharding.

No transformers import: the trainer hands in what the pass needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from torch.utils.data import DataLoader


def plan_refresh_batches(indices: np.ndarray, rank: int, num_processes: int, batch_size: int) -> list[tuple[list[int], int]]:
    """This rank's refresh batches: (sample indices, how many of them are real, not padding).

    Every rank gets ceil(ceil(H / P) / batch_size) batches of the same sizes, H = len(indices).

    Example::

        >>> [len(b) for b, _ in plan_refresh_batches(np.arange(129), 1, 2, 64)]
        [64, 1]
    """
    if batch_size < 1 or num_processes < 1 or not 0 <= rank < num_processes:
        raise ValueError(f"bad refresh geometry: rank {rank} of {num_processes}, batch size {batch_size}")
    indices = np.asarray(indices)
    if indices.dtype.kind not in "iu":
        indices = indices.astype(np.int64)
    if indices.size == 0:
        return []
    share_size = math.ceil(indices.size / num_processes)
    share = indices[rank::num_processes]
    num_real = share.size
    if num_real < share_size:  # pad with samples from the start of the list (recomputed, not recorded)
        share = np.concatenate([share, np.resize(indices, share_size - num_real)])
    batches = []
    for start in range(0, share_size, batch_size):
        batch = share[start : start + batch_size]
        batches.append((batch.tolist(), int(max(0, min(num_real - start, batch.size)))))
    return batches


def run_refresh(
    model: torch.nn.Module,
    dataset,
    batches: Iterable[tuple[list[int], int]],
    collate_fn: Callable,
    forward_inputs: Callable[[dict], dict],
    statistics: Callable[[object, dict], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    record: Callable[..., None],
    index_key: str,
    autocast: Callable[[], AbstractContextManager] | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> int:
    """Forward `batches` of `dataset` through `model` in eval mode and record their statistics.

    `forward_inputs(batch)` moves a collated batch to the device (the Trainer's `_prepare_inputs`),
    `statistics(outputs, batch)` returns per-sample (loss, confidence, correct), `record(indices,
    loss, confidence, correct)` stores them. Restores the model's training mode. Returns the
    number of samples recorded.
    """
    batches = list(batches)
    real = [num_real for _, num_real in batches]
    loader = DataLoader(
        dataset,
        batch_sampler=[batch for batch, _ in batches],
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator(),  # leaves the global RNG alone
    )
    was_training = model.training
    model.eval()
    recorded = 0
    try:
        with torch.no_grad():
            for batch, num_real in zip(loader, real):
                sample_indices = batch.pop(index_key)
                batch = forward_inputs(batch)
                with autocast() if autocast is not None else nullcontext():
                    outputs = model(**batch)
                loss, confidence, correct = statistics(outputs, batch)
                if num_real:
                    record(sample_indices[:num_real], loss[:num_real], confidence[:num_real], correct[:num_real])
                    recorded += num_real
    finally:
        model.train(was_training)
    return recorded
