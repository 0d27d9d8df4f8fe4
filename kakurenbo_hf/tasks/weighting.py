"""Per-sample loss weights: the loss a weighted strategy (`uses_loss_weights`, e.g. InfoBatch) backpropagates.

A strategy whose epoch decision carries `weights` (float32, one per sample) replaces the model's
loss by the weighted sum of its per-sample cross-entropies, normalised as the model normalises:

    weighted loss = scale * sum_i w_i * s_i / D

    s_i    sum of the cross-entropy over sample i's counted positions: its label (classification)
           or its non-ignored tokens (the token tasks; causal LM with the labels shifted by one);
           with label smoothing eps, each position's (1 - eps) * nll +
           eps * mean over the classes of -log p (the Trainer's `LabelSmoother`, exactly)
    D      the model's denominator: `num_items_in_batch` where the Trainer hands it to the loss and
           the model uses it (the counted positions of the whole accumulated batch, all ranks),
           else the counted positions of this micro-batch (`normalisation_matches` tells which)
    scale  the Trainer's factor for a loss normalised over all ranks (the number of processes)

With every w_i = 1 this is the model's own loss: same value and same gradient (the trainer
checks the value at the first step and refuses the run if it differs, see `same_loss`).
So a weight multiplies the sample's share of the loss, each token of a sequence alike, and the
normalisation stays the model's (mean over the batch's counted positions): the weights are not
renormalised to sum to the batch size.

Pure torch (the task classes of `kakurenbo_hf.tasks` say what the model is, and with
`weightable = True` that this module reproduces its loss); no transformers.

Example::

    >>> form = loss_form(CausalLMStatistics())
    >>> sums, counts = per_sample_loss_sums(outputs.logits, labels, form)
    >>> loss = weighted_loss(sums, counts, weights[indices])   # == outputs.loss when weights are 1
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.stats import IGNORE_INDEX
from .builtin import TASK_CLASSES, TaskStatistics

# Tasks whose model loss is a plain (optionally label-smoothed) cross-entropy this module reproduces:
# those the task table marks `weightable`.
WEIGHTED_TASKS = tuple(task.task for task in TASK_CLASSES if task.weightable)

# Relative tolerance of the first-step comparison: float32 logits give the same loss up to the
# summation order (~1e-6); 16-bit logits may be reduced in 16 bits by the model or the label
# smoother (about 1e-3 apart from our float32 sums).
RTOL_FLOAT32 = 1e-4
RTOL_16_BIT = 2e-2


@dataclass(frozen=True)
class LossForm:
    """How the model turns logits and labels into its loss (what `per_sample_loss_sums` mirrors).

    Args:
        task: one of `WEIGHTED_TASKS`.
        shift: positions between a logit and its label (1 for causal LMs, else 0).
        ignore_index: the label the loss skips (-100).
        label_smoothing: the Trainer's `label_smoothing_factor` (0: plain cross-entropy).
    """

    task: str
    shift: int = 0
    ignore_index: int = IGNORE_INDEX
    label_smoothing: float = 0.0


def loss_form(statistics: TaskStatistics, label_smoothing: float = 0.0) -> LossForm:
    """The `LossForm` of the task `statistics` stands for, or a ValueError naming what is unsupported."""
    task = getattr(statistics, "task", None)
    if task not in WEIGHTED_TASKS:
        raise ValueError(
            f"per-sample loss weights reproduce the model's loss for {list(WEIGHTED_TASKS)} only; this model's task "
            f"is {task!r} ({type(statistics).__name__}), whose loss (BCE, MSE, upsampled or auxiliary terms) a "
            "weighted cross-entropy cannot equal. Use hiding_strategy='kakurenbo' or 'random', which leave the "
            "model's loss untouched."
        )
    return LossForm(task=task, shift=int(getattr(statistics, "shift", 0)),
                    ignore_index=int(getattr(statistics, "ignore_index", IGNORE_INDEX)),
                    label_smoothing=float(label_smoothing))


def per_sample_loss_sums(logits: torch.Tensor, labels: torch.Tensor, form: LossForm
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sums, counts), each of shape (batch,): the differentiable per-sample sum of the cross-entropy
    over the counted positions, and how many positions count (float32).

    `logits` (batch, classes) with labels (batch,), or (batch, length, classes) with labels
    (batch, length). Computed in float32 from the logits, as the Hugging Face losses do.
    """
    if logits.ndim == 2:  # one position per sample
        logits, labels = logits.unsqueeze(1), labels.reshape(-1, 1)
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"per-sample loss weights need logits (batch, [length,] classes) and labels of the leading "
                         f"shape; got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if form.shift:
        logits, labels = logits[:, :-form.shift], labels[:, form.shift:]
    batch, length, classes = logits.shape
    scores = logits.reshape(-1, classes).float()
    targets = labels.reshape(-1).to(scores.device).long()
    counted = targets != form.ignore_index
    loss = F.cross_entropy(scores, targets, ignore_index=form.ignore_index, reduction="none")
    if form.label_smoothing:
        eps = form.label_smoothing
        uniform = -torch.log_softmax(scores, dim=-1).mean(dim=-1)  # cross-entropy against the uniform target
        loss = (1.0 - eps) * loss + eps * uniform.masked_fill(~counted, 0.0)
    sums = loss.view(batch, length).sum(dim=1)
    counts = counted.view(batch, length).sum(dim=1).float()
    return sums, counts


def weighted_loss(sums: torch.Tensor, counts: torch.Tensor, weights: torch.Tensor | None = None,
                  denominator: torch.Tensor | float | None = None, scale: float = 1.0) -> torch.Tensor:
    """scale * sum_i w_i * s_i / D, D = `denominator` (the Trainer's `num_items_in_batch`) or the batch's count.

    `weights` None means every w_i = 1 (the model's own loss).
    """
    numerator = sums.sum() if weights is None else (weights.to(sums.dtype) * sums).sum()
    if denominator is None:
        denominator = counts.sum()
    elif torch.is_tensor(denominator):
        denominator = denominator.to(sums.device)
    return numerator / denominator * scale


def normalisation_matches(model_loss: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor,
                          items: torch.Tensor | float | None, scale: float, low_precision: bool) -> tuple[bool, bool]:
    """Whether the unweighted form reproduces `model_loss` (the model's loss of this micro-batch) divided by
    `items` (the Trainer's `num_items_in_batch`; False if None), and divided by the batch's own count.

    Models whose loss takes `num_items_in_batch` match the first (GPT-2, Llama, ViT); those that
    compute the batch mean whatever they are given (BERT, T5) the second; where the two counts
    coincide (no gradient accumulation, one process) both do.
    """
    by_items = items is not None and same_loss(weighted_loss(sums, counts, None, items, scale), model_loss,
                                               low_precision)
    by_count = same_loss(weighted_loss(sums, counts, None, None, scale), model_loss, low_precision)
    return by_items, by_count


class DeviceWeights:
    """The epoch's weights (a numpy array held by the engine) on the device, copied once per epoch.

    Example::

        >>> lookup = DeviceWeights()
        >>> batch_weights = lookup(engine.weights, sample_indices, device)   # (batch,) float32
    """

    def __init__(self):
        self._source: object = None
        self._copy: torch.Tensor | None = None

    def __call__(self, weights, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
        if self._source is not weights or self._copy.device != torch.device(device):
            self._copy = torch.from_numpy(np.ascontiguousarray(weights)).to(device)
            self._source = weights
        return self._copy[indices.reshape(-1).to(device).long()]


def same_loss(ours: torch.Tensor, model_loss: torch.Tensor, low_precision: bool) -> bool:
    """Whether our unweighted loss equals the model's (see the tolerances above); two NaNs are equal."""
    ours, model_loss = ours.detach().float().reshape(()), model_loss.detach().float().reshape(()).to(ours.device)
    if torch.isnan(ours) and torch.isnan(model_loss):
        return True
    rtol = RTOL_16_BIT if low_precision else RTOL_FLOAT32
    return bool(torch.isclose(ours, model_loss, rtol=rtol, atol=1e-6))


__all__ = ["DeviceWeights", "LossForm", "WEIGHTED_TASKS", "loss_form", "normalisation_matches", "per_sample_loss_sums",
           "same_loss", "weighted_loss"]
