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


def lr_factor(mode: str, target_fraction: float, realized_fraction: float) -> float:
    """The learning-rate multiplier of one epoch."""
    if mode == "target":
        return 1.0 / (1.0 - target_fraction)
    if mode == "realized":
        return 1.0 / (1.0 - realized_fraction)
    if mode == "none":
        return 1.0
    raise ValueError(f"lr_compensation must be 'target', 'realized' or 'none', got {mode!r}")


class VirtualStepLR(LRScheduler):
    """A `LambdaLR` schedule driven by epoch progress instead of the raw step count.

    `begin_epoch(epoch, start_step, steps_in_epoch, lr_factor)` is called at the start of each
    epoch with its true number of optimizer steps. Between calls, the real step s maps to the
    virtual step  epoch * S_full + (s - start_step) * S_full / steps_in_epoch  of the wrapped
    schedule, and the learning rate is  base_lr * lambda(virtual) * lr_factor.

    `last_epoch` (torch's name) counts real optimizer steps, as for any scheduler, so the
    Trainer's checkpointing and `get_last_lr` keep working.
    """

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
        self.lr_factor = 1.0
        optimizer = schedule.optimizer
        # Start from the wrapped schedule's base LRs, whatever it did to the groups' "lr".
        for group, base_lr in zip(optimizer.param_groups, schedule.base_lrs):
            group["lr"] = base_lr
        super().__init__(optimizer, last_epoch=schedule.last_epoch - 1 if schedule.last_epoch > 0 else -1)

    def virtual_step(self, step: int | None = None) -> float:
        step = self.last_epoch if step is None else step
        into_epoch = (step - self.epoch_start_step) * self.full_steps_per_epoch / max(self.steps_in_epoch, 1)
        return self.epoch * self.full_steps_per_epoch + into_epoch

    def get_lr(self) -> list[float]:
        virtual = self.virtual_step()
        return [base * fn(virtual) * self.lr_factor for base, fn in zip(self.base_lrs, self.lr_lambdas)]

    def begin_epoch(self, epoch: int, start_step: int, steps_in_epoch: int, lr_factor: float) -> None:
        """Set the epoch's length and LR factor, and apply the learning rate of the current step."""
        self.epoch = int(epoch)
        self.epoch_start_step = int(start_step)
        self.steps_in_epoch = max(int(steps_in_epoch), 1)
        self.lr_factor = float(lr_factor)
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        # Lambdas are rebuilt by the Trainer; everything else is plain data.
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}

    def load_state_dict(self, state_dict: dict) -> None:
        # Also takes a plain LambdaLR's state (a checkpoint of the plain Trainer): its lambdas are
        # stored as dicts, ours come from the Trainer's arguments.
        self.__dict__.update({k: v for k, v in state_dict.items() if k != "lr_lambdas"})


def wrap_scheduler(schedule, full_steps_per_epoch: int) -> VirtualStepLR:
    """Wrap the Trainer's scheduler, or raise a clear error for one that cannot be wrapped."""
    if isinstance(schedule, VirtualStepLR):
        return schedule
    if isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau) or not isinstance(schedule, LambdaLR):
        raise TypeError(
            f"KakurenboTrainer cannot make the learning-rate schedule {type(schedule).__name__} follow epoch "
            "progress: shorter epochs would leave it unfinished. Use one of transformers' step schedules "
            "(lr_scheduler_type='linear', 'cosine', 'constant', ...), pass a torch LambdaLR via "
            "`optimizers=(optimizer, scheduler)`, or set hiding_fraction=0."
        )
    return VirtualStepLR(schedule, full_steps_per_epoch)
