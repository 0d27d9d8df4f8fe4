"""Which built-in statistics fit a model: detected by duck typing, without importing transformers.

Read, in this order, from the model (unwrapped from DDP / DeepSpeed / `torch.compile` / PEFT
wrappers), its config and the batch:

1. a fused LM head's output (per-token `log_probs` + `label_mask`, no logits: TRL's SFTTrainer)
   -> causal LM, read from the log-probs;
2. the model class (any class of its MRO): `*ForSemanticSegmentation` -> semantic segmentation
   (ignore index `config.semantic_loss_ignore_index`); `*ForTokenClassification` -> token
   classification; `*ForMaskedLM` -> masked LM; an encoder-decoder (`config.is_encoder_decoder`,
   e.g. `*ForConditionalGeneration` of T5 / BART / Whisper) with 3-D logits -> seq2seq (labels
   not shifted); `*ForCausalLM`, `*LMHeadModel`, and decoder-only `*ForConditionalGeneration`
   (vision-language models, whose loss shifts like a causal LM) -> causal LM;
3. `config.problem_type` (set by Hugging Face classifiers at their first forward):
   `multi_label_classification`, `regression`, `single_label_classification`;
4. the shapes, for models none of that names: logits (batch, classes) with integer labels
   (batch,) -> single-label classification; float labels of the logits' shape -> multi-label;
   one output per sample with float labels -> regression; (batch, classes, h, w) logits with
   (batch, H, W) integer labels -> semantic segmentation. 3-D logits of an unknown model are
   refused: whether its labels are shifted cannot be told from shapes.
"""

from __future__ import annotations

import torch

from .builtin import (
    SEGMENTATION_IGNORE_INDEX,
    CausalLMStatistics,
    ClassificationStatistics,
    MultiLabelStatistics,
    RegressionStatistics,
    SegmentationStatistics,
    TaskStatistics,
    TokenStatistics,
    fused_log_probs,
    output_field,
    require_logits,
)

_CLASSIFICATION = ClassificationStatistics()
_MULTI_LABEL = MultiLabelStatistics()
_REGRESSION = RegressionStatistics()
_CAUSAL_LM = CausalLMStatistics()
_SEQ2SEQ = TokenStatistics(task="seq2seq_lm")
_TOKEN = TokenStatistics()
_MASKED_LM = TokenStatistics(task="masked_lm")

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def unwrap_model(model):
    """The model under DDP / DeepSpeed (`.module`), `torch.compile` (`._orig_mod`) and PEFT (`get_base_model()`)."""
    seen = set()
    while model is not None and id(model) not in seen:
        seen.add(id(model))
        get_base = getattr(model, "get_base_model", None)
        if callable(get_base) and type(model).__name__.startswith("Peft"):
            model = get_base()
            continue
        inner = next((getattr(model, name) for name in ("module", "_orig_mod")
                      if isinstance(getattr(model, name, None), torch.nn.Module)), None)
        if inner is None:
            break
        model = inner
    return model


def _class_names(model) -> list[str]:
    return [cls.__name__ for cls in type(model).__mro__] if model is not None else []


def detect_statistics(model, outputs, labels: torch.Tensor) -> TaskStatistics:
    """The built-in statistics for `model`'s task (see the module docstring), or a clear ValueError."""
    if fused_log_probs(outputs) is not None:
        return _CAUSAL_LM
    logits = require_logits(outputs)
    base = unwrap_model(model)
    config = getattr(base, "config", None)
    names = _class_names(base)
    if any(name.endswith("ForSemanticSegmentation") for name in names):
        return SegmentationStatistics(ignore_index=_segmentation_ignore_index(config))
    if any(name.endswith("ForTokenClassification") for name in names):
        return _TOKEN
    if any(name.endswith("ForMaskedLM") for name in names):
        return _MASKED_LM
    if getattr(config, "is_encoder_decoder", False) and logits.ndim == 3:
        return _SEQ2SEQ
    if any(name.endswith(_CAUSAL_SUFFIXES) or name.endswith("ForConditionalGeneration") for name in names):
        return _CAUSAL_LM
    problem_type = getattr(config, "problem_type", None)
    if problem_type == "multi_label_classification":
        return _MULTI_LABEL
    if problem_type == "regression":
        return _REGRESSION
    if problem_type == "single_label_classification":
        return _CLASSIFICATION
    return _detect_from_shapes(base, config, logits, labels)


def _segmentation_ignore_index(config) -> int:
    value = getattr(config, "semantic_loss_ignore_index", None)
    return SEGMENTATION_IGNORE_INDEX if value is None else int(value)


def _detect_from_shapes(model, config, logits: torch.Tensor, labels: torch.Tensor) -> TaskStatistics:
    floating = labels.is_floating_point()
    batch_matches = logits.ndim >= 1 and labels.ndim >= 1 and labels.shape[0] == logits.shape[0]
    if batch_matches and logits.ndim == 2 and labels.ndim == 1 and not floating:
        return _CLASSIFICATION
    if batch_matches and logits.ndim == 2 and labels.shape == logits.shape and floating:
        return _MULTI_LABEL
    if batch_matches and floating and labels.numel() == logits.numel() and logits.numel() == logits.shape[0]:
        return _REGRESSION
    if batch_matches and logits.ndim == 4 and labels.ndim == 3 and not floating:
        return SegmentationStatistics(ignore_index=_segmentation_ignore_index(config))
    name = type(model).__name__ if model is not None else "the model"
    if logits.ndim == 3 and labels.ndim == 2:
        raise ValueError(
            f"KakurenboTrainer cannot tell from {name} whether its labels are shifted (logits "
            f"{tuple(logits.shape)}, labels {tuple(labels.shape)}): pass "
            "`per_sample_statistics_fn=CausalLMStatistics()` (labels shifted by one, as *ForCausalLM models do) or "
            "`per_sample_statistics_fn=TokenStatistics()` (labels aligned with the logits: seq2seq, token "
            "classification), both from kakurenbo_hf.tasks."
        )
    raise ValueError(
        f"KakurenboTrainer has no built-in per-sample statistics for {name} with logits {tuple(logits.shape)} and "
        f"labels {tuple(labels.shape)} ({labels.dtype}). Built in: single-label and multi-label classification, "
        "regression, causal LM, seq2seq, token classification, masked LM, semantic segmentation (see "
        "kakurenbo_hf.tasks). For other tasks pass `per_sample_statistics_fn=fn`, where fn(outputs, labels) returns "
        "per-sample (loss, confidence, correct) tensors of shape (batch,)."
    )


def auto_statistics(outputs, labels: torch.Tensor, model=None):
    """Per-sample (loss, confidence, correct) with the statistics `detect_statistics` picks for `model`."""
    return detect_statistics(model, outputs, labels)(outputs, labels)


class AutoStatistics(TaskStatistics):
    """`fn(outputs, labels)` that detects the task of `model` on every call (a few attribute reads)."""

    task = "auto"

    def __init__(self, model=None):
        self.model = model

    def __call__(self, outputs, labels):
        return auto_statistics(outputs, labels, self.model)


__all__ = ["AutoStatistics", "auto_statistics", "detect_statistics", "output_field", "unwrap_model"]
