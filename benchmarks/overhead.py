"""Overhead of KakurenboTrainer next to the plain Trainer, on two jobs (`--job`).

`--job f0` (the default): nothing hidden (hiding_fraction=0) on the reference ViT workload. The
optimisation must be bit-identical to `transformers.Trainer` (same batches, same losses), and the
per-sample bookkeeping (index-carrying dataset and collator, per-sample statistics from the
logits, the statistics table) should cost at most 2% of wall time. Runs are interleaved
(Trainer, Kakurenbo, Kakurenbo, Trainer, ...) over `--repeats` pairs with the same seed; the
ratio is median(Kakurenbo) / median(Trainer) train runtime, beside the per-pair ratios. The loss
histories (loss logged every step) ARE checked: any difference raises (exit status 1) after the
outputs are written.

`--job f0_accounting`: the same workload, the work KakurenboTrainer adds to one training step at
F = 0, timed piece by piece (min over many repeats, so other load on a shared machine barely moves
it): the indexed batched read with its RNG snapshot, the index collator, the per-sample statistics
of the logits and their record, and the epoch's flush spread over its steps; over one plain
training step (forward, backward, optimizer step on the same batch). The estimate 1 + added / step
leaves out what both trainers share; it is what the wall-time ratio of `--job f0` measures when
the machine is quiet enough to resolve 1%.

`--job loading_bound`: a job whose time goes into reading rows, not into the model. A linear
classifier (a tiny `PreTrainedModel`: logits + labels, so the built-in classification statistics
apply) on a `datasets.Dataset` of `--num-samples` rows (a fixed-size list of float32 features
and an int label, learnable: a random linear teacher), batch 4096, `--epochs` epochs,
`dataloader_num_workers=0`, `default_data_collator`, KakurenboTrainer with
hiding_fraction=`--hiding-fraction` (0.3, no decay). The plain Trainer and KakurenboTrainer
alternate over `--seeds` (one pair per seed, the order flipped every other seed). The target:
median(Kakurenbo) / median(Trainer) train runtime <= visible share + 0.03, where the visible
share is the samples KakurenboTrainer backpropagated / (epochs x N) (`trainer.sample_counters`).

Targets are printed as PASS/MISS and never asserted: timings on a shared machine are noisy. One
torch thread by default (`--threads`); the 1-minute load before and after the timed runs is
recorded with a `quiet` verdict (false: not worth committing).

One record holds both jobs: a run writes its job into the record at `--output` and keeps the
other job's results found there. `ratios` holds each job's ratio, target and the exact command
that measured it; the F=0 job's fields are also at the top level, the loading-bound job's under
`loading_bound`.

Usage:

    python -m benchmarks.overhead                       # F=0: reference ViT workload, 2 epochs, 5 pairs
    python -m benchmarks.overhead --repeats 9 --epochs 3
    python -m benchmarks.overhead --job f0_accounting   # added work per step, min of repeats
    python -m benchmarks.overhead --job loading_bound   # 1M rows, batch 4096, 3 epochs, seeds 0-4
    python -m benchmarks.overhead --job loading_bound --num_samples 20000 --epochs 2 --seeds 1  # smoke size
    python -m benchmarks.overhead [--job loading_bound] --help

Output: Markdown tables on stdout, JSON at `--output` (default benchmarks/results/overhead.json).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass

from . import builders, flags, formatting, report, timing, trainers

TARGET_RATIO = 1.01  # the F=0 jobs: Kakurenbo / Trainer
VISIBLE_MARGIN = 0.03  # the loading-bound job: Kakurenbo / Trainer <= visible share + this
JOBS = ("f0", "f0_accounting", "loading_bound")
JOB_TITLES = {"f0": "F = 0 (reference ViT)", "f0_accounting": "F = 0, added work per step (reference ViT)",
              "loading_bound": "loading-bound (linear model, Arrow rows)"}
# The F=0 job's fields, at the top level of the record (as before the loading-bound job existed).
F0_KEYS = ("workload", "target_ratio", "runs", "ratio_median", "ratio_min", "pair_ratios", "verdict",
           "losses_identical", "kakurenbo_losses_identical", "first_difference", "load")


@dataclass
class LoadingBound(flags.Training):
    """The loading-bound job (flags of the same names, dashes or underscores)."""

    epochs: int = 3
    batch_size: int = 4096
    eval_batch_size: int = 4096
    lr: float = 0.1
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    lr_scheduler: str = "linear"
    num_samples: int = 1_000_000
    num_features: int = 8
    num_classes: int = 2
    data_seed: int = 0
    data_format: str = "torch"  # python | numpy | torch: what the Dataset returns (see builders.linear_dataset)
    hiding_fraction: float = 0.3

    def kakurenbo_method(self) -> str:
        return f"kakurenbo:hiding_fraction={self.hiding_fraction},hiding_decay_milestones=,hiding_decay_factors="


def build_parser(job: str = "f0") -> argparse.ArgumentParser:
    """The flags of `job` (`--job loading_bound --help` lists the loading-bound job's)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.overhead", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--job", choices=JOBS, default="f0", help="which job to time (default: f0)")
    parser.add_argument("--threads", type=int, default=None, help=timing.THREADS_HELP)
    parser.add_argument("--output", default=os.path.join(report.RESULTS_DIR, "overhead.json"),
                        help="the record; the other job's results already in it are kept")
    if job == "f0":
        parser.add_argument("--repeats", type=int, default=5, help="interleaved (Trainer, Kakurenbo) pairs")
        parser.add_argument("--seed", type=int, default=0)
        flags.add_workload_arguments(parser, epochs=2)
    elif job == "f0_accounting":
        parser.add_argument("--step-repeats", "--step_repeats", type=int, default=30, dest="step_repeats",
                            help="timed plain training steps (the minimum is kept)")
        parser.add_argument("--op-repeats", "--op_repeats", type=int, default=300, dest="op_repeats",
                            help="timed calls of each added piece (the minimum is kept)")
        parser.add_argument("--seed", type=int, default=0)
        flags.add_workload_arguments(parser, epochs=2)
    else:
        parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                            help="one interleaved (Trainer, Kakurenbo) pair per seed")
        flags.add_dataclass_arguments(parser, LoadingBound(), title="loading-bound job",
                                      choices={"data_format": list(builders.LINEAR_FORMATS)}, underscore_aliases=True)
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--job", choices=JOBS, default="f0")
    job = pre.parse_known_args(argv)[0].job
    return build_parser(job).parse_args(argv)


# --- the F = 0 job -----------------------------------------------------------------------------


def run_one(method: str, w: flags.Workload, train_dataset, seed: int) -> dict:
    """One F=0-job run: train, with the loss and grad norm logged at every step."""
    model = builders.build_model(w, seed)
    out_dir = trainers.tempdir("kakurenbo_overhead_")
    trainer = trainers.make_trainer(method, w, model, train_dataset, None, seed, out_dir, evaluate=False,
                                    logging_steps=1)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = trainer.train()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    grad_norms = [e.get("grad_norm") for e in trainer.state.log_history if "loss" in e]
    record = {"method": method, "wall_seconds": wall, "cpu_seconds": cpu,
              "train_runtime": result.metrics["train_runtime"], "optimizer_steps": trainer.state.global_step, "losses": losses, "grad_norms": grad_norms}
    del trainer, model
    gc.collect()
    shutil.rmtree(out_dir, ignore_errors=True)
    return record


def f0_job(args, command: str, threads: int) -> tuple[dict, dict, str]:
    """(top-level fields, ratio entry, Markdown section) of the F=0 job."""
    w = flags.workload_from_args(args)
    train_dataset, _ = builders.prepare_data(w)
    methods = {"baseline": "baseline", "kakurenbo_f0": "kakurenbo:hiding_fraction=0.0"}
    runs = {name: [] for name in methods}
    load_before = timing.machine_load(threads)
    for i in range(args.repeats):
        order = list(methods) if i % 2 == 0 else list(reversed(methods))  # A B, B A, ...: no position bias
        for name in order:
            r = run_one(methods[name], w, train_dataset, args.seed)
            runs[name].append(r)
            print(f"[overhead f0] repeat {i} {name}: {r['wall_seconds']:.2f} s", flush=True)
    load = {"before": load_before, "after": timing.machine_load(threads)}
    load["quiet"] = timing.quiet_verdict(load["before"], load["after"])

    reference = runs["baseline"][0]
    identical = all(r["losses"] == reference["losses"] for rs in runs.values() for r in rs)
    kak_identical = all(r["losses"] == reference["losses"] for r in runs["kakurenbo_f0"])
    first_diff = None
    for r in runs["kakurenbo_f0"]:
        for step, (a, b) in enumerate(zip(r["losses"], reference["losses"])):
            if a != b:
                first_diff = {"step": step, "kakurenbo": a, "trainer": b}
                break
        if first_diff:
            break
    base_t = [r["train_runtime"] for r in runs["baseline"]]
    kak_t = [r["train_runtime"] for r in runs["kakurenbo_f0"]]
    pair_ratios = [k / b for k, b in zip(kak_t, base_t)]
    ratio = statistics.median(kak_t) / statistics.median(base_t)
    verdict = "PASS" if ratio <= TARGET_RATIO else "MISS"
    cpu_ratio = _cpu_ratio(runs["kakurenbo_f0"], runs["baseline"])
    rows = [
        ["Trainer", formatting.fmt_mean_std(base_t, digits=2), f"{statistics.median(base_t):.2f}",
         f"{min(base_t):.2f}", reference["optimizer_steps"], ""],
        ["KakurenboTrainer (F=0)", formatting.fmt_mean_std(kak_t, digits=2), f"{statistics.median(kak_t):.2f}",
         f"{min(kak_t):.2f}", runs["kakurenbo_f0"][0]["optimizer_steps"],
         "identical" if kak_identical else f"DIFFERENT (first: {first_diff})"],
    ]
    md = formatting.markdown_table(["trainer", "train s (mean ± std [min–max])", "median s", "min s", "opt. steps",
                                    "loss history vs Trainer"], rows)
    md += (f"\n\nWall-time ratio Kakurenbo(F=0) / Trainer: median {ratio:.4f} "
           f"(min-over-min {min(kak_t) / min(base_t):.4f}; per pair {formatting.fmt_mean_std(pair_ratios, digits=4)}) "
           f"-> target <= {TARGET_RATIO}: **{verdict}** (not asserted){_cpu_note(cpu_ratio)}\n"
           f"Loss histories identical across all {2 * args.repeats} runs "
           f"({len(reference['losses'])} logged steps each): "
           f"**{identical}**" + _load_note(load))
    fields = dict(workload=vars(args).copy(), target_ratio=TARGET_RATIO, runs=runs, ratio_median=ratio,
                  ratio_min=min(kak_t) / min(base_t), pair_ratios=pair_ratios, verdict=verdict,
                  losses_identical=identical, kakurenbo_losses_identical=kak_identical, first_difference=first_diff,
                  load=load, cpu_ratio_median=cpu_ratio)
    entry = {"command": command, "ratio": ratio, "cpu_ratio": cpu_ratio, "target": TARGET_RATIO, "verdict": verdict,
             "quiet": load["quiet"]}
    return fields, entry, md


# --- the F = 0 job, added work per step ---------------------------------------------------------


def _min_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def f0_accounting_job(args, command: str, threads: int) -> tuple[dict, dict, str]:
    """(the `f0_accounting` sub-record, ratio entry, Markdown section): added work per step at F=0."""
    import numpy as np
    import torch

    from kakurenbo_hf.core.stats import SampleStats
    from kakurenbo_hf.distributed.recorder import StatsRecorder
    from kakurenbo_hf.hf.indexing import IndexCollator, IndexedDataset
    from kakurenbo_hf.hf.resume import RngReplay
    from kakurenbo_hf.tasks import auto_statistics

    w = flags.workload_from_args(args)
    train_dataset, _ = builders.prepare_data(w)
    num_samples = len(train_dataset)
    model = builders.build_model(w, args.seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=w.lr)
    order = np.random.default_rng(args.seed).permutation(num_samples)[: w.batch_size].tolist()
    rows = train_dataset.__getitems__(order)
    batch = builders.collate(rows)

    def plain_step():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    plain_step()  # warm up (optimizer state, allocator)
    step = _min_seconds(plain_step, args.step_repeats)
    indexed = IndexedDataset(train_dataset)
    indexed.on_read_start = RngReplay(lambda checkpoint: None).remember  # as in training: a snapshot per read
    collator = IndexCollator(builders.collate)
    indexed_rows = indexed.__getitems__(order)
    with torch.no_grad():
        outputs = model(**batch)
    labels = batch["labels"]
    statistics_values = auto_statistics(outputs, labels, model)
    indices = torch.as_tensor(order)
    recorder = StatsRecorder(SampleStats(num_samples), num_samples=num_samples)
    steps_per_epoch = -(-num_samples // w.batch_size)

    def record():
        recorder.add(indices, *statistics_values, step=0)
        if len(recorder._chunks) > steps_per_epoch:
            recorder._chunks.clear()

    def epoch_flush():  # one epoch's records, written to the table
        for start in range(0, num_samples, w.batch_size):
            recorder.add(torch.arange(start, min(start + w.batch_size, num_samples)), *(
                value[: min(w.batch_size, num_samples - start)] for value in statistics_values), step=0)
        recorder.flush()

    repeats = args.op_repeats
    pieces = {
        "read (indexed, RNG snapshot) - read": _min_seconds(lambda: indexed.__getitems__(order), repeats)
        - _min_seconds(lambda: train_dataset.__getitems__(order), repeats),
        "collate (index collator) - collate": _min_seconds(lambda: collator(indexed_rows), repeats)
        - _min_seconds(lambda: builders.collate(rows), repeats),
        "per-sample statistics of the logits": _min_seconds(lambda: auto_statistics(outputs, labels, model), repeats),
        "record (recorder.add)": _min_seconds(record, repeats),
        "flush, per step (one epoch's / its steps)": _min_seconds(epoch_flush, max(3, repeats // 50))
        / steps_per_epoch,
    }
    added = sum(max(0.0, seconds) for seconds in pieces.values())
    ratio = 1.0 + added / step
    verdict = "PASS" if ratio <= TARGET_RATIO else "MISS"
    rows_md = [[name, f"{seconds * 1e6:.1f}", f"{100 * seconds / step:.3f}"] for name, seconds in pieces.items()]
    rows_md.append(["**added, total**", f"{added * 1e6:.1f}", f"{100 * added / step:.3f}"])
    md = (f"One plain training step (batch {w.batch_size}, forward + backward + AdamW step): {step * 1e3:.2f} ms "
          f"(min of {args.step_repeats}); each added piece: min of {repeats}.\n\n"
          + formatting.markdown_table(["added work", "µs per step", "% of a step"], rows_md)
          + f"\n\nEstimated ratio Kakurenbo(F=0) / Trainer: 1 + added / step = {ratio:.4f} -> target <= "
          f"{TARGET_RATIO}: **{verdict}** (not asserted)")
    sub_record = {"command": command, "threads": threads, "step_seconds": step, "pieces_seconds": pieces,
                  "added_seconds": added, "ratio_estimate": ratio, "target": TARGET_RATIO, "verdict": verdict,
                  "markdown": md}
    entry = {"command": command, "ratio": ratio, "target": TARGET_RATIO, "verdict": verdict}
    return sub_record, entry, md


# --- the loading-bound job ---------------------------------------------------------------------


def run_loading_bound(method: str, lb: LoadingBound, dataset, seed: int) -> dict:
    """One loading-bound run: train (no evaluation), count what was hidden and backpropagated."""
    from transformers import default_data_collator

    model = builders.build_linear_model(lb.num_features, lb.num_classes, seed)
    out_dir = trainers.tempdir("kakurenbo_overhead_lb_")
    trainer = trainers.make_trainer(method, lb, model, dataset, None, seed, out_dir, evaluate=False,
                                    data_collator=default_data_collator)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = trainer.train()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    n, epochs = len(dataset), lb.epochs
    hidden = [int(h["hidden"]) for h in trainers.hiding_log(trainer)]
    counters = getattr(trainer, "sample_counters", None)
    if counters is not None:
        counts = {key: int(value) for key, value in counters.items()} | {"counts_from": "sample_counters"}
    else:  # the plain Trainer trains every sample of every epoch
        counts = {"forwarded": epochs * n, "backpropagated": epochs * n, "refresh_forwarded": 0,
                  "counts_from": "plain Trainer (every sample)"}
    record = {"method": method, "seed": seed, "wall_seconds": wall, "cpu_seconds": cpu, "train_runtime": result.metrics["train_runtime"],
              "optimizer_steps": trainer.state.global_step, "train_loss": result.metrics.get("train_loss"),
              "hidden_per_epoch": hidden, **counts,
              "visible_share": counts["backpropagated"] / (epochs * n)}
    del trainer, model
    gc.collect()
    shutil.rmtree(out_dir, ignore_errors=True)
    return record


def loading_bound_job(args, command: str, threads: int) -> tuple[dict, dict, str]:
    """(the `loading_bound` sub-record, ratio entry, Markdown section) of the loading-bound job."""
    from kakurenbo_hf import KakurenboArguments

    lb = flags.dataclass_from_args(LoadingBound, args)
    started = time.perf_counter()
    dataset = builders.linear_dataset(lb.num_samples, lb.num_features, lb.num_classes, lb.data_seed, lb.data_format)
    prepare_seconds = time.perf_counter() - started
    methods = {"baseline": "baseline", "kakurenbo": lb.kakurenbo_method()}
    runs = {name: [] for name in methods}
    load_before = timing.machine_load(threads)
    for i, seed in enumerate(args.seeds):
        order = list(methods) if i % 2 == 0 else list(reversed(methods))  # A B, B A, ...: no position bias
        for name in order:
            r = run_loading_bound(methods[name], lb, dataset, seed)
            runs[name].append(r)
            print(f"[overhead loading_bound] seed {seed} {name}: {r['train_runtime']:.2f} s "
                  f"(visible share {r['visible_share']:.3f})", flush=True)
    load = {"before": load_before, "after": timing.machine_load(threads)}
    load["quiet"] = timing.quiet_verdict(load["before"], load["after"])

    base_t = [r["train_runtime"] for r in runs["baseline"]]
    kak_t = [r["train_runtime"] for r in runs["kakurenbo"]]
    pair_ratios = [k / b for k, b in zip(kak_t, base_t)]
    ratio = statistics.median(kak_t) / statistics.median(base_t)
    cpu_ratio = _cpu_ratio(runs["kakurenbo"], runs["baseline"])
    visible = statistics.fmean(r["visible_share"] for r in runs["kakurenbo"])
    target = visible + VISIBLE_MARGIN
    within = ratio <= target
    verdict = "PASS" if within else "MISS"
    n = lb.num_samples
    warmup = KakurenboArguments().hiding_warmup_epochs  # nothing is hidden before
    hidden_epochs = [h / n for r in runs["kakurenbo"] for h in r["hidden_per_epoch"][warmup:]]
    hidden_share = statistics.fmean(hidden_epochs) if hidden_epochs else 0.0
    rows = [[label, formatting.fmt_mean_std(times, digits=2), f"{statistics.median(times):.2f}",
             f"{min(times):.2f}", rs[0]["optimizer_steps"], formatting.fmt_mean_std([r["visible_share"] for r in rs])]
            for label, times, rs in (("Trainer", base_t, runs["baseline"]),
                                     (f"KakurenboTrainer (F={lb.hiding_fraction})", kak_t, runs["kakurenbo"]))]
    md = (f"Linear model on {n:,} Arrow rows ({lb.num_features} float32 features, {lb.num_classes} classes, "
          f"format {lb.data_format}), batch {lb.batch_size}, {lb.epochs} epochs, seeds {args.seeds}:\n\n"
          + formatting.markdown_table(["trainer", "train s (mean ± std [min–max])", "median s", "min s",
                                       "opt. steps", "visible share"], rows)
          + f"\n\nTime ratio Kakurenbo / Trainer: median {ratio:.4f} (per pair "
          f"{formatting.fmt_mean_std(pair_ratios, digits=4)}); visible share {visible:.4f} (hidden per epoch after "
          f"the warm-up: {hidden_share:.3f}) -> target ratio <= {visible:.4f} + {VISIBLE_MARGIN} = {target:.4f}: "
          f"**{verdict}** (not asserted){_cpu_note(cpu_ratio)}" + _load_note(load))
    sub = {"command": command, "settings": asdict(lb), "seeds": args.seeds,
           "threads": threads, "data_prepare_seconds": prepare_seconds, "methods": methods, "runs": runs,
           "train_seconds": {"baseline": base_t, "kakurenbo": kak_t}, "ratio_median": ratio,
           "pair_ratios": pair_ratios, "cpu_ratio_median": cpu_ratio, "visible_share": visible, "hidden_share": 1 - visible,
           "hidden_share_per_hiding_epoch": hidden_share,
           "target_ratio": target, "within_target": within, "verdict": verdict, "load": load, "markdown": md}
    entry = {"command": command, "ratio": ratio, "cpu_ratio": cpu_ratio, "visible_share": visible, "target": target,
             "within_target": within, "verdict": verdict, "quiet": load["quiet"]}
    return sub, entry, md


# --- the record ----------------------------------------------------------------------------------


def _cpu_ratio(kakurenbo_runs: list[dict], baseline_runs: list[dict]) -> float | None:
    """Median process CPU time of the Kakurenbo runs over the plain runs' (None where a run has none). On a
    shared VM the wall time also counts time the machine gave to others; this process's CPU time does not."""
    if not all("cpu_seconds" in r for r in kakurenbo_runs + baseline_runs):
        return None
    return (statistics.median(r["cpu_seconds"] for r in kakurenbo_runs)
            / statistics.median(r["cpu_seconds"] for r in baseline_runs))


def _cpu_note(cpu_ratio: float | None) -> str:
    return "" if cpu_ratio is None else f"; process CPU-time ratio (medians) {cpu_ratio:.4f}"


def _load_note(load: dict) -> str:
    if load["quiet"] is False:
        return (f"\nMachine NOT quiet (1-min load {load['before']['loadavg'][0]} before, "
                f"{load['after']['loadavg'][0]} after, {load['after']['cpu_count']} CPUs): "
                "do not commit these timings.")
    return ""


def _previous_jobs(previous: dict | None) -> dict:
    """job -> (fields, ratio entry, Markdown section) found in an existing overhead record."""
    if not previous or previous.get("benchmark") != "overhead":
        return {}
    ratios = previous.get("ratios") or {}
    sections = previous.get("sections") or {}
    found = {}
    if "ratio_median" in previous:  # the F=0 job (records older than `ratios` hold only it)
        entry = ratios.get("f0") or {"command": previous.get("command"), "ratio": previous["ratio_median"],
                                     "target": previous.get("target_ratio", TARGET_RATIO),
                                     "verdict": previous.get("verdict"),
                                     "date": previous.get("machine", {}).get("date"),
                                     "cpu": previous.get("machine", {}).get("cpu")}
        found["f0"] = ({k: previous[k] for k in F0_KEYS if k in previous}, entry,
                       sections.get("f0", previous.get("markdown", "")))
    if "f0_accounting" in previous and "f0_accounting" in ratios:
        sub = previous["f0_accounting"]
        found["f0_accounting"] = ({"f0_accounting": sub}, ratios["f0_accounting"], sub.get("markdown", ""))
    if "loading_bound" in previous and "loading_bound" in ratios:
        sub = previous["loading_bound"]
        found["loading_bound"] = ({"loading_bound": sub}, ratios["loading_bound"], sub.get("markdown", ""))
    return found


def ratios_table(ratios: dict) -> str:
    rows = []
    for job in JOBS:
        if job not in ratios:
            continue
        e = ratios[job]
        target = (f"<= visible {e['visible_share']:.4f} + {VISIBLE_MARGIN} = {e['target']:.4f}"
                  if job == "loading_bound" else f"<= {e['target']}")
        rows.append([JOB_TITLES[job], f"`{e['command']}`", f"{e['ratio']:.4f}", target, e["verdict"]])
    return formatting.markdown_table(["job", "command", "time ratio Kakurenbo / Trainer (median)", "target",
                                      "verdict"], rows)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    threads = timing.set_threads(args.threads)
    command = report.command_line("benchmarks.overhead", argv)
    record = {"benchmark": "overhead", "command": command, "machine": report.machine_info(), "job": args.job}
    if args.job == "f0":
        fields, entry, md = f0_job(args, command, threads)
    elif args.job == "f0_accounting":
        sub, entry, md = f0_accounting_job(args, command, threads)
        fields = {"f0_accounting": sub}
    else:
        sub, entry, md = loading_bound_job(args, command, threads)
        fields = {"loading_bound": sub}
    entry.update(date=record["machine"]["date"], cpu=record["machine"]["cpu"])
    jobs = _previous_jobs(report.read_json(args.output))
    jobs[args.job] = (fields, entry, md)
    kept = [job for job in jobs if job != args.job]
    for job in JOBS:
        if job in jobs:
            record.update(jobs[job][0])
    record["ratios"] = {job: jobs[job][1] for job in JOBS if job in jobs}
    record["sections"] = {job: jobs[job][2] for job in JOBS if job in jobs}
    markdown = ratios_table(record["ratios"]) + "".join(
        f"\n\n### {JOB_TITLES[job]}{' (kept from the existing record)' if job in kept else ''}\n\n"
        f"`{jobs[job][1]['command']}`\n\n{jobs[job][2]}" for job in JOBS if job in jobs)
    report.publish(args.output, record, markdown)
    if args.job == "f0" and not record["kakurenbo_losses_identical"]:
        raise AssertionError(f"KakurenboTrainer(hiding_fraction=0) loss history differs from Trainer's: "
                             f"{record['first_difference']}")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
