"""Per-epoch bookkeeping at scale: bytes, extra memory and epoch-boundary time per rank.

The end-to-end job of issue 11: N samples of 8 features (a separable 2-class problem), a linear
model, batch 4096 per rank, 3 epochs, hiding_fraction 0.3 (no decay), P processes, KAKURENBO (a sharded
table: see `kakurenbo_hf/core/sharding.py`). For each N the
plain `Trainer` and `KakurenboTrainer` run the same job in fresh launches; each rank reports its
peak resident memory (VmHWM), the time between the last step of epoch 1 (the first hiding epoch)
and the first step of epoch 2 (refresh, statistics, selection, order: the epoch boundary), and the
bytes it sent and received for the hiding bookkeeping. Reported per rank: extra peak memory over
the plain Trainer (MiB, and MiB per million samples), boundary time and its excess over the plain
Trainer's (s, and s per million samples), bytes per epoch.

    python -m benchmarks.scale --sizes 100000 1000000 2000000 --processes 2
    python -m benchmarks.scale --worker ...      # one launch (internal)

Output: Markdown table on stdout, JSON at `--output` (default benchmarks/results/scale.json).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from . import formatting, report


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(options) -> None:
    import numpy as np
    import torch
    from torch import nn
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from kakurenbo_hf import KakurenboTrainer, KakurenboTrainingArguments

    torch.set_num_threads(1)
    n = options.num_samples
    rng = np.random.default_rng(0)
    features = rng.normal(size=(n, 8)).astype(np.float32)
    labels = (features @ np.linspace(1, 2, 8, dtype=np.float32) > 0).astype(np.int64)

    class Rows(torch.utils.data.Dataset):
        """In-memory rows, read a batch at a time (the data path is not what is measured)."""

        def __len__(self):
            return n

        def __getitem__(self, index):
            return {"x": features[index], "labels": labels[index]}

        def __getitems__(self, indices):
            return [{"x": features[i], "labels": labels[i]} for i in indices]

    def collate(rows):
        return {"x": torch.from_numpy(np.stack([row["x"] for row in rows])),
                "labels": torch.tensor([row["labels"] for row in rows])}

    data = Rows()

    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(8, 2)

        def forward(self, x, labels=None):
            logits = self.layer(x)
            return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}

    class Boundary(TrainerCallback):
        def __init__(self):
            self.last_end, self.gaps, self.first_of_epoch = None, {}, True

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.first_of_epoch = True

        def on_step_begin(self, args, state, control, **kwargs):
            if self.first_of_epoch and self.last_end is not None:
                self.gaps[int(round(state.epoch or 0))] = time.perf_counter() - self.last_end
            self.first_of_epoch = False

        def on_step_end(self, args, state, control, **kwargs):
            self.last_end = time.perf_counter()

    common_args = dict(output_dir=tempfile.mkdtemp(prefix="scale_"), num_train_epochs=3, per_device_train_batch_size=4096,
                       learning_rate=0.1, use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
                       remove_unused_columns=False,
                       disable_tqdm=True, dataloader_pin_memory=False, seed=0)
    boundary = Boundary()
    torch.manual_seed(0)
    if options.trainer == "plain":
        trainer = Trainer(model=Linear(), args=TrainingArguments(**common_args), train_dataset=data,
                          data_collator=collate, callbacks=[boundary])
    else:
        args = KakurenboTrainingArguments(**common_args, hiding_fraction=0.3, hiding_decay_milestones=[],
                                          hiding_decay_factors=[], refresh_fraction=options.refresh_fraction,
                                          refresh_budget=options.refresh_budget)
        trainer = KakurenboTrainer(model=Linear(), args=args, train_dataset=data, data_collator=collate,
                                   callbacks=[boundary])
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    plans = trainer.hiding_engine.plans if options.trainer != "plain" else []
    # The bytes of the hiding bookkeeping: what crossed ranks through the run's topology (none for the plain Trainer).
    traffic = trainer.hiding_controller.topology.traffic if options.trainer != "plain" else {"sent": 0, "received": 0}
    record = dict(rank=trainer.accelerator.process_index, processes=trainer.accelerator.num_processes,
                  trainer=options.trainer, num_samples=n, peak_rss_mib=_peak_rss_mib(), train_seconds=train_seconds,
                  boundary_seconds=boundary.gaps, bytes_sent=traffic["sent"], bytes_received=traffic["received"],
                  hidden=[p.num_hidden for p in plans], refreshed=[p.num_refreshed for p in plans],
                  refresh_seconds=[p.refresh_seconds for p in plans], flush_seconds=[p.flush_seconds for p in plans])
    with open(os.path.join(options.out, f"{options.trainer}_{n}_rank{record['rank']}.json"), "w") as handle:
        json.dump(record, handle)
    if torch.distributed.is_initialized():  # a clean gloo shutdown: without it an exit can abort
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def launch(trainer: str, n: int, processes: int, out: str, refresh_fraction: float, refresh_budget: float) -> list[dict]:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "benchmarks.scale", "--worker", "--trainer", trainer,
               "--num-samples", str(n), "--out", out, "--refresh-fraction", str(refresh_fraction),
               "--refresh-budget", str(refresh_budget)]
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", CUDA_VISIBLE_DEVICES="")
    paths = [os.path.join(out, f"{trainer}_{n}_rank{r}.json") for r in range(processes)]
    for path in paths:
        if os.path.exists(path):
            os.remove(path)
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        if not all(os.path.exists(path) for path in paths):
            raise RuntimeError(result.stdout[-3000:] + result.stderr[-6000:])
        # Every rank wrote its measurement; a gloo process group sometimes aborts at interpreter exit
        # ("terminate called without an active exception") after that: the numbers are complete.
        print(f"[scale] {trainer} N={n}: the launch exited with {result.returncode} after every rank wrote its "
              "record (a gloo abort at exit); using the records", flush=True)
    return [json.load(open(path)) for path in paths]


def measure_rates(n: int) -> dict:
    """Single-core throughput of each piece of a rank's epoch-boundary work, measured at `n` samples."""
    import numpy as np
    import torch

    from kakurenbo_hf.core.config import KakurenboArguments
    from kakurenbo_hf.core.engine import HidingEngine
    from kakurenbo_hf.distributed.recorder import StatsRecorder
    from kakurenbo_hf.core.sampler import HidingSampler
    from kakurenbo_hf.core.sharding import owners
    from kakurenbo_hf.core.stats import SampleStats
    from kakurenbo_hf.strategies.kakurenbo import KakurenboStrategy

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    stats = SampleStats(n)
    recorder = StatsRecorder(stats)
    order = torch.from_numpy(rng.permutation(n))
    for start in range(0, n, 4096):
        size = min(4096, n - start)
        recorder.add(order[start : start + size], torch.rand(size), torch.rand(size), torch.rand(size) > 0.1,
                     step=start // 4096)
    columns = recorder._columns(None)
    started = time.perf_counter()  # a rank packing its records for the all-to-all (by owner, then rows)
    host = recorder._numpy_columns(columns, 0, n)
    by_owner = np.argsort(owners(host["index"], n, 64).astype(np.uint16), kind="stable")
    records = np.empty(n, dtype=recorder.dtype)
    for name in recorder.dtype.names:
        records[name] = host[name][by_owner]
    pack_seconds = time.perf_counter() - started
    # What a table rank receives: the runs of several ranks, each in step order (merged by step).
    halves = np.concatenate([records[: n // 2][np.argsort(records["step"][: n // 2], kind="stable")],
                             records[n // 2 :][np.argsort(records["step"][n // 2 :], kind="stable")]])
    started = time.perf_counter()
    recorder._apply_columns({name: halves[name] for name in records.dtype.names})
    apply_seconds = time.perf_counter() - started
    del records, halves, columns
    recorder._chunks = []
    stats.confidence[:] = np.exp(-stats.loss).astype(np.float16)
    started = time.perf_counter()
    decision = KakurenboStrategy(0.7, 0).select(stats, 0.3, 1)
    select_seconds = time.perf_counter() - started
    engine = HidingEngine(n, 3, KakurenboArguments(refresh_fraction=0.15), holds_table=False)
    engine.hidden_bits = np.packbits(decision.hidden)
    started = time.perf_counter()
    engine.samples_to_refresh(2)
    refresh_list_seconds = time.perf_counter() - started
    sampler = HidingSampler(n, seed=0)
    started = time.perf_counter()
    sampler.set_hidden_bits(np.packbits(decision.hidden))
    sampler.set_epoch(1)
    next(iter(sampler))  # at the boundary: the visible indices; the keyed order is evaluated during the epoch
    order_seconds = time.perf_counter() - started
    started = time.perf_counter()
    sampler.epoch_order()
    spread_seconds = time.perf_counter() - started
    del sampler
    # The plain Trainer's epoch start: its RandomSampler (accelerate's SeedableRandomSampler calls it)
    # draws randperm(N) and turns it into a list before yielding the first index.
    plain_sampler = torch.utils.data.RandomSampler(range(n), generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    next(iter(plain_sampler))
    plain_order_seconds = time.perf_counter() - started
    return dict(n=n, pack_records_per_second=n / pack_seconds, apply_records_per_second=n / apply_seconds,
                select_samples_per_second=n / select_seconds, refresh_list_samples_per_second=n / refresh_list_seconds,
                order_samples_per_second=n / order_seconds, pack_seconds=pack_seconds, apply_seconds=apply_seconds,
                select_seconds=select_seconds, refresh_list_seconds=refresh_list_seconds, order_seconds=order_seconds,
                order_seconds_spread_over_epoch=spread_seconds, plain_order_samples_per_second=n / plain_order_seconds,
                plain_order_seconds=plain_order_seconds)


RECORD_BYTES, DEVICE_RECORD_BYTES, TABLE_BYTES, HISTOGRAM_BYTES = 15, 17, 7, 2 * 2**19


def cost_model(n: int, p: int, rates: dict, hidden: float = 0.3, refresh_fraction: float = 0.15,
               refresh_budget: float = 0.03, bandwidth_bytes: float = 100e9 / 8, latency: float = 20e-6,
               round_bytes: int = 16 * 2**20,
               layout: str = "sharded") -> dict:
    """Bytes, extra memory and epoch-boundary time per rank for N samples on P ranks (see README).

    `layout="sharded"` (KAKURENBO): every rank holds N/P rows, receives its rows' records (all-to-all),
    selects on its rows with two summed histograms, and all-gathers the bitmask. `"main_process"`
    (the other strategies): rank 0 receives every record, applies them and selects alone, then
    broadcasts the bitmask.
    """
    from kakurenbo_hf.core.refresh_slice import refresh_period

    refreshed = hidden / refresh_period(int(hidden * n), n, refresh_fraction, refresh_budget)  # share of N
    records_per_rank = n / p * ((1 - hidden) + refreshed)  # training + refresh forwards
    bitmask = n / 8
    refresh_list = 4 * refreshed * n  # int32 indices of the samples refreshed
    rounds = max(1, -(-int(records_per_rank * RECORD_BYTES * p) // round_bytes))
    # Every rank, N-sized: the refresh list from the bitmask, and the epoch's visible indices (our order,
    # which replaces the plain Trainer's randperm(N) + list: only what ours costs beyond that is counted).
    order_extra = max(0.0, n * (1 - hidden) / rates["order_samples_per_second"]
                      - n / rates["plain_order_samples_per_second"])
    every_rank = n / rates["refresh_list_samples_per_second"] + order_extra
    if layout == "sharded":
        exchanged = RECORD_BYTES * records_per_rank * (p - 1) / p
        collectives = 2 * HISTOGRAM_BYTES * 2 * (p - 1) / p + bitmask * (p - 1) / p
        seconds = ((exchanged + collectives) / bandwidth_bytes + rounds * 2 * latency * p + 6 * latency * p
                   + records_per_rank / rates["pack_records_per_second"]
                   + records_per_rank / rates["apply_records_per_second"]
                   + n / p / rates["select_samples_per_second"] + every_rank)
        persistent = TABLE_BYTES * n / p + bitmask  # the sampler shares the engine's bitmask
        at_flush = DEVICE_RECORD_BYTES * records_per_rank + RECORD_BYTES * records_per_rank + 2 * round_bytes / p
        at_refresh = refresh_list + DEVICE_RECORD_BYTES * records_per_rank
        at_selection = 2 * bitmask + 2 * HISTOGRAM_BYTES
        memory = persistent + max(at_flush, at_refresh, at_selection)
        return dict(layout=layout, n=n, p=p, rounds=rounds, refreshed_share=refreshed, order_extra_seconds=order_extra,
                    order_seconds=n * (1 - hidden) / rates["order_samples_per_second"],
                    plain_order_seconds=n / rates["plain_order_samples_per_second"],
                    bytes_sent_per_rank=exchanged + collectives,
                    bytes_received_per_rank=exchanged + collectives, bitmask_bytes=bitmask, memory_table_rank=memory,
                    memory_other=memory, boundary_seconds=seconds)
    sent = RECORD_BYTES * records_per_rank
    received_main = RECORD_BYTES * records_per_rank * (p - 1)
    memory_main = (TABLE_BYTES + 1 / 8) * n + n + 3 * round_bytes + DEVICE_RECORD_BYTES * records_per_rank
    memory_other = DEVICE_RECORD_BYTES * records_per_rank + bitmask + refresh_list + 2 * round_bytes / p
    seconds = ((received_main + bitmask * (p - 1)) / bandwidth_bytes + rounds * latency * p
               + records_per_rank * p / rates["apply_records_per_second"]
               + n / rates["select_samples_per_second"] + every_rank)
    return dict(layout=layout, n=n, p=p, rounds=rounds, refreshed_share=refreshed, order_extra_seconds=order_extra,
                order_seconds=n * (1 - hidden) / rates["order_samples_per_second"],
                plain_order_seconds=n / rates["plain_order_samples_per_second"],
                bytes_sent_per_rank=sent, bytes_received_per_rank=received_main,
                bitmask_bytes=bitmask, memory_table_rank=memory_main, memory_other=memory_other,
                boundary_seconds=seconds)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6, 2e6])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--refresh-fraction", type=float, default=0.15, help="the library default")
    parser.add_argument("--refresh-budget", type=float, default=0.03, help="the library default")
    parser.add_argument("--output", default=os.path.join(report.RESULTS_DIR, "scale.json"))
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--trainer", default="kakurenbo")
    parser.add_argument("--num-samples", type=int, default=0)
    parser.add_argument("--out", default="")
    parser.add_argument("--rates-n", type=float, default=1e7, help="N of the single-core rate measurement")
    parser.add_argument("--model", type=float, nargs=2, default=[1e8, 64], metavar=("N", "P"),
                        help="the N and P the cost model is evaluated at")
    options = parser.parse_args(argv)
    if options.worker:
        return worker(options)
    out = tempfile.mkdtemp(prefix="scale_runs_")
    rows, results = [], []
    for n in (int(size) for size in options.sizes):
        plain = launch("plain", n, options.processes, out, options.refresh_fraction, options.refresh_budget)
        ours = launch("kakurenbo", n, options.processes, out, options.refresh_fraction, options.refresh_budget)
        results.append({"num_samples": n, "plain": plain, "kakurenbo": ours})
        millions = n / 1e6
        for rank in range(options.processes):
            p, k = plain[rank], ours[rank]
            extra_mib = k["peak_rss_mib"] - p["peak_rss_mib"]
            gap, plain_gap = k["boundary_seconds"].get("2", float("nan")), p["boundary_seconds"].get("2", float("nan"))
            rows.append([f"{n:,}", rank, f"{k['hidden'][1] if len(k['hidden']) > 1 else 0:,}",
                         f"{k['bytes_sent'] / 3:,.0f}", f"{k['bytes_received'] / 3:,.0f}",
                         f"{extra_mib:.1f}", f"{extra_mib / millions:.1f}", f"{gap:.3f}", f"{plain_gap:.3f}",
                         f"{(gap - plain_gap) / millions:.3f}"])
    markdown = formatting.markdown_table(
        ["N", "rank", "hidden in epoch 1", "bytes sent / epoch", "bytes received / epoch", "extra peak MiB",
         "extra MiB per 1M", "boundary after a hiding epoch (s)", "plain Trainer's (s)", "extra s per 1M"], rows)
    rates = measure_rates(int(options.rates_n))
    n_model, p_model = int(options.model[0]), int(options.model[1])
    models = [cost_model(n_model, p_model, rates, refresh_fraction=options.refresh_fraction,
                         refresh_budget=options.refresh_budget, layout=layout)
              for layout in ("sharded", "main_process")]
    model = models[0]
    markdown += (
        f"\n\nSingle-core rates at N = {rates['n']:,}: pack {rates['pack_records_per_second'] / 1e6:.1f} M records/s, "
        f"apply {rates['apply_records_per_second'] / 1e6:.1f} M records/s, selection "
        f"{rates['select_samples_per_second'] / 1e6:.1f} M samples/s, refresh list "
        f"{rates['refresh_list_samples_per_second'] / 1e6:.0f} M samples/s, order "
        f"{rates['order_samples_per_second'] / 1e6:.1f} M samples/s (the plain Trainer's randperm + list: "
        f"{rates['plain_order_samples_per_second'] / 1e6:.1f} M samples/s; selection + order of N = {rates['n']:,}: "
        f"{rates['select_seconds'] + rates['order_seconds']:.2f} s).\n\n"
        + formatting.markdown_table(
            ["model at", "layout", "sent per rank / epoch", "received by the table rank / epoch",
             "extra memory, table rank", "extra memory, other ranks", "boundary work (100 Gb/s)"],
            [[f"N = {n_model:.0e}, P = {p_model}", m["layout"], f"{m['bytes_sent_per_rank'] / 1e6:.0f} MB",
              f"{m['bytes_received_per_rank'] / 1e6:.0f} MB", f"{m['memory_table_rank'] / 1e6:.0f} MB",
              f"{m['memory_other'] / 1e6:.0f} MB", f"{m['boundary_seconds']:.2f} s"] for m in models])
    )
    record = dict(machine=report.machine_info(), command=report.command_line("benchmarks.scale", argv),
                  processes=options.processes, results=results, rates=rates, model=model, models=models)
    return report.publish(options.output, record, markdown)


if __name__ == "__main__":
    main()
