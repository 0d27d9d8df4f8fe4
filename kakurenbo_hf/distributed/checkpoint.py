"""Hiding state on disk: one safetensors file per checkpoint folder.

Arrays (statistics, the current hidden set, an order rule's RNG state) are stored as safetensors
tensors; plain values (format version, sizes, seed, the per-epoch plans) and a CRC-32 of every
array as JSON in the file's metadata. Loading never unpickles anything, and a file that is
truncated, not safetensors, or whose arrays do not match their checksums is refused with an error
that names it.

A per-batch strategy's per-process state (Selective Backprop's loss history) goes into one file
per rank, `kakurenbo_rank_state_<rank>.safetensors`, checksummed the same way.

A table sharded across P ranks (see `sharding.py`) is written by every rank as its own rows,
`kakurenbo_table_<rank>_of_<P>.safetensors` (its first and last sample in the metadata); the main
file then holds no statistics. Any rank reads any range of rows from either layout
(`load_table_rows`), so a run resumes on another number of processes; the reads go chunk by chunk
(checksums included), so a resumed rank never holds more than its own rows and a few MiB.
"""

from __future__ import annotations

import json
import os
import zlib

import numpy as np
from safetensors.numpy import save_file

from ..core.sharding import Shard, shard_of
from ..core.stats import SampleStats

HIDING_STATE_NAME = "kakurenbo_state.safetensors"
_READ_CHUNK = 1 << 22  # rows per read of a table array

# Arrays at the top level of the state; the groups' arrays are stored as "<group>_<name>".
_TOP_ARRAYS = ("hidden", "order_rng_state", "weights", "draws", "hidden_history", "hidden_history_recorded")
_REQUIRED_TOP = ("hidden",)  # the others are absent from files written before they existed
_GROUPS = ("stats", "strategy")  # held by the table's rank only (loaded with `with_stats`)


def _crc(array: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data)


def save_hiding_state(state: dict, folder: str) -> str:
    """Write `HidingEngine.state_dict()` to `folder/kakurenbo_state.safetensors`; returns the path."""
    os.makedirs(folder, exist_ok=True)
    tensors = {key: np.ascontiguousarray(state[key]) for key in _TOP_ARRAYS if key in state}
    shards = int(state.get("table_shards", 1))
    for group in _GROUPS:
        if group == "stats" and shards > 1:
            continue  # every rank writes its rows (`save_table_shard`)
        for key, array in (state.get(group) or {}).items():
            tensors[f"{group}_{key}"] = np.ascontiguousarray(array)
    metadata = {
        "format_version": str(state["format_version"]),
        "num_samples": str(state["num_samples"]),
        "seed": str(state["seed"]),
        "plans": json.dumps(state["plans"]),
        "table_shards": str(shards),
        "checksums": json.dumps({name: _crc(array) for name, array in tensors.items()}),
    }
    path = os.path.join(folder, HIDING_STATE_NAME)
    save_file(tensors, path, metadata=metadata)
    return path


def table_shard_name(rank: int, num_ranks: int) -> str:
    return f"kakurenbo_table_{rank}_of_{num_ranks}.safetensors"


def save_table_shard(stats_state: dict[str, np.ndarray], shard: Shard, folder: str) -> str:
    """Write this rank's rows of a sharded table (`SampleStats.state_dict()`); returns the path."""
    os.makedirs(folder, exist_ok=True)
    tensors = {name: np.ascontiguousarray(array) for name, array in stats_state.items()}
    metadata = {"start": str(shard.start), "stop": str(shard.stop), "num_samples": str(shard.num_samples),
                "checksums": json.dumps({name: _crc(array) for name, array in tensors.items()})}
    path = os.path.join(folder, table_shard_name(shard.rank, shard.num_ranks))
    save_file(tensors, path, metadata=metadata)
    return path


def load_table_rows(folder: str, start: int, stop: int) -> dict[str, np.ndarray]:
    """The statistics of samples [start, stop) from a checkpoint, whole or sharded.

    Every array a range touches is read whole, chunk by chunk, to check its checksum; only the
    range's rows are kept. Raises `ValueError` naming the file if one is missing, unreadable or
    corrupt.
    """
    from safetensors import safe_open

    main_path = os.path.join(folder, HIDING_STATE_NAME)
    try:
        with safe_open(main_path, framework="numpy") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:
        raise ValueError(f"{main_path} cannot be read as a kakurenbo_hf hiding state ({type(error).__name__}: "
                         f"{error}); the file is truncated or corrupt.") from error
    num_samples, shards = int(metadata["num_samples"]), int(metadata.get("table_shards", 1))
    if not 0 <= start <= stop <= num_samples:
        raise ValueError(f"rows [{start}, {stop}) are outside the saved table of {num_samples} samples")
    if shards <= 1:
        sources = [(main_path, "stats_", 0)]
    else:
        saved = [shard_of(num_samples, shards, rank) for rank in range(shards)]
        sources = [(os.path.join(folder, table_shard_name(shard.rank, shards)), "", shard.start)
                   for shard in saved if shard.start < stop and start < shard.stop]
    out = SampleStats(stop - start, start=start).state_dict()  # every row is overwritten below
    for path, prefix, first in sources:
        if not os.path.isfile(path):
            raise ValueError(f"{path} is missing: the checkpoint's statistics table was saved in {shards} parts")
        try:
            with safe_open(path, framework="numpy") as handle:
                checksums = json.loads((handle.metadata() or {})["checksums"])
                for name, rows in out.items():
                    _copy_rows(handle, prefix + name, first, start, rows, checksums)
        except Exception as error:  # safetensors raises its own error types, without the path
            raise ValueError(f"{path}: the statistics cannot be read ({type(error).__name__}: {error}); the file is "
                             "truncated or corrupt. Resume from another checkpoint.") from error
    return out


def _copy_rows(handle, key: str, first: int, start: int, rows: np.ndarray, checksums: dict) -> None:
    """Copy the rows of array `key` (sample `first` at its row 0) that fall in `rows` (sample `start` at
    row 0), reading the array in chunks and checking its checksum on the way."""
    column = handle.get_slice(key)
    length = column.get_shape()[0]
    crc = 0
    for offset in range(0, length, _READ_CHUNK):
        chunk = column[offset : min(length, offset + _READ_CHUNK)]
        crc = zlib.crc32(np.ascontiguousarray(chunk).view(np.uint8).reshape(-1).data, crc)
        low, high = max(start, first + offset), min(start + rows.shape[0], first + offset + chunk.shape[0])
        if low < high:
            rows[low - start : high - start] = chunk[low - first - offset : high - first - offset]
    if key in checksums and crc != int(checksums[key]):
        raise ValueError(f"array {key!r} does not match its checksum")


def load_hiding_state(folder: str, with_stats: bool = True, rows: tuple[int, int] | None = None) -> dict | None:
    """Read the hiding state of a checkpoint folder, or None if it has none (a plain Trainer's).

    `with_stats=False` skips the statistics and strategy arrays (ranks that do not hold the table);
    `rows=(start, stop)` reads the statistics of those samples only (a rank's shard; no strategy
    arrays unless the range is the whole table). Whole or sharded on disk alike.
    Raises `ValueError` naming the file if it cannot be read or fails its checksums.
    """
    path = os.path.join(folder, HIDING_STATE_NAME)
    if not os.path.isfile(path):
        return None
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as handle:
            metadata = handle.metadata() or {}
            saved_samples = int(metadata.get("num_samples", -1))  # checked below
            if rows is None and with_stats:
                rows = (0, saved_samples)
            whole = rows is not None and tuple(rows) == (0, saved_samples)
            # The statistics come through `load_table_rows`; the strategy's arrays only with the whole table.
            tensors = {name: handle.get_tensor(name) for name in handle.keys()
                       if _group_of(name) is None or (whole and _group_of(name) == "strategy")}
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
        missing = [name for name in _REQUIRED_TOP if name not in tensors]
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
    if rows is not None:
        state["stats"] = load_table_rows(folder, *rows)
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
