"""`KakurenboTrainer`: `transformers.Trainer` that hides the least useful samples each epoch.

Thin glue. The algorithm lives in pure modules (`engine`, `stats`, `strategies`, `schedule`,
`sampler`, `refresh`); this file connects them to the Trainer's hooks:

- `get_train_dataloader` / `_get_train_sampler`: the train set is read through an
  `IndexedDataset` (rows carry their index) with a `HidingSampler` that applies the
  `train_sampling_strategy` to the visible samples.
- `compute_loss`: records per-sample statistics from the logits; the loss returned for backward
  is the model's own, untouched, except in the epochs of a strategy that weights each sample's
  loss (`weighting.py`: checked against the model's loss at the first step).
- `get_batch_samples`: with a per-batch strategy (Selective Backprop), scores each micro-batch
  without gradients and hands the training step only the rows it keeps.
- `_run_epoch`: at each epoch start, refresh the statistics of the samples hidden in the last
  epoch, select the new hidden set, and run the epoch with its true length (the 5.x loop reads
  the epoch length once, see docs/design.md).
- `create_scheduler`: wraps the schedule so that it follows epoch progress (`VirtualStepLR`).
- `_save_checkpoint` / `_init_training_state` / `_load_rng_state`: the hiding state travels with
  each checkpoint, and an interrupted run resumes in the right epoch at the right sample, with
  the RNG restored before the first sample is read (random augmentations continue exactly), on
  the same or another number of processes.
"""

from __future__ import annotations

import inspect
import math
import os
import random
import time
from functools import partial
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset
from transformers import Trainer
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from transformers.utils import logging

from ..distributed.checkpoint import (HIDING_STATE_NAME, load_hiding_state, load_rank_state, save_hiding_state, save_rank_state,
                         save_table_shard)
from .compat import load_with_key_conversion
from ..core.config import KakurenboArguments
from ..distributed.transport import MainProcessTransport, ShardedTransport, TorchCollective, broadcast_decision
from ..core.engine import EpochPlan, HidingEngine
from .indexing import SAMPLE_INDEX_KEY, IndexCollator, IndexedDataset
from ..distributed.recorder import StatsRecorder
from ..core.refresh_slice import plan_refresh_batches
from .refresh_pass import run_refresh
from ..distributed.rng import save_snapshot
from ..core.sampler import HidingSampler
from ..core.schedule import find_virtual_scheduler, wrap_scheduler
from ..core.sharding import Shard, shard_of, whole_table
from ..strategies.base import strategy_class
from ..strategies.selective_backprop import take_rows
from ..tasks import auto_statistics
from .batch_selection import BatchSelectionMixin
from .loss_weighting import LossWeightingMixin
from .resume import ResumeMixin, _ResumePoint

logger = logging.get_logger(__name__)

# (outputs, labels) -> (loss, confidence, correct), each of shape (batch,)
PerSampleStatisticsFn = Callable[[object, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def default_per_sample_statistics(outputs, labels: torch.Tensor, model=None):
    """The built-in statistics of `model`'s task (`kakurenbo_hf.tasks`): classification (single- and
    multi-label), regression, causal LM, seq2seq, token classification, masked LM, semantic
    segmentation, detected from the model class, `config.problem_type` and the shapes.

    Raises `ValueError` for outputs without `logits` (or a fused head's per-token log-probs) and
    for tasks that cannot be recognised, naming what to pass instead.
    """
    return auto_statistics(outputs, labels, model)


# The Trainer's train_sampling_strategy -> the HidingSampler's order rule.
_SAMPLER_ORDERS = {"random": "random", "sequential": "sequential", "group_by_length": "custom"}


class KakurenboMixin(ResumeMixin, LossWeightingMixin, BatchSelectionMixin):
    """KAKURENBO sample hiding for any `transformers.Trainer` subclass (Nguyen et al., NeurIPS 2023).

    Put it first among the bases: `class MyTrainer(KakurenboMixin, Seq2SeqTrainer)`.
    `KakurenboTrainer` is `KakurenboMixin` + `Trainer`.

    Args:
        *args, **kwargs: exactly those of the Trainer class it is mixed into. Hiding is configured
            by the fields of `KakurenboTrainingArguments` (plain `TrainingArguments` get the
            defaults).
        per_sample_statistics_fn: optional `fn(outputs, labels) -> (loss, confidence, correct)`,
            each a tensor of shape (batch,), for tasks other than single-label classification.

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
            self._check_train_dataset(given["train_dataset"])  # before the Trainer's own, vaguer error
        super().__init__(*args, **kwargs)
        if isinstance(self.args, KakurenboArguments):
            self.hiding_args = self.args.hiding_arguments()
        else:
            self.hiding_args = KakurenboArguments()
            logger.info("%s got plain TrainingArguments: using the default hiding arguments.", type(self).__name__)
        # The built-in statistics follow self.model (replaced by model_init, wrapped by PEFT, ...).
        self.per_sample_statistics_fn = per_sample_statistics_fn or self._default_statistics
        self.data_collator = IndexCollator(self.data_collator)
        self.hiding_engine: HidingEngine | None = None
        self.hiding_sampler: HidingSampler | None = None
        self._recorder: StatsRecorder | None = None
        self._indexed_train_dataset: IndexedDataset | None = None
        self._resumed_hiding_state: dict | None = None
        self._resume = _ResumePoint()
        self._rng_before_last_read: dict | None = None
        self._sample_counts = [0, 0]  # this rank's training samples forwarded, backpropagated
        # Per-batch selection (`selects_per_batch` strategies): this rank's selector, whether the
        # current epoch selects, the model the epoch trains, and the selector state to resume.
        self._batch_selector = None
        self._selecting_batches = False
        self._training_model = None
        self._resumed_selector_state: dict | None = None
        # After train(): {"forwarded", "backpropagated", "refresh_forwarded"}, summed over ranks.
        self.sample_counters: dict[str, int] | None = None
        self._reset_loss_weighting()

    # --- arguments and data ------------------------------------------------------------------

    def _check_train_dataset(self, dataset) -> None:
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            raise ValueError(
                "KakurenboTrainer needs a map-style training set (with __len__ and indexing) to know which "
                f"samples to hide; got {type(dataset).__name__}. Use a `datasets.Dataset` (not streaming), "
                "or the plain Trainer for iterable data."
            )

    def _check_hiding_arguments(self) -> None:
        args = self.args
        if self.hiding_args.hiding_fraction > 0:
            if args.max_steps > 0:
                raise ValueError(
                    "KakurenboTrainer hides samples per epoch: set num_train_epochs (an integer) instead of "
                    f"max_steps={args.max_steps}, or set hiding_fraction=0."
                )
            if float(args.num_train_epochs) != int(args.num_train_epochs):
                raise ValueError(
                    f"KakurenboTrainer needs a whole number of epochs, got num_train_epochs={args.num_train_epochs}."
                )
        if strategy_class(self.hiding_args.hiding_strategy).selects_per_batch:
            self._check_batch_selection()
        self._check_loss_weighting_arguments()
        strategy = getattr(args, "train_sampling_strategy", "random")
        if strategy not in _SAMPLER_ORDERS:
            raise ValueError(
                f"KakurenboTrainer does not support train_sampling_strategy={strategy!r}: its samplers decide per rank "
                "which samples to train, which cannot leave out a hidden set that every rank shares. Use one of "
                f"{sorted(_SAMPLER_ORDERS)} ('group_by_length' also groups by length), or the plain Trainer."
            )

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if SAMPLE_INDEX_KEY not in self._signature_columns:
            self._signature_columns.append(SAMPLE_INDEX_KEY)

    def get_train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        self._check_train_dataset(self.train_dataset)
        self._check_hiding_arguments()
        dataset = self.train_dataset
        if isinstance(dataset, datasets.Dataset):
            # What the Trainer would do to this dataset; a column view, no row is copied.
            dataset = self._remove_unused_columns(dataset, description="training")
        self._indexed_train_dataset = IndexedDataset(dataset)
        self._indexed_train_dataset.on_read_start = self._remember_rng_state
        dataloader = self._get_dataloader(
            dataset=self._indexed_train_dataset,
            description="Training",
            batch_size=self._train_batch_size,
            sampler_fn=self._get_train_sampler,
            is_training=True,
        )
        self._check_first_batch(dataloader.collate_fn)
        return dataloader

    def _get_train_sampler(self, train_dataset=None) -> HidingSampler:
        """A `HidingSampler` that orders the visible samples as `train_sampling_strategy` asks."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        order = _SAMPLER_ORDERS[getattr(self.args, "train_sampling_strategy", "random")]
        order_fn = self._length_grouped_order_fn(dataset) if order == "custom" else None
        self.hiding_sampler = HidingSampler(len(dataset), seed=self._hiding_seed(), order=order, order_fn=order_fn)
        return self.hiding_sampler

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
        """The seed accelerate's SeedableRandomSampler uses for the plain Trainer (same order at F=0).

        Rank 0's value is broadcast: ranks seeded differently by the user must still agree.
        """
        if self.args.data_seed is not None:
            return int(self.args.data_seed)
        seed = [int(torch.random.initial_seed())]
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(seed, from_process=0)
        return seed[0]

    def _check_first_batch(self, collate_fn) -> None:
        """Fail before training if batches carry no labels or pack several samples into a row (random
        transforms do not disturb the RNG)."""
        dataset = self._indexed_train_dataset
        with _preserved_rng_state():
            batch = collate_fn(dataset.__getitems__(list(range(min(2, len(dataset))))))
        if self._labels_of(batch) is None:
            raise ValueError(
                "KakurenboTrainer needs labels in every training batch to compute per-sample statistics, but the "
                f"batch has only {sorted(k for k in batch.keys() if k != SAMPLE_INDEX_KEY)}. Put them under "
                f"{self.label_names or ['labels']} (or set `label_names`)."
            )
        self._check_one_row_per_sample(batch)
        if strategy_class(self.hiding_args.hiding_strategy).selects_per_batch:  # fails now, not after the warm-up
            take_rows(batch, np.arange(1), len(batch[SAMPLE_INDEX_KEY]))

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
        if sample_indices is not None and model.training and self._recorder is not None:
            if not self._selecting_batches:  # else: recorded by the batch's scoring pass (get_batch_samples)
                sample_loss, confidence, correct = self.per_sample_statistics_fn(outputs, labels)
                self._recorder.add(sample_indices, sample_loss, confidence, correct, step=self.state.global_step)
            self._count_samples(len(sample_indices), len(sample_indices))
            if self.hiding_engine.enabled and self.hiding_engine.strategy.weights_losses(self.hiding_args):
                loss = self._weighted_loss(loss, outputs, labels, sample_indices, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _flush_statistics(self) -> None:
        """Send every rank's records to the table (their shards, or the main process). Collective."""
        if self._recorder is not None:
            transport = None
            if self.accelerator.num_processes > 1 and self.hiding_engine.sharded:
                transport = ShardedTransport(self.args.device, self.hiding_engine.num_samples)
            elif self.accelerator.num_processes > 1:
                transport = MainProcessTransport(self.args.device)
            self._recorder.flush(transport, device=self.args.device)

    def _refresh(self, model, indices: np.ndarray) -> None:
        """Forward-only pass over `indices`, split across ranks in equal batch counts (see `refresh.py`)."""
        accelerator = self.accelerator
        batch_size = self.hiding_args.refresh_batch_size or max(
            self.args.per_device_train_batch_size, self.args.per_device_eval_batch_size
        )
        batches = plan_refresh_batches(indices, accelerator.process_index, accelerator.num_processes, batch_size)
        dataset = self._indexed_train_dataset
        read_hook, dataset.on_read_start = dataset.on_read_start, None  # not a training read
        with _preserved_rng_state():
            run_refresh(
                model,
                self._indexed_train_dataset,
                batches,
                collate_fn=self.callback_handler.train_dataloader.collate_fn,
                forward_inputs=self._prepare_inputs,
                statistics=lambda outputs, batch: self.per_sample_statistics_fn(outputs, self._labels_of(batch)),
                record=lambda *values: self._recorder.add(*values, step=self.state.global_step),
                index_key=SAMPLE_INDEX_KEY,
                autocast=self.autocast_smart_context_manager,
                num_workers=self.args.dataloader_num_workers,
                pin_memory=self.args.dataloader_pin_memory,
            )
        dataset.on_read_start = read_hook

    # --- the epoch -----------------------------------------------------------------------------

    def _table_shard(self, num_samples: int) -> Shard | None:
        """The rows of the statistics table this process holds: its shard when the strategy is
        `shardable` and several processes train, the whole table on the main process otherwise,
        None on the other processes."""
        accelerator = self.accelerator
        if accelerator.num_processes == 1:
            return whole_table(num_samples)
        if strategy_class(self.hiding_args.hiding_strategy).is_shardable():
            return shard_of(num_samples, accelerator.num_processes, accelerator.process_index)
        return whole_table(num_samples) if accelerator.is_main_process else None

    def _start_hiding(self, num_epochs: int) -> None:
        num_samples = len(self._indexed_train_dataset)
        shard = self._table_shard(num_samples)
        sharded = shard is not None and not shard.is_whole
        self.hiding_engine = HidingEngine(num_samples, num_epochs, self.hiding_args, seed=self.hiding_sampler.seed,
                                          holds_table=shard is not None, shard=shard,
                                          collective=TorchCollective(self.args.device) if sharded else None)
        self._recorder = StatsRecorder(self.hiding_engine.stats, num_samples=num_samples)
        if self._resumed_hiding_state is not None:
            self.hiding_engine.load_state_dict(self._resumed_hiding_state)
        self.hiding_sampler.seed = self.hiding_engine.seed
        strategy = self.hiding_engine.strategy
        self._batch_selector = strategy.batch_selector(self.accelerator.process_index) if strategy.selects_per_batch else None
        if self._batch_selector is not None and self._resumed_hiding_state is not None:
            if self._resumed_selector_state is not None:
                self._batch_selector.load_state_dict(self._resumed_selector_state)
            else:
                logger.warning("The checkpoint has no loss history for process %d (saved with another number of "
                               "processes?): its Selective Backprop history starts empty.",
                               self.accelerator.process_index)

    def _plan_epoch(self, model, epoch: int) -> EpochPlan:
        """Refresh last epoch's hidden samples, then choose this epoch's hidden set."""
        engine = self.hiding_engine
        to_refresh = engine.samples_to_refresh(epoch)
        started = time.perf_counter()
        if len(to_refresh):
            self._refresh(model, to_refresh)
        flush_started = time.perf_counter()
        refresh_seconds = flush_started - started  # the plan keeps it only when something was refreshed
        self._flush_statistics()
        flush_seconds = time.perf_counter() - flush_started
        plan = engine.plan_epoch(epoch) if engine.holds_table else None  # every rank, when sharded
        if plan is not None and self._last_batch_may_be_one():
            engine.avoid_last_batch_of_one(self._train_batch_size)
        if self.accelerator.num_processes > 1 and not engine.sharded:  # decided on the main process; others adopt it
            bits, values, weights, draws = broadcast_decision(
                engine.hidden_bits if plan else None, asdict(plan) if plan else None, engine.hidden_bits.size,
                self.args.device, weights=engine.weights, draws=engine.draws,
            )
            if not engine.holds_table:
                engine.adopt(EpochPlan(**values), bits, weights=weights, draws=draws)
        engine.note_refresh(refresh_seconds, len(to_refresh))
        engine.current_plan.flush_seconds = flush_seconds  # this rank's; the boundary's bookkeeping, not the refresh
        return engine.current_plan

    def _last_batch_may_be_one(self) -> bool:
        """Whether an epoch of the wrong length would end with a one-sample batch that the model cannot train
        on: BatchNorm in training mode, no `dataloader_drop_last`, and batches not evened out across ranks."""
        if self.args.dataloader_drop_last:
            return False
        if self.accelerator.num_processes > 1 and self.accelerator.even_batches:
            return False  # accelerate completes the last batch of every rank
        return any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in self.model.modules())

    def _samples_per_step(self) -> int:
        """Samples of the epoch's order one optimizer step consumes (all ranks, all micro-batches)."""
        return self._train_batch_size * self.accelerator.num_processes * self.args.gradient_accumulation_steps

    def _run_epoch(self, model, epoch, train_dataloader, steps_in_epoch, num_update_steps_per_epoch, **kwargs):
        num_epochs = math.ceil(self.args.num_train_epochs) if self.args.max_steps <= 0 else None
        if self.hiding_engine is None:
            self._start_hiding(num_epochs or 1)
        engine, sampler, resume = self.hiding_engine, self.hiding_sampler, self._resume
        full_update_steps = num_update_steps_per_epoch
        resuming = kwargs.get("resume_from_checkpoint") is not None and epoch == kwargs.get("epochs_trained")
        if resuming and kwargs.get("steps_trained_in_current_epoch", 0) == 0:
            # The Trainer would restore the RNG only inside the epoch, after our refresh drew from it.
            self._restore_rng_state_once(kwargs["resume_from_checkpoint"])
        continued = engine.current_plan is not None and engine.current_plan.epoch == epoch
        plan = engine.current_plan if continued else self._plan_epoch(model, epoch)
        sampler.set_hidden_bits(engine.hidden_bits)
        sampler.set_draws(engine.draws)
        sampler.set_epoch(epoch)
        if continued:
            sampler.set_start(plan.start_sample)
            if engine.order_rng_state.size:
                sampler.restore_order_rng_state(engine.order_rng_state)
            if resuming and kwargs.get("steps_trained_in_current_epoch", 0) > 0:
                self._replay_rng_at_first_read(kwargs["resume_from_checkpoint"])
        if resume.new_geometry and continued:
            # Resumed on another number of processes or batch size: go on at the first sample not
            # yet trained, with the epoch's remaining steps counted in the new geometry.
            done = engine.continue_epoch_at(self.state.global_step)
            sampler.set_start(done)
            logger.warning(
                "Resumed epoch %d with %d samples per optimizer step (the checkpoint used %d): continuing at "
                "sample %d of %d of the epoch's order.",
                epoch, self._samples_per_step(), resume.saved_samples_per_step, done, sampler.epoch_size,
            )
        self._selecting_batches = self._batch_selector is not None and plan.target_fraction > 0
        self._training_model = model
        if engine.enabled or plan.start_sample:
            steps_in_epoch = len(train_dataloader)
            num_update_steps_per_epoch = max(math.ceil(steps_in_epoch / self.args.gradient_accumulation_steps), 1)
        engine.time_epoch(self._samples_per_step(), num_update_steps_per_epoch,
                          start_step=None if continued else self.state.global_step)
        scheduler = find_virtual_scheduler(self.lr_scheduler)
        if scheduler is not None:
            if resume.new_geometry and continued:
                scheduler.continue_epoch(plan.start_step, num_update_steps_per_epoch)
            else:
                # After skipping the rest of an interrupted epoch, start where the epoch would have.
                start_virtual = scheduler.epoch_end_virtual if resume.skipped_to_boundary else None
                scheduler.begin_epoch(epoch, plan.start_step, num_update_steps_per_epoch, plan.lr_factor,
                                      start_virtual=start_virtual)
        if resume.skipped_to_boundary:
            self.state.epoch = float(epoch)
        self._resume = _ResumePoint()  # applies to the resumed epoch only
        if engine.enabled and num_epochs is not None:
            remaining_epochs = num_epochs - epoch - 1
            self._set_max_steps(plan.start_step + num_update_steps_per_epoch + remaining_epochs * full_update_steps)
        if not continued:
            self.log(plan.log_values())
        super()._run_epoch(
            model=model,
            epoch=epoch,
            train_dataloader=train_dataloader,
            steps_in_epoch=steps_in_epoch,
            num_update_steps_per_epoch=num_update_steps_per_epoch,
            **kwargs,
        )

    def _set_max_steps(self, max_steps: int) -> None:
        """An upper bound of the steps left (exact in the last epoch): ends the progress bar right."""
        self.state.max_steps = max_steps
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, ProgressCallback) and callback.training_bar is not None:
                callback.training_bar.total = max_steps
                callback.training_bar.refresh()

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if self.hiding_args.hiding_fraction > 0:
            num_epochs = math.ceil(self.args.num_train_epochs)
            self.lr_scheduler = wrap_scheduler(scheduler, max(num_training_steps // max(num_epochs, 1), 1))
        return self.lr_scheduler

    def train(self, *args, **kwargs):
        self._resumed_hiding_state = None  # set again by _load_from_checkpoint when resuming
        self._resumed_selector_state = None
        self._sample_counts = [0, 0]
        self._reset_loss_weighting()
        return super().train(*args, **kwargs)

    def _inner_training_loop(self, *args, **kwargs):
        # A fresh engine per loop (auto_find_batch_size retries it); a resumed state is reloaded.
        self.hiding_engine = None
        self._recorder = None
        self._batch_selector, self._selecting_batches = None, False
        try:
            return super()._inner_training_loop(*args, **kwargs)
        finally:
            self._selecting_batches, self._training_model = False, None

    # --- checkpoints and resume ----------------------------------------------------------------

    def _save_checkpoint(self, model, trial) -> None:
        # Written before the Trainer's own files, so a hub push of the checkpoint carries it.
        if self.hiding_engine is not None:
            self._flush_statistics()  # collective: every rank saves at the same step
            self.hiding_engine.order_rng_state = self.hiding_sampler.order_rng_state
            folder = os.path.join(self._get_output_dir(trial), f"checkpoint-{self.state.global_step}")
            if self._rng_before_last_read is not None:  # every rank: its own transforms' RNG
                save_snapshot(self._rng_before_last_read, folder, self.accelerator.process_index)
            if self._batch_selector is not None:  # every rank: its own loss history
                save_rank_state(self._batch_selector.state_dict(), folder, self.accelerator.process_index)
            engine = self.hiding_engine
            if engine.sharded:  # every rank: its rows of the table
                save_table_shard(engine.stats.state_dict(), engine.shard, folder)
            if self.args.should_save:
                save_hiding_state(engine.state_dict(), folder)
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        target = model if model is not None else self.model
        if not load_with_key_conversion(resume_from_checkpoint, target):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        shard = self._table_shard(len(self.train_dataset))
        state = load_hiding_state(resume_from_checkpoint, with_stats=shard is not None,
                                  rows=(shard.start, shard.stop) if shard is not None else None)
        if state is not None:
            try:
                HidingEngine.check_state(state, len(self.train_dataset))
            except ValueError as error:
                raise ValueError(f"{os.path.join(resume_from_checkpoint, HIDING_STATE_NAME)}: {error}") from error
        self._resumed_hiding_state = state
        self._resumed_selector_state = load_rank_state(resume_from_checkpoint, self.accelerator.process_index)
        self._resume_checkpoint = resume_from_checkpoint

    def _load_best_model(self) -> None:
        # Same upstream key-name problem as on resume (load_best_model_at_end with ViT/DeiT).
        if not load_with_key_conversion(self.state.best_model_checkpoint, self.model):
            super()._load_best_model()

    def _finalize_training(self, trial, num_train_samples, start_time):
        # The Trainer assumes full epochs; count the samples really trained for its speed metrics.
        if self.hiding_engine is not None and self.hiding_engine.enabled:
            num_train_samples = sum(plan.num_trained for plan in self.hiding_engine.plans)
        self._total_sample_counters()
        return super()._finalize_training(trial, num_train_samples, start_time)

    def _count_samples(self, forwarded: int, backpropagated: int) -> None:
        self._sample_counts[0] += forwarded
        self._sample_counts[1] += backpropagated

    def _total_sample_counters(self) -> None:
        """`sample_counters`: samples this `train()` call forwarded and backpropagated, all ranks summed."""
        counts = torch.tensor(self._sample_counts, dtype=torch.int64, device=self.args.device)
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        forwarded, backpropagated = (int(value) for value in counts.tolist())
        plans = self.hiding_engine.plans if self.hiding_engine is not None else []
        self.sample_counters = {
            "forwarded": forwarded,
            "backpropagated": backpropagated,
            "refresh_forwarded": sum(plan.num_refreshed for plan in plans),
        }

    # --- tasks ---------------------------------------------------------------------------------

    def _default_statistics(self, outputs, labels):
        """The built-in statistics of the current model's task (see `kakurenbo_hf.tasks`)."""
        return default_per_sample_statistics(outputs, labels, model=self.model)

    def _check_one_row_per_sample(self, batch) -> None:
        """Refuse batches that pack several documents into one row (packing / flattening collators).

        Hiding and the statistics are per row of the training set. A packed row holds several
        documents whose positions restart (`position_ids`), a flattened batch is one row for many
        samples (`DataCollatorWithFlattening`, TRL's `padding_free`): neither maps rows to samples.
        """
        indices = batch.get(SAMPLE_INDEX_KEY)
        labels = self._labels_of(batch)
        num_samples = len(indices) if indices is not None else None
        packed_keys = sorted(key for key in _PACKING_KEYS if key in batch)
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


# Batch keys of packed / flattened batches (flash-attention varlen boundaries, TRL, Mamba).
_PACKING_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "cu_seqlens", "max_length_q", "max_length_k", "seq_idx")


def _positions_restart(position_ids: torch.Tensor, attention_mask=None) -> bool:
    """Whether positions go down inside a row, among attended tokens (left/right padding is fine)."""
    if position_ids.ndim != 2 or position_ids.shape[1] < 2:
        return False
    valid = torch.ones_like(position_ids, dtype=torch.bool)
    if isinstance(attention_mask, torch.Tensor) and attention_mask.shape == position_ids.shape:
        valid = attention_mask.bool()
    drops = (position_ids[:, 1:] < position_ids[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    return bool(drops.any())


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


@contextmanager
def _preserved_rng_state():
    """Run a block without disturbing the CPU RNGs that training draws from (torch, numpy, random)."""
    torch_state = torch.random.get_rng_state()
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    try:
        yield
    finally:
        torch.random.set_rng_state(torch_state)
        np.random.set_state(numpy_state)
        random.setstate(python_state)
