"""kakurenbo_hf: KAKURENBO sample hiding (Nguyen et al., NeurIPS 2023) for the Hugging Face Trainer.

    from kakurenbo_hf import KakurenboTrainer, KakurenboTrainingArguments

is all a `Trainer` script needs to change. The package is in layers: `core/` (arguments, statistics
table, engine, sampler, schedules), `strategies/`, `tasks/` and `distributed/` do not import
transformers; `hf/` is the Trainer layer (its classes are loaded on first use, so
`import kakurenbo_hf.core.engine` stays light). See docs/design.md.
"""

from .core.config import KakurenboArguments
from .core.engine import EpochPlan, HidingEngine
from .core.report import HidingReport
from .core.sampler import HidingSampler
from .core.stats import SampleStats, per_sample_statistics
from .strategies import HidingStrategy, available_strategies, build_strategy, register_strategy

__version__ = "0.2.0"

_LAZY = {
    "KakurenboTrainer": "hf.trainer",
    "KakurenboMixin": "hf.trainer",
    "default_per_sample_statistics": "hf.trainer",
    "KakurenboTrainingArguments": "hf.training_args",
    "KakurenboSeq2SeqTrainer": "hf.integrations",
    "KakurenboSFTTrainer": "hf.integrations",
    "with_hiding": "hf.integrations",
    "KakurenboSeq2SeqTrainingArguments": "hf.integrations",
    "KakurenboSFTConfig": "hf.integrations",
    "with_hiding_arguments": "hf.integrations",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EpochPlan",
    "HidingEngine",
    "HidingReport",
    "HidingSampler",
    "HidingStrategy",
    "KakurenboArguments",
    "KakurenboMixin",
    "KakurenboSFTConfig",
    "KakurenboSFTTrainer",
    "KakurenboSeq2SeqTrainer",
    "KakurenboSeq2SeqTrainingArguments",
    "KakurenboTrainer",
    "KakurenboTrainingArguments",
    "SampleStats",
    "available_strategies",
    "build_strategy",
    "default_per_sample_statistics",
    "per_sample_statistics",
    "register_strategy",
    "with_hiding",
    "with_hiding_arguments",
]
