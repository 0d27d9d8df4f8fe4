"""Where an interrupted hiding run continues (epoch, sample, geometry), and the RNG replayed around the
first batch read so that random augmentations continue exactly.

`resume_position` is a pure function of the saved epoch plans; `RngReplay` owns the RNG snapshot
taken before each training read (see `distributed/rng.py`) and its replay after a mid-epoch resume.
Both are owned by the `HidingController`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from transformers.utils import logging

from ..core.engine import EpochPlan
from ..distributed.checkpoint import HIDING_STATE_NAME
from ..distributed.rng import load_snapshot, restore, snapshot

logger = logging.get_logger(__name__)


@dataclass
class ResumePoint:
    """How the epoch being resumed differs from an exact continuation (applies to that epoch only)."""

    new_geometry: bool = False  # resumed with another number of samples per optimizer step
    saved_samples_per_step: int = 0
    skipped_to_boundary: bool = False  # a checkpoint without hiding state: the rest of its epoch is skipped


def resume_position(plans: list[dict], global_step: int, samples_per_step: int, accumulation_steps: int,
                    ignore_data_skip: bool) -> tuple[int, int, ResumePoint] | None:
    """(epoch, micro-batches to skip in it, how it differs) from the saved plans; None without plans.

    The Trainer assumes full-length epochs; the saved plans know each epoch's true length.
    """
    if not plans:
        return None
    last = EpochPlan(**plans[-1])
    done_in_segment = global_step - last.start_step
    if done_in_segment >= last.update_steps:
        return last.epoch + 1, 0, ResumePoint()
    if last.samples_per_step and last.samples_per_step != samples_per_step and not ignore_data_skip:
        return last.epoch, 0, ResumePoint(new_geometry=True, saved_samples_per_step=last.samples_per_step)
    return last.epoch, 0 if ignore_data_skip else done_in_segment * accumulation_steps, ResumePoint()


def resume_without_state(checkpoint: str, log_history: list[dict], epoch_progress: float, allowed: bool,
                         epochs_trained: int, steps_trained: int) -> tuple[int, int, ResumePoint]:
    """A checkpoint without hiding state: fine for a run that never hid; refused (or opted in) otherwise."""
    hid = [entry for entry in log_history if entry.get("kakurenbo/hidden", 0) > 0]
    if not hid:
        logger.info("%s has no hiding state and its run never hid a sample: hiding starts afresh.", checkpoint)
        return epochs_trained, steps_trained, ResumePoint()
    if not allowed:
        raise ValueError(
            f"{checkpoint} has no {HIDING_STATE_NAME}, but its run hid samples (trainer_state.json logs "
            f"kakurenbo/hidden = {hid[-1]['kakurenbo/hidden']} at step {hid[-1].get('step')}): its epochs were "
            "shorter than full ones, so the Trainer cannot tell where to resume. Copy the whole checkpoint folder, "
            "or set resume_without_hiding_state=True to continue at the next epoch boundary with hiding restarted "
            "from fresh statistics."
        )
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
    return next_epoch, 0, ResumePoint(skipped_to_boundary=True)


class RngReplay:
    """The CPU RNG state before the last training read, and its replay after a mid-epoch resume.

    Args:
        restore_trainer_state: restores the Trainer's checkpointed RNG state from a folder (the
            Trainer's own `_load_rng_state`); called at most once per resume, at the right moment.
    """

    def __init__(self, restore_trainer_state: Callable[[str], None]):
        self.restore_trainer_state = restore_trainer_state
        self.before_last_read = None
        self.trainer_state_restored = False

    def remember(self) -> None:
        """Before each training read: the RNG state its random transforms start from."""
        self.before_last_read = snapshot()

    def restore_once(self, checkpoint: str) -> None:
        """Restore the checkpoint's Trainer RNG state now; the Trainer's own next restore is then skipped."""
        self.restore_trainer_state(checkpoint)
        self.trainer_state_restored = True

    def take_restored(self) -> bool:
        """Whether the Trainer's RNG state was restored already (then its own restore is skipped, once)."""
        restored, self.trainer_state_restored = self.trainer_state_restored, False
        return restored

    def replay_at_first_read(self, dataset, checkpoint: str, rank: int) -> None:
        """Mid-epoch resume: replay the uninterrupted run's RNG draws around the first batch read.

        Before the first read, the state the same read started from in the uninterrupted run; right
        after it, the Trainer's checkpointed state (which already held that read's draws). The
        Trainer's own later restore is skipped. Without this rank's snapshot (an older checkpoint,
        another number of processes) the Trainer restores the RNG as usual.
        """
        before_read = load_snapshot(checkpoint, rank)
        if before_read is None:
            return

        def start():
            restore(before_read)
            self.before_last_read = before_read
            dataset.on_read_start = self.remember

        def end():
            dataset.on_read_end = None
            self.restore_once(checkpoint)

        dataset.on_read_start, dataset.on_read_end = start, end
