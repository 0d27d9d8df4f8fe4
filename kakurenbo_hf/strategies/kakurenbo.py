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

Knobs: F_e (`hiding_fraction`, default 0.5, times the decay schedule, default none), tau
(`confidence_threshold`, default 0.7).

Cost: O(N) per epoch, no sort and no copy of the table: a radix select (two counting passes over
16-bit digits of the losses) finds the K-th smallest loss, a third pass writes the mask, ties at
that value resolved by index. Extra memory: the N-byte mask and a few MiB of chunk temporaries.
Sharded (`shardable`): in a multi-process run each rank runs the passes over its N/P rows; the
two 65536-bin histograms (512 KiB each) are summed over the ranks and the tie counts gathered,
so every rank finds the same K-th loss (see `sharding.py`).
"""

from __future__ import annotations

import numpy as np

from ..core.sharding import Collective, LocalCollective, Shard, whole_table
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

    def select(self, stats: SampleStats, target_fraction: float, epoch: int) -> HidingDecision:
        return self.select_shard(stats, target_fraction, epoch, whole_table(stats.num_samples), LocalCollective())

    def select_shard(self, stats: SampleStats, target_fraction: float, epoch: int, shard: Shard,
                     collective: Collective) -> HidingDecision:
        k = num_candidates(shard.num_samples, target_fraction)
        hidden = lowest_loss_mask(stats.loss, k, shard, collective)
        tau = np.float16(self.confidence_threshold)
        for start in range(0, stats.num_samples, CHUNK):  # hidden &= learned, without N-sized temporaries
            end = start + CHUNK
            hidden[start:end] &= stats.correct[start:end] & (stats.confidence[start:end] >= tau)
        num_hidden = int(collective.sum(np.array([np.count_nonzero(hidden)], dtype=np.int64))[0])
        return HidingDecision(hidden=hidden, num_candidates=k, moved_back=k - num_hidden, num_hidden_total=num_hidden)
