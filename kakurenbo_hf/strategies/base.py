"""The strategy interface: given the statistics table, which samples does the next epoch hide?

A strategy is a small class registered under a name. Adding one is a one-file change: write
`strategies/<name>.py` with a class decorated by `@register_strategy("<name>")`; every module of
this package is imported on first use, so `hiding_strategy="<name>"` finds it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ..stats import SampleStats

_REGISTRY: dict[str, type[HidingStrategy]] = {}


@dataclass(frozen=True)
class HidingDecision:
    """What a strategy decided for one epoch."""

    hidden: np.ndarray  # bool mask over all samples: True = left out of this epoch
    num_candidates: int  # K = floor(F_e * N), the most the rule could hide
    moved_back: int  # candidates kept visible (wrong or unconfident)

    @property
    def num_hidden(self) -> int:
        return int(self.hidden.sum())


class HidingStrategy(ABC):
    """Chooses the hidden set at the start of an epoch.

    `select` must be a pure function of (stats, target fraction, epoch) and the strategy's own
    configuration (seed included): every rank calls it on identical inputs and must agree.
    """

    def __init__(self, confidence_threshold: float = 0.7, seed: int = 0):
        self.confidence_threshold = float(confidence_threshold)
        self.seed = int(seed)

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


def build_strategy(name: str, **kwargs) -> HidingStrategy:
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown hiding strategy {name!r}; available: {available_strategies()}")
    return registry[name](**kwargs)
