"""Hiding strategies: one file each, registered by name (see `base.py`)."""

from .base import HidingDecision, HidingStrategy, available_strategies, build_strategy, register_strategy

__all__ = ["HidingDecision", "HidingStrategy", "available_strategies", "build_strategy", "register_strategy"]
