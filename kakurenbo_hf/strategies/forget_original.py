"""FORGET, original: count over a training run, then retrain from scratch without the unforgettable.

Paper: M. Toneva et al., "An Empirical Study of Example Forgetting during Deep Neural Network
Learning", ICLR 2019 (count forgetting events over a full training, remove the least-forgotten
samples, train a new model on the rest); as the KAKURENBO paper's code offers it (Nguyen et al.,
NeurIPS 2023; github.com/TruongThaoNguyen/kakurenbo, `ImageNet/pytorch_*_forget_original.py`:
20 counting epochs, then a new model trained on the kept set for the whole run).

Two runs, as published (a model trained from scratch is a second run):
  1. Counting run: `hiding_strategy="forget_original"`, `forget_original_counts_from` empty. Nothing
     is hidden; every training record of the run is compared with the sample's previous one (a
     forgetting event: correct then, incorrect now; as `forget`, with its helpers), and each
     sample's records are counted. The counts are the strategy's state, so every checkpoint of the
     run (`output_dir/checkpoint-N`) holds the counts up to its step. `hiding_fraction` is not
     read (0 makes the run the plain Trainer's, statistics and counts still kept).
  2. Retraining run: the same training set, a fresh model, `forget_original_counts_from=<that
     checkpoint folder>`. At the first epoch after the warm-up (`hiding_warmup_epochs`, >= 1:
     the engine trains the full set before any hiding), the floor(F * N) samples with the fewest
     events of the counting run are hidden, and stay hidden to the end (a static set: the kept set
     is the complement; F = `hiding_fraction`, not its decay schedule). Never-learned samples count
     as most forgotten (dropped last); samples unseen in either run (no record, or no finite loss)
     are never dropped. Ties by a random order fixed by the seed, not by index. No counting here.

The counts source is refused (ValueError naming `forget_original_counts_from` and the fix) when
the folder has no hiding state, holds no forget_original counts (another strategy's checkpoint),
counts another number of samples, or counted fewer than `forget_original_counting_epochs` epochs.
Epochs counted = the median number of records per sample (each epoch of the counting run trains
every sample once; padding repeats and `dataloader_drop_last` move a few samples by one, never the
median). A shorter count is refused, not warned about: counts over a few epochs are mostly 0 or 1
(the ranking becomes the seeded tie order, which is what `forget` suffers from); to use one on
purpose, lower `forget_original_counting_epochs` to the epochs counted.

Choices:
  - The counting run counts every epoch it trains (Toneva et al.: the whole training). KAKURENBO's
    code counts the first 20 epochs of its 200-epoch schedule: for that, give the counting run
    the retraining run's `num_train_epochs` and `save_strategy="epoch"`, and point
    `forget_original_counts_from` at the checkpoint of epoch 20 (later epochs may be cut short).
    A checkpoint at an epoch's end counts every sample equally often; one inside an epoch has
    counted some samples once more.
  - The warm-up epoch(s) of the retraining run train the full set: the engine hides nothing before
    `hiding_warmup_epochs` (>= 1); the published code trains the kept set from its first epoch.
  - Never-learned samples are dropped last (Toneva et al.); the published code ranks them by their
    count, 0, so it drops them first.
  - `lr_compensation="target"` (1/(1-F_e), nothing hidden in the counting run, a fixed set in the
    retraining run) is refused; `realized` (default) scales by what is hidden.
  - A retraining run resumes from its own checkpoints (the chosen set is in its state); the counts
    source is not a resume (`resume_from_checkpoint` would load the counting run's model).
  - No refresh pass (the rule never reads hidden samples' statistics); records are training
    forwards (dropout, augmentation), compared in the order recorded (exact resume of either run).

Knobs: `hiding_fraction` F (retraining run), `forget_original_counting_epochs` (default 20, the
published `--static-epochs`), `forget_original_counts_from` (default "": the counting run).

Cost: 6 bytes per sample in either run (uint16 event and record counts, learned flag, the hidden
set; checkpointed). Counting run: O(batch) per record, and a whole run that hides nothing.
Retraining run: the counts read once from the folder (the checkpoint's hiding state, no model;
every process reads it), one O(N log N) sort. Saves: floor(F * N) / N of every retraining epoch
after the warm-up (the counting run, the price of the method, saves nothing).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from ..core.stats import SampleStats
from .base import HidingDecision, HidingStrategy, num_candidates, register_strategy
from .forget import MAX_EVENTS, count_forgetting_events, forgetting_scores, least_forgotten
from .toolkit import argument_or_default, checked_state

logger = logging.getLogger(__name__)

_STREAM = 0x464F5249  # "FORI"
COUNT_NAMES = ("events", "learned", "observations")
STATE_NAMES = (*COUNT_NAMES, "hidden", "chosen_epoch")
_DTYPES = {"events": np.uint16, "learned": np.bool_, "observations": np.uint16, "hidden": np.bool_}
_FIELD = "forget_original_counts_from"


def load_strategy_arrays(folder: str) -> tuple[int, dict[str, np.ndarray]]:
    """(N, the strategy's arrays) saved in a checkpoint folder written by `KakurenboTrainer`; no model.

    Pure: reads the folder's hiding state (checksums checked, as `HidingReport.from_checkpoint` does)
    and returns the training set's size with the arrays of the strategy that saved it (empty for a
    strategy without state). Raises `ValueError` if the folder holds no hiding state.
    """
    from ..distributed.checkpoint import HIDING_STATE_NAME, load_hiding_state

    state = load_hiding_state(folder, with_stats=True)
    if state is None:
        raise ValueError(f"{folder} has no {HIDING_STATE_NAME}: it was not written by a KakurenboTrainer")
    return int(state["num_samples"]), {name: np.asarray(array) for name, array in state["strategy"].items()}


def epochs_counted(observations: np.ndarray) -> int:
    """Epochs a counting run counted: the median number of records per sample."""
    return int(np.median(observations)) if observations.size else 0


def read_counts(folder: str, num_samples: int, counting_epochs: int) -> dict[str, np.ndarray]:
    """The counting run's arrays (`COUNT_NAMES`) from its checkpoint `folder`, checked against this run.

    Raises `ValueError` naming `forget_original_counts_from` and the fix when the folder cannot serve.
    """
    where = f"{_FIELD}={folder!r}"
    counting_run = ("a checkpoint folder (output_dir/checkpoint-N) of a counting run: hiding_strategy="
                    f"'forget_original' with {_FIELD} empty")
    if not os.path.isdir(folder):
        raise ValueError(f"{where} is not a folder; set it to {counting_run}")
    try:
        saved_samples, arrays = load_strategy_arrays(folder)
    except ValueError as error:
        raise ValueError(f"{where}: {error}; set it to {counting_run}") from error
    missing = [name for name in COUNT_NAMES if name not in arrays]
    if missing:
        raise ValueError(f"{where} holds no forgetting counts (its strategy state has {sorted(arrays) or 'no arrays'}; "
                         f"it was saved with another hiding_strategy); set it to {counting_run}")
    if saved_samples != num_samples:
        raise ValueError(f"{where} counted a training set of {saved_samples} samples, but this training set has "
                         f"{num_samples}: retrain on the counting run's training set (same samples, same order), or "
                         "count on this one")
    counts = {}
    for name in COUNT_NAMES:
        array = arrays[name]
        if array.shape != (num_samples,) or array.dtype != _DTYPES[name]:
            raise ValueError(f"{where}: its {name!r} array is {array.dtype} {array.shape}, expected "
                             f"{np.dtype(_DTYPES[name])} ({num_samples},); the file is not a forget_original state")
        counts[name] = array.copy()
    counted = epochs_counted(counts["observations"])
    if counted < counting_epochs:
        raise ValueError(
            f"{where} counted {counted} epoch(s) (median records per sample), fewer than "
            f"forget_original_counting_epochs={counting_epochs}: point it at a later checkpoint of the counting run "
            f"(train it for at least {counting_epochs} epochs), or set forget_original_counting_epochs={counted} "
            "to accept the shorter count" + (" (at least 2)" if counted < 2 else "")
        )
    return counts


@register_strategy("forget_original")
class ForgetOriginalStrategy(HidingStrategy):
    """A counting run (nothing hidden), or a retraining run hiding the counting run's least-forgotten for good.

    Example::

        >>> counting = KakurenboTrainingArguments("count", hiding_strategy="forget_original", hiding_fraction=0.0,
        ...                                       num_train_epochs=20, save_strategy="epoch")
        >>> # ... train; then a fresh model:
        >>> retrain = KakurenboTrainingArguments("retrain", hiding_strategy="forget_original", hiding_fraction=0.3,
        ...                                      forget_original_counts_from="count/checkpoint-7820")
    """

    uses_hiding_fraction = False  # floor(F * N) for good, whatever the decay schedule says later
    refreshes_hidden = False
    STATE_NAMES = STATE_NAMES

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.counting_epochs = int(argument_or_default(self.arguments, "forget_original_counting_epochs"))
        self.counts_from = str(argument_or_default(self.arguments, _FIELD) or "")
        self.fraction = float(argument_or_default(self.arguments, "hiding_fraction"))
        self._state: dict[str, np.ndarray] | None = None
        if self.retraining and self.num_samples > 0:  # refused now, before the first step, if it cannot serve
            self._arrays(self.num_samples).update(read_counts(self.counts_from, self.num_samples, self.counting_epochs))
            logger.info("forget_original: retraining without the floor(%g * N) least-forgotten samples of %s",
                        self.fraction, self.counts_from)
        elif not self.retraining:
            logger.info("forget_original: a counting run (nothing hidden; its checkpoints hold the forgetting counts "
                        "that a retraining run reads through %s)", _FIELD)

    @property
    def retraining(self) -> bool:
        """Whether this is the retraining run (a counts source is set); else the counting run."""
        return bool(self.counts_from)

    @classmethod
    def validate_arguments(cls, arguments) -> None:
        epochs = arguments.forget_original_counting_epochs
        if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 2:
            raise ValueError(f"forget_original_counting_epochs must be an integer >= 2 (a forgetting event needs two "
                             f"observations of a sample), got {epochs!r}")
        source = arguments.forget_original_counts_from
        if source is not None and not isinstance(source, (str, os.PathLike)):
            raise ValueError(f"{_FIELD} must be a checkpoint folder's path (or empty for the counting run), got "
                             f"{source!r}")
        if source and arguments.hiding_fraction <= 0:
            raise ValueError(f"{_FIELD} is set (a retraining run) but hiding_fraction=0 hides nothing: set "
                             "hiding_fraction to the share of samples to leave out (e.g. 0.3), or leave "
                             f"{_FIELD} empty for a counting run")
        if arguments.lr_compensation == "target":
            raise ValueError("lr_compensation='target' scales the LR by 1/(1-F_e) of the decay schedule, but "
                             "hiding_strategy='forget_original' hides nothing in its counting run and a fixed "
                             "floor(F * N) samples in its retraining run: set lr_compensation='realized' (scales by "
                             "what is hidden) or 'none'")

    def _arrays(self, num_samples: int) -> dict[str, np.ndarray]:
        if self._state is None:
            self._state = {name: np.zeros(num_samples, dtype=dtype) for name, dtype in _DTYPES.items()}
            self._state["chosen_epoch"] = np.full(1, -1, dtype=np.int64)  # -1: not chosen (always, when counting)
        return self._state

    @property
    def chosen_epoch(self) -> int:
        return int(self._state["chosen_epoch"][0]) if self._state is not None else -1

    def observe(self, stats: SampleStats, indices: np.ndarray, loss: np.ndarray, confidence: np.ndarray,
                correct: np.ndarray) -> None:
        if self.retraining:
            return  # the counts are the counting run's
        state = self._arrays(stats.num_samples)
        count_forgetting_events(state["events"], state["learned"], stats.correct, indices, correct)
        seen, times = np.unique(indices, return_counts=True)
        observations = state["observations"]
        observations[seen] = np.minimum(observations[seen].astype(np.int64) + times, MAX_EVENTS)

    def forgetting_scores(self, stats: SampleStats) -> np.ndarray:
        """float32 (N,): the counted events of learned samples; never learned: NEVER_LEARNED; unseen in the
        counting run (no record) or in this one (no finite loss): +inf."""
        state = self._arrays(stats.num_samples)
        scores = forgetting_scores(state["events"], state["learned"], stats.loss)
        scores[state["observations"] == 0] = np.inf
        return scores

    def select(self, stats: SampleStats, target_fraction: float, epoch: int) -> HidingDecision:
        state = self._arrays(stats.num_samples)
        if not self.retraining:  # the counting run
            return HidingDecision(hidden=np.zeros(stats.num_samples, dtype=bool), num_candidates=0, moved_back=0)
        if self.chosen_epoch < 0:
            tie_break = np.random.default_rng([self.seed, _STREAM]).permutation(stats.num_samples)
            k = num_candidates(stats.num_samples, self.fraction)
            state["hidden"][:] = least_forgotten(self.forgetting_scores(stats), k, tie_break)
            state["chosen_epoch"][0] = epoch
        hidden = state["hidden"].copy()
        wanted = num_candidates(stats.num_samples, self.fraction)
        return HidingDecision(hidden=hidden, num_candidates=wanted, moved_back=wanted - int(np.count_nonzero(hidden)))

    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: array.copy() for name, array in self._arrays(self.num_samples).items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        arrays = checked_state("forget_original", state, self.STATE_NAMES, _DTYPES, self.num_samples)
        chosen = np.asarray(state["chosen_epoch"], dtype=np.int64).reshape(1).copy()
        if not self.retraining and chosen[0] >= 0:
            raise ValueError(f"the checkpoint is a forget_original retraining run's (its hidden set was chosen at "
                             f"epoch {int(chosen[0])}): resume it with {_FIELD} set as it was")
        self._state = {**arrays, "chosen_epoch": chosen}
