"""Built-in per-sample statistics for the common tasks, picked automatically from the model.

    KakurenboTrainer(model=gpt2_like_model, ...)                              # detected: causal LM
    KakurenboTrainer(..., per_sample_statistics_fn=CausalLMStatistics(min_accuracy=0.8))  # overridden

| task | detected by | loss | confidence | correct |
|---|---|---|---|---|
| single-label classification | 2-D logits, integer labels (batch,) | cross-entropy | top-class probability | argmax == label |
| multi-label classification | `problem_type="multi_label_classification"` | mean BCE over labels | min over labels of p(true value) | every label right |
| regression | `problem_type="regression"` | MSE | 1 | True (or every abs error <= tolerance) |
| causal LM | `*ForCausalLM`, `*LMHeadModel`, decoder-only `*ForConditionalGeneration`, TRL fused head | mean next-token CE over non-ignored labels | token accuracy (fraction of tokens argmax-right) | token accuracy >= 0.5 |
| seq2seq LM | `config.is_encoder_decoder` | as causal LM, labels not shifted | as causal LM | as causal LM |
| masked LM | `*ForMaskedLM` | as seq2seq | as seq2seq | as seq2seq |
| token classification | `*ForTokenClassification` | mean CE over the labelled tokens | class-balanced token accuracy | that accuracy >= 0.5 |
| semantic segmentation | `*ForSemanticSegmentation`, 4-D logits | mean per-pixel CE (logits upsampled, model's ignore index) | class-balanced pixel accuracy | that accuracy >= 0.5 |

Pure torch: no transformers import (detection reads class names and config attributes).
"""

from .auto import AutoStatistics, auto_statistics, detect_statistics, unwrap_model
from .builtin import (
    DEFAULT_MIN_ACCURACY,
    SEGMENTATION_IGNORE_INDEX,
    TASKS,
    CausalLMStatistics,
    ClassificationStatistics,
    MultiLabelStatistics,
    RegressionStatistics,
    SegmentationStatistics,
    TaskStatistics,
    TokenStatistics,
    statistics_for_task,
)
from .kernels import dense_sums, finish, log_prob_sums, position_sums

__all__ = [
    "AutoStatistics",
    "CausalLMStatistics",
    "ClassificationStatistics",
    "DEFAULT_MIN_ACCURACY",
    "MultiLabelStatistics",
    "RegressionStatistics",
    "SEGMENTATION_IGNORE_INDEX",
    "SegmentationStatistics",
    "TASKS",
    "TaskStatistics",
    "TokenStatistics",
    "auto_statistics",
    "dense_sums",
    "detect_statistics",
    "finish",
    "log_prob_sums",
    "position_sums",
    "statistics_for_task",
    "unwrap_model",
]
