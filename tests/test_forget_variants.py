"""The published FORGET variants of the KAKURENBO code: `forget_lag` (online) and `forget_original` (two runs).

First the rules on hand-made histories fed to a `HidingEngine` (numpy only): each history string
gives a sample's prediction per epoch, and marks where the rule must have hidden it, so the
expected sets are written out in the table itself. Then the state (cut-independence, a round trip
through the checkpoint file), the refusals of a counts source, the arguments, and short
end-to-end runs of `KakurenboTrainer` on a tiny ViT: forget_lag trains and hides, resumes exactly
mid-run; forget_original's counting run saves its counts, a second run reads them and hides the
expected set from its first epoch after the warm-up.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import collate, make_image_dataset, make_vit, training_args
from transformers import TrainerCallback

from kakurenbo_hf import HidingReport, KakurenboTrainer
from kakurenbo_hf.core.config import KakurenboArguments
from kakurenbo_hf.core.engine import HidingEngine
from kakurenbo_hf.core.stats import SampleStats
from kakurenbo_hf.distributed.checkpoint import HIDING_STATE_NAME, load_hiding_state, save_hiding_state
from kakurenbo_hf.strategies.forget import NEVER_LEARNED
from kakurenbo_hf.strategies.forget_lag import ForgetLagStrategy
from kakurenbo_hf.strategies.forget_original import ForgetOriginalStrategy, epochs_counted, load_strategy_arrays

LAG_STREAM, ORIGINAL_STREAM = 0x464C4147, 0x464F5249


def hidden_list(engine: HidingEngine) -> list[int]:
    return np.flatnonzero(engine.hidden).tolist()


def feed(engine: HidingEngine, history: dict[int, str], epoch: int) -> None:
    """One epoch of records, oldest first: 'T' / 'F' a prediction right / wrong, 'U' a record without a finite
    loss (every label ignored), '-' no record: the sample must be hidden in this epoch (the trainer skips it),
    ' ' no record either (a sample the run never reached)."""
    hidden = engine.hidden
    indices, correct, loss = [], [], []
    for sample, marks in sorted(history.items()):
        mark = marks[epoch]
        assert (mark == "-") == bool(hidden[sample]), (epoch, sample, mark, hidden_list(engine))
        if mark in "TFU":
            indices.append(sample)
            correct.append(mark == "T")
            loss.append(np.inf if mark == "U" else 1.0)
    engine.stats.update(np.array(indices, dtype=np.int64), np.array(loss, np.float32), np.ones(len(indices)),
                        np.array(correct, dtype=bool))


def run(engine: HidingEngine, history: dict[int, str], epochs: int) -> list:
    """Plan each epoch, then feed it (as the trainer does); returns the plans."""
    plans = []
    for epoch in range(epochs):
        plans.append(engine.plan_epoch(epoch))
        feed(engine, history, epoch)
    return plans


def lag_engine(n, fraction, counting=2, seed=0, num_epochs=8, **kwargs) -> HidingEngine:
    args = KakurenboArguments(hiding_strategy="forget_lag", hiding_fraction=fraction,
                              forget_lag_counting_epochs=counting, **kwargs)
    return HidingEngine(n, num_epochs=num_epochs, arguments=args, seed=seed)


def tie_order(seed: int, epoch: int | None, stream: int, n: int) -> np.ndarray:
    key = [seed, stream] if epoch is None else [seed, epoch, stream]
    return np.random.default_rng(key).permutation(n)


# --- forget_lag: re-ranked every epoch by the counts so far -----------------------------------------

# N = 6, F = 0.34 (K = 2), four counting epochs, then a ranking per epoch. Counts after epoch 3:
# 0: 0, 3: 1, 1: 2, 2 and 4 never learned, 5 never has a finite loss (unseen).
LAG_HISTORY = {
    #    0123 45 (epochs)
    0: "TTTT" "--",  # 0 events: hidden at 4 and 5
    1: "TFTF" "TF",  # 2, then 3 at epoch 5 (T at 4, F at 5)
    2: "FFFF" "T-",  # never learned, learned at 4 with 0 events: hidden at 5
    3: "TFTT" "-T",  # 1: hidden at 4; at 5 its T is compared with its last record (T at 3): no event
    4: "FFFF" "FT",  # never learned until 5 (0 events)
    5: "UUUU" "UU",  # unseen: never hidden
}


def test_forget_lag_re_ranks_every_epoch_by_the_counts_so_far():
    engine = lag_engine(6, 0.34, counting=4)
    plans = run(engine, LAG_HISTORY, 6)  # `feed` checks the '-' marks: {0, 3} at 4, {0, 2} at 5
    assert [p.num_hidden for p in plans] == [0, 0, 0, 0, 2, 2]  # warm-up, counting, then K = 2
    assert [(p.num_candidates, p.moved_back) for p in plans[4:]] == [(2, 0), (2, 0)]
    scores = engine.strategy.forgetting_scores(engine.stats)
    assert scores[:5].tolist() == [0, 3, 0, 1, 0] and scores[5] == np.inf
    # Epoch 6: three samples tie at 0 events (0, 2, 4): two of them, in the order drawn for (seed, epoch 6).
    plan = engine.plan_epoch(6)
    order = tie_order(0, 6, LAG_STREAM, 6)
    expected = sorted(sorted([0, 2, 4], key=lambda i: order[i])[:2])  # sample i's tie key is order[i]
    assert hidden_list(engine) == expected and plan.num_hidden == 2


def test_forget_lag_counts_every_epoch_from_the_start():
    """The same history through a bare strategy: the counts after each epoch, hidden samples without records."""
    args = KakurenboArguments(hiding_strategy="forget_lag", forget_lag_counting_epochs=4)
    strategy = ForgetLagStrategy(seed=0, num_samples=6, arguments=args)
    stats = SampleStats(6)
    stats.on_update = lambda *values: strategy.observe(stats, *values)
    after = []
    for epoch in range(6):
        marks = {i: h[epoch] for i, h in LAG_HISTORY.items() if h[epoch] in "TFU"}
        indices = np.array(sorted(marks))
        stats.update(indices, [np.inf if marks[i] == "U" else 1.0 for i in indices], np.ones(indices.size),
                     [marks[i] == "T" for i in indices])
        after.append(strategy.forgetting_scores(stats).tolist())
    nl, inf = float(NEVER_LEARNED), np.inf
    assert after[1] == [0, 1, nl, 1, nl, inf]
    assert after[3] == [0, 2, nl, 1, nl, inf]
    assert after[4] == [0, 2, 0, 1, nl, inf]
    assert after[5] == [0, 3, 0, 1, 0, inf]


@pytest.mark.parametrize("fraction, expected", [
    (0.17, [0]),              # K = 1: the fewest events
    (0.5, [0, 1, 3]),         # K = 3: 0, 3 (1 event), 1 (2 events)
    (0.67, "one of 2, 4"),    # K = 4: + one never-learned sample (both tie), never the unseen 5
    (0.9, [0, 1, 2, 3, 4]),   # K = 5: every seen sample
])
def test_forget_lag_drops_never_learned_last_and_unseen_never(fraction, expected):
    engine = lag_engine(6, fraction, counting=4)
    run(engine, {i: h[:4] for i, h in LAG_HISTORY.items()}, 4)
    engine.plan_epoch(4)
    hidden = hidden_list(engine)
    if isinstance(expected, str):
        assert len(hidden) == 4 and {0, 1, 3} < set(hidden) and len(set(hidden) & {2, 4}) == 1
    else:
        assert hidden == expected
    assert 5 not in hidden


def test_forget_lag_starts_after_counting_and_warm_up_and_follows_the_decay():
    n = 10  # every prediction right: all tie at 0 events
    # warm-up 3 > counting 2: the first ranking at epoch 3; the decay halves F from epoch 4 of 8 on
    engine = lag_engine(n, 0.5, counting=2, num_epochs=8, hiding_warmup_epochs=3, hiding_decay_milestones=[0.5],
                        hiding_decay_factors=[0.4])
    plans = []
    for epoch in range(6):
        plans.append(engine.plan_epoch(epoch))
        visible = np.flatnonzero(~engine.hidden)
        engine.stats.update(visible, np.ones(visible.size), np.ones(visible.size), np.ones(visible.size, bool))
    assert [p.num_hidden for p in plans] == [0, 0, 0, 5, 2, 2]  # floor(F_e * N): 0.5, then 0.2
    assert all(p.moved_back == 0 for p in plans)


def test_forget_lag_breaks_ties_by_a_random_order_of_seed_and_epoch():
    n = 200
    history = {i: "TT" for i in range(n)}
    sets = {}
    for seed in (0, 1):
        engine = lag_engine(n, 0.3, counting=2, seed=seed)
        run(engine, history, 2)
        for epoch in (2, 3):
            engine.plan_epoch(epoch)
            sets[seed, epoch] = hidden_list(engine)
            assert len(sets[seed, epoch]) == 60
            assert 15 <= sum(i < n // 2 for i in sets[seed, epoch]) <= 45  # not the lowest indices
    assert sets[0, 2] != sets[0, 3]  # the tied samples take turns (hidden ones are not observed)
    assert sets[0, 2] != sets[1, 2]
    again = lag_engine(n, 0.3, counting=2, seed=0)
    run(again, history, 2)
    again.plan_epoch(3)  # a pure function of (state, epoch, seed): epoch 2 need not be planned first
    assert hidden_list(again) == sets[0, 3]


def test_forget_lag_arguments_and_state_are_checked():
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="forget_lag_counting_epochs"):
            KakurenboArguments(hiding_strategy="forget_lag", forget_lag_counting_epochs=bad)
    with pytest.raises(ValueError, match="lr_compensation='target'.*forget_lag_counting_epochs=2"):
        KakurenboArguments(hiding_strategy="forget_lag", lr_compensation="target")
    KakurenboArguments(hiding_strategy="forget_lag", lr_compensation="target", hiding_warmup_epochs=2)
    args = KakurenboArguments(hiding_strategy="forget_lag", hiding_strategy_kwargs={"counting_epochs": 5})
    assert args.forget_lag_counting_epochs == 5
    strategy = ForgetLagStrategy(seed=0, num_samples=3)
    with pytest.raises(ValueError, match="another hiding_strategy"):
        strategy.load_state_dict({"events": np.zeros(3, np.uint16)})
    with pytest.raises(ValueError, match="expected uint16"):
        strategy.load_state_dict({"events": np.zeros(3, np.int32), "learned": np.zeros(3, bool)})


# --- forget_original: a counting run, then a retraining run that reads its counts ----------------------

# Four counting epochs over N = 9. Sample 7 never has a finite loss (unseen); sample 8 is never
# recorded by the counting run (e.g. added to the data after it) but trains in the retraining run.
COUNTING_HISTORY = {
    0: "TTTT",  # 0 events
    1: "TFTF",  # 2
    2: "FFFF",  # never learned: dropped last
    3: "FTTT",  # 0 (learning is not forgetting)
    4: "TFTT",  # 1
    5: "FTFT",  # 1
    6: "TTTF",  # 1
    7: "UUUU",  # unseen
    8: "    ",  # never recorded
}


def counting_engine(n=9, fraction=0.0, counting=4, num_epochs=4, **kwargs) -> HidingEngine:
    args = KakurenboArguments(hiding_strategy="forget_original", hiding_fraction=fraction,
                              forget_original_counting_epochs=counting, **kwargs)
    return HidingEngine(n, num_epochs=num_epochs, arguments=args, seed=0)


def retraining_engine(folder, fraction, n=9, counting=4, seed=0, num_epochs=6, **kwargs) -> HidingEngine:
    args = KakurenboArguments(hiding_strategy="forget_original", hiding_fraction=fraction,
                              forget_original_counting_epochs=counting, forget_original_counts_from=str(folder),
                              **kwargs)
    return HidingEngine(n, num_epochs=num_epochs, arguments=args, seed=seed)


@pytest.fixture
def counts_folder(tmp_path):
    """A checkpoint folder of the counting run over COUNTING_HISTORY (hiding_fraction=0: hides nothing)."""
    engine = counting_engine()
    plans = run(engine, COUNTING_HISTORY, 4)
    assert all(p.num_hidden == 0 for p in plans)
    folder = tmp_path / "count" / "checkpoint-8"
    save_hiding_state(engine.state_dict(), str(folder))
    return folder


def test_forget_original_counting_run_hides_nothing_and_counts_every_record():
    engine = counting_engine(fraction=0.5)  # hiding_fraction > 0 changes nothing in a counting run
    plans = run(engine, COUNTING_HISTORY, 4)
    assert [p.num_hidden for p in plans] == [0, 0, 0, 0]
    assert plans[1].num_candidates == 0
    state = engine.strategy.state_dict()
    assert state["events"].tolist() == [0, 2, 0, 0, 1, 1, 1, 0, 0]
    assert state["learned"].tolist() == [True, True, False, True, True, True, True, False, False]
    assert state["observations"].tolist() == [4] * 8 + [0]
    assert not state["hidden"].any() and state["chosen_epoch"].tolist() == [-1]
    engine.stats.update([0, 1, 0], np.ones(3), np.ones(3), [False, True, True])  # a repeat: two records of 0
    state = engine.strategy.state_dict()
    assert state["observations"][:2].tolist() == [6, 5] and state["events"][0] == 1
    assert epochs_counted(state["observations"]) == 4


@pytest.mark.parametrize("fraction, expected, moved_back", [
    (0.25, [0, 3], 0),                      # K = 2: the two never forgotten
    (0.6, [0, 3, 4, 5, 6], 0),              # K = 5: + the three forgotten once
    (0.7, [0, 1, 3, 4, 5, 6], 0),           # K = 6: + the one forgotten twice
    (0.8, [0, 1, 2, 3, 4, 5, 6], 0),        # K = 7: + the never-learned one, last
    (0.9, [0, 1, 2, 3, 4, 5, 6], 1),        # K = 8: 7 (no finite loss) and 8 (never counted) are never dropped
])
def test_forget_original_retrains_without_the_least_forgotten_for_good(counts_folder, fraction, expected, moved_back):
    # the paper's decay: the static set ignores it
    engine = retraining_engine(counts_folder, fraction, hiding_decay_milestones=[1 / 3, 2 / 3],
                               hiding_decay_factors=[0.5, 0.2])
    history = {i: "TFTFTF" for i in range(7)} | {7: "UUUUUU", 8: "TTTTTT"}
    plan = engine.plan_epoch(0)
    assert plan.num_hidden == 0  # the warm-up trains the full set
    feed(engine, history, 0)
    plans = []
    for epoch in range(1, 6):
        plans.append(engine.plan_epoch(epoch))
        assert hidden_list(engine) == expected, epoch
        visible = np.flatnonzero(~engine.hidden)  # predictions keep changing: nothing is counted any more
        flips = np.arange(visible.size) % 2 == epoch % 2
        engine.stats.update(visible, np.ones(visible.size), np.ones(visible.size), flips)
    assert all(p.num_hidden == len(expected) and p.moved_back == moved_back for p in plans)
    assert plans[-1].target_fraction < fraction
    state = engine.strategy.state_dict()
    assert state["events"].tolist() == [0, 2, 0, 0, 1, 1, 1, 0, 0]  # still the counting run's
    assert state["chosen_epoch"].tolist() == [1]


def test_forget_original_breaks_ties_by_an_order_fixed_by_the_seed(tmp_path):
    n = 200
    engine = counting_engine(n=n, counting=2, num_epochs=2)
    run(engine, {i: "TT" for i in range(n)}, 2)  # all tie at 0 events
    save_hiding_state(engine.state_dict(), str(tmp_path / "c"))
    sets = {}
    for seed in (0, 1):
        retrain = retraining_engine(tmp_path / "c", 0.3, n=n, counting=2, seed=seed)
        run(retrain, {i: "TT" for i in range(n)}, 1)
        retrain.plan_epoch(1)
        sets[seed] = hidden_list(retrain)
        order = tie_order(seed, None, ORIGINAL_STREAM, n)
        assert sets[seed] == sorted(np.argsort(order)[:60].tolist())  # the 60 smallest tie keys
        assert 15 <= sum(i < n // 2 for i in sets[seed]) <= 45
    assert sets[0] != sets[1]


def test_forget_original_refuses_a_counts_source_that_cannot_serve(tmp_path, counts_folder):
    with pytest.raises(ValueError, match="forget_original_counts_from=.*is not a folder"):
        retraining_engine(tmp_path / "nowhere", 0.3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"forget_original_counts_from=.*no {HIDING_STATE_NAME}.*counting run"):
        retraining_engine(tmp_path / "empty", 0.3)
    other = HidingEngine(9, 4, KakurenboArguments(hiding_strategy="forget", forget_counting_epochs=2))
    run(other, {i: "TT" for i in range(9)}, 2)
    save_hiding_state(other.state_dict(), str(tmp_path / "forget"))
    with pytest.raises(ValueError, match="forget_original_counts_from=.*holds no forgetting counts.*another"):
        retraining_engine(tmp_path / "forget", 0.3)
    with pytest.raises(ValueError, match="forget_original_counts_from=.*9 samples, but this training set has 10"):
        retraining_engine(counts_folder, 0.3, n=10)
    with pytest.raises(ValueError, match=r"counted 4 epoch\(s\).*forget_original_counting_epochs=20.*"
                                         r"set forget_original_counting_epochs=4"):
        retraining_engine(counts_folder, 0.3, counting=20)
    retraining_engine(counts_folder, 0.3, counting=4)  # the count it holds is enough


def test_forget_original_arguments_are_validated():
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="forget_original_counting_epochs"):
            KakurenboArguments(hiding_strategy="forget_original", forget_original_counting_epochs=bad)
    assert KakurenboArguments().forget_original_counting_epochs == 20
    assert KakurenboArguments().forget_original_counts_from == ""
    with pytest.raises(ValueError, match="forget_original_counts_from is set.*hiding_fraction=0"):
        KakurenboArguments(hiding_strategy="forget_original", hiding_fraction=0.0, forget_original_counts_from="x")
    with pytest.raises(ValueError, match="forget_original_counts_from must be"):
        KakurenboArguments(hiding_strategy="forget_original", forget_original_counts_from=3)
    with pytest.raises(ValueError, match="lr_compensation"):
        KakurenboArguments(hiding_strategy="forget_original", lr_compensation="target")
    args = KakurenboArguments(hiding_strategy="forget_original",
                              hiding_strategy_kwargs={"counting_epochs": 5, "counts_from": "somewhere"})
    assert (args.forget_original_counting_epochs, args.forget_original_counts_from) == (5, "somewhere")


def test_forget_original_state_is_checked(counts_folder):
    counting = ForgetOriginalStrategy(seed=0, num_samples=9)
    with pytest.raises(ValueError, match="another hiding_strategy"):
        counting.load_state_dict({"events": np.zeros(9, np.uint16), "learned": np.zeros(9, bool)})
    retrain = retraining_engine(counts_folder, 0.3)
    run(retrain, {i: "T" for i in range(9)}, 1)
    retrain.plan_epoch(1)
    with pytest.raises(ValueError, match="retraining run.*forget_original_counts_from"):
        counting.load_state_dict(retrain.strategy.state_dict())  # a retraining state resumed as a counting run
    n, arrays = load_strategy_arrays(str(counts_folder))
    assert n == 9 and sorted(arrays) == sorted(ForgetOriginalStrategy.STATE_NAMES)


# --- state: independent of where updates are cut, and the same decisions after a round trip -----------


# (`test_hidden_set_strategies.test_state_does_not_depend_on_where_updates_are_cut` covers both variants.)


def _epoch_values(engine: HidingEngine, epoch: int, n: int):
    rng = np.random.default_rng(100 + epoch)
    seen = np.flatnonzero((rng.random(n) < 0.9) & ~engine.hidden)  # hidden samples are not trained
    return seen, rng.random(seen.size) * 2, rng.random(seen.size), rng.random(seen.size) < 0.6


@pytest.mark.parametrize("variant", ["forget_lag", "forget_original counting", "forget_original retraining"])
@pytest.mark.parametrize("stop", [1, 2, 4])
def test_resumed_engine_decides_like_the_uninterrupted_one(tmp_path, variant, stop):
    n, epochs = 120, 7
    settings = {"forget_lag": {"forget_lag_counting_epochs": 3}}.get(variant, {"forget_original_counting_epochs": 2})
    if variant == "forget_original retraining":
        source = HidingEngine(n, 3, KakurenboArguments(hiding_strategy="forget_original", hiding_fraction=0.0), seed=5)
        for epoch in range(3):
            source.stats.update(*_epoch_values(source, epoch, n))
        save_hiding_state(source.state_dict(), str(tmp_path / "counts"))
        settings = {**settings, "forget_original_counts_from": str(tmp_path / "counts")}
    args = KakurenboArguments(hiding_strategy=variant.split()[0], hiding_fraction=0.4, **settings)
    full = HidingEngine(n, num_epochs=epochs, arguments=args, seed=5)
    resumed = None
    hidden_full, hidden_resumed = [], []
    for epoch in range(epochs):
        if epoch == stop:  # checkpoint, then a fresh engine loads it from disk
            save_hiding_state(full.state_dict(), str(tmp_path / "checkpoint"))
            resumed = HidingEngine(n, num_epochs=epochs, arguments=args, seed=5)
            resumed.load_state_dict(load_hiding_state(str(tmp_path / "checkpoint")))
        for engine, record in ((full, hidden_full), (resumed, hidden_resumed)):
            if engine is not None:
                engine.plan_epoch(epoch)
                record.append(hidden_list(engine))
                engine.stats.update(*_epoch_values(engine, epoch, n))
    assert hidden_resumed == hidden_full[stop:]
    assert [p for p in resumed.plans if p.epoch >= stop] == [p for p in full.plans if p.epoch >= stop]
    if variant == "forget_original counting":
        assert not any(hidden_full)
    else:
        assert sum(map(len, hidden_full)) > 0
    if variant == "forget_lag":
        assert len({tuple(h) for h in hidden_full[3:]}) > 1  # re-ranked: not one static set
    for key, value in full.state_dict()["strategy"].items():
        np.testing.assert_array_equal(resumed.state_dict()["strategy"][key], value)


# --- end to end: KakurenboTrainer on a tiny ViT --------------------------------------------------------

N_SAMPLES = 96
LAG_RUN = dict(num_train_epochs=4, hiding_strategy="forget_lag", hiding_fraction=0.3, forget_lag_counting_epochs=2,
               per_device_train_batch_size=16)


@pytest.fixture(scope="module")
def train_set():
    return make_image_dataset(N_SAMPLES, noise=1.5)


class PlanSpy(KakurenboTrainer):
    """Keeps what each epoch's selection saw: the strategy's state, the losses, the hidden set."""

    def on_epoch_plan(self, plan):
        engine = self.hiding_engine
        self.seen = getattr(self, "seen", [])
        self.seen.append((plan, engine.strategy.state_dict(), engine.stats.loss.copy(), engine.hidden.copy()))


def reference_hidden(events, learned, loss, k, tie_break):
    """The k fewest events, never-learned after every count, unseen never; ties in `tie_break` order."""
    scores = np.where(learned, events.astype(np.float64), 1e30)
    scores[~np.isfinite(loss)] = np.inf
    ranked = sorted(np.flatnonzero(scores < np.inf), key=lambda i: (scores[i], tie_break[i]))
    hidden = np.zeros(loss.size, dtype=bool)
    hidden[ranked[:k]] = True
    return hidden


def test_forget_lag_trains_and_hides(tmp_path, train_set):
    trainer = PlanSpy(model=make_vit(seed=3), args=training_args(tmp_path / "lag", LAG_RUN), train_dataset=train_set,
                      data_collator=collate)
    trainer.train()
    k = int(0.3 * N_SAMPLES)
    assert [plan.num_hidden for plan, *_ in trainer.seen] == [0, 0, k, k]
    seed = trainer.hiding_engine.seed
    for plan, state, loss, hidden in trainer.seen[2:]:
        tie_break = tie_order(seed, plan.epoch, LAG_STREAM, N_SAMPLES)
        np.testing.assert_array_equal(hidden, reference_hidden(state["events"], state["learned"], loss, k, tie_break))
    (_, state_2, loss_2, hidden_2), (_, state_3, loss_3, _) = trainer.seen[2:]
    # Hidden samples were neither trained nor observed in epoch 2: their losses and counts did not move.
    np.testing.assert_array_equal(loss_3[hidden_2], loss_2[hidden_2])
    np.testing.assert_array_equal(state_3["events"][hidden_2], state_2["events"][hidden_2])
    assert not np.array_equal(loss_3[~hidden_2], loss_2[~hidden_2])  # the visible ones were
    assert trainer.sample_counters["forwarded"] == 4 * N_SAMPLES - 2 * k


def test_forget_original_counting_run_then_retraining_run(tmp_path, train_set):
    counting = KakurenboTrainer(
        model=make_vit(seed=3), train_dataset=train_set, data_collator=collate,
        args=training_args(tmp_path / "count", num_train_epochs=2, hiding_strategy="forget_original",
                           hiding_fraction=0.0, forget_original_counting_epochs=2, save_strategy="epoch"))
    counting.train()
    checkpoint = tmp_path / "count" / f"checkpoint-{counting.state.global_step}"
    n, counts = load_strategy_arrays(str(checkpoint))
    assert n == N_SAMPLES and epochs_counted(counts["observations"]) == 2
    assert counts["learned"].any() and not counts["hidden"].any()
    assert all(plan.num_hidden == 0 for plan in HidingReport.from_checkpoint(str(checkpoint)).plans)

    retrain = PlanSpy(
        model=make_vit(seed=4), train_dataset=train_set, data_collator=collate,
        args=training_args(tmp_path / "retrain", num_train_epochs=3, hiding_strategy="forget_original",
                           hiding_fraction=0.3, forget_original_counting_epochs=2,
                           forget_original_counts_from=str(checkpoint)))
    retrain.train()
    k = int(0.3 * N_SAMPLES)
    _, _, loss_1, _ = retrain.seen[1]  # the losses the set was chosen with (all finite after the warm-up)
    tie_break = tie_order(retrain.hiding_engine.seed, None, ORIGINAL_STREAM, N_SAMPLES)
    expected = np.flatnonzero(reference_hidden(counts["events"], counts["learned"], loss_1, k, tie_break))
    assert expected.size == k
    report = retrain.hiding_report()
    assert report.hidden_indices(0).size == 0  # the warm-up epoch trains the full set
    np.testing.assert_array_equal(report.hidden_indices(1), expected)
    np.testing.assert_array_equal(report.hidden_indices(2), expected)  # a static set
    final = retrain.hiding_engine.strategy.state_dict()
    np.testing.assert_array_equal(final["events"], counts["events"])  # nothing counted while retraining

    short = KakurenboTrainer(
        model=make_vit(seed=4), train_dataset=train_set, data_collator=collate,
        args=training_args(tmp_path / "short", num_train_epochs=1, hiding_strategy="forget_original",
                           hiding_fraction=0.3, forget_original_counts_from=str(checkpoint)))  # 20 epochs asked
    with pytest.raises(ValueError, match="forget_original_counting_epochs=20"):
        short.train()
    assert short.state.global_step == 0


# The resume test's run: checkpoints every 2 steps of 6 per epoch (96 samples, batches of 16).
RESUME_RUN = dict(LAG_RUN, save_strategy="steps", save_steps=2, confidence_threshold=0.3)


class HiddenLog(TrainerCallback):
    def __init__(self, trainer_ref):
        self.trainer_ref, self.hidden = trainer_ref, {}

    def on_step_begin(self, args, state, control, **kwargs):
        self.hidden[state.global_step] = hidden_list(self.trainer_ref[0].hiding_engine)


def _run_lag(out, train_set, resume=None):
    ref = []
    log = HiddenLog(ref)
    trainer = KakurenboTrainer(model=make_vit(seed=3), args=training_args(out, RESUME_RUN), train_dataset=train_set,
                               data_collator=collate, callbacks=[log])
    ref.append(trainer)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, log


@pytest.fixture(scope="module")
def lag_full_run(tmp_path_factory, train_set):
    out = tmp_path_factory.mktemp("lag_full")
    trainer, log = _run_lag(out, train_set)
    return out, trainer, log


@pytest.mark.parametrize("epoch", [1, 2])  # inside the last counting epoch; inside the first ranked one
def test_forget_lag_resumes_mid_epoch_exactly(tmp_path, train_set, lag_full_run, epoch):
    out, full, full_log = lag_full_run
    plan = next(p for p in full.hiding_engine.plans if p.epoch == epoch)
    step = next(s for s in range(plan.start_step + 1, plan.start_step + plan.update_steps) if s % 2 == 0)
    checkpoint = out / f"checkpoint-{step}"
    assert (checkpoint / HIDING_STATE_NAME).is_file()
    resumed, resumed_log = _run_lag(tmp_path / "resumed", train_set, resume=str(checkpoint))
    def after(trainer):
        return [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e and e["step"] > step]

    assert after(resumed) == after(full) and after(full)
    assert {s: h for s, h in full_log.hidden.items() if s >= step} == resumed_log.hidden
    assert [p.num_hidden for p in resumed.hiding_engine.plans] == [p.num_hidden for p in full.hiding_engine.plans]
    full_weights, resumed_weights = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(full_weights[k], resumed_weights[k]) for k in full_weights)
    for key, value in full.hiding_engine.strategy.state_dict().items():
        np.testing.assert_array_equal(resumed.hiding_engine.strategy.state_dict()[key], value, err_msg=key)
