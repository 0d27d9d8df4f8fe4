"""KAKURENBO: hide the samples the model has already learned.

Paper: T. Nguyen et al., "KAKURENBO: Adaptively Hiding Samples in Deep Neural Network
Training", NeurIPS 2023.

Rule, at the start of epoch e (after warm-up):
  1. K = floor(F_e * N) candidates: the K samples with the lowest loss (ties broken by sample
     index, as a stable sort would, so every rank agrees).
  2. Move back: a candidate stays visible unless it was predicted correctly AND its confidence
     is >= tau. Both are the task's (the task table of `kakurenbo_hf.tasks`): for single-label
     classification the top softmax probability over the classes and argmax == label; for a
     language model the token accuracy and token accuracy >= 0.5; and so on.
  3. Moved-back slots are not refilled: the realized hidden fraction is usually below F_e.
  4. Coverage (this library's addition, applied by the engine): a sample hidden in the last M
     epochs in a row is trained in this one (`max_hidden_epochs`, M = 3 by default). Guarantee: no
     sample is left out of more than M consecutive epochs. Without it a subgroup that is learned
     early (templated rows of a language model's data) stayed hidden from the second epoch to the
     end, was refreshed only by a budgeted slice, and was forgotten while its loss stayed among
     the lowest; see docs/benchmarks.md ("Coverage rule") for the measurements behind M.
  5. Randomised hiding (this library's addition, `kakurenbo_hide_probability` p < 1): the
     candidates are the floor(min(1, F_e / p) * N) lowest losses, and each learned one is hidden
     with probability p (a keyed hash of seed, epoch and index; at most floor(F_e * N), the
     lowest losses of the draw kept), so no learned subgroup is left out whole. Default: the
     task's, 0.5 for causal language models, 1 (the paper's rule) otherwise.

Knobs: F_e (`hiding_fraction`, default 0.5, times the decay schedule, default none), tau
(`confidence_threshold`, default 0.7), M (`max_hidden_epochs`, default 3; 0: no cap, the paper's rule),
p (`kakurenbo_hide_probability`, default the task's: 0.5 causal LM, else 1).

Cost: O(N) per epoch, no sort and no copy of the table: a radix select (two counting passes over
16-bit digits of the losses) finds the K-th smallest loss, a third pass writes the mask, ties at
that value resolved by index. Extra memory: the N-byte mask and a few MiB of chunk temporaries.
Sharded (`shardable`): in a multi-process run each rank runs the passes over its N/P rows; the
two 65536-bin histograms (512 KiB each) are summed over the ranks and the tie counts gathered,
so every rank finds the same K-th loss (see `sharding.py`). The coverage rule costs N/8 bytes per
epoch of history (kept anyway for `HidingReport`) and M bitwise ANDs of N/8 bytes.
"""

from __future__ import annotations

import numpy as np

from ..core.config import KAKURENBO_MAX_HIDDEN_EPOCHS
from ..core.permutation import mix64
from ..core.sharding import Collective, LocalCollective, Shard, count_all, whole_table
from ..core.stats import SampleStats
from .base import HidingDecision, HidingStrategy, num_candidates, register_strategy


CHUNK = 1 << 22  # samples per pass chunk: temporaries stay a few MiB whatever N is


def _sortable_keys(loss: np.ndarray) -> np.ndarray:
    """uint32 keys that sort as the float32 values do; every NaN sorts last (as in numpy)."""
    values = np.asarray(loss, dtype=np.float32) + np.float32(0.0)  # -0.0 becomes 0.0: they tie, as in numpy
    bits = values.view(np.uint32)
    keys = np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))
    keys[np.isnan(loss)] = np.uint32(0xFFFFFFFF)
    return keys


def _kth_key(loss: np.ndarray, k: int, collective: Collective) -> tuple[int, int]:
    """(key of the k-th smallest value, how many values are strictly smaller): radix select.

    Two counting passes over 16-bit digits, chunk by chunk: no copy or sort of the values. On a
    shard, the histograms are summed over the ranks: the answer is the whole table's.
    """
    n = loss.shape[0]
    high = np.zeros(1 << 16, dtype=np.int64)
    for start in range(0, n, CHUNK):
        high += np.bincount(_sortable_keys(loss[start : start + CHUNK]) >> 16, minlength=1 << 16)
    cumulative = np.cumsum(collective.sum(high))
    bucket = int(np.searchsorted(cumulative, k))  # first bucket whose cumulative count reaches k
    below = int(cumulative[bucket - 1]) if bucket else 0
    low = np.zeros(1 << 16, dtype=np.int64)
    for start in range(0, n, CHUNK):
        keys = _sortable_keys(loss[start : start + CHUNK])
        low += np.bincount(keys[(keys >> 16) == bucket] & 0xFFFF, minlength=1 << 16)
    cumulative = np.cumsum(collective.sum(low))
    digit = int(np.searchsorted(cumulative, k - below))
    return (bucket << 16) | digit, below + (int(cumulative[digit - 1]) if digit else 0)


def lowest_loss_mask(loss: np.ndarray, k: int, shard: Shard | None = None,
                     collective: Collective | None = None) -> np.ndarray:
    """Boolean mask of the k smallest entries of `loss`, ties broken by lower index.

    Identical to `np.argsort(loss, kind="stable")[:k]` as a set, in linear time and without a
    copy of `loss` (a radix select, then one pass that writes the mask). NaN sorts last, as in
    numpy.

    With a `shard` and its `collective` (every rank calls at once), `loss` holds the shard's rows
    and the mask is this shard's part of the whole table's mask: k counts over all N samples, and
    ties at the K-th value go to the lowest sample indices (shards are contiguous in rank order).
    """
    shard = shard or whole_table(loss.shape[0])
    collective = collective or LocalCollective()
    n = loss.shape[0]
    mask = np.zeros(n, dtype=bool)
    if k <= 0:
        return mask
    if k >= shard.num_samples:
        mask[:] = True
        return mask
    kth, smaller = _kth_key(loss, k, collective)
    ties_wanted = k - smaller
    if ties_wanted > 0 and collective.num_ranks > 1:  # ties before this shard are taken first
        ties_here = sum(int(np.count_nonzero(_sortable_keys(loss[start : start + CHUNK]) == kth))
                        for start in range(0, n, CHUNK))
        ties_per_rank = collective.gather(np.array([ties_here], dtype=np.int64))[:, 0]
        ties_wanted = int(np.clip(ties_wanted - ties_per_rank[: collective.rank].sum(), 0, ties_here))
    for start in range(0, n, CHUNK):
        keys = _sortable_keys(loss[start : start + CHUNK])
        np.less(keys, kth, out=mask[start : start + CHUNK])
        if ties_wanted > 0:
            ties = np.flatnonzero(keys == kth)[:ties_wanted]
            mask[start + ties] = True
            ties_wanted -= ties.size
    return mask


@register_strategy("kakurenbo")
class KakurenboStrategy(HidingStrategy):
    """Hide the lowest-loss samples that are also predicted correctly and confidently."""

    shardable = True
    default_max_hidden_epochs = KAKURENBO_MAX_HIDDEN_EPOCHS

    def select(self, stats: SampleStats, target_fraction: float, epoch: int) -> HidingDecision:
        return self.select_shard(stats, target_fraction, epoch, whole_table(stats.num_samples), LocalCollective())

    @classmethod
    def validate_arguments(cls, arguments) -> None:
        probability = getattr(arguments, "kakurenbo_hide_probability", None)
        if probability is not None and not 0.0 < probability <= 1.0:  # also rejects NaN
            raise ValueError(f"kakurenbo_hide_probability must be in (0, 1] or None (the task's default), "
                             f"got {probability!r}")

    @property
    def hide_probability(self) -> float:
        """p; None (unset, and no task default applied by the trainer) is the paper's rule, 1."""
        probability = getattr(self.arguments, "kakurenbo_hide_probability", None)
        return 1.0 if probability is None else float(probability)

    def select_shard(self, stats: SampleStats, target_fraction: float, epoch: int, shard: Shard,
                     collective: Collective) -> HidingDecision:
        most = num_candidates(shard.num_samples, target_fraction)  # what F_e allows to hide
        probability = self.hide_probability
        k = most if probability >= 1.0 else num_candidates(shard.num_samples, min(1.0, target_fraction / probability))
        hidden = lowest_loss_mask(stats.loss, k, shard, collective)
        tau = np.float16(self.confidence_threshold)
        for start in range(0, stats.num_samples, CHUNK):  # hidden &= learned, without N-sized temporaries
            end = start + CHUNK
            hidden[start:end] &= stats.correct[start:end] & (stats.confidence[start:end] >= tau)
        learned = count_all(hidden, collective)
        num_hidden = learned
        if probability < 1.0:
            for start in range(0, stats.num_samples, CHUNK):
                end = min(start + CHUNK, stats.num_samples)
                hidden[start:end] &= uniform_draws(self.seed, epoch, shard.start + start, end - start) < probability
            num_hidden = count_all(hidden, collective)
            if num_hidden > most:  # an unlucky draw: keep the lowest-loss `most` of the drawn samples
                drawn_loss = np.where(hidden, stats.loss, np.float32(np.inf))
                hidden = lowest_loss_mask(drawn_loss, most, shard, collective) & hidden
                num_hidden = most
        # moved_back: candidates kept for the rule (wrong or unconfident), not those the draw kept.
        return HidingDecision(hidden=hidden, num_candidates=k, moved_back=k - learned, num_hidden_total=num_hidden)


_DRAW_STREAM = 0x4B414B55  # "KAKU"


def uniform_draws(seed: int, epoch: int, first_index: int, count: int) -> np.ndarray:
    """Uniform [0, 1) values of samples first_index .. first_index + count - 1 for (seed, epoch).

    A keyed hash of the sample index (splitmix64's finaliser): the same value for a sample on any
    rank or shard and in any chunking, and no state, so a resume redraws it exactly."""
    key = np.random.default_rng([int(seed), int(epoch), _DRAW_STREAM]).integers(
        0, np.iinfo(np.uint64).max, dtype=np.uint64, endpoint=True)
    indices = np.arange(first_index, first_index + count, dtype=np.uint64)
    return (mix64(mix64(indices ^ key)) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
