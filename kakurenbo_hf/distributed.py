"""The collectives the hiding bookkeeping needs, on `torch.distributed` (any backend).

`MainProcessTransport` implements `recorder.Transport`: records travel to the main process only
(one `gather` per round, plus one `all_reduce` for the number of rounds). `broadcast_decision`
sends the main process's hidden set (a bitmask of N/8 bytes) and plan to every other rank.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

# Bytes this process sent and received through the functions below (for benchmarks/scale.py).
TRAFFIC = {"sent": 0, "received": 0}


class MainProcessTransport:
    """Gather to the main process (rank 0) over the default process group."""

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


def broadcast_decision(hidden_bits: np.ndarray | None, plan: dict | None, num_bytes: int,
                       device: torch.device) -> tuple[np.ndarray, dict]:
    """Rank 0's (hidden bitmask, plan) on every rank: N/8 bytes plus a small object."""
    payload = [plan]
    dist.broadcast_object_list(payload, src=0, device=device if device.type != "cpu" else None)
    if dist.get_rank() == 0:
        bits = torch.from_numpy(np.ascontiguousarray(hidden_bits)).to(device)
    else:
        bits = torch.empty(num_bytes, dtype=torch.uint8, device=device)
    dist.broadcast(bits, src=0)
    if dist.get_rank() == 0:
        TRAFFIC["sent"] += num_bytes * (dist.get_world_size() - 1)
    else:
        TRAFFIC["received"] += num_bytes
    return bits.cpu().numpy(), payload[0]
