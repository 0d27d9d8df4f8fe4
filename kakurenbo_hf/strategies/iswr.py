"""ISWR: importance sampling with replacement, proportional to the loss, unbiased by loss weights.

Papers: the ISWR baseline of T. Nguyen et al., "KAKURENBO: Adaptively Hiding Samples in Deep
Neural Network Training", NeurIPS 2023, after A. Katharopoulos and F. Fleuret, "Not All Samples
Are Created Equal: Deep Learning with Importance Sampling", ICML 2018, and T. B. Johnson and
C. Guestrin, "Training Deep Models Faster with Robust, Approximate Importance Sampling", NeurIPS
2018. The smoothing towards uniform is D. Needell, N. Srebro and R. Ward's "partially biased
sampling" (Stochastic Gradient Descent, Weighted Sampling, and the Randomized Kaczmarz
Algorithm, NeurIPS 2014), whose mixture weight 1/2 is the default here.

Rule, at the start of epoch e (after warm-up), from each sample's latest training loss l_i (the
refresh pass does not run; a sample never seen, or with every label ignored or a diverged loss,
counts as the largest finite loss, so it is likely drawn):
  1. p_i = (1 - s) * l_i / sum_j l_j + s / N  (uniform if every loss is 0).
  2. Draw D samples with replacement from p (a generator seeded by (seed, epoch)); the epoch
     trains each draw once, in the sampler's order; samples never drawn are hidden.
  3. Loss weight w_i = 1 / (N p_i): for a draw i ~ p, E[w_i l_i] = (1/N) sum_j l_j, so every
     batch's mean weighted loss (and its gradient) is an unbiased estimate of the full data's
     mean loss (and gradient). With s > 0 the weights stay <= 1/s.
D = N - floor(F_e * N): as many samples as KAKURENBO's epoch keeps visible at most (F_e is
hiding_fraction with its warm-up and decay schedule), or round(`iswr_draws_fraction` * N).

Knobs: s = `iswr_smoothing` (default 0.5), `iswr_draws_fraction` (default None: from F_e),
`iswr_unbiased` (default True; False drops the weights: the model's own loss on the drawn samples,
biased towards high-loss samples). The KAKURENBO authors' ISWR code draws N samples with
p proportional to the loss, unweighted, after a forward pass over the whole training set each
epoch: iswr_smoothing=0, iswr_draws_fraction=1, iswr_unbiased=False come closest (scored by the
latest training losses instead of that extra pass).

Learning rate: `lr_compensation` applies as for KAKURENBO (default "realized": x N / D). The
weights make each step's gradient unbiased, not the epoch's sum: an epoch of D draws takes D/N
of a full epoch's steps.

Cost: O(N + D log N) per epoch (a cumulative sum and D binary searches); N float32 weights and
D int64 draws held by every rank and broadcast each epoch. Saves the steps of N - D samples per
epoch; duplicates among the draws are trained as often as they are drawn.
"""

from __future__ import annotations

import numpy as np

from ..core.stats import SampleStats
from .base import HidingDecision, HidingStrategy, num_candidates, register_strategy
from .toolkit import argument_or_default, epoch_generator

_STREAM = 0x49535752  # "ISWR": apart from the sampler's and the other strategies' streams


def sampling_probabilities(loss: np.ndarray, smoothing: float) -> np.ndarray:
    """p_i = (1 - s) l_i / sum l + s / N (float64), non-finite losses counted as the largest finite one."""
    loss = np.asarray(loss, dtype=np.float64)
    finite = np.isfinite(loss)
    largest = float(loss[finite].max()) if finite.any() else 1.0
    scores = np.clip(np.where(finite, loss, largest), 0.0, None)
    total = scores.sum()
    uniform = np.full(loss.shape, 1.0 / loss.size)
    if total <= 0.0:
        return uniform
    return (1.0 - smoothing) * (scores / total) + smoothing * uniform


def num_draws(num_samples: int, target_fraction: float, draws_fraction: float | None) -> int:
    """D: N - floor(F_e N), or round(draws_fraction N); at least 1."""
    if draws_fraction is not None:
        return max(1, int(round(draws_fraction * num_samples)))
    return max(1, num_samples - num_candidates(num_samples, target_fraction))


@register_strategy("iswr")
class ISWRStrategy(HidingStrategy):
    """Draw the epoch with replacement, proportionally to the smoothed loss; weight by 1/(N p_i).

    Example::

        >>> args = KakurenboArguments(hiding_strategy="iswr", hiding_fraction=0.3)
        >>> strategy = ISWRStrategy(seed=0, arguments=args, num_samples=N, num_epochs=10)
        >>> decision = strategy.select(stats, target_fraction=0.3, epoch=1)  # draws + weights
    """

    uses_hiding_fraction = False  # samples never drawn are hidden: more than floor(F_e N)
    uses_loss_weights = True
    supports_coverage_rule = False
    refreshes_hidden = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.smoothing = float(argument_or_default(self.arguments, "iswr_smoothing"))
        self.draws_fraction = argument_or_default(self.arguments, "iswr_draws_fraction")
        self.unbiased = bool(argument_or_default(self.arguments, "iswr_unbiased"))

    @classmethod
    def weights_losses(cls, arguments) -> bool:
        return bool(arguments.iswr_unbiased)

    @classmethod
    def validate_arguments(cls, arguments) -> None:
        if not 0.0 <= arguments.iswr_smoothing <= 1.0:
            raise ValueError(f"iswr_smoothing must be in [0, 1], got {arguments.iswr_smoothing!r}")
        fraction = arguments.iswr_draws_fraction
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise ValueError(f"iswr_draws_fraction must be in (0, 1] or None, got {fraction!r}")

    def select(self, stats: SampleStats, target_fraction: float, epoch: int) -> HidingDecision:
        num_samples = stats.num_samples
        probabilities = sampling_probabilities(stats.loss, self.smoothing)
        count = num_draws(num_samples, target_fraction, self.draws_fraction)
        rng = epoch_generator(self.seed, epoch, _STREAM)
        draws = rng.choice(num_samples, size=count, replace=True, p=probabilities).astype(np.int64)
        hidden = np.ones(num_samples, dtype=bool)
        hidden[draws] = False
        weights = None
        if self.unbiased:  # 1/(N p_i); a sample that cannot be drawn (p_i = 0, only with s = 0) keeps weight 0
            weights = np.zeros(num_samples, dtype=np.float64)
            np.divide(1.0, num_samples * probabilities, out=weights, where=probabilities > 0)
            weights = weights.astype(np.float32)
        return HidingDecision(hidden=hidden, num_candidates=num_samples - count, moved_back=0, weights=weights,
                              draws=draws)
