"""The strategy interface: given the statistics table, which samples does the next epoch hide?

A strategy is a small class registered under a name. Adding one is a one-file change: write
`strategies/<name>.py` with a class decorated by `@register_strategy("<name>")`; every module of
this package is imported on first use, so `hiding_strategy="<name>"` finds it. No other file keeps a
list of strategies: the arguments' validation, the engine, the checkpoint and the trainer
ask the registry (`available_strategies`, `strategy_class`) and the class (its
`validate_arguments` and the capability flags below). Helpers for writing one: `toolkit.py`.

A strategy's own settings, if it has any, are (for now) fields of `KakurenboArguments` named
`<name>_<setting>` (the one other file such a strategy touches), read with
`toolkit.argument_or_default` and checked by its `validate_arguments`.

What a strategy can ask of the trainer, beyond a hidden set per epoch (all optional):

- `observe`: see every value before the table takes it (per-sample histories: forgetting events,
  running moments). Runs where the table is (the main process).
- `state_dict` / `load_state_dict`: arrays that an exact resume needs (checkpointed with the table).
- `HidingDecision.weights`: per-sample loss weights for the epoch (the trainer then backpropagates
  the weighted per-sample loss instead of the model's mean; see `tasks/weighting.py` and the README).
  Declare them with `uses_loss_weights = True`.
- `refreshes_hidden = False`: no refresh pass (left-out samples keep their latest training loss);
  `lr_compensation = "none"` (or another mode): the LR rule the strategy needs, whatever is asked.
- `HidingDecision.draws`: the epoch's samples drawn with replacement (a multiset sampler).
- `selects_per_batch` / `batch_selector`: a selection inside each training step (Selective
  Backprop): the trainer scores every batch without gradients and backpropagates the rows kept.
- `shardable = True` with `select_shard`: a rule computable from per-rank summaries. In a
  multi-process run each rank then holds and selects over its own rows of the table (see
  `sharding.py`); otherwise the main process holds the whole table and decides alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ..core.stats import SampleStats

_REGISTRY: dict[str, type[HidingStrategy]] = {}


@dataclass(frozen=True)
class HidingDecision:
    """What a strategy decided for one epoch."""

    hidden: np.ndarray  # bool mask over all samples: True = left out of this epoch
    num_candidates: int  # K = floor(F_e * N), the most the rule could hide
    moved_back: int  # candidates kept visible (wrong or unconfident)
    # float32 (N,): the loss weight of each sample in this epoch; None = the model's own loss.
    weights: np.ndarray | None = None
    # int (D,): the epoch's samples drawn with replacement (each occurrence trained once, in an
    # order the sampler draws); None = every visible sample once. Samples never drawn are hidden.
    draws: np.ndarray | None = None
    # From `select_shard`: samples hidden over every shard (`hidden` holds this shard's rows only).
    num_hidden_total: int | None = None

    @property
    def num_hidden(self) -> int:
        return int(self.hidden.sum()) if self.num_hidden_total is None else self.num_hidden_total


class HidingStrategy(ABC):
    """Chooses the hidden set at the start of an epoch.

    `select` must be a pure function of (stats, target fraction, epoch), the values it observed
    and the strategy's own configuration (seed included): it runs on one rank, whose decision
    every rank adopts, and a resume must reproduce it.

    Args:
        confidence_threshold: tau of the rules that move back unconfident candidates.
        seed: seeds every random draw (with the epoch).
        arguments: the run's `KakurenboArguments` (a strategy reads its own settings there).
        num_samples: N, the training set's size.
        num_epochs: epochs of the run (for rules that change over training).
    """

    # Hides at most floor(F_e * N) samples (checked by the engine). False: the strategy's own
    # rule sets how many (it must still keep at least one sample).
    uses_hiding_fraction: bool = True
    # The engine refreshes the statistics of last epoch's hidden samples before `select` (when
    # `refresh_hidden`). False: this strategy's decision never reads them (e.g. a static set).
    refreshes_hidden: bool = True
    # True: the trainer scores each training batch without gradients and backpropagates only the
    # rows `batch_selector(rank)` keeps, in every epoch whose target fraction F_e > 0.
    selects_per_batch: bool = False
    # Its decisions carry per-sample loss `weights`: the trainer then checks, before training,
    # that it can reproduce the model's loss per sample (see `tasks/weighting.py`).
    uses_loss_weights: bool = False
    # The `lr_compensation` mode the rule needs whatever the argument says (None: the argument's),
    # e.g. "none" where the loss weights already keep the epoch's summed gradient.
    lr_compensation: str | None = None
    # `select_shard` works on one rank's rows with the others' summaries (see `sharding.py`); no
    # `observe`, state, weights or draws then.
    shardable: bool = False
    # The engine's coverage rule (`max_hidden_epochs`) can apply: the decision is a hidden set whose
    # samples may be made visible again (False for draws with replacement or per-batch selection).
    supports_coverage_rule: bool = True
    # `max_hidden_epochs` when the argument is None: 0 (no cap) keeps a published rule as published.
    default_max_hidden_epochs: int = 0

    def __init__(self, confidence_threshold: float = 0.7, seed: int = 0, *, arguments=None,
                 num_samples: int = 0, num_epochs: int = 1):
        self.confidence_threshold = float(confidence_threshold)
        self.seed = int(seed)
        self.arguments = arguments
        self.num_samples = int(num_samples)
        self.num_epochs = int(num_epochs)

    @classmethod
    def validate_arguments(cls, arguments) -> None:
        """Raise `ValueError` naming the field if one of this strategy's settings is out of range.

        Called by `KakurenboArguments` validation for the chosen strategy only."""

    @classmethod
    def is_shardable(cls) -> bool:
        """`shardable`, unless a subclass changed what the shard rule relies on: a `select` overridden
        below the `select_shard` it would bypass, an `observe` (histories), loss weights or per-batch
        selection. Then the main process holds the whole table, as for any strategy."""
        if not cls.shardable or cls.uses_loss_weights or cls.selects_per_batch or cls.observe is not HidingStrategy.observe:
            return False
        owner = lambda name: next(klass for klass in cls.__mro__ if name in vars(klass))  # noqa: E731
        return issubclass(owner("select_shard"), owner("select"))

    @classmethod
    def weights_losses(cls, arguments) -> bool:
        """Whether its decisions under `arguments` may carry loss weights (default: `uses_loss_weights`)."""
        return cls.uses_loss_weights

    def observe(self, stats: SampleStats, indices: np.ndarray, loss: np.ndarray, confidence: np.ndarray,
                correct: np.ndarray) -> None:
        """Values about to be written to `stats` (which still holds the previous ones), oldest first.

        Called where the table is, for training and refresh records alike. Default: nothing.
        A sample can appear twice in one call (even batches' padding), oldest record first; where a
        flush (epoch start, checkpoint) cuts the records varies, so a strategy that keeps histories
        must take every record in order (`toolkit.occurrences`) for resume to be exact.
        """

    @property
    def observes(self) -> bool:
        return type(self).observe is not HidingStrategy.observe

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays an exact resume needs (names without dots). Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if state:
            raise ValueError(f"strategy {type(self).__name__} keeps no state, got {sorted(state)}")

    def batch_selector(self, rank: int):
        """This rank's per-batch selector (`selects_per_batch` strategies only).

        It has `select(loss, step, micro_batch) -> bool mask` (at least one True) and
        `state_dict()` / `load_state_dict()`, checkpointed per rank.
        """
        raise NotImplementedError(f"{type(self).__name__} does not select per batch")

    def select_shard(self, stats: SampleStats, target_fraction: float, epoch: int, shard, collective) -> HidingDecision:
        """`select` on this rank's `shard` of the table (`stats` holds its rows), every rank at once.

        Returns the shard's part of the hidden mask, with `num_hidden_total` counted over every rank.
        Only for `shardable` strategies.
        """
        raise NotImplementedError(f"{type(self).__name__} is not shardable")

    @abstractmethod
    def select(self, stats: SampleStats, target_fraction: float, epoch: int) -> HidingDecision:
        """Return the hidden set for `epoch`, hiding at most floor(target_fraction * N) samples."""


def register_strategy(name: str):
    """Class decorator: make a `HidingStrategy` available as `hiding_strategy=name`."""

    def decorator(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"a hiding strategy named {name!r} is already registered")
        _REGISTRY[name] = cls
        return cls

    return decorator


def num_candidates(num_samples: int, target_fraction: float) -> int:
    """K = floor(F_e * N), robust to float error (0.3 * 10 is 3, not 2)."""
    return min(num_samples, int(np.floor(target_fraction * num_samples + 1e-9)))


def _registry() -> dict[str, type[HidingStrategy]]:
    import importlib
    import pkgutil

    from .. import strategies

    for module in pkgutil.iter_modules(strategies.__path__):
        importlib.import_module(f"{strategies.__name__}.{module.name}")
    return _REGISTRY


def available_strategies() -> tuple[str, ...]:
    return tuple(sorted(_registry()))


def strategy_class(name: str) -> type[HidingStrategy]:
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown hiding strategy {name!r}; available: {available_strategies()}")
    return registry[name]


def build_strategy(name: str, **kwargs) -> HidingStrategy:
    """The strategy registered as `name`, built with `kwargs` (see `HidingStrategy`)."""
    return strategy_class(name)(**kwargs)
