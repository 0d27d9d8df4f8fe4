"""Selective Backprop: backpropagate only the biggest losers of each batch.

Paper: A. H. Jiang et al., "Accelerating Deep Learning by Focusing on the Biggest Losers",
arXiv 1910.00762 (2019). Reference code: github.com/angelajiang/SelectiveBackprop
(`lib/calculators.py` BatchedRelativeProbabilityCalculator, `lib/hist.py`, `lib/selectors.py`).

Rule, for every training micro-batch after the warm-up, on each rank on its own:
  1. Forward the whole batch without gradients in eval mode (as the reference code's
     forward pass: BatchNorm statistics untouched, no dropout): per-sample losses L_i.
  2. Append the batch's losses to the rank's history of its last R losses.
  3. P_i = max(p_min, CDF(L_i) ** beta), CDF(L) = share of the history strictly below L (the
     batch's own losses included, as in the reference code).
  4. Sample i is backpropagated iff u_i < P_i, u_i ~ U[0, 1) from a generator seeded by
     (seed, global step, rank, micro-batch): deterministic, and a resume redraws the same.
  5. Forward and backward the selected rows only; the loss is the model's own on them.

Deviations from the reference code, and why:
  - Subset per step, no accumulation: the reference queues selected samples until a full batch
    of B is formed, then steps. Inside the HF Trainer every micro-batch ends in a backward and
    every `gradient_accumulation_steps` micro-batches in an optimizer step, so each step here
    trains on the selected subset of its batch (as MosaicML Composer's Selective Backprop
    does). An epoch keeps the plain Trainer's number of optimizer steps and LR schedule, each
    step on about E[P] x B samples (1/(beta+1) of them with uniform percentiles: beta = 1, 2, 3
    give 50%, 33%, 25%); the reference takes about E[P] times fewer, full-size steps. To match
    its per-step batch, raise `per_device_train_batch_size` by 1/E[P].
  - At least one sample per micro-batch: when no sample wins its draw, the highest-loss one is
    kept, so every rank runs a backward each step (DDP hangs otherwise) and no optimizer step
    runs on an empty batch.
  - Non-finite losses (a sample without target, a diverged one) stay out of the history and get
    P = p_min: they give no gradient, or a useless one.
  - The history starts after the warm-up (the reference's priming epoch does not record).

Knobs (see `KakurenboArguments`): `selective_backprop_beta` (3, the reference code's
default; the paper also runs 1 and 2), `selective_backprop_history` (R = 1024),
`selective_backprop_min_probability` (p_min = 0). It is active in every epoch whose target
fraction F_e > 0 (after `hiding_warmup_epochs`, default 1 = the reference's priming epoch; a
decay factor of 0 turns it off); the size of F_e is not used. It hides nothing per epoch, so
the LR is not compensated (`lr_compensation="target"` is refused).

Cost: one extra forward of every batch without gradients (about a third of a training step)
plus a second forward of the selected rows. Saves: the backward of the rows not selected (and,
per step, the optimizer works on smaller batches). State: R float32 losses per rank,
checkpointed per rank.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.stats import SampleStats
from .base import HidingDecision, HidingStrategy, register_strategy
from .toolkit import argument_or_default

DEFAULT_BETA = 3.0
DEFAULT_HISTORY = 1024
_DRAW_TAG = 0x53425052  # "SBPR": keeps these draws apart from every other seeded stream


def selection_probabilities(history: np.ndarray, loss: np.ndarray, beta: float,
                            min_probability: float = 0.0) -> np.ndarray:
    """P_i = max(p_min, CDF(L_i) ** beta), CDF(L) = share of `history` strictly below L.

    Non-finite losses get `min_probability`. `history` must be non-empty where any loss is finite.
    """
    loss = np.asarray(loss, dtype=np.float64)
    finite = np.isfinite(loss)
    probability = np.full(loss.shape, float(min_probability), dtype=np.float64)
    if finite.any():
        ordered = np.sort(np.asarray(history, dtype=np.float64))
        below = np.searchsorted(ordered, loss[finite], side="left")
        probability[finite] = np.maximum(min_probability, np.power(below / ordered.size, beta))
    return probability


class BackpropSelector:
    """One rank's Selective Backprop: its loss history and seeded draws.

    Args:
        beta: selectivity (P = CDF ** beta); 0 selects every sample.
        history_size: R, the number of recent losses the CDF is taken over.
        min_probability: p_min, the floor of every selection probability.
        seed: the run's hiding seed (the same on every rank).
        rank: this process's index (draws differ per rank, the history is per rank).

    Example::

        >>> selector = BackpropSelector(beta=3.0, history_size=1024, seed=0, rank=0)
        >>> keep = selector.select(np.array([0.1, 2.3, 0.7]), step=10, micro_batch=0)  # bool mask
    """

    def __init__(self, beta: float = DEFAULT_BETA, history_size: int = DEFAULT_HISTORY,
                 min_probability: float = 0.0, seed: int = 0, rank: int = 0):
        self.beta = float(beta)
        self.history_size = int(history_size)
        self.min_probability = float(min_probability)
        self.seed = int(seed)
        self.rank = int(rank)
        self.history = np.zeros(0, dtype=np.float32)  # oldest first, at most history_size

    def observe(self, loss: np.ndarray) -> np.ndarray:
        """Append the batch's finite losses to the history; return their selection probabilities."""
        loss = np.asarray(loss, dtype=np.float32).reshape(-1)
        self.history = np.concatenate([self.history, loss[np.isfinite(loss)]])[-self.history_size :]
        return selection_probabilities(self.history, loss, self.beta, self.min_probability)

    def draws(self, size: int, step: int, micro_batch: int) -> np.ndarray:
        """The U[0, 1) draws of one micro-batch: a pure function of (seed, step, rank, micro-batch)."""
        key = [self.seed % 2**64, int(step), self.rank, int(micro_batch), _DRAW_TAG]
        return np.random.default_rng(key).random(size)

    def select(self, loss: np.ndarray, step: int, micro_batch: int) -> np.ndarray:
        """Bool mask of the rows to backpropagate (at least one)."""
        loss = np.asarray(loss, dtype=np.float32).reshape(-1)
        keep = self.draws(loss.size, step, micro_batch) < self.observe(loss)
        if loss.size and not keep.any():
            finite = np.isfinite(loss)
            keep[int(np.argmax(np.where(finite, loss, -np.inf))) if finite.any() else 0] = True
        return keep

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"history": self.history.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        history = np.asarray(state["history"], dtype=np.float32).reshape(-1)
        self.history = history[-self.history_size :].copy()


@register_strategy("selective_backprop")
class SelectiveBackpropStrategy(HidingStrategy):
    """Selective Backprop (Jiang et al., 2019): hides nothing per epoch; each step backpropagates
    the samples whose loss percentile wins a draw with probability percentile ** beta."""

    selects_per_batch = True
    supports_coverage_rule = False

    @classmethod
    def validate_arguments(cls, arguments) -> None:
        beta = float(arguments.selective_backprop_beta)
        if not (math.isfinite(beta) and beta >= 0.0):
            raise ValueError(f"selective_backprop_beta must be a finite number >= 0, got {beta!r}")
        history = arguments.selective_backprop_history
        if int(history) != history or history < 1:
            raise ValueError(f"selective_backprop_history must be an integer >= 1, got {history!r}")
        floor = float(arguments.selective_backprop_min_probability)
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"selective_backprop_min_probability must be in [0, 1], got {floor!r}")
        if arguments.lr_compensation == "target":
            raise ValueError(
                "lr_compensation='target' scales the LR by 1/(1-F_e), but hiding_strategy='selective_backprop' hides "
                "nothing per epoch (every epoch keeps its length): set lr_compensation='realized' or 'none' (both "
                "leave the LR unchanged)."
            )

    def select(self, stats: SampleStats, target_fraction: float, epoch: int) -> HidingDecision:
        return HidingDecision(hidden=np.zeros(stats.num_samples, dtype=bool), num_candidates=0, moved_back=0)

    def batch_selector(self, rank: int) -> BackpropSelector:
        return BackpropSelector(
            beta=argument_or_default(self.arguments, "selective_backprop_beta"),
            history_size=argument_or_default(self.arguments, "selective_backprop_history"),
            min_probability=argument_or_default(self.arguments, "selective_backprop_min_probability"),
            seed=self.seed,
            rank=rank,
        )
