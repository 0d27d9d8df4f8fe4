"""Write the checkpoint fixture of `tests/test_release_checkpoint.py` with the installed kakurenbo_hf.

    cd <a checkout of the release> && PYTHONPATH=. python <this file> OUT_DIR

Trains a tiny ViT with hiding (random augmentation, a mid-epoch checkpoint), keeps the whole
checkpoint folder of step 9 (in epoch 1, the first that hides), and writes `reference.json`: the
uninterrupted run's per-step losses, hidden counts, final step and a checksum of its final
weights. Run it from the release's checkout, so that its `tests/helpers.py` and package are the
ones imported. The fixture in `tests/data/release_0_1_0/` was written by kakurenbo_hf 0.1.0
(commit 8e15b18) with torch 2.14.1 on CPU.
"""

import hashlib
import json
import os
import shutil
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
from helpers import augmented, collate, make_image_dataset, make_vit  # noqa: E402

from kakurenbo_hf import KakurenboTrainer, KakurenboTrainingArguments  # noqa: E402

CHECKPOINT_STEP = 9


def arguments(output_dir):
    return KakurenboTrainingArguments(
        output_dir=output_dir, num_train_epochs=4, per_device_train_batch_size=8, learning_rate=1e-3, seed=0,
        use_cpu=True, report_to="none", logging_steps=1, save_strategy="steps", save_steps=CHECKPOINT_STEP,
        hiding_fraction=0.5, confidence_threshold=0.0, hiding_decay_milestones=[], hiding_decay_factors=[],
        dataloader_pin_memory=False,
    )


def run(output_dir, resume=None):
    """One run on one torch thread (float sums depend on the thread count), the caller's count restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        trainer = KakurenboTrainer(model=make_vit(seed=1), args=arguments(output_dir),
                                   train_dataset=augmented(make_image_dataset(40)), data_collator=collate)
        trainer.train(resume_from_checkpoint=resume)
    finally:
        torch.set_num_threads(threads)
    return trainer


def summary(trainer) -> dict:
    weights = trainer.model.state_dict()
    digest = hashlib.sha256(b"".join(weights[k].detach().cpu().numpy().tobytes() for k in sorted(weights)))
    return {
        "losses": [[e["step"], e["loss"]] for e in trainer.state.log_history if "loss" in e],
        "hidden": [[e["step"], e["kakurenbo/hidden"]] for e in trainer.state.log_history if "kakurenbo/hidden" in e],
        "weights_sha256": digest.hexdigest(),
        "global_step": trainer.state.global_step,
    }


def written_by() -> str:
    """The kakurenbo_hf release that wrote the fixture (imported from the checkout, not an installed copy)."""
    import kakurenbo_hf

    return kakurenbo_hf.__version__


def versions() -> dict:
    """The stack whose numerics the reference holds for."""
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


if __name__ == "__main__":
    out = os.path.abspath(sys.argv[1])
    work = out + "_run"
    trainer = run(work)
    os.makedirs(out, exist_ok=True)
    shutil.copytree(os.path.join(work, f"checkpoint-{CHECKPOINT_STEP}"), os.path.join(out, "checkpoint"),
                    dirs_exist_ok=True)
    with open(os.path.join(out, "reference.json"), "w") as handle:
        json.dump({**summary(trainer), "versions": versions(), "written_by": written_by()}, handle, indent=1)
    shutil.rmtree(work)
    print(json.dumps(summary(trainer))[:300], np.__version__)
