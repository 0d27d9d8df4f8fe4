"""Time-to-accuracy: the plain `transformers.Trainer` vs `KakurenboTrainer` (vs random hiding).

Trains the same model (same initial weights per seed) on the same data with every method, with
the same seeds and epochs, runs interleaved (seed 0: A B C, seed 1: A B C, ...) so that machine
drift hits every method alike, and evaluates top-1 on the test split after every epoch.

Usage (reference workload: ViT, 32x32 fractal images (10 classes x 150 train, x 50 test), patch
8, hidden 64, 4 layers, 12 epochs, batch 32, AdamW lr 2e-3 cosine; one torch thread on CPU):

    python -m benchmarks.compare                                   # baseline kakurenbo random x seeds 0 1 2
    python -m benchmarks.compare --methods baseline kakurenbo --seeds 0 1
    python -m benchmarks.compare --methods baseline kakurenbo "kakurenbo:refresh_hidden=false"
    python -m benchmarks.compare --instances-per-class 1000 --hidden-size 192 --epochs 30   # GPU scale
    python -m benchmarks.compare --help

A method is `baseline` or a registered strategy (KakurenboTrainer with hiding_strategy=<name>; the
default list's `random:random_count=kakurenbo` hides as many samples as KAKURENBO, uniformly: the
matched-count control), optionally followed by `:field=value,...` overriding fields of `KakurenboArguments` (lists with
`/`, e.g. `kakurenbo:hiding_decay_milestones=0.5,hiding_decay_factors=0.5`).

Reported per method (mean ± std [min–max] over seeds): train-only wall time (refresh and
selection included, per-epoch evaluation excluded), train-only process CPU time (all threads of
this process: far less sensitive than wall time to other jobs on a shared machine; the
time-saving verdict uses the wall-time ratio), train+eval wall time, optimizer steps,
samples forwarded+backwarded in training, samples forwarded by the refresh pass (from the
`kakurenbo/hidden` logs), final and best test top-1, and paired ratios to the baseline of the same
seed. Outputs: JSON (`--output`, default benchmarks/results/compare.json), Markdown
(`compare.md` beside it) and PNG plots (`compare_accuracy_vs_time.png`: test top-1 vs cumulative
train wall time, one line per method and seed, the paper's figure; `compare_hiding.png`:
realized/target hidden fraction and LR factor per epoch).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import time

import numpy as np

from . import builders, flags, formatting, report, timing, trainers

GOAL_TIME_SAVING = 0.20  # >= 20% less train time ...
GOAL_ACCURACY_LOSS_PT = 0.5  # ... at <= 0.5 points of final top-1 lost


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", default=["baseline", "kakurenbo", "random:random_count=kakurenbo"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None, help=timing.THREADS_HELP)
    parser.add_argument("--output", default=os.path.join(report.RESULTS_DIR, "compare.json"))
    parser.add_argument("--no-plots", action="store_true")
    flags.add_workload_arguments(parser)
    return parser


def data_loading_seconds(train_dataset, batch_size: int) -> float:
    """One pass of the training dataloader without a model: the data-loading floor of an epoch."""
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(train_dataset, batch_size=batch_size, shuffle=True, collate_fn=builders.collate,
                        generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - started


def run_one(method: str, seed: int, w: flags.Workload, train_dataset, test_dataset) -> dict:
    base, overrides = trainers.parse_method(method)
    model = builders.build_model(w, seed)
    timer = timing.EpochTimer()
    out_dir = trainers.tempdir("kakurenbo_compare_")
    trainer = trainers.make_trainer(method, w, model, train_dataset, test_dataset, seed, out_dir,
                                    callbacks=[timer.callback])
    started, started_cpu = time.perf_counter(), time.process_time()
    result = trainer.train()
    total, total_cpu = time.perf_counter() - started, time.process_time() - started_cpu
    epochs = timer.per_epoch()
    hiding = trainers.hiding_log(trainer)
    refresh_hidden = overrides.get("refresh_hidden", True) and base != "baseline"
    counts = trainers.sample_counts(len(train_dataset), w.epochs, hiding, refresh_hidden)
    accuracies = [e["accuracy"] for e in epochs if e.get("accuracy") is not None]
    record = {
        "method": method,
        "base": base,
        "seed": seed,
        "train_plus_eval_seconds": total,
        "eval_seconds": timer.eval_seconds,
        "train_seconds": total - timer.eval_seconds,
        "train_cpu_seconds": total_cpu - timer.eval_cpu_seconds,
        "trainer_train_runtime": result.metrics.get("train_runtime"),
        "optimizer_steps": trainer.state.global_step,
        "final_accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": max(accuracies) if accuracies else None,
        "final_train_loss": result.metrics.get("train_loss"),
        "refresh_seconds": sum(h.get("refresh_seconds", 0.0) for h in hiding),
        "per_epoch": epochs,
        "hiding": hiding,
        **counts,
    }
    del trainer, model
    gc.collect()
    shutil.rmtree(out_dir, ignore_errors=True)
    return record


def summarize(runs: list[dict], methods: list[str], seeds: list[int]) -> dict:
    by = {(r["method"], r["seed"]): r for r in runs}
    summary = {}
    for m in methods:
        rs = [by[(m, s)] for s in seeds if (m, s) in by]
        entry = {
            key: [r[key] for r in rs]
            for key in ("train_seconds", "train_cpu_seconds", "train_plus_eval_seconds", "optimizer_steps", "trained_samples",
                        "refresh_samples", "final_accuracy", "best_accuracy", "refresh_seconds")
        }
        pairs = [(by[(m, s)], by[("baseline", s)]) for s in seeds if (m, s) in by and ("baseline", s) in by]
        entry["train_time_ratio"] = [a["train_seconds"] / b["train_seconds"] for a, b in pairs]
        entry["train_cpu_ratio"] = [a["train_cpu_seconds"] / b["train_cpu_seconds"] for a, b in pairs]
        entry["total_time_ratio"] = [a["train_plus_eval_seconds"] / b["train_plus_eval_seconds"] for a, b in pairs]
        entry["steps_ratio"] = [a["optimizer_steps"] / b["optimizer_steps"] for a, b in pairs]
        entry["forward_ratio"] = [
            (a["trained_samples"] + a["refresh_samples"]) / b["trained_samples"] for a, b in pairs
        ]
        entry["final_accuracy_delta_pt"] = [100 * (a["final_accuracy"] - b["final_accuracy"]) for a, b in pairs]
        entry["best_accuracy_delta_pt"] = [100 * (a["best_accuracy"] - b["best_accuracy"]) for a, b in pairs]
        hf = [[h["hidden_fraction"] for h in r["hiding"]] for r in rs if r["hiding"]]
        entry["hidden_fraction_per_epoch_mean"] = list(np.mean(hf, axis=0)) if hf else []
        tf = [[h["target_fraction"] for h in r["hiding"]] for r in rs if r["hiding"]]
        entry["target_fraction_per_epoch"] = list(np.mean(tf, axis=0)) if tf else []
        if m != "baseline" and pairs:
            saving = 1 - np.mean(entry["train_time_ratio"])
            loss_pt = -np.mean(entry["final_accuracy_delta_pt"])
            entry["goal_met"] = bool(saving >= GOAL_TIME_SAVING and loss_pt <= GOAL_ACCURACY_LOSS_PT)
        summary[m] = entry
    return summary


def tables(summary: dict, methods: list[str]) -> str:
    f = formatting.fmt_mean_std
    headers = ["method", "train s (wall)", "train CPU s", "train+eval s", "opt. steps", "trained samples", "refresh fwd samples",
               "final top-1 %", "best top-1 %"]
    rows = []
    for m in methods:
        e = summary[m]
        rows.append([m, f(e["train_seconds"], digits=1), f(e["train_cpu_seconds"], digits=1),
                     f(e["train_plus_eval_seconds"], digits=1),
                     f(e["optimizer_steps"], digits=0), f(e["trained_samples"], digits=0),
                     f(e["refresh_samples"], digits=0), f(e["final_accuracy"], 100, 2), f(e["best_accuracy"], 100, 2)])
    absolute = formatting.markdown_table(headers, rows)
    headers = ["method", "train time ratio (wall)", "train CPU-time ratio", "train+eval ratio", "steps ratio", "forwards ratio (train+refresh)",
               "Δ final top-1 (pt)", "Δ best top-1 (pt)", "≥20% faster at ≤0.5 pt loss?"]
    rows = []
    for m in methods:
        if m == "baseline":
            continue
        e = summary[m]
        rows.append([m, f(e["train_time_ratio"]), f(e["train_cpu_ratio"]), f(e["total_time_ratio"]), f(e["steps_ratio"]),
                     f(e["forward_ratio"]), f(e["final_accuracy_delta_pt"], digits=2),
                     f(e["best_accuracy_delta_pt"], digits=2), "YES" if e.get("goal_met") else "no"])
    ratios = formatting.markdown_table(headers, rows) if rows else ""
    hid_rows = []
    for m in methods:
        e = summary[m]
        if e["hidden_fraction_per_epoch_mean"]:
            hid_rows.append([m + " hidden"] + [f"{v:.3f}" for v in e["hidden_fraction_per_epoch_mean"]])
            hid_rows.append([m + " target"] + [f"{v:.3f}" for v in e["target_fraction_per_epoch"]])
    hiding = ""
    if hid_rows:
        n = len(hid_rows[0]) - 1
        hiding = formatting.markdown_table(["fraction (mean over seeds)"] + [f"ep {i}" for i in range(n)], hid_rows)
    return "\n\n".join(t for t in (absolute, ratios, hiding) if t)


def plot(runs: list[dict], methods: list[str], stem: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(methods)}
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        pts = [(e["train_seconds_cumulative"], 100 * e["accuracy"]) for e in r["per_epoch"] if e.get("accuracy") is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", ms=3, color=colors[r["method"]], alpha=0.8,
                    label=r["method"] if r["seed"] == min(x["seed"] for x in runs if x["method"] == r["method"]) else None)
    ax.set_xlabel("cumulative train wall time (s, evaluation excluded)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Accuracy vs wall time (one line per method and seed)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(stem + "_accuracy_vs_time.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    hiding_runs = [r for r in runs if r["hiding"]]
    if hiding_runs:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for r in hiding_runs:
            ep = list(range(len(r["hiding"])))
            first = r["seed"] == min(x["seed"] for x in hiding_runs if x["method"] == r["method"])
            ax1.plot(ep, [h["hidden_fraction"] for h in r["hiding"]], marker="o", ms=3, color=colors[r["method"]],
                     label=f"{r['method']} realized" if first else None)
            if first:
                ax1.plot(ep, [h["target_fraction"] for h in r["hiding"]], ls="--", color=colors[r["method"]],
                         alpha=0.6, label=f"{r['method']} target F_e")
            ax2.plot(ep, [h["lr_factor"] for h in r["hiding"]], marker="o", ms=3, color=colors[r["method"]],
                     label=r["method"] if first else None)
        ax1.set_xlabel("epoch")
        ax1.set_ylabel("hidden fraction")
        ax1.set_title("Hidden fraction per epoch")
        ax1.grid(alpha=0.3)
        ax1.legend(fontsize=8)
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("LR factor")
        ax2.set_title("LR compensation factor per epoch")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
        fig.tight_layout()
        paths.append(stem + "_hiding.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    timing.set_threads(args.threads)
    for m in args.methods:
        trainers.parse_method(m)  # fail early on a bad spec
    if "baseline" not in args.methods:
        args.methods = ["baseline"] + args.methods
    w = flags.workload_from_args(args)
    record = {"benchmark": "compare", "command": report.command_line("benchmarks.compare", argv),
              "machine": report.machine_info(), "workload": vars(args).copy()}
    train_dataset, test_dataset = builders.prepare_data(w)
    record["data"] = {"train_samples": len(train_dataset), "test_samples": len(test_dataset),
                      "prepare_seconds": w.extra["data_prepare_seconds"],
                      "dataloader_pass_seconds": data_loading_seconds(train_dataset, w.batch_size)}
    print(f"data: {len(train_dataset)} train / {len(test_dataset)} test samples, "
          f"dataloader pass {record['data']['dataloader_pass_seconds']:.2f} s", flush=True)
    runs = []
    for seed in args.seeds:  # interleaved: every method once per seed, in turn
        for method in args.methods:
            print(f"[compare] seed {seed} method {method} ...", flush=True)
            r = run_one(method, seed, w, train_dataset, test_dataset)
            runs.append(r)
            print(f"[compare]   train {r['train_seconds']:.1f} s (+eval {r['eval_seconds']:.1f} s), "
                  f"steps {r['optimizer_steps']}, final top-1 {100 * (r['final_accuracy'] or 0):.2f}%, "
                  f"hidden/epoch {r['hidden_per_epoch']}", flush=True)
    summary = summarize(runs, args.methods, args.seeds)
    md = tables(summary, args.methods)
    record.update(runs=runs, summary=summary, markdown=md)
    stem = os.path.splitext(args.output)[0]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    if not args.no_plots:
        record["plots"] = plot(runs, args.methods, stem)
    report.write_json(args.output, record)
    with open(stem + ".md", "w") as f:
        f.write(f"# compare\n\nCommand: `{record['command']}`\n\nMachine: {record['machine']['cpu']}, "
                f"{record['machine']['cpu_count']} CPUs, torch {record['machine']['torch']}, transformers "
                f"{record['machine']['transformers']}, {record['machine']['date']}\n\n{md}\n")
    print(md)
    print(f"\nwrote {args.output}, {stem}.md" + (f", {', '.join(record['plots'])}" if "plots" in record else ""))
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
