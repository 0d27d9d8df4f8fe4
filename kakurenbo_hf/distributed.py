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
