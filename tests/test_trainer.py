"""End-to-end behaviour of KakurenboTrainer on tiny ViT/DeiT models (CPU, offline)."""

from __future__ import annotations

import json
import logging
import math
import os

import numpy as np
import pytest
import torch
from datasets import Dataset, IterableDataset
from helpers import accuracy, collate, make_deit, make_image_dataset, make_vit, training_args
from transformers import Trainer, TrainerCallback, TrainingArguments, ViTForImageClassification

from kakurenbo_hf import KakurenboTrainer
from kakurenbo_hf.distributed.checkpoint import HIDING_STATE_NAME, load_hiding_state, save_hiding_state

# This module's defaults on top of helpers.TINY_RUN: `training_args(tmp_path / "out", HIDING_RUN, ...)`.
HIDING_RUN = dict(num_train_epochs=4, hiding_fraction=0.3, confidence_threshold=0.5)


@pytest.fixture(scope="module")
def train_set():
    return make_image_dataset(160, noise=1.5)


@pytest.fixture(scope="module")
def eval_set():
    return make_image_dataset(48, seed=1)


class EpochProbe(TrainerCallback):
    """Records, at each epoch boundary, what the tests look at."""

    def __init__(self):
        self.epoch_ends, self.grads_at_begin, self.steps_at_begin = [], [], []

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        self.steps_at_begin.append(state.global_step)
        self.grads_at_begin.append(
            all(p.grad is None or not p.grad.abs().sum().item() for p in model.parameters())
        )

    def on_epoch_end(self, args, state, control, **kwargs):
        self.epoch_ends.append(state.epoch)


class SelectionSpy(KakurenboTrainer):
    """Keeps a copy of the statistics each selection saw, and the hidden set it chose."""

    def on_epoch_plan(self, plan):
        stats = self.hiding_engine.stats
        self.seen = getattr(self, "seen", [])
        self.seen.append((stats.loss.copy(), stats.confidence.copy(), stats.correct.copy(),
                          self.hiding_engine.hidden.copy(), plan))


def losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


# --- F = 0 is the plain Trainer -----------------------------------------------------------------


def test_zero_fraction_is_bit_identical_to_trainer(tmp_path, train_set, eval_set):
    runs = {}
    for name, trainer_cls, args in [
        ("trainer", Trainer, training_args(tmp_path / "a", cls=TrainingArguments, num_train_epochs=3)),
        ("kakurenbo", KakurenboTrainer,
         training_args(tmp_path / "out", HIDING_RUN, num_train_epochs=3, hiding_fraction=0.0)),
    ]:
        trainer = trainer_cls(model=make_vit(seed=3, hidden_dropout_prob=0.1), args=args, train_dataset=train_set,
                              eval_dataset=eval_set, data_collator=collate, compute_metrics=accuracy)
        trainer.train()
        runs[name] = (trainer, trainer.evaluate())
    (base, base_metrics), (ours, our_metrics) = runs["trainer"], runs["kakurenbo"]
    assert len(losses(base)) == 30
    assert losses(ours) == losses(base)
    base_weights, our_weights = base.model.state_dict(), ours.model.state_dict()
    assert all(torch.equal(base_weights[k], our_weights[k]) for k in base_weights)
    assert our_metrics["eval_loss"] == base_metrics["eval_loss"]
    assert our_metrics["eval_accuracy"] == base_metrics["eval_accuracy"]
    # Statistics were still recorded for every sample.
    assert ours.hiding_engine.stats.num_seen == len(train_set)


# --- hiding -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hiding_run(tmp_path_factory, train_set, eval_set):
    tmp_path = tmp_path_factory.mktemp("hiding")
    probe = EpochProbe()
    trainer = SelectionSpy(
        model=make_vit(seed=3),
        args=training_args(tmp_path / "out", HIDING_RUN, gradient_accumulation_steps=3, hiding_fraction=0.4,
                           hiding_decay_milestones=[0.5], hiding_decay_factors=[0.5], lr_compensation="target"),
        train_dataset=train_set, eval_dataset=eval_set, data_collator=collate, callbacks=[probe])
    trainer.train_output = trainer.train()
    return trainer, probe


def test_train_metrics_and_the_final_log_sum_up_the_hiding(hiding_run, train_set):
    trainer, _ = hiding_run
    metrics, plans, counters = trainer.train_output.metrics, trainer.hiding_engine.plans, trainer.sample_counters
    trained = sum(plan.num_trained for plan in plans)
    assert metrics["kakurenbo/samples_backpropagated"] == counters["backpropagated"] == trained
    assert metrics["kakurenbo/samples_forwarded"] == counters["forwarded"] == trained  # no per-batch scoring
    assert metrics["kakurenbo/samples_refreshed"] == counters["refresh_forwarded"] == sum(p.num_refreshed for p in plans)
    assert metrics["kakurenbo/saved_share"] == pytest.approx(1 - trained / (len(plans) * len(train_set)))
    assert metrics["kakurenbo/saved_share"] > 0
    assert [metrics[f"kakurenbo/hidden_share/epoch_{plan.epoch}"] for plan in plans] == [
        plan.hidden_fraction for plan in plans]
    assert metrics["kakurenbo/refresh_seconds_total"] == pytest.approx(sum(p.refresh_seconds for p in plans))
    assert metrics["kakurenbo/flush_seconds_total"] == pytest.approx(sum(p.flush_seconds for p in plans))
    assert metrics["kakurenbo/max_hidden_epochs"] == trainer.hiding_engine.max_hidden_epochs == 3  # kakurenbo's
    assert metrics["kakurenbo/coverage_moved_back_total"] == sum(p.coverage_moved_back for p in plans)
    final = next(e for e in reversed(trainer.state.log_history) if "kakurenbo/saved_share" in e)
    assert {key: final[key] for key in final if key.startswith("kakurenbo/")} == {
        key: value for key, value in metrics.items() if key.startswith("kakurenbo/")}
    trainer.log_metrics("train", metrics)  # HF's metrics printer takes them (scalars only)


def test_hiding_report_after_train(hiding_run, train_set):
    """The public report: each epoch's hidden set as the selection chose it, per-sample statistics of the
    table, hidden counts and streaks, and exports merged with the training set's columns."""
    from kakurenbo_hf import HidingReport

    trainer, _ = hiding_run
    report = trainer.hiding_report()
    assert isinstance(report, HidingReport) and [row["epoch"] for row in report.epochs()] == [0, 1, 2, 3]
    masks = []
    for _, _, _, hidden, plan in trainer.seen:  # what each selection chose (on_epoch_plan)
        assert report.hidden_indices(plan.epoch).tolist() == np.flatnonzero(hidden).tolist()
        masks.append(hidden)
    samples = report.samples()
    assert samples["epochs_hidden"].tolist() == np.sum(masks, axis=0).tolist() and samples["epochs_hidden"].max() > 0
    streaks = np.zeros(len(train_set), dtype=int)
    longest = np.zeros(len(train_set), dtype=int)
    for mask in masks:
        streaks = np.where(mask, streaks + 1, 0)
        longest = np.maximum(longest, streaks)
    assert samples["longest_hidden_streak"].tolist() == longest.tolist()
    assert np.array_equal(samples["loss"], trainer.hiding_engine.stats.loss)
    assert np.array_equal(samples["correct"], trainer.hiding_engine.stats.correct)
    merged = report.to_dataset(train_set)
    assert merged.column_names[: len(train_set.column_names)] == train_set.column_names
    assert merged[7]["index"] == 7 and merged[7]["epochs_hidden"] == int(samples["epochs_hidden"][7])
    frame = report.to_pandas()
    assert len(frame) == len(train_set) and frame.loc[5, "longest_hidden_streak"] == longest[5]


def test_hiding_report_from_a_checkpoint_needs_no_trainer(tmp_path, train_set):
    trainer = KakurenboTrainer(model=make_vit(seed=3), train_dataset=train_set, data_collator=collate,
                               args=training_args(tmp_path / "out", HIDING_RUN, save_strategy="epoch"))
    trainer.train()
    from kakurenbo_hf import HidingReport

    from_disk = HidingReport.from_checkpoint(str(tmp_path / "out" / f"checkpoint-{trainer.state.global_step}"))
    in_memory = trainer.hiding_report()
    assert from_disk.epochs() == in_memory.epochs()
    for row in in_memory.epochs():
        assert np.array_equal(from_disk.hidden_indices(row["epoch"]), in_memory.hidden_indices(row["epoch"]))
    for name, values in in_memory.samples().items():
        assert np.array_equal(from_disk.samples()[name], values), name
    with pytest.raises(ValueError, match="was not planned"):
        from_disk.hidden_indices(9)
    with pytest.raises(ValueError, match="has no kakurenbo_state"):
        HidingReport.from_checkpoint(str(tmp_path))


def test_model_card_carries_the_hiding_settings_and_tags(hiding_run):
    trainer, _ = hiding_run
    trainer.create_model_card(tags=["mine"])
    card = open(os.path.join(trainer.args.output_dir, "README.md")).read()
    header = card.split("---")[1]
    assert all(f"- {tag}" in header for tag in ("mine", "kakurenbo", "kakurenbo-kakurenbo"))
    assert "## Sample hiding (kakurenbo_hf)" in card and "| `hiding_fraction` | `0.4` |" in card
    saved = trainer.train_output.metrics["kakurenbo/saved_share"]
    assert f"| share of the epochs' samples left out | {saved:.3f} |" in card
    assert "| `max_hidden_epochs` | `None` |" in card  # as given: the strategy's default ...
    assert "| cap on consecutive hidden epochs, as applied | 3 |" in card  # ... which the run used


def test_later_epochs_are_shorter(hiding_run):
    trainer, probe = hiding_run
    plans = trainer.hiding_engine.plans
    full_steps = plans[0].update_steps
    assert full_steps == 4  # 160 samples / 16 per batch = 10 batches, 3 per update -> 4 updates
    assert any(plan.num_hidden > 0 for plan in plans[1:])
    for plan in plans:
        visible = 160 - plan.num_hidden
        assert plan.update_steps == int(np.ceil(np.ceil(visible / 16) / 3))
    assert sum(p.update_steps for p in plans) == trainer.state.global_step < 4 * full_steps
    assert [p.start_step for p in plans] == probe.steps_at_begin


def test_hidden_samples_were_low_loss_and_confident(hiding_run):
    trainer, _ = hiding_run
    for loss, confidence, correct, hidden, plan in trainer.seen:
        if plan.num_candidates == 0:
            assert not hidden.any()
            continue
        kth_smallest = np.sort(loss)[plan.num_candidates - 1]
        assert (loss[hidden] <= kth_smallest).all()
        assert correct[hidden].all()
        assert (confidence[hidden] >= np.float16(0.5)).all()
        assert plan.num_hidden + plan.moved_back == plan.num_candidates
        assert np.isfinite(loss).all()  # every sample has statistics after epoch 0


def test_nothing_hidden_during_warmup(tmp_path, train_set):
    trainer = SelectionSpy(model=make_vit(seed=3),
                           args=training_args(tmp_path / "out", HIDING_RUN, hiding_warmup_epochs=2,
                                              confidence_threshold=0.0),
                           train_dataset=train_set, data_collator=collate)
    trainer.train()
    plans = trainer.hiding_engine.plans
    assert [p.num_hidden for p in plans[:2]] == [0, 0]
    assert [p.lr_factor for p in plans[:2]] == [1.0, 1.0]
    assert plans[2].num_hidden > 0  # tau = 0: every correct low-loss candidate is hidden


def test_epochs_end_on_whole_numbers(hiding_run):
    _, probe = hiding_run
    assert probe.epoch_ends == [1.0, 2.0, 3.0, 4.0]


def test_linear_schedule_ends_at_zero(hiding_run):
    trainer, _ = hiding_run
    assert trainer.lr_scheduler.get_last_lr() == [0.0, 0.0]
    assert trainer.optimizer.param_groups[0]["lr"] == 0.0


def test_no_gradient_leaks_across_epochs_with_accumulation(hiding_run):
    _, probe = hiding_run
    assert probe.grads_at_begin == [True, True, True, True]


def test_progress_total_matches_steps_run(hiding_run):
    trainer, _ = hiding_run
    assert trainer.state.max_steps == trainer.state.global_step


def test_logs_each_epoch(hiding_run):
    trainer, _ = hiding_run
    entries = [e for e in trainer.state.log_history if "kakurenbo/hidden" in e]
    assert len(entries) == 4
    for entry, plan in zip(entries, trainer.hiding_engine.plans):
        assert entry["kakurenbo/hidden"] == plan.num_hidden
        assert entry["kakurenbo/hidden_fraction"] == pytest.approx(plan.num_hidden / 160)
        assert entry["kakurenbo/target_fraction"] == pytest.approx(plan.target_fraction)
        assert entry["kakurenbo/moved_back"] == plan.moved_back
        assert entry["kakurenbo/lr_factor"] == pytest.approx(1 / (1 - plan.target_fraction))
        assert entry["kakurenbo/refresh_seconds"] >= 0.0
    assert [e["kakurenbo/target_fraction"] for e in entries] == pytest.approx([0.0, 0.4, 0.2, 0.2])


@pytest.mark.parametrize("mode", ["target", "realized"])
def test_lr_compensation_multiplies_the_schedule(tmp_path, train_set, mode):
    """Within an epoch, lr = base * lambda(virtual step) * 1/(1-F_e) ('target') or 1/(1-hidden/N) ('realized')."""
    seen = []

    class LrProbe(TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            seen.append((state.global_step, optimizer.param_groups[0]["lr"]))

    trainer = KakurenboTrainer(model=make_vit(seed=3),
                               args=training_args(tmp_path / "out", HIDING_RUN, lr_scheduler_type="constant",
                                                  lr_compensation=mode),
                               train_dataset=train_set, data_collator=collate, callbacks=[LrProbe()])
    trainer.train()
    assert any(plan.num_hidden for plan in trainer.hiding_engine.plans)
    for plan in trainer.hiding_engine.plans:
        lrs = [lr for step, lr in seen if plan.start_step <= step < plan.start_step + plan.update_steps]
        assert len(lrs) == plan.update_steps
        hidden = plan.target_fraction if mode == "target" else plan.num_hidden / plan.num_samples
        assert lrs == pytest.approx([3e-3 / (1 - hidden)] * len(lrs))


def test_refresh_runs_forward_only_in_eval_mode(tmp_path, train_set):
    model = make_vit(seed=3)
    calls = []
    model.register_forward_hook(
        lambda module, args, output: calls.append((module.training, not torch.is_grad_enabled(),
                                                   output.logits.shape[0])))
    trainer = KakurenboTrainer(model=model,
                               args=training_args(tmp_path / "out", HIDING_RUN, refresh_batch_size=64,
                                                  refresh_fraction=1.0, refresh_budget=math.inf,
                                                  confidence_threshold=0.0),
                               train_dataset=train_set, data_collator=collate)
    trainer.train()
    refresh_calls = [c for c in calls if not c[0]]  # no_grad, not inference_mode: FSDP needs the former
    assert refresh_calls and all(no_grad for _, no_grad, _ in refresh_calls)
    assert max(size for _, _, size in refresh_calls) <= 64
    assert max(size for _, _, size in refresh_calls) > 16  # refresh_batch_size, not the training one
    hidden_before_last = sum(p.num_hidden for p in trainer.hiding_engine.plans[:-1])
    assert sum(size for _, _, size in refresh_calls) == hidden_before_last
    assert all(training for training, inference, _ in calls if not inference)
    assert model.training
    logged = [e["kakurenbo/refresh_seconds"] for e in trainer.state.log_history if "kakurenbo/refresh_seconds" in e]
    assert all(seconds > 0 for seconds, plan in zip(logged[1:], trainer.hiding_engine.plans) if plan.num_hidden)


def test_refresh_can_be_disabled(tmp_path, train_set):
    calls = []
    model = make_vit(seed=3)
    model.register_forward_hook(lambda module, args, output: calls.append(module.training))
    trainer = KakurenboTrainer(model=model,
                               args=training_args(tmp_path / "out", HIDING_RUN, refresh_hidden=False,
                                                  confidence_threshold=0.0),
                               train_dataset=train_set, data_collator=collate)
    trainer.train()
    assert sum(p.num_hidden for p in trainer.hiding_engine.plans) > 0
    assert all(calls)  # only training forwards


def test_random_strategy_hides_the_same_count_at_random(tmp_path, train_set):
    trainer = SelectionSpy(model=make_vit(seed=3),
                           args=training_args(tmp_path / "out", HIDING_RUN, hiding_strategy="random",
                                              confidence_threshold=0.0),
                           train_dataset=train_set, data_collator=collate)
    trainer.train()
    plans = trainer.hiding_engine.plans
    assert plans[1].num_hidden == plans[1].num_candidates == int(0.3 * 160)
    loss, _, _, hidden, _ = trainer.seen[1]
    assert loss[hidden].mean() > np.sort(loss)[: hidden.sum()].mean()  # not the lowest-loss set


def test_deit_and_default_collator_with_unused_columns(tmp_path):
    """DeiT, no data_collator (the Trainer's default), extra columns removed by remove_unused_columns."""
    data = make_image_dataset(96).with_format(None)
    data = data.add_column("idx", list(range(96))).add_column("note", ["x"] * 96).with_format("torch")
    fingerprint, files = data._fingerprint, list(data.cache_files)
    trainer = KakurenboTrainer(model=make_deit(),
                               args=training_args(tmp_path / "out", HIDING_RUN, num_train_epochs=3,
                                                  confidence_threshold=0.0),
                               train_dataset=data)
    trainer.train()
    assert trainer.hiding_engine.plans[-1].num_hidden > 0
    assert data._fingerprint == fingerprint and list(data.cache_files) == files
    assert data.column_names == ["pixel_values", "label", "idx", "note"]


def test_plain_training_arguments_get_default_hiding(tmp_path, train_set):
    args = training_args(tmp_path / "o", cls=TrainingArguments, num_train_epochs=2)
    trainer = KakurenboTrainer(model=make_vit(), args=args, train_dataset=train_set, data_collator=collate)
    assert trainer.hiding_args.hiding_fraction == 0.5
    trainer.train()
    assert [p.target_fraction for p in trainer.hiding_engine.plans] == pytest.approx([0.0, 0.5])  # no decay by default


# --- bad input ----------------------------------------------------------------------------------


def test_iterable_train_set_is_rejected(tmp_path):
    stream = IterableDataset.from_generator(lambda: iter([{"pixel_values": np.zeros((3, 16, 16)), "label": 0}]))
    with pytest.raises(ValueError, match="map-style"):
        KakurenboTrainer(model=make_vit(), args=training_args(tmp_path / "out", HIDING_RUN), train_dataset=stream,
                         data_collator=collate)


class NoLogitsModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3 * 16 * 16, 4)

    def forward(self, pixel_values, labels=None):
        logits = self.linear(pixel_values.flatten(1))
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "scores": logits}


def test_model_without_logits_is_rejected(tmp_path, train_set):
    model = NoLogitsModel()
    before = [p.clone() for p in model.parameters()]
    trainer = KakurenboTrainer(model=model, args=training_args(tmp_path / "out", HIDING_RUN), train_dataset=train_set,
                               data_collator=collate)
    with pytest.raises(ValueError, match="logits"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_custom_statistics_hook_makes_any_output_work(tmp_path, train_set):
    def stats_fn(outputs, labels):
        scores = outputs["scores"]
        probs = scores.softmax(-1)
        return (torch.nn.functional.cross_entropy(scores, labels, reduction="none"), probs.max(-1).values,
                probs.argmax(-1) == labels)

    trainer = KakurenboTrainer(model=NoLogitsModel(),
                               args=training_args(tmp_path / "out", HIDING_RUN, num_train_epochs=2),
                               train_dataset=train_set, data_collator=collate, per_sample_statistics_fn=stats_fn)
    trainer.train()
    assert trainer.hiding_engine.stats.num_seen == 160


def test_batch_without_labels_is_rejected_before_training(tmp_path, train_set):
    def no_labels(features):
        return {"pixel_values": torch.stack([torch.as_tensor(f["pixel_values"]) for f in features])}

    trainer = KakurenboTrainer(model=make_vit(), args=training_args(tmp_path / "out", HIDING_RUN),
                               train_dataset=train_set, data_collator=no_labels)
    with pytest.raises(ValueError, match="labels"):
        trainer.train()
    assert trainer.state.global_step == 0


@pytest.mark.parametrize("task", ["regression", "multi_label"])
def test_regression_and_multi_label_get_built_in_statistics(tmp_path, task):
    """Formerly rejected; now the built-in statistics of those tasks (kakurenbo_hf/tasks) cover them."""
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(32, 3, 16, 16)).astype(np.float32)
    if task == "regression":
        model = make_vit(num_classes=1)
        labels = rng.normal(size=32).astype(np.float32)
    else:
        model = make_vit(num_classes=4, problem_type="multi_label_classification")
        labels = (rng.random((32, 4)) > 0.5).astype(np.float32)
    data = Dataset.from_dict({"pixel_values": pixels, "labels": labels}).with_format("torch")
    trainer = KakurenboTrainer(model=model, args=training_args(tmp_path / "out", HIDING_RUN, num_train_epochs=2),
                               train_dataset=data)
    trainer.train()
    stats = trainer.hiding_engine.stats
    assert stats.num_seen == 32 and np.isfinite(stats.loss).all()
    assert ((stats.confidence >= 0) & (stats.confidence <= 1)).all()


def test_step_budgets_and_fractional_epochs_are_rejected(tmp_path, train_set):
    for overrides, message in [({"max_steps": 5}, "max_steps"), ({"num_train_epochs": 2.5}, "whole number")]:
        trainer = KakurenboTrainer(model=make_vit(), args=training_args(tmp_path / "out", HIDING_RUN, **overrides),
                                   train_dataset=train_set, data_collator=collate)
        with pytest.raises(ValueError, match=message):
            trainer.train()


def test_unwrappable_scheduler_is_rejected(tmp_path, train_set):
    model = make_vit()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    trainer = KakurenboTrainer(model=model, args=training_args(tmp_path / "out", HIDING_RUN), train_dataset=train_set,
                               data_collator=collate, optimizers=(optimizer, scheduler))
    with pytest.raises(TypeError, match="StepLR"):
        trainer.train()
    assert trainer.state.global_step == 0


# --- resume -------------------------------------------------------------------------------------


# The resume tests' defaults on top of helpers.TINY_RUN: `training_args(out, RESUME_RUN, ...)`.
RESUME_RUN = dict(num_train_epochs=4, hiding_fraction=0.4, confidence_threshold=0.3, save_strategy="steps",
                  save_steps=5, gradient_accumulation_steps=1, per_device_train_batch_size=24)


class HiddenLog(TrainerCallback):
    def __init__(self, trainer_ref):
        self.trainer_ref, self.hidden = trainer_ref, {}

    def on_step_begin(self, args, state, control, **kwargs):
        engine = self.trainer_ref[0].hiding_engine
        self.hidden[state.global_step] = np.flatnonzero(engine.hidden).tolist()


def _run_resumable(out, train_set, resume=None, model_fn=make_vit):
    ref = []
    log = HiddenLog(ref)
    trainer = KakurenboTrainer(model=model_fn(seed=3), args=training_args(out, RESUME_RUN), train_dataset=train_set,
                               data_collator=collate, callbacks=[log])
    ref.append(trainer)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, log


@pytest.mark.parametrize("model_fn", [make_vit, make_deit])
def test_resume_mid_epoch_is_exact(tmp_path, train_set, model_fn):
    full, full_log = _run_resumable(tmp_path / "full", train_set, model_fn=model_fn)
    plans = full.hiding_engine.plans
    assert any(p.num_hidden for p in plans)
    # A checkpoint inside an epoch that hides samples.
    hiding = next(p for p in plans if p.num_hidden)
    step = next(s for s in range(hiding.start_step + 1, hiding.start_step + hiding.update_steps) if s % 5 == 0)
    checkpoint = tmp_path / "full" / f"checkpoint-{step}"
    assert (checkpoint / HIDING_STATE_NAME).is_file()
    resumed, resumed_log = _run_resumable(tmp_path / "resumed", train_set, resume=str(checkpoint), model_fn=model_fn)
    after = lambda trainer: [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e and e["step"] > step]
    assert after(resumed) == after(full) and after(full)
    assert {s: h for s, h in full_log.hidden.items() if s >= step} == resumed_log.hidden
    full_weights, resumed_weights = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(full_weights[k], resumed_weights[k]) for k in full_weights)
    assert resumed.state.global_step == full.state.global_step


def test_resume_from_plain_trainer_checkpoint_starts_hiding(tmp_path, train_set):
    plain = Trainer(model=make_vit(seed=3), train_dataset=train_set, data_collator=collate,
                    args=training_args(tmp_path / "plain", cls=TrainingArguments, num_train_epochs=1,
                                       save_strategy="epoch"))
    plain.train()
    checkpoint = tmp_path / "plain" / f"checkpoint-{plain.state.global_step}"
    trainer = KakurenboTrainer(model=make_vit(seed=3),
                               args=training_args(tmp_path / "out", HIDING_RUN, num_train_epochs=3,
                                                  confidence_threshold=0.0),
                               train_dataset=train_set, data_collator=collate)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    plans = trainer.hiding_engine.plans
    assert [p.epoch for p in plans] == [1, 2]
    assert plans[0].num_hidden == 0  # no statistics yet: nothing can be hidden at the first epoch
    assert plans[1].num_hidden > 0


def test_incompatible_hiding_state_is_rejected(tmp_path, train_set):
    full, _ = _run_resumable(tmp_path / "full", train_set)
    checkpoint = str(tmp_path / "full" / "checkpoint-5")
    state = load_hiding_state(checkpoint)
    state["format_version"] = 99
    save_hiding_state(state, checkpoint)
    with pytest.raises(ValueError, match="format version 99"):
        _run_resumable(tmp_path / "again", train_set, resume=checkpoint)
    smaller = train_set.select(range(100))
    state["format_version"] = 1
    save_hiding_state(state, checkpoint)
    trainer = KakurenboTrainer(model=make_vit(seed=3), args=training_args(tmp_path / "small", RESUME_RUN),
                               train_dataset=smaller, data_collator=collate)
    with pytest.raises(ValueError, match="160 samples"):
        trainer.train(resume_from_checkpoint=checkpoint)


def test_checkpoint_state_is_safe_and_complete(tmp_path, train_set):
    full, _ = _run_resumable(tmp_path / "full", train_set)
    state = load_hiding_state(str(tmp_path / "full" / "checkpoint-5"))
    assert state["num_samples"] == 160 and state["format_version"] == 1
    assert state["stats"]["loss"].dtype == np.float32 and state["hidden"].dtype == bool
    assert [p["epoch"] for p in state["plans"]] == list(range(len(state["plans"])))
    assert {"start_step", "update_steps", "lr_factor"} <= set(state["plans"][0])
    # Trainer's own files are there too (model, optimizer, scheduler, trainer state).
    names = set(os.listdir(tmp_path / "full" / "checkpoint-5"))
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= names
    with open(tmp_path / "full" / "checkpoint-5" / "trainer_state.json") as handle:
        assert json.load(handle)["global_step"] == 5


def test_vit_checkpoint_weights_really_load(tmp_path, train_set):
    """transformers saves ViT under Hub key names; the resumed model must hold the saved weights."""
    full, _ = _run_resumable(tmp_path / "full", train_set)
    checkpoint = str(tmp_path / "full" / "checkpoint-5")
    saved = ViTForImageClassification.from_pretrained(checkpoint).state_dict()
    trainer = KakurenboTrainer(model=make_vit(seed=99), args=training_args(tmp_path / "r", RESUME_RUN),
                               train_dataset=train_set, data_collator=collate)
    trainer._load_from_checkpoint(checkpoint)
    loaded = trainer.model.state_dict()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_hiding_state_is_written_before_the_trainers_own_files(tmp_path, train_set):
    """So that a hub push of the checkpoint (queued inside the Trainer's save) carries it."""
    present_at_model_save = []

    class Spy(KakurenboTrainer):
        def save_model(self, output_dir=None, _internal_call=False):
            if _internal_call:
                present_at_model_save.append(os.path.isfile(os.path.join(output_dir, HIDING_STATE_NAME)))
            super().save_model(output_dir, _internal_call)

    trainer = Spy(model=make_vit(seed=3),
                  args=training_args(tmp_path / "out", HIDING_RUN, num_train_epochs=2, save_strategy="epoch"),
                  train_dataset=train_set, data_collator=collate)
    trainer.train()
    assert present_at_model_save == [True, True]


def test_best_vit_model_really_loads_at_end(tmp_path, train_set, eval_set):
    """load_best_model_at_end hits the same key-name problem as resume; the best weights must load."""
    trainer = KakurenboTrainer(
        model=make_vit(seed=3),
        args=training_args(tmp_path / "out", HIDING_RUN, num_train_epochs=3, eval_strategy="epoch",
                           save_strategy="epoch", load_best_model_at_end=True, metric_for_best_model="eval_accuracy",
                           greater_is_better=True),
        train_dataset=train_set, eval_dataset=eval_set, data_collator=collate, compute_metrics=accuracy)
    trainer.train()
    best = ViTForImageClassification.from_pretrained(trainer.state.best_model_checkpoint).state_dict()
    assert all(torch.equal(best[k], v) for k, v in trainer.model.state_dict().items())
    with torch.no_grad():  # whichever checkpoint was best, loading it must overwrite these
        for parameter in trainer.model.parameters():
            parameter.zero_()
    trainer._load_best_model()
    assert all(torch.equal(best[k], v) for k, v in trainer.model.state_dict().items())


def test_speed_metrics_count_the_samples_really_trained(hiding_run):
    trainer, _ = hiding_run
    metrics = [e for e in trainer.state.log_history if "train_samples_per_second" in e][-1]
    trained = sum(p.num_samples - p.num_hidden for p in trainer.hiding_engine.plans)
    assert trained < 4 * 160
    assert metrics["train_samples_per_second"] * metrics["train_runtime"] == pytest.approx(trained, rel=0.02)


def test_plain_training_arguments_warn_that_hiding_is_on(tmp_path, train_set, caplog):
    """Swapping only the Trainer class turns hiding on with the defaults: said once, at warning level."""

    class SwappedOnlyTheClass(KakurenboTrainer):  # its own name: the warning is logged once per message
        pass

    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
    with caplog.at_level(logging.WARNING, logger="kakurenbo_hf"):
        SwappedOnlyTheClass(model=make_vit(), args=args, train_dataset=train_set, data_collator=collate)
        SwappedOnlyTheClass(model=make_vit(), args=args, train_dataset=train_set, data_collator=collate)
    warnings = [r for r in caplog.records if "SwappedOnlyTheClass got plain TrainingArguments" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "hiding_fraction=0 turns hiding off" in warnings[0].getMessage()
