"""Timing: torch threads, per-epoch wall clocks inside a training run, and quiet-machine checks.

Timings are only worth recording on a quiet machine: `machine_load` reads the load averages, and
a benchmark records them before and after its timed runs (the lead reruns anything measured while
other work shared the cores).
"""

from __future__ import annotations

import os
import time

THREADS_HELP = (
    "torch intra-op threads (default 1 on CPU, torch's choice on GPU; 0 = torch's choice). On a shared "
    "CPU, 2+ threads make OpenMP wait on descheduled threads: a run measured here took 7 s once and "
    "177 s (of process CPU time) another time. One thread keeps timings comparable."
)

# Load (1-minute average) beyond the benchmark's own threads that still counts as quiet.
QUIET_EXTRA_LOAD = 0.5


def set_threads(threads: int | None) -> int:
    """Apply `--threads` (None: 1 on CPU-only machines, torch's choice with CUDA; 0: torch's choice)."""
    import torch

    if threads is None:
        threads = 0 if torch.cuda.is_available() else 1
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def machine_load(own_threads: int = 1) -> dict:
    """Load averages now, and whether the machine is quiet: the 1-minute load minus the benchmark's own
    `own_threads` is at most `QUIET_EXTRA_LOAD` (None where the load cannot be read)."""
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover - not on Linux/macOS
        return {"loadavg": None, "cpu_count": os.cpu_count(), "quiet": None}
    return {"loadavg": [round(v, 2) for v in load], "cpu_count": os.cpu_count(),
            "quiet": load[0] - own_threads <= QUIET_EXTRA_LOAD}


def quiet_verdict(*loads: dict) -> bool | None:
    """Whether every `machine_load` reading was quiet (None if none could tell)."""
    known = [load["quiet"] for load in loads if load.get("quiet") is not None]
    return all(known) if known else None


class EpochTimer:
    """TrainerCallback: wall clock at train begin, each epoch end, each evaluation end.

    The Trainer evaluates right after `on_epoch_end`, so evaluation time is the gap between an
    epoch end and the next `on_evaluate`; train-only time excludes it. On a GPU each reading waits
    for the queued kernels first, so an epoch's work is not counted as evaluation.
    """

    def __init__(self):
        import torch
        from transformers import TrainerCallback

        outer = self

        def clock():
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
            return time.perf_counter(), time.process_time()

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                outer.train_begin = clock()
                outer.epoch_ends, outer.evals = [], []

            def on_epoch_end(self, args, state, control, **kwargs):
                outer.epoch_ends.append(clock())

            def on_evaluate(self, args, state, control, metrics=None, **kwargs):
                outer.evals.append((clock(), dict(metrics or {})))

        self.callback = _Callback()
        self.train_begin = None
        self.epoch_ends: list[float] = []
        self.evals: list[tuple[float, dict]] = []

    def per_epoch(self) -> list[dict]:
        """Per epoch: cumulative train-only wall (and process CPU) seconds at its end, eval seconds, metrics."""
        rows, eval_total, eval_cpu_total = [], 0.0, 0.0
        for i, (end, end_cpu) in enumerate(self.epoch_ends):
            row = {"epoch": i + 1, "train_seconds_cumulative": end - self.train_begin[0] - eval_total,
                   "train_cpu_seconds_cumulative": end_cpu - self.train_begin[1] - eval_cpu_total}
            if i < len(self.evals):
                (eval_time, eval_cpu), metrics = self.evals[i]
                row["eval_seconds"] = eval_time - end
                row["eval_cpu_seconds"] = eval_cpu - end_cpu
                eval_total += eval_time - end
                eval_cpu_total += eval_cpu - end_cpu
                row["accuracy"] = metrics.get("eval_accuracy")
                row["eval_loss"] = metrics.get("eval_loss")
            rows.append(row)
        return rows

    @property
    def eval_seconds(self) -> float:
        return sum(r.get("eval_seconds", 0.0) for r in self.per_epoch())

    @property
    def eval_cpu_seconds(self) -> float:
        return sum(r.get("eval_cpu_seconds", 0.0) for r in self.per_epoch())
