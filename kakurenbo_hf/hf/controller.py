"""`HidingController`: one object that owns a run's hiding, behind the Trainer's hooks.

It owns, for one `train()` call: the engine (statistics table, strategy, epoch plans), the sampler,
the recorder of per-sample statistics, the refresh pass, the flush of records to the table,
checkpointing and resuming (hiding state, RNG replay, resume position), the sample counters, and
the two per-strategy mechanisms that change a training step (`LossWeighting`, `BatchSelection`).
Every cross-rank exchange goes through its `Topology`. `KakurenboMixin` only delegates to it.

Data flows one way: batch -> `record` -> (epoch start) `flush` -> table -> strategy -> plan ->
sampler -> next epoch.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from transformers.utils import logging

from ..core.config import KakurenboArguments
from ..core.engine import EpochPlan, HidingEngine
from ..core.refresh_slice import plan_refresh_batches
from ..core.sampler import HidingSampler
from ..core.schedule import find_virtual_scheduler, wrap_scheduler
from ..core.report import PLOT_FILE_NAME, HidingReport, plot_report
from ..core.sharding import Shard, shard_block, shard_of, whole_table
from ..distributed.checkpoint import (HIDING_STATE_NAME, load_hiding_state, load_rank_state, save_hiding_state,
                                      save_rank_state, save_table_shard)
from ..distributed.recorder import StatsRecorder
from ..distributed.rng import preserved_rng_state, save_snapshot
from ..distributed.topology import Topology
from ..distributed.transport import MainProcessTransport, ShardedTransport, broadcast_decision
from ..strategies.base import strategy_class
from ..tasks import task_hiding_defaults
from .batch_selection import BatchSelection
from .indexing import SAMPLE_INDEX_KEY, IndexedDataset
from .loss_weighting import LossWeighting
from .refresh_pass import run_refresh
from .resume import ResumePoint, RngReplay, resume_position, resume_without_state

logger = logging.get_logger(__name__)


@dataclass
class SampleCounts:
    """This rank's training samples of one `train()` call: forwarded, and backpropagated."""

    forwarded: int = 0
    backpropagated: int = 0


class HidingController:
    """Plans, refreshes, records, checkpoints and resumes the hiding of one trainer's runs.

    Args:
        trainer: the `KakurenboMixin` trainer it serves (arguments, accelerator, state, model hooks).
        arguments: the hiding arguments (`KakurenboArguments`).
        topology: the processes and their collectives (`Topology.from_accelerator`).

    Attributes (read by users and tests): `engine` (`HidingEngine`, None before training),
    `sampler` (`HidingSampler`), `sample_counters` (after `train()`: samples forwarded,
    backpropagated and refreshed, all ranks summed).
    """

    def __init__(self, trainer, arguments: KakurenboArguments, topology: Topology):
        self.trainer = trainer
        self.arguments = arguments
        self.topology = topology
        self.engine: HidingEngine | None = None
        self.sampler: HidingSampler | None = None
        self.dataset: IndexedDataset | None = None
        self.recorder: StatsRecorder | None = None
        self.loss_weighting = LossWeighting(trainer)
        self.batch_selection = BatchSelection(trainer)
        self.rng = RngReplay(trainer._restore_trainer_rng_state)
        self.counts = SampleCounts()
        self.sample_counters: dict[str, int] | None = None
        self.last_summary: dict[str, float] | None = None  # `run_summary()` of the last train() call
        self.resumed_state: dict | None = None  # hiding state read from the checkpoint being resumed
        self.resumed_selector_state: dict | None = None
        self.resume_point = ResumePoint()

    # --- a train() call and its training loop ------------------------------------------------------

    def begin_train(self) -> None:
        """A new `train()` call: nothing resumed yet (set by `load`), counters and weighting checks afresh."""
        self.resumed_state = None
        self.resumed_selector_state = None
        self.counts = SampleCounts()
        self.loss_weighting.reset()

    def begin_loop(self) -> None:
        """A fresh engine per training loop (`auto_find_batch_size` retries it); a resumed state is reloaded."""
        self.engine = None
        self.recorder = None
        self.batch_selection.reset()

    def end_loop(self) -> None:
        self.batch_selection.selecting, self.batch_selection.model = False, None

    # --- data --------------------------------------------------------------------------------

    def wrap_train_dataset(self, dataset) -> IndexedDataset:
        """The training set as read by the dataloader: rows carry their index, reads snapshot the RNG."""
        self.dataset = IndexedDataset(dataset)
        self.dataset.on_read_start = self.rng.remember
        return self.dataset

    def build_sampler(self, num_samples: int, seed: int, order: str, order_fn=None) -> HidingSampler:
        self.sampler = HidingSampler(num_samples, seed=seed, order=order, order_fn=order_fn)
        return self.sampler

    def shared_seed(self, seed: int) -> int:
        """Rank 0's seed on every rank: ranks seeded differently by the user must still agree."""
        return int(self.topology.broadcast_object(int(seed)))

    # --- per-sample statistics ------------------------------------------------------------------

    @property
    def recording(self) -> bool:
        """Whether training batches' statistics are recorded (from the run's start)."""
        return self.recorder is not None

    def record(self, indices, loss, confidence, correct) -> None:
        """One batch's statistics, at the current optimizer step (kept on device until the flush)."""
        self.recorder.add(indices, loss, confidence, correct, step=self.trainer.state.global_step)

    def count_samples(self, forwarded: int, backpropagated: int) -> None:
        self.counts.forwarded += forwarded
        self.counts.backpropagated += backpropagated

    def weights_losses(self) -> bool:
        """Whether the current run's strategy may backpropagate weighted per-sample losses."""
        return self.engine.enabled and self.engine.strategy.weights_losses(self.arguments)

    def flush(self) -> None:
        """Send every rank's records to the table (their shards, or the main process). Collective."""
        if self.recorder is None:
            return
        transport = None
        if self.topology.is_distributed and self.engine.sharded:
            transport = ShardedTransport(self.topology, self.engine.num_samples)
        elif self.topology.is_distributed:
            transport = MainProcessTransport(self.topology)
        self.recorder.flush(transport, device=self.topology.device)

    # --- the run's start ---------------------------------------------------------------------------

    def table_shard(self, num_samples: int) -> Shard | None:
        """The rows of the statistics table this process holds: its shard when the strategy is
        `shardable` and several processes train, the whole table on the main process otherwise,
        None on the other processes."""
        topology = self.topology
        if not topology.is_distributed:
            return whole_table(num_samples)
        if strategy_class(self.arguments.hiding_strategy).is_shardable():
            return shard_of(num_samples, topology.world_size, topology.rank)
        return whole_table(num_samples) if topology.is_main else None

    def start(self, num_epochs: int) -> None:
        """Build the run's engine, recorder and per-batch selector; load a resumed state into them."""
        num_samples = len(self.dataset)
        shard = self.table_shard(num_samples)
        sharded = shard is not None and not shard.is_whole
        self.apply_task_defaults()
        self.engine = HidingEngine(num_samples, num_epochs, self.arguments, seed=self.sampler.seed,
                                   holds_table=shard is not None, shard=shard,
                                   collective=self.topology if sharded else None)
        self.recorder = StatsRecorder(self.engine.stats, num_samples=num_samples)
        if self.resumed_state is not None:
            self.engine.load_state_dict(self.resumed_state)
        self.sampler.seed = self.engine.seed
        strategy = self.engine.strategy
        selection = self.batch_selection
        selection.selector = strategy.batch_selector(self.topology.rank) if strategy.selects_per_batch else None
        if selection.selector is not None and self.resumed_state is not None:
            if self.resumed_selector_state is not None:
                selection.selector.load_state_dict(self.resumed_selector_state)
            else:
                logger.warning("The checkpoint has no loss history for process %d (saved with another number of "
                               "processes?): its Selective Backprop history starts empty.", self.topology.rank)

    def apply_task_defaults(self) -> None:
        """Hiding settings left unset (None) take the model's task's defaults (`TaskStatistics.hiding_defaults`,
        e.g. `kakurenbo_hide_probability=0.5` for a causal LM), read from the model's classes before training,
        so a resume applies the same ones. Logged once, with how to override them."""
        task, defaults = task_hiding_defaults(getattr(self.trainer, "model", None))
        mine = f"{self.arguments.hiding_strategy}_"  # a default of another strategy's setting does not apply
        unset = {name: value for name, value in defaults.items()
                 if name.startswith(mine) and getattr(self.arguments, name, 0) is None}
        if not unset:
            return
        self.arguments = replace(self.arguments, **unset)
        settings = ", ".join(f"{name}={value!r}" for name, value in unset.items())
        logger.info(f"{task} model detected: {settings} (this task's default; set it to override)")

    # --- the epoch boundary ----------------------------------------------------------------------

    def plan_epoch(self, model, epoch: int) -> EpochPlan:
        """Refresh a slice of last epoch's hidden samples, flush the records, then choose this epoch's
        hidden set (every rank, together)."""
        engine = self.engine
        to_refresh = engine.samples_to_refresh(epoch)
        started = time.perf_counter()
        if len(to_refresh):
            self.refresh(model, to_refresh)
        flush_started = time.perf_counter()
        refresh_seconds = flush_started - started  # the plan keeps it only when something was refreshed
        self.flush()
        flush_seconds = time.perf_counter() - flush_started
        plan = engine.plan_epoch(epoch) if engine.holds_table else None  # every rank, when sharded
        if plan is not None and self.last_batch_may_be_one():
            engine.avoid_last_batch_of_one(self.trainer._train_batch_size)
        if self.topology.is_distributed and not engine.sharded:  # decided on the main process; others adopt it
            bits, values, weights, draws = broadcast_decision(
                self.topology, engine.hidden_bits if plan else None, asdict(plan) if plan else None,
                engine.hidden_bits.size, weights=engine.weights, draws=engine.draws,
            )
            if not engine.holds_table:
                engine.adopt(EpochPlan(**values), bits, weights=weights, draws=draws)
        engine.note_refresh(refresh_seconds, len(to_refresh), flush_seconds)
        engine.remember_hidden_set()
        self.trainer.on_epoch_plan(engine.current_plan)
        return engine.current_plan

    def refresh(self, model, indices: np.ndarray) -> None:
        """Forward-only pass over `indices`, split across ranks in equal batch counts (`refresh_slice.py`)."""
        trainer = self.trainer
        batch_size = self.arguments.refresh_batch_size or max(
            trainer.args.per_device_train_batch_size, trainer.args.per_device_eval_batch_size
        )
        batches = plan_refresh_batches(indices, self.topology.rank, self.topology.world_size, batch_size)
        dataset = self.dataset
        read_hook, dataset.on_read_start = dataset.on_read_start, None  # not a training read
        try:
            with preserved_rng_state():
                run_refresh(
                    model,
                    dataset,
                    batches,
                    collate_fn=trainer.callback_handler.train_dataloader.collate_fn,
                    forward_inputs=trainer._prepare_inputs,
                    statistics=lambda outputs, batch: trainer.per_sample_statistics_fn(outputs,
                                                                                       trainer._labels_of(batch)),
                    record=self.record,
                    index_key=SAMPLE_INDEX_KEY,
                    autocast=trainer.autocast_smart_context_manager,
                    num_workers=trainer.args.dataloader_num_workers,
                    pin_memory=trainer.args.dataloader_pin_memory,
                )
        finally:
            dataset.on_read_start = read_hook

    def begin_epoch(self, model, epoch: int, train_dataloader, steps_in_epoch: int, num_update_steps_per_epoch: int,
                    loop_kwargs: dict) -> tuple[int, int]:
        """Everything before the Trainer runs `epoch`: plan it (or continue a resumed plan), point the
        sampler at its visible samples, replay the RNG of a resume, set the schedule's epoch and the
        progress bar. Returns the epoch's true (steps_in_epoch, num_update_steps_per_epoch)."""
        trainer = self.trainer
        num_epochs = math.ceil(trainer.args.num_train_epochs) if trainer.args.max_steps <= 0 else None
        if self.engine is None:
            self.start(num_epochs or 1)
        engine, sampler, resume = self.engine, self.sampler, self.resume_point
        full_update_steps = num_update_steps_per_epoch
        checkpoint = loop_kwargs.get("resume_from_checkpoint")
        resuming = checkpoint is not None and epoch == loop_kwargs.get("epochs_trained")
        mid_epoch = resuming and loop_kwargs.get("steps_trained_in_current_epoch", 0) > 0
        if resuming and not mid_epoch:
            # The Trainer would restore the RNG only inside the epoch, after our refresh drew from it.
            self.rng.restore_once(checkpoint)
        continued = engine.current_plan is not None and engine.current_plan.epoch == epoch
        plan = engine.current_plan if continued else self.plan_epoch(model, epoch)
        sampler.set_hidden_bits(engine.hidden_bits)
        sampler.set_draws(engine.draws)
        sampler.set_epoch(epoch)
        if continued:
            sampler.set_start(plan.start_sample)
            if engine.order_rng_state.size:
                sampler.restore_order_rng_state(engine.order_rng_state)
            if mid_epoch and not resume.new_geometry:
                self.rng.replay_at_first_read(self.dataset, checkpoint, self.topology.rank)
        if resume.new_geometry and continued:
            # Resumed on another number of processes or batch size: go on at the first sample not
            # yet trained, with the epoch's remaining steps counted in the new geometry.
            done = engine.continue_epoch_at(trainer.state.global_step)
            sampler.set_start(done)
            logger.warning(
                "Resumed epoch %d with %d samples per optimizer step (the checkpoint used %d): continuing at "
                "sample %d of %d of the epoch's order.",
                epoch, self.samples_per_step(), resume.saved_samples_per_step, done, sampler.epoch_size,
            )
        selection = self.batch_selection
        selection.selecting = selection.selector is not None and plan.target_fraction > 0
        selection.model = model
        if engine.enabled or plan.start_sample:
            steps_in_epoch = len(train_dataloader)
            num_update_steps_per_epoch = max(math.ceil(steps_in_epoch / trainer.args.gradient_accumulation_steps), 1)
        engine.set_epoch_geometry(self.samples_per_step(), num_update_steps_per_epoch,
                                  start_step=None if continued else trainer.state.global_step)
        self._begin_schedule_epoch(epoch, plan, num_update_steps_per_epoch, continued)
        if resume.skipped_to_boundary:
            trainer.state.epoch = float(epoch)
        self.resume_point = ResumePoint()  # applies to the resumed epoch only
        if engine.enabled and num_epochs is not None:
            remaining_epochs = num_epochs - epoch - 1
            trainer._set_max_steps(plan.start_step + num_update_steps_per_epoch + remaining_epochs * full_update_steps)
        if not continued:
            trainer.log(plan.log_values())
        return steps_in_epoch, num_update_steps_per_epoch

    def _begin_schedule_epoch(self, epoch: int, plan: EpochPlan, update_steps: int, continued: bool) -> None:
        """Point the virtual-step schedule (if any) at this epoch's length and LR factor."""
        scheduler = find_virtual_scheduler(self.trainer.lr_scheduler)
        if scheduler is None:
            return
        resume = self.resume_point
        if resume.new_geometry and continued:
            scheduler.continue_epoch(plan.start_step, update_steps)
        else:
            # After skipping the rest of an interrupted epoch, start where the epoch would have.
            start_virtual = scheduler.epoch_end_virtual if resume.skipped_to_boundary else None
            scheduler.begin_epoch(epoch, plan.start_step, update_steps, plan.lr_factor, start_virtual=start_virtual)

    def samples_per_step(self) -> int:
        """Samples of the epoch's order one optimizer step consumes (all ranks, all micro-batches)."""
        trainer = self.trainer
        return trainer._train_batch_size * self.topology.world_size * trainer.args.gradient_accumulation_steps

    def last_batch_may_be_one(self) -> bool:
        """Whether an epoch of the wrong length would end with a one-sample batch that the model cannot train
        on: BatchNorm in training mode, no `dataloader_drop_last`, and batches not evened out across ranks."""
        trainer = self.trainer
        if trainer.args.dataloader_drop_last:
            return False
        if self.topology.is_distributed and trainer.accelerator.even_batches:
            return False  # accelerate completes the last batch of every rank
        return any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in trainer.model.modules())

    def wrap_scheduler(self, scheduler, num_training_steps: int):
        """The Trainer's scheduler, advanced by epoch progress when epochs can be shorter (`VirtualStepLR`)."""
        if self.arguments.hiding_fraction <= 0:
            return scheduler
        num_epochs = math.ceil(self.trainer.args.num_train_epochs)
        return wrap_scheduler(scheduler, max(num_training_steps // max(num_epochs, 1), 1))

    # --- checkpoints and resume ----------------------------------------------------------------

    def save(self, folder: str) -> None:
        """Write the hiding state into a checkpoint folder (collective: every rank saves at the same step)."""
        if self.engine is None:
            return
        self.flush()
        engine, rank = self.engine, self.topology.rank
        engine.order_rng_state = self.sampler.order_rng_state
        if self.rng.before_last_read is not None:  # every rank: its own transforms' RNG
            save_snapshot(self.rng.before_last_read, folder, rank)
        if self.batch_selection.selector is not None:  # every rank: its own loss history
            save_rank_state(self.batch_selection.selector.state_dict(), folder, rank)
        if engine.sharded:  # every rank: its rows of the table
            save_table_shard(engine.stats.state_dict(), engine.shard, folder)
        if self.trainer.args.should_save:
            save_hiding_state(engine.state_dict(), folder)
        self.save_plot(folder)

    def save_plot(self, folder: str) -> None:
        """With `save_hiding_plot`: the report's picture in `folder` (collective: every rank assembles the
        report; the process that saves writes it)."""
        if not self.arguments.save_hiding_plot or self.engine is None:
            return
        report = self.report()
        if self.trainer.args.should_save:
            os.makedirs(folder, exist_ok=True)
            plot_report(report, os.path.join(folder, PLOT_FILE_NAME))

    def load(self, folder: str, num_samples: int) -> None:
        """Read the hiding state of a checkpoint being resumed (applied when the run starts)."""
        shard = self.table_shard(num_samples)
        state = load_hiding_state(folder, with_stats=shard is not None,
                                  rows=(shard.start, shard.stop) if shard is not None else None)
        if state is not None:
            try:
                HidingEngine.check_state(state, num_samples)
            except ValueError as error:
                raise ValueError(f"{os.path.join(folder, HIDING_STATE_NAME)}: {error}") from error
        self.resumed_state = state
        self.resumed_selector_state = load_rank_state(folder, self.topology.rank)

    def resume_position(self, checkpoint: str | None, epochs_trained: int, steps_trained: int) -> tuple[int, int]:
        """Where the resumed run continues: (epoch, micro-batches to skip in it), from the saved plans."""
        self.resume_point = ResumePoint()
        self.rng.trainer_state_restored = False
        if checkpoint is None:
            return epochs_trained, steps_trained
        trainer = self.trainer
        if self.resumed_state is None:
            epoch, skip, self.resume_point = resume_without_state(
                checkpoint, trainer.state.log_history, float(trainer.state.epoch or 0.0),
                self.arguments.resume_without_hiding_state, epochs_trained, steps_trained)
            return epoch, skip
        position = resume_position(self.resumed_state.get("plans") or [], trainer.state.global_step,
                                   self.samples_per_step(), trainer.args.gradient_accumulation_steps,
                                   trainer.args.ignore_data_skip)
        if position is None:
            return epochs_trained, steps_trained
        epoch, skip, self.resume_point = position
        return epoch, skip

    # --- the run's end -----------------------------------------------------------------------------

    def report(self) -> HidingReport:
        """The run's `HidingReport` on every rank (collective in a multi-process run: every rank calls it).

        The statistics table is assembled from where it lives: this process, every rank's shard
        (all-gathered), or the main process (broadcast).
        """
        engine = self.engine
        if engine is None:
            raise ValueError("no hiding report before training: call it after trainer.train(), or read a checkpoint "
                             "with HidingReport.from_checkpoint(folder)")
        self.flush()  # records since the last epoch start reach the table
        return HidingReport(engine.num_samples, engine.plans, engine.hidden_history, self._whole_table())

    def _whole_table(self) -> dict[str, np.ndarray]:
        engine, topology = self.engine, self.topology
        if not topology.is_distributed:
            return engine.stats.state_dict()
        columns = {}
        for name, dtype in (("loss", np.float32), ("confidence", np.float32), ("correct", np.bool_)):
            if engine.sharded:  # every rank's rows, in rank order
                columns[name] = topology.gather_padded(getattr(engine.stats, name).astype(dtype),
                                                       shard_block(engine.num_samples, topology.world_size),
                                                       engine.num_samples)
            else:  # the main process holds the table
                values = getattr(engine.stats, name) if engine.stats is not None else None
                torch_dtype = {np.float32: torch.float32, np.bool_: torch.bool}[dtype]
                columns[name] = topology.broadcast_array(values, engine.num_samples, torch_dtype).astype(dtype)
        return columns

    def num_trained_samples(self, num_train_samples: int) -> int:
        """Samples the run really trained (the Trainer assumes full epochs in its speed metrics)."""
        if self.engine is not None and self.engine.enabled:
            return self.engine.samples_trained()
        return num_train_samples

    def run_summary(self) -> dict[str, float]:
        """The run's hiding in numbers, for `train()`'s metrics and the final log (`kakurenbo/...`).

        Samples this `train()` call forwarded, backpropagated and refreshed (all ranks); over every
        epoch planned (a resumed run's earlier epochs included): the share of samples left out of
        training (`saved_share`), the refresh and flush seconds (of the slowest rank), the samples the
        coverage rule trained instead of hiding, the rule's cap (`max_hidden_epochs`), and the hidden
        share of each epoch (`kakurenbo/hidden_share/epoch_<e>`). Collective: the same on every rank.
        """
        counters = self.total_sample_counters()
        plans = self.engine.plans if self.engine is not None else []
        num_samples = self.engine.num_samples if self.engine is not None else 0
        planned = len(plans) * num_samples
        seconds = np.array([sum(plan.refresh_seconds for plan in plans), sum(plan.flush_seconds for plan in plans)])
        refresh_seconds, flush_seconds = self.topology.gather(seconds).max(axis=0).tolist()
        self.last_summary = {
            "kakurenbo/samples_forwarded": counters["forwarded"],
            "kakurenbo/samples_backpropagated": counters["backpropagated"],
            "kakurenbo/samples_refreshed": counters["refresh_forwarded"],
            "kakurenbo/saved_share": 1.0 - self.engine.samples_trained() / planned if planned else 0.0,
            "kakurenbo/refresh_seconds_total": refresh_seconds,
            "kakurenbo/flush_seconds_total": flush_seconds,
            "kakurenbo/coverage_moved_back_total": sum(plan.coverage_moved_back for plan in plans),
            "kakurenbo/max_hidden_epochs": self.engine.max_hidden_epochs if self.engine is not None else 0,
            # One scalar per epoch (metrics and loggers take scalars; `trainer.log_metrics` formats them).
            **{f"kakurenbo/hidden_share/epoch_{plan.epoch}": plan.hidden_fraction for plan in plans},
        }
        return self.last_summary

    def total_sample_counters(self) -> dict[str, int]:
        """`sample_counters`: samples this `train()` call forwarded, backpropagated and refreshed, all ranks summed."""
        forwarded, backpropagated = self.topology.sum_ints([self.counts.forwarded, self.counts.backpropagated])
        plans = self.engine.plans if self.engine is not None else []
        self.sample_counters = {
            "forwarded": forwarded,
            "backpropagated": backpropagated,
            "refresh_forwarded": sum(plan.num_refreshed for plan in plans),
        }
        return self.sample_counters
