"""Trainer glue of per-batch selection (`selective_backprop`): each micro-batch is scored without
gradients and the training step gets only the rows the strategy's selector keeps.

Mixed into `KakurenboMixin`; reads its `_selecting_batches`, `_batch_selector`, `_training_model`,
`_recorder`.
"""

from __future__ import annotations

import numpy as np
import torch

from .indexing import SAMPLE_INDEX_KEY
from ..strategies.selective_backprop import take_rows


class BatchSelectionMixin:
    """Backpropagate only the rows of each batch that a per-batch strategy keeps."""

    def _check_batch_selection(self) -> None:
        """Refuse what a per-batch selection would get wrong: ranks that share a batch (tensor, context or
        sequence parallelism) would each draw their own subset of it."""
        config = getattr(self.accelerator, "parallelism_config", None)
        shared = int(getattr(config, "non_data_parallel_size", 1) or 1) if config is not None else 1
        shared = max(shared, int(getattr(self.model, "_tp_size", None) or 1))
        if shared > 1:
            raise ValueError(
                f"hiding_strategy={self.hiding_args.hiding_strategy!r} selects rows of each process's batch, but "
                f"{shared} processes share each batch here (tensor/context/sequence parallelism): each would draw its "
                "own subset of the same batch. Use data parallelism only (DDP, FSDP, DeepSpeed ZeRO), or another strategy."
            )

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The step's micro-batches; in a selecting epoch, each reduced to the rows its scoring pass keeps.

        `num_items_in_batch` is then counted over the kept rows (of every micro-batch, and of every
        rank with `average_tokens_across_devices`), so the loss is normalised exactly as the plain
        Trainer's would be if it were given the kept rows as its batches.
        """
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not self._selecting_batches or not batch_samples:
            return batch_samples, num_items_in_batch
        kept = [self._keep_selected_rows(batch, micro_batch) for micro_batch, batch in enumerate(batch_samples)]
        return kept, self._get_num_items_in_batch(kept, device)

    def _keep_selected_rows(self, batch, micro_batch: int):
        """Forward `batch` without gradients in eval mode (no BatchNorm update, no dropout, as the reference
        code), record every sample's statistics, and return the rows the selector keeps."""
        indices = batch[SAMPLE_INDEX_KEY]
        inputs = self._prepare_inputs({key: value for key, value in batch.items() if key != SAMPLE_INDEX_KEY})
        labels = self._labels_of(inputs)
        if (self.label_smoother is not None or self.compute_loss_func is not None) and "labels" in inputs:
            inputs = {key: value for key, value in inputs.items() if key != "labels"}  # as Trainer.compute_loss
        model = self._training_model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.compute_loss_context_manager():
                loss, confidence, correct = self.per_sample_statistics_fn(model(**inputs), labels)
        finally:
            model.train(was_training)
        self._recorder.add(indices, loss, confidence, correct, step=self.state.global_step)
        self._count_samples(len(indices), 0)
        keep = self._batch_selector.select(loss.float().cpu().numpy(), step=self.state.global_step,
                                           micro_batch=micro_batch)
        return take_rows(batch, np.flatnonzero(keep), len(indices))
