"""Public path of the integrations with other Trainer classes (the code is in `hf/integrations.py`).

    from kakurenbo_hf.integrations import KakurenboSeq2SeqTrainer, with_hiding
    from kakurenbo_hf.integrations import KakurenboSFTTrainer, KakurenboSFTConfig   # needs trl
"""

from .hf import integrations as _integrations
from .hf.integrations import (KakurenboSeq2SeqTrainer, KakurenboSeq2SeqTrainingArguments, with_hiding,
                              with_hiding_arguments)

__all__ = _integrations.__all__


def __getattr__(name: str):
    return getattr(_integrations, name)  # the TRL classes, built on first use
