"""InfoBatch: prune a random share of the well-learned samples, upweight the rest of them.

Paper: Z. Qin et al., "InfoBatch: Lossless Training Speed Up by Unbiased Dynamic Data Pruning",
ICLR 2024 (code: github.com/NUS-HPC-AI-Lab/InfoBatch, `infobatch/infobatch.py`).

Rule, at the start of epoch e (after warm-up), from each sample's score = its latest training
loss (the refresh pass does not run: a pruned sample keeps the loss it last trained with):
  1. Well learned: the samples whose score is below the mean score.
  2. Of these, keep floor((1 - r) * count) chosen uniformly at random (a generator seeded by
     (seed, epoch)); the others are pruned (hidden) for this epoch.
  3. The kept well-learned samples get loss weight 1 / (1 - r); every other sample weight 1. The
     weights keep the epoch's summed gradient unbiased: E[sum over the kept of w_i grad l_i] =
     sum over all of grad l_i.
  4. Annealing: epoch e prunes only while e + 1 <= delta * E (E epochs; the published sampler
     counts epochs from 1); the last epochs (12.5% with delta = 0.875) train on every sample with
     weight 1, the model's own loss.

Knobs: r = `infobatch_prune_ratio` (default 0.5, at most 0.9: the published keep ratio is
clamped to >= 0.1), delta = `infobatch_delta` (default 0.875). `hiding_fraction` only switches
the rule on (> 0); its value is not used (the count comes from r), nor is the decay schedule,
except that an epoch whose F_e is 0 (warm-up, a factor of 0) prunes nothing.

Learning rate: no compensation (`lr_compensation` is "none" whatever the argument): the 1/(1-r)
weights already make up for the pruned samples' share of the epoch's gradient, so scaling the LR
too would count it twice. The schedule follows epoch progress (`VirtualStepLR`), as the
published example rebuilds its OneCycleLR with each epoch's length.

Where we deviate: scores that are not finite (a sample never seen, every label ignored, a
diverged loss) are left out of the mean and never pruned (the published code starts every score
at 3 and would take an infinite score into the mean). In the annealing epochs every weight is 1
(the published sampler resets the weights only when delta * E is a whole number).

Cost: O(N) per epoch (a mean, a mask, a random choice); N float32 weights (4 bytes per sample)
held by every rank and broadcast each epoch. Saves the forward and backward passes of the
pruned samples (about r times the below-mean share of the data per pruning epoch).
"""

from __future__ import annotations

import numpy as np

from ..core.stats import SampleStats
from .base import HidingDecision, HidingStrategy, register_strategy
from .toolkit import argument_or_default, epoch_generator

_STREAM = 0x494E464F  # "INFO": apart from the sampler's and the other strategies' streams

MAX_PRUNE_RATIO = 0.9  # the published code clamps the keep ratio to >= 0.1


def keep_count(num_well_learned: int, prune_ratio: float) -> int:
    """floor((1 - r) * count), robust to float error (1 - 0.3 is not exactly 0.7)."""
    return min(num_well_learned, int(np.floor((1.0 - prune_ratio) * num_well_learned + 1e-9)))


def prunes_in_epoch(epoch: int, num_epochs: int, delta: float) -> bool:
    """Whether `epoch` (from 0) still prunes: e + 1 <= delta * E."""
    return epoch + 1 <= delta * num_epochs + 1e-9


@register_strategy("infobatch")
class InfoBatchStrategy(HidingStrategy):
    """Prune each below-mean-loss sample with probability r; weight the kept ones by 1/(1-r).

    Example::

        >>> args = KakurenboArguments(hiding_strategy="infobatch", infobatch_prune_ratio=0.5)
        >>> strategy = InfoBatchStrategy(seed=0, arguments=args, num_samples=N, num_epochs=10)
        >>> decision = strategy.select(stats, target_fraction=0.3, epoch=1)  # hidden set + weights
    """

    uses_hiding_fraction = False
    uses_loss_weights = True
    refreshes_hidden = False
    lr_compensation = "none"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prune_ratio = float(argument_or_default(self.arguments, "infobatch_prune_ratio"))
        self.delta = float(argument_or_default(self.arguments, "infobatch_delta"))

    @classmethod
    def validate_arguments(cls, arguments) -> None:
        ratio, delta = arguments.infobatch_prune_ratio, arguments.infobatch_delta
        if not 0.0 < ratio <= MAX_PRUNE_RATIO:
            raise ValueError(f"infobatch_prune_ratio must be in (0, {MAX_PRUNE_RATIO}], got {ratio!r}")
        if not 0.0 < delta <= 1.0:
            raise ValueError(f"infobatch_delta must be in (0, 1], got {delta!r}")

    def select(self, stats: SampleStats, target_fraction: float, epoch: int) -> HidingDecision:
        num_samples = stats.num_samples
        hidden = np.zeros(num_samples, dtype=bool)
        if not prunes_in_epoch(epoch, self.num_epochs, self.delta):
            return HidingDecision(hidden=hidden, num_candidates=0, moved_back=0)  # annealing: full data, weight 1
        scores = stats.loss
        finite = np.isfinite(scores)
        mean = float(np.mean(scores[finite], dtype=np.float64)) if finite.any() else np.inf
        well_learned = np.flatnonzero(finite & (scores < mean))
        kept = keep_count(well_learned.size, self.prune_ratio)
        rng = epoch_generator(self.seed, epoch, _STREAM)
        kept_indices = rng.choice(well_learned, size=kept, replace=False) if kept else well_learned[:0]
        hidden[well_learned] = True
        hidden[kept_indices] = False
        weights = None
        if kept:
            weights = np.ones(num_samples, dtype=np.float32)
            weights[kept_indices] = np.float32(1.0 / (1.0 - self.prune_ratio))
        return HidingDecision(hidden=hidden, num_candidates=int(well_learned.size), moved_back=kept, weights=weights)
