"""What we rely on in the installed transformers, and workarounds for upstream behaviour that would
silently change a run.

- `check_trainer_members`: the private `Trainer` members our hooks override or call exist in the
  installed transformers, with the parameters we pass (checked at import of the trainer module):
  a release that renamed one fails with an error naming it, not with a run that silently skips a
  hook.
- ViT and DeiT checkpoints: transformers 5.x saves them under their Hub key names, and
  `Trainer._load_from_checkpoint` / `_load_best_model` load them without converting back: the
  Trainer warns about missing keys and goes on with the weights it had (transformers issue
  #43701). `load_with_key_conversion` reloads such folders through `from_pretrained`, which knows
  the conversion.
"""

from __future__ import annotations

import inspect
import json
import os

from transformers import PreTrainedModel
from transformers.utils import logging

logger = logging.get_logger(__name__)

SUPPORTED_TRANSFORMERS = ">=5.3,<6"

# Private Trainer members the hooks override or call -> parameters they must accept.
PRIVATE_TRAINER_MEMBERS = {
    "_run_epoch": ("model", "epoch", "train_dataloader", "steps_in_epoch", "num_update_steps_per_epoch"),
    "_get_train_sampler": ("train_dataset",),
    "_get_dataloader": ("dataset", "description", "batch_size", "sampler_fn", "is_training"),
    "_inner_training_loop": (),
    "_init_training_state": ("max_steps", "num_update_steps_per_epoch", "num_train_epochs",
                             "resume_from_checkpoint", "trial"),
    "_save_checkpoint": ("model", "trial"),
    "_load_from_checkpoint": ("resume_from_checkpoint", "model"),
    "_load_best_model": (),
    "_load_rng_state": ("checkpoint",),
    "_finalize_training": ("trial", "num_train_samples", "start_time"),
    "_set_signature_columns_if_needed": (),
    "_remove_unused_columns": ("dataset", "description"),
    "_get_output_dir": ("trial",),
    "_prepare_inputs": ("inputs",),
    "_get_num_items_in_batch": ("batch_samples", "device"),
}


def check_trainer_members(trainer_class, members: dict[str, tuple[str, ...]] = PRIVATE_TRAINER_MEMBERS) -> None:
    """Raise `ImportError` naming the first private member of `trainer_class` that is missing or lacks a
    parameter we pass, and the supported transformers range."""
    import transformers

    for name, parameters in members.items():
        member = getattr(trainer_class, name, None)
        problem = None
        if not callable(member):
            problem = "is missing"
        else:
            accepted = inspect.signature(member).parameters
            missing = [p for p in parameters if p not in accepted]
            if missing:
                problem = f"lacks the parameter(s) {missing}"
        if problem is not None:
            raise ImportError(
                f"kakurenbo_hf overrides or calls {trainer_class.__name__}.{name}, which {problem} in the installed "
                f"transformers {transformers.__version__}. kakurenbo_hf supports transformers{SUPPORTED_TRANSFORMERS}: "
                f"install a release in that range (pip install 'transformers{SUPPORTED_TRANSFORMERS}')."
            )


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
