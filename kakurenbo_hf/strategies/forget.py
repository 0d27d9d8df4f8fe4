"""FORGET: drop the samples that are never forgotten.

Paper: M. Toneva et al., "An Empirical Study of Example Forgetting during Deep Neural Network
Learning", ICLR 2019; the FORGET baseline of the KAKURENBO paper (Nguyen et al., NeurIPS 2023).

Rule:
  1. Counting: every observed prediction of a sample is compared with its previous one; a
     forgetting event is "correct at the previous observation, incorrect now". A sample is
     learned once it is predicted correctly.
  2. At the first epoch e0 >= max(`forget_counting_epochs`, `hiding_warmup_epochs`), the
     floor(F * N) samples with the fewest events are hidden for the rest of training (a static
     set; F = `hiding_fraction`). Samples never learned count as most forgotten (Toneva et al.
     give them the largest count): they are dropped last. Unseen samples (no finite loss) are
     never dropped. Ties in the count (typically the many unforgettable samples) are broken by a
     random order fixed by the seed, not by index: datasets are often stored class by class.
  Counting stops at e0; before it nothing is hidden.

Choices:
  - In one run, not two: Toneva et al. count over a full training and retrain from scratch on the
    kept set; KAKURENBO's code offers that (`forget_original`, 20 counting epochs, then a new model)
    and an online variant its scripts run (`forget_lag`: 2 counting epochs, then each epoch re-ranks
    by the cumulative count). Both are strategies of their own here (`forget_original.py`,
    `forget_lag.py`). This one counts at the start of the run itself and chooses the set once.
  - F does not follow the decay schedule: the set is fixed when chosen, with F = hiding_fraction.
    F_e still switches hiding off where it is 0 (warm-up, a decay factor of 0).
    `lr_compensation="target"` (1/(1-F_e)) would then not match what is hidden and is refused;
    `realized` (default) scales by the true floor(F * N) / N.
  - No refresh pass: the decision never reads the statistics of hidden samples again.
  - Records are training forwards (training mode: dropout, augmentation), as in Toneva et al.
    Every record is compared with the one before it, in the order recorded (optimizer step, then
    rank), also a sample's second record in one epoch (even batches' padding): the counts then do
    not depend on where flushes (epoch starts, checkpoints) cut the records, which exact resume
    needs.

Knobs: `hiding_fraction` F, `forget_counting_epochs` (default 2, as KAKURENBO's FORGET script).

Cost: 4 bytes per sample (uint16 event count, learned flag, the hidden set; checkpointed), O(batch)
per observed record while counting, one O(N log N) sort when the set is chosen.
Saves: floor(F * N) / N of every epoch after e0, and no refresh pass.
"""

from __future__ import annotations

import numpy as np

from ..core.stats import SampleStats
from .base import HidingDecision, HidingStrategy, num_candidates, register_strategy
from .toolkit import argument_or_default, checked_state, occurrences

_STREAM = 0x464F5247  # "FORG"
NEVER_LEARNED = np.float32(np.finfo(np.float32).max)  # above any count, below "unseen" (+inf)
MAX_EVENTS = np.iinfo(np.uint16).max


# --- the counting and ranking the forget variants share (forget_lag.py, forget_original.py) -------


def count_forgetting_events(events: np.ndarray, learned: np.ndarray, previous: np.ndarray, indices: np.ndarray,
                            correct: np.ndarray) -> None:
    """Add one statistics update's forgetting events to `events` (uint16, saturating) and mark `learned`.

    `previous`: each sample's prediction before this update (the table's `correct`, not yet
    overwritten); `indices`, `correct`: the update's records, oldest first. A record is compared
    with the one before it: the table's for a sample's first record in the update, its own
    previous record otherwise (a sample's records are adjacent in the stable `occurrences` order),
    so the counts do not depend on where flushes cut the records.
    """
    order, occurrence = occurrences(indices)
    ordered, now = indices[order], correct[order]
    before = previous[ordered]
    repeat = occurrence[order] > 0
    before[repeat] = now[np.flatnonzero(repeat) - 1]
    forgotten, count = np.unique(ordered[before & ~now], return_counts=True)
    events[forgotten] = np.minimum(events[forgotten].astype(np.int64) + count, MAX_EVENTS)  # saturate
    learned[indices[correct]] = True


def forgetting_scores(events: np.ndarray, learned: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """float32 (N,): events of learned samples; never learned: NEVER_LEARNED; unseen (loss not finite): +inf."""
    scores = np.where(learned, events.astype(np.float32), NEVER_LEARNED)
    scores[~np.isfinite(loss)] = np.inf
    return scores


def least_forgotten(scores: np.ndarray, k: int, tie_break: np.ndarray) -> np.ndarray:
    """Bool mask of the k lowest `scores`, ties in the order of `tie_break` (a permutation); never a +inf."""
    order = np.lexsort((tie_break, scores))  # by count, then by the random order
    k = min(int(k), int(np.count_nonzero(scores < np.inf)))
    hidden = np.zeros(scores.size, dtype=bool)
    hidden[order[:k]] = True
    return hidden


@register_strategy("forget")
class ForgetStrategy(HidingStrategy):
    """Count forgetting events, then hide the floor(F N) least-forgotten samples for good.

    Example::

        >>> args = KakurenboArguments(hiding_strategy="forget", hiding_fraction=0.3, forget_counting_epochs=2)
        >>> strategy = ForgetStrategy(seed=0, arguments=args, num_samples=len(train_set))
        >>> stats.on_update = partial(strategy.observe, stats)   # what HidingEngine wires up
        >>> strategy.select(stats, 0.3, epoch=2).hidden            # chosen now, the same in every later epoch
    """

    uses_hiding_fraction = False  # floor(F * N) for good, whatever the decay schedule says later
    refreshes_hidden = False
    STATE_NAMES = ("events", "learned", "hidden", "chosen_epoch")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.counting_epochs = int(argument_or_default(self.arguments, "forget_counting_epochs"))
        self.fraction = float(argument_or_default(self.arguments, "hiding_fraction"))
        self._state: dict[str, np.ndarray] | None = None  # allocated on first use (the table's rank only)

    @classmethod
    def validate_arguments(cls, arguments) -> None:
        epochs = arguments.forget_counting_epochs
        if int(epochs) != epochs or epochs < 2:
            raise ValueError(f"forget_counting_epochs must be an integer >= 2 (a forgetting event needs two "
                             f"observations of a sample), got {epochs!r}")
        if arguments.lr_compensation == "target":
            raise ValueError("lr_compensation='target' scales the LR by 1/(1-F_e) of the decay schedule, but "
                             "hiding_strategy='forget' hides a fixed floor(F * N) samples (none while counting): "
                             "set lr_compensation='realized' (scales by what is hidden) or 'none'")

    def _arrays(self, num_samples: int) -> dict[str, np.ndarray]:
        if self._state is None:
            self._state = {
                "events": np.zeros(num_samples, dtype=np.uint16),
                "learned": np.zeros(num_samples, dtype=bool),
                "hidden": np.zeros(num_samples, dtype=bool),
                "chosen_epoch": np.full(1, -1, dtype=np.int64),  # -1: still counting
            }
        return self._state

    @property
    def chosen_epoch(self) -> int:
        return int(self._state["chosen_epoch"][0]) if self._state is not None else -1

    def observe(self, stats: SampleStats, indices: np.ndarray, loss: np.ndarray, confidence: np.ndarray,
                correct: np.ndarray) -> None:
        state = self._arrays(stats.num_samples)
        if self.chosen_epoch >= 0:
            return  # the set is fixed: counting is over
        count_forgetting_events(state["events"], state["learned"], stats.correct, indices, correct)

    def forgetting_scores(self, stats: SampleStats) -> np.ndarray:
        """float32 (N,): events of learned samples; never learned: NEVER_LEARNED; unseen: +inf."""
        state = self._arrays(stats.num_samples)
        return forgetting_scores(state["events"], state["learned"], stats.loss)

    def select(self, stats: SampleStats, target_fraction: float, epoch: int) -> HidingDecision:
        state = self._arrays(stats.num_samples)
        if self.chosen_epoch < 0:
            if epoch < self.counting_epochs:  # still counting
                return HidingDecision(hidden=np.zeros(stats.num_samples, dtype=bool), num_candidates=0, moved_back=0)
            tie_break = np.random.default_rng([self.seed, _STREAM]).permutation(stats.num_samples)
            k = num_candidates(stats.num_samples, self.fraction)
            state["hidden"][:] = least_forgotten(self.forgetting_scores(stats), k, tie_break)
            state["chosen_epoch"][0] = epoch
        hidden = state["hidden"].copy()
        count = int(np.count_nonzero(hidden))
        wanted = num_candidates(stats.num_samples, self.fraction)
        return HidingDecision(hidden=hidden, num_candidates=wanted, moved_back=wanted - count)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: array.copy() for name, array in self._arrays(self.num_samples).items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        per_sample = {"events": np.uint16, "learned": np.bool_, "hidden": np.bool_}
        self._state = checked_state("forget", state, self.STATE_NAMES, per_sample, self.num_samples)
        self._state["chosen_epoch"] = np.asarray(state["chosen_epoch"], dtype=np.int64).reshape(1).copy()
