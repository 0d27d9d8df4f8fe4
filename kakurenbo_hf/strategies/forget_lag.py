"""FORGET, online ("lag"): re-rank every epoch by the forgetting events counted so far.

Paper: M. Toneva et al., "An Empirical Study of Example Forgetting during Deep Neural Network
Learning", ICLR 2019; the online FORGET variant the KAKURENBO paper's scripts run (Nguyen et al.,
NeurIPS 2023; code: github.com/TruongThaoNguyen/kakurenbo, `ImageNet/pytorch_*_forget_lag.py`, run
by `ImageNet/scripts/cifar100_WRN/WRN_32_forget.sh`).

Rule:
  1. Counting, from the run's first record to its last: every observed prediction of a sample is
     compared with its previous one; a forgetting event is "correct at the previous observation,
     incorrect now" (as `forget`, with its helpers). A sample is learned once predicted correctly.
  2. At each epoch e >= max(`forget_lag_counting_epochs`, `hiding_warmup_epochs`), the
     floor(F_e * N) samples with the fewest events counted so far are hidden for that epoch only
     (F_e: `hiding_fraction` with its decay schedule). Never-learned samples count as most
     forgotten (dropped last), unseen samples (no finite loss) are never dropped. Ties are broken
     by a random order drawn from (seed, epoch), not by index.
  Before e0 nothing is hidden; counting never stops.

Choices:
  - Hidden samples are not observed: counting goes on over the samples each epoch trains; a hidden
    sample's count stays where it was until it is trained again (its next record is compared with
    its last training one). The published code instead forwards every hidden sample once per epoch
    (a no-gradient pass after training) and counts its events too. Here that pass would cost the
    forward of up to F of the data each epoch; without it the visible samples' counts can only
    grow while the hidden ones' are frozen, so the ranking moves through ties, samples learned
    late and a changing F_e.
  - The tie order is drawn anew each epoch (the published code sorts with `torch.sort`, one order
    for equal counts): with frozen counts a fixed order would hide the same tied samples for good,
    a fresh one lets them take turns and be counted. It is a pure function of (seed, epoch).
  - Never-learned samples are dropped last (Toneva et al.); the published code ranks them by their
    count, 0, so it drops them first.
  - No refresh pass (the rule never reads the statistics of hidden samples); records are training
    forwards (dropout, augmentation), every record compared with the one before it, in the order
    recorded, so the counts do not depend on where flushes cut the records (exact resume).
  - `lr_compensation="target"` is refused while some epochs would compensate for F_e but hide
    nothing (counting epochs after the warm-up); `realized` (default) scales by what is hidden.

Knobs: `hiding_fraction` F and its decay schedule; `forget_lag_counting_epochs` (default 2, the
published `--static-epochs`).

Cost: 3 bytes per sample (uint16 event count, learned flag; checkpointed), O(batch) per record,
one random permutation and one O(N log N) sort per epoch. Saves: floor(F_e * N) / N of every epoch
after e0, and no refresh pass.
"""

from __future__ import annotations

import numpy as np

from ..core.stats import SampleStats
from .base import HidingDecision, HidingStrategy, num_candidates, register_strategy
from .forget import count_forgetting_events, forgetting_scores, least_forgotten
from .toolkit import argument_or_default, checked_state, epoch_generator

_STREAM = 0x464C4147  # "FLAG"


@register_strategy("forget_lag")
class ForgetLagStrategy(HidingStrategy):
    """Count forgetting events all run long; each epoch hide the floor(F_e N) least-forgotten so far.

    Example::

        >>> args = KakurenboArguments(hiding_strategy="forget_lag", hiding_fraction=0.3)
        >>> strategy = ForgetLagStrategy(seed=0, arguments=args, num_samples=len(train_set))
        >>> stats.on_update = partial(strategy.observe, stats)   # what HidingEngine wires up
        >>> strategy.select(stats, 0.3, epoch=2).hidden            # re-ranked at every later epoch
    """

    refreshes_hidden = False
    STATE_NAMES = ("events", "learned")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.counting_epochs = int(argument_or_default(self.arguments, "forget_lag_counting_epochs"))
        self._state: dict[str, np.ndarray] | None = None  # allocated on first use (the table's rank only)

    @classmethod
    def validate_arguments(cls, arguments) -> None:
        epochs = arguments.forget_lag_counting_epochs
        if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 2:
            raise ValueError(f"forget_lag_counting_epochs must be an integer >= 2 (a forgetting event needs two "
                             f"observations of a sample), got {epochs!r}")
        if arguments.lr_compensation == "target" and epochs > arguments.hiding_warmup_epochs:
            raise ValueError(
                "lr_compensation='target' scales the LR by 1/(1-F_e) from the end of the warm-up, but "
                f"hiding_strategy='forget_lag' hides nothing until epoch forget_lag_counting_epochs={epochs} "
                f"(> hiding_warmup_epochs={arguments.hiding_warmup_epochs}): set lr_compensation='realized' "
                "(scales by what is hidden) or 'none', or hiding_warmup_epochs >= forget_lag_counting_epochs")

    def _arrays(self, num_samples: int) -> dict[str, np.ndarray]:
        if self._state is None:
            self._state = {"events": np.zeros(num_samples, dtype=np.uint16),
                           "learned": np.zeros(num_samples, dtype=bool)}
        return self._state

    def observe(self, stats: SampleStats, indices: np.ndarray, loss: np.ndarray, confidence: np.ndarray,
                correct: np.ndarray) -> None:
        state = self._arrays(stats.num_samples)
        count_forgetting_events(state["events"], state["learned"], stats.correct, indices, correct)

    def forgetting_scores(self, stats: SampleStats) -> np.ndarray:
        """float32 (N,): events so far of learned samples; never learned: NEVER_LEARNED; unseen: +inf."""
        state = self._arrays(stats.num_samples)
        return forgetting_scores(state["events"], state["learned"], stats.loss)

    def select(self, stats: SampleStats, target_fraction: float, epoch: int) -> HidingDecision:
        if epoch < self.counting_epochs:  # still counting (the warm-up never reaches here)
            return HidingDecision(hidden=np.zeros(stats.num_samples, dtype=bool), num_candidates=0, moved_back=0)
        k = num_candidates(stats.num_samples, target_fraction)
        tie_break = epoch_generator(self.seed, epoch, _STREAM).permutation(stats.num_samples)
        hidden = least_forgotten(self.forgetting_scores(stats), k, tie_break)
        return HidingDecision(hidden=hidden, num_candidates=k, moved_back=k - int(np.count_nonzero(hidden)))

    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: array.copy() for name, array in self._arrays(self.num_samples).items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._state = checked_state("forget_lag", state, self.STATE_NAMES,
                                    {"events": np.uint16, "learned": np.bool_}, self.num_samples)
