"""Where a flush's records go and how the main process's decision reaches the others, on a `Topology`.

Two layouts of the statistics table (see `core/sharding.py`):

- sharded (strategies with `shardable = True`, KAKURENBO's default): `ShardedTransport` sends
  each record to the rank that holds its row (one `all_to_all` per round), and the `Topology`
  itself is the selection's `Collective` (its sums over ranks and the all-gathered bitmask);
- on the main process (every other strategy): `MainProcessTransport` gathers every record there
  (one `gather` per round), and `broadcast_decision` sends its hidden set (a bitmask of N/8
  bytes) and plan to every other rank.

Both also take one `all_reduce` per flush for the number of rounds. Every byte goes through the
topology (which counts it in `topology.traffic`); nothing here calls `torch.distributed`.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.sharding import owners
from .topology import Topology


class _Transport:
    """What both transports give the recorder (`recorder.Transport`), over the run's topology."""

    sharded = False

    def __init__(self, topology: Topology):
        self.topology = topology
        self.num_processes = topology.world_size
        self.is_main = topology.is_main

    def max_over_ranks(self, value: int) -> int:
        """The largest `value` of all ranks."""
        return self.topology.max(value)


class MainProcessTransport(_Transport):
    """Gather every rank's records to the main process (rank 0)."""

    def gather_to_main(self, buffer: torch.Tensor) -> list[torch.Tensor] | None:
        """Every rank's equal-size uint8 buffer, in rank order, on the main process; None elsewhere."""
        return self.topology.gather_to_main(buffer)


class ShardedTransport(_Transport):
    """Send each record to the rank whose shard holds its sample (`core.sharding.shard_of`)."""

    sharded = True

    def __init__(self, topology: Topology, num_samples: int):
        super().__init__(topology)
        self.num_samples = int(num_samples)

    def exchange(self, columns: dict[str, np.ndarray], dtype: np.dtype) -> np.ndarray:
        """This rank's records (`columns`, one array per field of `dtype`, in step order) out to their owners;
        back, the records of this rank's rows from every rank (a structured array of `dtype`), rank by rank,
        each rank's in the order it sent them."""
        owner = owners(columns["index"], self.num_samples, self.num_processes)
        # A stable sort by owner keeps each owner's records in step order (radix sort below 2**16 ranks).
        order = np.argsort(owner.astype(np.uint16) if self.num_processes < 2**16 else owner, kind="stable")
        records = np.empty(order.size, dtype=dtype)
        for name in dtype.names:  # sorted column by column (contiguous), then interleaved into rows
            records[name] = columns[name][order]
        send_counts = np.bincount(owner, minlength=self.num_processes).astype(np.int64)
        received = self.topology.all_to_all_bytes(records.view(np.uint8).reshape(-1), send_counts, dtype.itemsize)
        return received.view(dtype)


def broadcast_decision(topology: Topology, hidden_bits: np.ndarray | None, plan: dict | None, num_bytes: int,
                       weights: np.ndarray | None = None, draws: np.ndarray | None = None
                       ) -> tuple[np.ndarray, dict, np.ndarray | None, np.ndarray | None]:
    """Rank 0's (hidden bitmask, plan, loss weights, draws) on every rank.

    N/8 bytes plus a small object; the weights (4 N bytes) and draws (8 bytes each) only for the
    strategies that use them. Arguments other than `num_bytes` are ignored on ranks other than 0.
    """
    is_main = topology.is_main
    plan, num_weights, num_draws = topology.broadcast_object(
        (plan, None if weights is None else weights.size, None if draws is None else draws.size))
    bits = topology.broadcast_array(hidden_bits if is_main else None, num_bytes, torch.uint8)
    # None where rank 0 has none: another rank's arguments may still hold the last epoch's arrays.
    weights = None if num_weights is None else topology.broadcast_array(weights if is_main else None, num_weights,
                                                                        torch.float32)
    draws = None if num_draws is None else topology.broadcast_array(draws if is_main else None, num_draws, torch.int64)
    return bits, plan, weights, draws
