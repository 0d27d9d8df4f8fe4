"""Hand-made statistics tables for the selection tests (numpy only: no transformers import)."""

from __future__ import annotations

import numpy as np

from kakurenbo_hf.core.stats import SampleStats


def make_stats(loss, correct=None, confidence=None) -> SampleStats:
    """A `SampleStats` of len(loss) samples holding the given values.

    Sample i is written with loss[i], correct[i] (default: all correct) and confidence[i] (default:
    all 1, cast to float32 as a model's would be); a sample whose loss is not finite is left unseen
    (loss inf, not correct, confidence 0), as the table starts.
    """
    loss = np.asarray(loss, dtype=np.float32)
    n = loss.shape[0]
    stats = SampleStats(n)
    seen = np.flatnonzero(np.isfinite(loss))
    correct = np.ones(n, bool) if correct is None else np.asarray(correct, bool)
    confidence = np.ones(n, np.float32) if confidence is None else np.asarray(confidence, dtype=np.float32)
    stats.update(seen, loss[seen], confidence[seen], correct[seen])
    return stats
