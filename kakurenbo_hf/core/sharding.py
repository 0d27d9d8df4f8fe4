"""The statistics table split across ranks: which rows each rank holds, and the few collectives a
sharded selection needs.

Why: with one table holder, every record of every rank travels to one process, which then applies
them all and selects over all N samples alone: at N = 1e8 on 64 ranks that one process does
seconds of single-threaded work per epoch while the others wait. Sharded, rank r holds the rows
[start_r, stop_r) of a contiguous split, receives only the records of its rows, and a selection
that can be computed from per-rank summaries (KAKURENBO's K-th smallest loss: summed radix
histograms) runs on N/P rows per rank. The hidden set ends as the same N/8-byte bitmask on every
rank: each rank packs its rows' bits (shard boundaries are multiples of 8 samples, so a shard's
bits are whole bytes of the global bitmask) and the bitmask is all-gathered.

No torch here: `LocalCollective` is the single-process case (for pure tests); the multi-process one
is `distributed.topology.Topology`, which carries every cross-rank communication.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

ALIGNMENT = 8  # samples: a shard's bits are whole bytes of the bitmask


@dataclass(frozen=True)
class Shard:
    """Rows [start, stop) of an N-sample table, held by `rank` of `num_ranks` (a contiguous split)."""

    start: int
    stop: int
    num_samples: int  # N, the whole table's size
    rank: int = 0
    num_ranks: int = 1

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def is_whole(self) -> bool:
        return self.start == 0 and self.stop == self.num_samples

    @property
    def byte_range(self) -> tuple[int, int]:
        """This shard's bytes of the packed N-sample bitmask."""
        return self.start // 8, (self.stop + 7) // 8


def shard_block(num_samples: int, num_ranks: int) -> int:
    """Rows per shard (the last ones may hold fewer, or none): ceil(N / P) rounded up to 8."""
    per_rank = -(-int(num_samples) // int(num_ranks))
    return max(ALIGNMENT, -(-per_rank // ALIGNMENT) * ALIGNMENT)


def shard_of(num_samples: int, num_ranks: int, rank: int) -> Shard:
    """Rank `rank`'s shard of an `num_samples`-row table split over `num_ranks`.

    Example::

        >>> shard_of(100, 3, 2)
        Shard(start=80, stop=100, num_samples=100, rank=2, num_ranks=3)
    """
    if num_samples < 1 or num_ranks < 1 or not 0 <= rank < num_ranks:
        raise ValueError(f"bad shard: rank {rank} of {num_ranks} over {num_samples} samples")
    block = shard_block(num_samples, num_ranks)
    start, stop = min(rank * block, num_samples), min((rank + 1) * block, num_samples)
    return Shard(start, stop, int(num_samples), int(rank), int(num_ranks))


def whole_table(num_samples: int) -> Shard:
    return Shard(0, int(num_samples), int(num_samples))


def owners(indices: np.ndarray, num_samples: int, num_ranks: int) -> np.ndarray:
    """The rank whose shard holds each sample index (in the indices' own integer type)."""
    indices = np.asarray(indices)
    return indices // indices.dtype.type(shard_block(num_samples, num_ranks))


class Collective(Protocol):
    """What a sharded selection asks of the ranks (every rank calls each method at the same point)."""

    num_ranks: int
    rank: int

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum over ranks of an int64/float64 array of the same shape on every rank."""

    def gather(self, values: np.ndarray) -> np.ndarray:
        """Every rank's small array (same shape and dtype), stacked in rank order: shape (P, *shape)."""

    def gather_bits(self, local_bits: np.ndarray, shard: Shard) -> np.ndarray:
        """The N-sample bitmask assembled from every rank's bytes of its shard (`Shard.byte_range`)."""


def count_all(mask: np.ndarray, collective: Collective) -> int:
    """True entries of `mask` (this shard's rows) over every rank's shard."""
    return int(collective.sum(np.array([np.count_nonzero(mask)], dtype=np.int64))[0])


class LocalCollective:
    """One process: sums and gathers are the value itself."""

    num_ranks = 1
    rank = 0

    def sum(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values)

    def gather(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values)[None]

    def gather_bits(self, local_bits: np.ndarray, shard: Shard) -> np.ndarray:
        if not shard.is_whole:
            raise ValueError("a single process holds the whole table")
        return np.asarray(local_bits, dtype=np.uint8)
