"""Schedules: how much to hide each epoch, and what the learning rate does about it.

- `target_hiding_fraction`: F_e = F * m(e), zero during warm-up, where m steps down at
  milestones given as fractions of training (the paper: 1.0 / 0.8 / 0.6 / 0.4).
- `lr_factor`: the compensation for fewer updates per epoch (paper: 1 / (1 - F_e)).
- `VirtualStepLR`: wraps any `LambdaLR` schedule (all of transformers' `get_scheduler` types
  but `reduce_lr_on_plateau`) so that a shorter epoch still advances the schedule by a full
  epoch: within epoch e each real optimizer step advances S_full / S_e schedule steps. The
  schedule therefore ends where the baseline's ends, and the LR factor multiplies on top.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler


def decay_multiplier(epoch: int, num_epochs: int, milestones: Sequence[float], factors: Sequence[float]) -> float:
    """m(e): 1.0 before the first milestone, then the factor of the last milestone reached.

    Epoch e is at the point e / num_epochs of training.
    """
    progress = epoch / max(num_epochs, 1)
    reached = bisect.bisect_right(list(milestones), progress + 1e-12)
    return 1.0 if reached == 0 else float(factors[reached - 1])


def target_hiding_fraction(
    epoch: int,
    num_epochs: int,
    hiding_fraction: float,
    milestones: Sequence[float],
    factors: Sequence[float],
    warmup_epochs: int,
) -> float:
    """F_e: the most that may be hidden in `epoch` (0 during the warm-up epochs)."""
    if epoch < warmup_epochs or hiding_fraction <= 0.0:
        return 0.0
    return hiding_fraction * decay_multiplier(epoch, num_epochs, milestones, factors)


# The LR multiplier never exceeds this: the factor of the largest allowed hiding fraction (0.9).
MAX_LR_FACTOR = 10.0


def lr_factor(mode: str, target_fraction: float, realized_fraction: float) -> float:
    """The learning-rate multiplier of one epoch, at most `MAX_LR_FACTOR`.

    `realized` (the default) is 1 exactly when nothing is hidden, so a run that hides nothing is
    the plain Trainer's run; `target` (the paper's rule) raises the LR by 1/(1-F_e) even when
    most candidates were moved back.
    """
    if mode == "target":
        fraction = target_fraction
    elif mode == "realized":
        fraction = realized_fraction
    elif mode == "none":
        return 1.0
    else:
        raise ValueError(f"lr_compensation must be 'target', 'realized' or 'none', got {mode!r}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"a hiding fraction must be in [0, 1), got {fraction!r}")
    return min(1.0 / (1.0 - fraction), MAX_LR_FACTOR)


class VirtualStepLR(LRScheduler):
    """A `LambdaLR` schedule driven by epoch progress instead of the raw step count.

    Args:
        schedule: the `LambdaLR` to follow (its lambdas and base LRs are reused).
        full_steps_per_epoch: optimizer steps of a full epoch (nothing hidden) in this run.

    `begin_epoch(epoch, start_step, steps_in_epoch, lr_factor)` is called at the start of each
    epoch with its true number of optimizer steps. The epoch covers the virtual interval
    [v0, v0 + span) of the wrapped schedule, span = `full_steps_per_epoch`, and the real step s
    maps to  v0 + (s - start_step) * span / steps_in_epoch. v0 is where the previous epoch left
    off: `epoch * full_steps_per_epoch` after full epochs, less if a callback ended an epoch early
    (`should_epoch_stop`: the schedule then just continues, as with the plain Trainer). The LR is
    base_lr * lambda(virtual) * lr_factor.

    `continue_epoch(start_step, steps_left)` re-times the rest of the current epoch (a resume with
    another number of processes or batch size). Virtual positions are stored with the full epoch
    length they were measured in and rescaled on load, so a checkpoint of a run with P processes
    resumes on Q. `last_epoch` (torch's name) counts real optimizer steps, as for any scheduler.

    Example::

        >>> scheduler = VirtualStepLR(get_scheduler("cosine", optimizer, 0, 100), full_steps_per_epoch=10)
        >>> scheduler.begin_epoch(epoch=1, start_step=10, steps_in_epoch=7, lr_factor=1.25)
    """

    _VIRTUAL_FIELDS = ("epoch_start_virtual", "epoch_virtual_span")

    def __init__(self, schedule: LambdaLR, full_steps_per_epoch: int):
        if not isinstance(schedule, LambdaLR):
            raise TypeError(
                "KakurenboTrainer can only adapt LambdaLR schedules (every transformers schedule "
                f"but 'reduce_lr_on_plateau'); got {type(schedule).__name__}."
            )
        if full_steps_per_epoch < 1:
            raise ValueError(f"full_steps_per_epoch must be >= 1, got {full_steps_per_epoch}")
        self.lr_lambdas = list(schedule.lr_lambdas)
        self.full_steps_per_epoch = int(full_steps_per_epoch)
        self.epoch = 0
        self.epoch_start_step = 0
        self.steps_in_epoch = int(full_steps_per_epoch)
        self.epoch_start_virtual = 0.0
        self.epoch_virtual_span = float(full_steps_per_epoch)
        self.lr_factor = 1.0
        optimizer = schedule.optimizer
        # Start from the wrapped schedule's base LRs, whatever it did to the groups' "lr".
        for group, base_lr in zip(optimizer.param_groups, schedule.base_lrs):
            group["lr"] = base_lr
        super().__init__(optimizer, last_epoch=schedule.last_epoch - 1 if schedule.last_epoch > 0 else -1)

    def virtual_step(self, step: int | None = None) -> float:
        step = self.last_epoch if step is None else step
        into_epoch = (step - self.epoch_start_step) * self.epoch_virtual_span / max(self.steps_in_epoch, 1)
        return self.epoch_start_virtual + into_epoch

    def get_lr(self) -> list[float]:
        virtual = self.virtual_step()
        return [base * fn(virtual) * self.lr_factor for base, fn in zip(self.base_lrs, self.lr_lambdas)]

    def begin_epoch(self, epoch: int, start_step: int, steps_in_epoch: int, lr_factor: float,
                    start_virtual: float | None = None) -> None:
        """Set the epoch's length and LR factor, and apply the learning rate of the current step.

        Called again for the epoch it is in (a resume in the same geometry), it keeps the epoch's
        virtual interval. `start_virtual` overrides where a new epoch starts in the schedule.
        """
        same_epoch = int(epoch) == self.epoch and int(start_step) == self.epoch_start_step
        if not same_epoch:
            self.epoch_start_virtual = self.virtual_step(int(start_step)) if start_virtual is None else float(start_virtual)
            self.epoch_virtual_span = float(self.full_steps_per_epoch)
        self.epoch = int(epoch)
        self.epoch_start_step = int(start_step)
        self.steps_in_epoch = max(int(steps_in_epoch), 1)
        self.lr_factor = float(lr_factor)
        self._apply()

    def continue_epoch(self, start_step: int, steps_left: int) -> None:
        """Spread what is left of the current epoch's interval over `steps_left` steps from `start_step`."""
        end = self.epoch_start_virtual + self.epoch_virtual_span
        self.epoch_start_virtual = self.virtual_step(int(start_step))
        self.epoch_virtual_span = max(end - self.epoch_start_virtual, 0.0)
        self.epoch_start_step = int(start_step)
        self.steps_in_epoch = max(int(steps_left), 1)
        self._apply()

    @property
    def epoch_end_virtual(self) -> float:
        return self.epoch_start_virtual + self.epoch_virtual_span

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        # Lambdas are rebuilt by the Trainer; everything else is plain data.
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}

    def load_state_dict(self, state_dict: dict) -> None:
        # Also takes a plain LambdaLR's state (a checkpoint of the plain Trainer): its lambdas are
        # stored as dicts, ours come from the Trainer's arguments. The full epoch length is this
        # run's; virtual positions saved in another geometry are rescaled to it.
        full_steps = self.full_steps_per_epoch
        state = {k: v for k, v in state_dict.items() if k != "lr_lambdas"}
        saved_full_steps = int(state.pop("full_steps_per_epoch", full_steps))
        self.__dict__.update(state)
        self.full_steps_per_epoch = full_steps
        if "epoch_start_virtual" not in state:  # a checkpoint of a version before virtual intervals
            self.epoch_start_virtual = float(self.epoch * saved_full_steps)
            self.epoch_virtual_span = float(saved_full_steps)
        if saved_full_steps != full_steps:
            scale = full_steps / saved_full_steps
            for name in self._VIRTUAL_FIELDS:
                setattr(self, name, getattr(self, name) * scale)


def find_virtual_scheduler(scheduler) -> VirtualStepLR | None:
    """The `VirtualStepLR` inside `scheduler` and the wrappers accelerate/DeepSpeed put around it."""
    for _ in range(4):
        if isinstance(scheduler, VirtualStepLR) or scheduler is None:
            return scheduler
        scheduler = getattr(scheduler, "scheduler", None) or getattr(scheduler, "lr_scheduler", None)
    return None


def wrap_scheduler(schedule, full_steps_per_epoch: int):
    """Wrap the Trainer's scheduler, or raise a clear error for one that cannot be wrapped.

    A scheduler that already holds a `VirtualStepLR` (under accelerate's or DeepSpeed's wrapper)
    is returned as it is.
    """
    if find_virtual_scheduler(schedule) is not None:
        return schedule
    if type(schedule).__name__ == "DummyScheduler" or type(schedule).__module__.startswith("deepspeed"):
        raise ValueError(
            "KakurenboTrainer cannot make a learning-rate schedule defined in the DeepSpeed config follow epoch "
            "progress: DeepSpeed owns it and steps it per optimizer step, so shorter epochs would leave it "
            "unfinished. Remove the 'scheduler' section from the DeepSpeed config and set the schedule with "
            "lr_scheduler_type / warmup_steps instead (KakurenboTrainer then adapts it), or set hiding_fraction=0."
        )
    if isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau) or not isinstance(schedule, LambdaLR):
        raise TypeError(
            f"KakurenboTrainer cannot make the learning-rate schedule {type(schedule).__name__} follow epoch "
            "progress: shorter epochs would leave it unfinished. Use one of transformers' step schedules "
            "(lr_scheduler_type='linear', 'cosine', 'constant', ...), pass a torch LambdaLR via "
            "`optimizers=(optimizer, scheduler)`, or set hiding_fraction=0."
        )
    return VirtualStepLR(schedule, full_steps_per_epoch)
