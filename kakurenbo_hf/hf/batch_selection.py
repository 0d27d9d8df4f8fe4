"""Trainer glue of per-batch selection (`selective_backprop`): each micro-batch is scored without
gradients and the training step gets only the rows the strategy's selector keeps.

Owned by the `HidingController`: it holds this rank's selector (built when the run starts), whether the
current epoch selects, and the model the epoch trains.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from .indexing import SAMPLE_INDEX_KEY


class BatchSelection:
    """Backpropagate only the rows of each batch that a per-batch strategy keeps.

    Args:
        trainer: the `KakurenboMixin` trainer whose batches are selected.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self.selector = None  # this rank's selector, for a `selects_per_batch` strategy
        self.selecting = False  # whether the current epoch selects
        self.model = None  # the model the epoch trains (as the training loop wraps it)

    def reset(self) -> None:
        self.selector, self.selecting, self.model = None, False, None

    def check(self) -> None:
        """Refuse what a per-batch selection would get wrong: ranks that share a batch (tensor, context or
        sequence parallelism) would each draw their own subset of it."""
        config = getattr(self.trainer.accelerator, "parallelism_config", None)
        shared = int(getattr(config, "non_data_parallel_size", 1) or 1) if config is not None else 1
        shared = max(shared, int(getattr(self.trainer.model, "_tp_size", None) or 1))
        if shared > 1:
            raise ValueError(
                f"hiding_strategy={self.trainer.hiding_args.hiding_strategy!r} selects rows of each process's batch, "
                f"but "
                f"{shared} processes share each batch here (tensor/context/sequence parallelism): each would draw its "
                "own subset of the same batch. Use data parallelism only (DDP, FSDP, DeepSpeed ZeRO), or another strategy."
            )

    def select(self, batch_samples, num_items_in_batch, device):
        """The step's micro-batches; in a selecting epoch, each reduced to the rows its scoring pass keeps.

        `num_items_in_batch` is then counted over the kept rows (of every micro-batch, and of every
        rank with `average_tokens_across_devices`), so the loss is normalised exactly as the plain
        Trainer's would be if it were given the kept rows as its batches.
        """
        if not self.selecting or not batch_samples:
            return batch_samples, num_items_in_batch
        kept = [self._keep_selected_rows(batch, micro_batch) for micro_batch, batch in enumerate(batch_samples)]
        return kept, self.trainer._get_num_items_in_batch(kept, device)

    def _keep_selected_rows(self, batch, micro_batch: int):
        """Forward `batch` without gradients in eval mode (no BatchNorm update, no dropout, as the reference
        code), record every sample's statistics, and return the rows the selector keeps."""
        indices = batch[SAMPLE_INDEX_KEY]
        inputs = self.trainer._prepare_inputs({key: value for key, value in batch.items() if key != SAMPLE_INDEX_KEY})
        labels = self.trainer._labels_of(inputs)
        trainer = self.trainer
        if (trainer.label_smoother is not None or trainer.compute_loss_func is not None) and "labels" in inputs:
            inputs = {key: value for key, value in inputs.items() if key != "labels"}  # as Trainer.compute_loss
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.trainer.compute_loss_context_manager():
                loss, confidence, correct = self.trainer.per_sample_statistics_fn(model(**inputs), labels)
        finally:
            model.train(was_training)
        controller = self.trainer.hiding_controller
        controller.record(indices, loss, confidence, correct)
        controller.count_samples(len(indices), 0)
        keep = self.selector.select(loss.float().cpu().numpy(), step=self.trainer.state.global_step,
                                    micro_batch=micro_batch)
        return take_rows(batch, np.flatnonzero(keep), len(indices))


def take_rows(batch, rows: np.ndarray, batch_size: int, key: str = "batch"):
    """The rows `rows` of every per-sample entry of `batch` (first dimension `batch_size`).

    Tensors, arrays, lists and tuples are sliced along their first dimension (nested mappings
    too); scalars, strings and None are kept. An entry with another first dimension cannot be
    split by sample: refused with a `ValueError` naming it.
    """
    if isinstance(batch, Mapping):
        values = {name: take_rows(value, rows, batch_size, key=str(name)) for name, value in batch.items()}
        try:
            return type(batch)(values)
        except TypeError:
            return values
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        if batch.ndim == 0:
            return batch
        if batch.shape[0] != batch_size:
            raise _unsplittable(key, f"shape {tuple(batch.shape)}", batch_size)
        if isinstance(batch, np.ndarray):
            return batch[rows]
        return batch.index_select(0, torch.as_tensor(rows, dtype=torch.long, device=batch.device))
    if isinstance(batch, (list, tuple)):
        if len(batch) != batch_size:
            raise _unsplittable(key, f"length {len(batch)}", batch_size)
        return type(batch)(batch[int(row)] for row in rows)
    return batch


def _unsplittable(key: str, what: str, batch_size: int) -> ValueError:
    return ValueError(
        f"hiding_strategy='selective_backprop' backpropagates a subset of each batch, so it slices every batch "
        f"entry along its first dimension (the samples); {key!r} has {what} for a batch of {batch_size} samples and "
        "cannot be split by sample. Use a collator that puts the samples first in every entry, or another strategy."
    )
