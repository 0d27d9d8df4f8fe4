"""`HidingEngine`: the algorithm's state across a run, independent of any trainer.

Data flows one way: the trainer feeds per-sample statistics in (`stats.update`), and at each
epoch start asks `plan_epoch(epoch)`: the schedule gives F_e, the strategy turns the statistics
into a hidden set, and the plan carries the LR factor. The trainer hands `plan.hidden` to the
sampler. `state_dict()` holds everything an exact resume needs.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from .config import KakurenboArguments
from .schedule import lr_factor, target_hiding_fraction
from .stats import SampleStats
from .strategies import HidingDecision, build_strategy

logger = logging.getLogger(__name__)

STATE_FORMAT_VERSION = 1


@dataclass
class EpochPlan:
    """What an epoch hides, and the numbers logged about it."""

    epoch: int
    target_fraction: float  # F_e
    num_hidden: int
    num_candidates: int
    moved_back: int
    lr_factor: float
    num_samples: int
    start_step: int = 0  # global optimizer step at which the epoch started
    update_steps: int = 0  # optimizer steps the epoch runs
    refresh_seconds: float = 0.0  # time of the refresh pass that preceded the selection

    @property
    def hidden_fraction(self) -> float:
        return self.num_hidden / self.num_samples

    def log_values(self) -> dict[str, float]:
        return {
            "kakurenbo/hidden": self.num_hidden,
            "kakurenbo/hidden_fraction": self.hidden_fraction,
            "kakurenbo/target_fraction": self.target_fraction,
            "kakurenbo/moved_back": self.moved_back,
            "kakurenbo/lr_factor": self.lr_factor,
            "kakurenbo/refresh_seconds": self.refresh_seconds,
        }


class HidingEngine:
    """Statistics, strategy and schedule of one training run over `num_samples` samples."""

    def __init__(self, num_samples: int, num_epochs: int, arguments: KakurenboArguments, seed: int = 0):
        self.num_samples = int(num_samples)
        self.num_epochs = int(num_epochs)
        self.arguments = arguments
        self.seed = int(seed)
        self.stats = SampleStats(self.num_samples)
        self.strategy = build_strategy(
            arguments.hiding_strategy, confidence_threshold=arguments.confidence_threshold, seed=self.seed
        )
        self.hidden = np.zeros(self.num_samples, dtype=bool)  # the current epoch's hidden set
        self.plans: list[EpochPlan] = []

    @property
    def enabled(self) -> bool:
        return self.arguments.hiding_fraction > 0.0

    def target_fraction(self, epoch: int) -> float:
        args = self.arguments
        return target_hiding_fraction(
            epoch,
            self.num_epochs,
            args.hiding_fraction,
            args.hiding_decay_milestones,
            args.hiding_decay_factors,
            args.hiding_warmup_epochs,
        )

    def samples_to_refresh(self) -> np.ndarray:
        """Indices hidden in the current epoch: their statistics are stale by its end."""
        if not self.arguments.refresh_hidden:
            return np.empty(0, dtype=np.int64)
        return np.flatnonzero(self.hidden)

    def plan_epoch(self, epoch: int) -> EpochPlan:
        """Choose the hidden set of `epoch` from the current statistics (deterministic)."""
        target = self.target_fraction(epoch)
        if target > 0.0:
            decision = self.strategy.select(self.stats, target, epoch)
        else:
            decision = HidingDecision(hidden=np.zeros(self.num_samples, dtype=bool), num_candidates=0, moved_back=0)
        self.hidden = decision.hidden
        plan = EpochPlan(
            epoch=epoch,
            target_fraction=target,
            num_hidden=decision.num_hidden,
            num_candidates=decision.num_candidates,
            moved_back=decision.moved_back,
            lr_factor=lr_factor(self.arguments.lr_compensation, target, decision.num_hidden / self.num_samples),
            num_samples=self.num_samples,
        )
        self.plans.append(plan)
        logger.info(
            "epoch %d: hiding %d of %d samples (%.1f%%, target %.1f%%, %d candidates moved back), lr x%.3f",
            epoch,
            plan.num_hidden,
            self.num_samples,
            100 * plan.hidden_fraction,
            100 * target,
            plan.moved_back,
            plan.lr_factor,
        )
        return plan

    @property
    def current_plan(self) -> EpochPlan | None:
        return self.plans[-1] if self.plans else None

    # --- checkpointing ---------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Arrays and plain values only (safe to store without pickling)."""
        return {
            "format_version": STATE_FORMAT_VERSION,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "hidden": self.hidden.copy(),
            "stats": self.stats.state_dict(),
            "plans": [asdict(plan) for plan in self.plans],
        }

    @staticmethod
    def check_state(state: dict, num_samples: int) -> None:
        """Raise `ValueError` if `state` cannot be resumed on a training set of `num_samples`."""
        version = int(state.get("format_version", -1))
        if version != STATE_FORMAT_VERSION:
            raise ValueError(
                f"hiding state has format version {version}; this kakurenbo_hf reads version {STATE_FORMAT_VERSION}"
            )
        if int(state["num_samples"]) != num_samples:
            raise ValueError(
                f"hiding state was saved for a training set of {int(state['num_samples'])} samples, "
                f"but this training set has {num_samples}"
            )

    def load_state_dict(self, state: dict) -> None:
        self.check_state(state, self.num_samples)
        self.stats.load_state_dict(state["stats"])
        if int(state["seed"]) != self.seed:
            logger.warning("resuming with the saved hiding seed %d (this run's seed is %d)", int(state["seed"]), self.seed)
            self.seed = int(state["seed"])
            self.strategy.seed = self.seed
        self.hidden = np.asarray(state["hidden"], dtype=bool).copy()
        self.plans = [EpochPlan(**plan) for plan in state["plans"]]
