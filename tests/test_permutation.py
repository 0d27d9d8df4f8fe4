"""`KeyedPermutation`: a lazily evaluated shuffle that must be a permutation, keyed, and look uniform."""

from __future__ import annotations

import numpy as np
import pytest

from kakurenbo_hf.core.permutation import KeyedPermutation


@pytest.mark.parametrize("size", [1, 2, 3, 5, 16, 17, 255, 256, 1000, 65537, 1 << 20])
def test_every_position_maps_to_a_distinct_element(size):
    values = KeyedPermutation(size, key=(7, 1))(np.arange(size))
    assert values.dtype == np.int64
    assert np.array_equal(np.sort(values), np.arange(size))


def test_chunks_and_single_positions_agree_with_the_whole():
    permutation = KeyedPermutation(5000, key=(3, 9))
    whole = permutation(np.arange(5000))
    chunked = np.concatenate([permutation(np.arange(start, min(start + 777, 5000))) for start in range(0, 5000, 777)])
    assert np.array_equal(whole, chunked)
    assert all(permutation(np.array([i]))[0] == whole[i] for i in (0, 1, 2499, 4999))


def test_the_key_chooses_the_order():
    orders = {key: KeyedPermutation(500, key=key)(np.arange(500)).tolist() for key in [(0, 0), (0, 1), (1, 0)]}
    assert orders[(0, 0)] == KeyedPermutation(500, key=(0, 0))(np.arange(500)).tolist()
    assert len({tuple(order) for order in orders.values()}) == 3


def test_positions_out_of_range_are_refused():
    with pytest.raises(IndexError):
        KeyedPermutation(10, key=(0,))(np.array([10]))
    with pytest.raises(ValueError):
        KeyedPermutation(0, key=(0,))


def test_orders_look_uniform_over_keys():
    """Where element e lands, over 4000 keys: every (element, position) pair about equally often
    (chi-square), and no correlation between an element and its position."""
    size, trials = 12, 4000
    counts = np.zeros((size, size))
    correlations = []
    for key in range(trials):
        order = KeyedPermutation(size, key=(key, 5))(np.arange(size))
        counts[order, np.arange(size)] += 1
        correlations.append(np.corrcoef(order, np.arange(size))[0, 1])
    expected = trials / size
    chi_square = ((counts - expected) ** 2 / expected).sum()
    # (size-1)^2 = 121 degrees of freedom: mean 121, sd ~15.6; 200 is ~5 sd out.
    assert chi_square < 200, chi_square
    assert abs(np.mean(correlations)) < 0.02


def test_large_orders_have_no_visible_structure():
    """Consecutive positions of a large order are not near each other (a weak mixing check)."""
    size = 1_000_003
    order = KeyedPermutation(size, key=(1, 2))(np.arange(size))
    gaps = np.abs(np.diff(order))
    assert np.median(gaps) > size / 5  # uniform: E|U1 - U2| = size / 3, median ~0.29 size
    first_half = order[: size // 2]
    assert abs(np.mean(first_half < size // 2) - 0.5) < 0.01
