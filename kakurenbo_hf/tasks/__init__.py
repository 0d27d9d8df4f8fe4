"""Built-in per-sample statistics for the common tasks, picked automatically from the model.

    KakurenboTrainer(model=gpt2_like_model, ...)                              # detected: causal LM
    KakurenboTrainer(..., per_sample_statistics_fn=CausalLMStatistics(min_accuracy=0.8))  # overridden

Every task defines its own per-sample loss, confidence (what `confidence_threshold` tau is
compared with: the top-class probability for single-label classification only) and correctness.
The task table below is rendered from the task classes (`builtin.TASK_CLASSES`, in detection
order; each class declares its name, how it is detected, whether its loss can be weighted and
its row): `task_table()` returns it, and the tests check the README's copy against it.

{table}

Pure torch: no transformers import (detection reads class names and config attributes).
"""

from .auto import AutoStatistics, auto_statistics, detect_statistics, task_hiding_defaults, task_of_model, unwrap_model
from .builtin import (
    DEFAULT_MIN_ACCURACY,
    SEGMENTATION_IGNORE_INDEX,
    TASK_CLASSES,
    TASKS,
    CausalLMStatistics,
    ClassificationStatistics,
    MaskedLMStatistics,
    MultiLabelStatistics,
    RegressionStatistics,
    Seq2SeqLMStatistics,
    SegmentationStatistics,
    TaskRow,
    TaskStatistics,
    TokenStatistics,
    statistics_for_task,
    task_table,
)
from .kernels import dense_sums, finish, log_prob_sums, position_sums

if __doc__:  # None under python -OO
    __doc__ = __doc__.replace("{table}", task_table())

__all__ = [
    "AutoStatistics",
    "CausalLMStatistics",
    "ClassificationStatistics",
    "DEFAULT_MIN_ACCURACY",
    "MaskedLMStatistics",
    "MultiLabelStatistics",
    "RegressionStatistics",
    "SEGMENTATION_IGNORE_INDEX",
    "SegmentationStatistics",
    "Seq2SeqLMStatistics",
    "TASKS",
    "TASK_CLASSES",
    "TaskRow",
    "TaskStatistics",
    "TokenStatistics",
    "auto_statistics",
    "dense_sums",
    "detect_statistics",
    "finish",
    "log_prob_sums",
    "position_sums",
    "statistics_for_task",
    "task_table",
    "unwrap_model",
]
