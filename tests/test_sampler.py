"""`HidingSampler`: global, seeded, idempotent, and shardable the way accelerate shards it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler, RandomSampler

from kakurenbo_hf.core import sampler as sampler_module
from kakurenbo_hf.core.permutation import KeyedPermutation
from kakurenbo_hf.core.sampler import HidingSampler


def random_mask(n, fraction, seed=0):
    return np.random.default_rng(seed).random(n) < fraction


def plain_trainer_order(n, seed, epoch):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()


def test_nothing_hidden_equals_plain_trainer_order():
    for n, seed, epoch in [(1, 0, 0), (10, 0, 0), (100, 42, 3), (257, 7, 11)]:
        sampler = HidingSampler(n, seed=seed)
        sampler.set_epoch(epoch)
        assert list(sampler) == plain_trainer_order(n, seed, epoch)
        assert len(sampler) == n


def test_hidden_removed_and_visible_set_shuffled_by_seed_and_epoch():
    n, seed, epoch = 200, 3, 5
    hidden = random_mask(n, 0.3)
    sampler = HidingSampler(n, seed=seed)
    sampler.set_epoch(epoch)
    sampler.set_hidden(hidden)
    order = list(sampler)
    visible = np.flatnonzero(~hidden)
    permutation = KeyedPermutation(len(visible), key=(seed, epoch, sampler_module._ORDER_KEY))
    expected = visible[permutation(np.arange(len(visible)))].tolist()
    assert order == expected
    assert sampler.epoch_order().tolist() == expected  # materialised or lazy: one order
    assert len(sampler) == len(order) == int((~hidden).sum()) == sampler.num_visible
    assert not any(hidden[i] for i in order)
    assert sorted(order) == np.flatnonzero(~hidden).tolist()  # each visible index exactly once
    assert all(type(i) is int for i in order)


def test_two_ranks_agree():
    n, hidden = 150, random_mask(150, 0.25, seed=1)
    ranks = [HidingSampler(n, seed=9) for _ in range(2)]
    for epoch in range(4):
        for sampler in ranks:
            sampler.set_epoch(epoch)
            sampler.set_hidden(hidden)
        assert list(ranks[0]) == list(ranks[1])
        assert len(ranks[0]) == len(ranks[1])


def test_epochs_differ_and_global_rng_untouched():
    sampler = HidingSampler(100, seed=0)
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert torch.equal(torch.rand(1), expected_draw)
    assert orders[0] != orders[1] != orders[2]
    assert all(sorted(o) == list(range(100)) for o in orders)


def test_set_epoch_is_idempotent():
    sampler = HidingSampler(64, seed=1)
    sampler.set_hidden(random_mask(64, 0.2))
    sampler.set_epoch(2)
    first = list(sampler)
    sampler.set_epoch(2)  # Trainer and accelerate both call it
    assert list(sampler) == first
    assert list(sampler) == first  # iterating twice gives the same order
    sampler.set_epoch(3)
    sampler.set_epoch(2)
    assert list(sampler) == first


def test_set_hidden_takes_effect_and_copies():
    sampler = HidingSampler(20, seed=0)
    sampler.set_epoch(1)
    full = list(sampler)
    mask = np.zeros(20, dtype=bool)
    mask[[0, 5, 7]] = True
    sampler.set_hidden(mask)
    shuffled = list(sampler)
    assert sorted(shuffled) == [i for i in range(20) if i not in (0, 5, 7)] and shuffled != sorted(shuffled)
    mask[:] = True  # later edits of the caller's array do not leak in
    assert len(sampler) == 17
    sampler.set_hidden([0] * 20)  # any array-like of booleans
    assert list(sampler) == full


def test_set_hidden_validates_shape():
    sampler = HidingSampler(10)
    with pytest.raises(ValueError, match=r"\(10,\)"):
        sampler.set_hidden(np.zeros(9, dtype=bool))
    with pytest.raises(ValueError):
        sampler.set_hidden(np.zeros((10, 1), dtype=bool))
    with pytest.raises(ValueError):
        HidingSampler(0)


def test_everything_but_one_hidden():
    sampler = HidingSampler(5)
    mask = np.ones(5, dtype=bool)
    mask[3] = False
    sampler.set_hidden(mask)
    assert list(sampler) == [3] and len(sampler) == 1


def test_not_a_random_sampler_and_no_generator_attribute():
    sampler = HidingSampler(10, seed=0)
    sampler.set_epoch(1)
    list(sampler)
    assert not isinstance(sampler, RandomSampler)
    assert not hasattr(sampler, "generator")
    assert isinstance(sampler, torch.utils.data.Sampler)


@pytest.mark.parametrize("n, batch_size, fraction", [(100, 8, 0.3), (97, 5, 0.2), (64, 4, 0.0), (33, 16, 0.5)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_accelerate_sharding_splits_the_visible_set(n, batch_size, fraction, drop_last):
    hidden = random_mask(n, fraction, seed=n)
    visible = set(np.flatnonzero(~hidden).tolist())

    def rank_batches(process_index, even_batches):
        sampler = HidingSampler(n, seed=5)  # one sampler per rank, as in a real run
        sampler.set_epoch(2)
        sampler.set_hidden(hidden)
        batches = BatchSampler(sampler, batch_size=batch_size, drop_last=drop_last)
        shard = BatchSamplerShard(batches, num_processes=2, process_index=process_index, even_batches=even_batches)
        return list(shard), list(batches)

    # without padding: batch k goes to rank k % 2, shares are disjoint and cover the visible set
    (rank0, global_batches), (rank1, _) = rank_batches(0, False), rank_batches(1, False)
    if drop_last:  # accelerate also drops a last round that does not reach every rank
        global_batches = global_batches[: len(global_batches) // 2 * 2]
    assert rank0 == global_batches[0::2]
    assert rank1 == global_batches[1::2]
    share0 = [i for b in rank0 for i in b]
    share1 = [i for b in rank1 for i in b]
    assert not set(share0) & set(share1)
    assert len(share0) + len(share1) == len(set(share0) | set(share1))
    covered = set(share0) | set(share1)
    if drop_last:
        assert covered <= visible
        assert len(covered) == (len(visible) // (2 * batch_size)) * 2 * batch_size
    else:
        assert covered == visible

    # with even_batches (the default), the tail is padded with repeated visible indices only
    (even0, _), (even1, _) = rank_batches(0, True), rank_batches(1, True)
    assert len(even0) == len(even1)
    flat0 = [i for b in even0 for i in b]
    flat1 = [i for b in even1 for i in b]
    assert set(flat0) | set(flat1) == covered
    assert set(flat0 + flat1) <= visible
    padding = len(flat0) + len(flat1) - len(covered)
    assert padding >= 0
    assert padding < 2 * batch_size


def test_hidden_bits_give_the_same_epoch_as_the_mask():
    rng = np.random.default_rng(3)
    mask = rng.random(1001) < 0.4
    a, b = HidingSampler(1001, seed=5), HidingSampler(1001, seed=5)
    a.set_hidden(mask)
    b.set_hidden_bits(np.packbits(mask))
    for sampler in (a, b):
        sampler.set_epoch(2)
    assert list(a) == list(b) and len(a) == len(b) == 1001 - mask.sum()
    assert np.array_equal(b.hidden, mask)
    with pytest.raises(ValueError, match="bytes"):
        b.set_hidden_bits(np.zeros(3, dtype=np.uint8))


def test_resume_start_continues_the_lazy_order():
    """After a resume mid-epoch the iteration continues exactly where the order was."""
    hidden = random_mask(1000, 0.4, seed=2)
    full = HidingSampler(1000, seed=5)
    full.set_epoch(2)
    full.set_hidden(hidden)
    order = list(full)
    resumed = HidingSampler(1000, seed=5)
    resumed.set_epoch(2)
    resumed.set_hidden(hidden)
    resumed.set_start(317)
    assert list(resumed) == order[317:]
    assert len(resumed) == len(order) - 317


def test_multiset_epoch_yields_each_draw_once():
    sampler = HidingSampler(20, seed=1)
    hidden = np.ones(20, dtype=bool)
    draws = np.array([3, 3, 7, 0, 19, 7, 7])
    hidden[draws] = False
    sampler.set_epoch(1)
    sampler.set_hidden(hidden)
    sampler.set_draws(draws)
    order = list(sampler)
    assert sorted(order) == sorted(draws.tolist()) and len(sampler) == 7
    sampler.set_hidden(hidden)  # a new hidden set clears the draws
    assert sorted(sampler) == [0, 3, 7, 19]
