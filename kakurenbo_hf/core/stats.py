"""Per-sample statistics: what the model currently thinks of every training sample.

One entry per sample, kept for the whole run, in compact numpy arrays (7 bytes per sample):

    loss        float32  per-sample loss of the task; +inf until the sample is first seen, so an
                         unseen sample is never among the lowest-loss candidates
    confidence  float16  the task's confidence in [0, 1], what tau is compared with: the
                         top-class probability for single-label classification, token accuracy
                         for language models, class-balanced accuracy for token classification
                         and segmentation, ... (the task table of `kakurenbo_hf.tasks`)
    correct     bool     whether the task counts the prediction right (argmax == label for
                         single-label classification; see the same table)

`per_sample_statistics` below is the single-label classification row; the other tasks' are in
`kakurenbo_hf.tasks`.

Values are written from the training forward pass (`compute_loss`) and, for hidden samples, by
the refresh pass. In a multi-process run a table holds either every sample (on the main
process) or one rank's shard of them (`start` > 0 or fewer rows than samples; see `sharding.py`):
records reach it once per flush (epoch start, checkpoint; see `recorder.py`). A NaN loss
(a diverged sample) is stored as +inf: it is then treated like an unseen sample, never hidden.
"""

from __future__ import annotations

import numpy as np
import torch

STATS_FIELDS = ("loss", "confidence", "correct")

# The label every Hugging Face / torch loss ignores.
IGNORE_INDEX = -100


def per_sample_statistics(logits: torch.Tensor, labels: torch.Tensor,
                          ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, ...]:
    """Per-sample (loss, confidence, correct) of a single-label classification batch.

    `logits` is (batch, classes), `labels` is (batch,) of class indices. This task's confidence is
    the top probability of the softmax over the *classes* (dim=-1): the official code normalised
    over the batch dimension, which makes a sample's confidence depend on its batch mates. Other
    tasks define their own confidence (token accuracy, class-balanced accuracy, ...): see the task
    table of `kakurenbo_hf.tasks`.
    Computed in float32 whatever the model's dtype, without building a graph.

    A sample labelled `ignore_index` (the loss ignores it) gets the values of an unseen sample:
    loss +inf, confidence 0, not correct. It is then never hidden.
    """
    with torch.no_grad():
        logits = logits.detach().float()
        log_probs = torch.log_softmax(logits, dim=-1)
        labels = labels.long()
        ignored = labels == ignore_index
        loss = -log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        top_log_prob, prediction = log_probs.max(dim=-1)
        confidence = top_log_prob.exp()
        correct = prediction == labels
        # Unconditionally: asking whether any label is ignored would sync the device every step.
        return loss.masked_fill(ignored, float("inf")), confidence.masked_fill(ignored, 0.0), correct & ~ignored


class SampleStats:
    """The table of per-sample statistics for `num_samples` training samples.

    Args:
        num_samples: rows held (N for the whole table; a shard's size otherwise, possibly 0).
        start: the sample index of the first row (a shard of a larger table); indices given to
            `update` are sample indices, not row numbers.
    """

    def __init__(self, num_samples: int, start: int = 0):
        if num_samples < 1 and start == 0:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if num_samples < 0 or start < 0:
            raise ValueError(f"bad table rows: {num_samples} from sample {start}")
        self.num_samples = int(num_samples)
        self.start = int(start)
        self.loss = np.full(self.num_samples, np.inf, dtype=np.float32)
        self.confidence = np.zeros(self.num_samples, dtype=np.float16)
        self.correct = np.zeros(self.num_samples, dtype=bool)
        self.num_updates = 0  # writes since this table was made (not checkpointed)
        # fn(indices, loss, confidence, correct), called with the new values before they are written
        # (the table still holds the old ones): strategies that keep per-sample histories.
        self.on_update = None

    def update(self, indices, loss, confidence, correct) -> None:
        """Write the values of the samples `indices` (array-likes or CPU tensors of equal length).

        An index may repeat (accelerate pads uneven batches with repeated samples): the last value
        given wins (numpy's fancy-index assignment; `recorder.py` orders records oldest first).
        """
        indices = _as_numpy(indices)
        if indices.size == 0:
            return
        if indices.dtype.kind not in "iu":
            indices = indices.astype(np.int64)
        stop = self.start + self.num_samples
        if indices.min() < self.start or indices.max() >= stop:
            raise IndexError(f"sample index out of range [{self.start}, {stop}): {indices.min()}..{indices.max()}")
        loss = _as_numpy(loss).astype(np.float32, copy=True)
        loss[np.isnan(loss)] = np.inf  # a diverged sample: treated as unseen, never hidden
        confidence, correct = _as_numpy(confidence), _as_numpy(correct).astype(bool, copy=False)
        if self.on_update is not None:
            self.on_update(indices, loss, confidence, correct)
        if self.start:
            indices = indices - self.start
        self.loss[indices] = loss
        self.confidence[indices] = confidence
        self.correct[indices] = correct
        self.num_updates += 1

    @property
    def num_seen(self) -> int:
        return int(np.isfinite(self.loss).sum())

    @property
    def nbytes(self) -> int:
        return self.loss.nbytes + self.confidence.nbytes + self.correct.nbytes

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"loss": self.loss.copy(), "confidence": self.confidence.copy(), "correct": self.correct.copy()}

    def load_state_dict(self, state: dict) -> None:
        for name in STATS_FIELDS:
            value = _as_numpy(state[name])
            if value.shape != (self.num_samples,):
                raise ValueError(
                    f"statistics '{name}' hold {value.shape[0] if value.ndim else 0} samples, "
                    f"but the training set has {self.num_samples}"
                )
            getattr(self, name)[:] = value


def _as_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)
