"""The toolkit strategies are written with (not a strategy: nothing is registered here).

- `lowest_seen_mask`: the k lowest scores, never a sample whose score is +inf or NaN (unseen,
  or a statistic that diverged): the rule "keep the highest scores" without hiding what the
  model has not seen.
- `epoch_generator`: the numpy generator of one (seed, epoch, strategy) triple, apart from the
  sampler's and every other strategy's stream, independent of the global RNG.
- `occurrences`: which records of one statistics update repeat a sample, so that a strategy with
  per-sample histories takes every record in order and its state does not depend on where the
  flushes (epoch starts, checkpoints) cut the stream of records: exact resume needs that.
- `argument_or_default`: a field of the run's `KakurenboArguments` (a strategy's own settings),
  or the field's default when the strategy was built without arguments (as in unit tests).
- `checked_state`: a checkpointed state's per-sample arrays, refused with the strategy's name when
  they are another strategy's or of another training set.
"""

from __future__ import annotations

import numpy as np

from ..core.config import KakurenboArguments
from .kakurenbo import lowest_loss_mask


def lowest_seen_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Bool mask of the k lowest `scores` (ties by lower index), leaving out every +inf or NaN.

    Fewer than k are marked when fewer than k scores are below +inf.
    """
    eligible = int(np.count_nonzero(scores < np.inf))  # NaN compares False: not eligible either
    return lowest_loss_mask(scores, min(int(k), eligible))


def epoch_generator(seed: int, epoch: int, stream: int) -> np.random.Generator:
    """The generator of (seed, epoch) for the strategy whose stream tag is `stream`."""
    return np.random.default_rng([int(seed), int(epoch), int(stream)])


def occurrences(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, occurrence): `order` sorts the records by sample, keeping their order within a sample
    (stable); `occurrence[i]` counts the records of the same sample before record i (0: its first)."""
    order = np.argsort(indices, kind="stable")
    ordered = indices[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # first position of each sample's run
    run_start = np.repeat(starts, np.diff(np.r_[starts, ordered.size]))
    occurrence = np.empty(indices.size, dtype=np.int64)
    occurrence[order] = np.arange(indices.size) - run_start
    return order, occurrence


def argument_or_default(arguments, name: str):
    """`arguments.<name>`, or the field's default in `KakurenboArguments` when absent."""
    if arguments is not None and hasattr(arguments, name):
        return getattr(arguments, name)
    return KakurenboArguments.__dataclass_fields__[name].default


def checked_state(strategy: str, state: dict, names, per_sample: dict, num_samples: int) -> dict[str, np.ndarray]:
    """Copies of `state`'s per-sample arrays (name -> dtype in `per_sample`, each of `num_samples` values),
    after checking that `state` holds exactly the arrays `names`; ValueError naming `strategy` otherwise."""
    if sorted(state) != sorted(names):
        raise ValueError(f"{strategy} strategy state must hold the arrays {list(names)}, got {sorted(state)}; "
                         "the checkpoint was saved with another hiding_strategy")
    arrays = {}
    for name, dtype in per_sample.items():
        array = np.asarray(state[name])
        if array.shape != (num_samples,) or array.dtype != dtype:
            raise ValueError(f"{strategy} strategy state {name!r} is {array.dtype} {array.shape}, expected "
                             f"{np.dtype(dtype)} ({num_samples},)")
        arrays[name] = array.copy()
    return arrays
