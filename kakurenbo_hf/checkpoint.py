"""Hiding state on disk: one safetensors file per checkpoint folder.

Arrays (statistics, the current hidden set) are stored as safetensors tensors; plain values
(format version, sizes, seed, the per-epoch plans) as JSON in the file's metadata. Loading never
unpickles anything.
"""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import load_file, save_file

HIDING_STATE_NAME = "kakurenbo_state.safetensors"

_ARRAYS = {"stats_loss": ("stats", "loss"), "stats_confidence": ("stats", "confidence"),
           "stats_correct": ("stats", "correct"), "hidden": (None, "hidden")}


def save_hiding_state(state: dict, folder: str) -> str:
    """Write `HidingEngine.state_dict()` to `folder/kakurenbo_state.safetensors`; returns the path."""
    os.makedirs(folder, exist_ok=True)
    tensors = {}
    for name, (group, key) in _ARRAYS.items():
        value = state[group][key] if group else state[key]
        tensors[name] = np.ascontiguousarray(value)
    metadata = {
        "format_version": str(state["format_version"]),
        "num_samples": str(state["num_samples"]),
        "seed": str(state["seed"]),
        "plans": json.dumps(state["plans"]),
    }
    path = os.path.join(folder, HIDING_STATE_NAME)
    save_file(tensors, path, metadata=metadata)
    return path


def load_hiding_state(folder: str) -> dict | None:
    """Read the hiding state of a checkpoint folder, or None if it has none (a plain Trainer's)."""
    path = os.path.join(folder, HIDING_STATE_NAME)
    if not os.path.isfile(path):
        return None
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as handle:
        metadata = handle.metadata() or {}
    tensors = load_file(path)
    try:
        state = {
            "format_version": int(metadata["format_version"]),
            "num_samples": int(metadata["num_samples"]),
            "seed": int(metadata["seed"]),
            "plans": json.loads(metadata["plans"]),
            "stats": {},
        }
        for name, (group, key) in _ARRAYS.items():
            (state[group] if group else state)[key] = tensors[name]
    except (KeyError, ValueError) as error:
        raise ValueError(f"{path} is not a kakurenbo_hf hiding state: missing or bad field {error}") from error
    return state
