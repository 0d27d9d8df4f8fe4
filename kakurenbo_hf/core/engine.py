"""`HidingEngine`: the algorithm's state across a run, independent of any trainer.

Data flows one way: the trainer feeds per-sample statistics in (`stats.update`), and at each
epoch start asks `plan_epoch(epoch)`: the schedule gives F_e, the strategy turns the statistics
into a hidden set, and the plan carries the LR factor. The trainer hands the hidden set to the
sampler. `state_dict()` holds everything an exact resume needs.

Where the table is, in a multi-process run: with a `shardable` strategy (KAKURENBO) each rank
holds its `shard` of the rows and every rank runs `plan_epoch` together, exchanging only
summaries through the `collective` (see `sharding.py`); otherwise only the main process holds
the table (`holds_table=True`) and runs the selection, and the other ranks `adopt` its plan and
hidden set. Either way the hidden set ends as the same bitmask (N/8 bytes) on every rank.

Example::

    >>> engine = HidingEngine(1000, num_epochs=10, arguments=KakurenboArguments())
    >>> engine.stats.update(indices, loss, confidence, correct)   # from the training steps
    >>> plan = engine.plan_epoch(1)                                  # F_e, hidden set, LR factor
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from functools import partial

import numpy as np

from .bitmask import clear_bit, count_bits, pack, positions, unpack
from .config import KakurenboArguments
from .refresh_slice import refresh_period
from .schedule import lr_factor, target_hiding_fraction
from .sharding import Collective, LocalCollective, Shard, count_all, whole_table
from .stats import SampleStats
from ..strategies import HidingDecision, build_strategy
from ..strategies.base import num_candidates

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
    start_step: int = 0  # global optimizer step at which the epoch (or its resumed segment) started
    update_steps: int = 0  # optimizer steps the epoch (segment) runs
    refresh_seconds: float = 0.0  # time of the refresh pass (forward only) that preceded the selection
    flush_seconds: float = 0.0  # time of the statistics flush (records to the table) before the selection
    num_refreshed: int = 0  # samples that refresh pass forwarded (all ranks)
    # Where the segment that starts at `start_step` begins in the epoch's order (0 unless the
    # epoch was resumed with another number of processes or batch size), and how many samples of
    # the order one optimizer step consumes there (batch size x processes x accumulation; 0: unknown).
    start_sample: int = 0
    samples_per_step: int = 0
    num_draws: int = 0  # samples drawn with replacement (a multiset epoch); 0: every visible sample once
    # Samples the strategy chose to hide that the coverage rule trains instead (hidden in the last
    # `max_hidden_epochs` epochs in a row); included in neither num_hidden nor moved_back.
    coverage_moved_back: int = 0

    @property
    def num_trained(self) -> int:
        """Samples the epoch trains on (occurrences, for a multiset epoch)."""
        return self.num_draws or self.num_samples - self.num_hidden

    def samples_done(self, global_step: int) -> int:
        """Samples of this epoch's order trained by `global_step` (needs `samples_per_step`)."""
        return self.start_sample + (global_step - self.start_step) * self.samples_per_step

    @property
    def hidden_fraction(self) -> float:
        return self.num_hidden / self.num_samples

    def log_values(self) -> dict[str, float]:
        return {
            "kakurenbo/hidden": self.num_hidden,
            "kakurenbo/hidden_fraction": self.hidden_fraction,
            "kakurenbo/target_fraction": self.target_fraction,
            "kakurenbo/moved_back": self.moved_back,
            "kakurenbo/coverage_moved_back": self.coverage_moved_back,
            "kakurenbo/lr_factor": self.lr_factor,
            "kakurenbo/refresh_seconds": self.refresh_seconds,
            "kakurenbo/flush_seconds": self.flush_seconds,
            "kakurenbo/refreshed": self.num_refreshed,
        }


class HidingEngine:
    """Statistics, strategy and schedule of one training run over `num_samples` samples.

    Args:
        holds_table: this process holds the whole table (the main process; ignored with a `shard`).
        shard: this rank's rows of a table split over the ranks (every rank then plans together).
        collective: the ranks' sums and gathers for a sharded plan (the run's `Topology`).
    """

    def __init__(self, num_samples: int, num_epochs: int, arguments: KakurenboArguments, seed: int = 0,
                 holds_table: bool = True, shard: Shard | None = None, collective: Collective | None = None):
        self.num_samples = int(num_samples)
        self.num_epochs = int(num_epochs)
        self.arguments = arguments
        self.seed = int(seed)
        self.strategy = build_strategy(
            arguments.hiding_strategy, confidence_threshold=arguments.confidence_threshold, seed=self.seed,
            arguments=arguments, num_samples=self.num_samples, num_epochs=self.num_epochs,
        )
        self.sharded = shard is not None and not shard.is_whole
        if self.sharded and not self.strategy.is_shardable():
            raise ValueError(f"hiding_strategy={arguments.hiding_strategy!r} needs the whole table on one process")
        if self.sharded and (collective is None or shard.num_samples != self.num_samples):
            raise ValueError("a sharded engine needs its collective and a shard of the same num_samples")
        self.shard = shard if self.sharded else whole_table(self.num_samples)
        self.collective = collective if self.sharded else LocalCollective()
        self.holds_table = bool(holds_table) or self.sharded
        self.stats = SampleStats(self.shard.size, start=self.shard.start) if self.holds_table else None
        if self.stats is not None and self.strategy.observes:
            self.stats.on_update = partial(self.strategy.observe, self.stats)
        if self.enabled and self.lr_compensation != arguments.lr_compensation:
            logger.info("hiding_strategy=%r applies lr_compensation=%r (its rule), not %r",
                        arguments.hiding_strategy, self.lr_compensation, arguments.lr_compensation)
        if self.enabled and arguments.refresh_hidden and not self.strategy.refreshes_hidden:
            logger.info("hiding_strategy=%r scores left-out samples by their latest training loss: no refresh pass",
                        arguments.hiding_strategy)
        # The coverage rule: no sample hidden more than this many epochs in a row (0: no cap).
        self.max_hidden_epochs = int(self.strategy.default_max_hidden_epochs if arguments.max_hidden_epochs is None
                                     else arguments.max_hidden_epochs)
        self.hidden_bits = np.zeros((self.num_samples + 7) // 8, dtype=np.uint8)  # the epoch's hidden set
        # The epoch's per-sample loss weights (float32, N) and multiset of draws, when the strategy
        # asks for them (see `HidingDecision`); None otherwise. Held by every rank.
        self.weights: np.ndarray | None = None
        self.draws: np.ndarray | None = None
        self.plans: list[EpochPlan] = []
        # Each planned epoch's final hidden set (packed, N/8 bytes; None: not recorded, as in checkpoints of
        # releases before 0.2.0), for `HidingReport`.
        self.hidden_history: list[np.ndarray | None] = []
        # The RNG state an order rule that draws from the global RNG (length grouping) used for the
        # current epoch: a resume redraws the same order from it. Empty when unused.
        self.order_rng_state = np.zeros(0, dtype=np.uint8)
        self._warned_non_finite = False

    @property
    def hidden(self) -> np.ndarray:
        """The current epoch's hidden set as a bool mask over all samples (unpacked on each call)."""
        return unpack(self.hidden_bits, self.num_samples)

    @hidden.setter
    def hidden(self, mask: np.ndarray) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.num_samples,):
            raise ValueError(f"hidden mask must have shape ({self.num_samples},), got {mask.shape}")
        self.hidden_bits = pack(mask)

    @property
    def num_hidden(self) -> int:
        return count_bits(self.hidden_bits, self.num_samples)

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

    @property
    def lr_compensation(self) -> str:
        """The LR compensation mode in force: the strategy's own where its rule fixes one."""
        return self.strategy.lr_compensation or self.arguments.lr_compensation

    def samples_to_refresh(self, next_epoch: int) -> np.ndarray:
        """Indices hidden in the current epoch whose statistics are refreshed before `next_epoch`.

        Empty when the strategy never reads them (`refreshes_hidden=False`). All of them with
        `refresh_fraction=1` and `refresh_budget=inf`; otherwise a slice rotating with the epoch
        (index + epoch divisible by the period R of `refresh.refresh_period`: round(1 /
        refresh_fraction), doubled while the slice would exceed `refresh_budget` x the samples the
        epoch trained), so that a sample hidden R epochs in a row is refreshed at least once in
        them. Reads only the hidden bitmask and the epoch: the same on every rank, no state.
        """
        if not (self.arguments.refresh_hidden and self.strategy.refreshes_hidden):
            return np.empty(0, dtype=np.int64)
        period = refresh_period(self.num_hidden, self.num_samples, self.arguments.refresh_fraction,
                                self.arguments.refresh_budget)
        return positions(self.hidden_bits, self.num_samples, period=period, phase=next_epoch)

    def plan_epoch(self, epoch: int) -> EpochPlan:
        """Choose the hidden set of `epoch` from the current statistics (deterministic)."""
        if not self.holds_table:
            raise RuntimeError("plan_epoch runs where the statistics table is; other ranks adopt() its plan")
        target = self.target_fraction(epoch)
        nothing = HidingDecision(hidden=np.zeros(self.stats.num_samples, dtype=bool), num_candidates=0, moved_back=0,
                                 num_hidden_total=0)
        no_statistics = target > 0.0 and not self._any_finite()
        if no_statistics:  # never seen (a fresh table after a resume) or all non-finite (diverged)
            if not self._warned_non_finite and self.stats.num_updates:
                logger.warning(
                    "epoch %d: no sample has finite statistics (a diverged model, or every label ignored): "
                    "nothing is hidden and the learning rate is not compensated until some are finite.", epoch
                )
                self._warned_non_finite = True
            decision = nothing
        elif target > 0.0 and self.sharded:
            decision = self.strategy.select_shard(self.stats, target, epoch, self.shard, self.collective)
            self._check_decision(decision, target, epoch)
        elif target > 0.0:
            decision = self.strategy.select(self.stats, target, epoch)
            self._check_decision(decision, target, epoch)
        else:
            decision = nothing
        decision, coverage_moved_back = self._apply_coverage(decision)
        if self.sharded:  # every rank's bytes of the bitmask, gathered
            self.hidden_bits = self.collective.gather_bits(pack(decision.hidden), self.shard)
        else:
            self.hidden = decision.hidden
        self.weights, self.draws = decision.weights, decision.draws
        plan = EpochPlan(
            epoch=epoch,
            target_fraction=target,
            num_hidden=decision.num_hidden,
            num_candidates=decision.num_candidates,
            moved_back=decision.moved_back,
            lr_factor=1.0,
            num_samples=self.num_samples,
            num_draws=0 if decision.draws is None else int(decision.draws.size),
            coverage_moved_back=coverage_moved_back,
        )
        if not no_statistics:
            plan.lr_factor = self._lr_factor(plan)
        self.plans.append(plan)
        if self.collective.rank == 0:  # every rank plans a sharded epoch; one line is enough
            logger.info("epoch %d: hiding %d of %d samples (%.1f%%, target %.1f%%, %d candidates moved back, %d by "
                        "the coverage rule), lr x%.3f", epoch, plan.num_hidden, self.num_samples,
                        100 * plan.hidden_fraction, 100 * target, plan.moved_back, coverage_moved_back, plan.lr_factor)
        return plan

    def must_train(self) -> np.ndarray | None:
        """This shard's rows hidden in each of the last `max_hidden_epochs` epochs (bool mask), which the
        coverage rule trains in the next one; None when no sample can be (no cap, or fewer epochs recorded).

        Read from the hidden history (the sets as trained, the same on every rank, checkpointed), so the
        rule needs no state of its own and a resume on any number of processes applies it alike. An epoch
        whose set was not recorded (a checkpoint of a release before 0.2.0) counts as hiding nothing.
        """
        cap = self.max_hidden_epochs
        recent = self.hidden_history[-cap:] if cap else []
        if not cap or len(recent) < cap or any(bits is None for bits in recent):
            return None
        streak = np.bitwise_and.reduce(np.stack(recent), axis=0)  # hidden in every one of them
        first_byte, last_byte = self.shard.byte_range
        return unpack(streak[first_byte:last_byte], self.shard.size)

    def _apply_coverage(self, decision: HidingDecision) -> tuple[HidingDecision, int]:
        """Train the samples the coverage rule calls back; returns the decision and how many they are (all ranks)."""
        must_train = self.must_train() if decision.num_hidden else None
        if must_train is None:
            return decision, 0
        called_back = decision.hidden & must_train
        count = count_all(called_back, self.collective)
        if not count:
            return decision, 0
        hidden = decision.hidden & ~must_train
        weights = decision.weights
        if weights is not None:  # a called-back sample trains with the model's own loss
            weights = weights.copy()
            weights[called_back] = 1.0
        return replace(decision, hidden=hidden, weights=weights,
                       num_hidden_total=decision.num_hidden - count), count

    def _any_finite(self) -> bool:
        """Whether any sample of the table (every shard) has a finite loss."""
        local = 0
        for start in range(0, self.stats.num_samples, 1 << 22):  # no N-sized temporary
            local += int(np.isfinite(self.stats.loss[start : start + (1 << 22)]).any())
        return int(self.collective.sum(np.array([local], dtype=np.int64))[0]) > 0

    def _check_decision(self, decision: HidingDecision, target: float, epoch: int) -> None:
        """A strategy may hide at most floor(F_e * N) samples, and never the whole epoch."""
        hidden = decision.hidden
        rows = self.stats.num_samples
        if hidden.shape != (rows,) or hidden.dtype != np.bool_:
            raise ValueError(
                f"strategy {self.arguments.hiding_strategy!r} returned a hidden mask of shape {hidden.shape} and dtype "
                f"{hidden.dtype}; expected a bool mask of shape ({rows},)"
            )
        name = self.arguments.hiding_strategy
        limit = num_candidates(self.num_samples, target) if self.strategy.uses_hiding_fraction else self.num_samples - 1
        if decision.num_hidden > limit or decision.num_hidden >= self.num_samples:
            raise ValueError(
                f"strategy {name!r} hid {decision.num_hidden} of {self.num_samples} samples in epoch {epoch}, more "
                f"than {limit} (the most it may: floor(F_e * N) with F_e = {target:g}, and fewer than N); an epoch "
                "must keep samples"
            )
        if decision.weights is not None and not self.strategy.weights_losses(self.arguments):
            raise ValueError(f"strategy {name!r} returned loss weights but does not declare them "
                             "(`uses_loss_weights = True`): the trainer would not apply them")
        if decision.weights is not None and (
            decision.weights.shape != (self.num_samples,) or decision.weights.dtype != np.float32
            or not np.isfinite(decision.weights).all() or (decision.weights < 0).any()
        ):
            raise ValueError(f"strategy {name!r} returned loss weights that are not finite non-negative float32 of "
                             f"shape ({self.num_samples},)")
        if decision.draws is not None:
            draws = decision.draws
            if draws.ndim != 1 or draws.size == 0 or draws.dtype.kind not in "iu" or draws.min() < 0 \
                    or draws.max() >= self.num_samples:
                raise ValueError(f"strategy {name!r} returned draws that are not a non-empty 1-d array of sample "
                                 f"indices in [0, {self.num_samples})")
            drawn = np.zeros(self.num_samples, dtype=bool)
            drawn[draws] = True
            if not np.array_equal(drawn, ~hidden):
                raise ValueError(f"strategy {name!r}: the hidden set must be exactly the samples not drawn")

    def adopt(self, plan: EpochPlan, hidden_bits: np.ndarray, weights: np.ndarray | None = None,
              draws: np.ndarray | None = None) -> None:
        """Take the plan, hidden set, loss weights and draws the table holder chose (other ranks)."""
        hidden_bits = np.asarray(hidden_bits, dtype=np.uint8).reshape(-1)
        if hidden_bits.shape != self.hidden_bits.shape:
            raise ValueError(f"hidden bitmask must have {self.hidden_bits.size} bytes, got {hidden_bits.size}")
        self.hidden_bits = hidden_bits.copy()
        self.weights, self.draws = weights, draws
        if self.plans and self.plans[-1].epoch == plan.epoch:
            self.plans[-1] = plan
        else:
            self.plans.append(plan)

    def avoid_last_batch_of_one(self, batch_size: int) -> bool:
        """Train one sample more when the current epoch would end with a batch of a single sample.

        A model with BatchNorm cannot train on a batch of one (with 1x1 feature maps PyTorch raises).
        The plain Trainer meets that only when N % batch == 1; a hiding run's epoch length changes every
        epoch, so it could meet it in any epoch. The hidden sample with the highest loss (the least
        learned; the lowest index among ties) is trained after all; a multiset epoch draws its first
        sample once more. Runs where the table is (every rank, when sharded), before the decision is
        broadcast. Returns whether the plan changed.
        """
        plan = self.current_plan
        if batch_size < 2 or plan is None or plan.num_trained % batch_size != 1 or not (plan.num_hidden or
                                                                                          plan.num_draws):
            return False
        if self.draws is not None:
            self.draws = np.append(self.draws, self.draws[0])
            plan.num_draws = int(self.draws.size)
        else:
            index = self._highest_loss_hidden()
            clear_bit(self.hidden_bits, index)
            plan.num_hidden -= 1
        if plan.lr_factor != 1.0:
            plan.lr_factor = self._lr_factor(plan)
        logger.info("epoch %d: training one sample more so that its last batch is not a single sample (BatchNorm)",
                    plan.epoch)
        return True

    def _highest_loss_hidden(self) -> int:
        """The hidden sample with the highest loss (NaN as +inf; lowest index among ties), over every shard."""
        first_byte, last_byte = self.shard.byte_range
        hidden_here = unpack(self.hidden_bits[first_byte:last_byte], self.shard.size)
        candidates = np.flatnonzero(hidden_here)
        best = np.array([0.0, -np.inf, 0.0])  # (has a candidate, loss, sample index)
        if candidates.size:
            losses = np.nan_to_num(self.stats.loss[candidates].astype(np.float64), nan=np.inf)
            row = int(np.argmax(losses))
            best = np.array([1.0, losses[row], float(self.shard.start + candidates[row])])
        per_rank = self.collective.gather(best)
        per_rank = per_rank[per_rank[:, 0] > 0]
        top = per_rank[per_rank[:, 1] == per_rank[:, 1].max()]
        return int(top[:, 2].min())

    def _lr_factor(self, plan: EpochPlan) -> float:
        """The plan's LR factor from the fraction it leaves untrained (and F_e, for `target`)."""
        return lr_factor(self.lr_compensation, plan.target_fraction, 1.0 - plan.num_trained / self.num_samples)

    def samples_trained(self) -> int:
        """Samples the planned epochs train (occurrences for multiset epochs), summed over the plans."""
        return sum(plan.num_trained for plan in self.plans)

    def remember_hidden_set(self) -> None:
        """Keep the current epoch's hidden set, as it will train (after the last-batch fix and the broadcast)."""
        position = len(self.plans) - 1
        del self.hidden_history[position:]  # an epoch planned again replaces its entry
        self.hidden_history += [None] * (position - len(self.hidden_history))
        self.hidden_history.append(self.hidden_bits.copy())

    def note_refresh(self, seconds: float, num_refreshed: int, flush_seconds: float = 0.0) -> None:
        """The epoch boundary before the current plan: the refresh pass took `seconds` for `num_refreshed`
        samples (all ranks), the flush of records to the table `flush_seconds` (this rank's)."""
        self.current_plan.refresh_seconds = float(seconds) if num_refreshed else 0.0
        self.current_plan.num_refreshed = int(num_refreshed)
        self.current_plan.flush_seconds = float(flush_seconds)

    def set_epoch_geometry(self, samples_per_step: int, update_steps: int, start_step: int | None = None) -> None:
        """How the current epoch (segment) runs: optimizer steps, samples per step, and (at its start) its first step.

        Kept in the plan so that a resume, on the same or another number of processes, knows where it is.
        """
        plan = self.current_plan
        if start_step is not None:
            plan.start_step = int(start_step)
        plan.samples_per_step = int(samples_per_step)
        plan.update_steps = int(update_steps)

    def continue_epoch_at(self, global_step: int) -> int:
        """Resumed with another number of samples per step: the current epoch's new segment starts at
        `global_step`, at the first sample of its order not yet trained (returned)."""
        plan = self.current_plan
        done = plan.samples_done(global_step)
        plan.start_sample, plan.start_step = done, int(global_step)
        return done

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
            "stats": self.stats.state_dict() if self.stats is not None else {},  # this rank's rows, when sharded
            "table_shards": self.shard.num_ranks if self.sharded else 1,
            "plans": [asdict(plan) for plan in self.plans],
            "order_rng_state": self.order_rng_state.copy(),
            "weights": self.weights.copy() if self.weights is not None else np.zeros(0, dtype=np.float32),
            "draws": self.draws.astype(np.int64) if self.draws is not None else np.zeros(0, dtype=np.int64),
            "strategy": self.strategy.state_dict() if self.stats is not None else {},
            **history_arrays(self.hidden_history, self.hidden_bits.size),
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
        hidden = np.asarray(state["hidden"])
        if hidden.shape != (num_samples,) or hidden.dtype != np.bool_ or (hidden.view(np.uint8) > 1).any():
            raise ValueError(f"hiding state's hidden mask is not a bool mask of {num_samples} samples")
        plans = state.get("plans") or []
        if plans and int(np.count_nonzero(hidden)) != int(plans[-1]["num_hidden"]):
            raise ValueError(
                f"hiding state is inconsistent: its hidden mask holds {int(np.count_nonzero(hidden))} samples but its "
                f"plan for epoch {plans[-1]['epoch']} hid {plans[-1]['num_hidden']}; the file is corrupt"
            )

    def load_state_dict(self, state: dict) -> None:
        self.check_state(state, self.num_samples)
        if self.stats is not None:
            self.stats.load_state_dict(state["stats"])
            self.strategy.load_state_dict(state.get("strategy") or {})
        if int(state["seed"]) != self.seed:
            logger.warning("resuming with the saved hiding seed %d (this run's seed is %d)", int(state["seed"]), self.seed)
            self.seed = int(state["seed"])
            self.strategy.seed = self.seed
        self.hidden = np.asarray(state["hidden"], dtype=bool).copy()
        self.plans = [EpochPlan(**plan) for plan in state["plans"]]
        self.hidden_history = history_from_state(state, len(self.plans))
        self.order_rng_state = np.asarray(state.get("order_rng_state", np.zeros(0)), dtype=np.uint8).copy()
        weights, draws = state.get("weights"), state.get("draws")
        self.weights = np.asarray(weights, dtype=np.float32).copy() if weights is not None and len(weights) else None
        self.draws = np.asarray(draws, dtype=np.int64).copy() if draws is not None and len(draws) else None


def history_arrays(history: list[np.ndarray | None], num_bytes: int) -> dict[str, np.ndarray]:
    """The hidden history as two arrays: packed sets (E, N/8; zeros where not recorded) and a recorded mask."""
    stacked = np.zeros((len(history), num_bytes), dtype=np.uint8)
    recorded = np.zeros(len(history), dtype=bool)
    for row, bits in enumerate(history):
        if bits is not None:
            stacked[row], recorded[row] = bits, True
    return {"hidden_history": stacked, "hidden_history_recorded": recorded}


def history_from_state(state: dict, num_plans: int) -> list[np.ndarray | None]:
    """The per-epoch hidden sets of a state; a state without them (releases before 0.2.0) gives only the
    last epoch's, from its current hidden mask."""
    stacked, recorded = state.get("hidden_history"), state.get("hidden_history_recorded")
    if stacked is not None and recorded is not None and len(stacked) == len(recorded) == num_plans:
        return [np.asarray(row, dtype=np.uint8).copy() if known else None for row, known in zip(stacked, recorded)]
    history: list[np.ndarray | None] = [None] * num_plans
    if num_plans and state.get("hidden") is not None:
        history[-1] = np.packbits(np.asarray(state["hidden"], dtype=bool))
    return history
