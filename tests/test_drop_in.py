"""Issue "drop-in means nothing else changes": every case that used to go wrong silently.

Each test either shows the plain `Trainer`'s behaviour is kept, or that the run stops before
the first step with an error naming the cause and the fix.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from datasets import Dataset
from helpers import (
    augmented,
    collate,
    logged,
    make_bert,
    make_image_dataset,
    make_text_dataset,
    make_vit,
    pad_collate,
    training_args,
)
from transformers import Trainer, TrainerCallback, TrainingArguments

from kakurenbo_hf import KakurenboTrainer, KakurenboTrainingArguments
from kakurenbo_hf.distributed.checkpoint import HIDING_STATE_NAME, load_hiding_state, save_hiding_state
from kakurenbo_hf.hf.indexing import SAMPLE_INDEX_KEY

def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def train_set():
    return make_image_dataset(96, noise=1.5)


# --- 2. train_sampling_strategy ----------------------------------------------------------------


def random_order_padding(data, batch_size, rounds=20):
    """The mean padding fraction of batches of `batch_size` in uniformly shuffled order."""
    lengths = np.array([len(ids) for ids in data["input_ids"]])
    rng = np.random.default_rng(0)
    fractions = []
    for _ in range(rounds):
        for batch in np.array_split(rng.permutation(lengths), int(np.ceil(len(lengths) / batch_size))):
            fractions.append(1 - batch.mean() / batch.max())
    return float(np.mean(fractions))


class BatchProbe(TrainerCallback):
    """The padded shape of every training batch, read in compute_loss by the trainers below."""


def _recording(cls):
    class Recording(cls):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                self.shapes = getattr(self, "shapes", [])
                self.shapes.append(tuple(inputs["input_ids"].shape))
                self.padding = getattr(self, "padding", [])
                self.padding.append(1.0 - inputs["attention_mask"].float().mean().item())
                if SAMPLE_INDEX_KEY in inputs:
                    self.trained = getattr(self, "trained", [])
                    self.trained.append(inputs[SAMPLE_INDEX_KEY].tolist())
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return Recording


@pytest.mark.parametrize("strategy", ["group_by_length", "sequential", "random"])
def test_sampling_strategy_at_zero_fraction_matches_trainer(tmp_path, strategy):
    data = make_text_dataset()
    runs = {}
    for name, cls, args_cls, extra in [
        ("plain", _recording(Trainer), TrainingArguments, {}),
        ("ours", _recording(KakurenboTrainer), KakurenboTrainingArguments, {"hiding_fraction": 0.0}),
    ]:
        trainer = cls(model=make_bert(), train_dataset=data, data_collator=pad_collate,
                      args=training_args(tmp_path / name, cls=args_cls, train_sampling_strategy=strategy,
                                         per_device_train_batch_size=8, **extra))
        trainer.train()
        runs[name] = trainer
    plain, ours = runs["plain"], runs["ours"]
    assert ours.shapes == plain.shapes
    assert logged(ours, "loss") == logged(plain, "loss")
    assert same_weights(ours.model, plain.model)
    if strategy == "group_by_length":  # grouped: much less padding than a shuffled order
        assert np.mean(ours.padding) < 0.75 * random_order_padding(data, 8)


def test_group_by_length_and_sequential_apply_to_the_visible_set(tmp_path):
    data = make_text_dataset(128)
    for strategy in ("group_by_length", "sequential"):
        trainer = _recording(KakurenboTrainer)(
            model=make_bert(), train_dataset=data, data_collator=pad_collate,
            args=training_args(tmp_path / strategy, train_sampling_strategy=strategy,
                               per_device_train_batch_size=8, num_train_epochs=4, learning_rate=5e-3,
                               hiding_fraction=0.5, confidence_threshold=0.0, hiding_decay_milestones=[],
                               hiding_decay_factors=[]))
        trainer.train()
        plans = trainer.hiding_engine.plans
        assert plans[-1].num_hidden > 0
        steps = [p.update_steps for p in plans]
        last_epoch = sum(trainer.trained[sum(steps[:-1]):], [])
        hidden = set(np.flatnonzero(trainer.hiding_engine.hidden).tolist())
        assert sorted(last_epoch) == sorted(set(range(128)) - hidden)  # each visible sample once, no hidden one
        if strategy == "sequential":
            assert last_epoch == sorted(last_epoch)
        else:
            assert np.mean(trainer.padding) < 0.75 * random_order_padding(data, 8)


def test_unsupported_sampling_strategy_is_refused_before_training(tmp_path):
    trainer = KakurenboTrainer(model=make_bert(), train_dataset=make_text_dataset(), data_collator=pad_collate,
                               args=training_args(tmp_path, train_sampling_strategy="batch_rebalance"))
    with pytest.raises(ValueError, match="batch_rebalance"):
        trainer.train()
    assert trainer.state.global_step == 0


# --- 4. ignored labels -------------------------------------------------------------------------


def test_ignored_labels_train_and_are_never_hidden(tmp_path):
    data = make_image_dataset(96, noise=0.5).with_format(None)
    labels = np.array(data["label"])
    ignored = np.arange(96) % 7 == 3
    labels[ignored] = -100
    data = data.remove_columns("label").add_column("label", labels.tolist()).with_format("torch")
    plain = Trainer(model=make_vit(seed=3), train_dataset=data, data_collator=collate,
                    args=training_args(tmp_path / "plain", cls=TrainingArguments))
    plain.train()  # the plain Trainer trains with ignored labels
    trainer = KakurenboTrainer(model=make_vit(seed=3), train_dataset=data, data_collator=collate,
                               args=training_args(tmp_path / "ours", num_train_epochs=4,
                                                  hiding_fraction=0.5, confidence_threshold=0.0))
    trainer.train()
    engine = trainer.hiding_engine
    assert any(p.num_hidden for p in engine.plans)
    assert np.isinf(engine.stats.loss[ignored]).all() and not engine.stats.correct[ignored].any()
    assert np.isfinite(engine.stats.loss[~ignored]).all()
    assert not engine.hidden[ignored].any()


# --- 5. LR compensation when nothing is hidden ----------------------------------------------


def test_run_that_hides_nothing_is_the_plain_trainers_run(tmp_path, train_set):
    """Default compensation ('realized') with hiding on but nothing confident enough: the plain run."""
    plain = Trainer(model=make_vit(seed=3), train_dataset=train_set, data_collator=collate,
                    args=training_args(tmp_path / "plain", cls=TrainingArguments, lr_scheduler_type="cosine"))
    plain.train()
    ours = KakurenboTrainer(model=make_vit(seed=3), train_dataset=train_set, data_collator=collate,
                            args=training_args(tmp_path / "ours", lr_scheduler_type="cosine",
                                               hiding_fraction=0.9, confidence_threshold=1.0))
    ours.train()
    assert all(p.num_hidden == 0 for p in ours.hiding_engine.plans)
    assert all(p.lr_factor == 1.0 for p in ours.hiding_engine.plans)
    assert logged(ours, "learning_rate") == logged(plain, "learning_rate")
    assert logged(ours, "loss") == logged(plain, "loss")
    assert same_weights(ours.model, plain.model)


# --- 7. should_epoch_stop ----------------------------------------------------------------------


class StopEpochEarly(TrainerCallback):
    def __init__(self):
        self.steps_in_epoch = 0

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.steps_in_epoch = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps_in_epoch += 1
        if int(state.epoch or 0) == 1 and self.steps_in_epoch == 2:
            control.should_epoch_stop = True


def test_should_epoch_stop_continues_the_schedule_like_the_trainer(tmp_path, train_set):
    plain = Trainer(model=make_vit(seed=3), train_dataset=train_set, data_collator=collate,
                    callbacks=[StopEpochEarly()], args=training_args(tmp_path / "plain", cls=TrainingArguments))
    plain.train()
    ours = KakurenboTrainer(model=make_vit(seed=3), train_dataset=train_set, data_collator=collate,
                            callbacks=[StopEpochEarly()],
                            args=training_args(tmp_path / "ours", confidence_threshold=1.0))
    ours.train()
    assert plain.state.global_step == ours.state.global_step == 6 + 2 + 6
    assert logged(ours, "learning_rate") == logged(plain, "learning_rate")


# --- 8. non-finite statistics ------------------------------------------------------------------


def test_non_finite_statistics_warn_once_and_apply_no_factor(tmp_path, train_set, caplog):
    def nan_statistics(outputs, labels):
        size = labels.shape[0]
        return torch.full((size,), float("nan")), torch.ones(size), torch.ones(size, dtype=torch.bool)

    trainer = KakurenboTrainer(model=make_vit(seed=3), train_dataset=train_set, data_collator=collate,
                               per_sample_statistics_fn=nan_statistics,
                               args=training_args(tmp_path, num_train_epochs=4, lr_compensation="target"))
    with caplog.at_level("WARNING"):
        trainer.train()
    plans = trainer.hiding_engine.plans
    assert [p.num_hidden for p in plans] == [0, 0, 0, 0]
    assert [p.lr_factor for p in plans] == [1.0, 1.0, 1.0, 1.0]
    assert sum("no sample has finite statistics" in r.getMessage() for r in caplog.records) == 1


# --- 3. checkpoints without (or with a broken) hiding state -----------------------------------


def _resumable(out, data, resume=None, **overrides):
    values = dict(num_train_epochs=4, hiding_fraction=0.4, confidence_threshold=0.3, save_strategy="steps",
                  save_steps=5, per_device_train_batch_size=24)
    values.update(overrides)
    trainer = KakurenboTrainer(model=make_vit(seed=3), train_dataset=data, data_collator=collate,
                               args=training_args(out, **values))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory, train_set):
    out = tmp_path_factory.mktemp("ckpt")
    trainer = _resumable(out / "full", train_set)
    return out / "full", trainer


def _hiding_checkpoint(folder, trainer):
    """A mid-epoch checkpoint inside an epoch that hides samples."""
    plan = next(p for p in trainer.hiding_engine.plans if p.num_hidden)
    step = next(s for s in range(plan.start_step + 1, plan.start_step + plan.update_steps) if s % 5 == 0)
    return folder / f"checkpoint-{step}", plan


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_hiding_state_of_a_hiding_run_is_refused(tmp_path, train_set, checkpointed_run):
    folder, full = checkpointed_run
    checkpoint, _ = _hiding_checkpoint(folder, full)
    copied = _copy(checkpoint, tmp_path / "copied")
    os.remove(copied / HIDING_STATE_NAME)
    with pytest.raises(ValueError, match="resume_without_hiding_state"):
        _resumable(tmp_path / "again", train_set, resume=str(copied))


def test_missing_hiding_state_opt_in_continues_at_the_next_epoch(tmp_path, train_set, checkpointed_run):
    folder, full = checkpointed_run
    checkpoint, plan = _hiding_checkpoint(folder, full)
    copied = _copy(checkpoint, tmp_path / "copied")
    os.remove(copied / HIDING_STATE_NAME)
    resumed = _resumable(tmp_path / "again", train_set, resume=str(copied), resume_without_hiding_state=True,
                         save_strategy="no")
    plans = resumed.hiding_engine.plans
    assert plans[0].epoch == plan.epoch + 1 and plans[0].num_hidden == 0  # fresh statistics: nothing yet
    assert plans[0].start_step == int(checkpoint.name.split("-")[1])
    assert [p.epoch for p in plans] == list(range(plan.epoch + 1, 4))
    assert resumed.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # the linear schedule ends at 0
    assert resumed.state.epoch == 4.0


def test_broken_hiding_state_files_are_refused_with_their_path(tmp_path, train_set, checkpointed_run):
    folder, full = checkpointed_run
    checkpoint, _ = _hiding_checkpoint(folder, full)
    truncated = _copy(checkpoint, tmp_path / "truncated")
    path = truncated / HIDING_STATE_NAME
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=str(path)):
        _resumable(tmp_path / "a", train_set, resume=str(truncated))
    garbage = _copy(checkpoint, tmp_path / "garbage")
    (garbage / HIDING_STATE_NAME).write_bytes(b"not a safetensors file at all" * 10)
    with pytest.raises(ValueError, match="garbage"):
        _resumable(tmp_path / "b", train_set, resume=str(garbage))
    flipped = _copy(checkpoint, tmp_path / "flipped")
    raw = bytearray((flipped / HIDING_STATE_NAME).read_bytes())
    raw[-1] ^= 0x01  # the last byte belongs to an array
    (flipped / HIDING_STATE_NAME).write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum"):
        _resumable(tmp_path / "c", train_set, resume=str(flipped))
    # A well-formed file whose hidden mask disagrees with its own plan.
    disagreeing = _copy(checkpoint, tmp_path / "disagreeing")
    state = load_hiding_state(str(disagreeing))
    state["hidden"][np.flatnonzero(~state["hidden"])[0]] = True
    save_hiding_state(state, str(disagreeing))
    with pytest.raises(ValueError, match="inconsistent"):
        _resumable(tmp_path / "d", train_set, resume=str(disagreeing))


# --- 9. exact resume with random augmentation -------------------------------------------------


@pytest.fixture(scope="module")
def augmented_run(tmp_path_factory, train_set):
    out = tmp_path_factory.mktemp("aug")
    data = augmented(train_set)
    return out, data, _resumable(out / "full", data, save_steps=2, remove_unused_columns=False)


@pytest.mark.parametrize("where", ["mid_epoch", "epoch_end"])
def test_resume_with_random_augmentation_is_exact(augmented_run, where):
    out, data, full = augmented_run
    plans = full.hiding_engine.plans
    hiding = [p for p in plans if p.num_hidden and p.epoch < 3]
    assert hiding, plans
    if where == "mid_epoch":
        plan = hiding[0]
        step = next(s for s in range(plan.start_step + 1, plan.start_step + plan.update_steps) if s % 2 == 0)
    else:  # the last step of an epoch, before the next epoch's refresh
        step = next(p.start_step + p.update_steps for p in plans[:-2] if (p.start_step + p.update_steps) % 2 == 0)
    resumed = _resumable(out / f"resumed_{where}", data, resume=str(out / "full" / f"checkpoint-{step}"),
                         save_steps=2, remove_unused_columns=False)
    after = lambda t: [(e["step"], e["loss"]) for e in t.state.log_history if "loss" in e and e["step"] > step]
    assert after(resumed) == after(full)
    assert resumed.state.global_step == full.state.global_step
    strip = lambda t: [(p.epoch, p.num_hidden, p.start_step, p.update_steps) for p in t.hiding_engine.plans]
    assert strip(resumed) == strip(full)
    assert np.array_equal(resumed.hiding_engine.hidden, full.hiding_engine.hidden)
    assert same_weights(resumed.model, full.model)


# --- BatchNorm and a last batch of one sample --------------------------------------------------


class _BatchNormClassifier(torch.nn.Module):
    """Linear -> BatchNorm1d -> Linear: training on a batch of one raises in BatchNorm."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU())
        self.head = torch.nn.Linear(16, 2)

    def forward(self, features=None, labels=None):
        from transformers.modeling_outputs import SequenceClassifierOutput

        logits = self.head(self.body(features))
        return SequenceClassifierOutput(loss=torch.nn.functional.cross_entropy(logits, labels), logits=logits)


def test_batchnorm_never_gets_a_last_batch_of_one(tmp_path):
    """96 samples, batch 16, 15 hidden would leave 81 = 5 x 16 + 1: one sample more is trained instead."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(96, 8)).astype(np.float32)
    data = Dataset.from_dict({"features": features.tolist(), "labels": (features[:, 0] > 0).astype(int).tolist()})
    data.set_format("torch")
    batch_sizes = []

    class Recording(KakurenboTrainer):
        def compute_loss(self, model, inputs, **kwargs):
            if model.training:
                batch_sizes.append(int(inputs["labels"].shape[0]))
            return super().compute_loss(model, inputs, **kwargs)

    plain_model = _BatchNormClassifier()
    plain = Trainer(model=plain_model, train_dataset=data.select(range(81)),
                    args=training_args(tmp_path / "plain", cls=TrainingArguments, num_train_epochs=1))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        plain.train()  # what the same epoch length does to the plain Trainer

    args = training_args(tmp_path / "k", hiding_strategy="random", random_count="exact", hiding_fraction=15 / 96)
    trainer = Recording(model=_BatchNormClassifier(), args=args, train_dataset=data)
    trainer.train()
    hiding_plans = trainer.hiding_engine.plans[1:]
    assert hiding_plans and all(plan.num_hidden == 14 and plan.num_trained == 82 for plan in hiding_plans)
    assert min(batch_sizes) >= 2
    assert sum(batch_sizes) == 96 + 82 * len(hiding_plans)
    hidden = trainer.hiding_engine.hidden
    assert hidden.sum() == 14


def test_last_batch_of_one_is_left_alone_without_batchnorm(tmp_path, train_set):
    args = training_args(tmp_path, hiding_strategy="random", random_count="exact", hiding_fraction=15 / 96)
    trainer = KakurenboTrainer(model=make_vit(seed=0), args=args, train_dataset=train_set, data_collator=collate)
    trainer.train()
    assert all(plan.num_hidden == 15 for plan in trainer.hiding_engine.plans[1:])
