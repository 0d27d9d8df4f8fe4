"""Leaderboard: every hiding strategy against the plain `transformers.Trainer`, at full length and at the same compute.

For each seed, for each workload, every method trains once, in turn (the order rotates by one
per seed, so that machine drift hits every method alike), from the same initial weights on the
same data; the workload's quality is evaluated after every epoch (evaluation time is not counted),
overall and on each of its groups (classes, or declared subgroups). Then, for each method that
hides, the plain Trainer trains again at the *same compute*: `max_steps` = round(share x the full
run's optimizer steps), share = the method's backpropagated samples / the full plain run's (same
seed), everything else equal; the Trainer fits its schedule (warm-up ratio, cosine decay) to those
steps and evaluates the last, partial epoch too. Same-compute runs are cached by (workload, seed,
optimizer steps): methods that backpropagate the same share (random, epsilon_greedy, ucb and iswr
hide exactly as many samples) share one run. This is the baseline a user can always pick ("No
Train No Gain", Kaddour et al. 2023); a method earns its place where it beats it.

Usage (one torch thread on CPU; a run of a workload takes about 10-20 s of training here, plus its
per-epoch evaluation; the defaults, 10 methods x 7 workloads x 3 seeds, plus about 5 shorter
same-compute runs per workload and seed (about 40% more), take about 1.5 hours on a quiet machine;
`--no-same-compute` skips those):

    python -m benchmarks.leaderboard                                      # every strategy, 7 workloads, seeds 0 1 2
    python -m benchmarks.leaderboard --workloads lm_templated vit_fractal_hard --methods plain kakurenbo --seeds 0
    python -m benchmarks.leaderboard --methods plain kakurenbo "f30=kakurenbo:hiding_fraction=0.3" --no-same-compute
    python -m benchmarks.leaderboard --vit-fractal-instances-per-class 1000 --vit-fractal-hidden-size 192 \\
        --text-train-samples 50000 --timm-cnn-channels 64/128/256/512 ...                   # GPU scale
    python -m benchmarks.leaderboard --help                                # every size flag, with its default

Methods. `plain` is the plain `Trainer` (always run: it is the reference); any name of
`kakurenbo_hf.strategies.available_strategies()` is `KakurenboTrainer(hiding_strategy=<name>)`. A
method may be followed by `:field=value,...` overriding fields of `KakurenboArguments` (lists with
`/`; an optional field such as `max_hidden_epochs=3` takes its annotated type, `none` for None),
and preceded by `LABEL=` to name it in the tables, e.g. `k50=kakurenbo:hiding_fraction=0.5`
(without a label the spec itself is the name). The default list is `plain` plus every registered
strategy, read at run time, each with its published learning-rate rule: the baselines the
KAKURENBO paper compares with (random, epsilon_greedy, ucb, forget, forget_lag, iswr) ran without
LR compensation, so they run here as `random=random:lr_compensation=none` etc.; kakurenbo and the
others run at the library's defaults (infobatch never compensates; selective_backprop keeps every
epoch's length). `forget_original` is two runs (a counting run that hides nothing, then a
retraining run given its checkpoint) and is not in the default list.

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
- `vit_fractal_hard`: `vit_fractal`'s ViT on 100 fractal classes x 16 train (x 20 test), 10 epochs:
  the plain Trainer ends well below 90% top-1 (77.5% with seed 0 here), so training less costs
  accuracy (`--vit-fractal-hard-label-noise` adds wrong training labels).
- `vit_digits`: `vit_fractal`'s ViT from scratch on scikit-learn's digits upscaled to 32x32 RGB
  (1200 train, 597 test: the split of `deit_transfer`), 12 epochs: the model fits its training set
  within a few epochs but the plain Trainer ends below 90% top-1 (89.3% with seed 0), so hiding
  happens and training less costs accuracy (on `vit_fractal_hard` the model never fits its
  training set confidently, so KAKURENBO hides almost nothing there).
- `lm_templated`: a byte-level GPT-2 (hidden 64, 2 layers, 4 heads, rows of 64 bytes, vocabulary
  of the 256 bytes + a pad) from a config on standard-library docstrings (prose; eval rows from
  other documents) where 20% of the rows are one templated boilerplate snippet ("Copyright (c)
  20<yy> <name>. All rights reserved. Licensed MIT.", other draws in eval), 1000 train rows, 300
  eval rows of both kinds, 8 epochs, batch 16, lr 2e-3. The templated rows become easy within two
  epochs: what a hiding rule hides, and what the model forgets while they stay hidden (their eval
  loss rises; see the per-subgroup column and `hidden_per_epoch_by_group` in the JSON).

Quality, per workload (`benchmarks.quality`): a name, whether higher is better, the overall value,
one value per group, the worst group's value, and the per-epoch curve. Classification: top-1 per
class (worst = the mean top-1 of the lowest tenth of the classes, the lowest class with 10 or
fewer; deltas in points, tolerance 0.5 pt). `lm_templated`: eval
loss in nats per byte, overall (token-weighted) and per subgroup (`prose`, `templated`; worst = the
highest loss; deltas in nats, tolerance 0.01 nats, about 1% of perplexity).

Reported per workload and method, mean ± std over seeds (per-seed values in the JSON): train wall
time (per-epoch evaluation excluded; refresh and selection included) and its paired ratio to
`plain` of the same seed; samples forwarded in training plus by the refresh pass, and
backpropagated (`trainer.sample_counters` where the trainer has them, else counted from the
`kakurenbo/hidden` logs: forwarded = backpropagated), with their ratios to plain; the final
quality and worst-group quality, with their paired deltas (method - reference, in points or
nats) to the full plain run and to the same-compute plain run; for workloads of at most 4 groups,
each group's value and delta to the same-compute run; time to quality: the cumulative train time at
which the method's per-epoch quality first reaches plain's final quality minus the tolerance (0.5
pt of top-1; for the LM plain's final eval loss + 0.01 nats), as a ratio to plain's own time to it
("never" where it is not reached; the mean is over the seeds that reach it); and the verdicts:
time saving >= 20%? final quality within the tolerance of the full plain run? no worse than the
same-compute plain run (mean over seeds of the deltas, on overall AND worst-group quality; with
declared subgroups, as the LM's templated and free text, on each subgroup)? Rows
are ranked by time to quality. An overview table gives, per method, how many workloads pass each
verdict and its deltas to the full and to the same-compute run on every workload. For
`lm_templated`, the JSON also holds each run's hidden training rows per epoch and subgroup. The
JSON also holds each run's train CPU time (this process's, steadier than wall time when other jobs
share the CPU) and its paired ratio, per-epoch curves (quality, worst group; every group's value
where there are at most 10), hidden counts, and every same-compute run (its steps, share, final
learning rate and curve).

Caveat: the compute share counts backpropagated samples. Selective backprop forwards every sample
(and more) while it backpropagates a quarter, so its same-compute run (a quarter of the steps)
costs far less time than it does; its time ratio tells the rest.

Outputs (`--output`, default benchmarks/results/leaderboard.json): the JSON record,
`leaderboard.md` beside it, and the plots `leaderboard_accuracy_vs_time.png` (a panel per
workload, a line per method: mean over seeds of the per-epoch quality vs cumulative train time) and
`leaderboard_pareto.png` (a row per workload, overall and worst-group quality: x = compute share,
the method's backpropagated samples / the full plain run's; y = quality gain over the full plain
run, higher is better (top-1 points, or minus the eval-loss delta); a point per method and the
same-compute curve of the plain Trainer (its same-compute runs and the full run at share 1), the
line a method must sit above).
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
from . import quality as q
from .compare import GOAL_TIME_SAVING

PLAIN = "plain"
SAME_COMPUTE = "plain (same compute)"  # the method name of same-compute runs in the record
# The baselines of the KAKURENBO paper, which ran without LR compensation (their published rule).
PUBLISHED_WITHOUT_LR_COMPENSATION = ("random", "epsilon_greedy", "ucb", "forget", "forget_lag", "iswr")
# Strategies a single run cannot show: `forget_original` is two runs (a counting run that hides nothing,
# then a retraining run given its checkpoint), so it is left out of the default list.
TWO_RUN_STRATEGIES = ("forget_original",)
PER_GROUP_COLUMNS_MAX = 4  # workloads with at most this many groups get a column of per-group deltas
PER_EPOCH_GROUPS_MAX = 10  # ... and per-group values per epoch in the JSON


# --- methods -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    label: str  # the name in tables and plots
    spec: str  # what `trainers.parse_method` reads
    base: str  # "baseline" (the plain Trainer) or a strategy name
    overrides: dict


def default_methods() -> list[str]:
    """`plain` and every registered strategy, the paper's baselines with their published LR rule (none)."""
    from kakurenbo_hf.strategies import available_strategies

    return [PLAIN] + [f"{name}={name}:lr_compensation=none" if name in PUBLISHED_WITHOUT_LR_COMPENSATION else name
                      for name in available_strategies() if name not in TWO_RUN_STRATEGIES]


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


PLAIN_METHOD = Method(PLAIN, PLAIN, "baseline", {})


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


def _eval_log():
    """A callback keeping (global step, epoch, metrics) of every evaluation."""
    from transformers import TrainerCallback

    class EvalLog(TrainerCallback):
        def __init__(self):
            self.evals = []

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.evals.append((state.global_step, state.epoch, dict(metrics or {})))

    return EvalLog()


def _quality_row(quality: q.Quality, metrics: dict, with_groups: bool) -> dict:
    groups = quality.groups_from_metrics(metrics)
    worst_name, worst = quality.worst_of(groups)
    row = {"quality": quality.overall_from_metrics(metrics), "worst_group": worst, "worst_group_name": worst_name,
           "eval_loss": metrics.get("eval_loss")}
    if quality.metric == "accuracy":
        row["accuracy"] = row["quality"]
    if with_groups:
        row["groups"] = groups
    return row


def _hidden_by_group(trainer, groups: dict | None) -> dict | None:
    """Per training subgroup: rows hidden in each planned epoch (None: no subgroups, or nothing recorded)."""
    report_fn = getattr(trainer, "hiding_report", None)
    if not groups or report_fn is None:
        return None
    try:
        hiding = report_fn()
        masks = [hiding.hidden_mask(plan.epoch) for plan in hiding.plans]
    except Exception:  # noqa: BLE001 - reporting only
        return None
    return {name: [int(mask[np.asarray(rows)].sum()) for mask in masks] for name, rows in groups.items()}


def run_one(method: Method, seed: int, wl: workloads.Prepared, max_steps: int | None = None) -> dict:
    """Train `method` on the workload from the seed's initial weights; evaluate after every epoch.

    `max_steps` (the plain Trainer at the same compute): that many optimizer steps, the schedule fitted
    to them; the last (partial) epoch is evaluated, or, should the Trainer not have evaluated after the
    last step, one evaluation follows training (not timed).
    """
    from transformers.trainer_callback import PrinterCallback

    quality = wl.quality
    model = wl.model(seed)
    timer = timing.EpochTimer()
    evals = _eval_log()
    out_dir = trainers.tempdir("kakurenbo_leaderboard_")
    trainer = trainers.make_trainer(method.spec, wl.settings, model, wl.train, wl.test, seed, out_dir,
                                    callbacks=[timer.callback, evals], data_collator=wl.collate, use_cpu=not _cuda(),
                                    compute_metrics=quality.compute_metrics,
                                    preprocess_logits_for_metrics=quality.preprocess_logits_for_metrics,
                                    max_steps=max_steps)
    trainer.remove_callback(PrinterCallback)  # one line per run, printed below
    started, started_cpu = time.perf_counter(), time.process_time()
    try:
        result = trainer.train()
        total, total_cpu = time.perf_counter() - started, time.process_time() - started_cpu
        final_eval_added = not evals.evals or evals.evals[-1][0] != trainer.state.global_step
        if final_eval_added:
            trainer.evaluate()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    with_groups = len(quality.groups) <= PER_EPOCH_GROUPS_MAX
    epochs = []
    for i, e in enumerate(timer.per_epoch()):
        row = {"epoch": e["epoch"], "train_seconds_cumulative": e["train_seconds_cumulative"]}
        if i < len(evals.evals):
            row["epoch"] = evals.evals[i][1]  # fractional for a partial last epoch
            row.update(_quality_row(quality, evals.evals[i][2], with_groups))
        epochs.append(row)
    final = _quality_row(quality, evals.evals[-1][2], True) if evals.evals else {}
    hiding = trainers.hiding_log(trainer)
    try:
        final_lr = float(trainer.lr_scheduler.get_last_lr()[0])
    except Exception:  # noqa: BLE001 - reporting only
        final_lr = None
    record = {
        "workload": wl.name,
        "method": method.label if max_steps is None else SAME_COMPUTE,
        "spec": method.spec,
        "seed": seed,
        "max_steps": max_steps,
        "train_seconds": total - timer.eval_seconds,
        "train_cpu_seconds": total_cpu - timer.eval_cpu_seconds,  # this process's CPU time: steadier on a shared CPU
        "eval_seconds": timer.eval_seconds,
        "train_plus_eval_seconds": total,
        "optimizer_steps": trainer.state.global_step,
        "epochs_trained": trainer.state.epoch,
        "final_learning_rate": final_lr,
        "final_eval_added": final_eval_added,
        "final_train_loss": result.metrics.get("train_loss"),
        "final_quality": final.get("quality"),
        "final_worst_group": final.get("worst_group"),
        "final_worst_group_name": final.get("worst_group_name"),
        "final_groups": final.get("groups", {}),
        "per_epoch": epochs,
        "hidden_per_epoch": [int(h["hidden"]) for h in hiding],
        # The refresh pass (forward only) and the statistics flush before each selection, both in train_seconds.
        "refresh_seconds": float(sum(h.get("refresh_seconds", 0.0) for h in hiding)),
        "flush_seconds": float(sum(h.get("flush_seconds", 0.0) for h in hiding)),
        **sample_counts(trainer, len(wl.train), wl.settings.epochs, hiding, method),
    }
    if quality.metric == "accuracy":
        record["final_accuracy"] = record["final_quality"]
    if hasattr(trainer, "hiding_report") and trainer.hiding_engine is not None:
        # The coverage guarantee as measured: per sample, the most consecutive epochs it was left out.
        streaks = trainer.hiding_report().longest_hidden_streak()
        record["longest_hidden_streak_histogram"] = np.bincount(streaks).tolist()  # [samples with 0, 1, ...]
        record["max_hidden_epochs"] = trainer.hiding_engine.max_hidden_epochs
    by_group = _hidden_by_group(trainer, wl.train_groups)
    if by_group is not None:
        record["hidden_per_epoch_by_group"] = by_group
        record["train_group_sizes"] = {name: len(rows) for name, rows in wl.train_groups.items()}
    del trainer, model
    gc.collect()
    return record


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def same_compute_steps(run: dict, plain: dict) -> int:
    """Optimizer steps of the plain Trainer at `run`'s compute: round(share x plain's steps), share = run's
    backpropagated samples / plain's; at least 1, at most plain's (a share >= 1 is the full run itself)."""
    share = run["backpropagated"] / plain["backpropagated"]
    return int(min(plain["optimizer_steps"], max(1, round(share * plain["optimizer_steps"]))))


# --- summary -------------------------------------------------------------------------------------


def time_to_quality(per_epoch: list[dict], target: float, quality: q.Quality) -> float | None:
    """Cumulative train seconds at the end of the first epoch whose quality reaches `target` (None: never)."""
    for e in per_epoch:
        if quality.reaches(e.get("quality"), target):
            return e["train_seconds_cumulative"]
    return None


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarize(runs: list[dict], workload_names: list[str], methods: list[Method], seeds: list[int],
              qualities: dict | None = None, same_compute: list[dict] | None = None) -> dict:
    """{workload: {method: per-seed lists, paired ratios and deltas to plain (full and same compute), verdicts}}.

    Levels (`quality`, `worst_group`, ...) are in the metric's units (top-1 as a fraction); deltas are
    method - reference in shown units (top-1 points, nats); verdicts follow the metric's direction.
    """
    qualities = qualities or {}
    by = {(r["workload"], r["method"], r["seed"]): r for r in runs}
    cached = {(r["workload"], r["seed"], r["max_steps"]): r for r in same_compute or []}
    summary = {}
    for w in workload_names:
        quality = qualities.get(w) or q.classification([])
        summary[w] = {}
        for m in methods:
            pairs = [(by[(w, m.label, s)], by[(w, PLAIN, s)]) for s in seeds
                     if (w, m.label, s) in by and (w, PLAIN, s) in by]
            entry = {"seeds": [a["seed"] for a, _ in pairs]}
            for key in ("train_seconds", "train_cpu_seconds", "forwarded", "backpropagated",
                        "refresh_forwarded", "optimizer_steps"):
                entry[key] = [a[key] for a, _ in pairs]
            entry["quality"] = [a["final_quality"] for a, _ in pairs]
            entry["worst_group"] = [a["final_worst_group"] for a, _ in pairs]
            entry["worst_group_name"] = [a["final_worst_group_name"] for a, _ in pairs]
            entry["time_ratio"] = [a["train_seconds"] / b["train_seconds"] for a, b in pairs]
            entry["cpu_time_ratio"] = [a["train_cpu_seconds"] / b["train_cpu_seconds"] for a, b in pairs]
            entry["forward_ratio"] = [(a["forwarded"] + a["refresh_forwarded"]) / (b["forwarded"] + b["refresh_forwarded"])
                                      for a, b in pairs]
            entry["backprop_ratio"] = [a["backpropagated"] / b["backpropagated"] for a, b in pairs]
            entry["quality_delta"] = [quality.scale * (a["final_quality"] - b["final_quality"]) for a, b in pairs]
            entry["worst_group_delta"] = [quality.scale * (a["final_worst_group"] - b["final_worst_group"])
                                          for a, b in pairs]
            # the plain Trainer at the same compute (the full run itself at share 1)
            entry["same_compute_steps"], entry["same_compute_share"] = [], []
            entry["same_compute_quality"], entry["same_compute_worst_group"] = [], []
            entry["quality_delta_same_compute"], entry["worst_group_delta_same_compute"] = [], []
            groups_delta: dict[str, list] = {}
            gains, worst_gains, group_gains = [], [], {}
            for a, b in pairs:
                steps = same_compute_steps(a, b)
                c = b if steps >= b["optimizer_steps"] else cached.get((w, a["seed"], steps))
                entry["same_compute_steps"].append(steps)
                entry["same_compute_share"].append(steps / b["optimizer_steps"])
                if c is None:
                    for key in ("same_compute_quality", "same_compute_worst_group", "quality_delta_same_compute",
                                "worst_group_delta_same_compute"):
                        entry[key].append(None)
                    continue
                entry["same_compute_quality"].append(c["final_quality"])
                entry["same_compute_worst_group"].append(c["final_worst_group"])
                entry["quality_delta_same_compute"].append(quality.scale * (a["final_quality"] - c["final_quality"]))
                entry["worst_group_delta_same_compute"].append(
                    quality.scale * (a["final_worst_group"] - c["final_worst_group"]))
                gains.append(quality.gain(a["final_quality"], c["final_quality"]))
                worst_gains.append(quality.gain(a["final_worst_group"], c["final_worst_group"]))
                if len(quality.groups) <= PER_EPOCH_GROUPS_MAX:
                    for g, value in a["final_groups"].items():
                        if g in c["final_groups"]:
                            groups_delta.setdefault(g, []).append(quality.scale * (value - c["final_groups"][g]))
                            group_gains.setdefault(g, []).append(quality.gain(value, c["final_groups"][g]))
            if groups_delta:
                entry["group_delta_same_compute"] = groups_delta
            if pairs and len(quality.groups) <= PER_EPOCH_GROUPS_MAX:
                entry["groups"] = {g: [a["final_groups"].get(g) for a, _ in pairs] for g in quality.groups}
            entry["tta_target"], entry["tta_seconds"], entry["tta_ratio"] = [], [], []
            for a, b in pairs:
                target = quality.target(b["final_quality"])
                mine = time_to_quality(a["per_epoch"], target, quality)
                reference = time_to_quality(b["per_epoch"], target, quality)
                entry["tta_target"].append(target)
                entry["tta_seconds"].append(mine)
                entry["tta_ratio"].append(None if mine is None or not reference else mine / reference)
            reached = [r for r in entry["tta_ratio"] if r is not None]
            entry["tta_ratio_mean"] = float(np.mean(reached)) if reached else None  # over the seeds that reach it
            entry["tta_reached"] = len(reached)  # of len(entry["seeds"])
            if pairs:
                entry["time_saving"] = 1 - float(np.mean(entry["time_ratio"]))
                entry["quality_delta_mean"] = float(np.mean(entry["quality_delta"]))
                entry["worst_group_delta_mean"] = float(np.mean(entry["worst_group_delta"]))
                entry["quality_delta_same_compute_mean"] = _mean(entry["quality_delta_same_compute"])
                entry["worst_group_delta_same_compute_mean"] = _mean(entry["worst_group_delta_same_compute"])
                entry["saves_20pct"] = entry["time_saving"] >= GOAL_TIME_SAVING
                gain_full = np.mean([quality.gain(a["final_quality"], b["final_quality"]) for a, b in pairs])
                entry["within_tolerance"] = bool(gain_full >= -quality.tolerance - 1e-9)
                # no worse than the same-compute plain run, mean over seeds, overall and on the worst group
                # Declared subgroups (a language model's templated vs free text) are few and each matters: every
                # one must be no worse, not only the one with the highest loss (that is the harder text, which
                # hiding does not forget; the easy subgroup is the one hidden).
                every_group = (quality.group_kind != "subgroup"
                               or all(np.mean(values) >= -1e-9 for values in group_gains.values()))
                entry["beats_same_compute"] = (bool(np.mean(gains) >= -1e-9 and np.mean(worst_gains) >= -1e-9
                                                    and every_group) if gains else None)
                entry["same_compute_seeds"] = len(gains)
            summary[w][m.label] = entry
    return summary


def ranked(entries: dict) -> list[str]:
    """Plain first, then by time-to-quality ratio (never last), then by time ratio."""
    def key(label):
        e = entries[label]
        always = e["tta_reached"] == len(e["seeds"]) > 0
        return (label != PLAIN, not always, e["tta_ratio_mean"] if always else math.inf, -e.get("time_saving", 0))

    return sorted(entries, key=key)


def _kilo(values) -> str:
    return f"{np.mean(values) / 1000:.1f}k" if values else "-"


def _pm(values, **kwargs) -> str:
    """'mean ± std' of `values` ('-' for none)."""
    values = [v for v in values if v is not None]
    return formatting.fmt_mean_std(values, minmax=False, **kwargs) if values else "-"


def _signed(values, digits: int) -> str:
    """'+m ± s' of `values` ('-' for none)."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    text = formatting.fmt_mean_std(values, minmax=False, digits=digits)
    return text if text.startswith("-") else "+" + text


def _digits(quality: q.Quality) -> int:
    return 2 if quality.scale != 1 else 3


def _yes(value) -> str:
    return "-" if value is None else "yes" if value else "no"


def workload_table(w: str, entries: dict, quality: q.Quality) -> str:
    """One workload's leaderboard, ranked (deltas: method - reference, in points or nats)."""
    f, d = _pm, _digits(quality)
    group = "class" if quality.group_kind == "class" else "subgroup"
    worse = "lower" if quality.higher_is_better else "higher"
    per_group = 0 < len(quality.groups) <= PER_GROUP_COLUMNS_MAX
    headers = ["workload", "method", "train s", "time ratio", "samples fwd (train + refresh)", "fwd ratio",
               "backprop ratio", f"final {quality.label}", "Δ vs full", "Δ vs same-compute",
               f"worst {group} ({worse} {quality.name})", "Δ worst vs full", "Δ worst vs same-compute"]
    if per_group:
        headers.append(f"per {group}: {quality.name} (Δ vs same-compute)")
    headers += [f"time-to-{quality.name} ratio", "saving ≥ 20%?", f"{quality.tolerance_text()} vs full?",
                "≥ same-compute?"]
    rows = []
    for label in ranked(entries):
        e = entries[label]
        if not e["seeds"]:
            continue
        reached, total = e["tta_reached"], len(e["seeds"])
        tta = ("never" if reached == 0 else f([r for r in e["tta_ratio"] if r is not None])
               + ("" if reached == total else f" (reached in {reached}/{total} seeds)"))
        plain = label == PLAIN
        names = sorted({n for n in e["worst_group_name"] if n is not None})
        worst = f(e["worst_group"], scale=quality.scale, digits=d) + (f" ({', '.join(names)})" if names else "")
        row = [
            w, label, f(e["train_seconds"], digits=1), "1" if plain else f(e["time_ratio"]),
            f"{_kilo(e['forwarded'])} + {_kilo(e['refresh_forwarded'])}", "1" if plain else f(e["forward_ratio"]),
            "1" if plain else f(e["backprop_ratio"]),
            f(e["quality"], scale=quality.scale, digits=d), "0" if plain else _signed(e["quality_delta"], d),
            "-" if plain else _signed(e["quality_delta_same_compute"], d),
            worst, "0" if plain else _signed(e["worst_group_delta"], d),
            "-" if plain else _signed(e["worst_group_delta_same_compute"], d),
        ]
        if per_group:
            cells = []
            for g in quality.groups:
                values = e.get("groups", {}).get(g) or []
                delta = (e.get("group_delta_same_compute") or {}).get(g)
                cells.append(f"{g} {_pm(values, scale=quality.scale, digits=d)}"
                             + ("" if plain or not delta else f" ({_signed(delta, d)})"))
            row.append("; ".join(cells))
        row += ["1" if plain else tta, "-" if plain else _yes(e["saves_20pct"]),
                "-" if plain else _yes(e["within_tolerance"]), "-" if plain else _yes(e["beats_same_compute"])]
        rows.append(row)
    return formatting.markdown_table(headers, rows)


def overview_table(summary: dict, methods: list[Method], qualities: dict) -> str:
    """Per method: workloads passing each verdict, mean ratios, and its deltas on every workload."""
    names = [w for w in summary if any(summary[w][m.label]["seeds"] for m in methods if m.label != PLAIN)]
    rows = []
    for m in methods:
        if m.label == PLAIN:
            continue
        es = {w: summary[w][m.label] for w in names if summary[w][m.label]["seeds"]}
        if not es:
            continue
        judged = [e for e in es.values() if e["beats_same_compute"] is not None]
        row = [m.label,
               f"{sum(e['saves_20pct'] for e in es.values())}/{len(es)}",
               f"{sum(e['within_tolerance'] for e in es.values())}/{len(es)}",
               f"{sum(bool(e['beats_same_compute']) for e in judged)}/{len(judged)}" if judged else "-",
               f"{sum(e['saves_20pct'] and e['within_tolerance'] and bool(e['beats_same_compute']) for e in judged)}"
               f"/{len(judged)}" if judged else "-",
               f"{np.mean([np.mean(e['time_ratio']) for e in es.values()]):.3f}",
               f"{np.mean([np.mean(e['backprop_ratio']) for e in es.values()]):.3f}"]
        for w in names:
            e = es.get(w)
            if e is None:
                row.append("-")
                continue
            d = _digits(qualities.get(w) or q.classification([]))
            full = f"{e['quality_delta_mean']:+.{d}f}"
            same = e["quality_delta_same_compute_mean"]
            worst = e["worst_group_delta_same_compute_mean"]
            row.append(f"{full} / " + ("-" if same is None else f"{same:+.{d}f} (worst {worst:+.{d}f})"))
        rows.append(row)
    if not rows:
        return ""
    headers = ["method", "saving ≥ 20%", "Δ within tolerance vs full", "≥ same-compute (overall and worst group)",
               "all three", "mean time ratio", "mean backprop ratio"]
    for w in names:
        quality = qualities.get(w) or q.classification([])
        headers.append(f"{w}: Δ {quality.name} ({quality.delta_unit}) vs full / vs same-compute")
    return formatting.markdown_table(headers, rows)


def tables(summary: dict, methods: list[Method], qualities: dict | None = None) -> str:
    """A leaderboard per workload (a row per method, ranked) and the per-method overview."""
    qualities = qualities or {}
    boards = [workload_table(w, entries, qualities.get(w) or q.classification([]))
              for w, entries in summary.items() if any(e["seeds"] for e in entries.values())]
    overall = overview_table(summary, methods, qualities)
    return "\n\n".join(t for t in (*boards, overall) if t)


def same_compute_curve(summary_w: dict, same_compute: list[dict], runs: list[dict], w: str,
                       quality: q.Quality) -> list[tuple[float, float, float]]:
    """(compute share, mean gain over the full plain run overall, on the worst group) per same-compute step
    count (mean over the seeds that ran it), plus (1, 0, 0): the plain Trainer's quality vs its compute."""
    plain = {r["seed"]: r for r in runs if r["workload"] == w and r["method"] == PLAIN}
    points: dict[int, list] = {}
    for c in same_compute:
        b = plain.get(c["seed"])
        if c["workload"] != w or b is None:
            continue
        points.setdefault(c["max_steps"], []).append(
            (c["max_steps"] / b["optimizer_steps"], quality.gain(c["final_quality"], b["final_quality"]),
             quality.gain(c["final_worst_group"], b["final_worst_group"])))
    curve = [tuple(float(np.mean([p[i] for p in ps])) for i in range(3)) for ps in points.values()]
    if plain:
        curve.append((1.0, 0.0, 0.0))
    return sorted(curve)


# --- plots ---------------------------------------------------------------------------------------


def plot(runs: list[dict], summary: dict, methods: list[Method], stem: str, qualities: dict | None = None,
         same_compute: list[dict] | None = None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    qualities = qualities or {}
    colors = {m.label: plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")(i) for i, m in enumerate(methods)}
    names = list(summary)
    cols = min(2, len(names))
    rows_ = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(6.5 * cols, 4.2 * rows_), squeeze=False)
    for ax, w in zip(axes.flat, names):
        quality = qualities.get(w) or q.classification([])
        for m in methods:
            curves = [r["per_epoch"] for r in runs if r["workload"] == w and r["method"] == m.label]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            xs = np.mean([[e["train_seconds_cumulative"] for e in c[:n]] for c in curves], axis=0)
            ys = np.mean([[quality.scale * (e.get("quality") or 0) for e in c[:n]] for c in curves], axis=0)
            ax.plot(xs, ys, marker="o", ms=3, lw=2.2 if m.label == PLAIN else 1.2, color=colors[m.label], label=m.label)
        targets = summary[w][PLAIN]["tta_target"]
        if targets:
            ax.axhline(quality.scale * float(np.mean(targets)), ls="--", color="gray", lw=0.8,
                       label=f"plain final {'-' if quality.higher_is_better else '+'} {quality.tolerance:g} "
                             f"{quality.delta_unit}")
        ax.set_title(w)
        ax.set_xlabel("cumulative train wall time (s, evaluation excluded)")
        ax.set_ylabel(f"{quality.label} ({'higher' if quality.higher_is_better else 'lower'} is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("Quality vs train time (mean over seeds)")
    fig.tight_layout()
    paths = [stem + "_accuracy_vs_time.png"]
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # Pareto: x = compute share (backpropagated samples / the full plain run's), y = gain over the full plain run.
    fig, axes = plt.subplots(len(names), 2, figsize=(12, 3.8 * len(names)), squeeze=False)
    for (ax_all, ax_worst), w in zip(axes, names):
        quality = qualities.get(w) or q.classification([])
        unit = quality.delta_unit if quality.higher_is_better else f"-Δ {quality.delta_unit}"
        curve = same_compute_curve(summary[w], same_compute or [], runs, w, quality)
        for ax, index, what in ((ax_all, 1, quality.name), (ax_worst, 2, f"worst-{quality.group_kind} {quality.name}")):
            if curve:
                ax.plot([c[0] for c in curve], [c[index] for c in curve], color="gray", lw=1.5, marker="s", ms=4,
                        label="plain Trainer at the same compute")
            for m in methods:
                e = summary[w][m.label]
                if m.label == PLAIN or not e["seeds"]:
                    continue
                sign = 1 if quality.higher_is_better else -1  # deltas are method - plain, in shown units
                gain = sign * np.mean(e["quality_delta"] if index == 1 else e["worst_group_delta"])
                ax.scatter(np.mean(e["backprop_ratio"]), gain, color=colors[m.label], s=45,
                           edgecolors="black", linewidths=0.4, label=m.label, zorder=3)
            ax.axhline(-quality.tolerance, ls="--", color="gray", lw=0.8)
            ax.axhline(0, color="black", lw=0.5)
            ax.set_title(f"{w}: {what}")
            ax.set_xlabel("compute share (backpropagated samples / full plain run's)")
            ax.set_ylabel(f"gain vs full plain ({unit}; higher is better)")
            ax.grid(alpha=0.3)
        ax_all.legend(fontsize=7, ncol=2)
    fig.suptitle("Quality vs compute: a method must sit above the plain Trainer's same-compute curve (gray)")
    fig.tight_layout()
    paths.append(stem + "_pareto.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


# --- command -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.leaderboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=list(workloads.SETTINGS), choices=list(workloads.SETTINGS))
    parser.add_argument("--methods", nargs="+", default=None,
                        help="[LABEL=]method[:field=value,...] (default: plain + every registered strategy, the "
                             "paper's baselines with lr_compensation=none)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None, help=timing.THREADS_HELP)
    parser.add_argument("--no-same-compute", action="store_true",
                        help="skip the plain Trainer's same-compute runs (and the '≥ same-compute?' verdict)")
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
    """Seeds x workloads x methods, interleaved, each (seed, workload) followed by its same-compute runs;
    a failing run is reported and skipped (unless --fail-fast)."""
    prepared: dict[str, workloads.Prepared] = {}
    runs, same_compute, failures = [], [], []
    total, done, started = len(args.seeds) * len(args.workloads) * len(methods), 0, time.perf_counter()

    def attempt(head, fn, **where):
        try:
            return fn()
        except Exception as err:
            if args.fail_fast:
                raise
            traceback.print_exc()
            failures.append({**where, "error": f"{type(err).__name__}: {err}"})
            print(f"{head} FAILED ({failures[-1]['error']})", flush=True)
            return None

    for i, seed in enumerate(args.seeds):
        for name in args.workloads:
            if name not in prepared:  # data built once, outside every timed region
                settings = flags.dataclass_from_args(workloads.SETTINGS[name], args, prefix=name + "_")
                prepared[name] = workloads.build(name, settings, args.cache_dir, checkpoint_dir)
            wl = prepared[name]
            shift = i % len(methods)
            mine = {}
            for method in methods[shift:] + methods[:shift]:
                done += 1
                head = f"[leaderboard] {done}/{total} seed {seed} {name} {method.label}:"
                r = attempt(head, lambda: run_one(method, seed, wl), workload=name, method=method.label, seed=seed)
                if r is None:
                    continue
                runs.append(r)
                mine[method.label] = r
                elapsed = time.perf_counter() - started
                print(f"{head} train {r['train_seconds']:.1f} s, {_shown(wl.quality, r)}, backprop "
                      f"{r['backpropagated']} samples (elapsed {elapsed / 60:.1f} min, about "
                      f"{elapsed / done * (total - done) / 60:.1f} min left, same-compute runs aside)", flush=True)
            plain = mine.get(PLAIN)
            if args.no_same_compute or plain is None:
                continue
            needed = sorted({same_compute_steps(r, plain) for label, r in mine.items() if label != PLAIN}
                            - {plain["optimizer_steps"]})
            have = {c["max_steps"] for c in same_compute if c["workload"] == name and c["seed"] == seed}
            for steps in needed:
                if steps in have:
                    continue
                share = steps / plain["optimizer_steps"]
                head = f"[leaderboard] seed {seed} {name} plain at the same compute ({steps} steps, share {share:.3f}):"
                c = attempt(head, lambda: run_one(PLAIN_METHOD, seed, wl, max_steps=steps), workload=name,
                            method=SAME_COMPUTE, seed=seed, max_steps=steps)
                if c is None:
                    continue
                c["share"] = share
                same_compute.append(c)
                print(f"{head} train {c['train_seconds']:.1f} s, {_shown(wl.quality, c)}, "
                      f"{c['epochs_trained']:.2f} epochs, final LR {c['final_learning_rate']}", flush=True)
    return runs, same_compute, failures, prepared


def _shown(quality: q.Quality, r: dict) -> str:
    value, worst = quality.shown(r["final_quality"]), quality.shown(r["final_worst_group"])
    return (f"{quality.name} {value if value is not None else float('nan'):.3f}, worst {quality.group_kind} "
            f"{r['final_worst_group_name']} {worst if worst is not None else float('nan'):.3f}")


def streak_table(runs: list[dict]) -> str:
    """Per workload and hiding method: how many samples had each longest hidden streak (summed over seeds)."""
    rows, width = {}, 0
    for r in runs:
        histogram = r.get("longest_hidden_streak_histogram")
        if histogram is None:
            continue
        key = (r["workload"], r["method"], r.get("max_hidden_epochs"))
        total = rows.setdefault(key, [])
        total.extend([0] * (len(histogram) - len(total)))
        for streak, count in enumerate(histogram):
            total[streak] += count
        width = max(width, len(histogram))
    if not rows:
        return ""
    headers = ["workload", "method", "max_hidden_epochs", "longest streak"] + [str(k) for k in range(width)]
    body = [[w, m, str(cap), str(len(total) - 1 - next(i for i, c in enumerate(reversed(total)) if c))]
            + [str(total[k]) if k < len(total) else "0" for k in range(width)] for (w, m, cap), total in rows.items()]
    return ("\n\nLongest hidden streak per sample (consecutive epochs left out; samples summed over the seeds, "
            "by streak length 0, 1, 2, ...):\n\n" + formatting.markdown_table(headers, body))


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    threads = timing.set_threads(args.threads)
    methods = parse_methods(args.methods or default_methods())
    command = report.command_line("benchmarks.leaderboard", argv)
    checkpoint_dir = args.checkpoint_dir or trainers.tempdir("kakurenbo_leaderboard_deit_")
    record = {"benchmark": "leaderboard", "command": command, "machine": report.machine_info(),
              "seeds": args.seeds, "methods": [asdict(m) for m in methods], "same_compute": not args.no_same_compute,
              "workloads": {}}
    try:
        runs, same_compute, failures, prepared = run_all(args, methods, checkpoint_dir)
    finally:
        if args.checkpoint_dir is None:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    qualities = {name: wl.quality for name, wl in prepared.items()}
    for name, wl in prepared.items():
        info = {k: v for k, v in wl.info.items() if k != "checkpoint_dir"}
        record["workloads"][name] = {"description": wl.description, "settings": asdict(wl.settings),
                                     "train_samples": len(wl.train), "test_samples": len(wl.test),
                                     "quality": wl.quality.describe(), **info}
    summary = summarize(runs, args.workloads, methods, args.seeds, qualities, same_compute)
    md = tables(summary, methods, qualities)
    described = "\n".join(f"- `{name}`: {record['workloads'][name]['description']}" for name in args.workloads
                          if name in record["workloads"])
    same = ("skipped (`--no-same-compute`)" if args.no_same_compute else
            "the plain Trainer trained for max_steps = round(share x its full run's steps), share = the method's "
            "backpropagated samples / the full plain run's, its cosine schedule and warm-up fitted to those steps "
            f"({len(same_compute)} runs, shared by methods of equal share)")
    markdown = (
        f"`{command}` ({threads} torch thread(s), {record['machine']['cpu']}, {record['machine']['date']}). "
        f"Mean ± std over seeds {args.seeds}; ratios and deltas (method - reference, in top-1 points or eval-loss "
        f"nats) are paired with plain of the same seed. Full: the plain Trainer for the workload's epochs. Same "
        f"compute: {same}. Worst group: the mean top-1 of the lowest tenth of the classes (the lowest class with 10 or fewer), or the highest per-subgroup eval loss. "
        f"Time-to-quality ratio: train time to reach plain's final quality minus the tolerance (0.5 top-1 points; "
        f"+{q.LM_TOLERANCE_NATS} nats of eval loss), over plain's own. ≥ same-compute?: no worse than the "
        f"same-compute run, mean over seeds, overall and on the worst group (declared subgroups: on each one). "
        f"LR rule: the paper's baselines "
        f"({', '.join(PUBLISHED_WITHOUT_LR_COMPENSATION)}) run by default with their published rule, no LR "
        f"compensation (`lr_compensation=none`); kakurenbo and the others at the library defaults; each method's "
        f"overrides are in the JSON.\n\n{described}\n\n{md}")
    markdown += streak_table(runs)
    if failures:
        markdown += "\n\nFailed runs (left out of the table):\n" + "\n".join(
            f"- {f['workload']} / {f['method']} / seed {f['seed']}"
            + (f" / {f['max_steps']} steps" if f.get("max_steps") else "") + f": {f['error']}" for f in failures)
    record.update(runs=runs, same_compute_runs=same_compute, failures=failures, summary=summary)
    stem = os.path.splitext(args.output)[0]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    if not args.no_plots:
        record["plots"] = plot(runs, summary, methods, stem, qualities, same_compute)
    report.publish(args.output, record, markdown)
    with open(stem + ".md", "w") as f:
        f.write(f"# Leaderboard\n\n{markdown}\n")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
