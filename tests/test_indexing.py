"""`IndexedDataset` and `IndexCollator`: the row index reaches the batch, the data is untouched."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from datasets import Dataset as HFDataset
from torch.utils.data import DataLoader, Dataset
from torch.utils.data import default_collate

from kakurenbo_hf.hf.indexing import SAMPLE_INDEX_KEY, IndexCollator, IndexedDataset, IndexedRows
from kakurenbo_hf.core.sampler import HidingSampler


class ListDataset(Dataset):
    """A plain torch map-style dataset of dicts (no `__getitems__`)."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


class BatchedListDataset(ListDataset):
    """Has a batched read: it must be used, and `__getitem__` not called."""

    def __init__(self, rows):
        super().__init__(rows)
        self.batched_calls = []
        self.single_calls = 0

    def __getitem__(self, index):
        self.single_calls += 1
        return self.rows[index]

    def __getitems__(self, indices):
        self.batched_calls.append(list(indices))
        return [self.rows[i] for i in indices]


def make_rows(n=10):
    return [{"x": float(i) * 10, "label": i % 3} for i in range(n)]


def make_hf_dataset(n=12):
    return HFDataset.from_dict({"x": [float(i) for i in range(n)], "label": [i % 3 for i in range(n)]})


def fresh_dict_collate(features):
    """A user collate_fn that builds a fresh dict (it would drop any extra key)."""
    assert all(SAMPLE_INDEX_KEY not in f for f in features), "the user's collator saw the index key"
    return {"x": torch.tensor([f["x"] for f in features]), "labels": torch.tensor([f["label"] for f in features])}


# --- IndexedDataset --------------------------------------------------------------------------


COMMON_COLUMNS = ("idx", "index", "id", "label", "labels", "sample_index", "__index_level_0__")


def make_common_columns_dataset(n=12, **extra_columns):
    """Every common column holds values that differ from the row position (reversed, shifted, strings)."""
    return HFDataset.from_dict({
        **extra_columns,
        "x": [float(i) for i in range(n)],
        "idx": list(range(n - 1, -1, -1)),
        "index": [100 + i for i in range(n)],
        "id": [f"row-{i}" for i in range(n)],
        "label": [i % 3 for i in range(n)],
        "labels": [(i + 1) % 3 for i in range(n)],
        "sample_index": [7] * n,
        "__index_level_0__": [-i for i in range(n)],
    })


def expected_row(i, n=12):
    return {"x": float(i), "idx": n - 1 - i, "index": 100 + i, "id": f"row-{i}", "label": i % 3,
            "labels": (i + 1) % 3, "sample_index": 7, "__index_level_0__": -i}


def test_common_column_names_survive_next_to_the_key():
    """Data sets with `idx` (GLUE), `index`, `id`, ... columns keep them intact; the key never collides."""
    ds = make_common_columns_dataset()
    assert SAMPLE_INDEX_KEY not in ds.column_names
    dataset = IndexedDataset(ds)
    assert dataset[4] == {**expected_row(4), SAMPLE_INDEX_KEY: 4}  # no ValueError about an existing column
    seen = []

    def passthrough(features):  # a collator that keeps every column it gets
        seen.extend(features)
        return {k: [f[k] for f in features] for k in features[0]}

    order = [5, 0, 11, 5]
    batch = IndexCollator(passthrough)(dataset.__getitems__(order))
    assert seen == [expected_row(i) for i in order]  # the user's collator sees the untouched columns
    assert set(batch) == {"x", *COMMON_COLUMNS, SAMPLE_INDEX_KEY}
    assert batch[SAMPLE_INDEX_KEY].tolist() == order
    assert batch["idx"] == [6, 11, 0, 6] and batch["index"] == [105, 100, 111, 105]
    assert batch["id"] == ["row-5", "row-0", "row-11", "row-5"] and batch["sample_index"] == [7] * 4


def test_trainer_train_dataloader_keeps_common_columns(tmp_path):
    """Through KakurenboTrainer (remove_unused_columns=False): every column reaches the user's collator
    with its own values, and each batch's indices are the rows' positions."""
    from helpers import make_vit

    from kakurenbo_hf import KakurenboTrainer, KakurenboTrainingArguments

    n = 12
    pixels = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((n, 3, 16, 16), dtype=np.float32)
    ds = make_common_columns_dataset(n, pixel_values=pixels)
    seen = []

    def collate(features):
        seen.extend(features)
        return {"pixel_values": torch.stack([torch.as_tensor(f["pixel_values"]) for f in features]),
                "labels": torch.tensor([f["labels"] for f in features])}

    args = KakurenboTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4,
                                      remove_unused_columns=False, report_to="none", use_cpu=True)
    trainer = KakurenboTrainer(model=make_vit(num_classes=3), args=args, train_dataset=ds.with_format("numpy"),
                               data_collator=collate)
    loader = trainer.get_train_dataloader()
    seen.clear()  # drop the rows of the trainer's first-batch check
    batches = list(loader)
    indices = torch.cat([b[SAMPLE_INDEX_KEY] for b in batches]).tolist()
    assert sorted(indices) == list(range(n))
    assert len(seen) == n
    for feature, i in zip(seen, indices):
        assert set(feature) == {"x", "pixel_values", *COMMON_COLUMNS}
        assert {k: feature[k].item() if hasattr(feature[k], "item") else feature[k] for k in expected_row(i)} == expected_row(i)
        assert float(feature["pixel_values"][0, 0, 0]) == float(i)
    for b in batches:  # the batch's data matches its indices
        assert b["pixel_values"][:, 0, 0, 0].tolist() == [float(i) for i in b[SAMPLE_INDEX_KEY].tolist()]


def test_rows_carry_their_index_list_dataset():
    rows = make_rows()
    dataset = IndexedDataset(ListDataset(rows))
    assert len(dataset) == 10
    for i in (0, 3, 9):
        assert dataset[i] == {**rows[i], SAMPLE_INDEX_KEY: i}
    batch = dataset.__getitems__([7, 2, 2])
    assert isinstance(batch, IndexedRows) and batch.sample_indices == [7, 2, 2]
    assert [r["x"] for r in batch] == [70.0, 20.0, 20.0]
    assert all(got is rows[i] for got, i in zip(batch, [7, 2, 2]))  # the rows themselves, no copies
    # the wrapped rows are not modified
    assert all(SAMPLE_INDEX_KEY not in row for row in rows)


def test_rows_carry_their_index_hf_dataset():
    ds = make_hf_dataset()
    dataset = IndexedDataset(ds)
    assert len(dataset) == len(ds)
    assert dataset[5] == {"x": 5.0, "label": 2, SAMPLE_INDEX_KEY: 5}
    rows = dataset.__getitems__([11, 0, 4])
    assert rows == [{"x": float(i), "label": i % 3} for i in (11, 0, 4)]
    assert rows.sample_indices == [11, 0, 4]
    assert type(dataset[5][SAMPLE_INDEX_KEY]) is int
    # attributes of the wrapped dataset are forwarded
    assert dataset.column_names == ["x", "label"]
    assert dataset.features == ds.features


def test_batched_read_goes_through_wrapped_getitems():
    inner = BatchedListDataset(make_rows())
    dataset = IndexedDataset(inner)
    rows = dataset.__getitems__([4, 1, 8])
    assert inner.batched_calls == [[4, 1, 8]]
    assert inner.single_calls == 0
    assert rows.sample_indices == [4, 1, 8]
    assert all(got is inner.rows[i] for got, i in zip(rows, [4, 1, 8]))


def test_hf_dataset_batched_read_is_used(monkeypatch):
    ds = make_hf_dataset()
    calls = []
    original = HFDataset.__getitems__

    def spy(self, keys):
        calls.append(list(keys))
        return original(self, keys)

    monkeypatch.setattr(HFDataset, "__getitems__", spy)
    loader = DataLoader(IndexedDataset(ds), batch_size=4, shuffle=False, collate_fn=IndexCollator(fresh_dict_collate))
    batches = list(loader)
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert torch.equal(torch.cat([b[SAMPLE_INDEX_KEY] for b in batches]), torch.arange(12))


def test_hf_dataset_is_not_modified():
    ds = make_hf_dataset()
    fingerprint, cache_files, columns = ds._fingerprint, list(ds.cache_files), list(ds.column_names)
    num_rows = ds.num_rows
    table_id = id(ds.data)
    dataset = IndexedDataset(ds)
    for _ in DataLoader(dataset, batch_size=5, collate_fn=IndexCollator(fresh_dict_collate)):
        pass
    dataset[3]
    assert ds._fingerprint == fingerprint
    assert list(ds.cache_files) == cache_files
    assert ds.column_names == columns and SAMPLE_INDEX_KEY not in ds.column_names
    assert ds.num_rows == num_rows
    assert id(ds.data) == table_id
    assert dataset.dataset is ds  # a view, not a copy


def test_torch_formatted_hf_dataset():
    ds = make_hf_dataset().with_format("torch")
    row = IndexedDataset(ds)[2]
    assert row[SAMPLE_INDEX_KEY] == 2
    assert torch.is_tensor(row["x"]) and row["x"].item() == 2.0


def test_non_dict_rows_raise_type_error():
    dataset = IndexedDataset([(1, 2), (3, 4)])
    with pytest.raises(TypeError, match="tuple"):
        dataset[0]
    with pytest.raises(TypeError):
        dataset.__getitems__([0, 1])
    with pytest.raises(TypeError):
        IndexedDataset(ListDataset([torch.zeros(2)]))[0]


def test_existing_key_raises_value_error():
    dataset = IndexedDataset([{"x": 1, SAMPLE_INDEX_KEY: 0}])
    with pytest.raises(ValueError, match=SAMPLE_INDEX_KEY):
        dataset[0]


@pytest.mark.parametrize("make", [lambda: ListDataset(make_rows()), make_hf_dataset])
def test_pickling_for_workers(make):
    dataset = IndexedDataset(make())
    clone = pickle.loads(pickle.dumps(dataset))
    assert len(clone) == len(dataset)
    assert clone[3] == dataset[3]
    assert clone.__getitems__([1, 2]) == dataset.__getitems__([1, 2])


def test_missing_attribute_raises_attribute_error():
    dataset = IndexedDataset(ListDataset(make_rows()))
    with pytest.raises(AttributeError):
        dataset.no_such_attribute
    assert not hasattr(dataset, "no_such_attribute")


# --- IndexCollator ---------------------------------------------------------------------------


def test_collator_passes_indices_as_long_tensor():
    dataset = IndexedDataset(ListDataset(make_rows()))
    collate = IndexCollator(fresh_dict_collate)
    batch = collate(dataset.__getitems__([5, 0, 9]))
    assert batch[SAMPLE_INDEX_KEY].dtype == torch.long
    assert batch[SAMPLE_INDEX_KEY].tolist() == [5, 0, 9]
    assert batch["x"].tolist() == [50.0, 0.0, 90.0]
    assert batch["labels"].tolist() == [2, 0, 0]


def test_collator_with_default_collate():
    dataset = IndexedDataset(ListDataset(make_rows()))
    batch = IndexCollator(default_collate)(dataset.__getitems__([1, 2]))
    assert batch[SAMPLE_INDEX_KEY].tolist() == [1, 2]
    assert batch["label"].tolist() == [1, 2]
    assert set(batch) == {"x", "label", SAMPLE_INDEX_KEY}


def test_collator_does_not_modify_features():
    rows = make_rows()
    features = IndexedDataset(ListDataset(rows)).__getitems__([0, 1])
    IndexCollator(fresh_dict_collate)(features)
    assert features == rows[:2] and features.sample_indices == [0, 1]
    assert all(SAMPLE_INDEX_KEY not in f for f in rows)


def test_rows_without_key_pass_through():
    seen = []

    def collate(features):
        seen.append(features)
        return {"n": len(features)}

    rows = make_rows(3)
    batch = IndexCollator(collate)(rows)
    assert batch == {"n": 3}
    assert seen[0] is rows
    assert IndexCollator(lambda f: ("tuple", len(f)))([(1,), (2,)]) == ("tuple", 2)  # non-dict eval rows too
    assert IndexCollator(lambda f: f)([]) == []


def test_non_mapping_batch_raises_type_error():
    features = IndexedDataset(ListDataset(make_rows())).__getitems__([0, 1])
    with pytest.raises(TypeError, match="list"):
        IndexCollator(lambda rows: [r["x"] for r in rows])(features)


def test_dataloader_with_hiding_sampler():
    n = 20
    sampler = HidingSampler(n, seed=3)
    sampler.set_epoch(1)
    hidden = np.zeros(n, dtype=bool)
    hidden[[2, 3, 11]] = True
    sampler.set_hidden(hidden)
    loader = DataLoader(IndexedDataset(make_hf_dataset(n)), batch_size=4, sampler=sampler,
                        collate_fn=IndexCollator(fresh_dict_collate))
    batches = list(loader)
    indices = torch.cat([b[SAMPLE_INDEX_KEY] for b in batches]).tolist()
    assert indices == list(sampler)
    for b in batches:  # the data of each row matches its index
        assert b["x"].tolist() == [float(i) for i in b[SAMPLE_INDEX_KEY].tolist()]


# --- no work per row: the batch's rows reach the user's collator as the dataset made them -------------


class RecordingCollate:
    """A user collate_fn that keeps what it was handed, indexes `features[0]` and iterates."""

    def __init__(self):
        self.calls = []

    def __call__(self, features):
        self.calls.append(features)
        keys = [k for k in features[0] if k != "label"]
        batch = {k: torch.tensor([f[k] for f in features]) for k in keys}
        batch["labels"] = torch.tensor([f["label"] for f in features])
        return batch


@pytest.mark.parametrize("make_inner", [list, ListDataset, BatchedListDataset])
def test_collator_receives_the_dataset_rows_themselves(make_inner):
    """No copy, no stripped dict: the user's collate_fn gets the very list and row objects of the read."""
    rows = make_rows(12)
    dataset = IndexedDataset(make_inner(rows))
    collate = RecordingCollate()
    order = [9, 3, 3, 0]
    read = dataset.__getitems__(order)
    batch = IndexCollator(collate)(read)
    assert collate.calls[0] is read
    assert len(read) == 4 and all(got is rows[i] for got, i in zip(read, order))
    assert all(SAMPLE_INDEX_KEY not in row for row in rows)
    assert batch[SAMPLE_INDEX_KEY].tolist() == order and batch[SAMPLE_INDEX_KEY].dtype == torch.long
    assert batch["x"].tolist() == [rows[i]["x"] for i in order]


def test_hf_rows_reach_the_collator_uncopied():
    ds = make_hf_dataset()
    dataset = IndexedDataset(ds)
    made = []
    original = HFDataset.__getitems__

    def spy(keys):
        rows = original(ds, keys)
        made.append(list(rows))
        return rows

    ds.__getitems__ = spy  # instance attribute: this dataset only
    collate = RecordingCollate()
    batch = IndexCollator(collate)(dataset.__getitems__([3, 7, 1]))
    assert len(made) == 1 and all(a is b for a, b in zip(collate.calls[0], made[0]))
    assert batch[SAMPLE_INDEX_KEY].tolist() == [3, 7, 1] and batch["x"].tolist() == [3.0, 7.0, 1.0]


def test_read_hooks_run_once_around_each_read():
    events = []
    inner = BatchedListDataset(make_rows())
    original = inner.__getitems__
    inner.__getitems__ = lambda indices: (events.append("read"), original(indices))[1]
    dataset = IndexedDataset(inner)
    dataset.on_read_start = lambda: events.append("start")
    dataset.on_read_end = lambda: events.append("end")
    dataset.__getitems__([1, 2, 3])
    assert events == ["start", "read", "end"]
    events.clear()
    dataset[4]
    assert events == ["start", "end"]


def test_existing_key_raises_value_error_in_batched_read():
    dataset = IndexedDataset(make_hf_dataset().add_column(SAMPLE_INDEX_KEY, list(range(12))))
    with pytest.raises(ValueError, match=SAMPLE_INDEX_KEY):
        dataset.__getitems__([0, 1])


def test_wrong_number_of_rows_raises():
    class Short(ListDataset):
        def __getitems__(self, indices):
            return self.rows[: len(indices) - 1]

    with pytest.raises(ValueError, match="3 rows for 4 indices"):
        IndexedDataset(Short(make_rows())).__getitems__([0, 1, 2, 3])


def test_indices_as_arrays_become_a_long_tensor():
    dataset = IndexedDataset(ListDataset(make_rows()))
    for indices in (np.array([4, 2]), torch.tensor([4, 2], dtype=torch.int32)):
        batch = IndexCollator(fresh_dict_collate)(dataset.__getitems__(indices))
        assert batch[SAMPLE_INDEX_KEY].dtype == torch.long and batch[SAMPLE_INDEX_KEY].tolist() == [4, 2]
        assert batch["x"].tolist() == [40.0, 20.0]


def test_single_row_reads_are_tagged_copies_and_collate():
    """`dataset[i]` (not the batched path) tags a copy; a list of them still collates with its indices."""
    rows = make_rows()
    dataset = IndexedDataset(ListDataset(rows))
    features = [dataset[i] for i in (6, 1)]
    assert features[0] is not rows[6] and SAMPLE_INDEX_KEY not in rows[6]
    batch = IndexCollator(fresh_dict_collate)(features)  # fresh_dict_collate asserts it never sees the key
    assert batch[SAMPLE_INDEX_KEY].tolist() == [6, 1] and batch["x"].tolist() == [60.0, 10.0]
    assert all(SAMPLE_INDEX_KEY in f for f in features)  # the caller's rows are left as they were


def test_indexed_rows_pickle():
    rows = IndexedDataset(ListDataset(make_rows())).__getitems__([2, 5])
    clone = pickle.loads(pickle.dumps(rows))
    assert type(clone) is IndexedRows and clone == rows and clone.sample_indices == [2, 5]


def test_transformers_default_data_collator():
    from transformers import default_data_collator

    dataset = IndexedDataset(make_hf_dataset())
    batch = IndexCollator(default_data_collator)(dataset.__getitems__([8, 2]))
    assert batch["labels"].tolist() == [2, 2] and batch["x"].tolist() == [8.0, 2.0]
    assert batch[SAMPLE_INDEX_KEY].tolist() == [8, 2]


# --- transformers' RemoveColumnsCollator, which rebuilds every row -------------------------------------


def _remove_columns_collator(collate, columns=("x", "label")):
    from transformers.trainer_utils import RemoveColumnsCollator

    # What the Trainer's _get_dataloader wraps around the collator of a dataset that is not a
    # `datasets.Dataset` when remove_unused_columns=True; KakurenboMixin puts it inside IndexCollator.
    return RemoveColumnsCollator(collate, signature_columns=[*columns, SAMPLE_INDEX_KEY])


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("make", [lambda n: ListDataset([{**r, "junk": "j"} for r in make_rows(n)]),
                                  lambda n: make_hf_dataset(n).add_column("junk", ["j"] * n)])
def test_dataloader_through_remove_columns_collator(make, num_workers):
    """A column-filtering wrapper inside IndexCollator filters, and the batches keep their indices (workers too)."""
    n = 23
    sampler = HidingSampler(n, seed=1)
    sampler.set_epoch(0)
    hidden = np.zeros(n, dtype=bool)
    hidden[[0, 5, 6]] = True
    sampler.set_hidden(hidden)
    seen_columns = set()

    def collate(features):
        seen_columns.update(*features)
        return fresh_dict_collate(features)

    loader = DataLoader(IndexedDataset(make(n)), batch_size=4, sampler=sampler, num_workers=num_workers,
                        collate_fn=IndexCollator(_remove_columns_collator(collate)))
    batches = list(loader)
    assert torch.cat([b[SAMPLE_INDEX_KEY] for b in batches]).tolist() == list(sampler)
    for b in batches:
        expected = [float(i) * (10 if isinstance(loader.dataset.dataset, ListDataset) else 1)
                    for i in b[SAMPLE_INDEX_KEY].tolist()]
        assert b["x"].tolist() == expected
    if num_workers == 0:
        assert seen_columns == {"x", "label"}  # the wrapper's filtering still applies


def test_a_wrapper_outside_the_index_collator_loses_the_indices():
    """Why the trainer puts the column-removing wrapper inside IndexCollator: outside, it rebuilds the rows
    into a plain list and the batch carries no indices (compute_loss then refuses the training batch)."""
    dataset = IndexedDataset(ListDataset(make_rows()))
    outside = _remove_columns_collator(IndexCollator(fresh_dict_collate))
    assert SAMPLE_INDEX_KEY not in outside(dataset.__getitems__([0, 1, 2]))
    inside = IndexCollator(_remove_columns_collator(fresh_dict_collate))
    assert inside(dataset.__getitems__([0, 1, 2]))[SAMPLE_INDEX_KEY].tolist() == [0, 1, 2]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_workers_collate_with_indices(num_workers):
    """Rows collated inside DataLoader workers (fresh-dict user collator, HF dataset)."""
    n = 30
    loader = DataLoader(IndexedDataset(make_hf_dataset(n)), batch_size=7, shuffle=True, num_workers=num_workers,
                        collate_fn=IndexCollator(fresh_dict_collate), generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert sorted(torch.cat([b[SAMPLE_INDEX_KEY] for b in batches]).tolist()) == list(range(n))
    for b in batches:
        assert b["x"].tolist() == [float(i) for i in b[SAMPLE_INDEX_KEY].tolist()]


@pytest.mark.parametrize("hf", [True, False])
def test_trainer_train_dataloader_with_remove_unused_columns(tmp_path, hf):
    """The Trainer's default (remove_unused_columns=True): unused columns are removed (on the dataset for a
    `datasets.Dataset`, by RemoveColumnsCollator inside IndexCollator otherwise) and the batches carry the
    right indices; a `datasets.Dataset`'s rows reach the collator without a per-row wrapper."""
    from helpers import make_vit

    from kakurenbo_hf import KakurenboTrainer, KakurenboTrainingArguments

    n = 10
    pixels = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((n, 3, 16, 16), dtype=np.float32)
    if hf:
        ds = HFDataset.from_dict({"pixel_values": pixels, "labels": [i % 3 for i in range(n)], "junk": ["j"] * n})
        ds = ds.with_format("torch")
    else:
        ds = ListDataset([{"pixel_values": torch.from_numpy(pixels[i]), "labels": i % 3, "junk": "j"} for i in range(n)])
    args = KakurenboTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4,
                                      report_to="none", use_cpu=True)
    trainer = KakurenboTrainer(model=make_vit(num_classes=3), args=args, train_dataset=ds)
    loader = trainer.get_train_dataloader()
    assert isinstance(loader.collate_fn, IndexCollator)
    assert (type(loader.collate_fn.collate_fn).__name__ == "RemoveColumnsCollator") is not hf
    batches = list(loader)
    assert sorted(torch.cat([b[SAMPLE_INDEX_KEY] for b in batches]).tolist()) == list(range(n))
    for b in batches:
        assert "junk" not in b
        assert b["pixel_values"][:, 0, 0, 0].tolist() == [float(i) for i in b[SAMPLE_INDEX_KEY].tolist()]
        assert b["labels"].tolist() == [i % 3 for i in b[SAMPLE_INDEX_KEY].tolist()]
