"""Worker for the language-model multi-process tests (`tests/test_lm_multiprocess.py`).

    accelerate launch --multi_gpu --num_processes 2 --main_process_port PORT tests/lm_mp_worker.py \
        --out DIR --name NAME [--resume CHECKPOINT] [--save_steps N]

Trains the tiny GPT-2 of `lm_helpers.py` with hiding on its generated rows (learnable first,
noise after; right padding on some rows), and writes under DIR/NAME/ per rank:

- `rank<R>.json`: the hidden set of every epoch planned in this run, the per-step losses of the
  log history, the world size and the trainer's parallel mode;
- `weights_rank<R>.safetensors`: the final weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lm_helpers import lm_dataset, tiny_gpt2  # noqa: E402

from kakurenbo_hf import KakurenboTrainer, KakurenboTrainingArguments  # noqa: E402


class Recording(KakurenboTrainer):
    def on_epoch_plan(self, plan):
        epoch = plan.epoch
        self.__dict__.setdefault("hidden_sets", {})[str(int(epoch))] = np.flatnonzero(self.hiding_engine.hidden).tolist()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--save_steps", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6)
    options = parser.parse_args()
    folder = os.path.join(options.out, options.name)
    args = KakurenboTrainingArguments(
        output_dir=os.path.join(options.out, "run"), num_train_epochs=options.epochs, per_device_train_batch_size=4,
        learning_rate=1e-2, report_to="none", use_cpu=True, logging_steps=1, hiding_fraction=0.5, seed=0,
        save_strategy="steps" if options.save_steps else "no", save_steps=options.save_steps or 500,
        disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = Recording(model=tiny_gpt2(seed=0 if options.resume is None else 1), args=args,
                        train_dataset=lm_dataset(num_learnable=30, num_noise=30))
    trainer.train(resume_from_checkpoint=options.resume)
    rank = trainer.accelerator.process_index
    os.makedirs(folder, exist_ok=True)
    record = {
        "world": {"rank": rank, "num_processes": trainer.accelerator.num_processes,
                  "parallel_mode": str(trainer.args.parallel_mode)},
        "hidden_sets": getattr(trainer, "hidden_sets", {}),
        "losses": {str(e["step"]): e["loss"] for e in trainer.state.log_history if "loss" in e},
        "global_step": trainer.state.global_step,
    }
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as handle:
        json.dump(record, handle)
    save_file({k: v.detach().contiguous().clone() for k, v in trainer.model.state_dict().items()},
              os.path.join(folder, f"weights_rank{rank}.safetensors"))


if __name__ == "__main__":
    main()
