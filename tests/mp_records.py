"""Reading back what the multi-process workers wrote, and the expectations the tests compare it with.

`tests/mp_worker.py` and `tests/lm_mp_worker.py` write, under OUT/<run name>/, for every rank R:
`rank<R>.json` (the rank's records) and `weights_rank<R>.safetensors` (its final weights).
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file


def read_records(out: str, name: str, num_processes: int = 2) -> list[dict]:
    """The `rank<R>.json` records of run `name`, rank 0 first."""
    loaded = []
    for rank in range(num_processes):
        with open(os.path.join(out, name, f"rank{rank}.json")) as handle:
            loaded.append(json.load(handle))
    return loaded


def read_weights(out: str, name: str, num_processes: int = 2) -> list[dict[str, torch.Tensor]]:
    """The final weights of run `name`, one state dict per rank."""
    return [load_file(os.path.join(out, name, f"weights_rank{rank}.safetensors")) for rank in range(num_processes)]


def assert_same_weights(a: dict, b: dict, what: str) -> None:
    """The two state dicts hold the same tensors, bit for bit."""
    assert a.keys() == b.keys(), what
    differing = [key for key in a if not torch.equal(a[key], b[key])]
    assert not differing, f"{what}: {len(differing)} tensors differ, e.g. {differing[:3]}"


def loss_logs(record: dict, after_step: int = -1) -> list[tuple]:
    """(step, loss, grad_norm, learning_rate) of the logged training steps after `after_step`."""
    return [(e["step"], e["loss"], e["grad_norm"], e["learning_rate"])
            for e in record["log_history"] if "loss" in e and e["step"] > after_step]


def expected_shares(order: list[int], num_processes: int, batch_size: int) -> tuple[list[list[int]], int]:
    """What accelerate's BatchSamplerShard (even_batches, no split) gives each rank from the global order.

    Batch k of the order goes to rank k % P; the tail is padded to a multiple of P full batches by
    cycling through the first P batches of the order. Returns (per-rank indices, number padded).
    """
    padded = list(order)
    pad = (-len(order)) % (num_processes * batch_size)
    initial = list(order[: num_processes * batch_size])
    while len(initial) < num_processes * batch_size:
        initial += initial
    padded += initial[:pad]
    batches = [padded[i : i + batch_size] for i in range(0, len(padded), batch_size)]
    return [sum(batches[rank::num_processes], []) for rank in range(num_processes)], pad


def without_timing(plans: list[dict]) -> list[dict]:
    """Epoch plans without their measured refresh and flush times (differ across ranks and runs)."""
    return [{key: value for key, value in plan.items() if key not in ("refresh_seconds", "flush_seconds")}
            for plan in plans]
