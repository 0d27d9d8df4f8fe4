"""The plain `Trainer` vs `KakurenboTrainer` on a language-model and a segmentation workload.

As `benchmarks.compare` does for images (same methods, interleaved runs, same seeds and initial
weights per seed), on the workloads of the two task examples:

- `--task lm`: a small GPT-2 (from a config) on the standard-library docstring corpus of
  `examples/causal_lm.py` (byte-level BPE trained on it, blocks of `--block-size` tokens, plus
  `--duplicates` repeated and `--noise` random-token blocks); quality = held-out perplexity
  (lower is better);
- `--task segmentation`: a small SegFormer (from a config) on the generated DeepCAM-like climate
  fields of `examples/semantic_segmentation.py` (with `--noisy-masks` wrong training masks);
  quality = validation mean IoU (higher is better).

Reported per method (mean ± std [min–max] over seeds): train wall time and process CPU time
(less sensitive to other jobs on a shared machine) and their paired ratios to the baseline,
optimizer steps, final quality and its paired difference to the baseline, the
realized hidden fraction per epoch. Evaluation runs once, after training (not timed).

    python -m benchmarks.tasks --task lm --seeds 0 1 2
    python -m benchmarks.tasks --task segmentation --seeds 0 1 2
    python -m benchmarks.tasks --task lm --methods baseline kakurenbo --epochs 30 --blocks 4000   # bigger

The LM workload is a small-data, many-epoch fine-tune (300 unique blocks, 20 epochs): the regime
where a language model memorises some of its training text, the only text tau = 0.7 lets it hide.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import shutil
import sys
import time

import numpy as np

from . import formatting, report, timing, trainers

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")

DEFAULTS = {
    "lm": dict(epochs=20, batch_size=16, lr=2e-3, block_size=64, blocks=300),
    "segmentation": dict(epochs=10, batch_size=16, lr=2e-3, image_size=48, blocks=240),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tasks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(DEFAULTS), required=True)
    parser.add_argument("--methods", nargs="+", default=["baseline", "kakurenbo", "random:random_count=kakurenbo"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--blocks", type=int, default=None,
                        help="lm: unique training blocks kept (before duplicates/noise); segmentation: training images")
    parser.add_argument("--block-size", type=int, default=None, help="lm: tokens per block")
    parser.add_argument("--image-size", type=int, default=None, help="segmentation: image side")
    parser.add_argument("--duplicates", type=float, default=0.1, help="lm: repeated blocks (fraction)")
    parser.add_argument("--noise", type=float, default=0.1, help="lm: random-token blocks (fraction)")
    parser.add_argument("--noisy-masks", type=float, default=0.1, help="segmentation: wrong training masks")
    parser.add_argument("--threads", type=int, default=None, help=timing.THREADS_HELP)
    parser.add_argument("--output", default=None, help="default: benchmarks/results/tasks_<task>.json")
    return parser


def _settings(args) -> dict:
    values = dict(DEFAULTS[args.task])
    for key in ("epochs", "batch_size", "lr", "blocks", "block_size", "image_size"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    return values


# --- workloads -----------------------------------------------------------------------------------


class LanguageModelWorkload:
    quality_name, higher_is_better = "perplexity", False

    def __init__(self, settings, args):
        sys.path.insert(0, EXAMPLES)
        import causal_lm
        from datasets import Dataset

        self.settings = settings
        raw = causal_lm.make_embedded_text()
        self.tokenizer = causal_lm.train_bpe_tokenizer(raw["train"]["text"], 2048)
        eos = self.tokenizer.eos_token

        def blocks(split):
            ids = self.tokenizer([t + eos for t in raw[split]["text"]])["input_ids"]
            grouped = causal_lm.group_texts({"input_ids": ids}, settings["block_size"])
            return Dataset.from_dict({"input_ids": grouped["input_ids"], "labels": grouped["labels"]})

        train = blocks("train")
        train = train.select(range(min(settings["blocks"], len(train))))
        self.train, self.kinds = causal_lm.add_duplicates_and_noise(train, args.duplicates, args.noise,
                                                                    len(self.tokenizer), seed=0)
        self.train = self.train.with_format("torch")
        self.eval = blocks("validation").with_format("torch")
        self.collate = None

    def model(self, seed):
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(seed)
        return GPT2LMHeadModel(GPT2Config(vocab_size=len(self.tokenizer), n_positions=self.settings["block_size"],
                                          n_embd=128, n_layer=2, n_head=4, bos_token_id=self.tokenizer.bos_token_id,
                                          eos_token_id=self.tokenizer.eos_token_id))

    def quality(self, trainer):
        loss = trainer.evaluate()["eval_loss"]
        return math.exp(loss) if loss < 50 else float("inf")

    def describe(self):
        s = self.settings
        return (f"GPT-2 (hidden 128, 2 layers) from a config, byte-level BPE 2048, {len(self.train)} training blocks "
                f"of {s['block_size']} tokens ({self.kinds.count('unique')} unique docstring blocks, "
                f"{self.kinds.count('duplicate')} repeated, {self.kinds.count('noise')} random), {len(self.eval)} "
                f"held-out blocks; {s['epochs']} epochs, batch {s['batch_size']}, AdamW {s['lr']:g} cosine")


class SegmentationWorkload:
    quality_name, higher_is_better = "mean IoU", True

    def __init__(self, settings, args):
        sys.path.insert(0, EXAMPLES)
        import semantic_segmentation as seg

        self.seg = seg
        self.settings = settings
        data, self.noisy = seg.make_embedded_dataset(settings["blocks"], max(settings["blocks"] // 5, 16),
                                                     settings["image_size"], args.noisy_masks, seed=0)
        self.train, self.eval = data["train"], data["validation"]
        self.collate = seg.collate
        self.metrics = seg.segmentation_metrics(len(seg.CLASSES))

    def model(self, seed):
        import torch

        torch.manual_seed(seed)
        model_args = self.seg.ModelArguments()
        return self.seg.build_model(model_args, len(self.seg.CLASSES), 4)

    def quality(self, trainer):
        return trainer.evaluate()["eval_mean_iou"]

    def describe(self):
        s = self.settings
        return (f"SegFormer (widths 16/32/64) from a config, {len(self.train)} generated 4-channel climate fields "
                f"{s['image_size']}x{s['image_size']} (3 classes, {len(self.noisy)} wrong masks), {len(self.eval)} "
                f"validation; {s['epochs']} epochs, batch {s['batch_size']}, AdamW {s['lr']:g} cosine")


# --- runs --------------------------------------------------------------------------------------


def make_trainer(method, workload, model, seed, out_dir, callbacks=()):
    from transformers import Trainer, TrainingArguments, default_data_collator

    from kakurenbo_hf import KakurenboTrainer, KakurenboTrainingArguments

    base, overrides = trainers.parse_method(method)
    s = workload.settings
    values = dict(output_dir=out_dir, num_train_epochs=s["epochs"], per_device_train_batch_size=s["batch_size"],
                  per_device_eval_batch_size=64, learning_rate=s["lr"], weight_decay=0.01, warmup_steps=0.05,
                  lr_scheduler_type="cosine", eval_strategy="no", save_strategy="no", logging_strategy="epoch",
                  report_to="none", disable_tqdm=True, seed=seed, data_seed=seed, use_cpu=not _cuda(),
                  dataloader_num_workers=0, remove_unused_columns=False)
    kwargs = dict(model=model, train_dataset=workload.train, eval_dataset=workload.eval,
                  data_collator=workload.collate or default_data_collator, callbacks=list(callbacks),
                  compute_metrics=getattr(workload, "metrics", None))
    if base == "baseline":
        return Trainer(args=TrainingArguments(**values), **kwargs)
    return KakurenboTrainer(args=KakurenboTrainingArguments(**values, **overrides), **kwargs)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_one(method, seed, workload) -> dict:
    out_dir = trainers.tempdir("kakurenbo_tasks_")
    trainer = make_trainer(method, workload, workload.model(seed), seed, out_dir)
    started, started_cpu = time.perf_counter(), time.process_time()
    trainer.train()
    train_seconds, train_cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    quality = workload.quality(trainer)
    hiding = trainers.hiding_log(trainer)
    record = {"method": method, "seed": seed, "train_seconds": train_seconds, "train_cpu_seconds": train_cpu_seconds,
              "optimizer_steps": trainer.state.global_step, "quality": quality, "hiding": hiding,
              "hidden_per_epoch": [int(h["hidden"]) for h in hiding]}
    del trainer
    gc.collect()
    shutil.rmtree(out_dir, ignore_errors=True)
    return record


def summarize(runs, methods, seeds, workload):
    by = {(r["method"], r["seed"]): r for r in runs}
    rows, summary = [], {}
    n = len(workload.train)
    for method in methods:
        rs = [by[(method, s)] for s in seeds if (method, s) in by]
        base = [by[("baseline", s)] for s in seeds if ("baseline", s) in by and (method, s) in by]
        time_ratio = [r["train_seconds"] / b["train_seconds"] for r, b in zip(rs, base)] if base else []
        cpu_ratio = [r["train_cpu_seconds"] / b["train_cpu_seconds"] for r, b in zip(rs, base)] if base else []
        step_ratio = [r["optimizer_steps"] / b["optimizer_steps"] for r, b in zip(rs, base)] if base else []
        delta = [r["quality"] - b["quality"] for r, b in zip(rs, base)] if base else []
        hidden = np.mean([r["hidden_per_epoch"] for r in rs], axis=0) / n if rs[0]["hidden_per_epoch"] else []
        summary[method] = {"time_ratio": time_ratio, "cpu_time_ratio": cpu_ratio, "step_ratio": step_ratio,
                           "quality_delta": delta,
                           "quality": [r["quality"] for r in rs], "train_seconds": [r["train_seconds"] for r in rs],
                           "hidden_fraction_per_epoch": list(map(float, hidden))}
        rows.append([
            method,
            formatting.fmt_mean_std(time_ratio) if method != "baseline" else
            f"1 ({formatting.fmt_mean_std([r['train_seconds'] for r in rs], digits=1)} s)",
            formatting.fmt_mean_std(cpu_ratio) if method != "baseline" else
            f"1 ({formatting.fmt_mean_std([r['train_cpu_seconds'] for r in rs], digits=1)} s)",
            formatting.fmt_mean_std(step_ratio) if method != "baseline" else f"1 ({rs[0]['optimizer_steps']} steps)",
            formatting.fmt_mean_std([r["quality"] for r in rs]),
            formatting.fmt_mean_std(delta) if method != "baseline" else "0",
            " ".join(f"{h:.2f}" for h in hidden) if len(hidden) else "-",
        ])
    headers = ["method", "train time ratio", "train CPU time ratio", "optimizer steps ratio", workload.quality_name,
               f"Δ {workload.quality_name}", "hidden fraction per epoch"]
    return summary, formatting.markdown_table(headers, rows)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    threads = timing.set_threads(args.threads)
    settings = _settings(args)
    workload = (LanguageModelWorkload if args.task == "lm" else SegmentationWorkload)(settings, args)
    runs = []
    for seed in args.seeds:
        for method in args.methods:
            record = run_one(method, seed, workload)
            runs.append(record)
            print(f"[{args.task}] seed {seed} {method}: {record['train_seconds']:.1f} s, "
                  f"{record['optimizer_steps']} steps, {workload.quality_name} {record['quality']:.4f}, "
                  f"hidden {record['hidden_per_epoch']}", flush=True)
    summary, table = summarize(runs, args.methods, args.seeds, workload)
    command = report.command_line("benchmarks.tasks", argv)
    markdown = (f"`{command}` ({threads} torch thread(s)): {workload.describe()}. Mean ± std [min–max] over seeds "
                f"{args.seeds}.\n\n" + table)
    output = args.output or os.path.join(report.RESULTS_DIR, f"tasks_{args.task}.json")
    record = {"command": command, "machine": report.machine_info(), "settings": settings, "runs": runs,
              "summary": summary}
    return report.publish(output, record, markdown)


if __name__ == "__main__":
    main()
