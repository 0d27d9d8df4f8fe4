"""`KakurenboTrainer`: `transformers.Trainer` that hides the least useful samples each epoch.

Each Trainer hook below is a short delegation to the run's `HidingController` (`controller.py`),
which owns planning, refresh, statistics flush, checkpoints and resume:

- `get_train_dataloader` / `_get_train_sampler`: the train set is read through an
  `IndexedDataset` (rows carry their index) with a `HidingSampler` that applies the
  `train_sampling_strategy` to the visible samples.
- `compute_loss`: records per-sample statistics from the logits; the loss returned for backward
  is the model's own, untouched, except in the epochs of a strategy that weights each sample's
  loss (`loss_weighting.py`: checked against the model's loss at the first step).
- `get_batch_samples`: with a per-batch strategy (Selective Backprop), scores each micro-batch
  without gradients and hands the training step only the rows it keeps (`batch_selection.py`).
- `_run_epoch`: at each epoch start the controller refreshes, selects the new hidden set, and the
  epoch runs with its true length (the 5.x loop reads the epoch length once, see docs/design.md).
- `create_scheduler`: wraps the schedule so that it follows epoch progress (`VirtualStepLR`).
- `_save_checkpoint` / `_load_from_checkpoint` / `_init_training_state` / `_load_rng_state`: the
  hiding state travels with each checkpoint, and an interrupted run resumes in the right epoch at
  the right sample, with the RNG restored before the first sample is read, on the same or another
  number of processes.

The private `Trainer` members these hooks rely on are checked at import (`compat.py`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from functools import partial

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from transformers.utils import logging

from ..core.config import KakurenboArguments
from ..core.engine import HidingEngine
from ..core.report import require_matplotlib
from ..core.sampler import HidingSampler
from ..distributed.topology import Topology
from ..strategies.base import strategy_class
from ..tasks import auto_statistics
from .compat import check_trainer_members, load_with_key_conversion
from .checks import SAMPLER_ORDERS, check_first_batch, check_train_dataset, check_training_arguments
from .controller import HidingController
from .indexing import SAMPLE_INDEX_KEY, IndexCollator, IndexedDataset
from .model_card import model_card_section

logger = logging.get_logger(__name__)

check_trainer_members(Trainer)

# (outputs, labels) -> (loss, confidence, correct), each of shape (batch,)
PerSampleStatisticsFn = Callable[[object, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

# The built-in statistics of a model's task, detected from the model (`kakurenbo_hf.tasks`).
default_per_sample_statistics = auto_statistics

class KakurenboMixin:
    """KAKURENBO sample hiding for any `transformers.Trainer` subclass (Nguyen et al., NeurIPS 2023).

    Put it first among the bases: `class MyTrainer(KakurenboMixin, Seq2SeqTrainer)`.
    `KakurenboTrainer` is `KakurenboMixin` + `Trainer`.

    Args:
        *args, **kwargs: exactly those of the Trainer class it is mixed into. Hiding is configured
            by the fields of `KakurenboTrainingArguments` (plain `TrainingArguments` get the
            defaults).
        per_sample_statistics_fn: optional `fn(outputs, labels) -> (loss, confidence, correct)`,
            each a tensor of shape (batch,); by default the model's task is detected (`kakurenbo_hf.tasks`).

    Example::

        >>> class KakurenboSeq2SeqTrainer(KakurenboMixin, Seq2SeqTrainer):
        ...     pass
    """

    def __init__(self, *args, per_sample_statistics_fn: PerSampleStatisticsFn | None = None, **kwargs):
        try:
            given = inspect.signature(super().__init__).bind_partial(*args, **kwargs).arguments
        except TypeError:  # a signature we cannot bind: let the Trainer class report it
            given = kwargs
        if given.get("train_dataset") is not None:
            check_train_dataset(given["train_dataset"])  # before the Trainer's own, vaguer error
        super().__init__(*args, **kwargs)
        if isinstance(self.args, KakurenboArguments):
            self.hiding_args = self.args.hiding_arguments()
        else:
            self.hiding_args = KakurenboArguments()
            if self.hiding_args.hiding_fraction > 0:
                logger.warning_once(
                    f"{type(self).__name__} got plain TrainingArguments, so hiding runs with its defaults "
                    f"(hiding_strategy={self.hiding_args.hiding_strategy!r}, "
                    f"hiding_fraction={self.hiding_args.hiding_fraction}): from epoch "
                    f"{self.hiding_args.hiding_warmup_epochs} on, each epoch leaves out up to that share of the "
                    "samples the model has learned. Use KakurenboTrainingArguments to set it (hiding_fraction=0 "
                    "turns hiding off), or transformers.Trainer."
                )
        # The built-in statistics follow self.model (replaced by model_init, wrapped by PEFT, ...).
        self.per_sample_statistics_fn = per_sample_statistics_fn or self._default_statistics
        self.data_collator = IndexCollator(self.data_collator)
        if self.hiding_args.save_hiding_plot:
            require_matplotlib()  # before training, not at the first checkpoint
        self.hiding_controller = HidingController(self, self.hiding_args, Topology.from_accelerator(self.accelerator))

    @property
    def hiding_engine(self) -> HidingEngine | None:
        """The run's `HidingEngine` (statistics table, strategy, epoch plans); None before training."""
        return self.hiding_controller.engine

    @property
    def hiding_sampler(self) -> HidingSampler | None:
        return self.hiding_controller.sampler

    def hiding_report(self):
        """What the run hid: each epoch's hidden set, the epoch plans and every sample's statistics, hidden
        count and longest hidden streak (`kakurenbo_hf.HidingReport`). After `train()`; in a multi-process
        run every rank must call it (the table is assembled across ranks). From a checkpoint, without a
        Trainer: `HidingReport.from_checkpoint(folder)`."""
        return self.hiding_controller.report()

    @property
    def sample_counters(self) -> dict[str, int] | None:
        """After `train()`: samples forwarded, backpropagated and refreshed, all ranks summed."""
        return self.hiding_controller.sample_counters

    # --- arguments and data ------------------------------------------------------------------

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if SAMPLE_INDEX_KEY not in self._signature_columns:
            self._signature_columns.append(SAMPLE_INDEX_KEY)

    def get_train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        check_train_dataset(self.train_dataset)
        check_training_arguments(self.args, self.hiding_args)
        if strategy_class(self.hiding_args.hiding_strategy).selects_per_batch:
            self.hiding_controller.batch_selection.check()
        self.hiding_controller.loss_weighting.check_arguments()
        dataset = self.train_dataset
        if isinstance(dataset, datasets.Dataset):
            # What the Trainer would do to this dataset; a column view, no row is copied.
            dataset = self._remove_unused_columns(dataset, description="training")
        dataloader = self._get_dataloader(
            dataset=self.hiding_controller.wrap_train_dataset(dataset),
            description="Training",
            batch_size=self._train_batch_size,
            sampler_fn=self._get_train_sampler,
            is_training=True,
        )
        check_first_batch(self.hiding_controller.dataset, dataloader.collate_fn, self._labels_of, self.label_names,
                          self.hiding_args.hiding_strategy)
        return dataloader

    def _get_collator_with_removed_columns(self, data_collator, description=None):
        """transformers' column-removing wrapper goes inside `IndexCollator` (which must see the rows as
        read, to find their indices); none for a `datasets.Dataset` training set, whose columns were
        removed on the dataset as the plain Trainer does."""
        if not isinstance(data_collator, IndexCollator):
            return super()._get_collator_with_removed_columns(data_collator, description=description)
        dataset = self.hiding_controller.dataset
        if description == "Training" and dataset is not None and isinstance(dataset.dataset, datasets.Dataset):
            return data_collator
        return IndexCollator(super()._get_collator_with_removed_columns(data_collator.collate_fn,
                                                                        description=description))

    def _get_train_sampler(self, train_dataset=None) -> HidingSampler:
        """A `HidingSampler` that orders the visible samples as `train_sampling_strategy` asks."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        order = SAMPLER_ORDERS[getattr(self.args, "train_sampling_strategy", "random")]
        order_fn = self._length_grouped_order_fn(dataset) if order == "custom" else None
        return self.hiding_controller.build_sampler(len(dataset), self._hiding_seed(), order, order_fn)

    def _length_grouped_order_fn(self, dataset):
        """transformers' length grouping (`get_length_grouped_indices`), applied to the visible samples.

        Lengths come from where the Trainer's `LengthGroupedSampler` takes them (the
        `length_column_name` column, else the model's first input), through that class itself.
        """
        raw = dataset.dataset if isinstance(dataset, IndexedDataset) else dataset
        lengths = None
        if isinstance(raw, datasets.Dataset) and self.args.length_column_name in raw.column_names:
            lengths = raw[self.args.length_column_name]
        input_name = self.processing_class.model_input_names[0] if self.processing_class is not None else None
        group_size = self.args.train_batch_size * self.args.gradient_accumulation_steps
        lengths = np.asarray(
            LengthGroupedSampler(group_size, dataset=dataset, lengths=lengths, model_input_name=input_name).lengths
        )
        return partial(_length_grouped_order, lengths=lengths, group_size=group_size)

    def _hiding_seed(self) -> int:
        """The seed accelerate's SeedableRandomSampler uses for the plain Trainer (same order at F=0),
        rank 0's on every rank."""
        if self.args.data_seed is not None:
            return int(self.args.data_seed)
        return self.hiding_controller.shared_seed(int(torch.random.initial_seed()))

    def _labels_of(self, inputs):
        for name in (self.label_names or []) + ["labels", "label"]:
            if name in inputs:
                return inputs[name]
        return None

    # --- per-sample statistics -----------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sample_indices = inputs.pop(SAMPLE_INDEX_KEY, None)
        labels = self._labels_of(inputs)  # read before the Trainer may pop them
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        controller = self.hiding_controller
        if sample_indices is None and model.training and controller.recording:
            raise ValueError(
                "KakurenboTrainer got a training batch without its samples' indices, so it cannot tell which samples "
                f"it trained. Its collator (`IndexCollator`, set as `trainer.data_collator`) adds them; it was "
                f"replaced ({type(self.data_collator).__name__}) or wrapped by something that rebuilds the rows. Pass "
                "your collator as `data_collator=` when building the trainer instead of setting it afterwards."
            )
        if sample_indices is not None and model.training and controller.engine is not None:
            controller.count_samples(len(sample_indices), len(sample_indices))
            if controller.recording and not controller.batch_selection.selecting:  # else: the scoring pass records
                controller.record(sample_indices, *self.per_sample_statistics_fn(outputs, labels))
            if controller.weights_losses():
                loss = controller.loss_weighting.weighted_loss(loss, outputs, labels, sample_indices,
                                                               num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        return self.hiding_controller.batch_selection.select(batch_samples, num_items_in_batch, device)

    # --- the epoch -----------------------------------------------------------------------------

    def on_epoch_plan(self, plan) -> None:
        """Called on every rank once an epoch's hidden set is chosen, before the epoch trains.

        `plan` is the epoch's `EpochPlan` (hidden count, target fraction, LR factor);
        `self.hiding_engine.hidden` is the hidden set, `self.hiding_engine.stats` the statistics it was
        chosen from (this rank's rows, or None on a rank that holds none). Override it to inspect or
        keep them; the default does nothing.
        """

    def _run_epoch(self, model, epoch, train_dataloader, steps_in_epoch, num_update_steps_per_epoch, **kwargs):
        steps_in_epoch, num_update_steps_per_epoch = self.hiding_controller.begin_epoch(
            model, epoch, train_dataloader, steps_in_epoch, num_update_steps_per_epoch, kwargs)
        super()._run_epoch(model=model, epoch=epoch, train_dataloader=train_dataloader, steps_in_epoch=steps_in_epoch,
                           num_update_steps_per_epoch=num_update_steps_per_epoch, **kwargs)

    def _set_max_steps(self, max_steps: int) -> None:
        """An upper bound of the steps left (exact in the last epoch): ends the progress bar right."""
        self.state.max_steps = max_steps
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, ProgressCallback) and callback.training_bar is not None:
                callback.training_bar.total = max_steps
                callback.training_bar.refresh()

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        self.lr_scheduler = self.hiding_controller.wrap_scheduler(scheduler, num_training_steps)
        return self.lr_scheduler

    def train(self, *args, **kwargs):
        self.hiding_controller.begin_train()  # a resumed state is set again by _load_from_checkpoint
        return super().train(*args, **kwargs)

    def _inner_training_loop(self, *args, **kwargs):
        self.hiding_controller.begin_loop()
        try:
            return super()._inner_training_loop(*args, **kwargs)
        finally:
            self.hiding_controller.end_loop()

    # --- checkpoints and resume ----------------------------------------------------------------

    def _save_checkpoint(self, model, trial) -> None:
        # Written before the Trainer's own files, so a hub push of the checkpoint carries it.
        self.hiding_controller.save(os.path.join(self._get_output_dir(trial), f"checkpoint-{self.state.global_step}"))
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if not load_with_key_conversion(resume_from_checkpoint, model if model is not None else self.model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.hiding_controller.load(resume_from_checkpoint, len(self.train_dataset))

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial):
        epochs_trained, steps_trained = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        return self.hiding_controller.resume_position(resume_from_checkpoint, epochs_trained, steps_trained)

    def _load_rng_state(self, checkpoint) -> None:
        if not self.hiding_controller.rng.take_restored():  # else restored already, at the right moment
            super()._load_rng_state(checkpoint)

    def _restore_trainer_rng_state(self, checkpoint) -> None:
        """The Trainer's own RNG restore (the controller calls it where a resume needs it)."""
        super()._load_rng_state(checkpoint)

    def _load_best_model(self) -> None:
        # Same upstream key-name problem as on resume (load_best_model_at_end with ViT/DeiT).
        if not load_with_key_conversion(self.state.best_model_checkpoint, self.model):
            super()._load_best_model()

    def _finalize_training(self, trial, num_train_samples, start_time):
        # The Trainer assumes full epochs; count the samples really trained for its speed metrics.
        num_train_samples = self.hiding_controller.num_trained_samples(num_train_samples)
        summary = self.hiding_controller.run_summary()
        self.log(dict(summary))  # to report_to (TensorBoard, W&B, ...)
        output = super()._finalize_training(trial, num_train_samples, start_time)
        output.metrics.update(summary)
        self.hiding_controller.save_plot(self.args.output_dir)
        return output

    # --- the model card ------------------------------------------------------------------------

    def create_model_card(self, *args, tags=None, **kwargs) -> None:
        """The Trainer's model card, tagged `kakurenbo` and `kakurenbo-<strategy>`, with a section that
        gives the hiding settings and, after training, what was saved (`kakurenbo/...` summary)."""
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        for tag in ("kakurenbo", f"kakurenbo-{self.hiding_args.hiding_strategy}"):
            if tag not in tags:
                tags.append(tag)
        super().create_model_card(*args, tags=tags, **kwargs)
        path = os.path.join(self.args.output_dir, "README.md")
        if not self.is_world_process_zero() or not os.path.isfile(path):
            return
        with open(path, "a") as card:
            card.write(model_card_section(self.hiding_controller.arguments, self.hiding_controller.last_summary))

    # --- tasks ---------------------------------------------------------------------------------

    def _default_statistics(self, outputs, labels):
        """The built-in statistics of the current model's task (see `kakurenbo_hf.tasks`)."""
        return auto_statistics(outputs, labels, model=self.model)

class KakurenboTrainer(KakurenboMixin, Trainer):
    """A drop-in `Trainer` that hides well-learned samples (KAKURENBO, Nguyen et al., NeurIPS 2023).

    Args:
        *args, **kwargs: exactly those of `transformers.Trainer`. Hiding is configured by the
            fields of `KakurenboTrainingArguments` (plain `TrainingArguments` get the defaults).
        per_sample_statistics_fn: optional `fn(outputs, labels) -> (loss, confidence, correct)`,
            each a tensor of shape (batch,), for tasks other than single-label classification.

    Example::

        >>> args = KakurenboTrainingArguments("out", num_train_epochs=10, hiding_fraction=0.3)
        >>> trainer = KakurenboTrainer(model=model, args=args, train_dataset=train_set)
        >>> trainer.train()
    """


def _length_grouped_order(visible: np.ndarray, generator: torch.Generator, lengths: np.ndarray, group_size: int):
    """transformers' length grouping of the visible samples (megabatches sorted by length)."""
    positions = get_length_grouped_indices(lengths[visible].tolist(), group_size, generator=generator)
    return visible[np.asarray(positions, dtype=np.int64)]
