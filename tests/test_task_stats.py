"""Built-in per-sample statistics of every task (`kakurenbo_hf.tasks`) against direct computations.

Each task's statistics are compared with (a) a direct per-sample computation written out here and
(b) where a Hugging Face model computes the loss, the model's own loss on that sample alone: the
second catches a wrong shift or ignore index, which (a) alone could share.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kakurenbo_hf import tasks
from kakurenbo_hf.tasks import kernels
from kakurenbo_hf.tasks import (
    CausalLMStatistics,
    MultiLabelStatistics,
    RegressionStatistics,
    SegmentationStatistics,
    TokenStatistics,
    detect_statistics,
)


def reference_tokens(logits, labels, shift, ignore_index=-100, min_accuracy=0.5, confidence="accuracy"):
    """Per-sample statistics, one sample and one position at a time, in float64."""
    losses, confidences, corrects = [], [], []
    for b in range(logits.shape[0]):
        x = logits[b, : logits.shape[1] - shift].double()
        y = labels[b, shift:]
        keep = (y != ignore_index) & (y >= 0) & (y < x.shape[-1])
        if not keep.any():
            losses.append(math.inf), confidences.append(0.0), corrects.append(False)
            continue
        x, y = x[keep], y[keep]
        nll = F.cross_entropy(x, y, reduction="none")
        losses.append(nll.mean().item())
        right = x.argmax(-1) == y
        accuracy = right.double().mean().item()
        if confidence == "balanced_accuracy":  # mean over the classes present of their recall
            accuracy = sum(right[y == c].double().mean().item() for c in y.unique()) / len(y.unique())
        probability = torch.softmax(x, -1).gather(-1, y[:, None]).mean().item()
        confidences.append(probability if confidence == "probability" else accuracy)
        corrects.append(accuracy >= min_accuracy)
    return torch.tensor(losses), torch.tensor(confidences), torch.tensor(corrects)


def assert_stats(actual, expected, atol=1e-5):
    loss, confidence, correct = actual
    ref_loss, ref_conf, ref_correct = expected
    assert loss.shape == confidence.shape == correct.shape == ref_loss.shape
    assert correct.dtype == torch.bool
    assert torch.equal(torch.isinf(loss), torch.isinf(ref_loss))
    finite = torch.isfinite(ref_loss)
    torch.testing.assert_close(loss[finite].double(), ref_loss[finite].double(), atol=atol, rtol=1e-5)
    torch.testing.assert_close(confidence.double(), ref_conf.double(), atol=atol, rtol=1e-5)
    assert torch.equal(correct, ref_correct)


def lm_batch(batch=5, length=9, vocab=11, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=generator) * 3
    labels = torch.randint(0, vocab, (batch, length), generator=generator)
    labels[1, 6:] = -100  # right padding
    labels[2, :4] = -100  # left padding / a prompt masked out
    labels[3, :] = -100  # every label ignored
    labels[4, 1] = -100
    # make some samples "learned": their target gets a large logit, so correctness varies
    for position in range(length - 1):
        target = labels[0, position + 1]
        if target >= 0:
            logits[0, position, target] += 20.0
    return logits, labels


# --- sequence tasks ------------------------------------------------------------------------


def test_causal_lm_matches_direct_computation_with_shift_padding_and_ignored_samples():
    logits, labels = lm_batch()
    stats = CausalLMStatistics()({"logits": logits}, labels)
    assert_stats(stats, reference_tokens(logits, labels, shift=1))
    loss, confidence, correct = stats
    assert loss[3] == math.inf and confidence[3] == 0 and not correct[3]  # all ignored: unseen
    assert correct[0] and confidence[0] > 0.9  # the learned sample


def test_unshifted_statistics_differ_from_shifted():
    """Without the shift the numbers are silently wrong: the test above would catch it."""
    logits, labels = lm_batch()
    shifted = CausalLMStatistics()({"logits": logits}, labels)[0]
    aligned = TokenStatistics()({"logits": logits}, labels)[0]
    assert_stats(TokenStatistics(task="seq2seq_lm")({"logits": logits}, labels), reference_tokens(logits, labels, 0))
    assert_stats(TokenStatistics()({"logits": logits}, labels),
                 reference_tokens(logits, labels, shift=0, confidence="balanced_accuracy"))
    assert not torch.allclose(shifted[torch.isfinite(shifted)], aligned[torch.isfinite(aligned)])


@pytest.mark.parametrize("chunk_bytes", [4, 44, 4 * 11 * 3, 4 * 11 * 9 * 2])
def test_chunking_does_not_change_the_result(chunk_bytes):
    """One position per chunk, part of a row, exactly one row, several rows: same values."""
    logits, labels = lm_batch()
    whole = CausalLMStatistics()({"logits": logits}, labels)
    chunked = CausalLMStatistics(chunk_bytes=chunk_bytes)({"logits": logits}, labels)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b)


def test_chunks_stay_within_budget_and_never_copy_the_logits(monkeypatch):
    """Every block handed to the kernel is at most the chunk budget (1/40 of the logits here)."""
    logits = torch.randn(2, 512, 2048, dtype=torch.bfloat16)  # 4 MiB of bf16
    labels = torch.randint(0, 2048, (2, 512))
    sizes = []
    original = kernels._block

    def spy(scores, *args, **kwargs):
        sizes.append(scores.numel() * scores.element_size())
        return original(scores, *args, **kwargs)

    monkeypatch.setattr(kernels, "MIN_CHUNK_BYTES", 1024)
    monkeypatch.setattr(kernels, "_block", spy)
    CausalLMStatistics()({"logits": logits}, labels)
    logits_bytes = logits.numel() * logits.element_size()
    assert len(sizes) > 40
    assert max(sizes) <= logits_bytes / 40 + 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits(dtype):
    logits, labels = lm_batch()
    logits = logits.to(dtype)
    loss, confidence, correct = CausalLMStatistics()({"logits": logits}, labels)
    ref = reference_tokens(logits.float(), labels, shift=1)
    assert loss.dtype == torch.float32
    assert_stats((loss, confidence, correct), ref, atol=1e-4)


def test_no_graph_and_no_grad_is_kept():
    logits, labels = lm_batch()
    leaf = logits.clone().requires_grad_()
    outputs = {"logits": leaf * 2}
    values = CausalLMStatistics()(outputs, labels)
    assert not any(v.requires_grad for v in values)
    assert leaf.grad is None


def test_causal_lm_against_the_models_own_loss_per_sample():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=37, n_positions=16, n_embd=16, n_layer=1, n_head=2)).eval()
    input_ids = torch.randint(0, 37, (4, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 8:] = 0
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[2, :5] = -100  # prompt masked out (completion-only loss)
    with torch.no_grad():
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        own = [model(input_ids=input_ids[b:b + 1], attention_mask=attention_mask[b:b + 1],
                     labels=labels[b:b + 1]).loss for b in range(4)]
    assert isinstance(detect_statistics(model, outputs, labels), CausalLMStatistics)
    loss, _, _ = tasks.auto_statistics(outputs, labels, model)
    torch.testing.assert_close(loss, torch.stack(own), atol=1e-5, rtol=1e-5)


def test_seq2seq_against_the_models_own_loss_per_sample():
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                      decoder_start_token_id=0, pad_token_id=0)
    model = T5ForConditionalGeneration(config).eval()
    input_ids = torch.randint(1, 40, (3, 7))
    labels = torch.randint(1, 40, (3, 5))
    labels[1, 3:] = -100
    labels[2, :] = -100
    with torch.no_grad():
        outputs = model(input_ids=input_ids, labels=labels)
        own = [model(input_ids=input_ids[b:b + 1], labels=labels[b:b + 1]).loss for b in range(2)]
    assert detect_statistics(model, outputs, labels).task == "seq2seq_lm"
    loss, confidence, correct = tasks.auto_statistics(outputs, labels, model)
    torch.testing.assert_close(loss[:2], torch.stack(own), atol=1e-5, rtol=1e-5)
    assert loss[2] == math.inf and confidence[2] == 0 and not correct[2]


def test_bart_is_seq2seq_and_token_classification_is_aligned():
    from transformers import BartConfig, BartForConditionalGeneration, BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    bart = BartForConditionalGeneration(BartConfig(vocab_size=30, d_model=16, encoder_layers=1, decoder_layers=1,
                                                   encoder_attention_heads=2, decoder_attention_heads=2,
                                                   encoder_ffn_dim=16, decoder_ffn_dim=16,
                                                   max_position_embeddings=16)).eval()
    labels = torch.randint(3, 30, (2, 6))
    with torch.no_grad():
        outputs = bart(input_ids=torch.randint(3, 30, (2, 6)), labels=labels)
    assert detect_statistics(bart, outputs, labels).task == "seq2seq_lm"

    bert = BertForTokenClassification(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=16, num_labels=5)).eval()
    input_ids = torch.randint(0, 30, (3, 8))
    labels = torch.randint(0, 5, (3, 8))
    labels[:, 0] = -100  # [CLS]
    labels[1, 5:] = -100  # padding
    with torch.no_grad():
        outputs = bert(input_ids=input_ids, labels=labels)
        own = [bert(input_ids=input_ids[b:b + 1], labels=labels[b:b + 1]).loss for b in range(3)]
    assert detect_statistics(bert, outputs, labels).task == "token_classification"
    values = tasks.auto_statistics(outputs, labels, bert)
    assert_stats(values, reference_tokens(outputs.logits, labels, shift=0, confidence="balanced_accuracy"))
    torch.testing.assert_close(values[0], torch.stack(own), atol=1e-5, rtol=1e-5)


def test_min_accuracy_is_the_correctness_threshold():
    logits, labels = lm_batch()
    for level in (0.0, 0.3, 0.9, 1.0):
        values = CausalLMStatistics(min_accuracy=level)({"logits": logits}, labels)
        assert_stats(values, reference_tokens(logits, labels, shift=1, min_accuracy=level))
    with pytest.raises(ValueError, match="min_accuracy"):
        CausalLMStatistics(min_accuracy=1.5)


def test_confidence_is_token_accuracy_or_target_probability():
    logits, labels = lm_batch()
    accuracy = CausalLMStatistics()({"logits": logits}, labels)
    probability = CausalLMStatistics(confidence="probability")({"logits": logits}, labels)
    assert_stats(probability, reference_tokens(logits, labels, shift=1, confidence="probability"))
    ref = reference_tokens(logits, labels, shift=1)
    assert_stats(accuracy, ref)
    counts = (labels[:, 1:] != -100).sum(1)
    hits = accuracy[1] * counts
    assert torch.allclose(hits, hits.round())  # a fraction of the sample's counted tokens
    assert not torch.allclose(accuracy[1], probability[1])
    with pytest.raises(ValueError, match="confidence"):
        CausalLMStatistics(confidence="top")


def test_fused_log_probs_give_the_same_statistics_as_the_logits():
    """TRL's fused LM head returns per-token log-probs instead of logits: same numbers."""
    logits, labels = lm_batch()
    targets = labels[:, 1:]
    mask = targets != -100
    log_probs = torch.log_softmax(logits[:, :-1], -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    is_top1 = logits[:, :-1].argmax(-1) == targets
    fused = {"loss": torch.tensor(0.0), "log_probs": log_probs.masked_fill(~mask, 0),
             "label_mask": mask, "is_top1": is_top1 & mask}
    assert isinstance(detect_statistics(None, fused, labels), CausalLMStatistics)
    assert_stats(CausalLMStatistics()(fused, labels), reference_tokens(logits, labels, shift=1))
    without_top1 = dict(fused, is_top1=None)  # hits from p > 1/2: at most the argmax hits
    assert not (CausalLMStatistics()(without_top1, labels)[2] & ~reference_tokens(logits, labels, 1)[2]).any()


def test_trl_fused_head_of_a_real_model():
    trl_utils = pytest.importorskip("trl.trainer.utils")
    if not hasattr(trl_utils, "add_fused_lm_head"):
        # Only TRL releases with the fused head can run this; the tests extra installs one (trl 1.16 here),
        # so in CI it runs. The fused-output path itself is tested without TRL just above.
        pytest.skip("this TRL has no fused LM head")
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=41, n_positions=16, n_embd=16, n_layer=1, n_head=2)).eval()
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    input_ids = torch.randint(0, 41, (3, 10))
    labels = input_ids.clone()
    labels[1, 7:] = -100
    with torch.no_grad():
        fused = model(input_ids=input_ids, labels=labels, fused_lm_head=True)
        plain = model(input_ids=input_ids, labels=labels)
    assert getattr(fused, "logits", None) is None
    a, b = tasks.auto_statistics(fused, labels, model), tasks.auto_statistics(plain, labels, model)
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[1], b[1], atol=1e-5, rtol=1e-5)
    assert torch.equal(a[2], b[2])


# --- segmentation ----------------------------------------------------------------------------


def reference_segmentation(logits, labels, ignore_index, min_accuracy=0.5, confidence="balanced_accuracy"):
    up = F.interpolate(logits.double(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    if up.shape[1] == 1:
        up = torch.cat([torch.zeros_like(up), up], 1)
    flat = up.permute(0, 2, 3, 1).reshape(up.shape[0], -1, up.shape[1])
    return reference_tokens(flat, labels.reshape(labels.shape[0], -1), shift=0, ignore_index=ignore_index,
                            min_accuracy=min_accuracy, confidence=confidence)


def segformer(num_labels=4, **overrides):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    config = SegformerConfig(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                             hidden_sizes=[8, 16], num_attention_heads=[1, 2], decoder_hidden_size=16,
                             num_labels=num_labels, **overrides)
    return SegformerForSemanticSegmentation(config).eval()


def test_segmentation_against_the_models_own_loss_per_sample():
    model = segformer(semantic_loss_ignore_index=255)
    pixels = torch.randn(3, 3, 32, 32)
    labels = torch.randint(0, 4, (3, 32, 32))
    labels[0, :8] = 255  # ignored pixels
    labels[2] = 255  # every pixel ignored
    with torch.no_grad():
        outputs = model(pixel_values=pixels, labels=labels)
        own = [model(pixel_values=pixels[b:b + 1], labels=labels[b:b + 1]).loss for b in range(2)]
    assert outputs.logits.shape[-1] == 8  # logits at 1/4 resolution: the statistics upsample like the loss
    chosen = detect_statistics(model, outputs, labels)
    assert isinstance(chosen, SegmentationStatistics) and chosen.ignore_index == 255
    values = chosen(outputs, labels)
    assert_stats(values, reference_segmentation(outputs.logits, labels, 255))
    torch.testing.assert_close(values[0][:2], torch.stack(own), atol=1e-5, rtol=1e-5)
    assert values[0][2] == math.inf and not values[2][2]


def test_a_missed_object_on_a_background_mask_is_not_learned():
    """95% background predicted right, the object missed: pixel accuracy 0.95, balanced accuracy 0.5."""
    labels = torch.zeros(1, 20, 20, dtype=torch.long)
    labels[0, :2, :10] = 1  # 20 of 400 pixels
    logits = torch.zeros(1, 2, 20, 20)
    logits[:, 0] = 5.0  # everything predicted background
    _, balanced, correct = SegmentationStatistics()({"logits": logits}, labels)
    _, plain, _ = SegmentationStatistics(confidence="accuracy")({"logits": logits}, labels)
    torch.testing.assert_close(plain, torch.tensor([0.95]))
    torch.testing.assert_close(balanced, torch.tensor([0.5]))
    assert not (balanced >= 0.7).any() and correct.all()


def test_segmentation_uses_the_models_ignore_index():
    model = segformer(semantic_loss_ignore_index=7)
    chosen = detect_statistics(model, {"logits": torch.zeros(1, 4, 8, 8)}, torch.zeros(1, 32, 32, dtype=torch.long))
    assert chosen.ignore_index == 7


def test_binary_segmentation_is_scored_as_sigmoid():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 4, 4, generator=generator) * 2
    labels = torch.randint(0, 2, (2, 8, 8), generator=generator)
    labels[1, :2] = 255
    loss, confidence, correct = SegmentationStatistics()({"logits": logits}, labels)
    _, probability, _ = SegmentationStatistics(confidence="probability")({"logits": logits}, labels)
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    for b in range(2):
        keep = labels[b] != 255
        x, y = up[b][keep], labels[b][keep].float()
        torch.testing.assert_close(loss[b], F.binary_cross_entropy_with_logits(x, y), atol=1e-5, rtol=1e-5)
        p = torch.sigmoid(x)
        torch.testing.assert_close(probability[b], (y * p + (1 - y) * (1 - p)).mean(), atol=1e-5, rtol=1e-5)
        right = (x > 0).float() == y
        balanced = sum(right[y == c].float().mean() for c in y.unique()) / len(y.unique())
        torch.testing.assert_close(confidence[b], balanced)
        assert bool(correct[b]) == bool(balanced >= 0.5)


# --- classification, multi-label, regression -------------------------------------------------


def test_multi_label_against_direct_computation_and_the_model():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=16, num_labels=4,
                                                     problem_type="multi_label_classification")).eval()
    input_ids = torch.randint(0, 30, (5, 6))
    labels = (torch.rand(5, 4) > 0.5).float()
    with torch.no_grad():
        outputs = model(input_ids=input_ids, labels=labels)
        own = [model(input_ids=input_ids[b:b + 1], labels=labels[b:b + 1]).loss for b in range(5)]
    assert isinstance(detect_statistics(model, outputs, labels), MultiLabelStatistics)
    loss, confidence, correct = tasks.auto_statistics(outputs, labels, model)
    torch.testing.assert_close(loss, torch.stack(own), atol=1e-5, rtol=1e-5)
    p = torch.sigmoid(outputs.logits)
    torch.testing.assert_close(confidence, torch.where(labels > 0.5, p, 1 - p).min(1).values)
    assert torch.equal(correct, ((p > 0.5).float() == labels).all(1))


def test_multi_label_ignored_labels():
    logits = torch.tensor([[3.0, -3.0, 0.2], [1.0, 1.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0, -100.0], [-100.0, -100.0, -100.0]])
    loss, confidence, correct = MultiLabelStatistics()({"logits": logits}, labels)
    torch.testing.assert_close(loss[0], F.binary_cross_entropy_with_logits(logits[0, :2], labels[0, :2]))
    torch.testing.assert_close(confidence[0], torch.sigmoid(torch.tensor(3.0)))
    assert correct[0]
    assert loss[1] == math.inf and confidence[1] == 0 and not correct[1]


def test_regression_against_the_model_and_tolerance():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=16,
                                                     num_labels=1)).eval()
    input_ids = torch.randint(0, 30, (4, 6))
    labels = torch.randn(4)
    labels[3] = float("nan")
    with torch.no_grad():
        outputs = model(input_ids=input_ids, labels=labels)  # sets config.problem_type = "regression"
        own = [model(input_ids=input_ids[b:b + 1], labels=labels[b:b + 1]).loss for b in range(3)]
    assert isinstance(detect_statistics(model, outputs, labels), RegressionStatistics)
    loss, confidence, correct = tasks.auto_statistics(outputs, labels, model)
    torch.testing.assert_close(loss[:3], torch.stack(own), atol=1e-5, rtol=1e-5)
    assert correct[:3].all() and (confidence[:3] == 1).all()
    assert loss[3] == math.inf and confidence[3] == 0 and not correct[3]  # NaN label: unseen
    error = (outputs.logits[:, 0] - labels).abs()
    tolerance = float(error[:3].median())
    _, _, within = RegressionStatistics(tolerance=tolerance)(outputs, labels)
    assert torch.equal(within[:3], error[:3] <= tolerance)


def test_single_label_classification_is_unchanged():
    from kakurenbo_hf import per_sample_statistics

    logits = torch.randn(6, 5)
    labels = torch.tensor([0, 1, -100, 3, 4, 2])
    for a, b in zip(tasks.auto_statistics({"logits": logits}, labels), per_sample_statistics(logits, labels)):
        assert torch.equal(a, b)


# --- detection ---------------------------------------------------------------------------------


def test_detection_by_class_name_and_wrappers():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    outputs = {"logits": torch.zeros(2, 5, 32)}
    labels = torch.zeros(2, 5, dtype=torch.long)
    assert detect_statistics(llama, outputs, labels).task == "causal_lm"
    wrapped = torch.nn.Module()
    wrapped.module = llama  # DDP / DeepSpeed-style wrapper
    assert detect_statistics(wrapped, outputs, labels).task == "causal_lm"
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(llama, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    assert detect_statistics(lora, outputs, labels).task == "causal_lm"


def test_unknown_model_with_sequence_logits_is_refused_with_advice():
    with pytest.raises(ValueError, match="CausalLMStatistics"):
        detect_statistics(torch.nn.Linear(2, 2), {"logits": torch.zeros(2, 5, 7)}, torch.zeros(2, 5, dtype=torch.long))


def test_shape_detection_for_unknown_models():
    model = torch.nn.Linear(2, 2)
    assert detect_statistics(model, {"logits": torch.zeros(3, 4)}, torch.zeros(3, dtype=torch.long)).task == \
        "single_label_classification"
    assert detect_statistics(model, {"logits": torch.zeros(3, 4)}, torch.zeros(3, 4)).task == \
        "multi_label_classification"
    assert detect_statistics(model, {"logits": torch.zeros(3, 1)}, torch.zeros(3)).task == "regression"
    assert detect_statistics(model, {"logits": torch.zeros(3, 4, 2, 2)},
                             torch.zeros(3, 8, 8, dtype=torch.long)).task == "semantic_segmentation"
    with pytest.raises(ValueError, match="per_sample_statistics_fn"):
        detect_statistics(model, {"logits": torch.zeros(3, 4)}, torch.zeros(5, dtype=torch.long))


def test_no_logits_error_says_what_to_pass():
    with pytest.raises(ValueError, match="logits") as error:
        tasks.auto_statistics({"loss": torch.tensor(1.0)}, torch.zeros(2, 5, dtype=torch.long))
    message = str(error.value)
    assert "fused_linear_cross_entropy" in message and "per_sample_statistics_fn" in message and "log_probs" in message


def test_wrong_shapes_for_an_explicit_task_are_refused():
    with pytest.raises(ValueError, match="causal"):
        CausalLMStatistics()({"logits": torch.zeros(2, 7)}, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="segmentation"):
        SegmentationStatistics()({"logits": torch.zeros(2, 3, 4)}, torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown task"):
        tasks.statistics_for_task("object_detection")
    assert tasks.statistics_for_task("seq2seq_lm", min_accuracy=0.8).min_accuracy == 0.8


# --- the task table --------------------------------------------------------------------------


def test_one_task_table_gives_names_detection_weighting_and_docs():
    from kakurenbo_hf.tasks.weighting import WEIGHTED_TASKS

    names = [cls.task for cls in tasks.TASK_CLASSES]
    assert len(set(names)) == len(names) and list(tasks.TASKS) == names
    assert all(isinstance(cls.row, tasks.TaskRow) for cls in tasks.TASK_CLASSES)
    assert set(WEIGHTED_TASKS) == {"single_label_classification", "causal_lm", "seq2seq_lm", "masked_lm",
                                   "token_classification"}
    assert set(WEIGHTED_TASKS) == {cls.task for cls in tasks.TASK_CLASSES if cls.weightable}
    for name in names:  # every task is built by name, and says its name
        assert tasks.statistics_for_task(name).task == name
    # the explicit form of the aligned token tasks still works
    assert isinstance(tasks.statistics_for_task("seq2seq_lm"), TokenStatistics)
    assert TokenStatistics(task="masked_lm").confidence == tasks.MaskedLMStatistics().confidence == "accuracy"
    assert tasks.__doc__ is None or tasks.task_table() in tasks.__doc__


def test_the_readme_task_table_is_the_rendered_one():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text().splitlines()
    header = tasks.task_table().splitlines()[0]
    start = readme.index(header)
    end = next(i for i in range(start, len(readme)) if not readme[i].startswith("|"))
    assert sorted(readme[start:end]) == sorted(tasks.task_table().splitlines())


def test_the_package_does_not_import_transformers():
    import subprocess
    import sys

    code = "import sys, kakurenbo_hf.tasks; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
