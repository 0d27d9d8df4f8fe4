"""Uniform random dynamic pruning.

Paper: R. S. Raju, K. Daruwalla, M. Lipasti, "Accelerating Deep Learning with Dynamic Data
Pruning", arXiv 2111.12621 (2021): at every selection a uniformly random subset of the training
set is left out; it beat the static scores (forgetting, EL2N) at high pruning rates. Every
dynamic-pruning paper since uses it as the control.

Rule, at the start of epoch e (after warm-up; nothing is hidden while F_e = 0):
  hide exactly K = floor(F_e * N) samples drawn uniformly without replacement, with a generator
  seeded by (seed, epoch), apart from the sampler's stream and the global RNG. The draw ignores
  the statistics (an unseen sample can be hidden: the rule does not look at scores).

Knobs: F_e (`hiding_fraction` x the decay schedule). `random_count` = "exact" (default, the
paper's rule above) or "kakurenbo": hide as many samples as KAKURENBO would hide from the same
statistics (`confidence_threshold` then matters), i.e. a control matched in time to KAKURENBO
(this package's behaviour before the option existed; the benchmarks' `random` method uses it).

Cost: one draw of K indices, O(N); in "kakurenbo" mode one KAKURENBO selection more. No state.
Saves: K / N of every epoch's training steps, whatever the statistics say.
"""

from __future__ import annotations

import numpy as np

from ..core.stats import SampleStats
from .base import HidingDecision, HidingStrategy, num_candidates, register_strategy
from .kakurenbo import KakurenboStrategy
from .toolkit import argument_or_default, epoch_generator

RANDOM_COUNTS = ("exact", "kakurenbo")
_STREAM = 0x52414E44  # "RAND"


@register_strategy("random")
class RandomStrategy(HidingStrategy):
    """Hide a uniformly random set: floor(F_e * N) samples, or as many as KAKURENBO would hide.

    Example::

        >>> strategy = RandomStrategy(seed=0, arguments=KakurenboArguments(hiding_strategy="random"))
        >>> strategy.select(stats, target_fraction=0.3, epoch=1).num_hidden   # floor(0.3 * N)
    """

    @classmethod
    def validate_arguments(cls, arguments) -> None:
        if arguments.random_count not in RANDOM_COUNTS:
            raise ValueError(f"random_count must be one of {RANDOM_COUNTS}, got {arguments.random_count!r}")

    def select(self, stats: SampleStats, target_fraction: float, epoch: int) -> HidingDecision:
        if argument_or_default(self.arguments, "random_count") == "kakurenbo":
            reference = KakurenboStrategy(self.confidence_threshold, self.seed).select(stats, target_fraction, epoch)
            count, candidates, moved_back = reference.num_hidden, reference.num_candidates, reference.moved_back
        else:
            count = candidates = num_candidates(stats.num_samples, target_fraction)
            moved_back = 0
        rng = epoch_generator(self.seed, epoch, _STREAM)
        hidden = np.zeros(stats.num_samples, dtype=bool)
        hidden[rng.choice(stats.num_samples, size=count, replace=False)] = True
        return HidingDecision(hidden=hidden, num_candidates=candidates, moved_back=moved_back)
