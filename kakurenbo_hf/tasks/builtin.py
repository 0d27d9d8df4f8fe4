"""The built-in per-sample statistics, one class per task.

Each is a callable `fn(outputs, labels) -> (loss, confidence, correct)`, each of shape (batch,):
what `KakurenboTrainer(per_sample_statistics_fn=...)` takes, so any of them can be passed
explicitly with other parameters (`CausalLMStatistics(min_accuracy=0.8)`). All run under
`torch.no_grad()` in float32 chunks (see `kernels.py`), leave the model's loss alone, and give a
sample whose every label is ignored the "unseen" values (+inf, 0, False): it is never hidden.

Definitions (the task table, `task_table()`): the engine hides a low-loss candidate only if it is
`correct` with `confidence >= tau` (default 0.7).

- Single-label classification: cross-entropy; top-class probability; argmax == label.
- Sequence and dense tasks (causal LM, seq2seq, masked LM, token classification, semantic
  segmentation): loss = mean cross-entropy over the sample's non-ignored positions (the model's
  own loss, per sample). Confidence, for language models: the fraction of those positions whose
  target is the argmax (token accuracy); for token classification and segmentation, where one
  class (background, "O") covers most positions: the class-balanced accuracy (mean over the
  classes in the sample's labels of the fraction of their positions right). correct = that
  accuracy >= `min_accuracy` (0.5). With tau = 0.7 a sample is hidden when the model already
  gets at least 70% of it right: text it has memorised or boilerplate it has seen many times,
  never random tokens. Probabilities do not work for this over a vocabulary: in the default run
  of `python examples/causal_lm.py` (see the README) the repeated blocks were reproduced at a
  token accuracy of 0.77 (all >= 0.7) with a mean target probability of 0.35 and a mean top
  probability of 0.38 (none >= 0.7): with probabilities a 0.7 threshold hides nothing.
  `confidence="probability"` selects the mean target probability instead.
- Multi-label classification: mean binary cross-entropy over the labels; confidence = the
  smallest probability the model gives to the true value of any label (the least sure
  decision); correct = every label on the right side of 0.5. One label: the binary rule.
- Regression: mean squared error over the outputs; no probability exists, so confidence = 1 and
  correct = True (or every |error| <= `tolerance` if one is given): the lowest-loss candidates
  are hidden, with no move-back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.stats import IGNORE_INDEX, per_sample_statistics
from .kernels import CONFIDENCE_KINDS, dense_sums, finish, log_prob_sums, no_autocast, position_sums

# The ignore index of Hugging Face semantic-segmentation losses (config.semantic_loss_ignore_index).
SEGMENTATION_IGNORE_INDEX = 255
# A token/pixel-level sample is "correct" when at least this fraction of its positions is.
DEFAULT_MIN_ACCURACY = 0.5


def output_field(outputs, name: str):
    """`outputs[name]` of a ModelOutput / dict, or the attribute; None if absent."""
    if isinstance(outputs, dict):
        return outputs.get(name)
    return getattr(outputs, name, None)


def fused_log_probs(outputs):
    """(log_probs, label_mask, is_top1) of a fused LM head's output (TRL's `FusedCausalLMOutput`), else None.

    Such heads return the log-probability of every next-token label, already shifted and
    masked, instead of the logits: the statistics read them directly, at no memory cost.
    """
    log_probs, mask = output_field(outputs, "log_probs"), output_field(outputs, "label_mask")
    if isinstance(log_probs, torch.Tensor) and isinstance(mask, torch.Tensor) and output_field(outputs, "logits") is None:
        return log_probs, mask, output_field(outputs, "is_top1")
    return None


def require_logits(outputs) -> torch.Tensor:
    logits = output_field(outputs, "logits")
    if logits is None:
        keys = sorted(outputs.keys()) if isinstance(outputs, dict) else type(outputs).__name__
        raise ValueError(
            "KakurenboTrainer computes per-sample statistics from the model's `logits`, and this model returned none "
            f"(outputs: {keys}). A fused linear-cross-entropy kernel (e.g. Liger's `fused_linear_cross_entropy`, "
            "`use_liger_kernel=True`) computes the loss without them. Either let the model return logits (turn the "
            "fused loss off: `liger_kernel_config={'fused_linear_cross_entropy': False}`), or return per-token "
            "`log_probs` of the labels with a boolean `label_mask` (as TRL's fused LM head does; read at no memory "
            "cost), or pass `per_sample_statistics_fn=fn` where fn(outputs, labels) returns per-sample "
            "(loss, confidence, correct) tensors of shape (batch,)."
        )
    return logits


def _shape_error(task: str, expected: str, logits: torch.Tensor, labels: torch.Tensor) -> ValueError:
    classes = ", ".join(cls.__name__ for cls in TASK_CLASSES)
    return ValueError(
        f"KakurenboTrainer's {task} statistics need {expected}; got logits {tuple(logits.shape)} and labels "
        f"{tuple(labels.shape)} ({labels.dtype}). Pass `per_sample_statistics_fn=` one of the classes of "
        f"kakurenbo_hf.tasks ({classes}) or your own fn(outputs, labels) -> per-sample "
        "(loss, confidence, correct), each of shape (batch,)."
    )


def _same_batch(logits: torch.Tensor, labels: torch.Tensor) -> bool:
    return logits.ndim >= 1 and labels.ndim >= 1 and labels.shape[0] == logits.shape[0]


def _check(min_accuracy: float, confidence: str) -> None:
    if not 0.0 <= min_accuracy <= 1.0:
        raise ValueError(f"min_accuracy must be in [0, 1], got {min_accuracy}")
    if confidence not in CONFIDENCE_KINDS:
        raise ValueError(f"confidence must be one of {CONFIDENCE_KINDS}, got {confidence!r}")


@dataclass(frozen=True)
class TaskRow:
    """A built-in task's row of the task table (`task_table()`: `kakurenbo_hf.tasks` and the README)."""

    title: str
    detected_by: str
    loss: str
    confidence: str
    correct: str


# The instance `for_model` returns for a task whose statistics do not depend on the model.
_SHARED_INSTANCES: dict[type, "TaskStatistics"] = {}


class TaskStatistics:
    """Base class of the per-sample statistics; `task` names the row of the task table.

    A built-in task is a subclass listed in `TASK_CLASSES`, the one task table: the class says,
    in one place, everything the package needs to know about its task.

    - `task`: its name (the key of `TASKS`, `statistics_for_task(task)`).
    - `weightable`: its model's loss is a plain (optionally label-smoothed) cross-entropy of the
      logits, which `weighting.py` reproduces per sample: the weighted strategies accept it.
    - How `detect_statistics` (`auto.py`) recognises it, step by step, each step over the table in
      its order: `detects_fused_head` (a fused LM head's output), `matches_model` (the model's
      class names, by default any ending with one of `model_suffixes`, and its config),
      `problem_type` (`config.problem_type`), `matches_shapes` (logits and labels); `for_model`
      builds the statistics for the detected model.
    - `row`: its row of the documented task table.
    """

    task = "custom"
    weightable = False
    # Hiding settings this task's models get when the user leaves them unset (None), chosen on the
    # leaderboard (docs/benchmarks.md, "Coverage rule"); {} = the library's defaults.
    hiding_defaults: dict = {}
    detects_fused_head = False
    model_suffixes: tuple[str, ...] = ()
    problem_type: str | None = None
    row: TaskRow | None = None

    @classmethod
    def matches_model(cls, class_names: list[str], config, logits: torch.Tensor) -> bool:
        """Whether the model (the names of its classes, its config) is of this task."""
        return any(name.endswith(cls.model_suffixes) for name in class_names)

    @classmethod
    def matches_shapes(cls, logits: torch.Tensor, labels: torch.Tensor) -> bool:
        """Whether logits and labels of a model nothing else names have this task's shapes."""
        return False

    @classmethod
    def for_model(cls, config) -> TaskStatistics:
        """The statistics detection picks for a model of this task with `config` (default: shared defaults)."""
        instance = _SHARED_INSTANCES.get(cls)
        if instance is None:
            instance = _SHARED_INSTANCES[cls] = cls()
        return instance

    def __call__(self, outputs, labels: torch.Tensor):  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class ClassificationStatistics(TaskStatistics):
    """Single-label classification: logits (batch, classes), integer labels (batch,)."""

    task = "single_label_classification"
    weightable = True
    problem_type = "single_label_classification"
    row = TaskRow("single-label classification", "2-D logits, integer labels `(batch,)`", "cross-entropy",
                  "top-class probability", "argmax == label")

    @classmethod
    def matches_shapes(cls, logits, labels):
        return _same_batch(logits, labels) and logits.ndim == 2 and labels.ndim == 1 and not labels.is_floating_point()

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        self.ignore_index = ignore_index

    def __call__(self, outputs, labels):
        logits = require_logits(outputs)
        if (logits.ndim != 2 or labels.ndim != 1 or labels.shape[0] != logits.shape[0]
                or labels.is_floating_point() or logits.shape[-1] < 2):
            raise _shape_error("single-label classification",
                               "logits (batch, classes >= 2) and integer labels (batch,)", logits, labels)
        return per_sample_statistics(logits, labels, ignore_index=self.ignore_index)


class MultiLabelStatistics(TaskStatistics):
    """Multi-label classification: logits (batch, labels), 0/1 (or soft) float labels of the same shape.

    Labels < 0 or NaN are ignored (the model's BCE loss does not ignore them; mask them yourself).
    """

    task = "multi_label_classification"
    problem_type = "multi_label_classification"
    row = TaskRow("multi-label classification",
                  '`problem_type="multi_label_classification"`, or float labels shaped like the logits',
                  "mean binary cross-entropy over the labels",
                  "the smallest probability given to the true value of any label",
                  "every label on the right side of 0.5")

    @classmethod
    def matches_shapes(cls, logits, labels):
        return (_same_batch(logits, labels) and logits.ndim == 2 and labels.shape == logits.shape
                and labels.is_floating_point())

    def __call__(self, outputs, labels):
        logits = require_logits(outputs)
        if logits.ndim != 2 or labels.shape != logits.shape:
            raise _shape_error("multi-label classification", "logits (batch, labels) and labels of the same shape",
                               logits, labels)
        with torch.no_grad(), no_autocast(logits.device):
            x = logits.detach().float()
            y = labels.detach().to(device=x.device, dtype=torch.float32)
            valid = y >= 0  # False for negative labels and NaN
            y = torch.where(valid, y, torch.zeros_like(y)).clamp(max=1.0)
            count = valid.sum(1)
            seen = count > 0
            element_loss = F.binary_cross_entropy_with_logits(x, y, reduction="none").masked_fill(~valid, 0.0)
            loss = torch.where(seen, element_loss.sum(1) / count.clamp(min=1), torch.full_like(x[:, 0], float("inf")))
            p = torch.sigmoid(x)
            p_true = (y * p + (1 - y) * (1 - p)).masked_fill(~valid, 1.0)
            confidence = torch.where(seen, p_true.amin(1), torch.zeros_like(loss))
            right = ((x > 0) == (y > 0.5)) | ~valid
            correct = right.all(1) & seen
        return loss, confidence, correct


class RegressionStatistics(TaskStatistics):
    """Regression: predictions (batch,) or (batch, outputs), float labels of as many values per sample.

    `tolerance`: if given, a sample is correct when every |prediction - label| <= tolerance;
    otherwise every seen sample is correct with confidence 1 (hiding by loss rank alone). NaN
    labels are ignored.
    """

    task = "regression"
    problem_type = "regression"
    row = TaskRow("regression", '`problem_type="regression"`, or one float label per output', "mean squared error",
                  "1", "true: the lowest-loss candidates are hidden (`RegressionStatistics(tolerance=t)`: every abs "
                  "error <= t)")

    @classmethod
    def matches_shapes(cls, logits, labels):
        return (_same_batch(logits, labels) and labels.is_floating_point() and labels.numel() == logits.numel()
                and logits.numel() == logits.shape[0])

    def __init__(self, tolerance: float | None = None):
        self.tolerance = tolerance

    def __call__(self, outputs, labels):
        logits = require_logits(outputs)
        batch = logits.shape[0] if logits.ndim else 0
        if logits.ndim == 0 or labels.ndim == 0 or labels.shape[0] != batch or labels.numel() != logits.numel():
            raise _shape_error("regression", "predictions and float labels with as many values per sample",
                               logits, labels)
        with torch.no_grad(), no_autocast(logits.device):
            x = logits.detach().float().reshape(batch, -1)
            y = labels.detach().to(device=x.device, dtype=torch.float32).reshape(batch, -1)
            valid = ~torch.isnan(y)
            error = torch.where(valid, x - y, torch.zeros_like(x))
            count = valid.sum(1)
            seen = count > 0
            loss = torch.where(seen, error.square().sum(1) / count.clamp(min=1), torch.full_like(x[:, 0], float("inf")))
            correct = seen if self.tolerance is None else seen & (error.abs() <= self.tolerance).all(1)
            confidence = seen.float()
        return loss, confidence, correct


class TokenStatistics(TaskStatistics):
    """Token-level tasks whose labels line up with the logits: token classification, and the base of the
    seq2seq and masked LM statistics (`TokenStatistics(task="seq2seq_lm")` computes as `Seq2SeqLMStatistics()`).

    logits (batch, length, classes), integer labels (batch, length), `ignore_index` (-100) and
    padding ignored. `min_accuracy`: the (balanced) accuracy a sample needs to count as correct.
    `confidence`: "accuracy" (the fraction of argmax-right positions; default for language
    models), "balanced_accuracy" (the mean over the classes in the sample's labels of the
    fraction of their positions right; default for token classification, where one class such as
    "O" dominates) or "probability" (the mean probability of the targets).
    """

    task = "token_classification"
    weightable = True
    shift = 0
    model_suffixes = ("ForTokenClassification",)
    row = TaskRow("token classification", "`*ForTokenClassification`", "mean cross-entropy over the labelled tokens",
                  "class-balanced token accuracy (mean over the classes in the sample's labels of the fraction of "
                  "their tokens right)", "that accuracy >= 0.5")

    def __init__(self, ignore_index: int = IGNORE_INDEX, min_accuracy: float = DEFAULT_MIN_ACCURACY,
                 chunk_bytes: int | None = None, task: str | None = None, confidence: str | None = None):
        if task is not None:
            self.task = task
        if confidence is None:  # few classes, one of them dominant ("O"): balance them; vocabularies: plain
            confidence = "balanced_accuracy" if self.task == "token_classification" else "accuracy"
        _check(min_accuracy, confidence)
        self.ignore_index = ignore_index
        self.min_accuracy = min_accuracy
        self.confidence = confidence
        self.chunk_bytes = chunk_bytes

    def __call__(self, outputs, labels):
        fused = fused_log_probs(outputs)
        if fused is not None:
            return finish(log_prob_sums(*fused), self.min_accuracy, self.confidence)
        logits = require_logits(outputs)
        if (logits.ndim != 3 or labels.ndim != 2 or labels.is_floating_point()
                or labels.shape[0] != logits.shape[0] or labels.shape[1] != logits.shape[1]):
            raise _shape_error(self.task.replace("_", " "),
                               "logits (batch, length, classes) and integer labels (batch, length)", logits, labels)
        if self.shift:
            scores, targets = logits[:, :-self.shift], labels[:, self.shift:]
        else:
            scores, targets = logits, labels
        if self.confidence == "balanced_accuracy":
            sums, per_class = position_sums(scores, targets, self.ignore_index, self.chunk_bytes, per_class=True)
            return finish(sums, self.min_accuracy, self.confidence, per_class)
        return finish(position_sums(scores, targets, self.ignore_index, self.chunk_bytes), self.min_accuracy,
                      self.confidence)


class Seq2SeqLMStatistics(TokenStatistics):
    """Encoder-decoder language models (T5, BART, Whisper, ...): labels aligned with the decoder's logits."""

    task = "seq2seq_lm"
    model_suffixes = ()  # recognised by its config instead (`matches_model`)
    row = TaskRow("seq2seq LM", "`config.is_encoder_decoder` (T5, BART, Whisper, ...)",
                  "as causal LM, labels not shifted", "token accuracy", "token accuracy >= 0.5")

    @classmethod
    def matches_model(cls, class_names, config, logits):
        return bool(getattr(config, "is_encoder_decoder", False)) and logits.ndim == 3


class MaskedLMStatistics(TokenStatistics):
    """Masked language models: labels aligned with the logits, -100 except at the masked positions."""

    task = "masked_lm"
    model_suffixes = ("ForMaskedLM",)
    row = TaskRow("masked LM", "`*ForMaskedLM`", "as seq2seq (the masked positions)", "token accuracy",
                  "token accuracy >= 0.5")


class CausalLMStatistics(TokenStatistics):
    """Causal language models: the logits at position t are scored against the label at t+1.

    Shifted as `*ForCausalLM` models shift (and TRL's fused LM head, whose per-token log-probs are
    read directly when the model returns them instead of logits).
    """

    task = "causal_lm"
    shift = 1
    # A language model's easy rows (templates, boilerplate, near-duplicates) are learned first and
    # forgotten within an epoch once all of them are left out: hide each learned candidate with
    # probability 0.5, so every such subgroup keeps training (leaderboard `lm_templated`).
    hiding_defaults = {"kakurenbo_hide_probability": 0.5}
    detects_fused_head = True
    # Decoder-only `*ForConditionalGeneration` (vision-language models) shift like a causal LM;
    # encoder-decoder ones are seq2seq, detected first.
    model_suffixes = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
    row = TaskRow("causal LM", "`*ForCausalLM`, `*LMHeadModel`, decoder-only `*ForConditionalGeneration` (VLMs), "
                  "TRL's fused LM head", "mean next-token cross-entropy over the non-ignored labels (shifted by one, "
                  "as the model shifts them)", "token accuracy: fraction of those tokens whose label is the argmax",
                  "token accuracy >= 0.5")


class SegmentationStatistics(TaskStatistics):
    """Semantic segmentation: logits (batch, classes, h, w), integer label maps (batch, H, W).

    Per pixel, after upsampling the logits to the label size as the model's loss does (bilinear,
    `align_corners=False`); `ignore_index` is the model's `config.semantic_loss_ignore_index`
    (255 by default). One class (binary segmentation, sigmoid): scored as two classes (0, logit).
    Confidence: the class-balanced pixel accuracy (mean over the classes in the sample's mask of
    the fraction of their pixels right; a mask that is mostly background is not "learned" while
    its objects are missed); "accuracy" or "probability" as for `TokenStatistics`.
    """

    task = "semantic_segmentation"
    model_suffixes = ("ForSemanticSegmentation",)
    row = TaskRow("semantic segmentation", "`*ForSemanticSegmentation`, or 4-D logits with 3-D integer labels",
                  "mean per-pixel cross-entropy over the non-ignored pixels, logits upsampled to the mask as the "
                  "model's loss does", "class-balanced pixel accuracy", "that accuracy >= 0.5")

    @classmethod
    def matches_shapes(cls, logits, labels):
        return _same_batch(logits, labels) and logits.ndim == 4 and labels.ndim == 3 and not labels.is_floating_point()

    @classmethod
    def for_model(cls, config) -> SegmentationStatistics:
        """With the model's ignore index (`config.semantic_loss_ignore_index`, else 255)."""
        value = getattr(config, "semantic_loss_ignore_index", None)
        return cls(ignore_index=SEGMENTATION_IGNORE_INDEX if value is None else int(value))

    def __init__(self, ignore_index: int = SEGMENTATION_IGNORE_INDEX, min_accuracy: float = DEFAULT_MIN_ACCURACY,
                 confidence: str = "balanced_accuracy"):
        _check(min_accuracy, confidence)
        self.ignore_index = ignore_index
        self.min_accuracy = min_accuracy
        self.confidence = confidence

    def __call__(self, outputs, labels):
        logits = require_logits(outputs)
        if (logits.ndim != 4 or labels.ndim != 3 or labels.is_floating_point()
                or labels.shape[0] != logits.shape[0]):
            raise _shape_error("semantic segmentation",
                               "logits (batch, classes, h, w) and integer label maps (batch, H, W)", logits, labels)
        sums, per_class = dense_sums(logits, labels, self.ignore_index)
        return finish(sums, self.min_accuracy, self.confidence, per_class)


# The task table: every built-in task, in the order detection tries them (at each step of
# `detect_statistics`, the first class that matches wins: the specific model classes before the
# encoder-decoders, before the generic LM heads). Adding a task = a class above, listed here.
TASK_CLASSES: tuple[type[TaskStatistics], ...] = (
    SegmentationStatistics,
    TokenStatistics,
    MaskedLMStatistics,
    Seq2SeqLMStatistics,
    CausalLMStatistics,
    ClassificationStatistics,
    MultiLabelStatistics,
    RegressionStatistics,
)

TASKS: dict[str, type[TaskStatistics]] = {cls.task: cls for cls in TASK_CLASSES}


def task_table() -> str:
    """The task table in Markdown, one row per built-in task (the docstring of `kakurenbo_hf.tasks`, the README)."""
    lines = ["| task | detected by | per-sample loss | confidence | correct |", "|---|---|---|---|---|"]
    for cls in TASK_CLASSES:
        row = cls.row
        lines.append(f"| {row.title} | {row.detected_by} | {row.loss} | {row.confidence} | {row.correct} |")
    return "\n".join(lines)


def statistics_for_task(task: str, **params) -> TaskStatistics:
    """The built-in statistics of `task` (a key of `TASKS`), with its parameters overridden."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; built-in tasks: {sorted(TASKS)}")
    return TASKS[task](**params)
