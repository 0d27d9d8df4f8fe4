"""`StatsRecorder`: collects per-sample statistics during an epoch and writes them to the table.

The training step only appends detached device tensors (no host sync on the hot path); the
values reach the `SampleStats` table in `flush`, called at epoch start and before a checkpoint.

Where the table is (see `engine.py`): sharded across the ranks (`transport.sharded`; each record
goes to the rank that holds its row, one all-to-all per round), or whole on the main process (a
flush sends every rank's records there and nowhere else). Records travel compactly, 15 bytes each
(`record_dtype`: step int32, index int32 (int64 past 2**31 samples), loss float32, confidence
float16, correct uint8) instead of float64 rows, and in rounds of at most `round_bytes` arriving
at any one rank (default 16 MiB over all ranks), so no rank's extra memory grows with N x P. In a
gather to the main process, a rank with fewer records pads its round with rows of index -1, which
are dropped.

Synchronisation is per flush, not per step, chosen by measurement (`benchmarks/sync.py`): per step
the recorder only keeps references to the batch's tensors; the flush comes when the ranks meet
anyway (epoch start, checkpoint).

Accelerate's `even_batches` pads an epoch's last batches with samples from its start: a sample
can then be seen twice in one epoch. Both records are real forward passes of that sample; the
newest is kept (by optimizer step, then rank; a later round wins over an earlier one, which is the
same order since every rank records the same number of training rows per step), so the table does
not depend on when flushes happen.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from ..core.stats import SampleStats

DEFAULT_ROUND_BYTES = 16 * 2**20


def record_dtype(num_samples: int) -> np.dtype:
    """The packed layout of one record (15 bytes, 19 past 2**31 samples)."""
    index = "<i4" if num_samples < 2**31 else "<i8"
    return np.dtype([("step", "<i4"), ("index", index), ("loss", "<f4"), ("confidence", "<f2"), ("correct", "u1")])


class Transport(Protocol):
    """What a flush needs from the processes (`distributed/transport.py`, over the run's `Topology`)."""

    num_processes: int
    is_main: bool
    sharded: bool

    def max_over_ranks(self, value: int) -> int:
        """The largest `value` of all ranks (collective)."""

    def gather_to_main(self, buffer: torch.Tensor) -> list[torch.Tensor] | None:
        """Equal-size uint8 buffers of every rank, in rank order, on the main process (collective).
        (Transports with `sharded = False`.)"""

    def exchange(self, columns: dict[str, np.ndarray], dtype: np.dtype) -> np.ndarray:
        """Send each of this rank's records (one array per field of `dtype`) to the rank holding its
        row; return the records of this rank's rows from every rank (structured), rank by rank, in
        sent order (collective; transports with `sharded = True`)."""


class StatsRecorder:
    """Per-step records of this rank, written on `flush` to the table (its rows' ranks, or the main process).

    Args:
        stats: the table (whole, or this rank's shard), or None on a rank that holds none.
        num_samples: N (the table's size; needed where `stats` is None).
        round_bytes: the most record bytes all ranks send in one round (what one rank can receive at most).
    """

    def __init__(self, stats: SampleStats | None, num_samples: int | None = None,
                 round_bytes: int = DEFAULT_ROUND_BYTES):
        if stats is None and num_samples is None:
            raise ValueError("num_samples is required where the table is not held")
        self.stats = stats
        self.num_samples = int(stats.num_samples if stats is not None else num_samples)
        self.dtype = record_dtype(self.num_samples)
        self.round_bytes = int(round_bytes)
        self._chunks: list[tuple] = []  # (step, indices, loss, confidence, correct)

    def __len__(self) -> int:
        return sum(chunk[1].numel() for chunk in self._chunks)

    def add(self, indices, loss, confidence, correct, step: int = 0) -> None:
        """Record one batch: `step` orders the records (the global optimizer step).

        The hot path: no copies, no conversions, no host sync; all of that waits for `flush`.
        """
        self._chunks.append((int(step), indices.detach(), loss.detach(), confidence.detach(), correct.detach()))

    def _columns(self, device: torch.device | None) -> list[torch.Tensor]:
        """The records as columns (step, index, loss, confidence, correct) on the losses' device."""
        index_dtype = torch.int32 if self.dtype["index"].itemsize == 4 else torch.int64
        dtypes = (torch.int32, index_dtype, torch.float32, torch.float16, torch.uint8)
        if not self._chunks:
            return [torch.empty(0, dtype=dtype, device=device) for dtype in dtypes]
        steps, indices, loss, confidence, correct = zip(*self._chunks)
        device = loss[0].device
        counts = np.array([p.numel() for p in indices])
        step_column = torch.from_numpy(np.repeat(np.array(steps, dtype=np.int32), counts)).to(device)
        # One concatenation per column, then one conversion (not one per batch).
        flat = lambda parts, dtype: torch.cat([p.reshape(-1) for p in parts]).to(device=device, dtype=dtype)  # noqa: E731
        return [step_column] + [flat(parts, dtype) for parts, dtype in zip((indices, loss, confidence, correct), dtypes[1:])]

    def _pack(self, columns: list[torch.Tensor], start: int, rows: int) -> torch.Tensor:
        """Rows [start, start + rows) as one uint8 buffer, column after column; missing rows are
        padding (every byte 0xFF, so index -1)."""
        parts = []
        for column in columns:
            part = column[start : start + rows]
            if part.shape[0] < rows:
                pad = torch.full((rows - part.shape[0],), -1, dtype=column.dtype, device=column.device)
                part = torch.cat([part, pad.view(torch.uint8).fill_(255).view(column.dtype)])
            parts.append(part.contiguous().view(torch.uint8))
        return torch.cat(parts)

    def flush(self, transport: Transport | None = None, device: torch.device | None = None) -> int:
        """Write what was recorded (by every rank, through `transport`) to the table.

        Collective when `transport` is given: every rank must call it at the same point. Returns
        the number of records written (0 on ranks that do not hold the table).
        """
        columns = self._columns(device)
        self._chunks = []
        count = columns[0].shape[0]
        if transport is None or transport.num_processes == 1:  # no bytes to pack: the columns as they are
            names = self.dtype.names
            return self._apply_columns({name: column.cpu().numpy() for name, column in zip(names, columns)})
        most_rows = transport.max_over_ranks(count)  # the longest rank sets every round's size
        per_rank = max(1, min(self.round_bytes // (self.dtype.itemsize * transport.num_processes), most_rows))
        written = 0
        for start in range(0, most_rows, per_rank):
            rows = min(per_rank, most_rows - start)
            if getattr(transport, "sharded", False):
                received = transport.exchange(self._numpy_columns(columns, start, rows), self.dtype)
                written += self._apply_columns({name: received[name] for name in self.dtype.names})
                continue
            parts = transport.gather_to_main(self._pack(columns, start, rows))
            if parts is not None:
                written += self._apply([part.cpu().numpy() for part in parts], rows)
        return written

    def _numpy_columns(self, columns: list[torch.Tensor], start: int, rows: int) -> dict[str, np.ndarray]:
        """This rank's rows [start, start + rows) (fewer past its last one), one host array per field."""
        return {name: column[start : start + rows].cpu().numpy() for name, column in zip(self.dtype.names, columns)}

    def _apply(self, buffers: list[np.ndarray], rows: int) -> int:
        """Write the rows of every rank's buffer (rank order) to the table, newest record last.

        Each rank's rows are in step order already; a stable sort by step (timsort merges the P
        runs) puts the newest record of a sample last, and the table's fancy-index assignment
        keeps the last value of a repeated index (tested in test_stats.py). Returns rows written.
        """
        if self.stats is None or rows == 0:
            return 0
        names = self.dtype.names
        columns = {name: [] for name in names}
        for buffer in buffers:
            offset = 0
            for name in names:
                dtype = self.dtype[name]
                columns[name].append(buffer[offset : offset + rows * dtype.itemsize].view(dtype))
                offset += rows * dtype.itemsize
        return self._apply_columns({name: np.concatenate(parts) for name, parts in columns.items()})

    def _apply_columns(self, columns: dict[str, np.ndarray]) -> int:
        if self.stats is None or columns["index"].size == 0:
            return 0
        real = columns["index"] >= 0
        if not real.all():
            columns = {name: values[real] for name, values in columns.items()}
        steps = columns["step"]
        if not (steps[1:] >= steps[:-1]).all():  # usually in order already (one process)
            order = np.argsort(steps, kind="stable")
            columns = {name: values[order] for name, values in columns.items()}
        self.stats.update(columns["index"], columns["loss"], columns["confidence"], columns["correct"].view(bool))
        return int(columns["index"].shape[0])
