"""Which hidden samples the refresh pass forwards, and how the ranks split them.

Hidden samples are not trained, so their statistics go stale. Before the next selection, a slice
of them is recomputed forward-only (the pass itself is `hf/refresh_pass.py`).

Every rank runs the same number of forward passes of the same batch size
(`plan_refresh_batches`): under FSDP or DeepSpeed ZeRO-3 each forward is a collective, and ranks
that ran different numbers of them would hang or pair the wrong collectives. Rank r takes every
P-th hidden sample; a share shorter than the others is padded with samples from the start of the
list, whose rows are computed but not recorded.

Which hidden samples are refreshed (`refresh_period`): those whose index plus the epoch is a
multiple of a period R, a slice rotating with the epoch. R starts at round(1 / refresh_fraction)
and doubles while the slice would exceed the budget, `refresh_budget` x the samples the ending
epoch trained: the refresh costs at most about that share of an epoch's training forwards, whatever
the hiding fraction. Periods are that base times powers of two, so a sample hidden for as many
epochs in a row as the largest period used meanwhile is refreshed at least once in them. The rule
reads only the hidden set and the epoch (every rank has both), keeps no state, and every rank
derives the same refresh set from it.

Pure numpy.
"""


from __future__ import annotations

import math

import numpy as np


def refresh_period(num_hidden: int, num_samples: int, refresh_fraction: float, refresh_budget: float) -> int:
    """The rotation period R of the refresh slice: samples with (index + epoch) % R == 0 are refreshed.

    R = R0 * 2**k, R0 = round(1 / refresh_fraction), k the smallest integer >= 0 with
    num_hidden / R <= max(1, refresh_budget * (num_samples - num_hidden)): the expected slice stays
    within the budget (a share of the samples the epoch trained). `refresh_budget=inf`: R = R0.

    Example::

        >>> refresh_period(450, 1000, 0.15, float("inf")), refresh_period(450, 1000, 0.15, 0.03)
        (7, 28)
    """
    base = max(1, round(1.0 / refresh_fraction))
    if num_hidden <= 0 or math.isinf(refresh_budget):
        return base
    cap = max(1.0, refresh_budget * (num_samples - num_hidden))
    if num_hidden / base <= cap:
        return base
    doublings = math.ceil(math.log2(num_hidden / (base * cap)))
    while num_hidden / (base << doublings) > cap:  # floating-point guard
        doublings += 1
    return base << doublings


def plan_refresh_batches(indices: np.ndarray, rank: int, num_processes: int, batch_size: int) -> list[tuple[list[int], int]]:
    """This rank's refresh batches: (sample indices, how many of them are real, not padding).

    Every rank gets ceil(ceil(H / P) / batch_size) batches of the same sizes, H = len(indices).

    Example::

        >>> [len(b) for b, _ in plan_refresh_batches(np.arange(129), 1, 2, 64)]
        [64, 1]
    """
    if batch_size < 1 or num_processes < 1 or not 0 <= rank < num_processes:
        raise ValueError(f"bad refresh geometry: rank {rank} of {num_processes}, batch size {batch_size}")
    indices = np.asarray(indices)
    if indices.dtype.kind not in "iu":
        indices = indices.astype(np.int64)
    if indices.size == 0:
        return []
    share_size = math.ceil(indices.size / num_processes)
    share = indices[rank::num_processes]
    num_real = share.size
    if num_real < share_size:  # pad with samples from the start of the list (recomputed, not recorded)
        share = np.concatenate([share, np.resize(indices, share_size - num_real)])
    batches = []
    for start in range(0, share_size, batch_size):
        batch = share[start : start + batch_size]
        batches.append((batch.tolist(), int(max(0, min(num_real - start, batch.size)))))
    return batches
