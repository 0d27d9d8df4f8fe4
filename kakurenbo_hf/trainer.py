"""`KakurenboTrainer`: `transformers.Trainer` that hides the least useful samples each epoch.

Thin glue. The algorithm lives in pure modules (`engine`, `stats`, `strategies`, `schedule`,
`sampler`); this file connects them to the Trainer's hooks:

- `get_train_dataloader` / `_get_train_sampler`: the train set is read through an
  `IndexedDataset` (rows carry their index) with a `HidingSampler`.
- `compute_loss`: records per-sample statistics from the logits; the loss returned for backward
  is the model's own, untouched.
- `_run_epoch`: at each epoch start, refresh the statistics of the samples hidden in the last
  epoch, select the new hidden set, and run the epoch with its true length (the 5.x loop reads
  the epoch length once, see DESIGN.md section 2).
- `create_scheduler`: wraps the schedule so that it follows epoch progress (`VirtualStepLR`).
- `_save_checkpoint` / `_init_training_state`: the hiding state travels with each checkpoint
  and an interrupted run resumes in the right epoch, at the right batch.
"""

from __future__ import annotations

import inspect
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import contextmanager

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset
from transformers import PreTrainedModel, Trainer
from transformers.trainer_callback import ProgressCallback
from transformers.utils import logging

from .checkpoint import load_hiding_state, save_hiding_state
from .config import KakurenboArguments
from .engine import EpochPlan, HidingEngine
from .indexing import SAMPLE_INDEX_KEY, IndexCollator, IndexedDataset
from .recorder import StatsRecorder
from .sampler import HidingSampler
from .schedule import VirtualStepLR, wrap_scheduler
from .stats import per_sample_statistics

logger = logging.get_logger(__name__)

# (outputs, labels) -> (loss, confidence, correct), each of shape (batch,)
PerSampleStatisticsFn = Callable[[object, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def default_per_sample_statistics(outputs, labels: torch.Tensor):
    """Statistics of single-label classification: cross-entropy, top probability, correctness.

    Raises `ValueError` for outputs without `logits` or label shapes of other tasks.
    """
    logits = outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
    if logits is None:
        raise ValueError(
            "KakurenboTrainer needs the model's outputs to have `logits` to compute per-sample statistics; "
            f"got {type(outputs).__name__} without them. Return logits, or pass "
            "`per_sample_statistics_fn=` to KakurenboTrainer."
        )
    if (
        logits.ndim != 2
        or labels.ndim != 1
        or labels.shape[0] != logits.shape[0]
        or labels.is_floating_point()
        or logits.shape[-1] < 2
    ):
        raise ValueError(
            "KakurenboTrainer's default per-sample statistics need single-label classification: logits of shape "
            "(batch, classes >= 2) and integer labels of shape (batch,); got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)} ({labels.dtype}). For regression, "
            "multi-label or token-level tasks pass `per_sample_statistics_fn=fn`, where "
            "fn(outputs, labels) returns per-sample (loss, confidence, correct) tensors of shape (batch,)."
        )
    return per_sample_statistics(logits, labels)


class KakurenboTrainer(Trainer):
    """A drop-in `Trainer` that hides well-learned samples (KAKURENBO, Nguyen et al., NeurIPS 2023).

    Args:
        *args, **kwargs: exactly those of `transformers.Trainer`. Hiding is configured by the
            fields of `KakurenboTrainingArguments` (plain `TrainingArguments` get the defaults).
        per_sample_statistics_fn: optional `fn(outputs, labels) -> (loss, confidence, correct)`,
            each a tensor of shape (batch,), for tasks other than single-label classification.
    """

    def __init__(self, *args, per_sample_statistics_fn: PerSampleStatisticsFn | None = None, **kwargs):
        given = inspect.signature(Trainer.__init__).bind_partial(self, *args, **kwargs).arguments
        if given.get("train_dataset") is not None:
            self._check_train_dataset(given["train_dataset"])  # before the Trainer's own, vaguer error
        super().__init__(*args, **kwargs)
        if isinstance(self.args, KakurenboArguments):
            self.hiding_args = self.args.hiding_arguments()
        else:
            self.hiding_args = KakurenboArguments()
            logger.info("KakurenboTrainer got plain TrainingArguments: using the default hiding arguments.")
        self.per_sample_statistics_fn = per_sample_statistics_fn or default_per_sample_statistics
        self.data_collator = IndexCollator(self.data_collator)
        self.hiding_engine: HidingEngine | None = None
        self.hiding_sampler: HidingSampler | None = None
        self._recorder: StatsRecorder | None = None
        self._indexed_train_dataset: IndexedDataset | None = None
        self._resumed_hiding_state: dict | None = None

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
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        self.hiding_sampler = HidingSampler(len(dataset), seed=self._hiding_seed())
        return self.hiding_sampler

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
        """Fail before training if batches carry no labels (random transforms do not disturb the RNG)."""
        dataset = self._indexed_train_dataset
        with _preserved_rng_state():
            batch = collate_fn(dataset.__getitems__(list(range(min(2, len(dataset))))))
        if self._labels_of(batch) is None:
            raise ValueError(
                "KakurenboTrainer needs labels in every training batch to compute per-sample statistics, but the "
                f"batch has only {sorted(k for k in batch.keys() if k != SAMPLE_INDEX_KEY)}. Put them under "
                f"{self.label_names or ['labels']} (or set `label_names`)."
            )

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
            sample_loss, confidence, correct = self.per_sample_statistics_fn(outputs, labels)
            self._recorder.add(sample_indices, sample_loss, confidence, correct, step=self.state.global_step)
        return (loss, outputs) if return_outputs else loss

    def _gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return tensor
        tensor = self.accelerator.pad_across_processes(tensor.to(self.args.device), dim=0, pad_index=-1)
        return self.accelerator.gather(tensor)

    def _flush_statistics(self) -> None:
        if self._recorder is not None:
            self._recorder.flush(self._gather, device=self.args.device)

    @torch.inference_mode()
    def _refresh(self, model, indices: np.ndarray) -> None:
        """Forward-only pass over `indices` (this rank's share): eval mode, eval batch size."""
        unwrapped = self.accelerator.unwrap_model(model)
        was_training = unwrapped.training
        unwrapped.eval()
        share = indices[self.accelerator.process_index :: self.accelerator.num_processes]
        batch_size = self.args.eval_batch_size
        loader = DataLoader(
            self._indexed_train_dataset,
            batch_sampler=[share[i : i + batch_size].tolist() for i in range(0, len(share), batch_size)],
            collate_fn=self.callback_handler.train_dataloader.collate_fn,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            generator=torch.Generator(),  # leaves the global RNG alone
        )
        try:
            with _preserved_rng_state():
                for batch in loader:
                    sample_indices = batch.pop(SAMPLE_INDEX_KEY)
                    batch = self._prepare_inputs(batch)
                    with self.autocast_smart_context_manager():
                        outputs = unwrapped(**batch)
                    sample_loss, confidence, correct = self.per_sample_statistics_fn(outputs, self._labels_of(batch))
                    self._recorder.add(sample_indices, sample_loss, confidence, correct, self.state.global_step)
        finally:
            unwrapped.train(was_training)

    # --- the epoch -----------------------------------------------------------------------------

    def _start_hiding(self, num_epochs: int) -> None:
        self.hiding_engine = HidingEngine(
            len(self._indexed_train_dataset), num_epochs, self.hiding_args, seed=self.hiding_sampler.seed
        )
        self._recorder = StatsRecorder(self.hiding_engine.stats)
        if self._resumed_hiding_state is not None:
            self.hiding_engine.load_state_dict(self._resumed_hiding_state)
        self.hiding_sampler.seed = self.hiding_engine.seed

    def _plan_epoch(self, model, epoch: int) -> EpochPlan:
        """Refresh last epoch's hidden samples, then choose this epoch's hidden set."""
        engine = self.hiding_engine
        to_refresh = engine.samples_to_refresh()
        started = time.perf_counter()
        if len(to_refresh):
            self._refresh(model, to_refresh)
        self._flush_statistics()
        refresh_seconds = time.perf_counter() - started if len(to_refresh) else 0.0
        plan = engine.plan_epoch(epoch)
        plan.refresh_seconds = refresh_seconds
        return plan

    def _run_epoch(self, model, epoch, train_dataloader, steps_in_epoch, num_update_steps_per_epoch, **kwargs):
        num_epochs = math.ceil(self.args.num_train_epochs) if self.args.max_steps <= 0 else None
        if self.hiding_engine is None:
            self._start_hiding(num_epochs or 1)
        engine = self.hiding_engine
        full_update_steps = num_update_steps_per_epoch
        resumed = engine.current_plan is not None and engine.current_plan.epoch == epoch
        if resumed:
            plan = engine.current_plan  # resumed mid-epoch: same hidden set, same order
        else:
            plan = self._plan_epoch(model, epoch)
            plan.start_step = self.state.global_step
        self.hiding_sampler.set_hidden(engine.hidden)
        self.hiding_sampler.set_epoch(epoch)
        if engine.enabled:
            steps_in_epoch = len(train_dataloader)
            ga = self.args.gradient_accumulation_steps
            num_update_steps_per_epoch = max(math.ceil(steps_in_epoch / ga), 1)
        plan.update_steps = num_update_steps_per_epoch
        if isinstance(self.lr_scheduler, VirtualStepLR):
            self.lr_scheduler.begin_epoch(epoch, plan.start_step, num_update_steps_per_epoch, plan.lr_factor)
        if engine.enabled and num_epochs is not None:
            remaining_epochs = num_epochs - epoch - 1
            self._set_max_steps(plan.start_step + num_update_steps_per_epoch + remaining_epochs * full_update_steps)
        if not resumed:
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
        return super().train(*args, **kwargs)

    def _inner_training_loop(self, *args, **kwargs):
        # A fresh engine per loop (auto_find_batch_size retries it); a resumed state is reloaded.
        self.hiding_engine = None
        self._recorder = None
        return super()._inner_training_loop(*args, **kwargs)

    # --- checkpoints and resume ----------------------------------------------------------------

    def _save_checkpoint(self, model, trial) -> None:
        # Written before the Trainer's own files, so a hub push of the checkpoint carries it.
        if self.hiding_engine is not None:
            self._flush_statistics()  # collective: every rank saves at the same step
            if self.args.should_save:
                folder = os.path.join(self._get_output_dir(trial), f"checkpoint-{self.state.global_step}")
                save_hiding_state(self.hiding_engine.state_dict(), folder)
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        target = model if model is not None else self.model
        if not _load_with_key_conversion(resume_from_checkpoint, target):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        state = load_hiding_state(resume_from_checkpoint)
        if state is None:
            logger.info("%s has no hiding state (a plain Trainer checkpoint): hiding starts afresh.", resume_from_checkpoint)
        else:
            HidingEngine.check_state(state, len(self.train_dataset))
        self._resumed_hiding_state = state

    def _load_best_model(self) -> None:
        # Same upstream key-name problem as on resume (load_best_model_at_end with ViT/DeiT).
        if not _load_with_key_conversion(self.state.best_model_checkpoint, self.model):
            super()._load_best_model()

    def _finalize_training(self, trial, num_train_samples, start_time):
        # The Trainer assumes full epochs; count the samples really trained for its speed metrics.
        if self.hiding_engine is not None and self.hiding_engine.enabled:
            num_train_samples = sum(plan.num_samples - plan.num_hidden for plan in self.hiding_engine.plans)
        return super()._finalize_training(trial, num_train_samples, start_time)

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial):
        epochs_trained, steps_trained = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        plans = (self._resumed_hiding_state or {}).get("plans") or []
        if plans:
            # The Trainer assumes full-length epochs; the saved plans know each epoch's true length.
            last = plans[-1]
            done_in_epoch = self.state.global_step - last["start_step"]
            if done_in_epoch >= last["update_steps"]:
                epochs_trained, steps_trained = last["epoch"] + 1, 0
            else:
                epochs_trained = last["epoch"]
                steps_trained = 0 if self.args.ignore_data_skip else done_in_epoch * self.args.gradient_accumulation_steps
        return epochs_trained, steps_trained


def _load_with_key_conversion(folder: str, model) -> bool:
    """Load `folder`'s weights into `model` through `from_pretrained` if their key names differ.

    transformers saves some models (ViT, DeiT) under their Hub key names, and the Trainer reloads
    checkpoints unconverted: it warns about missing keys and goes on with the weights it had.
    `from_pretrained` knows the conversion; its result is copied in place. Returns False (nothing
    done) when the names match or the model is not a plain `PreTrainedModel`.
    """
    if not _checkpoint_keys_differ(folder, model):
        return False
    logger.info("Loading %s through from_pretrained (its key names differ from the model's).", folder)
    dtype = next(model.parameters()).dtype
    reloaded = type(model).from_pretrained(folder, config=model.config, dtype=dtype)
    model.load_state_dict(reloaded.state_dict(), strict=True)
    return True


def _checkpoint_keys_differ(folder: str, model) -> bool:
    """True if `folder`'s safetensors weights use other key names than `model` (a PreTrainedModel)."""
    if not isinstance(model, PreTrainedModel):
        return False
    index_file = os.path.join(folder, "model.safetensors.index.json")
    weights_file = os.path.join(folder, "model.safetensors")
    if os.path.isfile(index_file):
        import json

        with open(index_file) as handle:
            keys = set(json.load(handle)["weight_map"])
    elif os.path.isfile(weights_file):
        from safetensors import safe_open

        with safe_open(weights_file, framework="pt") as handle:
            keys = set(handle.keys())
    else:
        return False
    return keys != set(model.state_dict().keys())


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
