"""Carry each row's index from the training set to `compute_loss`, without touching the data.

`IndexedDataset` wraps the user's map-style dataset (a `datasets.Dataset` included). A batched read
(`__getitems__`, what the DataLoader's fetcher calls) goes through the wrapped dataset's own
`__getitems__`, so a `datasets.Dataset` still reads a batch in one Arrow call, and returns the
rows exactly as the wrapped dataset made them, in an `IndexedRows` list that carries the batch's
indices. No row is copied, rewritten or tagged (no `add_column`, `map`, `select` or `filter`).

`IndexCollator` wraps the user's collator: it hands the user's `collate_fn` those very rows and
adds one tensor of indices to the batch it returns. The work per batch does not grow with the
number of rows beyond building that tensor.

The DataLoader's fetcher calls `dataset.__getitems__(indices)` and then `collate_fn(rows)` in the
same thread (the main process, or a worker: rows collated inside workers work the same way), so
`IndexCollator` must be the outermost collator: a wrapper that rebuilds the list would lose the
indices. The trainer puts transformers' column-removing wrapper (`RemoveColumnsCollator`) inside it
(`KakurenboMixin._get_collator_with_removed_columns`).

A single-row read (`dataset[i]`, not the batched hot path) returns a tagged copy of the row; the
collator takes the key out of such rows before the user's `collate_fn` sees them.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

# A name no real dataset uses (GLUE, for one, has an `idx` column).
SAMPLE_INDEX_KEY = "__kakurenbo_sample_index__"


class IndexedRows(list):
    """The rows of one batched read, as the wrapped dataset returned them, and their indices.

    A plain `list` to any collator (`features[0]`, iteration, `len`); `sample_indices` holds the
    dataset index of each row, in order.
    """

    __slots__ = ("sample_indices",)

    def __init__(self, rows, sample_indices):
        super().__init__(rows)
        self.sample_indices = sample_indices

    def __reduce__(self):  # pickles (a worker handing rows back uncollated) as what it is
        return (IndexedRows, (list(self), self.sample_indices))


def _check_row(row) -> None:
    if not isinstance(row, Mapping):
        raise TypeError(
            "KakurenboTrainer needs dict-like training samples (a mapping of column to value) to tag them "
            f"with their index; the training set returned a {type(row).__name__}."
        )
    if SAMPLE_INDEX_KEY in row:
        raise ValueError(f"the training set already has a column named {SAMPLE_INDEX_KEY!r}")


class IndexedDataset(Dataset):
    """A view of `dataset` whose reads carry each row's index.

    Args:
        dataset: any map-style dataset whose rows are mappings (a `datasets.Dataset` included).

    `__getitems__(indices)` returns the wrapped dataset's rows untouched, as an `IndexedRows` list
    whose `sample_indices` are `indices`; `IndexCollator` puts them into the batch. `dataset[i]`
    returns a copy of row `i` with its index under `SAMPLE_INDEX_KEY`.

    `on_read_start` / `on_read_end`, if set, are called around every read (one row or a batch):
    the trainer uses them to keep the RNG state of random transforms for exact resume.

    Example::

        >>> IndexedDataset([{"x": 1}, {"x": 2}])[1]
        {'x': 2, '__kakurenbo_sample_index__': 1}
        >>> rows = IndexedDataset([{"x": 1}, {"x": 2}]).__getitems__([1, 0])
        >>> rows, rows.sample_indices
        ([{'x': 2}, {'x': 1}], [1, 0])
    """

    def __init__(self, dataset):
        self.dataset = dataset
        self.on_read_start: Callable[[], None] | None = None
        self.on_read_end: Callable[[], None] | None = None

    def _read(self, read, *args):
        if self.on_read_start is not None:
            self.on_read_start()
        result = read(*args)
        if self.on_read_end is not None:
            self.on_read_end()
        return result

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        row = self._read(self.dataset.__getitem__, index)
        _check_row(row)
        tagged = dict(row)
        tagged[SAMPLE_INDEX_KEY] = int(index)
        return tagged

    def __getitems__(self, indices: list[int]) -> IndexedRows:
        batched_read = getattr(self.dataset, "__getitems__", None)
        if batched_read is None:
            batched_read = self._read_one_by_one
        rows = IndexedRows(self._read(batched_read, indices), indices)
        if len(rows) != len(indices):
            raise ValueError(f"the training set returned {len(rows)} rows for {len(indices)} indices")
        if rows:
            _check_row(rows[0])  # rows of one dataset share their type and columns
        return rows

    def _read_one_by_one(self, indices):
        dataset = self.dataset
        return [dataset[i] for i in indices]

    def __getattr__(self, name: str) -> Any:
        # Forward attributes like `column_names` or `features` that callers may look up.
        if name in ("dataset", "on_read_start", "on_read_end"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class IndexCollator:
    """Collate with the user's `collate_fn`, then add the rows' indices as a tensor.

    Rows that carry no index (evaluation batches) pass through untouched, so one collator can serve
    every dataloader of the Trainer.
    """

    def __init__(self, collate_fn: Callable):
        self.collate_fn = collate_fn

    def __call__(self, features: list) -> Any:
        indices = getattr(features, "sample_indices", None)
        if indices is None and features and isinstance(features[0], Mapping) and SAMPLE_INDEX_KEY in features[0]:
            return self._collate_tagged(features)
        if indices is None or not features:
            return self.collate_fn(features)
        return self._with_indices(self.collate_fn(features), indices)

    def _collate_tagged(self, features: list) -> Any:
        """Rows tagged one by one (`IndexedDataset[i]`): the key comes out before the user's collator."""
        indices = [feature[SAMPLE_INDEX_KEY] for feature in features]
        stripped = [{k: v for k, v in feature.items() if k != SAMPLE_INDEX_KEY} for feature in features]
        return self._with_indices(self.collate_fn(stripped), indices)

    @staticmethod
    def _with_indices(batch, indices) -> Any:
        if not isinstance(batch, MutableMapping):
            raise TypeError(
                "KakurenboTrainer needs the data collator to return a dict-like batch; "
                f"got a {type(batch).__name__}."
            )
        if torch.is_tensor(indices):
            batch[SAMPLE_INDEX_KEY] = indices.to(dtype=torch.long, copy=True)
        else:  # through numpy: a quarter of torch.tensor's time on a list of ints; always a copy
            batch[SAMPLE_INDEX_KEY] = torch.from_numpy(np.array(indices, dtype=np.int64))
        return batch
