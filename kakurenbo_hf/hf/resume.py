"""Trainer glue of resuming: where an interrupted hiding run continues (epoch, sample, geometry), and
the RNG replayed around the first batch read so that random augmentations continue exactly.

Mixed into `KakurenboMixin`; reads its `hiding_args`, `_resumed_hiding_state`, `_indexed_train_dataset`.
"""

from __future__ import annotations

import math

from transformers.utils import logging

from ..distributed.checkpoint import HIDING_STATE_NAME
from ..core.engine import EpochPlan
from ..distributed.rng import load_snapshot, restore, snapshot

logger = logging.get_logger(__name__)


class ResumeMixin:
    """Resume a hiding run in the right epoch, at the right sample, with the RNG where it was."""

    def _remember_rng_state(self) -> None:
        """Before each training read: the RNG state its random transforms start from (see rng.py)."""
        self._rng_before_last_read = snapshot()

    def _replay_rng_at_first_read(self, checkpoint: str) -> None:
        """Mid-epoch resume: replay the uninterrupted run's RNG draws around the first batch read.

        Before the first read, the state the same read started from in the uninterrupted run; right
        after it, the Trainer's checkpointed state (which already held that read's draws). The
        Trainer's own later restore is skipped. Without this rank's snapshot (an older checkpoint,
        another number of processes) the Trainer restores the RNG as usual.
        """
        before_read = load_snapshot(checkpoint, self.accelerator.process_index)
        dataset = self._indexed_train_dataset
        if before_read is None or self._resume.new_geometry:
            return

        def start():
            restore(before_read)
            self._rng_before_last_read = before_read
            dataset.on_read_start = self._remember_rng_state

        def end():
            dataset.on_read_end = None
            self._restore_rng_state_once(checkpoint)

        dataset.on_read_start, dataset.on_read_end = start, end

    def _restore_rng_state_once(self, checkpoint: str) -> None:
        """Restore the checkpoint's RNG state now; the Trainer's own next restore is then skipped."""
        super()._load_rng_state(checkpoint)
        self._rng_state_restored = True

    def _load_rng_state(self, checkpoint) -> None:
        if getattr(self, "_rng_state_restored", False):
            self._rng_state_restored = False  # restored already, at the right moment
            return
        super()._load_rng_state(checkpoint)

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial):
        epochs_trained, steps_trained = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        self._resume = _ResumePoint()
        self._rng_state_restored = False
        if resume_from_checkpoint is None:
            return epochs_trained, steps_trained
        plans = (self._resumed_hiding_state or {}).get("plans") or []
        if self._resumed_hiding_state is None:
            return self._resume_without_state(resume_from_checkpoint, epochs_trained, steps_trained)
        if not plans:
            return epochs_trained, steps_trained
        # The Trainer assumes full-length epochs; the saved plans know each epoch's true length.
        last = EpochPlan(**plans[-1])
        done_in_segment = self.state.global_step - last.start_step
        if done_in_segment >= last.update_steps:
            return last.epoch + 1, 0
        if last.samples_per_step and last.samples_per_step != self._samples_per_step() and not self.args.ignore_data_skip:
            self._resume = _ResumePoint(new_geometry=True, saved_samples_per_step=last.samples_per_step)
            return last.epoch, 0
        return last.epoch, 0 if self.args.ignore_data_skip else done_in_segment * self.args.gradient_accumulation_steps

    def _resume_without_state(self, checkpoint: str, epochs_trained: int, steps_trained: int) -> tuple[int, int]:
        """A checkpoint without hiding state: fine for a run that never hid; refused (or opted in) otherwise."""
        hid = [entry for entry in self.state.log_history if entry.get("kakurenbo/hidden", 0) > 0]
        if not hid:
            logger.info("%s has no hiding state and its run never hid a sample: hiding starts afresh.", checkpoint)
            return epochs_trained, steps_trained
        if not self.hiding_args.resume_without_hiding_state:
            raise ValueError(
                f"{checkpoint} has no {HIDING_STATE_NAME}, but its run hid samples (trainer_state.json logs "
                f"kakurenbo/hidden = {hid[-1]['kakurenbo/hidden']} at step {hid[-1].get('step')}): its epochs were "
                "shorter than full ones, so the Trainer cannot tell where to resume. Copy the whole checkpoint folder, "
                "or set resume_without_hiding_state=True to continue at the next epoch boundary with hiding restarted "
                "from fresh statistics."
            )
        epoch_progress = float(self.state.epoch or 0.0)
        next_epoch = math.ceil(epoch_progress - 1e-9)
        skipped = next_epoch - epoch_progress
        if skipped > 1e-9:
            logger.warning(
                "%s has no hiding state: skipping the rest of epoch %d (%.0f%% of it) and continuing at epoch %d with "
                "hiding restarted from fresh statistics (resume_without_hiding_state=True).",
                checkpoint, next_epoch - 1, 100 * skipped, next_epoch,
            )
        else:
            logger.warning(
                "%s has no hiding state: continuing at epoch %d with hiding restarted from fresh statistics "
                "(resume_without_hiding_state=True).", checkpoint, next_epoch,
            )
        self._resume = _ResumePoint(skipped_to_boundary=True)
        return next_epoch, 0


class _ResumePoint:
    """How the epoch being resumed differs from an exact continuation (one-shot, then cleared)."""

    def __init__(self, new_geometry: bool = False, saved_samples_per_step: int = 0, skipped_to_boundary: bool = False):
        self.new_geometry = new_geometry
        self.saved_samples_per_step = saved_samples_per_step
        self.skipped_to_boundary = skipped_to_boundary
