"""The collectives the hiding bookkeeping needs, on `torch.distributed` (any backend).

Two layouts of the statistics table (see `sharding.py`):

- sharded (strategies with `shardable = True`, KAKURENBO's default): `ShardedTransport` sends
  each record to the rank that holds its row (one `all_to_all` per round), and `TorchCollective`
  gives the selection its sums over ranks and the all-gathered bitmask;
- on the main process (every other strategy): `MainProcessTransport` gathers every record there
  (one `gather` per round), and `broadcast_decision` sends its hidden set (a bitmask of N/8
  bytes) and plan to every other rank.

Both also take one `all_reduce` per flush for the number of rounds.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from ..core.sharding import Shard, owners, shard_block

# Bytes this process sent and received through the functions below (for benchmarks/scale.py).
TRAFFIC = {"sent": 0, "received": 0}


class MainProcessTransport:
    """Gather to the main process (rank 0) over the default process group."""

    sharded = False

    def __init__(self, device: torch.device):
        self.device = device
        self.num_processes = dist.get_world_size()
        self.is_main = dist.get_rank() == 0

    def max_over_ranks(self, value: int) -> int:
        tensor = torch.tensor([int(value)], dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def gather_to_main(self, buffer: torch.Tensor) -> list[torch.Tensor] | None:
        buffer = buffer.to(self.device).contiguous()
        parts = [torch.empty_like(buffer) for _ in range(self.num_processes)] if self.is_main else None
        dist.gather(buffer, parts, dst=0)
        if self.is_main:
            TRAFFIC["received"] += buffer.numel() * (self.num_processes - 1)
        else:
            TRAFFIC["sent"] += buffer.numel()
        return parts


class ShardedTransport:
    """Send each record to the rank whose shard holds its sample (`sharding.shard_of`)."""

    sharded = True

    def __init__(self, device: torch.device, num_samples: int):
        self.device = device
        self.num_samples = int(num_samples)
        self.num_processes = dist.get_world_size()
        self.is_main = dist.get_rank() == 0

    max_over_ranks = MainProcessTransport.max_over_ranks

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
        recv_counts = torch.empty(self.num_processes, dtype=torch.int64, device=self.device)
        dist.all_to_all_single(recv_counts, torch.from_numpy(send_counts).to(self.device))
        recv_counts = recv_counts.cpu().numpy()
        itemsize = dtype.itemsize
        payload = torch.from_numpy(records.view(np.uint8).reshape(-1)).to(self.device)
        received = torch.empty(int(recv_counts.sum()) * itemsize, dtype=torch.uint8, device=self.device)
        own = dist.get_rank()
        dist.all_to_all_single(received, payload, output_split_sizes=(recv_counts * itemsize).tolist(),
                               input_split_sizes=(send_counts * itemsize).tolist())
        TRAFFIC["sent"] += int(send_counts.sum() - send_counts[own]) * itemsize
        TRAFFIC["received"] += int(recv_counts.sum() - recv_counts[own]) * itemsize
        return received.cpu().numpy().view(dtype)


class TorchCollective:
    """`sharding.Collective` over the default process group."""

    def __init__(self, device: torch.device):
        self.device = device
        self.num_ranks = dist.get_world_size()
        self.rank = dist.get_rank()

    def sum(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values)
        tensor = torch.from_numpy(np.ascontiguousarray(values)).to(self.device)
        dist.all_reduce(tensor)
        # A ring all-reduce sends and receives 2 (P - 1) / P times the array.
        size = tensor.numel() * tensor.element_size()
        TRAFFIC["sent"] += 2 * size * (self.num_ranks - 1) // self.num_ranks
        TRAFFIC["received"] += 2 * size * (self.num_ranks - 1) // self.num_ranks
        return tensor.cpu().numpy()

    def gather(self, values: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(values)).to(self.device)
        parts = [torch.empty_like(tensor) for _ in range(self.num_ranks)]
        dist.all_gather(parts, tensor)
        _count(tensor.numel() * tensor.element_size())
        return torch.stack(parts).cpu().numpy()

    def gather_bits(self, local_bits: np.ndarray, shard: Shard) -> np.ndarray:
        """Each shard's bytes are whole bytes of the bitmask: all-gathered, padded to the longest shard."""
        width = shard_block(shard.num_samples, self.num_ranks) // 8
        padded = np.zeros(width, dtype=np.uint8)
        padded[: local_bits.size] = local_bits
        tensor = torch.from_numpy(padded).to(self.device)
        parts = [torch.empty_like(tensor) for _ in range(self.num_ranks)]
        dist.all_gather(parts, tensor)
        _count(width)
        return torch.cat(parts).cpu().numpy()[: (shard.num_samples + 7) // 8]


def _count(num_bytes: int) -> None:
    """An all-gather: every rank's `num_bytes` reach every other rank."""
    TRAFFIC["sent"] += num_bytes * (dist.get_world_size() - 1)
    TRAFFIC["received"] += num_bytes * (dist.get_world_size() - 1)


def broadcast_decision(hidden_bits: np.ndarray | None, plan: dict | None, num_bytes: int, device: torch.device,
                       weights: np.ndarray | None = None, draws: np.ndarray | None = None
                       ) -> tuple[np.ndarray, dict, np.ndarray | None, np.ndarray | None]:
    """Rank 0's (hidden bitmask, plan, loss weights, draws) on every rank.

    N/8 bytes plus a small object; the weights (4 N bytes) and draws (8 bytes each) only for the
    strategies that use them.
    """
    is_main = dist.get_rank() == 0
    header = [(plan, None if weights is None else weights.size, None if draws is None else draws.size)]
    dist.broadcast_object_list(header, src=0, device=device if device.type != "cpu" else None)
    plan, num_weights, num_draws = header[0]
    bits = _broadcast_array(hidden_bits if is_main else None, num_bytes, torch.uint8, device)
    # None where rank 0 has none: another rank's arguments may still hold the last epoch's arrays.
    weights = None if num_weights is None else _broadcast_array(weights if is_main else None, num_weights,
                                                                torch.float32, device)
    draws = None if num_draws is None else _broadcast_array(draws if is_main else None, num_draws, torch.int64, device)
    return bits, plan, weights, draws


def _broadcast_array(array: np.ndarray | None, size: int, dtype: torch.dtype, device: torch.device) -> np.ndarray:
    """Rank 0's 1-d `array` (of `size` elements of `dtype`) on every rank."""
    if dist.get_rank() == 0:
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=dtype)
    else:
        tensor = torch.empty(size, dtype=dtype, device=device)
    dist.broadcast(tensor, src=0)
    num_bytes = tensor.numel() * tensor.element_size()
    if dist.get_rank() == 0:
        TRAFFIC["sent"] += num_bytes * (dist.get_world_size() - 1)
    else:
        TRAFFIC["received"] += num_bytes
    return tensor.cpu().numpy()
