"""Why `lr_compensation` defaults to "realized": what each rule does when little is hidden.

    python -m benchmarks.lr_compensation --seeds 0 1 2

Workload (issue 8): 600 scikit-learn digits (8x8, 10 classes; 200 more held out), a small MLP,
AdamW 1e-2 (constant), batch 32, hiding_fraction=0.9 with no decay, warm-up 1 epoch, tau 0.7. After the
warm-up epoch few samples are confident, so epoch 1 hides a handful while `target` multiplies the
LR by 1/(1-0.9) = 10. Reports per rule the samples hidden in epoch 1, its LR factor and the
held-out accuracy after epoch 1 and at the end (3 epochs), next to the plain Trainer.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from .formatting import markdown_table, mean_std
from .report import RESULTS_DIR, command_line, machine_info, publish
from .timing import set_threads
from .trainers import tempdir


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, pixel_values, labels=None):
        logits = self.net(pixel_values)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def _collate(features):
    return {"pixel_values": torch.stack([torch.as_tensor(f["pixel_values"], dtype=torch.float32) for f in features]),
            "labels": torch.tensor([int(f["label"]) for f in features])}


def _data():
    from datasets import Dataset
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    train, held_out = order[:600], order[600:800]
    make = lambda idx: Dataset.from_dict({"pixel_values": x[idx], "label": y[idx]}).with_format("torch")
    return make(train), make(held_out)


def _accuracy(eval_pred):
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, -1) == labels).mean())}


def run(rule: str, seed: int, epochs: int, train, held_out) -> dict:
    from transformers import Trainer, TrainingArguments

    from kakurenbo_hf import KakurenboTrainer, KakurenboTrainingArguments

    common = dict(output_dir=tempdir("lrc"), num_train_epochs=epochs, per_device_train_batch_size=32,
                  learning_rate=0.01, lr_scheduler_type="constant", eval_strategy="epoch",
                  save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=seed, logging_strategy="no")
    torch.manual_seed(seed)
    model = MLP()
    if rule == "plain":
        trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=train, eval_dataset=held_out,
                          data_collator=_collate, compute_metrics=_accuracy)
    else:
        args = KakurenboTrainingArguments(**common, hiding_fraction=0.9, hiding_decay_milestones=[],
                                          hiding_decay_factors=[], lr_compensation=rule)
        trainer = KakurenboTrainer(model=model, args=args, train_dataset=train, eval_dataset=held_out,
                                   data_collator=_collate, compute_metrics=_accuracy)
    trainer.train()
    accuracies = [e["eval_accuracy"] for e in trainer.state.log_history if "eval_accuracy" in e]
    plans = trainer.hiding_engine.plans if rule != "plain" else []
    return {"rule": rule, "seed": seed, "accuracy_after_epoch_1": accuracies[1], "final_accuracy": accuracies[-1],
            "hidden_epoch_1": plans[1].num_hidden if plans else 0, "lr_factor_epoch_1": plans[1].lr_factor if plans else 1.0}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=f"{RESULTS_DIR}/lr_compensation.json")
    options = parser.parse_args(argv)
    set_threads(options.threads)
    train, held_out = _data()
    rules = ["plain", "target", "realized"]
    results = [run(rule, seed, options.epochs, train, held_out) for seed in options.seeds for rule in rules]
    rows = []
    for rule in rules:
        mine = [r for r in results if r["rule"] == rule]
        after, final = mean_std([r["accuracy_after_epoch_1"] for r in mine]), mean_std([r["final_accuracy"] for r in mine])
        rows.append([rule if rule == "plain" else f"`{rule}`", f"{np.mean([r['hidden_epoch_1'] for r in mine]):.1f}",
                     f"{np.mean([r['lr_factor_epoch_1'] for r in mine]):.3g}",
                     f"{after[0]:.3f} ± {after[1]:.3f}", f"{final[0]:.3f} ± {final[1]:.3f}"])
    markdown = markdown_table(["rule", "hidden in epoch 1 (of 600)", "LR factor epoch 1",
                               "held-out acc. after epoch 1", f"after {options.epochs} epochs"], rows)
    record = {"command": command_line("benchmarks.lr_compensation", argv), "machine": machine_info(), "runs": results}
    return publish(options.output, record, markdown)


if __name__ == "__main__":
    main()
