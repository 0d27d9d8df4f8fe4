"""Leaderboard: every hiding strategy and the plain `transformers.Trainer` on several workloads.

For each seed, for each workload, every method trains once, in turn (the order rotates by one
per seed, so that machine drift hits every method alike), from the same initial weights on the
same data; the test top-1 is evaluated after every epoch (evaluation time is not counted).

Usage (one torch thread on CPU; one run of a workload takes about 10-15 s here, so the default
9 methods x 4 workloads x 3 seeds take about 30-40 minutes):

    python -m benchmarks.leaderboard                                      # every strategy, 4 workloads, seeds 0 1 2
    python -m benchmarks.leaderboard --workloads vit_fractal text --methods plain kakurenbo random --seeds 0
    python -m benchmarks.leaderboard --methods plain kakurenbo "f30=kakurenbo:hiding_fraction=0.3"
    python -m benchmarks.leaderboard --vit-fractal-instances-per-class 1000 --vit-fractal-hidden-size 192 \\
        --text-train-samples 50000 --timm-cnn-channels 64/128/256/512 ...                   # GPU scale
    python -m benchmarks.leaderboard --help                                # every size flag, with its default

Methods. `plain` is the plain `Trainer` (always run: it is the reference); any name of
`kakurenbo_hf.strategies.available_strategies()` is `KakurenboTrainer(hiding_strategy=<name>)`;
the default list is `plain` plus every registered strategy, read at run time. A method may be
followed by `:field=value,...` overriding fields of `KakurenboArguments` (lists with `/`), and
preceded by `LABEL=` to name it in the tables, e.g. `k50=kakurenbo:hiding_fraction=0.5` (without
a label the spec itself is the name). Variants of one strategy are ranked like strategies.

Workloads (`--workloads`; every size is a flag `--<workload>-<field>`; AdamW, cosine schedule):

- `vit_fractal`: the reference workload of `benchmarks.compare`: a ViT (32x32, patch 8, hidden
  64, 4 layers) from scratch on fractal images (10 classes x 150 train, x 50 test), 12 epochs,
  batch 32, lr 2e-3, warm-up 0.05.
- `deit_transfer`: the paper's transfer setting. A DeiT (32x32, patch 8, hidden 64, 4 layers) is
  pre-trained with the plain Trainer on fractal images (20 classes x 100, 10 epochs, lr 2e-3) once
  per seed and saved with `save_pretrained` (`--checkpoint-dir`, default a temporary folder;
  pre-training is not timed); every method then fine-tunes that folder (`from_pretrained`, a new
  10-class head) on scikit-learn's digits upscaled to 32x32 RGB (1200 train, 597 test), 15
  epochs, batch 32, lr 2e-3. (From random weights the same fine-tuning ends about 6 points lower.)
- `text`: a BERT (hidden 64, 2 layers, 2 heads) from a config on generated reviews whose label is
  the majority of 1, 3 or 5 polarity words among noise words (3000 train, 600 test, 5% flipped
  labels, word-level tokenizer, at most 32 tokens), 8 epochs, batch 32, lr 1e-3, warm-up 0.1.
- `timm_cnn`: a timm `resnet10t` (stage widths 16/32/64/128, stem 16, BatchNorm: the refresh
  pass's eval-mode statistics differ from training-mode ones) from random weights through
  transformers' `TimmWrapperForImageClassification`, on 32x32 fractal images (100 classes x 15
  train, x 10 test), 10 epochs, batch 32, lr 2e-3.

Reported per workload and method, mean ± std over seeds (per-seed values in the JSON): train wall
time (per-epoch evaluation excluded; refresh and selection included) and its paired ratio to
`plain` of the same seed; samples forwarded in training, forwarded by the refresh pass, and
backpropagated (`trainer.sample_counters` where the trainer has them, else counted from the
`kakurenbo/hidden` logs: forwarded = backpropagated), with their ratios to plain; final test top-1
and its paired delta to plain (points); time to accuracy: the cumulative train time at which the
method's per-epoch top-1 first reaches plain's final top-1 (same seed) minus 0.5 pt, as a ratio to
plain's own time to that accuracy ("never" where it is not reached; the mean is over the seeds
that reach it); and the verdicts: time saving >= 20%? delta >= -0.5 pt? Rows are ranked by time
to accuracy. The JSON also holds each run's train CPU time (this process's, steadier than wall
time when other jobs share the CPU) and its paired ratio, per-epoch curves and hidden counts. Outputs (`--output`, default benchmarks/results/leaderboard.json): the JSON record,
`leaderboard.md` beside it, and the plots `leaderboard_accuracy_vs_time.png` (a panel per
workload, a line per method: mean over seeds of the per-epoch top-1 vs cumulative train time) and
`leaderboard_pareto.png` (time saving vs top-1 delta, a point per workload and method).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass

import numpy as np

from . import flags, formatting, report, timing, trainers, workloads
from .compare import GOAL_ACCURACY_LOSS_PT, GOAL_TIME_SAVING

PLAIN = "plain"
TTA_MARGIN_PT = 0.5  # time to reach plain's final top-1 minus this many points


# --- methods -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    label: str  # the name in tables and plots
    spec: str  # what `trainers.parse_method` reads
    base: str  # "baseline" (the plain Trainer) or a strategy name
    overrides: dict


def default_methods() -> list[str]:
    from kakurenbo_hf.strategies import available_strategies

    return [PLAIN, *available_strategies()]


def parse_methods(specs: list[str]) -> list[Method]:
    """`[LABEL=]base[:field=value,...]` -> methods, plain first (added if missing); labels are unique."""
    methods = []
    for text in specs:
        head = text.split(":", 1)[0]
        label, spec = text.split("=", 1) if "=" in head else (text, text)
        base, overrides = trainers.parse_method(spec)
        methods.append(Method(PLAIN if base == "baseline" else label, spec, base, overrides))
    if not any(m.base == "baseline" for m in methods):
        methods.insert(0, Method(PLAIN, PLAIN, "baseline", {}))
    methods.sort(key=lambda m: m.base != "baseline")
    labels = [m.label for m in methods]
    duplicated = sorted({label for label in labels if labels.count(label) > 1})
    if duplicated:
        raise ValueError(f"method names must be unique, {duplicated} appear twice (name variants with LABEL=...)")
    return methods


# --- runs ----------------------------------------------------------------------------------------


def sample_counts(trainer, num_samples: int, epochs: int, hiding: list[dict], method: Method) -> dict:
    """Samples forwarded / backpropagated in training and forwarded by the refresh pass.

    From `trainer.sample_counters` when the trainer keeps them (global counts over all ranks),
    else from the hiding logs (every visible sample is forwarded and backpropagated once).
    """
    counters = getattr(trainer, "sample_counters", None)
    if counters:
        return {"forwarded": int(counters["forwarded"]), "backpropagated": int(counters["backpropagated"]),
                "refresh_forwarded": int(counters.get("refresh_forwarded", 0)), "counts_from": "sample_counters"}
    refresh = method.base != "baseline" and method.overrides.get("refresh_hidden", True)
    logged = trainers.sample_counts(num_samples, epochs, hiding, refresh)
    return {"forwarded": logged["trained_samples"], "backpropagated": logged["trained_samples"],
            "refresh_forwarded": logged["refresh_samples"], "counts_from": "logs"}


def run_one(method: Method, seed: int, wl: workloads.Prepared) -> dict:
    """Train `method` on the workload from the seed's initial weights; evaluate after every epoch."""
    from transformers.trainer_callback import PrinterCallback

    model = wl.model(seed)
    timer = timing.EpochTimer()
    out_dir = trainers.tempdir("kakurenbo_leaderboard_")
    trainer = trainers.make_trainer(method.spec, wl.settings, model, wl.train, wl.test, seed, out_dir,
                                    callbacks=[timer.callback], data_collator=wl.collate, use_cpu=not _cuda())
    trainer.remove_callback(PrinterCallback)  # one line per run, printed below
    started, started_cpu = time.perf_counter(), time.process_time()
    try:
        result = trainer.train()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    total, total_cpu = time.perf_counter() - started, time.process_time() - started_cpu
    epochs = [{k: e.get(k) for k in ("epoch", "train_seconds_cumulative", "accuracy", "eval_loss")}
              for e in timer.per_epoch()]
    hiding = trainers.hiding_log(trainer)
    record = {
        "workload": wl.name,
        "method": method.label,
        "spec": method.spec,
        "seed": seed,
        "train_seconds": total - timer.eval_seconds,
        "train_cpu_seconds": total_cpu - timer.eval_cpu_seconds,  # this process's CPU time: steadier on a shared CPU
        "eval_seconds": timer.eval_seconds,
        "train_plus_eval_seconds": total,
        "optimizer_steps": trainer.state.global_step,
        "final_train_loss": result.metrics.get("train_loss"),
        "final_accuracy": epochs[-1]["accuracy"] if epochs else None,
        "per_epoch": epochs,
        "hidden_per_epoch": [int(h["hidden"]) for h in hiding],
        # The refresh pass (forward only) and the statistics flush before each selection, both in train_seconds.
        "refresh_seconds": float(sum(h.get("refresh_seconds", 0.0) for h in hiding)),
        "flush_seconds": float(sum(h.get("flush_seconds", 0.0) for h in hiding)),
        **sample_counts(trainer, len(wl.train), wl.settings.epochs, hiding, method),
    }
    del trainer, model
    gc.collect()
    return record


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --- summary -------------------------------------------------------------------------------------


def time_to_accuracy(per_epoch: list[dict], target: float) -> float | None:
    """Cumulative train seconds at the end of the first epoch whose top-1 reaches `target` (None: never)."""
    for e in per_epoch:
        if e.get("accuracy") is not None and e["accuracy"] >= target - 1e-9:
            return e["train_seconds_cumulative"]
    return None


def summarize(runs: list[dict], workload_names: list[str], methods: list[Method], seeds: list[int]) -> dict:
    """{workload: {method: per-seed lists, paired ratios to plain, verdicts}}."""
    by = {(r["workload"], r["method"], r["seed"]): r for r in runs}
    summary = {}
    for w in workload_names:
        summary[w] = {}
        for m in methods:
            pairs = [(by[(w, m.label, s)], by[(w, PLAIN, s)]) for s in seeds
                     if (w, m.label, s) in by and (w, PLAIN, s) in by]
            entry = {"seeds": [a["seed"] for a, _ in pairs]}
            for key in ("train_seconds", "train_cpu_seconds", "final_accuracy", "forwarded", "backpropagated",
                        "refresh_forwarded", "optimizer_steps"):
                entry[key] = [a[key] for a, _ in pairs]
            entry["time_ratio"] = [a["train_seconds"] / b["train_seconds"] for a, b in pairs]
            entry["cpu_time_ratio"] = [a["train_cpu_seconds"] / b["train_cpu_seconds"] for a, b in pairs]
            entry["forward_ratio"] = [(a["forwarded"] + a["refresh_forwarded"]) / (b["forwarded"] + b["refresh_forwarded"])
                                      for a, b in pairs]
            entry["backprop_ratio"] = [a["backpropagated"] / b["backpropagated"] for a, b in pairs]
            entry["accuracy_delta_pt"] = [100 * (a["final_accuracy"] - b["final_accuracy"]) for a, b in pairs]
            entry["tta_target"], entry["tta_seconds"], entry["tta_ratio"] = [], [], []
            for a, b in pairs:
                target = b["final_accuracy"] - TTA_MARGIN_PT / 100
                mine, reference = time_to_accuracy(a["per_epoch"], target), time_to_accuracy(b["per_epoch"], target)
                entry["tta_target"].append(target)
                entry["tta_seconds"].append(mine)
                entry["tta_ratio"].append(None if mine is None else mine / reference)
            reached = [r for r in entry["tta_ratio"] if r is not None]
            entry["tta_ratio_mean"] = float(np.mean(reached)) if reached else None  # over the seeds that reach it
            entry["tta_reached"] = len(reached)  # of len(entry["seeds"])
            if pairs:
                entry["time_saving"] = 1 - float(np.mean(entry["time_ratio"]))
                entry["accuracy_delta_pt_mean"] = float(np.mean(entry["accuracy_delta_pt"]))
                entry["saves_20pct"] = entry["time_saving"] >= GOAL_TIME_SAVING
                entry["within_half_pt"] = entry["accuracy_delta_pt_mean"] >= -GOAL_ACCURACY_LOSS_PT
            summary[w][m.label] = entry
    return summary


def ranked(entries: dict) -> list[str]:
    """Plain first, then by time-to-accuracy ratio (never last), then by time ratio."""
    def key(label):
        e = entries[label]
        always = e["tta_reached"] == len(e["seeds"]) > 0
        return (label != PLAIN, not always, e["tta_ratio_mean"] if always else math.inf, -e.get("time_saving", 0))

    return sorted(entries, key=key)


def _kilo(values) -> str:
    return f"{np.mean(values) / 1000:.1f}k" if values else "-"


def _pm(values, **kwargs) -> str:
    """'mean ± std' of `values` ('-' for none)."""
    return formatting.fmt_mean_std(values, minmax=False, **kwargs) if values else "-"


def tables(summary: dict, methods: list[Method]) -> str:
    """The leaderboard (a row per workload and method, ranked) and a per-method overview."""
    f = _pm
    headers = ["workload", "method", "train s", "time ratio", "samples fwd (train + refresh)", "fwd ratio",
               "samples backprop", "backprop ratio", "final top-1 %", "Δ top-1 (pt)", "time-to-acc. ratio",
               "saving ≥ 20%?", "Δ ≥ -0.5 pt?"]
    rows = []
    for w, entries in summary.items():
        for label in ranked(entries):
            e = entries[label]
            if not e["seeds"]:
                continue
            reached, total = e["tta_reached"], len(e["seeds"])
            tta = ("never" if reached == 0 else f([r for r in e["tta_ratio"] if r is not None])
                   + ("" if reached == total else f" (reached in {reached}/{total} seeds)"))
            plain = label == PLAIN
            rows.append([
                w, label, f(e["train_seconds"], digits=1), "1" if plain else f(e["time_ratio"]),
                f"{_kilo(e['forwarded'])} + {_kilo(e['refresh_forwarded'])}", "1" if plain else f(e["forward_ratio"]),
                _kilo(e["backpropagated"]), "1" if plain else f(e["backprop_ratio"]),
                f(e["final_accuracy"], scale=100, digits=2), "0" if plain else f(e["accuracy_delta_pt"], digits=2),
                "1" if plain else tta,
                "-" if plain else ("yes" if e["saves_20pct"] else "no"),
                "-" if plain else ("yes" if e["within_half_pt"] else "no"),
            ])
    board = formatting.markdown_table(headers, rows)
    overall = []
    for m in methods:
        if m.label == PLAIN:
            continue
        es = [entries[m.label] for entries in summary.values() if entries[m.label]["seeds"]]
        if not es:
            continue
        overall.append([m.label, f"{sum(e['saves_20pct'] and e['within_half_pt'] for e in es)}/{len(es)}",
                        f"{np.mean([np.mean(e['time_ratio']) for e in es]):.3f}",
                        f"{np.mean([e['accuracy_delta_pt_mean'] for e in es]):+.2f}",
                        f"{sum(e['tta_reached'] == len(e['seeds']) for e in es)}/{len(es)}"])
    overall_table = formatting.markdown_table(
        ["method", "workloads with both verdicts yes", "mean time ratio", "mean Δ top-1 (pt)",
         "workloads where every seed reaches the target"], overall) if overall else ""
    return "\n\n".join(t for t in (board, overall_table) if t)


# --- plots ---------------------------------------------------------------------------------------


def plot(runs: list[dict], summary: dict, methods: list[Method], stem: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {m.label: plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")(i) for i, m in enumerate(methods)}
    names = list(summary)
    cols = min(2, len(names))
    rows_ = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(6.5 * cols, 4.2 * rows_), squeeze=False)
    for ax, w in zip(axes.flat, names):
        for m in methods:
            curves = [r["per_epoch"] for r in runs if r["workload"] == w and r["method"] == m.label]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            xs = np.mean([[e["train_seconds_cumulative"] for e in c[:n]] for c in curves], axis=0)
            ys = np.mean([[100 * (e["accuracy"] or 0) for e in c[:n]] for c in curves], axis=0)
            ax.plot(xs, ys, marker="o", ms=3, lw=2.2 if m.label == PLAIN else 1.2, color=colors[m.label], label=m.label)
        targets = summary[w][PLAIN]["tta_target"]
        if targets:
            ax.axhline(100 * float(np.mean(targets)), ls="--", color="gray", lw=0.8, label="plain final - 0.5 pt")
        ax.set_title(w)
        ax.set_xlabel("cumulative train wall time (s, evaluation excluded)")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("Accuracy vs train time (mean over seeds)")
    fig.tight_layout()
    paths = [stem + "_accuracy_vs_time.png"]
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    markers = dict(zip(names, "osD^vP*X"))
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for w in names:
        for m in methods:
            e = summary[w][m.label]
            if m.label == PLAIN or not e["seeds"]:
                continue
            ax.scatter(100 * e["time_saving"], e["accuracy_delta_pt_mean"], color=colors[m.label], marker=markers[w],
                       s=45, edgecolors="black", linewidths=0.4)
    ax.axvline(100 * GOAL_TIME_SAVING, ls="--", color="gray", lw=0.8)
    ax.axhline(-GOAL_ACCURACY_LOSS_PT, ls="--", color="gray", lw=0.8)
    ax.axhline(0, color="black", lw=0.5)
    ax.axvline(0, color="black", lw=0.5)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[m.label], marker="o", ls="", label=m.label) for m in methods if m.label != PLAIN]
    handles += [Line2D([], [], color="gray", marker=markers[w], ls="", label=w) for w in names]
    ax.legend(handles=handles, fontsize=7, ncol=2)
    ax.set_xlabel("train time saving vs plain Trainer (%, mean over seeds)")
    ax.set_ylabel("Δ final top-1 vs plain (points)")
    ax.set_title("Saving vs accuracy (goal: right of 20%, above -0.5 pt)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(stem + "_pareto.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


# --- command -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.leaderboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=list(workloads.SETTINGS), choices=list(workloads.SETTINGS))
    parser.add_argument("--methods", nargs="+", default=None,
                        help="[LABEL=]method[:field=value,...] (default: plain + every registered strategy)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None, help=timing.THREADS_HELP)
    parser.add_argument("--cache-dir", default=None, help="datasets cache of the fractal images (default: datasets')")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="where deit_transfer's pre-trained models are saved and reused (keyed by their settings "
                             "and seed); default: a temporary folder, removed at the end")
    parser.add_argument("--output", default=os.path.join(report.RESULTS_DIR, "leaderboard.json"))
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--fail-fast", action="store_true",
                        help="stop at the first failing run (default: report it, leave it out, go on)")
    for name, settings in workloads.SETTINGS.items():
        flags.add_dataclass_arguments(parser, settings(), prefix=name + "_", title=f"{name} workload",
                                      skip=workloads.SKIP.get(name, ()), choices=workloads.CHOICES.get(name))
    return parser


def run_all(args, methods: list[Method], checkpoint_dir: str):
    """Seeds x workloads x methods, interleaved; a failing run is reported and skipped (unless --fail-fast)."""
    prepared: dict[str, workloads.Prepared] = {}
    runs, failures = [], []
    total, done, started = len(args.seeds) * len(args.workloads) * len(methods), 0, time.perf_counter()
    for i, seed in enumerate(args.seeds):
        for name in args.workloads:
            if name not in prepared:  # data built once, outside every timed region
                settings = flags.dataclass_from_args(workloads.SETTINGS[name], args, prefix=name + "_")
                prepared[name] = workloads.build(name, settings, args.cache_dir, checkpoint_dir)
            shift = i % len(methods)
            for method in methods[shift:] + methods[:shift]:
                done += 1
                head = f"[leaderboard] {done}/{total} seed {seed} {name} {method.label}:"
                try:
                    r = run_one(method, seed, prepared[name])
                except Exception as err:
                    if args.fail_fast:
                        raise
                    traceback.print_exc()
                    failures.append({"workload": name, "method": method.label, "seed": seed,
                                     "error": f"{type(err).__name__}: {err}"})
                    print(f"{head} FAILED ({failures[-1]['error']})", flush=True)
                    continue
                runs.append(r)
                elapsed = time.perf_counter() - started
                print(f"{head} train {r['train_seconds']:.1f} s, top-1 {100 * (r['final_accuracy'] or 0):.2f}%, "
                      f"backprop {r['backpropagated']} samples (elapsed {elapsed / 60:.1f} min, about "
                      f"{elapsed / done * (total - done) / 60:.1f} min left)", flush=True)
    return runs, failures, prepared


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    threads = timing.set_threads(args.threads)
    methods = parse_methods(args.methods or default_methods())
    command = report.command_line("benchmarks.leaderboard", argv)
    checkpoint_dir = args.checkpoint_dir or trainers.tempdir("kakurenbo_leaderboard_deit_")
    record = {"benchmark": "leaderboard", "command": command, "machine": report.machine_info(),
              "seeds": args.seeds, "methods": [asdict(m) for m in methods], "workloads": {}}
    try:
        runs, failures, prepared = run_all(args, methods, checkpoint_dir)
    finally:
        if args.checkpoint_dir is None:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    for name, wl in prepared.items():
        info = {k: v for k, v in wl.info.items() if k != "checkpoint_dir"}
        record["workloads"][name] = {"description": wl.description, "settings": asdict(wl.settings),
                                     "train_samples": len(wl.train), "test_samples": len(wl.test), **info}
    summary = summarize(runs, args.workloads, methods, args.seeds)
    md = tables(summary, methods)
    described = "\n".join(f"- `{name}`: {record['workloads'][name]['description']}" for name in args.workloads)
    markdown = (f"`{command}` ({threads} torch thread(s), {record['machine']['cpu']}, {record['machine']['date']}). "
                f"Mean ± std over seeds {args.seeds}; ratios are paired with plain of the same seed; time-to-acc. "
                f"ratio: train time to reach plain's final top-1 - {TTA_MARGIN_PT} pt, over plain's own.\n\n"
                f"{described}\n\n{md}")
    if failures:
        markdown += "\n\nFailed runs (left out of the table):\n" + "\n".join(
            f"- {f['workload']} / {f['method']} / seed {f['seed']}: {f['error']}" for f in failures)
    record.update(runs=runs, failures=failures, summary=summary)
    stem = os.path.splitext(args.output)[0]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    if not args.no_plots:
        record["plots"] = plot(runs, summary, methods, stem)
    report.publish(args.output, record, markdown)
    with open(stem + ".md", "w") as f:
        f.write(f"# Leaderboard\n\n{markdown}\n")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
