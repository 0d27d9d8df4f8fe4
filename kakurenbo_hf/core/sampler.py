"""`HidingSampler`: a global, seeded sampler that leaves the hidden samples out of an epoch.

Protocol (as `torch.utils.data.Sampler`): `__iter__` yields sample indices, `__len__` is the
number of visible samples of the current epoch (less `start` after a resume that re-times it).

- Global: the same order and length on every rank. Accelerate shards it (`BatchSamplerShard`:
  batch k goes to rank k % P), so each rank gets a disjoint share of the visible set.
- Order rules (`order`), each applied to the visible set, matching the Trainer's
  `train_sampling_strategy` when nothing is hidden:
    - "random": with nothing hidden, `torch.randperm(N)` drawn from a generator seeded with
      `seed + epoch`: the order accelerate's `SeedableRandomSampler` gives the plain Trainer.
      With samples hidden (or a multiset epoch), the visible indices (ascending) in the order of
      a `KeyedPermutation` keyed by (seed, epoch), evaluated chunk by chunk while the epoch is
      iterated: no shuffle at the epoch boundary (a materialised one took 3.5 s at 7e7 visible
      samples), and a resume starts at any position directly. The global RNG is never touched.
    - "sequential": the visible indices in index order.
    - "custom": `order_fn(visible, generator)` returns the order (e.g. length grouping). The
      generator starts from the global torch RNG state at the epoch's first draw, and the global
      RNG then advances as if the draw had used it: the plain Trainer's samplers draw from the
      global RNG, so at F=0 the order is theirs. That state is kept (`order_rng_state`) so that a
      resume redraws the same order without touching the global RNG.
- Multiset epochs (`set_draws`, for strategies that sample with replacement): the epoch is the
  given draws instead of the visible set, ordered by the same rules (a sample drawn twice is
  trained twice).
- `set_epoch` is idempotent: Trainer and accelerate both call it.

Deliberately not a `RandomSampler` subclass (accelerate would swap it for its own) and without a
`generator` attribute (accelerate would try to synchronise it).

Example::

    >>> sampler = HidingSampler(10, seed=0)
    >>> sampler.set_hidden(np.arange(10) < 3)  # hide samples 0, 1, 2
    >>> sorted(sampler) == list(range(3, 10)), len(sampler)
    (True, 7)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Sampler

from .bitmask import count_bits, pack, positions, unpack
from .permutation import KeyedPermutation


ORDERS = ("random", "sequential", "custom")
_ORDER_KEY = 0x4F524452  # "ORDR": keeps the order's key apart from other seeded draws

# (visible indices ascending, generator) -> the epoch's order (a permutation of `visible`)
OrderFn = Callable[[np.ndarray, torch.Generator], np.ndarray]


class HidingSampler(Sampler[int]):
    """Yields the visible samples of the current epoch in the order of its rule.

    Args:
        num_samples: size N of the training set.
        seed: seed of the "random" order (epoch e uses `seed + e`).
        order: "random", "sequential" or "custom" (see the module docstring).
        order_fn: the rule of the "custom" order.
    """

    def __init__(self, num_samples: int, seed: int = 0, order: str = "random", order_fn: OrderFn | None = None):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if (order == "custom") != (order_fn is not None):
            raise ValueError("order_fn is required for order='custom' and only for it")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.order = order
        self.order_fn = order_fn
        self.epoch = 0
        self._hidden_bits = np.zeros((self.num_samples + 7) // 8, dtype=np.uint8)  # 1 bit per sample
        self._num_hidden = 0
        self.start = 0  # position in the epoch's order where iteration starts
        self.order_rng_state: np.ndarray = np.zeros(0, dtype=np.uint8)
        self._replay_rng_state = False  # True: order_rng_state was restored for the current epoch
        self._order: np.ndarray | None = None
        self._draws: np.ndarray | None = None  # the epoch's multiset (sorted), or None
        self._members_cache: np.ndarray | None = None  # the members the lazy order permutes

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self.start = 0
            self._replay_rng_state = False
            self._order = None

    def set_start(self, start: int) -> None:
        """Start the current epoch's iteration at position `start` of its order."""
        if not 0 <= start <= self.epoch_size:
            raise ValueError(f"start must be in [0, {self.epoch_size}], got {start}")
        self.start = int(start)

    def restore_order_rng_state(self, state: np.ndarray) -> None:
        """Draw the current epoch's "custom" order from `state` (a resume), leaving the global RNG alone."""
        self.order_rng_state = np.asarray(state, dtype=np.uint8).copy()
        self._replay_rng_state = self.order_rng_state.size > 0
        self._order = None

    def set_hidden(self, hidden: np.ndarray) -> None:
        """Hide the samples where `hidden` is True, from the current epoch's next iteration on."""
        hidden = np.asarray(hidden, dtype=bool)
        if hidden.shape != (self.num_samples,):
            raise ValueError(f"hidden mask must have shape ({self.num_samples},), got {hidden.shape}")
        self.set_hidden_bits(pack(hidden))

    def set_hidden_bits(self, bits: np.ndarray) -> None:
        """`set_hidden` from a packed bitmask (`np.packbits` of the mask, N/8 bytes; counted without unpacking).

        The sampler keeps `bits` itself (no copy: N/8 bytes less on every rank); do not modify it afterwards.
        """
        bits = np.asarray(bits, dtype=np.uint8).reshape(-1)
        if bits.size != (self.num_samples + 7) // 8:
            raise ValueError(f"hidden bitmask must have {(self.num_samples + 7) // 8} bytes, got {bits.size}")
        self._hidden_bits = bits
        self._num_hidden = count_bits(self._hidden_bits, self.num_samples)
        self._reset_epoch_order()

    def set_draws(self, draws: np.ndarray | None) -> None:
        """Make the current epoch the multiset `draws` (sample indices, repeats allowed); None: the
        visible set. Call after `set_hidden`/`set_hidden_bits` (which clear it)."""
        if draws is not None:
            draws = np.sort(np.asarray(draws).reshape(-1)).astype(np.int64)
            if draws.size == 0 or draws[0] < 0 or draws[-1] >= self.num_samples:
                raise ValueError(f"draws must be a non-empty array of sample indices in [0, {self.num_samples})")
        self._draws = draws
        self._reset_epoch_order(clear_draws=False)

    def _reset_epoch_order(self, clear_draws: bool = True) -> None:
        if clear_draws:
            self._draws = None
        self.start = 0
        self._replay_rng_state = False
        self._order = None
        self._members_cache = None

    @property
    def num_visible(self) -> int:
        return self.num_samples - self._num_hidden

    @property
    def epoch_size(self) -> int:
        """Samples the epoch yields from its start: the visible ones, or the draws of a multiset epoch."""
        return self._draws.size if self._draws is not None else self.num_visible

    @property
    def hidden(self) -> np.ndarray:
        """The hidden set as a bool mask (unpacked from the bitmask on each call)."""
        return unpack(self._hidden_bits, self.num_samples)

    def visible_indices(self) -> np.ndarray:
        """The visible indices, ascending (int32 below 2**31 samples), unpacked chunk by chunk."""
        if not self._hidden_bits.any():
            return np.arange(self.num_samples, dtype=np.int32 if self.num_samples < 2**31 else np.int64)
        return positions(self._hidden_bits, self.num_samples, value=False)

    def epoch_order(self) -> np.ndarray:
        """The indices of this epoch, in order (integer array, cached until the epoch or mask changes)."""
        if self._order is None:
            if self.order == "random":
                self._order = self._random_order()
            elif self.order == "sequential":
                self._order = self._members()
            else:
                self._order = self._custom_order()
        return self._order

    def _members(self) -> np.ndarray:
        """The epoch's samples, ascending: the draws of a multiset epoch, else the visible indices."""
        return self._draws if self._draws is not None else self.visible_indices()

    def _random_order(self) -> np.ndarray:
        if self._lazy_order():
            return self._lazy_chunk(0, self.epoch_size)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        # int32 draws the same permutation as the default int64, faster and in half the memory.
        dtype = torch.int32 if self.num_samples < 2**31 else torch.int64
        return torch.randperm(self.num_samples, generator=generator, dtype=dtype).numpy()  # the plain Trainer's

    def _lazy_order(self) -> bool:
        """Whether the "random" order is the keyed permutation of the members (something hidden or drawn)."""
        return self.order == "random" and (self._draws is not None or self._num_hidden > 0)

    def _lazy_chunk(self, start: int, stop: int) -> np.ndarray:
        """Positions [start, stop) of the lazily permuted order."""
        key = (self.seed, self.epoch, _ORDER_KEY)
        if self._members_cache is None or self._permutation.key != key:
            self._members_cache = self._members()
            self._permutation = KeyedPermutation(self._members_cache.size, key=key)
        return self._members_cache[self._permutation(np.arange(start, stop, dtype=np.int64))]

    def _custom_order(self) -> np.ndarray:
        generator = torch.Generator()
        if self._replay_rng_state:
            generator.set_state(torch.from_numpy(self.order_rng_state.copy()))
        else:
            state = torch.random.get_rng_state()
            self.order_rng_state = state.numpy().copy()
            generator.set_state(state)
        visible = self._members().astype(np.int64)
        order = np.asarray(self.order_fn(visible, generator), dtype=np.int64)
        if order.shape != visible.shape or not np.array_equal(np.sort(order), visible):
            raise ValueError("order_fn must return a permutation of the indices it was given")
        if not self._replay_rng_state:
            torch.random.set_rng_state(generator.get_state())  # as if the draw had used the global RNG
        return order

    def __iter__(self):
        chunk = 1 << 16  # Python ints a chunk at a time
        if self._lazy_order():
            for start in range(self.start, self.epoch_size, chunk):
                yield from self._lazy_chunk(start, min(start + chunk, self.epoch_size)).tolist()
            return
        order = self.epoch_order()
        for start in range(self.start, order.size, chunk):
            yield from order[start : start + chunk].tolist()

    def __len__(self) -> int:
        return self.epoch_size - self.start

