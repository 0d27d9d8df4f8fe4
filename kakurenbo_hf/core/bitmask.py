"""Packed bitmasks of the hidden set (`np.packbits` order: big-endian bits, N/8 bytes).

The hidden set lives as such a bitmask on every rank; these helpers read it without unpacking all
N samples at once (at N = 1e8 an unpacked mask is 100 MB per rank).
"""

from __future__ import annotations

import numpy as np

_CHUNK = 1 << 23  # samples per step (a multiple of 8)


def count_bits(bits: np.ndarray, count: int) -> int:
    """Set bits among the first `count` of a packed bitmask."""
    full, rest = divmod(count, 8)
    total = int(np.bitwise_count(bits[:full]).sum(dtype=np.int64))
    if rest:  # ignore the padding bits of the last byte
        total += int(np.bitwise_count(bits[full] & np.uint8((0xFF << (8 - rest)) & 0xFF)))
    return total


def positions(bits: np.ndarray, count: int, value: bool = True, period: int = 1, phase: int = 0) -> np.ndarray:
    """Ascending indices i < `count` whose bit is `value` and with (i + phase) % period == 0.

    int32 below 2**31 samples; computed chunk by chunk, reading only every `period`-th bit.
    """
    dtype = np.int32 if count < 2**31 else np.int64
    parts = []
    for start in range(0, count, _CHUNK):
        size = min(_CHUNK, count - start)
        packed = bits[start // 8 : (start + size + 7) // 8]
        unpacked = np.unpackbits(packed if value else ~packed, count=size)
        first = (-(start + phase)) % period  # the chunk's first index i with (i + phase) % period == 0
        parts.append(np.flatnonzero(unpacked[first::period]).astype(dtype) * dtype(period) + dtype(start + first))
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


def pack(mask: np.ndarray) -> np.ndarray:
    """A bool mask as a packed bitmask (N/8 bytes)."""
    return np.packbits(np.asarray(mask, dtype=bool))


def unpack(bits: np.ndarray, count: int) -> np.ndarray:
    """The first `count` bits of a packed bitmask as a bool mask."""
    return np.unpackbits(bits, count=count).view(bool)


def clear_bit(bits: np.ndarray, index: int) -> None:
    """Clear bit `index` in place."""
    bits[index >> 3] &= np.uint8(~(0x80 >> (index & 7)) & 0xFF)
