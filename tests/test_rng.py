"""`distributed/rng.py`: snapshots replay the same draws of torch, numpy and random, cheaply, and the
checkpoint file keeps the format of the first release."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from kakurenbo_hf.distributed.checkpoint import save_rank_state
from kakurenbo_hf.distributed.rng import (
    load_snapshot,
    preserved_rng_state,
    restore,
    rng_file_name,
    save_snapshot,
    snapshot,
)


def draws():
    """Draws from every generator a transform may use, the Gaussian caches included."""
    return (
        torch.rand(3).tolist(),
        torch.randint(0, 1000, (2,)).tolist(),
        np.random.rand(3).tolist(),
        np.random.standard_normal(3).tolist(),  # odd count: leaves numpy's Gaussian cached
        np.random.randint(0, 1000, 2).tolist(),
        [random.random() for _ in range(3)],
        [random.gauss(0, 1) for _ in range(3)],  # odd count: leaves Python's gauss_next cached
    )


def seed_all(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@pytest.fixture(autouse=True)
def keep_global_rng():
    with preserved_rng_state():
        yield


def old_release_arrays():
    """The arrays the first release's `snapshot()` returned, built as it built them."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    return {
        "torch": torch.random.get_rng_state().numpy().copy(),
        "numpy_keys": np.asarray(keys, dtype=np.uint32),
        "numpy_extra": np.array([position, has_gauss, cached], dtype=np.float64),
        "python_state": np.asarray(python_state, dtype=np.int64),
        "python_extra": np.array([version, gauss_next is not None, gauss_next or 0.0], dtype=np.float64),
    }


@pytest.mark.parametrize("cached_gaussians", [False, True])
def test_snapshot_restore_replays_draws(cached_gaussians):
    seed_all(3)
    if cached_gaussians:  # numpy's has_gauss and Python's gauss_next set at the snapshot
        np.random.standard_normal()
        random.gauss(0, 1)
        assert np.random.get_state()[3] == 1 and random.getstate()[2] is not None
    state = snapshot()
    expected = draws()
    assert draws() != expected
    restore(state)
    assert draws() == expected
    restore(state)  # a snapshot is not used up
    assert draws() == expected


def test_snapshots_do_not_alias_the_generators():
    seed_all(0)
    first = snapshot()
    a = draws()
    second = snapshot()
    b = draws()
    restore(first)
    assert draws() == a
    restore(second)
    assert draws() == b


def test_snapshot_follows_numpy_moves_without_draws():
    """Snapshots follow every numpy move: a seed, a set_state, a consumed cached Gaussian."""
    seed_all(1)
    snapshot()
    np.random.seed(99)  # the words change without a draw through numpy's cache
    state = snapshot()
    expected = np.random.rand(4).tolist()
    restore(state)
    assert np.random.rand(4).tolist() == expected

    other = np.random.RandomState(5).get_state()
    snapshot()
    np.random.set_state(other)
    state = snapshot()
    expected = np.random.rand(4).tolist()
    restore(state)
    assert np.random.rand(4).tolist() == expected

    np.random.seed(7)
    np.random.standard_normal()  # draws two, caches one
    cached = snapshot()
    np.random.standard_normal()  # consumes the cached one: the words do not move
    consumed = snapshot()
    after_consumed = np.random.standard_normal(3).tolist()
    restore(cached)
    after_cached = np.random.standard_normal(3).tolist()
    assert after_cached[1:] == after_consumed[:2]
    restore(consumed)
    assert np.random.standard_normal(3).tolist() == after_consumed


def test_save_load_round_trip(tmp_path):
    seed_all(4)
    np.random.standard_normal()  # a cached Gaussian must survive the file
    random.gauss(0, 1)
    state = snapshot()
    expected = draws()
    path = save_snapshot(state, str(tmp_path), rank=1)
    assert path.endswith(rng_file_name(1))
    draws()
    loaded = load_snapshot(str(tmp_path), 1)
    restore(loaded)
    assert draws() == expected
    # what was loaded saves again (a resumed run checkpoints it before its next read) and still replays
    save_snapshot(loaded, str(tmp_path / "again"), rank=1)
    restore(load_snapshot(str(tmp_path / "again"), 1))
    assert draws() == expected


def test_file_format_is_the_first_release_format(tmp_path):
    seed_all(5)
    np.random.standard_normal()
    random.gauss(0, 1)
    old = old_release_arrays()
    save_snapshot(snapshot(), str(tmp_path), rank=0)
    written = load_file(str(tmp_path / rng_file_name(0)))
    assert set(written) == set(old)
    for name, array in old.items():
        assert written[name].dtype == array.dtype and np.array_equal(written[name], array), name


def test_file_written_by_the_first_release_loads(tmp_path):
    seed_all(6)
    np.random.standard_normal()
    random.gauss(0, 1)
    old = old_release_arrays()
    save_rank_state(old, str(tmp_path), 0, file_name=rng_file_name(0))  # the first release's save_snapshot
    expected = draws()
    draws()
    restore(load_snapshot(str(tmp_path), 0))
    assert draws() == expected
    restore(old)  # the arrays themselves are still accepted
    assert draws() == expected


def test_missing_or_unreadable_file_loads_as_none(tmp_path):
    assert load_snapshot(str(tmp_path), 0) is None
    (tmp_path / rng_file_name(0)).write_bytes(b"not a safetensors file")
    assert load_snapshot(str(tmp_path), 0) is None
    save_rank_state({"torch": np.zeros(3, dtype=np.uint8)}, str(tmp_path), 1, file_name=rng_file_name(1))
    assert load_snapshot(str(tmp_path), 1) is None  # arrays missing


def test_preserved_rng_state():
    seed_all(7)
    expected = draws()
    seed_all(7)
    with preserved_rng_state():
        draws()
        np.random.seed(1)
    assert draws() == expected


def test_replaced_numpy_bit_generator(tmp_path):
    """np.random.set_bit_generator(PCG64): snapshots still replay it; its file keeps torch and random."""
    original = np.random.get_bit_generator()
    np.random.set_bit_generator(np.random.PCG64(11))
    try:
        state = snapshot()
        expected = draws()
        restore(state)
        assert draws() == expected
        save_snapshot(state, str(tmp_path), 0)
        restore(load_snapshot(str(tmp_path), 0))
        replay = draws()
        assert replay[0:2] == expected[0:2] and replay[5:] == expected[5:]
    finally:
        np.random.set_bit_generator(original)
