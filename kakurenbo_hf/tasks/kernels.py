"""Chunked per-position statistics: the pass that every sequence and dense task shares.

For each sample b, over its positions whose target is not ignored, `position_sums` accumulates

    nll[b]    sum of -log softmax(scores)[target]          (the per-position cross-entropy)
    prob[b]   sum of softmax(scores)[target]                (the probability of the target)
    hits[b]   positions whose target has the top score      (argmax == target; a tie counts as a hit)
    count[b]  positions counted

and `finish` turns the sums into the per-sample (loss, confidence, correct) of the task table.

Memory. A language model's logits (batch x sequence x vocabulary) are the largest tensor of a
training step. The statistics read them in chunks of at most `chunk_bytes` of float32 (default:
1/40 of the logits, between 1 MiB and 32 MiB), each converted to float32 on its own, under
`torch.no_grad()`, with autocast off: the extra memory is one float32 chunk, the temporary of
`logsumexp` over it and a few (batch,) accumulators, never a float32 copy of the logits.
Measured by `python -m benchmarks.stats_memory`. No host synchronisation: loops run over shapes
only, so the pass queues asynchronously on a GPU.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

# Chunk size: this fraction of the scores tensor, clamped to [MIN_CHUNK_BYTES, MAX_CHUNK_BYTES].
CHUNK_FRACTION = 1 / 40
MIN_CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 32 << 20


def chunk_bytes_for(scores: torch.Tensor, chunk_bytes: int | None = None) -> int:
    """Bytes of float32 one chunk may hold (`chunk_bytes` if given)."""
    if chunk_bytes is not None:
        return max(int(chunk_bytes), 4)
    size = scores.numel() * scores.element_size()
    return int(min(max(size * CHUNK_FRACTION, MIN_CHUNK_BYTES), MAX_CHUNK_BYTES))


def no_autocast(device: torch.device):
    """Statistics in float32 whatever autocast the training step runs under."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # a device type autocast does not know
        return nullcontext()


def _block(scores: torch.Tensor, targets: torch.Tensor, ignore_index: int, dim: int):
    """(nll, prob, hit, valid) of one block; `scores` in float32, classes along `dim`."""
    num_classes = scores.shape[dim]
    valid = (targets != ignore_index) & (targets >= 0) & (targets < num_classes)
    index = torch.where(valid, targets, torch.zeros_like(targets)).long().unsqueeze(dim)
    target_score = scores.gather(dim, index).squeeze(dim)
    nll = (torch.logsumexp(scores, dim) - target_score).clamp_(min=0.0)  # >= 0 up to rounding
    hit = target_score >= scores.amax(dim)
    return nll, valid, hit


def _accumulate(sums: torch.Tensor, rows: slice, nll, valid, hit) -> None:
    reduce_dims = tuple(range(1, nll.ndim))
    nll = nll.masked_fill(~valid, 0.0)
    sums[0, rows] += nll.sum(reduce_dims)
    sums[1, rows] += torch.exp(-nll).masked_fill(~valid, 0.0).sum(reduce_dims)
    sums[2, rows] += (hit & valid).sum(reduce_dims)
    sums[3, rows] += valid.sum(reduce_dims)


def position_sums(scores: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                  chunk_bytes: int | None = None) -> torch.Tensor:
    """Per-sample sums over positions of (batch, positions, classes) `scores` against (batch, positions) targets.

    `scores` may be any floating dtype and any view (e.g. `logits[:, :-1]`): it is never copied
    whole. Targets outside [0, classes) or equal to `ignore_index` are not counted. Returns a
    float32 tensor (4, batch): nll, prob, hits, count.
    """
    if scores.ndim != 3 or targets.shape != scores.shape[:2]:
        raise ValueError(f"position_sums needs scores (batch, positions, classes) and targets (batch, positions); "
                         f"got {tuple(scores.shape)} and {tuple(targets.shape)}")
    batch, length, classes = scores.shape
    sums = torch.zeros(4, batch, dtype=torch.float32, device=scores.device)
    if batch == 0 or length == 0:
        return sums
    per_chunk = max(1, chunk_bytes_for(scores, chunk_bytes) // (4 * max(classes, 1)))  # positions per chunk
    if per_chunk >= length:
        rows, positions = max(1, per_chunk // length), length
    else:
        rows, positions = 1, per_chunk
    targets = targets.to(scores.device)
    with torch.no_grad(), no_autocast(scores.device):
        for row in range(0, batch, rows):
            rows_slice = slice(row, min(row + rows, batch))
            for start in range(0, length, positions):
                block = scores[rows_slice, start:start + positions].detach().float()
                nll, valid, hit = _block(block, targets[rows_slice, start:start + positions], ignore_index, dim=-1)
                _accumulate(sums, rows_slice, nll, valid, hit)
    return sums


def dense_sums(scores: torch.Tensor, targets: torch.Tensor, ignore_index: int = 255,
               size: tuple[int, int] | None = None) -> torch.Tensor:
    """Per-sample sums over pixels of (batch, classes, h, w) `scores` against (batch, H, W) targets.

    The scores are upsampled bilinearly to (H, W) (`align_corners=False`, as every Hugging Face
    semantic-segmentation loss does) one sample at a time, in float32: one sample's upsampled
    scores, where the model's own loss holds the whole batch's. One class (binary segmentation,
    sigmoid) is scored as the two classes (0, logit). Returns (4, batch) sums.
    """
    batch = scores.shape[0]
    sums = torch.zeros(4, batch, dtype=torch.float32, device=scores.device)
    size = tuple(size or targets.shape[-2:])
    targets = targets.to(scores.device)
    with torch.no_grad(), no_autocast(scores.device):
        for row in range(batch):
            block = scores[row:row + 1].detach().float()
            if tuple(block.shape[-2:]) != size:
                block = torch.nn.functional.interpolate(block, size=size, mode="bilinear", align_corners=False)
            if block.shape[1] == 1:  # binary (sigmoid) segmentation: softmax over (0, x) is (1 - sigmoid, sigmoid)
                block = torch.cat([torch.zeros_like(block), block], dim=1)
            nll, valid, hit = _block(block, targets[row:row + 1], ignore_index, dim=1)
            _accumulate(sums, slice(row, row + 1), nll, valid, hit)
    return sums


def log_prob_sums(log_probs: torch.Tensor, mask: torch.Tensor, is_top1: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample sums from per-token log-probabilities of the targets (fused kernels, no logits).

    `is_top1` (argmax == target) if the kernel gives it; otherwise a token counts as a hit when
    its target has probability > 1/2 (which makes it the argmax).
    """
    with torch.no_grad():
        log_probs = log_probs.detach().float()
        valid = mask.to(torch.bool)
        hit = is_top1.to(torch.bool) if is_top1 is not None else log_probs > -math.log(2.0)
        sums = torch.zeros(4, log_probs.shape[0], dtype=torch.float32, device=log_probs.device)
        _accumulate(sums, slice(None), -log_probs.reshape(log_probs.shape[0], -1),
                    valid.reshape(valid.shape[0], -1), hit.reshape(hit.shape[0], -1))
    return sums


def finish(sums: torch.Tensor, min_accuracy: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, confidence, correct) per sample from `position_sums`-style sums.

    loss = mean nll, confidence = mean target probability, correct = fraction of hits >=
    `min_accuracy`. A sample with no counted position gets the "unseen" values: +inf, 0, False.
    """
    nll, prob, hits, count = sums
    seen = count > 0
    denominator = count.clamp(min=1)
    loss = torch.where(seen, nll / denominator, torch.full_like(nll, float("inf")))
    confidence = torch.where(seen, prob / denominator, torch.zeros_like(prob)).clamp(0.0, 1.0)
    correct = seen & (hits >= min_accuracy * count)
    return loss, confidence, correct
