"""`Topology`: the processes of a run and every collective the hiding bookkeeping uses.

Why one object: the rank, the world size, the device collectives run on and the byte count of
what crossed ranks are one fact about a run, built once (`Topology.from_accelerator`) and handed
to whatever communicates (transports, the sharded selection, the trainer's votes and counters).
No other module of the package calls `torch.distributed`, so:

- one process is one code path: every collective of `Topology.single()` (or any world size 1) is
  the identity and calls nothing in `torch.distributed` (no process group needed, in tests too);
- tensors go to `device` before any collective (NCCL needs CUDA tensors, gloo takes CPU ones) and
  results come back as numpy, so the same code runs on either backend;
- `traffic` counts the bytes this process sent and received through this object (what
  `benchmarks/scale.py` reports), per object rather than in a process-wide global.

Every method is a collective: all ranks call it at the same point, with the same shapes.
Imports no accelerate: `from_accelerator` only reads the accelerator's attributes.
"""

from __future__ import annotations

import pickle

import numpy as np
import torch
import torch.distributed as dist

from ..core.sharding import Shard, shard_block


class Topology:
    """The processes of a run and every collective the hiding bookkeeping uses (torch.distributed, any backend)."""

    def __init__(self, rank: int = 0, world_size: int = 1, device: torch.device | str | None = None):
        rank, world_size = int(rank), int(world_size)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad topology: rank {rank} of {world_size} processes")
        if world_size > 1:
            # Fail here, not in the first collective of an epoch boundary.
            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError(f"a topology of {world_size} processes needs an initialised torch.distributed "
                                   "process group (accelerate initialises it)")
            if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
                raise ValueError(f"rank {rank} of {world_size} does not match the process group's rank "
                                 f"{dist.get_rank()} of {dist.get_world_size()}")
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.traffic = {"sent": 0, "received": 0}

    @classmethod
    def from_accelerator(cls, accelerator) -> "Topology":
        """This process's topology as an `accelerate.Accelerator` sees it (rank, world size, device)."""
        return cls(accelerator.process_index, accelerator.num_processes, accelerator.device)

    @classmethod
    def single(cls, device: torch.device | str | None = None) -> "Topology":
        """One process: every collective is the identity."""
        return cls(0, 1, device)

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that holds a main-process table and decides for the others)."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """Whether there is more than one process (collectives really communicate)."""
        return self.world_size > 1

    @property
    def num_ranks(self) -> int:
        """The world size (the name `core.sharding.Collective` uses)."""
        return self.world_size

    def __repr__(self) -> str:
        return f"Topology(rank={self.rank}, world_size={self.world_size}, device={str(self.device)!r})"

    # --- byte counting -------------------------------------------------------------------------

    def _count_all_reduce(self, num_bytes: int) -> None:
        # A ring all-reduce sends and receives 2 (P - 1) / P times the array.
        moved = 2 * num_bytes * (self.world_size - 1) // self.world_size
        self.traffic["sent"] += moved
        self.traffic["received"] += moved

    def _count_all_gather(self, num_bytes: int) -> None:
        # Every rank's `num_bytes` reach every other rank.
        self.traffic["sent"] += num_bytes * (self.world_size - 1)
        self.traffic["received"] += num_bytes * (self.world_size - 1)

    def _count_broadcast(self, num_bytes: int) -> None:
        if self.is_main:
            self.traffic["sent"] += num_bytes * (self.world_size - 1)
        else:
            self.traffic["received"] += num_bytes

    def _to_device(self, values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(values)).to(self.device)

    def _all_reduce(self, values: np.ndarray, op) -> np.ndarray:
        tensor = self._to_device(values)
        dist.all_reduce(tensor, op=op)
        self._count_all_reduce(tensor.numel() * tensor.element_size())
        return tensor.cpu().numpy()

    # --- collectives ---------------------------------------------------------------------------

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum over ranks of an int64/float64 array of the same shape on every rank."""
        values = np.asarray(values)
        if not self.is_distributed:
            return values
        return self._all_reduce(values, dist.ReduceOp.SUM)

    def max(self, value: int) -> int:
        """The largest `value` of all ranks."""
        if not self.is_distributed:
            return int(value)
        return int(self._all_reduce(np.array([int(value)], dtype=np.int64), dist.ReduceOp.MAX)[0])

    def sum_ints(self, values) -> list[int]:
        """Element-wise sum over ranks of a list of ints (sample counters, ...)."""
        values = [int(value) for value in values]
        return [int(v) for v in self.sum(np.array(values, dtype=np.int64))] if values else values

    def all_true(self, flags) -> list[bool]:
        """Element-wise AND over ranks of a list of bools (a vote: True where every rank says True)."""
        return [votes == self.world_size for votes in self.sum_ints([bool(flag) for flag in flags])]

    def gather(self, values: np.ndarray) -> np.ndarray:
        """Every rank's small array (same shape and dtype), stacked in rank order: shape (P, *shape)."""
        values = np.asarray(values)
        if not self.is_distributed:
            return values[None]
        tensor = self._to_device(values)
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor)
        self._count_all_gather(tensor.numel() * tensor.element_size())
        return torch.stack(parts).cpu().numpy()

    def gather_padded(self, values: np.ndarray, width: int, total: int) -> np.ndarray:
        """Every rank's 1-d `values` (at most `width` long; ranks' lengths may differ), padded to `width`,
        all-gathered and concatenated in rank order, cut to `total` (the shards of a table, in order)."""
        values = np.asarray(values)
        padded = np.zeros(width, dtype=values.dtype)
        padded[: values.size] = values
        return self.gather(padded).reshape(-1)[:total]

    def gather_bits(self, local_bits: np.ndarray, shard: Shard) -> np.ndarray:
        """The N-sample bitmask from every rank's bytes of its shard (whole bytes: all-gathered, padded to the longest shard)."""
        if not self.is_distributed:
            if not shard.is_whole:
                raise ValueError("a single process holds the whole table")
            return np.asarray(local_bits, dtype=np.uint8)
        width = shard_block(shard.num_samples, self.world_size) // 8
        return self.gather_padded(np.asarray(local_bits, dtype=np.uint8), width, (shard.num_samples + 7) // 8)

    def broadcast_object(self, obj):
        """Rank 0's small picklable `obj` on every rank (`obj` is ignored elsewhere)."""
        if not self.is_distributed:
            return obj
        holder = [obj if self.is_main else None]
        # device=None on CPU: broadcast_object_list then uses CPU tensors (gloo); on CUDA, our device (NCCL).
        dist.broadcast_object_list(holder, src=0, device=self.device if self.device.type != "cpu" else None)
        # What broadcast_object_list sends: one int64 size, then the pickled bytes. Receivers re-pickle
        # to count (the same size for the plain data sent here); the sender's count is exact.
        self._count_broadcast(8 + len(pickle.dumps(holder[0])))
        return holder[0]

    def broadcast_array(self, array: np.ndarray | None, size: int, dtype: torch.dtype) -> np.ndarray:
        """Rank 0's 1-d `array` (`size` elements, sent as `dtype`) on every rank (`array` is ignored elsewhere)."""
        if not self.is_distributed:
            return torch.from_numpy(np.ascontiguousarray(array)).to(dtype=dtype).numpy()
        if self.is_main:
            tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device=self.device, dtype=dtype)
        else:
            tensor = torch.empty(int(size), dtype=dtype, device=self.device)
        dist.broadcast(tensor, src=0)
        self._count_broadcast(tensor.numel() * tensor.element_size())
        return tensor.cpu().numpy()

    def gather_to_main(self, buffer: torch.Tensor) -> list[torch.Tensor] | None:
        """Every rank's equal-size `buffer`, in rank order, on rank 0 (on `device`); None on the other ranks."""
        if not self.is_distributed:
            return [buffer]
        buffer = buffer.to(self.device).contiguous()
        parts = [torch.empty_like(buffer) for _ in range(self.world_size)] if self.is_main else None
        dist.gather(buffer, parts, dst=0)
        num_bytes = buffer.numel() * buffer.element_size()
        if self.is_main:
            self.traffic["received"] += num_bytes * (self.world_size - 1)
        else:
            self.traffic["sent"] += num_bytes
        return parts

    def all_to_all_bytes(self, payload: np.ndarray, send_counts: np.ndarray, itemsize: int) -> np.ndarray:
        """Send `send_counts[r]` items of `itemsize` bytes (consecutive in `payload`) to each rank r; the bytes
        received, rank by rank (uint8)."""
        payload = np.ascontiguousarray(payload).view(np.uint8).reshape(-1)
        send_counts = np.asarray(send_counts, dtype=np.int64)
        if send_counts.shape != (self.world_size,) or int(send_counts.sum()) * itemsize != payload.size:
            raise ValueError(f"send_counts {send_counts.tolist()} of {itemsize}-byte items do not split "
                             f"{payload.size} bytes over {self.world_size} ranks")
        if not self.is_distributed:
            return payload
        # First the counts (so every rank can size what it receives), then the bytes.
        recv_counts = torch.empty(self.world_size, dtype=torch.int64, device=self.device)
        dist.all_to_all_single(recv_counts, self._to_device(send_counts))
        recv_counts = recv_counts.cpu().numpy()
        received = torch.empty(int(recv_counts.sum()) * itemsize, dtype=torch.uint8, device=self.device)
        dist.all_to_all_single(received, self._to_device(payload), output_split_sizes=(recv_counts * itemsize).tolist(),
                               input_split_sizes=(send_counts * itemsize).tolist())
        own = self.rank  # what a rank keeps for itself crosses nothing
        self.traffic["sent"] += int(send_counts.sum() - send_counts[own]) * itemsize
        self.traffic["received"] += int(recv_counts.sum() - recv_counts[own]) * itemsize
        return received.cpu().numpy()
