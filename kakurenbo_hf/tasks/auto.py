"""Which built-in statistics fit a model: detected by duck typing, without importing transformers.

Each task's class in the task table (`builtin.TASK_CLASSES`) says how it is recognised; the
"detected by" column of the table (`kakurenbo_hf.tasks`) sums it up. `detect_statistics` reads,
step by step, from the model (unwrapped from DDP / DeepSpeed / `torch.compile` / PEFT wrappers),
its config and the batch, and at each step takes the first class of the table that matches:

1. a fused LM head's output (per-token `log_probs` + `label_mask`, no logits: TRL's SFTTrainer):
   the class with `detects_fused_head` (causal LM, read from the log-probs);
2. the model: `matches_model`, from the names of its classes (any class of its MRO, e.g.
   `*ForTokenClassification`) and its config (`config.is_encoder_decoder` with 3-D logits:
   seq2seq, labels not shifted);
3. `config.problem_type` (set by Hugging Face classifiers at their first forward): the class
   whose `problem_type` it is;
4. the shapes, for models none of that names: `matches_shapes` (e.g. logits (batch, classes)
   with integer labels (batch,): single-label classification). 3-D logits of an unknown model
   are refused: whether its labels are shifted cannot be told from shapes.

The detected class's `for_model(config)` gives the statistics (e.g. segmentation with the
model's `config.semantic_loss_ignore_index`).
"""

from __future__ import annotations

import torch

from .builtin import TASK_CLASSES, TaskStatistics, fused_log_probs, output_field, require_logits


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
    base = unwrap_model(model)
    config = getattr(base, "config", None)
    if fused_log_probs(outputs) is not None:
        for task in TASK_CLASSES:
            if task.detects_fused_head:
                return task.for_model(config)
    logits = require_logits(outputs)
    names = _class_names(base)
    for task in TASK_CLASSES:
        if task.matches_model(names, config, logits):
            return task.for_model(config)
    problem_type = getattr(config, "problem_type", None)
    for task in TASK_CLASSES:
        if task.problem_type is not None and task.problem_type == problem_type:
            return task.for_model(config)
    for task in TASK_CLASSES:
        if task.matches_shapes(logits, labels):
            return task.for_model(config)
    raise _not_detected(base, logits, labels)


def _not_detected(model, logits: torch.Tensor, labels: torch.Tensor) -> ValueError:
    name = type(model).__name__ if model is not None else "the model"
    if logits.ndim == 3 and labels.ndim == 2:
        return ValueError(
            f"KakurenboTrainer cannot tell from {name} whether its labels are shifted (logits "
            f"{tuple(logits.shape)}, labels {tuple(labels.shape)}): pass "
            "`per_sample_statistics_fn=CausalLMStatistics()` (labels shifted by one, as *ForCausalLM models do) or "
            "`per_sample_statistics_fn=TokenStatistics()` (labels aligned with the logits: seq2seq, token "
            "classification), both from kakurenbo_hf.tasks."
        )
    built_in = ", ".join(task.row.title for task in TASK_CLASSES)
    return ValueError(
        f"KakurenboTrainer has no built-in per-sample statistics for {name} with logits {tuple(logits.shape)} and "
        f"labels {tuple(labels.shape)} ({labels.dtype}). Built in: {built_in} (see "
        "kakurenbo_hf.tasks). For other tasks pass `per_sample_statistics_fn=fn`, where fn(outputs, labels) returns "
        "per-sample (loss, confidence, correct) tensors of shape (batch,)."
    )


def task_of_model(model) -> type[TaskStatistics] | None:
    """The task of `model` as its class names and config tell it, before any forward pass (step 2 of the
    detection, as for a model that returns sequence logits); None when only its outputs would tell."""
    base = unwrap_model(model)
    if base is None:
        return None
    names, config = _class_names(base), getattr(base, "config", None)
    sequence_logits = torch.empty(0, 0, 0)
    return next((task for task in TASK_CLASSES if task.matches_model(names, config, sequence_logits)), None)


def task_hiding_defaults(model) -> tuple[str | None, dict]:
    """(task name, its `hiding_defaults`) of `model` (`task_of_model`); (None, {}) when not told by the model."""
    task = task_of_model(model)
    return (task.task, dict(task.hiding_defaults)) if task is not None else (None, {})


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


__all__ = ["AutoStatistics", "auto_statistics", "detect_statistics", "output_field", "task_hiding_defaults",
           "task_of_model", "unwrap_model"]
