"""The weighted strategies: `infobatch` and `iswr` (rules on hand-made tables, engine, 1-process training).

Each rule is checked as published on a small table whose expected hidden set, weights and
probabilities are worked out by hand in the test; the random parts by their exact sizes and
supports, and by frequencies over many epochs. Then in one process: the engine's LR and refresh
rules for them, the weights really used in each step's loss, `sample_counters` for a multiset
epoch, and an exact resume from a mid-epoch checkpoint (weights and draws from the checkpoint).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import collate, make_image_dataset, make_vit

from kakurenbo_hf import KakurenboTrainer, KakurenboTrainingArguments
from kakurenbo_hf.core.config import KakurenboArguments
from kakurenbo_hf.core.engine import HidingEngine
from kakurenbo_hf.hf.indexing import SAMPLE_INDEX_KEY
from kakurenbo_hf.core.stats import SampleStats
from kakurenbo_hf.strategies import build_strategy
from kakurenbo_hf.strategies.infobatch import InfoBatchStrategy
from kakurenbo_hf.strategies.iswr import ISWRStrategy

torch.set_num_threads(1)


def _stats(loss) -> SampleStats:
    stats = SampleStats(len(loss))
    stats.update(np.arange(len(loss)), np.asarray(loss, dtype=np.float32), np.ones(len(loss)),
                 np.ones(len(loss), dtype=bool))
    return stats


def _infobatch(num_epochs=8, seed=0, **knobs) -> InfoBatchStrategy:
    args = KakurenboArguments(hiding_strategy="infobatch", **knobs)
    return build_strategy("infobatch", seed=seed, arguments=args, num_samples=12, num_epochs=num_epochs)


def _iswr(num_samples=4, seed=0, **knobs) -> ISWRStrategy:
    args = KakurenboArguments(hiding_strategy="iswr", **knobs)
    return build_strategy("iswr", seed=seed, arguments=args, num_samples=num_samples, num_epochs=10)


# --- InfoBatch ------------------------------------------------------------------------------------

# Finite mean = (0.1 + ... + 0.6 + 2 + 3 + 4 + 5) / 10 = 1.61: samples 0..5 are "well learned"; the two
# unseen samples (+inf) are neither in the mean nor ever pruned.
INFOBATCH_LOSS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 2.0, 3.0, 4.0, 5.0, np.inf, np.inf]
WELL_LEARNED = set(range(6))


@pytest.mark.parametrize("ratio, pruned, weight", [(0.5, 3, 2.0), (0.3, 2, 1 / 0.7), (0.9, 6, None)])
def test_infobatch_rule_on_a_hand_made_table(ratio, pruned, weight):
    # keep floor((1 - r) * 6) of the 6 well-learned: 3 (r=0.5), 4 (r=0.3: 4.2), 0 (r=0.9: 0.6)
    decision = _infobatch(infobatch_prune_ratio=ratio).select(_stats(INFOBATCH_LOSS), 0.3, epoch=1)
    hidden = set(np.flatnonzero(decision.hidden).tolist())
    assert hidden <= WELL_LEARNED and len(hidden) == pruned
    assert decision.num_candidates == 6 and decision.moved_back == 6 - pruned
    assert decision.draws is None
    if weight is None:  # nothing kept among the well learned: every weight 1, the model's own loss
        assert decision.weights is None
        return
    expected = np.ones(12, dtype=np.float32)
    expected[sorted(WELL_LEARNED - hidden)] = np.float32(weight)
    assert decision.weights.dtype == np.float32 and np.array_equal(decision.weights, expected)


@pytest.mark.parametrize("num_epochs, delta, pruning_epochs", [(8, 0.875, range(0, 7)), (10, 0.875, range(0, 8)),
                                                               (4, 0.5, range(0, 2)), (5, 1.0, range(0, 5))])
def test_infobatch_anneals_with_the_full_data_in_the_last_epochs(num_epochs, delta, pruning_epochs):
    """Epoch e prunes while e + 1 <= delta * E (the published sampler counts from 1): with E = 8 the last one,
    with E = 10 the last two (8.75) train on everything, weights 1."""
    strategy = _infobatch(num_epochs=num_epochs, infobatch_delta=delta)
    stats = _stats(INFOBATCH_LOSS)
    for epoch in range(1, num_epochs):
        decision = strategy.select(stats, 0.3, epoch)
        if epoch in pruning_epochs:
            assert decision.num_hidden == 3 and decision.weights is not None, epoch
        else:
            assert decision.num_hidden == 0 and decision.weights is None and decision.num_candidates == 0, epoch


def test_infobatch_prunes_each_well_learned_sample_with_probability_r():
    strategy = _infobatch(num_epochs=10_000, infobatch_prune_ratio=0.5, infobatch_delta=1.0)
    stats = _stats(INFOBATCH_LOSS)
    counts = np.zeros(12)
    epochs = 3000
    for epoch in range(epochs):
        counts += strategy.select(stats, 0.3, epoch).hidden
    assert np.all(counts[6:] == 0)
    np.testing.assert_allclose(counts[:6] / epochs, 0.5, atol=0.04)  # 3 of 6 each epoch, uniformly


def test_infobatch_is_deterministic_per_seed_and_epoch_and_leaves_the_global_rng():
    stats = _stats(INFOBATCH_LOSS)
    state = np.random.get_state()
    first = _infobatch(seed=3).select(stats, 0.3, 2)
    assert np.array_equal(first.hidden, _infobatch(seed=3).select(stats, 0.3, 2).hidden)
    others = {tuple(np.flatnonzero(_infobatch(seed=s).select(stats, 0.3, e).hidden)) for s in range(4) for e in (1, 2)}
    assert len(others) > 1
    assert all(a == b for a, b in zip(np.random.get_state()[1], state[1]))


def test_infobatch_knobs_are_validated():
    for field, value in [("infobatch_prune_ratio", 0.0), ("infobatch_prune_ratio", 0.95), ("infobatch_delta", 0.0),
                         ("infobatch_delta", 1.5)]:
        with pytest.raises(ValueError, match=field):
            KakurenboArguments(hiding_strategy="infobatch", **{field: value})


def _engine(strategy, loss, num_epochs=8, **knobs) -> HidingEngine:
    args = KakurenboArguments(hiding_strategy=strategy, hiding_decay_milestones=[], hiding_decay_factors=[], **knobs)
    engine = HidingEngine(len(loss), num_epochs=num_epochs, arguments=args)
    engine.stats.update(np.arange(len(loss)), np.asarray(loss, np.float32), np.ones(len(loss)),
                        np.ones(len(loss), dtype=bool))
    return engine


@pytest.mark.parametrize("mode", ["target", "realized", "none"])
def test_infobatch_applies_no_lr_factor_and_no_refresh(mode):
    """Its weights already keep the epoch's summed gradient: no LR compensation on top, whatever is asked."""
    engine = _engine("infobatch", INFOBATCH_LOSS, hiding_fraction=0.1, lr_compensation=mode)
    plan = engine.plan_epoch(1)
    assert plan.num_hidden == 3 > int(0.1 * 12)  # the count comes from r, not from hiding_fraction
    assert plan.lr_factor == 1.0 and engine.lr_compensation == "none"
    assert engine.weights is not None and plan.num_trained == 9
    assert engine.samples_to_refresh(2).size == 0  # pruned samples keep their latest training loss


# --- ISWR ------------------------------------------------------------------------------------------

# losses 1, 3, 0 and an unseen sample (+inf, counted as the largest finite loss, 3): sum 7.
# s = 0.5: p = 0.5 * (1, 3, 0, 3) / 7 + 0.5 / 4
ISWR_LOSS = [1.0, 3.0, 0.0, np.inf]
ISWR_P = np.array([0.5 / 7 + 0.125, 1.5 / 7 + 0.125, 0.125, 1.5 / 7 + 0.125])


def test_iswr_weights_and_draw_count_on_a_hand_made_table():
    decision = _iswr(iswr_smoothing=0.5).select(_stats(ISWR_LOSS), 0.3, epoch=1)
    assert decision.draws.size == 4 - 1  # N - floor(0.3 * 4)
    np.testing.assert_allclose(decision.weights, 1 / (4 * ISWR_P), rtol=1e-6)
    assert decision.weights.dtype == np.float32
    drawn = np.zeros(4, dtype=bool)
    drawn[decision.draws] = True
    assert np.array_equal(decision.hidden, ~drawn)
    assert decision.num_candidates == 1


def test_iswr_draws_with_the_smoothed_loss_probabilities():
    strategy = _iswr(iswr_smoothing=0.5)
    stats = _stats(ISWR_LOSS)
    counts = np.zeros(4)
    for epoch in range(4000):
        counts += np.bincount(strategy.select(stats, 0.3, epoch).draws, minlength=4)
    np.testing.assert_allclose(counts / counts.sum(), ISWR_P, atol=0.015)
    assert (counts > 0).all()  # a zero-loss sample is still drawn (smoothing)


def test_iswr_weighted_batch_mean_is_unbiased():
    """E over draws i ~ p of w_i * l_i = mean of l: each batch's weighted mean loss estimates the full mean."""
    loss = np.array([0.2, 2.5, 0.05, 1.0, 4.0, 0.7])
    strategy = _iswr(num_samples=6, iswr_smoothing=0.3, iswr_draws_fraction=1.0)
    decision = strategy.select(_stats(loss), 0.3, 1)
    p = 0.7 * loss / loss.sum() + 0.3 / 6
    assert np.sum(p * decision.weights * loss) == pytest.approx(loss.mean(), rel=1e-6)  # exactly, in expectation
    estimates = [np.mean(decision.weights[d.draws] * loss[d.draws])
                 for d in (strategy.select(_stats(loss), 0.3, e) for e in range(3000))]
    assert np.mean(estimates) == pytest.approx(loss.mean(), rel=0.03)
    assert np.mean(loss[np.concatenate([strategy.select(_stats(loss), 0.3, e).draws for e in range(300)])]) > \
        1.3 * loss.mean()  # the draws themselves favour high losses


def test_iswr_knobs():
    stats = _stats([0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0, 0.0, 1.0])
    assert _iswr(num_samples=10, iswr_draws_fraction=0.5).select(stats, 0.3, 1).draws.size == 5
    assert _iswr(num_samples=10).select(stats, 0.5, 1).draws.size == 5  # F_e = 0.5
    assert _iswr(num_samples=10, iswr_unbiased=False).select(stats, 0.3, 1).weights is None
    # s = 0: p proportional to the loss; a zero-loss sample is never drawn (its weight 0 is never used)
    decision = _iswr(num_samples=10, iswr_smoothing=0.0).select(stats, 0.3, 1)
    assert not set(decision.draws.tolist()) & {0, 4, 8}
    assert decision.weights[[0, 4, 8]].tolist() == [0.0, 0.0, 0.0]
    # every loss 0: uniform
    assert np.allclose(_iswr(num_samples=10).select(_stats(np.zeros(10)), 0.3, 1).weights, 1.0)
    for field, value in [("iswr_smoothing", -0.1), ("iswr_smoothing", 1.5), ("iswr_draws_fraction", 0.0),
                         ("iswr_draws_fraction", 1.2)]:
        with pytest.raises(ValueError, match=field):
            KakurenboArguments(hiding_strategy="iswr", **{field: value})


def test_iswr_is_deterministic_per_seed_and_epoch():
    stats = _stats(ISWR_LOSS)
    a, b = _iswr(seed=5).select(stats, 0.3, 3), _iswr(seed=5).select(stats, 0.3, 3)
    assert np.array_equal(a.draws, b.draws) and np.array_equal(a.weights, b.weights)
    assert len({tuple(_iswr(seed=5).select(stats, 0.3, e).draws) for e in range(10)}) > 1


@pytest.mark.parametrize("mode, factor", [("realized", 4 / 3), ("target", 1 / 0.7), ("none", 1.0)])
def test_iswr_engine_plan(mode, factor):
    engine = _engine("iswr", ISWR_LOSS, hiding_fraction=0.3, lr_compensation=mode)
    plan = engine.plan_epoch(1)
    assert plan.num_draws == 3 and plan.num_trained == 3
    assert plan.lr_factor == pytest.approx(factor)  # as KAKURENBO: the weights unbias each step, not the epoch
    assert engine.draws.size == 3 and engine.weights is not None
    assert engine.samples_to_refresh(2).size == 0


# --- in one process: training, weights in each step, counters, exact resume --------------------------


class RecordingTrainer(KakurenboTrainer):
    """Notes, per training step, the samples, the loss returned and the loss expected from the epoch's
    weights (recomputed here from plain per-sample cross-entropies)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records = []  # (step, epoch, indices, returned loss, expected weighted loss or None)
        self.epoch_decisions = {}  # epoch -> (hidden, weights, draws)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        indices = inputs[SAMPLE_INDEX_KEY].tolist()
        labels = inputs["labels"]
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training:
            engine = self.hiding_engine
            expected = None
            if engine.weights is not None:
                plain = F.cross_entropy(outputs.logits.detach().float(), labels, reduction="none")
                expected = float((torch.from_numpy(engine.weights[indices]) * plain).sum() / len(indices))
            self.records.append((self.state.global_step, engine.current_plan.epoch, indices,
                                 float(loss.detach()), expected))
        return (loss, outputs) if return_outputs else loss

    def _run_epoch(self, *args, **kwargs):
        result = super()._run_epoch(*args, **kwargs)
        engine = self.hiding_engine
        epoch = engine.current_plan.epoch
        self.epoch_decisions[epoch] = (engine.hidden.copy(), None if engine.weights is None else engine.weights.copy(),
                                       None if engine.draws is None else engine.draws.copy())
        return result


def _run(out, data, strategy, resume=None, **overrides):
    values = dict(num_train_epochs=4, hiding_fraction=0.3, hiding_strategy=strategy, save_strategy="steps",
                  save_steps=2, per_device_train_batch_size=24, learning_rate=3e-3, use_cpu=True, report_to=[],
                  logging_steps=1, seed=7, disable_tqdm=True, dataloader_pin_memory=False)
    values.update(overrides)
    trainer = RecordingTrainer(model=make_vit(seed=3), train_dataset=data, data_collator=collate,
                               args=KakurenboTrainingArguments(output_dir=str(out), **values))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.fixture(scope="module")
def full_runs(tmp_path_factory):
    data = make_image_dataset(96, noise=1.5)
    out = tmp_path_factory.mktemp("weighted")
    return out, data, {name: _run(out / name, data, name) for name in ("infobatch", "iswr")}


@pytest.mark.parametrize("strategy", ["infobatch", "iswr"])
def test_each_step_backpropagates_the_epochs_weighted_loss(full_runs, strategy):
    _, _, runs = full_runs
    trainer = runs[strategy]
    weighted = [r for r in trainer.records if r[4] is not None]
    assert len(weighted) >= 4, "no weighted epoch ran"
    for step, epoch, indices, returned, expected in trainer.records:
        if expected is not None:
            assert returned == pytest.approx(expected, rel=1e-5), (step, epoch)
    plans = trainer.hiding_engine.plans
    trained = {}
    for _, epoch, indices, _, _ in trainer.records:
        trained.setdefault(epoch, []).extend(indices)
    for plan in plans:  # each epoch trained exactly its decision: the visible set, or the multiset of draws
        hidden, weights, draws = trainer.epoch_decisions[plan.epoch]
        if draws is not None:
            assert sorted(trained[plan.epoch]) == sorted(draws.tolist())
        else:
            assert sorted(trained[plan.epoch]) == np.flatnonzero(~hidden).tolist()
    if strategy == "infobatch":
        assert [p.lr_factor for p in plans] == [1.0] * 4
        assert plans[-1].num_hidden == 0 and trainer.epoch_decisions[3][1] is None  # 4 + 1 > 0.875 * 4: annealing
        assert all(p.num_hidden > 0 for p in plans[1:3])
    else:
        assert all(p.num_draws == 96 - int(np.floor(p.target_fraction * 96 + 1e-9)) for p in plans[1:])
        assert any(len(set(d.tolist())) < d.size for _, _, d in list(trainer.epoch_decisions.values())[1:])


@pytest.mark.parametrize("strategy", ["infobatch", "iswr"])
def test_sample_counters_count_every_occurrence(full_runs, strategy):
    _, _, runs = full_runs
    trainer = runs[strategy]
    occurrences = sum(len(indices) for _, _, indices, _, _ in trainer.records)
    assert trainer.sample_counters == {"forwarded": occurrences, "backpropagated": occurrences,
                                       "refresh_forwarded": 0}
    assert occurrences == sum(plan.num_trained for plan in trainer.hiding_engine.plans)


def _mid_epoch_step(trainer):
    plan = next(p for p in trainer.hiding_engine.plans[1:] if trainer.epoch_decisions[p.epoch][1] is not None)
    return next(s for s in range(plan.start_step + 1, plan.start_step + plan.update_steps) if s % 2 == 0)


@pytest.mark.parametrize("strategy", ["infobatch", "iswr"])
def test_resume_mid_epoch_is_exact(full_runs, strategy):
    out, data, runs = full_runs
    full = runs[strategy]
    step = _mid_epoch_step(full)
    resumed = _run(out / f"{strategy}_resumed", data, strategy, resume=str(out / strategy / f"checkpoint-{step}"))
    after = [r for r in full.records if r[0] >= step]
    assert [r[:4] for r in resumed.records] == [r[:4] for r in after]  # same samples, same losses, bit for bit
    assert resumed.records[0][4] is not None  # resumed inside a weighted epoch: its weights came from the checkpoint
    for epoch, (hidden, weights, draws) in resumed.epoch_decisions.items():
        want = full.epoch_decisions[epoch]
        assert np.array_equal(hidden, want[0])
        for got, expected in ((weights, want[1]), (draws, want[2])):
            assert (got is None) == (expected is None) and (got is None or np.array_equal(got, expected))
    strip = lambda t: [(p.epoch, p.num_hidden, p.num_draws, p.start_step, p.update_steps, p.lr_factor)
                       for p in t.hiding_engine.plans]
    assert strip(resumed) == strip(full)
    full_weights, resumed_weights = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(full_weights[k], resumed_weights[k]) for k in full_weights)
    assert resumed.sample_counters["forwarded"] == sum(len(r[2]) for r in after)
