"""Hiding state on disk: one safetensors file per checkpoint folder.

Arrays (statistics, the current hidden set, an order rule's RNG state) are stored as safetensors
tensors; plain values (format version, sizes, seed, the per-epoch plans) and a CRC-32 of every
array as JSON in the file's metadata. Loading never unpickles anything, and a file that is
truncated, not safetensors, or whose arrays do not match their checksums is refused with an error
that names it.

A per-batch strategy's per-process state (Selective Backprop's loss history) goes into one file
per rank, `kakurenbo_rank_state_<rank>.safetensors`, checksummed the same way.
"""

from __future__ import annotations

import json
import os
import zlib

import numpy as np
from safetensors.numpy import save_file

HIDING_STATE_NAME = "kakurenbo_state.safetensors"

# Arrays at the top level of the state; the groups' arrays are stored as "<group>_<name>".
_TOP_ARRAYS = ("hidden", "order_rng_state", "weights", "draws")
_REQUIRED_TOP = ("hidden",)  # the others are absent from files written before they existed
_GROUPS = ("stats", "strategy")  # held by the table's rank only (loaded with `with_stats`)
_REQUIRED_STATS = ("loss", "confidence", "correct")


def _crc(array: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data)


def save_hiding_state(state: dict, folder: str) -> str:
    """Write `HidingEngine.state_dict()` to `folder/kakurenbo_state.safetensors`; returns the path."""
    os.makedirs(folder, exist_ok=True)
    tensors = {key: np.ascontiguousarray(state[key]) for key in _TOP_ARRAYS if key in state}
    for group in _GROUPS:
        for key, array in (state.get(group) or {}).items():
            tensors[f"{group}_{key}"] = np.ascontiguousarray(array)
    metadata = {
        "format_version": str(state["format_version"]),
        "num_samples": str(state["num_samples"]),
        "seed": str(state["seed"]),
        "plans": json.dumps(state["plans"]),
        "checksums": json.dumps({name: _crc(array) for name, array in tensors.items()}),
    }
    path = os.path.join(folder, HIDING_STATE_NAME)
    save_file(tensors, path, metadata=metadata)
    return path


def load_hiding_state(folder: str, with_stats: bool = True) -> dict | None:
    """Read the hiding state of a checkpoint folder, or None if it has none (a plain Trainer's).

    `with_stats=False` skips the statistics arrays (ranks that do not hold the table).
    Raises `ValueError` naming the file if it cannot be read or fails its checksums.
    """
    path = os.path.join(folder, HIDING_STATE_NAME)
    if not os.path.isfile(path):
        return None
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()
                       if with_stats or _group_of(name) is None}
    except Exception as error:  # safetensors raises its own error types, without the path
        raise ValueError(
            f"{path} cannot be read as a kakurenbo_hf hiding state ({type(error).__name__}: {error}); the file is "
            "truncated or corrupt. Resume from another checkpoint, or delete the file and set "
            "resume_without_hiding_state=True to restart hiding from fresh statistics."
        ) from error
    try:
        state = {
            "format_version": int(metadata["format_version"]),
            "num_samples": int(metadata["num_samples"]),
            "seed": int(metadata["seed"]),
            "plans": json.loads(metadata["plans"]),
            "stats": {},
            "strategy": {},
        }
        checksums = json.loads(metadata["checksums"]) if "checksums" in metadata else {}
        required = list(_REQUIRED_TOP) + ([f"stats_{key}" for key in _REQUIRED_STATS] if with_stats else [])
        missing = [name for name in required if name not in tensors]
        if missing:
            raise KeyError(f"arrays {missing} are missing")
        for name, array in tensors.items():
            if name in checksums and _crc(array) != int(checksums[name]):
                raise ValueError(f"array {name!r} does not match its checksum")
            group = _group_of(name)
            if group is not None:
                state[group][name[len(group) + 1 :]] = array
            elif name in _TOP_ARRAYS:
                state[name] = array
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(f"{path} is not a valid kakurenbo_hf hiding state: {error}") from error
    return state


def _group_of(name: str) -> str | None:
    return next((group for group in _GROUPS if name.startswith(group + "_")), None)


def rank_state_file_name(rank: int) -> str:
    return f"kakurenbo_rank_state_{rank}.safetensors"


def save_rank_state(arrays: dict[str, np.ndarray], folder: str, rank: int, file_name: str | None = None) -> str:
    """Write one process's own state next to the hiding state: a per-batch strategy's loss history, or
    (with `file_name`) its RNG snapshot (`rng.py`).

    Every rank writes its own file (CRC-32 of each array in the metadata); returns the path.
    """
    os.makedirs(folder, exist_ok=True)
    tensors = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
    path = os.path.join(folder, file_name or rank_state_file_name(rank))
    save_file(tensors, path, metadata={"checksums": json.dumps({name: _crc(array) for name, array in tensors.items()})})
    return path


def load_rank_state(folder: str, rank: int) -> dict[str, np.ndarray] | None:
    """This rank's state in `folder`, or None if it has none (an older checkpoint, another number of processes).

    Raises `ValueError` naming the file if it cannot be read or fails its checksums.
    """
    path = os.path.join(folder, rank_state_file_name(rank))
    if not os.path.isfile(path):
        return None
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as handle:
            checksums = json.loads((handle.metadata() or {})["checksums"])
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # safetensors raises its own error types, without the path
        raise ValueError(f"{path} cannot be read as a kakurenbo_hf rank state ({type(error).__name__}: {error}); "
                         "the file is truncated or corrupt. Resume from another checkpoint.") from error
    for name, array in arrays.items():
        if name not in checksums or _crc(array) != int(checksums[name]):
            raise ValueError(f"{path}: array {name!r} does not match its checksum; the file is corrupt")
    return arrays
