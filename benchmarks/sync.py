"""Cost of the per-epoch statistics synchronisation across ranks.

Each rank records its share of N samples in batches (what `compute_loss` does during an epoch),
then `StatsRecorder.flush(transport)` sends every rank's records, 15 bytes each, to where the
table is, which writes them (what `KakurenboTrainer` does at each epoch start): with
`--layout sharded` (KAKURENBO's) to the rank holding each sample's row, with `--layout
main_process` (the other strategies') all to the main process. Reported: the
flush's time, the transfer alone (`gather` of the packed records to the main process), the
per-batch cost of recording (the training hot path) and one `SampleStats.update` of N values;
and, for the alternative design, what a transfer at every step would cost: one gather of a
batch's packed records, times the steps of an epoch.

Usage (2 CPU processes with gloo; on GPUs drop --cpu):

    accelerate launch --multi_gpu --num_processes 2 -m benchmarks.sync --cpu
    accelerate launch --multi_gpu --num_processes 2 -m benchmarks.sync --cpu --layout main_process
    accelerate launch --multi_gpu --num_processes 2 -m benchmarks.sync --cpu --num-samples 100000 --trials 1
    python -m benchmarks.sync --cpu        # one process: the flush without a gather

Output: Markdown table on stdout (rank 0), JSON at `--output` (default benchmarks/results/sync.json).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
from accelerate import Accelerator

from kakurenbo_hf.distributed.topology import Topology
from kakurenbo_hf.distributed.transport import MainProcessTransport, ShardedTransport
from kakurenbo_hf.distributed.recorder import StatsRecorder
from kakurenbo_hf.core.sharding import shard_of
from kakurenbo_hf.core.stats import SampleStats

from . import report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sync", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-samples", type=int, default=1_000_000, help="N, the training-set size")
    parser.add_argument("--batch-size", type=int, default=256, help="per-rank batch of each record")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--cpu", action="store_true", help="run on CPU (gloo) even where a GPU exists")
    parser.add_argument("--layout", choices=("sharded", "main_process"), default="sharded",
                        help="where the table is: split over the ranks (KAKURENBO) or on the main process")
    parser.add_argument("--output", default=os.path.join(report.RESULTS_DIR, "sync.json"))
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    accelerator = Accelerator(cpu=args.cpu)
    rank, world = accelerator.process_index, accelerator.num_processes
    device = accelerator.device
    topology = Topology.from_accelerator(accelerator)

    sharded = args.layout == "sharded" and world > 1
    transport = None
    if world > 1:
        transport = ShardedTransport(topology, args.num_samples) if sharded else MainProcessTransport(topology)
    shard = shard_of(args.num_samples, world, rank)
    record_size = StatsRecorder(None, num_samples=args.num_samples).dtype.itemsize

    def gather(tensor):  # the main-process layout's transfer (the sharded one is an all-to-all of the same bytes)
        return transport.gather_to_main(tensor) if isinstance(transport, MainProcessTransport) else [tensor]

    order = torch.randperm(args.num_samples, generator=torch.Generator().manual_seed(0))
    mine = order[rank::world].to(device)
    trials = []
    for _ in range(args.trials):
        if sharded:
            table = SampleStats(shard.size, start=shard.start)
        else:
            table = SampleStats(args.num_samples) if accelerator.is_main_process else None
        recorder = StatsRecorder(table, num_samples=args.num_samples)
        accelerator.wait_for_everyone()
        started = time.perf_counter()
        batches = 0
        for step, start in enumerate(range(0, mine.numel(), args.batch_size)):
            indices = mine[start : start + args.batch_size]
            n = indices.numel()
            recorder.add(indices, torch.rand(n, device=device), torch.rand(n, device=device),
                         torch.rand(n, device=device) > 0.5, step=step)
            batches += 1
        record_seconds = time.perf_counter() - started
        accelerator.wait_for_everyone()
        started = time.perf_counter()
        written = recorder.flush(transport)
        flush_seconds = time.perf_counter() - started
        packed = torch.zeros(mine.numel() * record_size, dtype=torch.uint8, device=device)
        accelerator.wait_for_everyone()
        started = time.perf_counter()
        gather(packed)
        gather_seconds = time.perf_counter() - started
        step_packed = torch.zeros(args.batch_size * record_size, dtype=torch.uint8, device=device)
        step_trials = 50
        accelerator.wait_for_everyone()
        started = time.perf_counter()
        for _ in range(step_trials):
            gather(step_packed)
        per_step_gather_seconds = (time.perf_counter() - started) / step_trials
        table = SampleStats(args.num_samples)
        values = np.random.default_rng(0)
        started = time.perf_counter()
        table.update(values.permutation(args.num_samples), values.random(args.num_samples),
                     values.random(args.num_samples), values.random(args.num_samples) > 0.5)
        update_seconds = time.perf_counter() - started
        expected = shard.size if sharded else (args.num_samples if accelerator.is_main_process else 0)
        assert written == expected, (written, expected)
        trials.append(dict(flush_seconds=flush_seconds, gather_seconds=gather_seconds,
                           per_step_gather_us=1e6 * per_step_gather_seconds,
                           per_step_gather_epoch_seconds=per_step_gather_seconds * batches,
                           record_us_per_batch=1e6 * record_seconds / batches, update_seconds=update_seconds))
    summary = {key: statistics.median(t[key] for t in trials) for key in trials[0]}
    record = dict(machine=report.machine_info(), command=report.command_line("benchmarks.sync", argv), processes=world,
                  layout=args.layout if world > 1 else "one process",
                  device=str(device), num_samples=args.num_samples, batch_size=args.batch_size,
                  trials=trials, median=summary)
    if accelerator.is_main_process:
        md = (
            f"| N | processes | layout | flush per epoch (s) | gather alone (s) | record per batch (us) | table update of N (s) "
            f"| per-step gather (us) | per-step gathers of one epoch (s) |\n"
            f"|---|---|---|---|---|---|---|---|---|\n"
            f"| {args.num_samples:,} | {world} | {record['layout']} | {summary['flush_seconds']:.3f} | {summary['gather_seconds']:.3f} | "
            f"{summary['record_us_per_batch']:.1f} | {summary['update_seconds']:.3f} | "
            f"{summary['per_step_gather_us']:.0f} | {summary['per_step_gather_epoch_seconds']:.3f} |"
        )
        report.publish(args.output, record, md)
    accelerator.wait_for_everyone()
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
