"""Schedules: decay of the hiding fraction, LR factor, and the virtual-step LR wrapper."""

from __future__ import annotations

import io
from fractions import Fraction

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR, MultiplicativeLR, ReduceLROnPlateau, StepLR

from kakurenbo_hf.core.schedule import (
    VirtualStepLR,
    decay_multiplier,
    lr_factor,
    target_hiding_fraction,
    wrap_scheduler,
)

MILESTONES = [1 / 3, 2 / 3, 8 / 9]
FACTORS = [0.8, 0.6, 0.4]


# --- decay_multiplier / target_hiding_fraction -----------------------------------------------


def test_decay_multiplier_paper_schedule_90_epochs():
    # the paper's ImageNet schedule: steps at epochs 30, 60, 80 of 90
    expected = {0: 1.0, 1: 1.0, 29: 1.0, 30: 0.8, 31: 0.8, 59: 0.8, 60: 0.6, 79: 0.6, 80: 0.4, 89: 0.4}
    for epoch, value in expected.items():
        assert decay_multiplier(epoch, 90, MILESTONES, FACTORS) == value, epoch


def test_decay_multiplier_exactly_at_milestones():
    # 3/9 and 6/9 and 8/9 are the milestones themselves (float-equal or off by one ulp)
    values = [decay_multiplier(e, 9, MILESTONES, FACTORS) for e in range(9)]
    assert values == [1.0, 1.0, 1.0, 0.8, 0.8, 0.8, 0.6, 0.6, 0.4]
    assert [decay_multiplier(e, 4, [0.25, 0.5, 0.75], FACTORS) for e in range(4)] == [1.0, 0.8, 0.6, 0.4]


@pytest.mark.parametrize("num_epochs", [1, 2, 3, 5, 9, 10, 12, 18, 27, 30, 45, 90, 100, 300])
def test_decay_multiplier_matches_exact_arithmetic(num_epochs):
    exact_milestones = [Fraction(1, 3), Fraction(2, 3), Fraction(8, 9)]
    for epoch in range(num_epochs):
        reached = sum(Fraction(epoch, num_epochs) >= m for m in exact_milestones)
        expected = 1.0 if reached == 0 else FACTORS[reached - 1]
        assert decay_multiplier(epoch, num_epochs, MILESTONES, FACTORS) == expected, (epoch, num_epochs)


def test_decay_multiplier_without_milestones():
    assert all(decay_multiplier(e, 10, [], []) == 1.0 for e in range(10))


def test_target_hiding_fraction_with_warmup():
    def f(epoch, warmup=1, fraction=0.3, num_epochs=90):
        return target_hiding_fraction(epoch, num_epochs, fraction, MILESTONES, FACTORS, warmup)

    assert f(0) == 0.0
    assert f(1) == pytest.approx(0.3)
    assert f(30) == pytest.approx(0.24)
    assert f(60) == pytest.approx(0.18)
    assert f(85) == pytest.approx(0.12)
    assert [f(e, warmup=5) for e in range(5)] == [0.0] * 5
    assert f(5, warmup=5) == pytest.approx(0.3)
    # warm-up longer than the first milestone: zero, then the decayed value
    assert f(30, warmup=40) == 0.0
    assert f(40, warmup=40) == pytest.approx(0.24)
    assert all(f(e, fraction=0.0) == 0.0 for e in range(90))


def test_lr_factor_modes():
    assert lr_factor("target", 0.3, 0.2) == pytest.approx(1 / 0.7)
    assert lr_factor("realized", 0.3, 0.2) == pytest.approx(1.25)
    assert lr_factor("none", 0.3, 0.2) == 1.0
    assert lr_factor("target", 0.0, 0.0) == 1.0
    assert lr_factor("realized", 0.0, 0.0) == 1.0
    with pytest.raises(ValueError, match="foo"):
        lr_factor("foo", 0.3, 0.2)


# --- VirtualStepLR ---------------------------------------------------------------------------

BASE_LR = 0.1


def linear_with_warmup(total_steps: int, warmup_steps: int):
    """transformers' linear schedule with warm-up, written out (it accepts float steps)."""

    def fn(step):
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return fn


def make_optimizer(num_groups: int = 1, lr: float = BASE_LR):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr * (i + 1)} for i in range(num_groups)]
    return torch.optim.SGD(groups, lr=lr)


def drive(scheduler, optimizer, steps):
    """The Trainer's order: read the LR, optimizer.step, scheduler.step. Returns the LRs used."""
    used = []
    for _ in range(steps):
        used.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return used


@pytest.mark.parametrize("warmup", [0, 4])
def test_equal_epochs_reproduce_lambdalr_exactly(warmup):
    full, epochs = 10, 4
    fn = linear_with_warmup(full * epochs, warmup)
    base_opt = make_optimizer()
    baseline = LambdaLR(base_opt, fn)
    expected = drive(baseline, base_opt, full * epochs) + [[g["lr"] for g in base_opt.param_groups]]

    opt = make_optimizer()
    wrapped = VirtualStepLR(LambdaLR(opt, fn), full)
    got = []
    for epoch in range(epochs):
        wrapped.begin_epoch(epoch, start_step=epoch * full, steps_in_epoch=full, lr_factor=1.0)
        got += drive(wrapped, opt, full)
    got.append([g["lr"] for g in opt.param_groups])
    assert got == expected
    assert wrapped.last_epoch == baseline.last_epoch == full * epochs
    assert wrapped.get_last_lr() == baseline.get_last_lr()


def test_shorter_epochs_end_where_the_baseline_ends():
    full, epochs, warmup = 10, 4, 3
    real_steps = [7, 6, 10, 5]
    factors = [1.0, 1 / 0.7, 1.25, 2.0]
    fn = linear_with_warmup(full * epochs, warmup)
    opt = make_optimizer()
    wrapped = VirtualStepLR(LambdaLR(opt, fn), full)
    start = 0
    for epoch, (steps, factor) in enumerate(zip(real_steps, factors)):
        wrapped.begin_epoch(epoch, start_step=start, steps_in_epoch=steps, lr_factor=factor)
        used = drive(wrapped, opt, steps)
        for j, lrs in enumerate(used):
            virtual = epoch * full + j * full / steps  # independent: progress through the epoch
            assert lrs[0] == pytest.approx(BASE_LR * fn(virtual) * factor, rel=1e-12, abs=1e-15), (epoch, j)
        start += steps
        # at the end of the epoch the schedule stands where the baseline stands after full epochs
        assert wrapped.virtual_step() == pytest.approx((epoch + 1) * full)
    assert wrapped.last_epoch == sum(real_steps)
    # linear decay finished: exactly 0, as the baseline after E * S_full steps
    base_opt = make_optimizer()
    baseline = LambdaLR(base_opt, fn)
    drive(baseline, base_opt, full * epochs)
    assert baseline.get_last_lr() == [0.0]
    assert opt.param_groups[0]["lr"] == 0.0
    assert wrapped.get_last_lr() == [0.0]


def test_lr_factor_multiplies_on_top():
    full = 10
    fn = linear_with_warmup(40, 0)
    opt = make_optimizer(num_groups=2)
    wrapped = VirtualStepLR(LambdaLR(opt, fn), full)
    drive(wrapped, opt, 10)
    wrapped.begin_epoch(1, start_step=10, steps_in_epoch=5, lr_factor=1.5)
    # start of epoch 1: virtual step 10 -> lambda 30/40; groups keep their own base LRs
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 * 0.75 * 1.5, 0.2 * 0.75 * 1.5])
    assert wrapped.get_last_lr() == pytest.approx([0.1 * 0.75 * 1.5, 0.2 * 0.75 * 1.5])


def test_multiple_groups_with_own_lambdas():
    opt = make_optimizer(num_groups=2)
    lambdas = [lambda s: 1.0 - s / 20, lambda s: 0.5 ** (s / 10)]
    wrapped = VirtualStepLR(LambdaLR(opt, lambdas), full_steps_per_epoch=10)
    wrapped.begin_epoch(0, 0, 5, 1.0)
    drive(wrapped, opt, 5)  # half the real steps -> a full virtual epoch
    wrapped.begin_epoch(1, 5, 5, 1.0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 * 0.5, 0.2 * 0.5])


def test_wrapping_restores_base_lr_and_keeps_position():
    fn = linear_with_warmup(40, 0)
    opt = make_optimizer()
    schedule = LambdaLR(opt, fn)
    drive(schedule, opt, 3)  # the wrapped schedule already advanced 3 steps
    wrapped = VirtualStepLR(schedule, 10)
    assert wrapped.base_lrs == [BASE_LR]
    assert wrapped.last_epoch == 3
    assert opt.param_groups[0]["lr"] == pytest.approx(BASE_LR * fn(3))


def test_virtual_step_state_dict_round_trip():
    full = 10
    fn = linear_with_warmup(40, 2)
    opt = make_optimizer()
    wrapped = VirtualStepLR(LambdaLR(opt, fn), full)
    wrapped.begin_epoch(0, 0, 7, 1.2)
    drive(wrapped, opt, 7)
    wrapped.begin_epoch(1, 7, 6, 1.3)
    drive(wrapped, opt, 2)
    state = wrapped.state_dict()
    assert "optimizer" not in state and "lr_lambdas" not in state
    # the Trainer saves with torch.save and loads with weights_only=True
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    # a resume restores the optimizer (its groups hold the current LR) and then the scheduler
    opt2 = make_optimizer()
    restored = VirtualStepLR(LambdaLR(opt2, fn), full)
    opt2.load_state_dict(opt.state_dict())
    restored.load_state_dict(loaded)
    assert restored.last_epoch == wrapped.last_epoch == 9
    assert (restored.epoch, restored.epoch_start_step, restored.steps_in_epoch, restored.lr_factor) == (1, 7, 6, 1.3)
    assert restored.get_last_lr() == wrapped.get_last_lr()
    # both continue with identical learning rates
    assert drive(restored, opt2, 4) == drive(wrapped, opt, 4)
    restored.begin_epoch(2, 13, 5, 1.0)
    wrapped.begin_epoch(2, 13, 5, 1.0)
    assert drive(restored, opt2, 5) == drive(wrapped, opt, 5)


def test_wrap_scheduler_accepts_lambdalr_only():
    opt = make_optimizer()
    wrapped = wrap_scheduler(LambdaLR(opt, lambda s: 1.0), 10)
    assert isinstance(wrapped, VirtualStepLR)
    assert wrap_scheduler(wrapped, 10) is wrapped
    with pytest.raises(TypeError, match="ReduceLROnPlateau"):
        wrap_scheduler(ReduceLROnPlateau(make_optimizer()), 10)
    with pytest.raises(TypeError, match="StepLR"):
        wrap_scheduler(StepLR(make_optimizer(), step_size=3), 10)
    with pytest.raises(TypeError, match="MultiplicativeLR"):
        wrap_scheduler(MultiplicativeLR(make_optimizer(), lambda s: 0.9), 10)
    with pytest.raises(TypeError):
        VirtualStepLR(StepLR(make_optimizer(), step_size=3), 10)
    with pytest.raises(ValueError, match="full_steps_per_epoch"):
        VirtualStepLR(LambdaLR(make_optimizer(), lambda s: 1.0), 0)


def test_lr_factor_is_bounded():
    from kakurenbo_hf.core.schedule import MAX_LR_FACTOR

    assert lr_factor("target", 0.9, 0.0) == pytest.approx(MAX_LR_FACTOR)
    assert lr_factor("realized", 0.3, 0.95) == MAX_LR_FACTOR  # a custom strategy hiding more: still bounded
    with pytest.raises(ValueError, match="hiding fraction"):
        lr_factor("target", 1.0, 0.0)


def test_should_epoch_stop_continues_the_schedule_where_it_is():
    """An epoch that ended early: the next one starts at the schedule point reached, not a jump."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = LambdaLR(optimizer, lambda step: 1.0 - step / 40)
    virtual = VirtualStepLR(schedule, full_steps_per_epoch=10)
    virtual.begin_epoch(0, 0, 10, 1.0)
    for _ in range(3):  # epoch 0 stopped after 3 of its 10 steps
        optimizer.step()
        virtual.step()
    virtual.begin_epoch(1, 3, 10, 1.0)
    assert virtual.virtual_step() == 3.0
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0 - 3 / 40)


def test_resume_in_another_geometry_rescales_the_schedule_position():
    """A checkpoint of a run with 10 steps per epoch resumed where an epoch has 5: same point of the schedule."""
    model = torch.nn.Linear(2, 2)
    saved = VirtualStepLR(LambdaLR(torch.optim.SGD(model.parameters(), lr=1.0), lambda s: 1.0 - s / 30), 10)
    saved.begin_epoch(1, 10, 10, 1.0)
    for _ in range(14):
        saved.optimizer.step()
        saved.step()  # step 14: 4 steps into epoch 1 (virtual 14 of 30)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    resumed = VirtualStepLR(LambdaLR(optimizer, lambda s: 1.0 - s / 15), 5)
    resumed.load_state_dict(saved.state_dict())
    assert resumed.virtual_step() == pytest.approx(7.0)  # 14/30 of the schedule = 7/15
    resumed.continue_epoch(14, 3)  # 3 steps left in the new geometry
    for _ in range(3):
        optimizer.step()
        resumed.step()
    assert resumed.virtual_step() == pytest.approx(10.0)  # the end of epoch 1 = 2 * 5
    assert resumed.get_last_lr()[0] == pytest.approx(1.0 - 10 / 15)
