"""Uniform random dynamic hiding: the control.

Paper: the baseline every dynamic-pruning paper compares against (e.g. Raju et al., 2021,
"Accelerating Deep Learning with Dynamic Data Pruning", arXiv 2111.12621).

Rule, at the start of epoch e (after warm-up): hide exactly as many samples as KAKURENBO would
hide from the same statistics (so time savings are comparable), but chosen uniformly at random
with a generator seeded by (seed, epoch).

Knobs: the same as KAKURENBO (they only set the count).

Cost: one KAKURENBO selection plus one random permutation of N, O(N).
"""

from __future__ import annotations

import numpy as np

from ..stats import SampleStats
from .base import HidingDecision, HidingStrategy, register_strategy
from .kakurenbo import KakurenboStrategy


@register_strategy("random")
class RandomStrategy(HidingStrategy):
    """Hide a uniformly random set of the size KAKURENBO would hide."""

    def select(self, stats: SampleStats, target_fraction: float, epoch: int) -> HidingDecision:
        reference = KakurenboStrategy(self.confidence_threshold, self.seed).select(stats, target_fraction, epoch)
        rng = np.random.default_rng([self.seed, epoch, 0x52414E44])  # "RAND": apart from the sampler's stream
        hidden = np.zeros(stats.num_samples, dtype=bool)
        hidden[rng.choice(stats.num_samples, size=reference.num_hidden, replace=False)] = True
        return HidingDecision(hidden=hidden, num_candidates=reference.num_candidates, moved_back=reference.moved_back)
