"""Per-sample loss weights (`kakurenbo_hf/tasks/weighting.py` and `hf/loss_weighting.py`).

- At weight 1 the weighted per-sample loss is the model's own loss: same value, same gradients,
  for classification, causal LM, seq2seq, masked LM and token classification, with and without
  the Trainer's `num_items_in_batch`, and with label smoothing (the Trainer's `LabelSmoother`).
- Weights act per sample, as computed independently from plain cross-entropies.
- A training run whose strategy weights every sample by 1 is the plain Trainer's run (ViT, and a
  causal LM under gradient accumulation, where the Trainer passes `num_items_in_batch`).
- What cannot be reproduced is refused before anything is trained, naming the cause.
"""

from __future__ import annotations

import inspect

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import collate, make_image_dataset, make_vit, training_args
from lm_helpers import lm_dataset, tiny_gpt2
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForTokenClassification,
    T5Config,
    T5ForConditionalGeneration,
    Trainer,
    TrainingArguments,
)
from transformers.trainer_pt_utils import LabelSmoother

from kakurenbo_hf import KakurenboTrainer, KakurenboTrainingArguments
from kakurenbo_hf.core.config import KakurenboArguments
from kakurenbo_hf.core.engine import HidingEngine
from kakurenbo_hf.strategies.base import HidingDecision, HidingStrategy, register_strategy
from kakurenbo_hf.tasks import (
    CausalLMStatistics,
    MultiLabelStatistics,
    RegressionStatistics,
    SegmentationStatistics,
    detect_statistics,
)
from kakurenbo_hf.tasks.weighting import (
    DeviceWeights,
    loss_form,
    normalisation_matches,
    per_sample_loss_sums,
    same_loss,
    weighted_loss,
)

torch.set_num_threads(1)


def test_weighting_module_is_pure():
    source = (Path(__file__).resolve().parent.parent / "kakurenbo_hf" / "tasks" / "weighting.py").read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith(("transformers", "accelerate"))
            assert (node.module or "") not in ("trainer", "training_args")
        elif isinstance(node, ast.Import):
            assert not any(alias.name.startswith(("transformers", "accelerate")) for alias in node.names)


# --- the models: one batch each ------------------------------------------------------------------


def _vit_batch():
    data = make_image_dataset(6, noise=1.0)[:]
    labels = data["label"].clone()
    labels[2] = -100  # an ignored label: counted by neither loss
    return make_vit(seed=1), {"pixel_values": data["pixel_values"], "labels": labels}


def _gpt2_batch():
    data = lm_dataset(num_learnable=3, num_noise=3)[:]  # some rows right-padded (labels -100)
    return tiny_gpt2(seed=1), {key: data[key] for key in ("input_ids", "attention_mask", "labels")}


def _bert_config(**overrides):
    return BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                      max_position_embeddings=32, **overrides)


def _token_batch(model_cls, num_labels=None):
    torch.manual_seed(2)
    config = _bert_config(num_labels=num_labels) if num_labels else _bert_config()
    model = model_cls(config)
    ids = torch.randint(3, 40, (5, 9))
    classes = num_labels or 40
    labels = torch.randint(0, classes, (5, 9))
    labels[torch.rand(5, 9) < 0.4] = -100
    labels[3] = -100  # a sample with no counted position
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _t5_batch():
    torch.manual_seed(3)
    model = T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                                decoder_start_token_id=0, pad_token_id=0))
    ids = torch.randint(2, 32, (4, 7))
    labels = torch.randint(2, 32, (4, 5))
    labels[1, 3:] = -100
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


BATCHES = {
    "single_label_classification": _vit_batch,
    "causal_lm": _gpt2_batch,
    "token_classification": lambda: _token_batch(BertForTokenClassification, num_labels=5),
    "masked_lm": lambda: _token_batch(BertForMaskedLM),
    "seq2seq_lm": _t5_batch,
}


def _grads(loss, model):
    parameters = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)


def _assert_same_grads(ours, theirs):
    for a, b in zip(ours, theirs):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("task", sorted(BATCHES))
@pytest.mark.parametrize("with_num_items", [False, True])
def test_weight_one_is_the_models_loss_and_gradients(task, with_num_items):
    model, batch = BATCHES[task]()
    extra = {}
    if with_num_items:  # as under gradient accumulation: the tokens of the whole accumulated batch
        extra["num_items_in_batch"] = torch.tensor(3 * int((batch["labels"] != -100).sum()) + 5)
    outputs = model(**batch, **extra)
    statistics = detect_statistics(model, outputs, batch["labels"])
    form = loss_form(statistics)
    assert form.task == task  # the detection of kakurenbo_hf.tasks, reused
    sums, counts = per_sample_loss_sums(outputs.logits, batch["labels"], form)
    # T5 and BERT compute the batch mean whatever num_items_in_batch says (the trainer finds out at the first step).
    uses_num_items = with_num_items and task not in ("seq2seq_lm", "masked_lm", "token_classification")
    ours = weighted_loss(sums, counts, torch.ones(len(sums)), extra["num_items_in_batch"] if uses_num_items else None)
    torch.testing.assert_close(ours, outputs.loss, rtol=1e-5, atol=1e-7)
    assert same_loss(ours, outputs.loss, low_precision=False)
    _assert_same_grads(_grads(ours, model), _grads(outputs.loss, model))


@pytest.mark.parametrize("task", ["single_label_classification", "causal_lm"])
@pytest.mark.parametrize("with_num_items", [False, True])
def test_label_smoothing_is_the_trainers_label_smoother(task, with_num_items):
    model, batch = BATCHES[task]()
    labels = batch.pop("labels")
    outputs = model(**batch)
    num_items = torch.tensor(41) if with_num_items else None
    shift = task == "causal_lm"
    if "num_items_in_batch" in inspect.signature(LabelSmoother.__call__).parameters:
        theirs = LabelSmoother(epsilon=0.1)(outputs, labels, shift_labels=shift, num_items_in_batch=num_items)
    else:  # older transformers (5.3): the smoother's mean over counted positions; rescaled to the item count
        theirs = LabelSmoother(epsilon=0.1)(outputs, labels, shift_labels=shift)
        if num_items is not None:
            counted = ((labels[..., 1:] if shift else labels) != -100).sum()
            theirs = theirs * counted / num_items
    form = loss_form(CausalLMStatistics() if task == "causal_lm" else detect_statistics(model, outputs, labels), 0.1)
    sums, counts = per_sample_loss_sums(outputs.logits, labels, form)
    ours = weighted_loss(sums, counts, None, num_items)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    _assert_same_grads(_grads(ours, model), _grads(theirs, model))


def test_weights_multiply_each_samples_loss_classification():
    model, batch = _vit_batch()
    outputs = model(**batch)
    labels = batch["labels"]
    weights = torch.tensor([0.5, 2.0, 3.0, 0.0, 1.0, 1.5])
    sums, counts = per_sample_loss_sums(outputs.logits, labels, loss_form(detect_statistics(model, outputs, labels)))
    plain = F.cross_entropy(outputs.logits, labels, reduction="none", ignore_index=-100)  # 0 where ignored
    expected = (weights * plain).sum() / (labels != -100).sum()
    torch.testing.assert_close(weighted_loss(sums, counts, weights), expected)
    # A weight of 0 takes the sample out: the gradient is the model's loss on the others (rescaled by their count).
    zero_first = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    others = model(pixel_values=batch["pixel_values"][1:], labels=labels[1:])
    scale = (labels[1:] != -100).sum() / (labels != -100).sum()
    _assert_same_grads(_grads(weighted_loss(sums, counts, zero_first), model), _grads(others.loss * scale, model))


def test_weights_apply_to_every_token_of_a_sample():
    model, batch = _gpt2_batch()
    outputs = model(**batch)
    labels = batch["labels"]
    weights = torch.tensor([1.0, 0.0, 2.5, 1.0, 0.25, 4.0])
    sums, counts = per_sample_loss_sums(outputs.logits, labels, loss_form(CausalLMStatistics()))
    log_probs = torch.log_softmax(outputs.logits[:, :-1].float(), dim=-1)
    targets = labels[:, 1:]
    numerator, denominator = 0.0, 0
    for row in range(len(labels)):  # token by token: each counted token of row b weighs weights[b]
        for position in range(targets.shape[1]):
            if targets[row, position] != -100:
                numerator = numerator - weights[row] * log_probs[row, position, targets[row, position]]
                denominator += 1
    torch.testing.assert_close(weighted_loss(sums, counts, weights), numerator / denominator)
    assert counts.tolist() == (targets != -100).sum(1).float().tolist()


@pytest.mark.parametrize("task, expected", [("causal_lm", (True, False)), ("token_classification", (False, True))])
def test_the_models_denominator_is_recognised(task, expected):
    """GPT-2 divides by the Trainer's num_items_in_batch, BERT takes the batch mean whatever it is given;
    where the two counts coincide (one micro-batch, one process) both forms match."""
    model, batch = BATCHES[task]()
    counted = int((batch["labels"][:, 1:] if task == "causal_lm" else batch["labels"]).ne(-100).sum())
    for items, matches in [(torch.tensor(2 * counted + 3), expected), (torch.tensor(counted), (True, True))]:
        outputs = model(**batch, num_items_in_batch=items)
        form = loss_form(detect_statistics(model, outputs, batch["labels"]))
        sums, counts = per_sample_loss_sums(outputs.logits, batch["labels"], form)
        assert normalisation_matches(outputs.loss, sums, counts, items, 1.0, low_precision=False) == matches


def test_device_weights_follow_the_epochs_array():
    lookup = DeviceWeights()
    first = np.array([0.5, 1.0, 2.0], dtype=np.float32)
    assert lookup(first, torch.tensor([2, 0, 2]), torch.device("cpu")).tolist() == [2.0, 0.5, 2.0]
    second = np.array([3.0, 1.0, 1.0], dtype=np.float32)  # the next epoch's decision: a new array
    assert lookup(second, torch.tensor([[0], [1]]), torch.device("cpu")).tolist() == [3.0, 1.0]


@pytest.mark.parametrize("statistics", [MultiLabelStatistics(), RegressionStatistics(), SegmentationStatistics()])
def test_unsupported_tasks_are_named(statistics):
    with pytest.raises(ValueError, match=statistics.task):
        loss_form(statistics)


def test_same_loss_tolerances():
    exact = torch.tensor(2.0)
    assert same_loss(torch.tensor(2.0 + 1e-6), exact, low_precision=False)
    assert not same_loss(torch.tensor(2.002), exact, low_precision=False)  # e.g. a 1e-3 auxiliary loss term
    assert same_loss(torch.tensor(2.002), exact, low_precision=True)
    assert same_loss(torch.tensor(float("nan")), torch.tensor(float("nan")), low_precision=False)


# --- through the trainer: weights of 1 train exactly like the plain Trainer ----------------------


class WeightsOfOne(HidingStrategy):
    """Hides nothing and weights every sample by 1."""

    uses_hiding_fraction = False
    uses_loss_weights = True

    def select(self, stats, target_fraction, epoch):
        return HidingDecision(hidden=np.zeros(stats.num_samples, dtype=bool), num_candidates=0, moved_back=0,
                              weights=np.ones(stats.num_samples, dtype=np.float32))


@pytest.fixture
def ones_strategy(clean_registry):
    register_strategy("weights_of_one_test")(WeightsOfOne)
    return "weights_of_one_test"


def test_undeclared_loss_weights_are_refused(clean_registry):
    """A strategy that returns weights without declaring them would have them silently ignored: refused."""

    @register_strategy("undeclared_weights_test")
    class Undeclared(WeightsOfOne):
        uses_loss_weights = False

    args = KakurenboArguments(hiding_strategy="undeclared_weights_test", hiding_fraction=0.3)
    engine = HidingEngine(4, num_epochs=3, arguments=args)
    engine.stats.update(np.arange(4), np.ones(4), np.ones(4), np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="uses_loss_weights"):
        engine.plan_epoch(1)


# Plain SGD in the comparisons: Adam would blow rounding noise in gradients that are exactly 0 in
# exact arithmetic (an attention key's bias) up to full-size steps.
# On top of helpers.TINY_RUN (each run sets its epochs and batch size): `training_args(out, COMMON, ...)`.
COMMON = dict(learning_rate=3e-2, lr_scheduler_type="linear", optim="sgd")


class WeightSpy(KakurenboTrainer):
    """Counts the training steps whose backward loss came from the weighted path."""

    weighted_steps = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        weighting = self.hiding_controller.loss_weighting
        weighted_loss = weighting.weighted_loss

        def counting(loss, *rest):
            result = weighted_loss(loss, *rest)
            self.weighted_steps += result is not loss
            return result

        weighting.weighted_loss = counting


def _losses(trainer):
    return [(e["step"], e["loss"], e["grad_norm"]) for e in trainer.state.log_history if "loss" in e]


def _compare_runs(plain, ours):
    plain_logs, our_logs = _losses(plain), _losses(ours)
    assert [s for s, _, _ in plain_logs] == [s for s, _, _ in our_logs]
    np.testing.assert_allclose([(l, g) for _, l, g in our_logs], [(l, g) for _, l, g in plain_logs], rtol=2e-4)
    for (name, a), (_, b) in zip(plain.model.named_parameters(), ours.model.named_parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_weights_of_one_train_like_the_plain_trainer_classification(tmp_path, ones_strategy, label_smoothing):
    data = make_image_dataset(64, noise=1.5)
    settings = dict(COMMON, num_train_epochs=3, per_device_train_batch_size=16, label_smoothing_factor=label_smoothing)
    plain = Trainer(model=make_vit(seed=3), train_dataset=data, data_collator=collate,
                    args=training_args(tmp_path / "plain", settings, cls=TrainingArguments))
    plain.train()
    ours = WeightSpy(model=make_vit(seed=3), train_dataset=data, data_collator=collate,
                     args=training_args(tmp_path / "ours", settings, hiding_strategy=ones_strategy,
                                        hiding_fraction=0.3))
    ours.train()
    assert ours.weighted_steps == 2 * 4  # epochs 1 and 2 (after the warm-up epoch), 4 steps each
    assert [p.lr_factor for p in ours.hiding_engine.plans] == [1.0, 1.0, 1.0]
    _compare_runs(plain, ours)


def test_weights_of_one_train_like_the_plain_trainer_causal_lm_with_accumulation(tmp_path, ones_strategy):
    data = lm_dataset(num_learnable=24, num_noise=24)
    settings = dict(COMMON, num_train_epochs=3, per_device_train_batch_size=4, gradient_accumulation_steps=3)
    plain = Trainer(model=tiny_gpt2(seed=2), train_dataset=data,
                    args=training_args(tmp_path / "plain", settings, cls=TrainingArguments))
    plain.train()
    ours = WeightSpy(model=tiny_gpt2(seed=2), train_dataset=data,
                     args=training_args(tmp_path / "ours", settings, hiding_strategy=ones_strategy,
                                        hiding_fraction=0.3))
    assert ours.model_accepts_loss_kwargs  # so the Trainer normalises by num_items_in_batch
    ours.train()
    assert ours.weighted_steps == 2 * 12
    _compare_runs(plain, ours)


def test_weights_of_one_follow_a_model_that_ignores_num_items_in_batch(tmp_path, ones_strategy):
    """BERT's token classification loss is the batch mean even when the Trainer passes num_items_in_batch
    (gradient accumulation): the weighted loss takes the model's normalisation, found at the first step."""
    from datasets import Dataset

    rng = np.random.default_rng(0)
    ids = rng.integers(3, 40, (48, 9))
    labels = rng.integers(0, 5, (48, 9))
    labels[rng.random((48, 9)) < 0.4] = -100
    data = Dataset.from_dict({"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels}).with_format(
        "torch")
    settings = dict(COMMON, num_train_epochs=3, per_device_train_batch_size=4, gradient_accumulation_steps=3)
    runs = []
    for cls, args_cls, extra in [(Trainer, TrainingArguments, {}),
                                 (WeightSpy, KakurenboTrainingArguments,
                                  {"hiding_strategy": ones_strategy, "hiding_fraction": 0.3})]:
        torch.manual_seed(4)
        model = BertForTokenClassification(_bert_config(num_labels=5))
        trainer = cls(model=model, train_dataset=data,
                      args=training_args(tmp_path / cls.__name__, settings, cls=args_cls, **extra))
        trainer.train()
        runs.append(trainer)
    plain, ours = runs
    assert ours.hiding_controller.loss_weighting._normalise_by_items is False and ours.weighted_steps == 2 * 12
    _compare_runs(plain, ours)


# --- refused before training -----------------------------------------------------------------


def _weighted_trainer(tmp_path, model=None, data=None, strategy="infobatch", collator=collate, **kwargs):
    statistics = kwargs.pop("per_sample_statistics_fn", None)
    trainer_kwargs = {"compute_loss_func": kwargs.pop("compute_loss_func")} if "compute_loss_func" in kwargs else {}
    args = training_args(tmp_path / strategy, COMMON, hiding_strategy=strategy, hiding_fraction=0.3, num_train_epochs=2,
                         per_device_train_batch_size=16, **kwargs)
    return KakurenboTrainer(model=model or make_vit(seed=3), args=args, data_collator=collator,
                            train_dataset=data if data is not None else make_image_dataset(48),
                            per_sample_statistics_fn=statistics, **trainer_kwargs)


def _untouched(trainer, before):
    assert trainer.state.global_step == 0
    return all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


@pytest.mark.parametrize("strategy", ["infobatch", "iswr"])
def test_compute_loss_func_is_refused_before_training(tmp_path, strategy):
    trainer = _weighted_trainer(tmp_path, strategy=strategy,
                                compute_loss_func=lambda outputs, labels, num_items_in_batch=None: outputs.loss)
    with pytest.raises(ValueError, match=f"hiding_strategy='{strategy}'.*compute_loss_func.*'kakurenbo' or 'random'"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_custom_statistics_function_is_refused_before_training(tmp_path):
    def statistics(outputs, labels):
        loss = F.cross_entropy(outputs.logits.detach(), labels, reduction="none")
        return loss, torch.ones_like(loss), torch.ones_like(loss, dtype=torch.bool)

    trainer = _weighted_trainer(tmp_path, per_sample_statistics_fn=statistics)
    with pytest.raises(ValueError, match="custom `per_sample_statistics_fn`.*built-in statistics classes"):
        trainer.train()
    # A built-in statistics class of a supported task is fine, of another task refused up front.
    _weighted_trainer(tmp_path, per_sample_statistics_fn=CausalLMStatistics()).hiding_controller.loss_weighting.check_arguments()
    with pytest.raises(ValueError, match="multi_label_classification"):
        _weighted_trainer(tmp_path, per_sample_statistics_fn=MultiLabelStatistics()).hiding_controller.loss_weighting.check_arguments()


def test_the_same_knobs_are_not_refused_without_loss_weights(tmp_path):
    """kakurenbo and random (and iswr without its weights) leave the model's loss alone: nothing to refuse."""
    for strategy, extra in [("kakurenbo", {}), ("random", {}), ("iswr", {"iswr_unbiased": False})]:
        trainer = _weighted_trainer(tmp_path, strategy=strategy, per_sample_statistics_fn=MultiLabelStatistics(),
                                    **extra)
        trainer.hiding_controller.loss_weighting.check_arguments()


def _multi_label_data(num_samples=48):
    data = make_image_dataset(num_samples)
    return data.map(lambda row: {"label": np.eye(4, dtype=np.float32)[int(row["label"])]}).with_format("torch")


def test_a_multi_label_model_is_refused_at_the_first_step_before_any_update(tmp_path):
    model = make_vit(seed=3, problem_type="multi_label_classification")

    def float_collate(features):
        return {"pixel_values": torch.stack([torch.as_tensor(f["pixel_values"]) for f in features]),
                "labels": torch.stack([torch.as_tensor(f["label"], dtype=torch.float32) for f in features])}

    trainer = _weighted_trainer(tmp_path, model=model, data=_multi_label_data(), collator=float_collate)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(ValueError, match="multi_label_classification.*'kakurenbo' or 'random'"):
        trainer.train()
    assert _untouched(trainer, before)


# (Named *ForImageClassification: transformers picks a model's loss function by its class name.)
class PenalisedViTForImageClassification(type(make_vit())):
    """A model whose loss is not plain cross-entropy (a logit penalty), as custom models often do."""

    def forward(self, *args, **kwargs):
        outputs = super().forward(*args, **kwargs)
        if outputs.loss is not None:
            outputs.loss = outputs.loss + 0.01 * outputs.logits.square().mean()
        return outputs


class AuxiliaryLossViTForImageClassification(type(make_vit())):
    """A model that reports an auxiliary loss (as mixture-of-experts models with router logits do)."""

    def forward(self, *args, **kwargs):
        outputs = super().forward(*args, **kwargs)
        outputs["aux_loss"] = outputs.logits.square().mean()
        return outputs


@pytest.mark.parametrize("model_cls, cause", [
    (PenalisedViTForImageClassification, "not the single_label_classification cross-entropy"),
    (AuxiliaryLossViTForImageClassification, "auxiliary loss"),
])
def test_a_loss_that_is_not_plain_cross_entropy_is_refused_before_any_update(tmp_path, model_cls, cause):
    torch.manual_seed(3)
    model = model_cls(make_vit().config)
    # remove_unused_columns=False: the subclass's forward(*args, **kwargs) names no input column
    trainer = _weighted_trainer(tmp_path, model=model, strategy="iswr", remove_unused_columns=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(ValueError, match=f"hiding_strategy='iswr'.*{cause}.*Nothing was trained"):
        trainer.train()
    assert _untouched(trainer, before)
