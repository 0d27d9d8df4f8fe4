"""Hiding state on disk: one safetensors file per checkpoint folder.

Arrays (statistics, the current hidden set, an order rule's RNG state) are stored as safetensors
tensors; plain values (format version, sizes, seed, the per-epoch plans) and a CRC-32 of every
array as JSON in the file's metadata. Loading never unpickles anything, and a file that is
truncated, not safetensors, or whose arrays do not match their checksums is refused with an error
that names it.
"""

from __future__ import annotations

import json
import os
import zlib

import numpy as np
from safetensors.numpy import save_file

HIDING_STATE_NAME = "kakurenbo_state.safetensors"

_ARRAYS = {"stats_loss": ("stats", "loss"), "stats_confidence": ("stats", "confidence"),
           "stats_correct": ("stats", "correct"), "hidden": (None, "hidden"),
           "order_rng_state": (None, "order_rng_state")}
_OPTIONAL_ARRAYS = ("order_rng_state",)  # absent from files written before it existed


def _crc(array: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data)


def save_hiding_state(state: dict, folder: str) -> str:
    """Write `HidingEngine.state_dict()` to `folder/kakurenbo_state.safetensors`; returns the path."""
    os.makedirs(folder, exist_ok=True)
    tensors = {}
    for name, (group, key) in _ARRAYS.items():
        source = state[group] if group else state
        if key in source:
            tensors[name] = np.ascontiguousarray(source[key])
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
                       if with_stats or _ARRAYS.get(name, ("",))[0] != "stats"}
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
        }
        checksums = json.loads(metadata["checksums"]) if "checksums" in metadata else {}
        for name, (group, key) in _ARRAYS.items():
            if name not in tensors and (name in _OPTIONAL_ARRAYS or (group == "stats" and not with_stats)):
                continue
            array = tensors[name]
            if name in checksums and _crc(array) != int(checksums[name]):
                raise ValueError(f"array {name!r} does not match its checksum")
            (state[group] if group else state)[key] = array
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(f"{path} is not a valid kakurenbo_hf hiding state: {error}") from error
    return state
