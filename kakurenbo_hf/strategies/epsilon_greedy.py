"""Epsilon-greedy dynamic pruning.

Paper: R. S. Raju, K. Daruwalla, M. Lipasti, "Accelerating Deep Learning with Dynamic Data
Pruning", arXiv 2111.12621 (2021), one of its two bandit-style selections: exploit the samples
that score highest (the most to learn from), and explore with a uniformly random share, so that
"sometimes" samples (useful only part of the time) get back into training.

Rule, at the start of epoch e (after warm-up; nothing is hidden while F_e = 0):
  1. K = floor(F_e * N) samples are hidden, M = N - K kept. Unseen samples (U of them: loss +inf,
     i.e. not seen yet, diverged, or an ignored label) are kept first; the seen samples fill the
     other M' = M - U kept places (M = M' when every sample has been seen).
  2. Of those, R = floor(epsilon * M') are explored and G = M' - R exploited: the G seen samples
     with the highest score (ties at the cut: the lower index counts as the lower score).
  3. The R explored samples are drawn uniformly without replacement from the other seen samples,
     with a generator seeded by (seed, epoch); the rest of them is hidden: exactly K, unless
     fewer than K samples were seen.
  Score = the sample's latest per-sample loss in the statistics table (from its training forward,
  or from the refresh pass for samples hidden in the last epoch).

Choices (the paper's full text was not reachable when this was written; the rule follows its
bandit description and a public timm-based re-implementation, `EpsilonGreedy`, which keeps the
top (1 - eps) of the kept budget by loss and draws eps of it from the rest): the score is the loss
already recorded for free, not a separate scoring pass (that re-implementation adds one and
smooths the loss with a moving average; `ucb` with `ucb_exploration=0` is greedy on a smoothed
loss). epsilon = 0 hides the K lowest losses (KAKURENBO's candidates without its move-back);
epsilon = 1 is uniform random over the seen samples.

Knobs: F_e (`hiding_fraction` x the decay schedule), `epsilon_greedy_epsilon` (default 0.1, the
usual bandit value; not confirmed against the paper's text).

Cost: one O(N) radix select and one draw of R indices per epoch. No state.
Saves: K / N of every epoch's training steps.
"""

from __future__ import annotations

import numpy as np

from ..core.stats import SampleStats
from .base import HidingDecision, HidingStrategy, num_candidates, register_strategy
from .toolkit import argument_or_default, epoch_generator, lowest_seen_mask

_STREAM = 0x45475245  # "EGRE"


@register_strategy("epsilon_greedy")
class EpsilonGreedyStrategy(HidingStrategy):
    """Keep the highest-loss samples, an epsilon share of the kept set drawn at random from the rest.

    Example::

        >>> args = KakurenboArguments(hiding_strategy="epsilon_greedy", epsilon_greedy_epsilon=0.2)
        >>> EpsilonGreedyStrategy(seed=0, arguments=args).select(stats, 0.3, epoch=1).num_hidden  # floor(0.3 N)
    """

    @classmethod
    def validate_arguments(cls, arguments) -> None:
        epsilon = arguments.epsilon_greedy_epsilon
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon_greedy_epsilon must be in [0, 1], got {epsilon!r}")

    def select(self, stats: SampleStats, target_fraction: float, epoch: int) -> HidingDecision:
        n = stats.num_samples
        k = num_candidates(n, target_fraction)
        seen = int(np.count_nonzero(stats.loss < np.inf))
        kept = max(n - k - (n - seen), 0)  # M': the kept places left to the seen samples
        explored = num_candidates(kept, float(argument_or_default(self.arguments, "epsilon_greedy_epsilon")))
        exploited = kept - explored
        rest = lowest_seen_mask(stats.loss, seen - exploited)  # the seen samples but the exploited top
        pool = np.flatnonzero(rest)
        rng = epoch_generator(self.seed, epoch, _STREAM)
        rest[pool[rng.choice(pool.size, size=min(explored, pool.size), replace=False)]] = False
        hidden = rest
        return HidingDecision(hidden=hidden, num_candidates=k, moved_back=k - int(np.count_nonzero(hidden)))
