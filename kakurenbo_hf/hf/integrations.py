"""Hiding for the Trainer subclasses people fine-tune with: `Seq2SeqTrainer`, TRL's `SFTTrainer`, any other.

`KakurenboMixin` adds the hiding behaviour to any `transformers.Trainer` subclass; each trainer
needs its arguments class with the hiding fields added the same way. Both are built here:

    from kakurenbo_hf.integrations import KakurenboSeq2SeqTrainer, KakurenboSeq2SeqTrainingArguments
    from kakurenbo_hf.integrations import KakurenboSFTTrainer, KakurenboSFTConfig   # needs `trl`

    # any other Trainer subclass and its arguments class:
    MyHidingTrainer = with_hiding(MyTrainer)
    MyHidingArguments = with_hiding_arguments(MyTrainingArguments)

The per-sample statistics are chosen from the model (`kakurenbo_hf.tasks`): seq2seq models get
unshifted token statistics; `SFTTrainer`'s fused LM head (no logits: per-token log-probs) is read
directly, at no memory cost. PEFT/LoRA models are unwrapped to find their task.
"""

from __future__ import annotations

import dataclasses

from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

from ..core.config import KakurenboArguments
from .trainer import KakurenboMixin

_CLASSES: dict = {}


def with_hiding(trainer_cls: type) -> type:
    """`class Kakurenbo<Name>(KakurenboMixin, trainer_cls)`, cached per class."""
    if issubclass(trainer_cls, KakurenboMixin):
        return trainer_cls
    key = ("trainer", trainer_cls)
    if key not in _CLASSES:
        _CLASSES[key] = type(f"Kakurenbo{trainer_cls.__name__}", (KakurenboMixin, trainer_cls), {
            "__module__": __name__,
            "__doc__": f"`{trainer_cls.__name__}` with KAKURENBO sample hiding (see `KakurenboMixin`).",
        })
    return _CLASSES[key]


def with_hiding_arguments(args_cls: type) -> type:
    """The dataclass `args_cls` + the `KakurenboArguments` fields (after its own), validated on creation."""
    if issubclass(args_cls, KakurenboArguments):
        return args_cls
    key = ("arguments", args_cls)
    if key not in _CLASSES:
        def __post_init__(self):
            args_cls.__post_init__(self)
            self.validate_hiding_arguments()

        namespace = {"__module__": __name__, "__post_init__": __post_init__,
                     "__doc__": f"`{args_cls.__name__}` with the KAKURENBO fields (see `KakurenboArguments`)."}
        _CLASSES[key] = dataclasses.dataclass(type(f"Kakurenbo{args_cls.__name__}", (KakurenboArguments, args_cls),
                                                   namespace))
    return _CLASSES[key]


KakurenboSeq2SeqTrainer = with_hiding(Seq2SeqTrainer)
KakurenboSeq2SeqTrainingArguments = with_hiding_arguments(Seq2SeqTrainingArguments)


def __getattr__(name: str):
    # TRL is optional: its classes are built on first use.
    if name in ("KakurenboSFTTrainer", "KakurenboSFTConfig"):
        try:
            from trl import SFTConfig, SFTTrainer
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError(f"{name} needs TRL: pip install trl") from error
        return with_hiding(SFTTrainer) if name == "KakurenboSFTTrainer" else with_hiding_arguments(SFTConfig)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "KakurenboSFTConfig",
    "KakurenboSFTTrainer",
    "KakurenboSeq2SeqTrainer",
    "KakurenboSeq2SeqTrainingArguments",
    "with_hiding",
    "with_hiding_arguments",
]
