"""Upper-confidence-bound dynamic pruning.

Paper: R. S. Raju, K. Daruwalla, M. Lipasti, "Accelerating Deep Learning with Dynamic Data
Pruning", arXiv 2111.12621 (2021), its second bandit-style selection: each sample is an arm whose
reward is its loss; keep the samples whose loss is high or uncertain (optimism under
uncertainty), so that a sample whose loss swings ("sometimes" samples) keeps coming back.

Rule, at the start of epoch e (after warm-up; nothing is hidden while F_e = 0):
  score_i = mean_i + c * sqrt(var_i), where mean_i and var_i are the exponential moving mean and
  variance of sample i's loss observations (decay lambda, new weight a = 1 - lambda):
      first observation:  mean = x, var = 0
      then:               d = x - mean;  mean += a * d;  var = lambda * (var + a * d^2)
  (the weighted mean and variance of the history with weights a * lambda^age, the first
  observation carrying the remaining weight). The K = floor(F_e * N) lowest scores are hidden
  (ties by lower index).
  Unseen samples (no finite loss observed yet) and samples whose latest loss is +inf (diverged,
  ignored label) score +inf: never hidden; if fewer than K samples qualify, fewer are hidden.

Choices (the paper's full text was not reachable when this was written: the exponentially
weighted estimator, chosen because a sample's loss drifts as the model trains, is our reading of
it, and the default constants are ours):
  - Every loss written to the statistics table updates the moments, training and refresh records
    alike: the strategy cannot tell them apart, and the refresh is this package's scoring pass
    for hidden samples. Without it (or for the samples `refresh_fraction` < 1 skips) a hidden
    sample's score stays frozen until it is refreshed or trained again.
  - Every record is an observation, in the order recorded (optimizer step, then rank), also a
    sample's second record in one epoch (even batches' padding): the moments then do not depend
    on where flushes (epoch starts, checkpoints) cut the records, so a resumed run matches the
    uninterrupted one. Non-finite losses leave the moments unchanged.

Knobs: F_e (`hiding_fraction` x the decay schedule), `ucb_exploration` c (default 1.0),
`ucb_decay` lambda (default 0.9: about the last 10 observations). c = 0 is greedy on the mean;
lambda = 0 makes the score the latest loss.

Cost: 8 bytes per sample (float32 mean and variance, checkpointed as `strategy_mean` and
`strategy_variance`), O(batch) per observed record, one O(N) radix select per epoch.
Saves: K / N of every epoch's training steps.
"""

from __future__ import annotations

import numpy as np

from ..core.stats import SampleStats
from .base import HidingDecision, HidingStrategy, num_candidates, register_strategy
from .toolkit import argument_or_default, lowest_seen_mask, occurrences


@register_strategy("ucb")
class UcbStrategy(HidingStrategy):
    """Keep the samples with the highest running mean + c * running std of their loss.

    Example::

        >>> args = KakurenboArguments(hiding_strategy="ucb", ucb_exploration=1.0, ucb_decay=0.9)
        >>> strategy = UcbStrategy(seed=0, arguments=args, num_samples=len(train_set))
        >>> stats.on_update = partial(strategy.observe, stats)    # what HidingEngine wires up
        >>> strategy.select(stats, 0.3, epoch=1).num_hidden          # floor(0.3 N) once all are seen
    """

    STATE_NAMES = ("mean", "variance")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.exploration = float(argument_or_default(self.arguments, "ucb_exploration"))
        self.decay = float(argument_or_default(self.arguments, "ucb_decay"))
        self._mean: np.ndarray | None = None  # allocated on first use: ranks without the table never need it
        self._variance: np.ndarray | None = None

    @classmethod
    def validate_arguments(cls, arguments) -> None:
        if not (arguments.ucb_exploration >= 0.0 and np.isfinite(arguments.ucb_exploration)):
            raise ValueError(f"ucb_exploration must be a finite number >= 0, got {arguments.ucb_exploration!r}")
        if not 0.0 <= arguments.ucb_decay < 1.0:
            raise ValueError(f"ucb_decay must be in [0, 1), got {arguments.ucb_decay!r}")

    def _moments(self, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
        if self._mean is None:
            self._mean = np.full(num_samples, np.nan, dtype=np.float32)  # NaN: nothing observed yet
            self._variance = np.zeros(num_samples, dtype=np.float32)
        return self._mean, self._variance

    def observe(self, stats: SampleStats, indices: np.ndarray, loss: np.ndarray, confidence: np.ndarray,
                correct: np.ndarray) -> None:
        mean, variance = self._moments(stats.num_samples)
        finite = np.isfinite(loss)
        indices, values = indices[finite], loss[finite].astype(np.float32)
        _, occurrence = occurrences(indices)
        for repeat in range(int(occurrence.max(initial=-1)) + 1):  # a sample's records in their order
            chosen = occurrence == repeat
            self._update(mean, variance, indices[chosen], values[chosen])

    def _update(self, mean: np.ndarray, variance: np.ndarray, indices: np.ndarray, values: np.ndarray) -> None:
        """One observation of each sample in `indices` (no repeats)."""
        old_mean = mean[indices]
        first = np.isnan(old_mean)
        weight = np.float32(1.0 - self.decay)
        delta = np.where(first, np.float32(0.0), values - old_mean)
        mean[indices] = np.where(first, values, old_mean + weight * delta)
        variance[indices] = np.where(first, np.float32(0.0),
                                     np.float32(self.decay) * (variance[indices] + weight * delta * delta))

    def scores(self, stats: SampleStats) -> np.ndarray:
        """float32 (N,): the UCB of every sample; +inf where it must not be hidden."""
        mean, variance = self._moments(stats.num_samples)
        score = mean + np.float32(self.exploration) * np.sqrt(variance)
        score[np.isnan(score) | ~np.isfinite(stats.loss)] = np.inf
        return score

    def select(self, stats: SampleStats, target_fraction: float, epoch: int) -> HidingDecision:
        k = num_candidates(stats.num_samples, target_fraction)
        hidden = lowest_seen_mask(self.scores(stats), k)
        return HidingDecision(hidden=hidden, num_candidates=k, moved_back=k - int(np.count_nonzero(hidden)))

    def state_dict(self) -> dict[str, np.ndarray]:
        mean, variance = self._moments(self.num_samples)
        return {"mean": mean.copy(), "variance": variance.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if sorted(state) != sorted(self.STATE_NAMES):
            raise ValueError(f"ucb strategy state must hold the arrays {list(self.STATE_NAMES)}, got {sorted(state)}; "
                             "the checkpoint was saved with another hiding_strategy")
        mean, variance = (np.asarray(state[name]) for name in self.STATE_NAMES)
        if mean.shape != (self.num_samples,) or variance.shape != mean.shape:
            raise ValueError(f"ucb strategy state holds {mean.shape} and {variance.shape} values, but the training "
                             f"set has {self.num_samples} samples")
        self._mean, self._variance = mean.astype(np.float32).copy(), variance.astype(np.float32).copy()
