"""`KeyedPermutation`: a shuffle of range(n) evaluated lazily, at any position, in O(1) per element.

Why: at the start of every epoch that hides samples, the sampler needs a fresh random order of
the visible samples. A materialised shuffle (`torch.randperm` + a gather) of 7e7 visible samples
takes about 3.5 s on one CPU core, during which every GPU of the job waits. A keyed permutation
costs nothing at the epoch boundary: the order is computed chunk by chunk while the epoch is
iterated (tens of nanoseconds per sample, spread over the epoch), and a resume or another rank
starts at any position without computing the ones before it.

How: a 6-round (12 for n <= 2^16) balanced Feistel network over the smallest even number of bits that covers n,
with round functions built from the splitmix64 finaliser keyed by (seed, epoch); values that
fall outside [0, n) are walked through the network again ("cycle walking"), which restricts the
permutation of [0, 2^bits) to one of [0, n) (at most 4 walks on average, since 2^bits < 4n).
Four or more Feistel rounds with pseudo-random round functions make a pseudo-random permutation
(Luby and Rackoff, 1988): every sample exactly once per epoch, in an order that is not
distinguishable from a uniform shuffle by anything a training run does. It is not a uniform
draw over all n! orders (the key has 384 bits or more), as no seeded shuffle of a large n is.

Example::

    >>> order = KeyedPermutation(10, key=(0, 3))
    >>> sorted(order(np.arange(10))) == list(range(10))
    True
"""

from __future__ import annotations

import numpy as np

# Rounds of the network: 6 above 2^16 elements; small domains need more to look uniform (with 4
# rounds, 12 elements gave a chi-square of 204 for 121 degrees of freedom; 12 rounds: 130).
ROUNDS, SMALL_DOMAIN_ROUNDS, SMALL_DOMAIN = 6, 12, 1 << 16
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


def mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective, well-mixing hash of uint64 values (wrapping arithmetic)."""
    values = (values ^ (values >> np.uint64(30))) * _MIX_1
    values = (values ^ (values >> np.uint64(27))) * _MIX_2
    return values ^ (values >> np.uint64(31))


class KeyedPermutation:
    """A pseudo-random permutation of range(`size`) chosen by `key`, evaluated at given positions.

    Args:
        size: n, the number of elements permuted (>= 1).
        key: integers that choose the permutation (e.g. (seed, epoch)); equal keys give equal orders.

    Calling it with an integer array of positions in [0, n) returns the elements at those
    positions of the permuted order (an int64 array of the same shape).
    """

    def __init__(self, size: int, key: tuple[int, ...]):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = int(size)
        self.key = tuple(key)
        bits = max(2, (self.size - 1).bit_length())
        self._half = np.uint64((bits + 1) // 2)
        self._mask = np.uint64((1 << int(self._half)) - 1)
        self._round_keys = np.random.default_rng([int(k) for k in key]).integers(
            0, np.iinfo(np.uint64).max, size=SMALL_DOMAIN_ROUNDS if self.size <= SMALL_DOMAIN else ROUNDS,
            dtype=np.uint64, endpoint=True
        )

    def _feistel(self, values: np.ndarray) -> np.ndarray:
        left, right = values >> self._half, values & self._mask
        for round_key in self._round_keys:
            left, right = right, left ^ (mix64(right ^ round_key) & self._mask)
        return (left << self._half) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions)
        if positions.size and (positions.min() < 0 or positions.max() >= self.size):
            raise IndexError(f"positions must be in [0, {self.size})")
        values = self._feistel(positions.astype(np.uint64))
        outside = np.flatnonzero(values >= self.size)
        while outside.size:  # cycle walking: a permutation of [0, 2^bits) restricted to [0, n)
            values[outside] = self._feistel(values[outside])
            outside = outside[values[outside] >= self.size]
        return values.astype(np.int64)
