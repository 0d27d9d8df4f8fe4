"""The statistics table split across ranks (`sharding.py`): the split itself, the sharded KAKURENBO
selection against the single-table rule, the sharded engine, and sharded checkpoints read back in
any layout. Ranks are threads here, meeting in a barrier-based collective; the 2-process tests
(`test_multiprocess.py::test_table_is_sharded_and_selects_as_one_table`) run the torch one."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from kakurenbo_hf.distributed.checkpoint import load_hiding_state, load_table_rows, save_hiding_state, save_table_shard
from kakurenbo_hf.core.config import KakurenboArguments
from kakurenbo_hf.core.engine import HidingEngine
from kakurenbo_hf.core.sharding import LocalCollective, owners, shard_of, whole_table
from kakurenbo_hf.core.stats import SampleStats
from kakurenbo_hf.strategies.kakurenbo import KakurenboStrategy, lowest_loss_mask


class ThreadGroup:
    """P threads acting as ranks: each collective is an all-gather through shared slots."""

    def __init__(self, num_ranks: int):
        self.num_ranks = num_ranks
        self.barrier = threading.Barrier(num_ranks, timeout=30)
        self.slots = [None] * num_ranks

    def run(self, fn):
        """fn(rank, collective) on every rank at once; their results in rank order."""
        results, errors = [None] * self.num_ranks, []

        def target(rank):
            try:
                results[rank] = fn(rank, ThreadCollective(self, rank))
            except BaseException as error:  # noqa: BLE001 - re-raised below
                errors.append(error)
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(rank,)) for rank in range(self.num_ranks)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return results


class ThreadCollective:
    def __init__(self, group: ThreadGroup, rank: int):
        self.group, self.rank, self.num_ranks = group, rank, group.num_ranks

    def _all_gather(self, value):
        group = self.group
        group.slots[self.rank] = value
        group.barrier.wait()
        values = list(group.slots)
        group.barrier.wait()
        return values

    def sum(self, values):
        return np.sum(self._all_gather(np.asarray(values)), axis=0)

    def gather(self, values):
        return np.stack(self._all_gather(np.asarray(values)))

    def gather_bits(self, local_bits, shard):
        parts = self._all_gather(np.asarray(local_bits, dtype=np.uint8))
        return np.concatenate(parts)[: (shard.num_samples + 7) // 8]


def _table(n: int, seed: int, ties: bool = False) -> SampleStats:
    rng = np.random.default_rng(seed)
    stats = SampleStats(n)
    loss = rng.integers(0, 5, n).astype(np.float32) if ties else rng.exponential(1.0, n).astype(np.float32)
    loss[rng.random(n) < 0.1] = np.inf  # unseen
    loss[rng.random(n) < 0.02] = np.nan  # diverged: sorts last
    stats.loss[:] = loss
    stats.confidence[:] = rng.random(n).astype(np.float16)
    stats.correct[:] = rng.random(n) < 0.8
    return stats


def _shard_stats(whole: SampleStats, shard) -> SampleStats:
    part = SampleStats(shard.size, start=shard.start)
    for name in ("loss", "confidence", "correct"):
        getattr(part, name)[:] = getattr(whole, name)[shard.start : shard.stop]
    return part


@pytest.mark.parametrize("n", [1, 5, 8, 9, 64, 100, 1001])
@pytest.mark.parametrize("num_ranks", [1, 2, 3, 7])
def test_shards_are_contiguous_byte_aligned_and_cover_the_table(n, num_ranks):
    shards = [shard_of(n, num_ranks, rank) for rank in range(num_ranks)]
    assert shards[0].start == 0 and shards[-1].stop == n
    for a, b in zip(shards, shards[1:]):
        assert a.stop == b.start
    assert all(shard.start % 8 == 0 or shard.size == 0 for shard in shards)
    assert max(shard.size for shard in shards) <= -(-n // num_ranks) + 7  # at most 7 rows over an even split
    index = np.arange(n)
    expected = np.concatenate([np.full(shard.size, shard.rank) for shard in shards])
    np.testing.assert_array_equal(owners(index, n, num_ranks), expected)


@pytest.mark.parametrize("num_ranks", [2, 3, 5])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k", [0, 1, 37, 500, 999, 1000, 1003])
def test_sharded_lowest_loss_mask_is_the_single_table_mask(num_ranks, ties, k):
    n = 1003
    whole = _table(n, seed=k + num_ranks, ties=ties)
    expected = lowest_loss_mask(whole.loss, k)
    assert expected.sum() == min(k, n)

    def rank_mask(rank, collective):
        shard = shard_of(n, num_ranks, rank)
        return lowest_loss_mask(whole.loss[shard.start : shard.stop].copy(), k, shard, collective)

    masks = ThreadGroup(num_ranks).run(rank_mask)
    np.testing.assert_array_equal(np.concatenate(masks), expected)


@pytest.mark.parametrize("num_ranks", [2, 4])
@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.9])
def test_sharded_kakurenbo_decision_is_the_single_table_decision(num_ranks, fraction):
    n = 777
    whole = _table(n, seed=int(fraction * 10) + num_ranks, ties=True)
    strategy = KakurenboStrategy(confidence_threshold=0.4)
    expected = strategy.select(whole, fraction, epoch=3)

    def rank_decision(rank, collective):
        shard = shard_of(n, num_ranks, rank)
        return strategy.select_shard(_shard_stats(whole, shard), fraction, 3, shard, collective)

    decisions = ThreadGroup(num_ranks).run(rank_decision)
    np.testing.assert_array_equal(np.concatenate([d.hidden for d in decisions]), expected.hidden)
    for decision in decisions:  # the counts are the whole table's on every rank
        assert (decision.num_hidden, decision.num_candidates, decision.moved_back) == (
            expected.num_hidden, expected.num_candidates, expected.moved_back)


def _engines_plan(n, num_ranks, whole, epoch, batch_size=None):
    arguments = KakurenboArguments(hiding_fraction=0.5, confidence_threshold=0.3)

    def plan(rank, collective):
        engine = HidingEngine(n, 4, arguments, shard=shard_of(n, num_ranks, rank), collective=collective)
        engine.stats.load_state_dict(_shard_stats(whole, engine.shard).state_dict())
        engine.plan_epoch(epoch)
        if batch_size:
            engine.avoid_last_batch_of_one(batch_size)
        return engine

    return ThreadGroup(num_ranks).run(plan)


def test_sharded_engines_plan_the_single_table_epoch():
    n = 301
    whole = _table(n, seed=4, ties=True)
    single = HidingEngine(n, 4, KakurenboArguments(hiding_fraction=0.5, confidence_threshold=0.3))
    single.stats.load_state_dict(whole.state_dict())
    single.plan_epoch(2)
    engines = _engines_plan(n, 3, whole, 2)
    for engine in engines:
        assert engine.sharded and engine.stats.num_samples < n
        np.testing.assert_array_equal(engine.hidden_bits, single.hidden_bits)
        assert engine.current_plan == single.current_plan


def test_sharded_last_batch_of_one_frees_the_same_sample():
    """The highest-loss hidden sample (lowest index among ties) over all shards, as on one table."""
    n = 301
    whole = _table(n, seed=9, ties=True)
    single = HidingEngine(n, 4, KakurenboArguments(hiding_fraction=0.5, confidence_threshold=0.3))
    single.stats.load_state_dict(whole.state_dict())
    plan = single.plan_epoch(2)
    batch_size = plan.num_trained - 1  # an epoch of num_trained samples ends with a batch of one
    before = single.hidden.copy()
    assert single.avoid_last_batch_of_one(batch_size)
    freed = np.flatnonzero(before & ~single.hidden)
    assert freed.size == 1
    losses = np.where(before, np.nan_to_num(whole.loss, nan=np.inf), -np.inf)
    assert freed[0] == np.flatnonzero(losses == losses.max())[0]
    for engine in _engines_plan(n, 4, whole, 2, batch_size=batch_size):
        np.testing.assert_array_equal(engine.hidden_bits, single.hidden_bits)
        assert engine.current_plan == single.current_plan


def test_only_shardable_strategies_shard():
    with pytest.raises(ValueError, match="whole table"):
        HidingEngine(100, 4, KakurenboArguments(hiding_strategy="ucb"), shard=shard_of(100, 2, 0),
                     collective=LocalCollective())
    whole = HidingEngine(100, 4, KakurenboArguments(), shard=whole_table(100))
    assert not whole.sharded and whole.stats.num_samples == 100


def test_a_subclass_that_changes_the_rule_is_not_sharded():
    """A user's KAKURENBO variant that overrides `select` (or keeps histories) must not be bypassed by the
    inherited shard rule: it gets the whole table on the main process."""
    from kakurenbo_hf.strategies.base import strategy_class

    class OwnSelect(KakurenboStrategy):
        def select(self, stats, target_fraction, epoch):
            return super().select(stats, target_fraction / 2, epoch)

    class OwnHistory(KakurenboStrategy):
        def observe(self, stats, indices, loss, confidence, correct):
            pass

    class OwnShard(OwnSelect):
        def select_shard(self, stats, target_fraction, epoch, shard, collective):
            return super().select_shard(stats, target_fraction / 2, epoch, shard, collective)

    assert strategy_class("kakurenbo").is_shardable()
    assert not OwnSelect.is_shardable() and not OwnHistory.is_shardable()
    assert OwnShard.is_shardable()
    assert not any(strategy_class(name).is_shardable() for name in
                   ("random", "epsilon_greedy", "ucb", "forget", "infobatch", "iswr", "selective_backprop"))


def test_a_shard_refuses_other_ranks_samples():
    stats = SampleStats(8, start=16)
    stats.update([16, 23], [1.0, 2.0], [0.5, 0.5], [True, False])
    assert stats.loss[0] == 1.0 and stats.loss[7] == 2.0
    with pytest.raises(IndexError, match=r"\[16, 24\)"):
        stats.update([15], [1.0], [0.5], [True])


def _state(n, engine_stats):
    engine = HidingEngine(n, 4, KakurenboArguments())
    engine.stats.load_state_dict(engine_stats.state_dict())
    return engine.state_dict()


@pytest.mark.parametrize("saved_ranks", [1, 3])
def test_table_rows_read_back_from_either_layout(tmp_path, saved_ranks):
    """A checkpoint written whole or in 3 shards gives any rank of any new layout exactly its rows."""
    n = 1000
    whole = _table(n, seed=1)
    state = _state(n, whole)
    state["table_shards"] = saved_ranks
    save_hiding_state(state, str(tmp_path))
    if saved_ranks > 1:
        for rank in range(saved_ranks):
            shard = shard_of(n, saved_ranks, rank)
            save_table_shard(_shard_stats(whole, shard).state_dict(), shard, str(tmp_path))
    for new_ranks in (1, 2, 3, 4):
        for rank in range(new_ranks):
            shard = shard_of(n, new_ranks, rank)
            rows = load_table_rows(str(tmp_path), shard.start, shard.stop)
            for name in ("loss", "confidence", "correct"):
                np.testing.assert_array_equal(rows[name], getattr(whole, name)[shard.start : shard.stop])
    loaded = load_hiding_state(str(tmp_path))  # the whole table, whatever the layout
    np.testing.assert_array_equal(loaded["stats"]["loss"], whole.loss)


def test_a_missing_or_corrupt_shard_is_refused_with_its_path(tmp_path):
    n = 100
    whole = _table(n, seed=2)
    state = _state(n, whole)
    state["table_shards"] = 2
    save_hiding_state(state, str(tmp_path))
    paths = [save_table_shard(_shard_stats(whole, shard_of(n, 2, r)).state_dict(), shard_of(n, 2, r), str(tmp_path))
             for r in range(2)]
    raw = bytearray(open(paths[1], "rb").read())
    raw[-1] ^= 0x01
    open(paths[1], "wb").write(bytes(raw))
    with pytest.raises(ValueError, match="checksum") as error:
        load_table_rows(str(tmp_path), 0, n)
    assert paths[1] in str(error.value)
    np.testing.assert_array_equal(load_table_rows(str(tmp_path), 0, 50)["loss"], whole.loss[:50])  # rank 0's part is fine
    import os

    os.remove(paths[0])
    with pytest.raises(ValueError, match="missing"):
        load_table_rows(str(tmp_path), 0, 10)
