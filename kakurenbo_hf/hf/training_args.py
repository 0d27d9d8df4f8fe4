"""`KakurenboTrainingArguments`: `TrainingArguments` plus the hiding knobs of `KakurenboArguments`.

The hiding fields come after every `TrainingArguments` field, so positional use
(`KakurenboTrainingArguments("out")`) and `HfArgumentParser` behave as with `TrainingArguments`.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import TrainingArguments

from ..core.config import KakurenboArguments


@dataclass
class KakurenboTrainingArguments(KakurenboArguments, TrainingArguments):
    """`TrainingArguments` with the KAKURENBO fields (see `KakurenboArguments` for each)."""

    def __post_init__(self):
        TrainingArguments.__post_init__(self)
        self.validate_hiding_arguments()
