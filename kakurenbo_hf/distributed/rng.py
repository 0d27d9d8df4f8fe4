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
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from safetensors.numpy import load_file

from .checkpoint import save_rank_state


def rng_file_name(rank: int) -> str:
    return f"kakurenbo_rng_{rank}.safetensors"


def snapshot() -> dict[str, np.ndarray]:
    """The CPU RNG states (torch, numpy, random) as arrays."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    return {
        "torch": torch.random.get_rng_state().numpy().copy(),
        "numpy_keys": np.asarray(keys, dtype=np.uint32),
        "numpy_extra": np.array([position, has_gauss, cached], dtype=np.float64),
        "python_state": np.asarray(python_state, dtype=np.int64),
        "python_extra": np.array([version, gauss_next is not None, gauss_next or 0.0], dtype=np.float64),
    }


def restore(state: dict[str, np.ndarray]) -> None:
    """Set the CPU RNGs to a `snapshot()`."""
    torch.random.set_rng_state(torch.from_numpy(np.ascontiguousarray(state["torch"])))
    position, has_gauss, cached = state["numpy_extra"].tolist()
    np.random.set_state(("MT19937", state["numpy_keys"], int(position), int(has_gauss), float(cached)))
    version, has_next, gauss_next = state["python_extra"].tolist()
    random.setstate((int(version), tuple(int(v) for v in state["python_state"]), gauss_next if has_next else None))


def save_snapshot(state: dict[str, np.ndarray], folder: str, rank: int) -> str:
    return save_rank_state(state, folder, rank, file_name=rng_file_name(rank))


def load_snapshot(folder: str, rank: int) -> dict[str, np.ndarray] | None:
    """This rank's snapshot in `folder`, or None if there is none (or it cannot be read)."""
    path = os.path.join(folder, rng_file_name(rank))
    if not os.path.isfile(path):
        return None
    try:
        return load_file(path)
    except Exception:  # an unreadable file only costs exactness of augmentations, as without it
        return None
