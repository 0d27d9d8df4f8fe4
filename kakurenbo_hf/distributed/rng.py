"""Exact resume with random augmentation: the CPU RNG state before the last batch read.

The training DataLoader (accelerate's `DataLoaderShard`) reads one batch ahead: when a
checkpoint is saved after step k, the batch of step k+1 has already been read, its random
transforms drawn from the RNG. The Trainer's own RNG file holds the state *after* that read, so a
resumed run that reads batch k+1 from it draws other augmentations (the plain Trainer even
restores it only after reading the first batches). We keep, per rank, the RNG state from just
before the most recent read of a training batch; a resumed run restores it before its first read
and the Trainer's state right after it, which replays the uninterrupted run's draws exactly.

Covers the generators transforms draw from in the main process: torch (CPU), numpy and Python's
`random`. Workers (`dataloader_num_workers > 0`) seed themselves when the DataLoader starts, which
no resume can replay. No transformers import.

`snapshot()` runs before every training read, so it only takes the generators' own state objects
(an `RngSnapshot`, about 45 us); the conversion to arrays happens in `save_snapshot`, at a checkpoint.

On disk (one safetensors file per rank, unchanged since the first release): `torch` (uint8),
`numpy_keys` (uint32), `numpy_extra` (position, has_gauss, cached gauss; float64),
`python_state` (int64), `python_extra` (version, has gauss_next, gauss_next; float64).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from contextlib import contextmanager

import numpy as np
import torch
from safetensors.numpy import load_file

from .checkpoint import save_rank_state


def rng_file_name(rank: int) -> str:
    return f"kakurenbo_rng_{rank}.safetensors"


class RngSnapshot:
    """The CPU RNG states as the generators return them: torch's state tensor, numpy's `get_state()`
    and Python's `random.getstate()`. Opaque to callers: give it to `restore` or `save_snapshot`.
    Never mutated (a snapshot may share numpy's state with the previous one)."""

    __slots__ = ("torch", "numpy", "python")

    def __init__(self, torch_state: torch.Tensor, numpy_state, python_state: tuple):
        self.torch = torch_state
        self.numpy = numpy_state
        self.python = python_state

    def __repr__(self) -> str:
        return f"RngSnapshot(torch={self.torch.numel()} bytes, numpy={_numpy_kind(self.numpy)}, python=v{self.python[0]})"


def _numpy_kind(state) -> str:
    return state[0] if isinstance(state, tuple) else str(state.get("bit_generator"))


# --- the API ------------------------------------------------------------------------------------------


def _numpy_state():
    """numpy's global state: the legacy tuple, or the bit generator's dict when it was replaced
    (`np.random.set_bit_generator`: no legacy tuple)."""
    if type(np.random.get_bit_generator()) is not np.random.MT19937:
        return np.random.get_state(legacy=False)
    return np.random.get_state()


def snapshot() -> RngSnapshot:
    """The CPU RNG states (torch, numpy, random), cheap enough to take before every read."""
    return RngSnapshot(torch.random.get_rng_state(), _numpy_state(), random.getstate())


def restore(state: RngSnapshot | Mapping[str, np.ndarray]) -> None:
    """Set the CPU RNGs to a `snapshot()`, or to a snapshot's arrays (`load_snapshot`, older callers)."""
    if not isinstance(state, RngSnapshot):
        state = _from_arrays(state)
    torch.random.set_rng_state(state.torch)
    if state.numpy is not None:
        np.random.set_state(state.numpy)
    random.setstate(state.python)


@contextmanager
def preserved_rng_state():
    """Run a block without disturbing the CPU RNGs that training draws from (torch, numpy, random)."""
    state = snapshot()
    try:
        yield
    finally:
        restore(state)


def to_arrays(state: RngSnapshot | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A snapshot as the arrays of its file (see the module docstring)."""
    if not isinstance(state, RngSnapshot):
        return dict(state)
    version, python_state, gauss_next = state.python
    arrays = {"torch": state.torch.numpy().copy()}
    if isinstance(state.numpy, tuple) and state.numpy[0] == "MT19937":
        _, keys, position, has_gauss, cached = state.numpy
        arrays["numpy_keys"] = np.asarray(keys, dtype=np.uint32)
        arrays["numpy_extra"] = np.array([position, has_gauss, cached], dtype=np.float64)
    # else: numpy's global generator was replaced (np.random.set_bit_generator); it is not kept
    arrays["python_state"] = np.asarray(python_state, dtype=np.int64)
    arrays["python_extra"] = np.array([version, gauss_next is not None, gauss_next or 0.0], dtype=np.float64)
    return arrays


def _from_arrays(arrays: Mapping[str, np.ndarray]) -> RngSnapshot:
    torch_state = torch.from_numpy(np.array(arrays["torch"], dtype=np.uint8, copy=True))
    numpy_state = None
    if "numpy_keys" in arrays:
        position, has_gauss, cached = np.asarray(arrays["numpy_extra"]).tolist()
        keys = np.array(arrays["numpy_keys"], dtype=np.uint32, copy=True)
        if keys.shape != (624,):
            raise ValueError(f"numpy_keys has shape {keys.shape}, not (624,)")
        numpy_state = ("MT19937", keys, int(position), int(has_gauss), float(cached))
    version, has_next, gauss_next = np.asarray(arrays["python_extra"]).tolist()
    python_state = (int(version), tuple(np.asarray(arrays["python_state"]).tolist()), gauss_next if has_next else None)
    return RngSnapshot(torch_state, numpy_state, python_state)


def save_snapshot(state: RngSnapshot | Mapping[str, np.ndarray], folder: str, rank: int) -> str:
    return save_rank_state(to_arrays(state), folder, rank, file_name=rng_file_name(rank))


def load_snapshot(folder: str, rank: int) -> RngSnapshot | None:
    """This rank's snapshot in `folder`, or None if there is none (or it cannot be read)."""
    path = os.path.join(folder, rng_file_name(rank))
    if not os.path.isfile(path):
        return None
    try:
        return _from_arrays(load_file(path))
    except Exception:  # an unreadable file only costs exactness of augmentations, as without it
        return None
