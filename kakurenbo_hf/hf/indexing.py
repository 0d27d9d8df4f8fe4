"""Carry each row's index from the training set to `compute_loss`, without touching the data.

`IndexedDataset` wraps the user's map-style dataset (a `datasets.Dataset` included) and adds
the key `SAMPLE_INDEX_KEY` to every row it returns; batched reads go through the wrapped
dataset's `__getitems__`, so a `datasets.Dataset` still reads a batch in one Arrow call. No row
is copied or rewritten (no `add_column`, `map`, `select` or `filter`).

`IndexCollator` wraps the user's collator: it takes the key out of the rows before the user's
`collate_fn` sees them (a collator that builds a fresh dict would drop it; one that stacks every
column would choke on it) and puts a tensor of indices back into the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

# A name no real dataset uses (GLUE, for one, has an `idx` column).
SAMPLE_INDEX_KEY = "__kakurenbo_sample_index__"


class IndexedDataset(Dataset):
    """A view of `dataset` whose rows carry their index under `SAMPLE_INDEX_KEY`.

    Args:
        dataset: any map-style dataset whose rows are mappings (a `datasets.Dataset` included).

    `on_read_start` / `on_read_end`, if set, are called around every read (one row or a batch):
    the trainer uses them to keep the RNG state of random transforms for exact resume.

    Example::

        >>> IndexedDataset([{"x": 1}, {"x": 2}])[1]
        {'x': 2, '__kakurenbo_sample_index__': 1}
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

    def _with_index(self, row, index: int) -> dict:
        if not isinstance(row, Mapping):
            raise TypeError(
                "KakurenboTrainer needs dict-like training samples (a mapping of column to value) to tag them "
                f"with their index; the training set returned a {type(row).__name__}."
            )
        if SAMPLE_INDEX_KEY in row:
            raise ValueError(f"the training set already has a column named {SAMPLE_INDEX_KEY!r}")
        tagged = dict(row)
        tagged[SAMPLE_INDEX_KEY] = int(index)
        return tagged

    def __getitem__(self, index: int) -> dict:
        return self._with_index(self._read(self.dataset.__getitem__, index), index)

    def __getitems__(self, indices: list[int]) -> list[dict]:
        batched_read = getattr(self.dataset, "__getitems__", None)
        if batched_read is None:
            batched_read = lambda positions: [self.dataset[i] for i in positions]  # noqa: E731
        rows = self._read(batched_read, indices)
        return [self._with_index(row, i) for row, i in zip(rows, indices)]

    def __getattr__(self, name: str) -> Any:
        # Forward attributes like `column_names` or `features` that callers may look up.
        if name in ("dataset", "on_read_start", "on_read_end"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class IndexCollator:
    """Collate with the user's `collate_fn`, then add the rows' indices as a tensor.

    Rows without the key (evaluation batches) pass through untouched, so one collator can serve
    every dataloader of the Trainer.
    """

    def __init__(self, collate_fn: Callable):
        self.collate_fn = collate_fn

    def __call__(self, features: list) -> Any:
        if not features or not isinstance(features[0], Mapping) or SAMPLE_INDEX_KEY not in features[0]:
            return self.collate_fn(features)
        indices = [feature[SAMPLE_INDEX_KEY] for feature in features]
        stripped = [{k: v for k, v in feature.items() if k != SAMPLE_INDEX_KEY} for feature in features]
        batch = self.collate_fn(stripped)
        if not isinstance(batch, MutableMapping):
            raise TypeError(
                "KakurenboTrainer needs the data collator to return a dict-like batch; "
                f"got a {type(batch).__name__}."
            )
        batch[SAMPLE_INDEX_KEY] = torch.tensor(indices, dtype=torch.long)
        return batch
