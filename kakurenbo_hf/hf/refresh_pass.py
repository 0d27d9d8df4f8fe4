"""The refresh pass: forward-only statistics of a slice of the samples hidden in the last epoch.

The model runs in eval mode, under `torch.no_grad()`, at the refresh batch size; the forward goes
through the model as the training loop holds it (the DDP/FSDP/DeepSpeed wrapper), never through a
module stripped of its sharding. Which samples, and how the ranks split them, is decided in
`core/refresh_slice.py`. No transformers import: the controller hands in what the pass needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch.utils.data import DataLoader


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
