"""The coverage rule (`max_hidden_epochs`): no sample is left out of more than M epochs in a row.

The engine applies it to any strategy's hidden set, reading the hidden history (no state of its
own), on one table or on shards. The 2-process runs of `test_multiprocess.py` (HIDE_RUN sets
`max_hidden_epochs=1`) check it with real collectives and across resumes with 1 and 2 processes.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_sharding import ThreadGroup, _shard_stats, _table

from kakurenbo_hf.core.config import KAKURENBO_MAX_HIDDEN_EPOCHS, KakurenboArguments
from kakurenbo_hf.core.engine import HidingEngine
from kakurenbo_hf.core.report import HidingReport
from kakurenbo_hf.core.sharding import shard_of
from kakurenbo_hf.strategies.base import HidingDecision, HidingStrategy, register_strategy

N = 40
EPOCHS = 12


def _feed(engine: HidingEngine, loss: np.ndarray) -> None:
    """Every sample seen, learned and confident, with `loss` (the same low-loss samples every epoch)."""
    n = engine.num_samples
    engine.stats.update(np.arange(n), loss.astype(np.float32), np.ones(n, np.float32), np.ones(n, bool))


def _run(arguments: KakurenboArguments, epochs: int = EPOCHS, n: int = N) -> HidingEngine:
    engine = HidingEngine(n, epochs, arguments)
    loss = np.linspace(0.01, 1.0, n)
    for epoch in range(epochs):
        if epoch:
            _feed(engine, loss)
        engine.plan_epoch(epoch)
        engine.remember_hidden_set()
    return engine


def _streaks(engine: HidingEngine) -> np.ndarray:
    return HidingReport(engine.num_samples, engine.plans, engine.hidden_history, None).longest_hidden_streak()


@pytest.mark.parametrize("cap", [1, 2, 3, 5])
def test_no_sample_is_hidden_more_than_the_cap_in_a_row(cap):
    engine = _run(KakurenboArguments(hiding_fraction=0.5, max_hidden_epochs=cap))
    assert engine.max_hidden_epochs == cap
    streaks = _streaks(engine)
    assert streaks.max() == cap  # reached (the same samples are always the easiest) and never exceeded
    called_back = [plan.coverage_moved_back for plan in engine.plans]
    # Warm-up epoch 0, then cap epochs of hiding, then the whole set comes back, and so on.
    expected = [N // 2 if epoch > 1 and (epoch - 1) % (cap + 1) == cap else 0 for epoch in range(EPOCHS)]
    assert called_back == expected
    for plan in engine.plans:
        assert plan.num_hidden == (0 if plan.epoch == 0 or plan.coverage_moved_back else N // 2)
        assert plan.log_values()["kakurenbo/coverage_moved_back"] == plan.coverage_moved_back
        # The LR compensation follows what really trains.
        assert plan.lr_factor == pytest.approx(1 / (1 - plan.num_hidden / N))


def test_no_cap_is_the_published_rule():
    engine = _run(KakurenboArguments(hiding_fraction=0.5, max_hidden_epochs=0))
    assert _streaks(engine).max() == EPOCHS - 1
    assert all(plan.coverage_moved_back == 0 for plan in engine.plans)


def test_the_rule_only_takes_samples_out_of_the_hidden_set():
    """Called-back samples train; the strategy's other choices stand, and moved-back slots are not refilled."""
    capped = _run(KakurenboArguments(hiding_fraction=0.5, max_hidden_epochs=2))
    free = _run(KakurenboArguments(hiding_fraction=0.5, max_hidden_epochs=0))
    for bits_capped, bits_free in zip(capped.hidden_history, free.hidden_history):
        hidden_capped, hidden_free = np.unpackbits(bits_capped)[:N], np.unpackbits(bits_free)[:N]
        assert not (hidden_capped & ~hidden_free).any()


@pytest.mark.parametrize("strategy, default", [
    ("kakurenbo", KAKURENBO_MAX_HIDDEN_EPOCHS), ("random", 0), ("epsilon_greedy", 0), ("ucb", 0), ("forget", 0),
    ("infobatch", 0), ("iswr", 0), ("selective_backprop", 0),
])
def test_default_is_the_strategys_own(strategy, default):
    engine = HidingEngine(N, 4, KakurenboArguments(hiding_strategy=strategy))
    assert engine.max_hidden_epochs == default


def test_an_explicit_cap_overrides_the_default():
    assert HidingEngine(N, 4, KakurenboArguments(max_hidden_epochs=0)).max_hidden_epochs == 0
    assert HidingEngine(N, 4, KakurenboArguments(hiding_strategy="random", max_hidden_epochs=2)).max_hidden_epochs == 2
    with pytest.raises(ValueError, match="not a setting"):  # a core argument, not one strategy's setting
        KakurenboArguments(hiding_strategy_kwargs={"max_hidden_epochs": 4})


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_a_bad_cap_is_refused_naming_the_field(value):
    with pytest.raises(ValueError, match="max_hidden_epochs"):
        KakurenboArguments(max_hidden_epochs=value)


@pytest.mark.parametrize("strategy", ["iswr", "selective_backprop"])
def test_strategies_without_whole_epoch_hiding_refuse_a_cap(strategy):
    with pytest.raises(ValueError, match="max_hidden_epochs=2 does not apply"):
        KakurenboArguments(hiding_strategy=strategy, max_hidden_epochs=2)
    KakurenboArguments(hiding_strategy=strategy, max_hidden_epochs=0)  # explicit "no cap" is fine


@register_strategy("_test_weighted_lowest")
class _WeightedLowest(HidingStrategy):
    """Hides the lowest-loss half and weights every other sample 2 (a stand-in for InfoBatch)."""

    uses_loss_weights = True

    def select(self, stats, target_fraction, epoch):
        hidden = np.zeros(stats.num_samples, dtype=bool)
        hidden[np.argsort(stats.loss, kind="stable")[: stats.num_samples // 2]] = True
        weights = np.where(hidden, 0.0, 2.0).astype(np.float32)
        return HidingDecision(hidden=hidden, num_candidates=int(hidden.sum()), moved_back=0, weights=weights)


def test_called_back_samples_train_with_weight_one():
    engine = _run(KakurenboArguments(hiding_strategy="_test_weighted_lowest", max_hidden_epochs=1), epochs=3)
    plan = engine.current_plan
    assert plan.coverage_moved_back == N // 2 and plan.num_hidden == 0
    np.testing.assert_array_equal(engine.weights[: N // 2], 1.0)  # called back: the model's own loss
    np.testing.assert_array_equal(engine.weights[N // 2:], 2.0)  # the strategy's weights stand


def test_a_resumed_engine_applies_the_rule_like_the_uninterrupted_one():
    arguments = KakurenboArguments(hiding_fraction=0.5, max_hidden_epochs=2)
    full = _run(arguments)
    loss = np.linspace(0.01, 1.0, N)
    first = HidingEngine(N, EPOCHS, arguments)
    for epoch in range(5):
        if epoch:
            _feed(first, loss)
        first.plan_epoch(epoch)
        first.remember_hidden_set()
    state = first.state_dict()
    resumed = HidingEngine(N, EPOCHS, arguments)
    resumed.load_state_dict(state)
    for epoch in range(5, EPOCHS):
        _feed(resumed, loss)
        resumed.plan_epoch(epoch)
        resumed.remember_hidden_set()
    assert resumed.plans == full.plans
    for got, want in zip(resumed.hidden_history, full.hidden_history):
        np.testing.assert_array_equal(got, want)


def test_epochs_without_a_recorded_set_count_as_hiding_nothing():
    """A checkpoint of a release before 0.2.0 keeps only the last epoch's set: no sample is called back
    on the strength of epochs it cannot see."""
    engine = _run(KakurenboArguments(hiding_fraction=0.5, max_hidden_epochs=2), epochs=3)
    engine.hidden_history[-2] = None
    assert engine.must_train() is None


@pytest.mark.parametrize("num_ranks", [2, 3])
def test_sharded_engines_apply_the_rule_as_one_table(num_ranks):
    n, epochs = 301, 7
    arguments = KakurenboArguments(hiding_fraction=0.5, confidence_threshold=0.3, max_hidden_epochs=1)
    tables = [_table(n, seed=epoch, ties=epoch % 2 == 0) for epoch in range(epochs)]
    single = HidingEngine(n, epochs, arguments)
    for epoch in range(1, epochs):
        single.stats.load_state_dict(tables[epoch].state_dict())
        single.plan_epoch(epoch)
        single.remember_hidden_set()

    def plan(rank, collective):
        engine = HidingEngine(n, epochs, arguments, shard=shard_of(n, num_ranks, rank), collective=collective)
        for epoch in range(1, epochs):
            engine.stats.load_state_dict(_shard_stats(tables[epoch], engine.shard).state_dict())
            engine.plan_epoch(epoch)
            engine.remember_hidden_set()
        return engine

    assert sum(p.coverage_moved_back for p in single.plans) > 0
    for engine in ThreadGroup(num_ranks).run(plan):
        assert engine.sharded
        assert engine.plans == single.plans
        for got, want in zip(engine.hidden_history, single.hidden_history):
            np.testing.assert_array_equal(got, want)


def test_report_picture_is_saved_in_checkpoints_and_at_the_end(tmp_path):
    """`save_hiding_plot`: hiding_report.png in every checkpoint folder and in output_dir."""
    from helpers import collate, make_image_dataset, make_vit, training_args

    from kakurenbo_hf import KakurenboTrainer

    trainer = KakurenboTrainer(
        model=make_vit(seed=0),
        args=training_args(tmp_path / "out", num_train_epochs=3, save_strategy="epoch", save_hiding_plot=True,
                           confidence_threshold=0.1, max_hidden_epochs=1),
        train_dataset=make_image_dataset(num_samples=64), data_collator=collate)
    trainer.train()
    pictures = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("hiding_report.png"))
    checkpoints = sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*"))
    assert pictures == sorted([f"{c}/hiding_report.png" for c in checkpoints] + ["hiding_report.png"])
    assert (tmp_path / "out" / "hiding_report.png").stat().st_size > 10_000


def test_a_missing_matplotlib_is_reported_before_training(monkeypatch, tmp_path):
    import sys

    from helpers import collate, make_image_dataset, make_vit, training_args

    from kakurenbo_hf import KakurenboTrainer

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    with pytest.raises(ImportError, match=r"kakurenbo_hf\[plots\]"):
        KakurenboTrainer(model=make_vit(seed=0), args=training_args(tmp_path / "out", save_hiding_plot=True),
                         train_dataset=make_image_dataset(num_samples=16), data_collator=collate)


# --- randomised hiding among the candidates (kakurenbo_hide_probability) ---------------------------


def _kakurenbo(probability: float, fraction: float = 0.5, seed: int = 0):
    from kakurenbo_hf.strategies.kakurenbo import KakurenboStrategy

    arguments = KakurenboArguments(hiding_fraction=fraction, kakurenbo_hide_probability=probability)
    return KakurenboStrategy(confidence_threshold=0.3, seed=seed, arguments=arguments)


def test_probability_one_is_the_papers_rule():
    from kakurenbo_hf.strategies.kakurenbo import KakurenboStrategy

    table = _table(301, seed=1, ties=True)
    for epoch in range(1, 4):
        assert np.array_equal(_kakurenbo(1.0).select(table, 0.5, epoch).hidden,
                              KakurenboStrategy(confidence_threshold=0.3, seed=0).select(table, 0.5, epoch).hidden)


@pytest.mark.parametrize("probability", [0.3, 0.5, 0.8])
def test_drawn_hidden_set_is_learned_low_loss_and_within_the_fraction(probability):
    n, fraction = 301, 0.3
    table = _table(n, seed=2)
    pool_size = int(np.floor(min(1.0, fraction / probability) * n))
    pool = np.zeros(n, dtype=bool)
    pool[np.argsort(table.loss, kind="stable")[:pool_size]] = True
    learned = pool & table.correct & (table.confidence >= np.float16(0.3))
    sets = []
    for epoch in range(1, 6):
        decision = _kakurenbo(probability, fraction).select(table, fraction, epoch)
        assert not (decision.hidden & ~learned).any()  # only learned candidates of the larger pool
        assert decision.num_hidden <= int(np.floor(fraction * n))
        assert decision.num_candidates == pool_size and decision.moved_back == pool_size - learned.sum()
        assert np.array_equal(decision.hidden, _kakurenbo(probability, fraction).select(table, fraction, epoch).hidden)
        sets.append(decision.hidden)
    assert any(not np.array_equal(a, b) for a, b in zip(sets, sets[1:]))  # a new draw each epoch
    assert np.mean([s.sum() for s in sets]) == pytest.approx(probability * learned.sum(), rel=0.35)


def test_an_unlucky_draw_is_trimmed_to_the_fraction():
    """Every sample learned, F = p = 0.5: the draw exceeds floor(F N) about half the time."""
    n = 200
    table = SampleStatsFor(n)
    counts = [_kakurenbo(0.5).select(table, 0.5, epoch).num_hidden for epoch in range(1, 21)]
    assert max(counts) == n // 2 and min(counts) < n // 2


def SampleStatsFor(n):  # noqa: N802 - a table where every sample is learned, confidently
    from kakurenbo_hf.core.stats import SampleStats

    table = SampleStats(n)
    table.update(np.arange(n), np.linspace(0.01, 1, n).astype(np.float32), np.ones(n, np.float32), np.ones(n, bool))
    return table


def test_draws_do_not_depend_on_the_chunking():
    from kakurenbo_hf.strategies.kakurenbo import uniform_draws

    whole = uniform_draws(3, 7, 0, 1000)
    np.testing.assert_array_equal(np.concatenate([uniform_draws(3, 7, start, 100) for start in range(0, 1000, 100)]),
                                  whole)
    assert not np.array_equal(uniform_draws(3, 8, 0, 1000), whole) and 0 <= whole.min() and whole.max() < 1


@pytest.mark.parametrize("num_ranks", [2, 3])
def test_sharded_draws_select_as_one_table(num_ranks):
    n = 301
    table = _table(n, seed=5)
    arguments = KakurenboArguments(hiding_fraction=0.5, confidence_threshold=0.3, kakurenbo_hide_probability=0.6)
    single = HidingEngine(n, 4, arguments)
    single.stats.load_state_dict(table.state_dict())
    single.plan_epoch(2)

    def plan(rank, collective):
        engine = HidingEngine(n, 4, arguments, shard=shard_of(n, num_ranks, rank), collective=collective)
        engine.stats.load_state_dict(_shard_stats(table, engine.shard).state_dict())
        engine.plan_epoch(2)
        return engine

    for engine in ThreadGroup(num_ranks).run(plan):
        np.testing.assert_array_equal(engine.hidden_bits, single.hidden_bits)
        assert engine.current_plan == single.current_plan


@pytest.mark.parametrize("value", [0.0, 1.5, float("nan")])
def test_a_bad_probability_is_refused_naming_the_field(value):
    with pytest.raises(ValueError, match="kakurenbo_hide_probability"):
        KakurenboArguments(kakurenbo_hide_probability=value)


def test_probability_is_a_kakurenbo_setting():
    assert KakurenboArguments(hiding_strategy_kwargs={"hide_probability": 0.5}).kakurenbo_hide_probability == 0.5


# --- per-task defaults ------------------------------------------------------------------------------


def test_a_causal_lm_gets_its_tasks_hide_probability_and_others_the_papers_rule(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from helpers import make_vit
    from kakurenbo_hf.tasks import task_hiding_defaults

    lm = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=32, n_positions=16))
    assert task_hiding_defaults(lm) == ("causal_lm", {"kakurenbo_hide_probability": 0.5})
    assert task_hiding_defaults(make_vit(seed=0)) == (None, {})  # classification is told by its outputs: the rule's 1
    assert _kakurenbo(1.0).hide_probability == 1.0
    from kakurenbo_hf.strategies.kakurenbo import KakurenboStrategy
    assert KakurenboStrategy(arguments=KakurenboArguments()).hide_probability == 1.0  # unset, no task: the paper's


def test_the_trainer_applies_the_task_default_only_where_unset(tmp_path):
    """A causal LM trained with the defaults hides with p = 0.5 (logged); an explicit p stands."""
    import torch
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel

    from helpers import training_args
    from kakurenbo_hf import KakurenboTrainer

    rows = Dataset.from_dict({"input_ids": torch.randint(0, 32, (48, 12)).tolist()})

    def collate(features):
        ids = torch.tensor([f["input_ids"] for f in features])
        return {"input_ids": ids, "labels": ids.clone()}

    for given, expected in ((None, 0.5), (1.0, 1.0)):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=32, n_positions=16))
        trainer = KakurenboTrainer(model=model, train_dataset=rows, data_collator=collate,
                                   args=training_args(tmp_path / f"out{given}", num_train_epochs=2,
                                                      kakurenbo_hide_probability=given, remove_unused_columns=False))
        trainer.train()
        assert trainer.hiding_engine.strategy.hide_probability == expected
        assert trainer.hiding_args.kakurenbo_hide_probability == given  # the user's arguments are not changed
