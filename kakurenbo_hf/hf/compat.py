"""Workarounds for upstream behaviour that would silently change a run.

- ViT and DeiT checkpoints: transformers 5.x saves them under their Hub key names, and
  `Trainer._load_from_checkpoint` / `_load_best_model` load them without converting back: the
  Trainer warns about missing keys and goes on with the weights it had (transformers issue
  #43701). `load_with_key_conversion` reloads such folders through `from_pretrained`, which knows
  the conversion.
"""

from __future__ import annotations

import json
import os

from transformers import PreTrainedModel
from transformers.utils import logging

logger = logging.get_logger(__name__)


def load_with_key_conversion(folder: str, model) -> bool:
    """Load `folder`'s weights into `model` through `from_pretrained` if their key names differ.

    Returns False (nothing done) when the names match or the model is not a plain
    `PreTrainedModel`; the caller then uses the Trainer's own loading.
    """
    if not checkpoint_keys_differ(folder, model):
        return False
    logger.info("Loading %s through from_pretrained (its key names differ from the model's).", folder)
    dtype = next(model.parameters()).dtype
    reloaded = type(model).from_pretrained(folder, config=model.config, dtype=dtype)
    model.load_state_dict(reloaded.state_dict(), strict=True)
    return True


def checkpoint_keys_differ(folder: str, model) -> bool:
    """True if `folder`'s safetensors weights use other key names than `model` (a PreTrainedModel)."""
    if not isinstance(model, PreTrainedModel):
        return False
    index_file = os.path.join(folder, "model.safetensors.index.json")
    weights_file = os.path.join(folder, "model.safetensors")
    if os.path.isfile(index_file):
        with open(index_file) as handle:
            keys = set(json.load(handle)["weight_map"])
    elif os.path.isfile(weights_file):
        from safetensors import safe_open

        with safe_open(weights_file, framework="pt") as handle:
            keys = set(handle.keys())
    else:
        return False
    return keys != set(model.state_dict().keys())
