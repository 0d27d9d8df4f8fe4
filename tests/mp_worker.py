"""Worker for the multi-process tests: run under `accelerate launch --multi_gpu --num_processes 2`.

    accelerate launch --multi_gpu --num_processes 2 --main_process_port PORT tests/mp_worker.py \
        --out DIR --runs '[{"name": "hide", "hiding_fraction": 0.5}, ...]'

Each entry of `--runs` is one training run (executed in order, in the same processes) with a
tiny ViT or DeiT on generated data. Every rank writes, under `DIR/<name>/`:

- `rank<R>.json`: what this rank saw and did
    - `world`: process index, number of processes, the Trainer's parallel mode and world size
    - `epochs`: per epoch the hidden set (engine and sampler), the epoch's global order and the
      sample indices this rank trained on (from `compute_loss`, in order)
    - `refresh`: per refresh pass the full index array handed to `_refresh` and the indices this
      rank actually recomputed
    - `steps`: per training forward pass (global step, epoch, this rank's loss)
    - `weighted_steps`: per training forward pass of an epoch with loss weights: the samples, their
      weights in this rank's engine, the sum of weight x plain cross-entropy (recomputed here),
      the Trainer's `num_items_in_batch` and the loss returned; the epochs also record the
      engine's `weights` and `draws`
    - `tables`: per planned epoch the rows of the statistics table this rank held (all of them, or its
      shard), the hidden bitmask it ended with, and the epoch's target fraction
    - `log_history`, `plans` (the engine's epoch plans), `checkpoints` (steps saved)
- `weights_rank<R>.safetensors`: the final model weights of this rank.

Run options (keys of a `--runs` entry, all optional except `name`): `trainer` ("kakurenbo" or
"plain"), `model` ("vit" or "deit"), `num_samples`, `epochs`, `batch_size`, `hiding_fraction`,
`confidence_threshold`, `learning_rate`, `save_steps` (0: no checkpoints), `resume` (checkpoint
path), `seed`, `augment` (a random flip + noise through `set_transform`, as the HF image recipe),
`hiding` (a dict of further `KakurenboTrainingArguments` fields, e.g. a strategy and its knobs).
Without `accelerate launch` (plain `python tests/mp_worker.py ...`) it runs in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import Trainer, TrainingArguments

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import augmented, collate, make_deit, make_image_dataset, make_vit  # noqa: E402

from kakurenbo_hf import KakurenboTrainer, KakurenboTrainingArguments  # noqa: E402
from kakurenbo_hf.hf.indexing import SAMPLE_INDEX_KEY  # noqa: E402


class RecordingMixin:
    """Notes what the rank trains on and the loss of every training forward pass."""

    def _init_records(self):
        self.records = {"epochs": {}, "refresh": [], "steps": [], "weighted_steps": []}
        self._current_epoch = None

    def _epoch_record(self, epoch):
        return self.records["epochs"].setdefault(str(int(epoch)), {"trained": []})

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        indices = inputs.get(SAMPLE_INDEX_KEY)
        training = model.training
        if training and indices is not None:
            self._epoch_record(self._current_epoch)["trained"].extend(int(i) for i in indices.reshape(-1).tolist())
        labels = inputs.get("labels")
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if training:
            step_loss = float(loss.detach().item())
            self.records["steps"].append([int(self.state.global_step), self._current_epoch, step_loss])
            engine = getattr(self, "hiding_engine", None)
            if engine is not None and engine.weights is not None and indices is not None:
                plain = F.cross_entropy(outputs.logits.detach().float(), labels, reduction="none").cpu()
                weights = torch.from_numpy(engine.weights)[indices.reshape(-1).cpu().long()]
                self.records["weighted_steps"].append({
                    "step": int(self.state.global_step), "indices": indices.reshape(-1).tolist(),
                    "weights": weights.tolist(), "weighted_sum": float((weights * plain).sum()),
                    "num_items": None if num_items_in_batch is None else float(num_items_in_batch),
                    "loss": step_loss,
                })
        return (loss, outputs) if return_outputs else loss

    def on_epoch_plan(self, plan):
        """The table each rank held when the epoch's hidden set was chosen (its rows only, when sharded)."""
        epoch = plan.epoch
        engine = self.hiding_engine
        if engine.stats is not None:
            self.records.setdefault("tables", {})[str(int(epoch))] = {
                "sharded": engine.sharded, "start": engine.shard.start, "stop": engine.shard.stop,
                "rows": engine.stats.num_samples, "target_fraction": plan.target_fraction,
                "hidden_bits": engine.hidden_bits.tolist(),
                **{name: getattr(engine.stats, name).astype(float).tolist() for name in ("loss", "confidence", "correct")},
            }

    def _run_epoch(self, *args, **kwargs):
        self._current_epoch = int(kwargs["epoch"] if "epoch" in kwargs else args[1])
        self._epoch_record(self._current_epoch)
        result = super()._run_epoch(*args, **kwargs)
        if getattr(self, "hiding_engine", None) is not None:
            record = self._epoch_record(self._current_epoch)
            record["hidden"] = np.flatnonzero(self.hiding_engine.hidden).tolist()
            record["sampler_hidden"] = np.flatnonzero(self.hiding_sampler.hidden).tolist()
            record["order"] = self.hiding_sampler.epoch_order().tolist()
            record["sampler_epoch"] = int(self.hiding_sampler.epoch)
            engine = self.hiding_engine
            record["weights"] = None if engine.weights is None else engine.weights.tolist()
            record["draws"] = None if engine.draws is None else engine.draws.tolist()
        return result


class RecordingKakurenboTrainer(RecordingMixin, KakurenboTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_records()
        refresh = self.hiding_controller.refresh
        self.hiding_controller.refresh = lambda model, indices: self._refresh(refresh, model, indices)

    def _refresh(self, refresh, model, indices):
        mine = []
        recorder = self.hiding_controller.recorder
        original_add = recorder.add

        def spy(sample_indices, *rest, **kwargs):
            mine.extend(int(i) for i in sample_indices.reshape(-1).tolist())
            return original_add(sample_indices, *rest, **kwargs)

        forwards = []
        statistics = self.per_sample_statistics_fn

        def counting(outputs, labels):  # called once per refresh forward pass
            forwards.append(int(labels.shape[0]))
            return statistics(outputs, labels)

        recorder.add = spy
        self.per_sample_statistics_fn = counting
        try:
            refresh(model, indices)
        finally:
            del recorder.add  # back to the class's method
            self.per_sample_statistics_fn = statistics
        self.records["refresh"].append(
            {"before_epoch": self._current_epoch, "full": np.asarray(indices).tolist(), "mine": mine,
             "forwards": forwards}
        )

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        self.records.setdefault("checkpoints", []).append(int(self.state.global_step))


class RecordingTrainer(RecordingMixin, Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_records()


def run(spec: dict, out: str) -> None:
    name = spec["name"]
    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    seed = int(spec.get("seed", 0))
    num_classes = 4
    dataset = make_image_dataset(num_samples=int(spec.get("num_samples", 160)), num_classes=num_classes,
                                 seed=seed, noise=float(spec.get("noise", 0.7)))
    if spec.get("augment"):
        dataset = augmented(dataset)
    make_model = {"vit": make_vit, "deit": make_deit}[spec.get("model", "vit")]
    model = make_model(num_classes=num_classes, seed=seed)
    save_steps = int(spec.get("save_steps", 0))
    common = dict(
        output_dir=os.path.join(folder, "output"),
        use_cpu=bool(spec.get("use_cpu", True)),
        per_device_train_batch_size=int(spec.get("batch_size", 8)),
        per_device_eval_batch_size=int(spec.get("eval_batch_size", 16)),
        num_train_epochs=int(spec.get("epochs", 4)),
        learning_rate=float(spec.get("learning_rate", 2e-3)),
        lr_scheduler_type="linear",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=seed,
        remove_unused_columns=not spec.get("augment"),
    )
    kind = spec.get("trainer", "kakurenbo")
    if kind == "kakurenbo":
        args = KakurenboTrainingArguments(
            hiding_fraction=float(spec.get("hiding_fraction", 0.5)),
            confidence_threshold=float(spec.get("confidence_threshold", 0.1)),
            refresh_fraction=float(spec.get("refresh_fraction", 1.0)),
            refresh_budget=float(spec.get("refresh_budget", "inf")),
            **spec.get("hiding", {}),
            **common,
        )
        trainer_cls = RecordingKakurenboTrainer
    elif kind == "plain":
        args = TrainingArguments(**common)
        trainer_cls = RecordingTrainer
    else:
        raise ValueError(f"unknown trainer {kind!r}")
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, data_collator=collate)
    output = trainer.train(resume_from_checkpoint=spec.get("resume"))

    rank = trainer.accelerator.process_index
    records = trainer.records
    records["world"] = {
        "process_index": rank,
        "num_processes": trainer.accelerator.num_processes,
        "parallel_mode": str(args.parallel_mode),
        "world_size": args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type),
    }
    records["log_history"] = trainer.state.log_history
    records["global_step"] = int(trainer.state.global_step)
    records["state_epoch"] = float(trainer.state.epoch)
    records["final_lr"] = float(trainer.optimizer.param_groups[0]["lr"])
    engine = getattr(trainer, "hiding_engine", None)
    records["plans"] = engine.state_dict()["plans"] if engine is not None else []
    records["sample_counters"] = getattr(trainer, "sample_counters", None)
    records["train_metrics"] = {key: value for key, value in output.metrics.items() if key.startswith("kakurenbo/")}
    if hasattr(trainer, "hiding_report"):  # collective: every rank assembles the whole table
        report = trainer.hiding_report()
        samples = report.samples()
        records["report"] = {
            "hidden": {str(e["epoch"]): report.hidden_indices(e["epoch"]).tolist() for e in report.epochs()},
            "loss": samples["loss"].astype(float).tolist(), "correct": samples["correct"].tolist(),
            "epochs_hidden": samples["epochs_hidden"].tolist(),
            "longest_hidden_streak": samples["longest_hidden_streak"].tolist(),
        }
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as handle:
        json.dump(records, handle)
    weights = {key: value.detach().cpu().contiguous().clone() for key, value in trainer.model.state_dict().items()}
    save_file(weights, os.path.join(folder, f"weights_rank{rank}.safetensors"))
    trainer.accelerator.wait_for_everyone()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--runs", required=True, help="JSON list of run specs")
    options = parser.parse_args()
    torch.set_num_threads(1)
    for spec in json.loads(options.runs):
        run(spec, options.out)
    if torch.distributed.is_initialized():  # a clean gloo shutdown: without it an exit can abort (seen once)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
