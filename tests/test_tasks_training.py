"""Training with the built-in statistics of other tasks: LM, seq2seq, token classification,
segmentation, multi-label, regression; Seq2SeqTrainer, TRL's SFTTrainer, PEFT/LoRA; packing.

Tiny models from configs, generated data (CPU, offline). A "learnable" sample repeats a fixed
pattern; a "noise" sample is random tokens: the learnable ones must get hidden, the noise never.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from kakurenbo_hf import KakurenboTrainer, KakurenboTrainingArguments

from helpers import training_args
from lm_helpers import LENGTH, lm_dataset, tiny_gpt2


# The LM runs' defaults on top of helpers.TINY_RUN: `training_args(tmp_path / "out", LM_RUN, ...)`.
LM_RUN = dict(num_train_epochs=6, per_device_train_batch_size=8, learning_rate=1e-2, report_to="none",
              save_strategy="no", use_cpu=True, logging_strategy="epoch", hiding_fraction=0.5, disable_tqdm=True,
              seed=0, dataloader_num_workers=0,
              # the paper's decay and a quarter refresh: the step numbers below (checkpoints) follow them
              hiding_decay_milestones=[1 / 3, 2 / 3, 8 / 9], hiding_decay_factors=[0.8, 0.6, 0.4],
              refresh_fraction=0.25, refresh_budget=float("inf"))


def hidden_per_epoch(trainer):
    return [entry["kakurenbo/hidden"] for entry in trainer.state.log_history if "kakurenbo/hidden" in entry]


def record_hidden(trainer_cls):
    class Recording(trainer_cls):
        def on_epoch_plan(self, plan):
            self.__dict__.setdefault("hidden_sets", []).append(np.flatnonzero(self.hiding_engine.hidden).tolist())

    return Recording


# --- causal LM ---------------------------------------------------------------------------------


def test_causal_lm_hides_learned_samples_and_never_noise(tmp_path):
    data = lm_dataset()
    trainer = record_hidden(KakurenboTrainer)(model=tiny_gpt2(), args=training_args(tmp_path / "out", LM_RUN),
                                              train_dataset=data)
    trainer.train()
    stats = trainer.hiding_engine.stats
    assert stats.num_seen == len(data)
    hidden = set().union(*map(set, trainer.hidden_sets))
    assert hidden, "nothing was hidden"
    assert all(i < 32 for i in hidden), f"noise samples hidden: {sorted(i for i in hidden if i >= 32)}"
    assert sum(hidden_per_epoch(trainer)) > 0
    assert stats.loss[:32].mean() < stats.loss[32:].mean()
    assert (stats.confidence[32:] < 0.7).all()


def test_causal_lm_at_f0_is_bit_identical_to_the_plain_trainer(tmp_path):
    data = lm_dataset()
    common = dict(output_dir=str(tmp_path / "p"), num_train_epochs=2, per_device_train_batch_size=8,
                  learning_rate=1e-2, report_to="none", save_strategy="no", use_cpu=True, logging_steps=1, seed=0,
                  disable_tqdm=True)
    plain = Trainer(model=tiny_gpt2(), args=TrainingArguments(**common), train_dataset=data)
    plain.train()
    hiding = KakurenboTrainer(model=tiny_gpt2(), args=KakurenboTrainingArguments(**common, hiding_fraction=0.0),
                              train_dataset=data)
    hiding.train()
    losses = lambda t: [e["loss"] for e in t.state.log_history if "loss" in e]  # noqa: E731
    assert losses(plain) == losses(hiding)
    for a, b in zip(plain.model.parameters(), hiding.model.parameters()):
        assert torch.equal(a, b)


def test_causal_lm_resume_is_exact(tmp_path):
    data = lm_dataset()
    full = record_hidden(KakurenboTrainer)(model=tiny_gpt2(),
                                           args=training_args(tmp_path / "a" / "out", LM_RUN, save_strategy="steps",
                                                              save_steps=11, logging_steps=1,
                                                              logging_strategy="steps"),
                                           train_dataset=data)
    full.train()
    # A checkpoint inside a hiding epoch (not at its start) that is followed by another epoch.
    plans = full.hiding_engine.plans
    step = next(s for s in range(11, full.state.global_step, 11)
                if any(p.num_hidden and p.start_step < s < p.start_step + p.update_steps for p in plans[:-1]))
    checkpoint = os.path.join(str(tmp_path / "a" / "out"), f"checkpoint-{step}")
    assert os.path.exists(os.path.join(checkpoint, "kakurenbo_state.safetensors"))
    resumed = record_hidden(KakurenboTrainer)(model=tiny_gpt2(seed=1),
                                              args=training_args(tmp_path / "a" / "out", LM_RUN, logging_steps=1,
                                                                 logging_strategy="steps"),
                                              train_dataset=data)
    resumed.train(resume_from_checkpoint=checkpoint)
    steps = lambda t: {e["step"]: e["loss"] for e in t.state.log_history if "loss" in e}  # noqa: E731
    after = {s: v for s, v in steps(full).items() if s > step}
    assert after and after == {s: v for s, v in steps(resumed).items() if s > step}
    assert resumed.hidden_sets and full.hidden_sets[-len(resumed.hidden_sets):] == resumed.hidden_sets
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


# --- packing is refused --------------------------------------------------------------------------


def test_flattening_collator_is_refused_before_training(tmp_path):
    from transformers import DataCollatorWithFlattening

    data = lm_dataset(pad_some=False).remove_columns(["attention_mask"])
    trainer = KakurenboTrainer(model=tiny_gpt2(), args=training_args(tmp_path / "out", LM_RUN), train_dataset=data,
                               data_collator=DataCollatorWithFlattening())
    with pytest.raises(ValueError, match="one row must be one sample"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_restarting_position_ids_are_refused(tmp_path):
    data = lm_dataset(pad_some=False)
    positions = np.concatenate([np.arange(LENGTH // 2), np.arange(LENGTH // 2)])  # two documents in a row
    data = data.add_column("position_ids", [positions.tolist()] * len(data)).with_format("torch")
    trainer = KakurenboTrainer(model=tiny_gpt2(), args=training_args(tmp_path / "out", LM_RUN), train_dataset=data)
    with pytest.raises(ValueError, match="restart inside a row"):
        trainer.train()


def test_padded_position_ids_are_accepted(tmp_path):
    """Left padding with masked position ids is one document per row: not packing."""
    data = lm_dataset(pad_some=False)
    positions = np.arange(LENGTH)
    mask = np.ones(LENGTH, dtype=np.int64)
    mask[:3] = 0
    positions = np.where(mask == 1, np.cumsum(mask) - 1, 1)
    data = data.remove_columns(["attention_mask"]).add_column("position_ids", [positions.tolist()] * len(data))
    data = data.add_column("attention_mask", [mask.tolist()] * len(data)).with_format("torch")
    trainer = KakurenboTrainer(model=tiny_gpt2(), args=training_args(tmp_path / "out", LM_RUN, num_train_epochs=2),
                               train_dataset=data)
    trainer.train()
    assert trainer.hiding_engine.stats.num_seen == len(data)


# --- Seq2SeqTrainer, TRL, PEFT -----------------------------------------------------------------


def test_seq2seq_trainer_with_hiding(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    from kakurenbo_hf.integrations import KakurenboSeq2SeqTrainer, KakurenboSeq2SeqTrainingArguments

    rng = np.random.default_rng(0)
    sources = rng.integers(3, 20, (48, 8))
    sources[:24, 0], sources[24:, 0] = 1, 2  # the source says which kind of target follows
    targets = np.where(np.arange(48)[:, None] < 24, np.arange(3, 9)[None], rng.integers(3, 20, (48, 6)))  # or noise
    targets[::5, -2:] = -100
    data = Dataset.from_dict({"input_ids": sources, "labels": targets}).with_format("torch")
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=20, d_model=64, d_kv=16, d_ff=128, num_layers=1,
                                                num_heads=2, decoder_start_token_id=0, pad_token_id=0))
    args = KakurenboSeq2SeqTrainingArguments(
        str(tmp_path / "s2s"), num_train_epochs=8, per_device_train_batch_size=8, learning_rate=1e-2,
        report_to="none", save_strategy="no", use_cpu=True, hiding_fraction=0.5, predict_with_generate=True,
        disable_tqdm=True, logging_strategy="epoch", seed=0)
    trainer = record_hidden(KakurenboSeq2SeqTrainer)(model=model, args=args, train_dataset=data, eval_dataset=data)
    trainer.train()
    hidden = set().union(*map(set, trainer.hidden_sets))
    assert hidden and all(i < 24 for i in hidden)
    metrics = trainer.evaluate(max_new_tokens=6)  # generation path of Seq2SeqTrainer still works
    assert "eval_loss" in metrics


def _word_tokenizer(texts):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<eos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")


def _sft_setup(tmp_path, **config):
    pytest.importorskip("trl")
    import random

    from kakurenbo_hf.integrations import KakurenboSFTConfig, KakurenboSFTTrainer

    rng = random.Random(0)
    texts = ["the cat sat on the mat and the dog sat on the log"] * 24
    texts += [" ".join(rng.choice("abcdefghij") for _ in range(12)) for _ in range(24)]
    tokenizer = _word_tokenizer(texts)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=32, n_layer=1, n_head=2,
                                       pad_token_id=0, eos_token_id=2, bos_token_id=2, loss_type="ForCausalLM"))
    values = dict(num_train_epochs=6, per_device_train_batch_size=8, learning_rate=1e-2, report_to="none",
                  save_strategy="no", use_cpu=True, bf16=False, logging_strategy="epoch", hiding_fraction=0.5,
                  max_length=32, disable_tqdm=True, seed=0)
    values.update(config)
    args = KakurenboSFTConfig(str(tmp_path / "sft"), **values)
    return record_hidden(KakurenboSFTTrainer), model, args, Dataset.from_dict({"text": texts}), tokenizer


def test_trl_sft_trainer_with_hiding(tmp_path):
    trainer_cls, model, args, data, tokenizer = _sft_setup(tmp_path)
    trainer = trainer_cls(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    stats = trainer.hiding_engine.stats
    assert stats.num_seen == len(data)
    hidden = set().union(*map(set, trainer.hidden_sets))
    assert hidden and all(i < 24 for i in hidden)  # the repeated sentence, never the noise


def test_trl_packing_is_refused(tmp_path):
    trainer_cls, model, args, data, tokenizer = _sft_setup(tmp_path, packing=True)
    trainer = trainer_cls(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    with pytest.raises(ValueError, match="one row must be one sample"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_peft_lora_trains_hides_checkpoints_and_resumes(tmp_path):
    """LoRA on a (briefly) pre-trained base, as LoRA is used: the adapter trains, hides, resumes exactly."""
    peft = pytest.importorskip("peft")
    data = lm_dataset()
    base = tiny_gpt2()
    optimizer = torch.optim.AdamW(base.parameters(), lr=1e-2)
    for _ in range(20):  # "pre-training" on the learnable rows
        base(**data[:32]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    base_state = {k: v.clone() for k, v in base.state_dict().items()}

    def lora_model():
        model = tiny_gpt2()
        model.load_state_dict(base_state)
        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM",
                                 fan_in_fan_out=True)
        return peft.get_peft_model(model, config)

    run = lambda model, **kw: record_hidden(KakurenboTrainer)(  # noqa: E731
        model=model, args=training_args(tmp_path / "out", LM_RUN, learning_rate=3e-2, logging_steps=1,
                                        logging_strategy="steps", **kw),
        train_dataset=data)
    full = run(lora_model(), save_strategy="steps", save_steps=11)
    full.train()
    assert set().union(*map(set, full.hidden_sets)), "nothing was hidden"
    checkpoint = os.path.join(str(tmp_path / "out"), "checkpoint-33")
    assert os.path.exists(os.path.join(checkpoint, "adapter_model.safetensors"))
    assert os.path.exists(os.path.join(checkpoint, "kakurenbo_state.safetensors"))
    resumed = run(lora_model())
    resumed.train(resume_from_checkpoint=checkpoint)
    steps = lambda t: {e["step"]: e["loss"] for e in t.state.log_history if "loss" in e}  # noqa: E731
    assert {s: v for s, v in steps(full).items() if s > 33} == {s: v for s, v in steps(resumed).items() if s > 33}
    trained = [name for name, p in full.model.named_parameters() if p.requires_grad]
    assert trained and all("lora" in name for name in trained)
    full_state, resumed_state = dict(full.model.named_parameters()), dict(resumed.model.named_parameters())
    for name in trained:
        assert torch.equal(full_state[name], resumed_state[name]), name


# --- token classification, segmentation, multi-label, regression ------------------------------


def test_token_classification_trains_with_hiding(tmp_path):
    from transformers import BertConfig, BertForTokenClassification

    rng = np.random.default_rng(0)
    ids = rng.integers(5, 30, (64, 16))
    labels = np.where(np.arange(64)[:, None] < 32, ids % 5, rng.integers(0, 5, (64, 16)))  # rule or noise
    labels[:, 0] = -100
    labels[40] = -100  # a sample with every label ignored: never hidden, stays unseen
    data = Dataset.from_dict({"input_ids": ids, "labels": labels}).with_format("torch")
    torch.manual_seed(0)
    model = BertForTokenClassification(BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=1,
                                                  num_attention_heads=2, intermediate_size=32, num_labels=5))
    trainer = record_hidden(KakurenboTrainer)(model=model,
                                              args=training_args(tmp_path / "out", LM_RUN, num_train_epochs=8),
                                              train_dataset=data)
    trainer.train()
    hidden = set().union(*map(set, trainer.hidden_sets))
    assert hidden and all(i < 32 for i in hidden)
    assert trainer.hiding_engine.stats.loss[40] == np.inf


def test_semantic_segmentation_trains_with_hiding(tmp_path):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    rng = np.random.default_rng(0)
    n, size = 48, 32
    masks = np.zeros((n, size, size), dtype=np.int64)
    pixels = rng.normal(scale=0.3, size=(n, 3, size, size)).astype(np.float32)
    for i in range(n):
        top, left = rng.integers(0, size // 2, 2)
        masks[i, top:top + 12, left:left + 12] = 1 + i % 2
        for c in range(2):
            pixels[i, c][masks[i] == c + 1] += 2.0  # the class shows in its own channel
    masks[n // 2:] = rng.integers(0, 3, (n // 2, size, size))  # noise labels for the second half
    masks[:, :2] = 255  # an ignored border
    data = Dataset.from_dict({"pixel_values": pixels, "labels": masks}).with_format("torch")
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(SegformerConfig(
        num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
        num_attention_heads=[1, 2], decoder_hidden_size=32, num_labels=3))
    trainer = record_hidden(KakurenboTrainer)(model=model,
                                              args=training_args(tmp_path / "out", LM_RUN, num_train_epochs=6),
                                              train_dataset=data)
    trainer.train()
    hidden = set().union(*map(set, trainer.hidden_sets))
    assert hidden and all(i < n // 2 for i in hidden)
    assert np.isfinite(trainer.hiding_engine.stats.loss).all()


@pytest.mark.parametrize("task", ["regression", "multi_label"])
def test_regression_and_multi_label_train_with_built_in_statistics(tmp_path, task):
    from transformers import BertConfig, BertForSequenceClassification

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 30, (48, 6))
    if task == "regression":
        labels = (ids[:, 0] / 10.0).astype(np.float32)
        config = dict(num_labels=1)
    else:
        labels = np.stack([(ids[:, 0] % 2), (ids[:, 1] % 3 == 0)], 1).astype(np.float32)
        config = dict(num_labels=2, problem_type="multi_label_classification")
    data = Dataset.from_dict({"input_ids": ids, "labels": labels}).with_format("torch")
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, **config))
    trainer = KakurenboTrainer(model=model,
                               args=training_args(tmp_path / "out", LM_RUN, num_train_epochs=4, learning_rate=3e-3),
                               train_dataset=data)
    trainer.train()
    assert trainer.hiding_engine.stats.num_seen == len(data)
    if task == "regression":  # no move-back for regression: the lowest-loss candidates are hidden
        assert sum(hidden_per_epoch(trainer)) > 0
