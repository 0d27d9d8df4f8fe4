"""Per-sample cost of KakurenboTrainer's refresh pass relative to a training step.

The refresh pass re-computes the statistics of the samples hidden in the last epoch with a
forward-only pass (eval mode, `torch.inference_mode`, eval batch size). Each refreshed sample
costs a forward; a hidden sample saves a forward+backward+optimizer share. The saving of hiding a
sample is therefore (1 - ratio) of a training sample, where

    ratio = refresh seconds per refreshed sample / training seconds per trained sample

(target <= 0.4, printed PASS/MISS, never asserted).

Two estimates, after one short KakurenboTrainer run on the reference workload (no evaluation):
- logged: `kakurenbo/refresh_seconds` summed over epochs / samples refreshed (the hidden
  samples of the previous epochs), over training seconds per trained sample
  ((train_runtime - refresh seconds) / samples forwarded+backwarded).
- direct: `trainer.hiding_controller.refresh(model, all N indices)` timed `--repeats` times right after training
  (median), over the same training seconds per sample.

The refresh batch size is the eval batch size (`--eval-batch-size`, default 256).

Usage:

    python -m benchmarks.refresh                          # reference ViT workload, 4 epochs
    python -m benchmarks.refresh --eval-batch-size 64 --epochs 6
    python -m benchmarks.refresh --help

Output: Markdown table on stdout, JSON at `--output` (default benchmarks/results/refresh.json).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

import numpy as np

from . import builders, flags, formatting, report, timing, trainers

TARGET_RATIO = 0.4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.refresh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--method", default="kakurenbo", help="a compare-style method spec (default: kakurenbo)")
    parser.add_argument("--repeats", type=int, default=3, help="timed direct refresh passes over all N samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help=timing.THREADS_HELP)
    parser.add_argument("--output", default=os.path.join(report.RESULTS_DIR, "refresh.json"))
    flags.add_workload_arguments(parser, epochs=4)
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    timing.set_threads(args.threads)
    w = flags.workload_from_args(args)
    record = {"benchmark": "refresh", "command": report.command_line("benchmarks.refresh", argv),
              "machine": report.machine_info(), "workload": vars(args).copy(), "target_ratio": TARGET_RATIO}
    train_dataset, _ = builders.prepare_data(w)
    n = len(train_dataset)
    model = builders.build_model(w, args.seed)
    out_dir = trainers.tempdir("kakurenbo_refresh_")
    trainer = trainers.make_trainer(args.method, w, model, train_dataset, None, args.seed, out_dir, evaluate=False)
    result = trainer.train()
    hiding = trainers.hiding_log(trainer)
    _, overrides = trainers.parse_method(args.method)
    counts = trainers.sample_counts(n, w.epochs, hiding, overrides.get("refresh_hidden", True))
    refresh_logged = sum(h["refresh_seconds"] for h in hiding)
    train_seconds = result.metrics["train_runtime"] - refresh_logged
    train_per_sample = train_seconds / counts["trained_samples"]

    indices = np.arange(n)
    direct = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        trainer.hiding_controller.refresh(trainer.model, indices)
        direct.append(time.perf_counter() - started)
    shutil.rmtree(out_dir, ignore_errors=True)

    direct_per_sample = statistics.median(direct) / n
    logged_per_sample = refresh_logged / counts["refresh_samples"] if counts["refresh_samples"] else None
    ratio_direct = direct_per_sample / train_per_sample
    ratio_logged = logged_per_sample / train_per_sample if logged_per_sample else None
    verdict = "PASS" if ratio_direct <= TARGET_RATIO else "MISS"
    rows = [
        ["training step (fwd+bwd+opt)", f"{train_per_sample * 1e3:.3f}", counts["trained_samples"], f"{train_seconds:.2f}",
         "1", w.batch_size],
        ["refresh, logged (kakurenbo/refresh_seconds)",
         "n/a" if logged_per_sample is None else f"{logged_per_sample * 1e3:.3f}", counts["refresh_samples"],
         f"{refresh_logged:.2f}", "n/a" if ratio_logged is None else f"{ratio_logged:.3f}", w.eval_batch_size],
        [f"refresh, direct pass over all N (median of {args.repeats})", f"{direct_per_sample * 1e3:.3f}", n,
         f"{statistics.median(direct):.2f}", f"{ratio_direct:.3f}", w.eval_batch_size],
    ]
    md = formatting.markdown_table(["pass", "ms / sample", "samples", "seconds", "ratio to training", "batch"], rows)
    md += (f"\n\nRefresh / training-step cost per sample: direct {ratio_direct:.3f}"
           + ("" if ratio_logged is None else f", logged {ratio_logged:.3f}")
           + f" -> target <= {TARGET_RATIO}: **{verdict}** (direct estimate; not asserted).\n"
           f"Hidden per epoch: {counts['hidden_per_epoch']} of {n}.")
    record.update(hiding=hiding, counts=counts, train_runtime=result.metrics["train_runtime"],
                  train_seconds_per_sample=train_per_sample, refresh_logged_seconds=refresh_logged,
                  refresh_logged_seconds_per_sample=logged_per_sample, refresh_direct_seconds=direct,
                  refresh_direct_seconds_per_sample=direct_per_sample, ratio_direct=ratio_direct,
                  ratio_logged=ratio_logged, verdict=verdict, markdown=md)
    report.publish(args.output, record, md)
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
