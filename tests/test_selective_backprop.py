"""Selective Backprop (`hiding_strategy="selective_backprop"`): the published rule, and its glue.

1. The rule (pure): P = max(p_min, CDF(L) ** beta) over a window of recent losses, checked against
   an independent loop on hand-made histories, statistically (fixed seeds, exact expected
   frequencies) and exactly at the edges of beta and p_min.
2. Training: every step of a selective run is, bit for bit, the plain `Trainer`'s step on the
   rows that were kept (losses, learning rates, final weights and BatchNorm statistics), with
   dropout, label smoothing, gradient accumulation, a padding collator and a causal LM whose loss
   is normalised by `num_items_in_batch`; the scoring pass runs in eval mode without gradients
   and gives the statistics table every sample.
3. Exact resume in one process (the per-rank loss history travels in the checkpoint). Two
   processes: tests/test_selective_backprop_multiprocess.py.
"""

from __future__ import annotations

import collections
import os
import shutil

import numpy as np
import pytest
import torch
from helpers import (
    collate,
    logged,
    make_bert,
    make_image_dataset,
    make_text_dataset,
    make_vit,
    pad_collate,
    training_args,
)
from lm_helpers import lm_dataset, tiny_gpt2
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer, TrainingArguments

from kakurenbo_hf import KakurenboTrainer
from kakurenbo_hf.distributed.checkpoint import rank_state_file_name
from kakurenbo_hf.core.config import KakurenboArguments
from kakurenbo_hf.hf.indexing import SAMPLE_INDEX_KEY
from kakurenbo_hf.core.stats import SampleStats, per_sample_statistics
from kakurenbo_hf.strategies import build_strategy
from kakurenbo_hf.hf.batch_selection import take_rows
from kakurenbo_hf.strategies.selective_backprop import BackpropSelector

torch.set_num_threads(1)


# --- 1. the rule ----------------------------------------------------------------------------------


def published_probabilities(history: list[float], batch: list[float], window: int, beta: float, floor: float):
    """The reference code's rule, written as it reads: append the batch to a bounded deque, then for
    each loss the percent of the deque strictly below it, to the power beta, at least the floor."""
    recent = collections.deque(history, maxlen=window)
    for loss in batch:
        recent.append(loss)
    probabilities = []
    for loss in batch:
        below = sum(1 for old in recent if old < loss)
        probabilities.append(max(floor, (below / len(recent)) ** beta))
    return probabilities


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0, 3.0, 0.5])
@pytest.mark.parametrize("window, floor", [(1024, 0.0), (6, 0.0), (10, 0.2)])
def test_probabilities_are_the_published_rule(beta, window, floor):
    history = [0.5, 2.0, 0.1, 3.5, 1.0, 1.0, 0.7, 2.5]
    batch = [1.0, 0.05, 4.0, 0.7, 2.2]
    selector = BackpropSelector(beta=beta, history_size=window, min_probability=floor)
    selector.load_state_dict({"history": np.array(history, dtype=np.float32)})
    got = selector.observe(np.array(batch, dtype=np.float32))
    expected = published_probabilities(history, batch, window, beta, floor)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    assert list(selector.history) == (history + batch)[-window:]


def test_hand_computed_percentiles():
    """History 1..8 and a batch (4.5, 9, 0): 11 values; below 4.5: 1,2,3,4,0 = 5; below 9: 10; below 0: none."""
    selector = BackpropSelector(beta=2.0, history_size=1024)
    selector.load_state_dict({"history": np.arange(1, 9, dtype=np.float32)})
    np.testing.assert_allclose(selector.observe(np.array([4.5, 9.0, 0.0])), [(5 / 11) ** 2, (10 / 11) ** 2, 0.0])


def _expected_frequencies(probabilities: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """P(kept) per sample: its own draw, plus, for the highest loss, the event that nobody won a draw."""
    expected = probabilities.copy()
    expected[int(np.argmax(loss))] += float(np.prod(1.0 - probabilities))
    return expected


@pytest.mark.parametrize("beta", [1.0, 3.0])
def test_draws_win_with_probability_percentile_to_the_beta(beta):
    rng = np.random.default_rng(0)
    history = rng.exponential(size=200).astype(np.float32)
    batch = np.quantile(history, [0.05, 0.3, 0.5, 0.7, 0.9, 0.99]).astype(np.float32)
    probabilities = np.array(published_probabilities(history.tolist(), batch.tolist(), 1024, beta, 0.0))
    expected = _expected_frequencies(probabilities, batch)
    trials = 4000
    kept = np.zeros(batch.size)
    for step in range(trials):
        selector = BackpropSelector(beta=beta, history_size=1024, seed=11)
        selector.load_state_dict({"history": history})
        kept += selector.select(batch, step=step, micro_batch=0)
    frequency = kept / trials
    sigma = np.sqrt(expected * (1 - expected) / trials)
    assert np.all(np.abs(frequency - expected) <= 4.5 * sigma + 1e-12), (frequency, expected)
    # Selectivity: the biggest losers are kept far more often.
    assert frequency[-1] > frequency[2] > frequency[0]


def test_beta_and_floor_edges_are_exact():
    loss = np.array([0.3, 0.1, 5.0, 0.2, 1.0], dtype=np.float32)
    history = np.linspace(0, 2, 50, dtype=np.float32)
    for step in range(50):
        everything = BackpropSelector(beta=0.0, seed=step)  # CDF ** 0 = 1, even for the lowest loss
        assert everything.select(loss, step=step, micro_batch=0).all()
        floor_one = BackpropSelector(beta=3.0, min_probability=1.0, seed=step)
        assert floor_one.select(loss, step=step, micro_batch=0).all()
        strict = BackpropSelector(beta=1e6, seed=step)  # CDF < 1 always: P underflows to 0, nobody wins
        strict.load_state_dict({"history": history})
        assert strict.select(loss, step=step, micro_batch=0).tolist() == [False, False, True, False, False]
        lowest = BackpropSelector(beta=0.5, seed=step)  # CDF(min) = 0: P = 0, never drawn
        lowest.load_state_dict({"history": history + 0.5})
        assert not lowest.select(loss, step=step, micro_batch=0)[1]


def test_draws_are_keyed_by_seed_step_rank_and_micro_batch():
    loss = np.linspace(0.1, 3.0, 64).astype(np.float32)

    def mask(seed=0, step=5, rank=0, micro_batch=0):
        return BackpropSelector(beta=1.0, seed=seed, rank=rank).select(loss, step=step, micro_batch=micro_batch)

    reference = mask()
    assert np.array_equal(reference, mask())
    for changed in [dict(seed=1), dict(step=6), dict(rank=1), dict(micro_batch=1)]:
        assert not np.array_equal(reference, mask(**changed)), changed


def test_history_window_and_non_finite_losses():
    selector = BackpropSelector(beta=1.0, history_size=4, min_probability=0.25)
    probabilities = selector.observe(np.array([1.0, np.nan, 2.0, np.inf, 3.0, -np.inf], dtype=np.float32))
    assert selector.history.tolist() == [1.0, 2.0, 3.0]  # non-finite values stay out
    assert probabilities[[1, 3, 5]].tolist() == [0.25, 0.25, 0.25]
    selector.observe(np.array([4.0, 5.0], dtype=np.float32))
    assert selector.history.tolist() == [2.0, 3.0, 4.0, 5.0]
    # Nobody finite: the first row is kept.
    assert BackpropSelector(beta=1.0).select(np.array([np.nan, np.nan]), step=0, micro_batch=0).tolist() == [True, False]


def test_state_round_trip_continues_identically():
    rng = np.random.default_rng(3)
    batches = [rng.exponential(size=16).astype(np.float32) for _ in range(12)]
    straight = BackpropSelector(beta=2.0, history_size=40, seed=9, rank=1)
    masks = [straight.select(batch, step=step, micro_batch=0) for step, batch in enumerate(batches)]
    first = BackpropSelector(beta=2.0, history_size=40, seed=9, rank=1)
    for step, batch in enumerate(batches[:5]):
        first.select(batch, step=step, micro_batch=0)
    resumed = BackpropSelector(beta=2.0, history_size=40, seed=9, rank=1)
    resumed.load_state_dict(first.state_dict())
    rest = [resumed.select(batch, step=step, micro_batch=0) for step, batch in enumerate(batches) if step >= 5]
    assert all(np.array_equal(a, b) for a, b in zip(masks[5:], rest))


def test_strategy_hides_nothing_and_validates_its_knobs():
    arguments = KakurenboArguments(hiding_strategy="selective_backprop", selective_backprop_beta=2.0,
                                   selective_backprop_history=7, selective_backprop_min_probability=0.1)
    strategy = build_strategy("selective_backprop", seed=4, arguments=arguments, num_samples=10)
    decision = strategy.select(SampleStats(10), 0.3, epoch=1)
    assert decision.num_hidden == 0 and decision.weights is None and decision.draws is None
    selector = strategy.batch_selector(rank=1)
    assert (selector.beta, selector.history_size, selector.min_probability, selector.seed, selector.rank) == (
        2.0, 7, 0.1, 4, 1)
    bad = [("selective_backprop_beta", -1.0), ("selective_backprop_beta", float("nan")),
           ("selective_backprop_history", 0), ("selective_backprop_history", 2.5),
           ("selective_backprop_min_probability", 1.5), ("selective_backprop_min_probability", -0.1)]
    for field, value in bad:
        with pytest.raises(ValueError, match=field):
            KakurenboArguments(hiding_strategy="selective_backprop", **{field: value})
    with pytest.raises(ValueError, match="lr_compensation='target'"):
        KakurenboArguments(hiding_strategy="selective_backprop", lr_compensation="target")
    KakurenboArguments(hiding_strategy="kakurenbo", lr_compensation="target")  # other strategies unaffected


def test_take_rows_slices_every_per_sample_entry():
    batch = {"x": torch.arange(12).reshape(4, 3), "mask": np.arange(4), "names": ["a", "b", "c", "d"],
             "nested": {"y": torch.arange(4)}, "scalar": torch.tensor(2.0), "flag": True}
    kept = take_rows(batch, np.array([1, 3]), 4)
    assert kept["x"].tolist() == [[3, 4, 5], [9, 10, 11]]
    assert kept["mask"].tolist() == [1, 3] and kept["names"] == ["b", "d"]
    assert kept["nested"]["y"].tolist() == [1, 3]
    assert kept["scalar"].item() == 2.0 and kept["flag"] is True
    with pytest.raises(ValueError, match="'positions'"):
        take_rows({"positions": torch.arange(7)}, np.array([0]), 4)


# --- 2. training ----------------------------------------------------------------------------------

# On top of helpers.TINY_RUN (each run sets its batch size): `training_args(out, COMMON, ...)`.
COMMON = dict(lr_scheduler_type="linear")
SB = dict(hiding_strategy="selective_backprop", selective_backprop_beta=1.0)


class BatchNormNet(nn.Module):
    """A small conv net with BatchNorm and dropout; notes the mode of every forward pass."""

    def __init__(self, num_classes=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(8, num_classes)
        self.calls = []

    def forward(self, pixel_values, labels=None):
        self.calls.append((self.training, torch.is_grad_enabled(), pixel_values.shape[0]))
        hidden = torch.relu(self.norm(self.conv(pixel_values))).mean(dim=(2, 3))
        logits = self.head(self.drop(hidden))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def classification_statistics(outputs, labels):
    return per_sample_statistics(outputs["logits"], labels)


def _case(name):
    """(model factory, train set, collator, extra arguments, statistics fn) of a training case."""
    images = make_image_dataset(96, noise=1.5)
    if name == "vit_dropout":
        return lambda: make_vit(seed=3, hidden_dropout_prob=0.1), images, collate, dict(per_device_train_batch_size=16), None
    if name == "vit_accumulation_label_smoothing":
        return (lambda: make_vit(seed=3), images, collate,
                dict(per_device_train_batch_size=8, gradient_accumulation_steps=2, label_smoothing_factor=0.1), None)
    if name == "bert_padding":
        return (lambda: make_bert(seed=3), make_text_dataset(96), pad_collate,
                dict(per_device_train_batch_size=12, gradient_accumulation_steps=2, remove_unused_columns=False), None)
    if name == "gpt2_num_items":
        return (lambda: tiny_gpt2(seed=3), lm_dataset(32, 32), None,
                dict(per_device_train_batch_size=8, gradient_accumulation_steps=2), None)
    if name == "batchnorm":
        return (lambda: BatchNormNet(seed=3), images, collate, dict(per_device_train_batch_size=16),
                classification_statistics)
    raise KeyError(name)


class RecordingSelectiveTrainer(KakurenboTrainer):
    """Notes, per training forward with gradients, the epoch, the rows kept and the exact inputs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epoch_now, self.steps = None, []

    def _run_epoch(self, *args, **kwargs):
        self.epoch_now = kwargs["epoch"]
        return super()._run_epoch(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.steps.append({
                "epoch": self.epoch_now,
                "rows": inputs[SAMPLE_INDEX_KEY].tolist(),
                "inputs": {key: value.clone() for key, value in inputs.items() if key != SAMPLE_INDEX_KEY},
                "num_items": None if num_items_in_batch is None else int(num_items_in_batch),
            })
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class _Replay(Dataset):
    """Yields recorded batches in order (one per index read), epoch after epoch."""

    def __init__(self, batches, per_epoch):
        self.batches, self.per_epoch, self.served = batches, per_epoch, 0

    def __len__(self):
        return self.per_epoch

    def __getitem__(self, index):
        batch = self.batches[self.served]
        self.served += 1
        return batch


class ReplayTrainer(Trainer):
    """The plain Trainer, fed exactly the given batches."""

    def __init__(self, *args, batches, per_epoch, **kwargs):
        super().__init__(*args, **kwargs)
        self.replay = _Replay(batches, per_epoch)

    def get_train_dataloader(self):
        return DataLoader(self.replay, batch_size=None, collate_fn=lambda batch: batch)


def _selective_run(tmp_path, name, **overrides):
    make_model, data, collator, extra, statistics = _case(name)
    arguments = training_args(tmp_path / "sb", COMMON, **extra, **SB, **overrides)
    trainer = RecordingSelectiveTrainer(model=make_model(), args=arguments, train_dataset=data,
                                        data_collator=collator, per_sample_statistics_fn=statistics)
    trainer.train()
    return trainer, (make_model, data, extra)


CASES = ["vit_dropout", "vit_accumulation_label_smoothing", "bert_padding", "gpt2_num_items", "batchnorm"]


@pytest.mark.parametrize("name", CASES)
def test_each_step_is_the_plain_trainers_step_on_the_kept_rows(tmp_path, name):
    ours, (make_model, data, extra) = _selective_run(tmp_path, name)
    batch_size = extra["per_device_train_batch_size"]
    selective = [step for step in ours.steps if step["epoch"] >= 1]
    assert [step["epoch"] for step in ours.steps if step["epoch"] == 0] and selective
    assert all(len(step["rows"]) == batch_size for step in ours.steps if step["epoch"] == 0)  # warm-up: full
    kept = [len(step["rows"]) for step in selective]
    assert min(kept) >= 1 and sum(kept) < 0.8 * len(data) * 2, kept  # beta = 1: about half backpropagated
    per_epoch = len(ours.steps) // 3
    plain = ReplayTrainer(model=make_model(), train_dataset=data, batches=[step["inputs"] for step in ours.steps],
                          per_epoch=per_epoch,
                          args=training_args(tmp_path / "plain", COMMON, cls=TrainingArguments, **extra))
    plain.train()
    assert plain.replay.served == len(ours.steps)
    assert logged(ours, "loss") == logged(plain, "loss") and len(logged(ours, "loss")) == plain.state.global_step
    assert logged(ours, "learning_rate") == logged(plain, "learning_rate")
    ours_state, plain_state = ours.model.state_dict(), plain.model.state_dict()
    assert all(torch.equal(ours_state[key], plain_state[key]) for key in plain_state)  # BatchNorm buffers too
    # Forwarded: every sample once in the warm-up, then twice-counted: the scoring pass and the kept rows.
    assert ours.sample_counters == {"forwarded": 3 * len(data) + sum(kept),
                                    "backpropagated": len(data) + sum(kept), "refresh_forwarded": 0}


def test_num_items_in_batch_counts_the_kept_tokens_of_the_accumulated_micro_batches(tmp_path):
    ours, _ = _selective_run(tmp_path, "gpt2_num_items")
    steps = [step for step in ours.steps if step["epoch"] >= 1]
    groups = [steps[i : i + 2] for i in range(0, len(steps), 2)]  # gradient_accumulation_steps=2, 8 batches/epoch
    for group in groups:
        # What the Trainer counts over these micro-batches (label tokens, shifted for a causal LM).
        expected = int(ours._get_num_items_in_batch([step["inputs"] for step in group], ours.args.device))
        full = int(ours._get_num_items_in_batch([{"labels": torch.ones(8, 16)}] * 2, ours.args.device))
        assert all(step["num_items"] == expected for step in group) and expected < full


def test_scoring_pass_is_eval_mode_without_gradients_and_records_every_sample(tmp_path):
    seen = []

    def spying(outputs, labels):
        seen.append(labels.shape[0])
        return classification_statistics(outputs, labels)

    make_model, data, collator, extra, _ = _case("batchnorm")
    model = make_model()
    arguments = training_args(tmp_path, COMMON, **extra, **SB)
    trainer = RecordingSelectiveTrainer(model=model, args=arguments, train_dataset=data, data_collator=collator,
                                        per_sample_statistics_fn=spying)
    trainer.train()
    batches_per_epoch = len(data) // 16
    warmup, selective = model.calls[:batches_per_epoch], model.calls[batches_per_epoch:]
    assert all(call == (True, True, 16) for call in warmup)
    scoring, training = selective[0::2], selective[1::2]
    assert len(scoring) == len(training) == 2 * batches_per_epoch
    assert all(call == (False, False, 16) for call in scoring)  # eval mode, no gradients, the whole batch
    assert all(training_mode and grad and size <= 16 for training_mode, grad, size in training)
    assert sum(seen) == 3 * len(data)  # the table got every sample in every epoch (none from the kept rows twice)
    assert trainer.hiding_engine.stats.num_seen == len(data)
    assert all(plan.num_hidden == 0 and plan.lr_factor == 1.0 for plan in trainer.hiding_engine.plans)


def test_fraction_zero_is_the_plain_trainer(tmp_path):
    """hiding_fraction=0 switches selective backprop off entirely."""
    ours, (make_model, data, extra) = _selective_run(tmp_path, "vit_dropout", hiding_fraction=0.0)
    assert all(len(step["rows"]) == 16 for step in ours.steps)
    plain = Trainer(model=make_model(), train_dataset=data, data_collator=collate,
                    args=training_args(tmp_path / "plain", COMMON, cls=TrainingArguments, **extra))
    plain.train()
    assert logged(ours, "loss") == logged(plain, "loss")


def test_batch_that_cannot_be_split_by_sample_is_refused_before_training(tmp_path):
    def with_global_tensor(features):
        batch = collate(features)
        batch["class_weights"] = torch.ones(4)  # not per sample
        return batch

    class WeightedVit(nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = make_vit(seed=3)

        def forward(self, pixel_values, labels=None, class_weights=None):
            return self.vit(pixel_values=pixel_values, labels=labels)

    arguments = training_args(tmp_path, COMMON, remove_unused_columns=False, per_device_train_batch_size=16, **SB)
    trainer = KakurenboTrainer(model=WeightedVit(), args=arguments, train_dataset=make_image_dataset(32),
                               data_collator=with_global_tensor, per_sample_statistics_fn=lambda o, l: per_sample_statistics(o.logits, l))
    with pytest.raises(ValueError, match="'class_weights' has shape \\(4,\\)"):
        trainer.train()
    assert trainer.state.global_step == 0


# --- 3. exact resume, one process -------------------------------------------------------------------


def _resumable(out, resume=None):
    arguments = training_args(out, COMMON, per_device_train_batch_size=16, save_strategy="steps", save_steps=4,
                              num_train_epochs=4, **SB)
    trainer = RecordingSelectiveTrainer(model=make_vit(seed=3, hidden_dropout_prob=0.1), args=arguments,
                                        train_dataset=make_image_dataset(96, noise=1.5), data_collator=collate)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sb_resume")
    return out, _resumable(out / "full")


def test_resume_mid_epoch_is_exact(full_run, tmp_path):
    out, full = full_run
    step = 16  # 6 steps per epoch: inside epoch 2, a selecting epoch with a long history behind it
    checkpoint = out / "full" / f"checkpoint-{step}"
    assert (checkpoint / rank_state_file_name(0)).is_file()
    resumed = _resumable(tmp_path / "resumed", resume=str(checkpoint))
    after = lambda trainer: [(entry["step"], entry["loss"]) for entry in trainer.state.log_history
                             if "loss" in entry and entry["step"] > step]
    assert after(resumed) == after(full) and after(full)
    rows = lambda trainer: [s["rows"] for s in trainer.steps][-len(resumed.steps):]
    assert rows(resumed) == rows(full)
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(full_state[key], resumed_state[key]) for key in full_state)
    assert np.array_equal(resumed.hiding_controller.batch_selection.selector.history, full.hiding_controller.batch_selection.selector.history)


def test_resume_without_the_loss_history_warns_and_a_broken_one_is_refused(full_run, tmp_path, caplog):
    out, _ = full_run
    checkpoint = tmp_path / "copy"
    shutil.copytree(out / "full" / "checkpoint-16", checkpoint)
    history_file = checkpoint / rank_state_file_name(0)
    raw = bytearray(history_file.read_bytes())
    raw[-1] ^= 0x01
    history_file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum"):
        _resumable(tmp_path / "broken", resume=str(checkpoint))
    os.remove(history_file)
    with caplog.at_level("WARNING"):
        _resumable(tmp_path / "missing", resume=str(checkpoint))
    assert "history starts empty" in caplog.text
