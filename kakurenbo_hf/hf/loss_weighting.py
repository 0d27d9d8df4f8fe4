"""Trainer glue of the weighted strategies (`infobatch`, `iswr`): the loss backpropagated in their
epochs is the weighted per-sample loss (the arithmetic is in `kakurenbo_hf/weighting.py`), checked
against the model's own loss at the first step.

Owned by the `HidingController`; reads the trainer's arguments, model and statistics function.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ..strategies.base import strategy_class
from ..tasks import AutoStatistics, TaskStatistics, detect_statistics
from ..tasks.builtin import fused_log_probs, output_field
from ..tasks.weighting import DeviceWeights, loss_form, normalisation_matches, per_sample_loss_sums, weighted_loss


class LossWeighting:
    """Per-sample loss weights for the epochs of a strategy that asks for them (`uses_loss_weights`).

    Args:
        trainer: the `KakurenboMixin` trainer whose loss is weighted.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self.reset()

    def reset(self) -> None:
        """Forget the loss form found at the first step (a new `train()` call checks it again)."""
        self._loss_form = None  # how the model computes its loss, found at the first step
        self._normalise_by_items: bool | None = None  # its denominator (None: not checked yet)
        self._device_weights = DeviceWeights()

    def weighted_strategy_name(self) -> str | None:
        """The hiding strategy's name if it weights per-sample losses and hiding is on, else None."""
        name = self.trainer.hiding_args.hiding_strategy
        weighted = (self.trainer.hiding_args.hiding_fraction > 0
                    and strategy_class(name).weights_losses(self.trainer.hiding_args))
        return name if weighted else None

    def check_arguments(self) -> None:
        """Before training: refuse what makes a weighted per-sample loss differ from the model's loss."""
        name = self.weighted_strategy_name()
        if name is None:
            return
        statistics = self.trainer.per_sample_statistics_fn
        cause = None
        if self.trainer.compute_loss_func is not None:
            cause = ("a `compute_loss_func` computes the loss, which per-sample weights cannot reproduce; drop it (the "
                     "model's own cross-entropy is then weighted)")
        elif self.trainer.args.n_gpu > 1:
            cause = (f"{self.trainer.args.n_gpu} GPUs run in one process (torch.nn.DataParallel), whose per-GPU losses the "
                     "weights cannot follow; launch one process per GPU (`torchrun` or `accelerate launch`)")
        elif not (statistics == self.trainer._default_statistics or isinstance(statistics, TaskStatistics)):
            cause = ("a custom `per_sample_statistics_fn` gives statistics, not the differentiable per-sample loss the "
                     "weights multiply; pass one of the built-in statistics classes of kakurenbo_hf.tasks (or none: "
                     "the model's task is detected)")
        elif isinstance(statistics, TaskStatistics) and not isinstance(statistics, AutoStatistics):
            try:
                loss_form(statistics, self.trainer.args.label_smoothing_factor)
            except ValueError as error:
                cause = str(error)
        if cause is not None:
            raise ValueError(
                f"hiding_strategy={name!r} trains on per-sample weighted losses, but {cause}. Or use "
                "hiding_strategy='kakurenbo' or 'random', which leave the model's loss untouched."
            )

    def _weighting_form(self, outputs, labels):
        """The model's loss as a `LossForm` (its task detected as the built-in statistics detect it)."""
        if fused_log_probs(outputs) is not None:
            raise ValueError(
                f"hiding_strategy={self.trainer.hiding_args.hiding_strategy!r} weights per-sample losses computed from the "
                "logits, but the model returns fused per-token log-probs (TRL's fused LM head) instead. Turn the fused "
                "head off, or use hiding_strategy='kakurenbo' or 'random'."
            )
        statistics = self.trainer.per_sample_statistics_fn
        if isinstance(statistics, AutoStatistics):
            statistics = detect_statistics(statistics.model if statistics.model is not None else self.trainer.model,
                                           outputs, labels)
        elif not isinstance(statistics, TaskStatistics):  # the default: detected from the model
            statistics = detect_statistics(self.trainer.model, outputs, labels)
        try:
            return loss_form(statistics, self.trainer.args.label_smoothing_factor)
        except ValueError as error:
            raise ValueError(f"hiding_strategy={self.trainer.hiding_args.hiding_strategy!r}: {error} Nothing was trained.") \
                from error

    def _trainer_loss_scale(self, num_items_in_batch) -> float:
        """The factor `Trainer.compute_loss` applies to a loss normalised over every rank's items."""
        averaged = self.trainer.args.average_tokens_across_devices and self.trainer.model_accepts_loss_kwargs
        if averaged and num_items_in_batch is not None:
            if self.trainer.args.n_gpu > 1:
                return self.trainer.args.n_gpu
            tp_size = self.trainer.get_tp_size() if hasattr(self.trainer, "get_tp_size") else 1
            return self.trainer.hiding_controller.topology.world_size // tp_size
        return 1

    def weighted_loss(self, loss, outputs, labels, sample_indices, num_items_in_batch):
        """The epoch's weighted per-sample loss (the model's `loss` in epochs without weights).

        At the first training step of each `train()` call the unweighted form is compared with the
        model's loss (`_choose_normalisation`); the run stops on every rank if they differ.
        """
        weights = self.trainer.hiding_controller.engine.weights
        if weights is None and self._normalise_by_items is not None:
            return loss
        if self._loss_form is None:
            self._loss_form = self._weighting_form(outputs, labels)
        logits = output_field(outputs, "logits")
        items = num_items_in_batch if self.trainer.model_accepts_loss_kwargs and num_items_in_batch is not None else None
        scale = self._trainer_loss_scale(num_items_in_batch)
        with torch.no_grad() if weights is None else nullcontext():
            sums, counts = per_sample_loss_sums(logits, labels, self._loss_form)
        if self._normalise_by_items is None:
            self._choose_normalisation(loss, sums.detach(), counts, items, scale, outputs, logits)
        if weights is None:
            return loss
        sample_weights = self._device_weights(weights, sample_indices, sums.device)
        return weighted_loss(sums, counts, sample_weights, items if self._normalise_by_items else None, scale)

    def _choose_normalisation(self, model_loss, sums, counts, items, scale, outputs, logits) -> None:
        """Which denominator reproduces the model's loss: the Trainer's `num_items_in_batch` (models that
        use it) or the micro-batch's count (models that ignore it and take the batch mean). Stops
        before the first update, on every rank, if neither does.
        """
        auxiliary = output_field(outputs, "aux_loss")
        matches = [auxiliary is None and match for match in normalisation_matches(
            model_loss, sums, counts, items, scale, low_precision=logits.dtype != torch.float32)]
        matches = self.trainer.hiding_controller.topology.all_true(matches)  # a form every rank reproduces, or none
        if matches[0] or matches[1]:
            self._normalise_by_items = bool(matches[0])  # where both agree, the Trainer's own normalisation
            return
        self._normalise_by_items = False
        name = self.trainer.hiding_args.hiding_strategy
        if auxiliary is not None:
            cause = ("the model adds an auxiliary loss (`aux_loss`, e.g. a mixture-of-experts router's load-balancing "
                     "loss) to its cross-entropy; set `output_router_logits=False` in its config to train without it")
        else:
            ours = weighted_loss(sums, counts, None, items, scale)
            cause = (f"the model's loss at the first step ({float(model_loss.detach()):.6g}, on some rank) is not the "
                     f"{self._loss_form.task} cross-entropy the weights reproduce ({float(ours):.6g}): it has other "
                     "terms or another normalisation (class weights, a custom loss in the model or in a Trainer "
                     "subclass's compute_loss); make the model's loss the plain cross-entropy")
        raise ValueError(
            f"hiding_strategy={name!r} trains on per-sample weighted losses, but {cause}. Or use "
            "hiding_strategy='kakurenbo' or 'random', which leave the model's loss untouched. Nothing was trained."
        )
