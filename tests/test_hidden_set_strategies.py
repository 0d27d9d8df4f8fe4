"""The hidden-set strategies `random` (exact count), `epsilon_greedy`, `ucb` and `forget`.

Pure modules (numpy only). Each rule is checked on a small hand-made table whose expected hidden
set is written out by hand or computed by an independent reference (stable argsort, explicit
weighted sums), then the engine-level state round trip through the checkpoint file format.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from stats_helpers import make_stats

from kakurenbo_hf.distributed.checkpoint import load_hiding_state, save_hiding_state
from kakurenbo_hf.core.config import KakurenboArguments
from kakurenbo_hf.core.engine import HidingEngine
from kakurenbo_hf.core.stats import SampleStats
from kakurenbo_hf.strategies.epsilon_greedy import EpsilonGreedyStrategy
from kakurenbo_hf.strategies.forget import ForgetStrategy
from kakurenbo_hf.strategies.kakurenbo import KakurenboStrategy
from kakurenbo_hf.strategies.random import RandomStrategy
from kakurenbo_hf.strategies.ucb import UcbStrategy

NO_DECAY = dict(hiding_decay_milestones=[], hiding_decay_factors=[])


def floor_k(fraction: float, n: int) -> int:
    return math.floor(Fraction(repr(fraction)) * n)


def hidden_list(decision) -> list[int]:
    return np.flatnonzero(decision.hidden).tolist()


# --- random: exactly floor(F_e * N), uniformly ---------------------------------------------------


def test_random_default_is_the_exact_count_of_the_paper():
    assert KakurenboArguments().random_count == "exact"
    rng = np.random.default_rng(0)
    for n in (7, 10, 100, 1234):
        stats = make_stats(rng.random(n), rng.random(n) < 0.5, rng.random(n))  # kakurenbo would hide fewer
        for fraction in (0.1, 0.3, 0.3 * 0.8, 0.5, 0.9):
            decision = RandomStrategy(0.7, seed=1).select(stats, fraction, epoch=3)
            assert decision.num_hidden == decision.num_candidates == floor_k(fraction, n)
            assert decision.moved_back == 0


def test_random_exact_ignores_the_statistics_and_is_uniform():
    n, epochs, fraction = 40, 500, 0.25  # K = 10
    stats = make_stats(np.arange(n), np.ones(n, bool), np.ones(n))
    counts = np.zeros(n)
    for epoch in range(1, epochs + 1):
        counts += RandomStrategy(0.7, seed=3).select(stats, fraction, epoch=epoch).hidden
    # each count ~ Binomial(500, 0.25): mean 125, sd ~9.7; 5 sd either way
    assert counts.min() > 125 - 50 and counts.max() < 125 + 50, (counts.min(), counts.max())
    assert abs(counts[: n // 2].sum() - counts[n // 2 :].sum()) < 0.1 * counts.sum()  # low loss not favoured


def test_random_exact_is_seeded_by_seed_and_epoch():
    stats = make_stats(np.random.default_rng(0).random(300))
    first = RandomStrategy(seed=4).select(stats, 0.3, epoch=2).hidden
    assert np.array_equal(first, RandomStrategy(seed=4).select(stats, 0.3, epoch=2).hidden)
    assert not np.array_equal(first, RandomStrategy(seed=4).select(stats, 0.3, epoch=3).hidden)
    assert not np.array_equal(first, RandomStrategy(seed=5).select(stats, 0.3, epoch=2).hidden)


def test_random_matched_count_mode_is_the_previous_behaviour():
    """random_count='kakurenbo' draws exactly what the strategy drew before the option existed."""
    rng = np.random.default_rng(1)
    n = 500
    stats = make_stats(rng.random(n), rng.random(n) < 0.8, rng.random(n))
    args = KakurenboArguments(hiding_strategy="random", random_count="kakurenbo")
    for seed, epoch, fraction in [(0, 1, 0.3), (7, 4, 0.5), (3, 9, 0.12)]:
        count = KakurenboStrategy(0.7).select(stats, fraction, epoch).num_hidden
        expected = np.zeros(n, dtype=bool)
        expected[np.random.default_rng([seed, epoch, 0x52414E44]).choice(n, size=count, replace=False)] = True
        decision = RandomStrategy(0.7, seed=seed, arguments=args).select(stats, fraction, epoch)
        assert np.array_equal(decision.hidden, expected)


def test_random_count_is_validated():
    with pytest.raises(ValueError, match="random_count"):
        KakurenboArguments(hiding_strategy="random", random_count="half")


# --- epsilon_greedy ------------------------------------------------------------------------------

# Hand-made table: 10 samples, distinct losses. Ranked from the highest loss:
#   9 (1.0), 2 (0.9), 6 (0.8), 4 (0.7), 8 (0.6), 0 (0.5), 7 (0.4), 3 (0.3), 5 (0.2), 1 (0.1)
EG_LOSS = [0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0]


def eg(epsilon: float, seed: int = 0) -> EpsilonGreedyStrategy:
    return EpsilonGreedyStrategy(seed=seed, arguments=KakurenboArguments(hiding_strategy="epsilon_greedy",
                                                                         epsilon_greedy_epsilon=epsilon))


def test_epsilon_greedy_without_exploration_hides_the_lowest_losses():
    stats = make_stats(EG_LOSS)
    decision = eg(0.0).select(stats, 0.4, epoch=1)  # K = 4: the losses 0.1, 0.2, 0.3, 0.4
    assert hidden_list(decision) == [1, 3, 5, 7]
    assert (decision.num_candidates, decision.moved_back) == (4, 0)


def test_epsilon_greedy_explores_uniformly_in_the_rest():
    """F = 0.4: K = 4 hidden, M = 6 kept; epsilon = 0.5: R = 3 explored, G = 3 exploited (9, 2, 6)."""
    stats = make_stats(EG_LOSS)
    rest = {0, 1, 3, 4, 5, 7, 8}
    counts = np.zeros(10)
    for epoch in range(1, 701):
        decision = eg(0.5).select(stats, 0.4, epoch=epoch)
        hidden = set(hidden_list(decision))
        assert len(hidden) == 4 and hidden <= rest, (epoch, hidden)
        counts += decision.hidden
    assert counts[[9, 2, 6]].sum() == 0  # the exploited top is never hidden
    # each rest sample hidden with probability 4/7 (~400 of 700, sd ~13): no preference by loss
    assert np.all(np.abs(counts[sorted(rest)] - 400) < 70), counts


def test_epsilon_greedy_split_is_floored():
    """N = 10, F = 0.3: M = 7 kept; epsilon = 0.3: R = floor(2.1) = 2, G = 5 (9, 2, 6, 4, 8)."""
    stats = make_stats(EG_LOSS)
    counts = np.zeros(10)
    for epoch in range(1, 301):
        decision = eg(0.3).select(stats, 0.3, epoch=epoch)
        assert decision.num_hidden == 3
        counts += decision.hidden
    assert counts[[9, 2, 6, 4, 8]].sum() == 0
    assert counts[[0, 7, 3, 5, 1]].min() > 0  # the sixth-highest (0) is only kept by chance: G is 5, not 6


def test_epsilon_one_is_uniform_over_the_seen_samples():
    loss = np.array(EG_LOSS + [np.inf, np.inf], dtype=np.float32)  # samples 10, 11 unseen
    stats = make_stats(loss)
    counts = np.zeros(12)
    for epoch in range(1, 801):
        decision = eg(1.0).select(stats, 0.4, epoch=epoch)  # K = floor(4.8) = 4
        assert decision.num_hidden == 4
        counts += decision.hidden
    assert counts[10:].sum() == 0
    assert np.all(np.abs(counts[:10] - 320) < 70), counts  # each of the 10 seen: 4/10 of 800


def test_epsilon_greedy_never_hides_unseen_samples():
    loss = [0.3, np.inf, 0.1, np.inf, np.inf, 0.2, np.inf, np.inf, np.inf, np.inf]
    stats = make_stats(loss)
    decision = eg(0.0).select(stats, 0.4, epoch=1)  # K = 4 wanted, only 3 seen
    assert hidden_list(decision) == [0, 2, 5]
    assert (decision.num_candidates, decision.moved_back) == (4, 1)
    for epoch in range(1, 50):
        assert not eg(0.5).select(stats, 0.4, epoch=epoch).hidden[[1, 3, 4, 6, 7, 8, 9]].any()


@pytest.mark.parametrize("seed", range(5))
def test_epsilon_zero_matches_a_stable_argsort_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 300))
    loss = (rng.integers(0, 5, size=n) / 4).astype(np.float32)
    loss[rng.random(n) < 0.1] = np.inf
    stats = make_stats(loss)
    for fraction in (0.1, 0.3, 0.6):
        k = min(floor_k(fraction, n), int(np.isfinite(loss).sum()))
        expected = sorted(np.argsort(loss, kind="stable")[:k].tolist())
        assert hidden_list(eg(0.0).select(stats, fraction, epoch=2)) == expected


def test_epsilon_greedy_is_seeded_and_validated():
    stats = make_stats(np.random.default_rng(2).random(200))
    a = eg(0.5, seed=1).select(stats, 0.3, epoch=5).hidden
    assert np.array_equal(a, eg(0.5, seed=1).select(stats, 0.3, epoch=5).hidden)
    assert not np.array_equal(a, eg(0.5, seed=1).select(stats, 0.3, epoch=6).hidden)
    assert not np.array_equal(a, eg(0.5, seed=2).select(stats, 0.3, epoch=5).hidden)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="epsilon_greedy_epsilon"):
            KakurenboArguments(hiding_strategy="epsilon_greedy", epsilon_greedy_epsilon=bad)


# --- ucb -----------------------------------------------------------------------------------------


def ucb_engine(n, exploration=1.0, decay=0.5, fraction=0.5, **kwargs) -> HidingEngine:
    args = KakurenboArguments(hiding_strategy="ucb", hiding_fraction=fraction, ucb_exploration=exploration,
                              ucb_decay=decay, **NO_DECAY, **kwargs)
    return HidingEngine(n, num_epochs=10, arguments=args, seed=0)


def reference_ucb(history: list[float], exploration: float, decay: float) -> float:
    """Weighted mean and variance written out: weight (1-decay) * decay**age, the oldest gets the rest."""
    values = np.asarray(history, dtype=np.float64)
    n = values.size
    weights = np.array([decay ** (n - 1)] + [(1 - decay) * decay ** (n - 1 - j) for j in range(1, n)])
    assert math.isclose(weights.sum(), 1.0)
    mean = float(weights @ values)
    variance = float(weights @ (values - mean) ** 2)
    return mean + exploration * math.sqrt(variance)


# Three epochs of losses; sample 5 is never seen.
UCB_HISTORY = {
    0: [1.0, 1.0, 1.0],  # steady:   mean 1.0,  std 0      -> UCB 1.0
    1: [0.2, 1.8, 0.2],  # swinging: mean 0.6,  var 0.48  -> UCB 1.293
    2: [0.5, 0.5, 0.5],  # easy:     mean 0.5              -> UCB 0.5
    3: [0.9, 0.1, 0.9],  #           mean 0.7,  var 0.12  -> UCB 1.046
    4: [2.0, 2.0, 0.3],  #           mean 1.15, var 0.7225 -> UCB 2.0
}


def feed_history(engine: HidingEngine, history: dict[int, list[float]]) -> None:
    for epoch in range(len(next(iter(history.values())))):
        indices = np.array(sorted(history))
        losses = np.array([history[i][epoch] for i in indices], dtype=np.float32)
        engine.stats.update(indices, losses, np.ones(indices.size), np.ones(indices.size, bool))


def test_ucb_keeps_high_or_uncertain_losses():
    """decay 0.5, c = 1, N = 6, F = 0.5 -> K = 3: the lowest UCBs are 2 (0.5), 0 (1.0), 3 (1.046)."""
    engine = ucb_engine(6)
    assert engine.plan_epoch(0).num_hidden == 0  # warm-up
    feed_history(engine, UCB_HISTORY)
    scores = engine.strategy.scores(engine.stats)
    for i, history in UCB_HISTORY.items():
        assert scores[i] == pytest.approx(reference_ucb(history, 1.0, 0.5), rel=1e-6)
    assert scores[5] == np.inf
    plan = engine.plan_epoch(1)
    assert np.flatnonzero(engine.hidden).tolist() == [0, 2, 3]
    assert (plan.num_hidden, plan.num_candidates, plan.moved_back) == (3, 3, 0)


def test_ucb_without_exploration_is_greedy_on_the_mean():
    """c = 0: the lowest means are 2 (0.5), 1 (0.6), 3 (0.7): the swinging sample 1 is now hidden."""
    engine = ucb_engine(6, exploration=0.0)
    feed_history(engine, UCB_HISTORY)
    engine.plan_epoch(1)
    assert np.flatnonzero(engine.hidden).tolist() == [1, 2, 3]


@pytest.mark.parametrize("decay", [0.0, 0.3, 0.9])
def test_ucb_moments_match_the_weighted_sums(decay):
    rng = np.random.default_rng(int(decay * 10))
    n, epochs = 50, 6
    engine = ucb_engine(n, exploration=1.7, decay=decay)
    history = {i: [] for i in range(n)}
    for _ in range(epochs):
        seen = np.flatnonzero(rng.random(n) < 0.7)  # some samples skip epochs (hidden, not refreshed)
        losses = rng.random(seen.size).astype(np.float32) * 3
        engine.stats.update(seen, losses, np.ones(seen.size), np.ones(seen.size, bool))
        for i, value in zip(seen, losses):
            history[i].append(float(value))
    scores = engine.strategy.scores(engine.stats)
    for i in range(n):
        if history[i]:
            assert scores[i] == pytest.approx(reference_ucb(history[i], 1.7, decay), rel=1e-5, abs=1e-6), i
        else:
            assert scores[i] == np.inf


def test_ucb_never_hides_unseen_or_non_finite():
    engine = ucb_engine(8, fraction=0.9)  # K = 7 wanted
    engine.stats.update(np.arange(5), [0.1, 0.2, np.nan, 0.4, 0.5], np.ones(5), np.ones(5, bool))
    plan = engine.plan_epoch(1)
    # 2 had a NaN loss (stored as +inf, moments untouched), 5..7 are unseen
    assert np.flatnonzero(engine.hidden).tolist() == [0, 1, 3, 4]
    assert (plan.num_candidates, plan.moved_back) == (7, 3)
    assert np.isnan(engine.strategy.state_dict()["mean"][2])


def test_ucb_takes_a_repeated_record_as_a_second_observation():
    """Even batches' padding trains a sample twice in an epoch: both records are observations, in order."""
    engine = ucb_engine(3)  # decay 0.5
    engine.stats.update([0, 1, 0], [1.0, 2.0, 3.0], np.ones(3), np.ones(3, bool))
    state = engine.strategy.state_dict()
    # sample 0: 1.0 then 3.0 -> mean 1 + 0.5 * 2 = 2, variance 0.5 * (0 + 0.5 * 4) = 1
    assert state["mean"][:2].tolist() == [2.0, 2.0] and state["variance"][:2].tolist() == [1.0, 0.0]
    assert engine.stats.loss[0] == 3.0  # the table keeps the newest


def _record_stream(n: int, length: int, seed: int):
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, n, size=length)  # many repeats
    return indices, rng.random(length).astype(np.float32) * 2, rng.random(length), rng.random(length) < 0.5


@pytest.mark.parametrize("name", ["ucb", "forget", "forget_lag", "forget_original"])
@pytest.mark.parametrize("seed", range(3))
def test_state_does_not_depend_on_where_updates_are_cut(name, seed):
    """A checkpoint flushes the records so far: one update or several must leave the same state."""
    n = 30
    indices, loss, confidence, correct = _record_stream(n, 400, seed)
    args = KakurenboArguments(hiding_strategy=name, **STRATEGIES.get(name, {}))
    whole = HidingEngine(n, num_epochs=5, arguments=args)
    whole.stats.update(indices, loss, confidence, correct)
    assert any(np.asarray(value).any() for value in whole.strategy.state_dict().values())
    cut = HidingEngine(n, num_epochs=5, arguments=args)
    bounds = [0, *sorted(np.random.default_rng(seed).choice(np.arange(1, 400), size=6, replace=False)), 400]
    for start, end in zip(bounds, bounds[1:]):
        cut.stats.update(indices[start:end], loss[start:end], confidence[start:end], correct[start:end])
    sequential = HidingEngine(n, num_epochs=5, arguments=args)
    for i in range(indices.size):  # one record at a time
        sequential.stats.update(indices[i : i + 1], loss[i : i + 1], confidence[i : i + 1], correct[i : i + 1])
    for key, value in whole.strategy.state_dict().items():
        np.testing.assert_array_equal(cut.strategy.state_dict()[key], value, err_msg=key)
        np.testing.assert_allclose(sequential.strategy.state_dict()[key], value, rtol=0, atol=0, err_msg=key)


def test_ucb_knobs_are_validated_and_state_is_checked():
    with pytest.raises(ValueError, match="ucb_exploration"):
        KakurenboArguments(hiding_strategy="ucb", ucb_exploration=-1.0)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="ucb_decay"):
            KakurenboArguments(hiding_strategy="ucb", ucb_decay=bad)
    strategy = UcbStrategy(seed=0, num_samples=4)
    with pytest.raises(ValueError, match="another hiding_strategy"):
        strategy.load_state_dict({})
    with pytest.raises(ValueError, match="4 samples"):
        strategy.load_state_dict({"mean": np.zeros(3, np.float32), "variance": np.zeros(3, np.float32)})


# --- forget --------------------------------------------------------------------------------------

# Correctness over four counting epochs (hand-made); sample 7 is never seen.
FORGET_CORRECT = {
    0: "TTTT",  # learned, never forgotten        -> 0 events
    1: "TFTF",  # forgotten twice                  -> 2
    2: "FFFF",  # never learned                    -> counts as most forgotten
    3: "FTTT",  # a learning event is not a forgetting one -> 0
    4: "TFTT",  # -> 1
    5: "FTFT",  # -> 1
    6: "TTTF",  # -> 1
}


def forget_engine(n, fraction, counting=4, seed=0, num_epochs=8, **kwargs) -> HidingEngine:
    # the paper's decay schedule (the tests check that the static set ignores it)
    kwargs = {"hiding_decay_milestones": [1 / 3, 2 / 3, 8 / 9], "hiding_decay_factors": [0.8, 0.6, 0.4], **kwargs}
    args = KakurenboArguments(hiding_strategy="forget", hiding_fraction=fraction, forget_counting_epochs=counting,
                              **kwargs)
    return HidingEngine(n, num_epochs=num_epochs, arguments=args, seed=seed)


def run_counting(engine: HidingEngine, correct: dict[int, str], epochs: int) -> list:
    """Feed each counting epoch's predictions, planning the next epoch after each (as the trainer does)."""
    plans = [engine.plan_epoch(0)]
    indices = np.array(sorted(correct))
    for epoch in range(epochs):
        flags = np.array([correct[i][epoch] == "T" for i in indices])
        engine.stats.update(indices, np.ones(indices.size), np.ones(indices.size), flags)
        plans.append(engine.plan_epoch(epoch + 1))
    return plans


@pytest.mark.parametrize("fraction, expected", [
    (0.25, [0, 3]),                  # K = 2: the two never forgotten
    (0.625, [0, 3, 4, 5, 6]),        # K = 5: + the three forgotten once
    (0.75, [0, 1, 3, 4, 5, 6]),      # K = 6: + the one forgotten twice
    (0.875, [0, 1, 2, 3, 4, 5, 6]),  # K = 7: + the never-learned one, last; the unseen 7 never
])
def test_forget_drops_the_least_forgotten(fraction, expected):
    engine = forget_engine(8, fraction)
    plans = run_counting(engine, FORGET_CORRECT, 4)
    assert [p.num_hidden for p in plans[:4]] == [0, 0, 0, 0]  # warm-up, then still counting
    assert np.flatnonzero(engine.hidden).tolist() == expected
    assert plans[4].num_hidden == len(expected)
    scores = engine.strategy.forgetting_scores(engine.stats)
    assert scores[[0, 1, 3, 4, 5, 6]].tolist() == [0, 2, 0, 1, 1, 1]
    assert np.inf > scores[2] > 2 and scores[7] == np.inf


def test_forget_set_is_static_and_ignores_decay_and_later_predictions():
    # 8 epochs, the paper's decay: F_e = 0.5 * 0.8 from epoch 3, * 0.6 from 6 (with F_e = 0 nothing would be hidden)
    engine = forget_engine(8, 0.625, lr_compensation="realized")
    run_counting(engine, FORGET_CORRECT, 4)
    chosen = engine.hidden.copy()
    for epoch in range(5, 8):
        flip = np.arange(7) % 2 == epoch % 2  # predictions keep changing: counting has stopped
        engine.stats.update(np.arange(7), np.ones(7), np.ones(7), flip)
        plan = engine.plan_epoch(epoch)
        assert np.array_equal(engine.hidden, chosen) and plan.num_hidden == 5
        assert plan.lr_factor == pytest.approx(1 / (1 - 5 / 8))
        assert plan.target_fraction < 0.625
        assert engine.samples_to_refresh(epoch + 1).size == 0  # no refresh pass: nothing reads it
    assert engine.strategy.state_dict()["chosen_epoch"].tolist() == [4]


def test_forget_counts_from_all_epochs_before_a_later_warmup():
    """hiding_warmup_epochs = 5 > forget_counting_epochs = 2: chosen at epoch 5 from 5 observations."""
    correct = {0: "TFTFT", 1: "TTTTT", 2: "TTTTF"}  # 2, 0, 1 events
    engine = forget_engine(3, 0.34, counting=2, hiding_warmup_epochs=5)
    plans = run_counting(engine, correct, 5)
    assert [p.num_hidden for p in plans] == [0, 0, 0, 0, 0, 1]
    assert np.flatnonzero(engine.hidden).tolist() == [1]
    assert engine.strategy.forgetting_scores(engine.stats).tolist() == [2, 0, 1]


def test_forget_breaks_ties_by_a_seeded_random_order_not_by_index():
    n = 200
    hidden = {}
    for seed in (0, 1):
        engine = forget_engine(n, 0.3, counting=2, seed=seed)
        run_counting(engine, {i: "TT" for i in range(n)}, 2)  # all tie at 0 events
        hidden[seed] = np.flatnonzero(engine.hidden)
        assert hidden[seed].size == 60
        assert 15 <= np.count_nonzero(hidden[seed] < n // 2) <= 45  # not the lowest indices
    assert not np.array_equal(hidden[0], hidden[1])
    again = forget_engine(n, 0.3, counting=2, seed=0)
    run_counting(again, {i: "TT" for i in range(n)}, 2)
    assert np.array_equal(np.flatnonzero(again.hidden), hidden[0])


def test_forget_compares_a_repeated_record_with_the_one_before_it():
    strategy = ForgetStrategy(seed=0, num_samples=3, arguments=KakurenboArguments(hiding_strategy="forget"))
    stats = SampleStats(3)
    stats.on_update = lambda *values: strategy.observe(stats, *values)
    stats.update([0, 1, 2], np.ones(3), np.ones(3), [True, True, True])
    # sample 0: T -> F (event) -> F; sample 1: T -> F (event) -> T -> F (event); sample 2: T -> T
    stats.update([0, 1, 1, 0, 2, 1], np.ones(6), np.ones(6), [False, False, True, False, True, False])
    assert strategy.forgetting_scores(stats).tolist() == [1, 2, 0]


def test_forget_arguments_are_validated():
    for bad in (1, 0, 2.5):
        with pytest.raises(ValueError, match="forget_counting_epochs"):
            KakurenboArguments(hiding_strategy="forget", forget_counting_epochs=bad)
    with pytest.raises(ValueError, match="lr_compensation"):
        KakurenboArguments(hiding_strategy="forget", lr_compensation="target")
    KakurenboArguments(hiding_strategy="forget", lr_compensation="none")
    with pytest.raises(ValueError, match="another hiding_strategy"):
        ForgetStrategy(seed=0, num_samples=3).load_state_dict({"mean": np.zeros(3)})


# --- every strategy: the same decisions after a state round trip through the checkpoint file ----

STRATEGIES = {
    "random": {},
    "epsilon_greedy": {"epsilon_greedy_epsilon": 0.3},
    "ucb": {"ucb_exploration": 0.5, "ucb_decay": 0.8},
    "forget": {"forget_counting_epochs": 3},
}


def _epoch_values(epoch: int, n: int):
    rng = np.random.default_rng(100 + epoch)
    seen = np.flatnonzero(rng.random(n) < 0.9)  # a few samples unseen per epoch (hidden ones in training)
    return seen, rng.random(seen.size) * 2, rng.random(seen.size), rng.random(seen.size) < 0.6


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("stop", [1, 2, 4])
def test_resumed_engine_decides_like_the_uninterrupted_one(tmp_path, name, stop):
    n, epochs = 120, 7
    args = KakurenboArguments(hiding_strategy=name, hiding_fraction=0.4, **STRATEGIES[name])
    full = HidingEngine(n, num_epochs=epochs, arguments=args, seed=5)
    resumed = None
    hidden_full, hidden_resumed = [], []
    for epoch in range(epochs):
        if epoch == stop:  # checkpoint, then a fresh engine loads it from disk
            save_hiding_state(full.state_dict(), str(tmp_path))
            resumed = HidingEngine(n, num_epochs=epochs, arguments=args, seed=5)
            resumed.load_state_dict(load_hiding_state(str(tmp_path)))
        for engine, record in ((full, hidden_full), (resumed, hidden_resumed)):
            if engine is not None:
                engine.plan_epoch(epoch)
                record.append(np.flatnonzero(engine.hidden).tolist())
                engine.stats.update(*_epoch_values(epoch, n))
    assert hidden_resumed == hidden_full[stop:]
    assert [p for p in resumed.plans if p.epoch >= stop] == [p for p in full.plans if p.epoch >= stop]
    assert sum(map(len, hidden_full)) > 0
    for key, value in full.state_dict()["strategy"].items():
        np.testing.assert_array_equal(resumed.state_dict()["strategy"][key], value)
