"""FSDP and DeepSpeed: our side of the contract, tested without a GPU.

On CPU, FSDP and DeepSpeed cannot be switched on (accelerate runs plain DDP), so these tests pin
what KakurenboTrainer must guarantee for them:
- the refresh pass runs the same number of forward passes, of the same sizes, on every rank
  (under FSDP / ZeRO-3 each forward is a collective);
- a schedule defined in the DeepSpeed config is refused with an error that says what to change,
  and a schedule DeepSpeed builds through the Trainer (`DummyScheduler` with a callable) is
  adapted and found again under accelerate's wrapper.
The end-to-end runs on CUDA are in `test_gpu_engines.py`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from accelerate.scheduler import AcceleratedScheduler
from accelerate.utils.deepspeed import DummyScheduler
from helpers import collate, make_image_dataset, make_vit

from kakurenbo_hf import KakurenboArguments, KakurenboTrainer, KakurenboTrainingArguments
from kakurenbo_hf.core.engine import HidingEngine
from kakurenbo_hf.core.refresh_slice import plan_refresh_batches
from kakurenbo_hf.core.schedule import VirtualStepLR, find_virtual_scheduler, wrap_scheduler


@pytest.mark.parametrize("num_hidden", [0, 1, 2, 63, 64, 65, 127, 128, 129, 1001])
@pytest.mark.parametrize("num_processes", [1, 2, 3, 8])
@pytest.mark.parametrize("batch_size", [1, 8, 64])
def test_refresh_batches_are_equal_on_every_rank(num_hidden, num_processes, batch_size):
    indices = np.sort(np.random.default_rng(num_hidden).choice(5000, size=num_hidden, replace=False))
    plans = [plan_refresh_batches(indices, rank, num_processes, batch_size) for rank in range(num_processes)]
    sizes = [[len(batch) for batch, _ in plan] for plan in plans]
    assert all(s == sizes[0] for s in sizes), sizes  # same number of forwards, same shapes
    recorded = [i for plan in plans for batch, real in plan for i in batch[:real]]
    assert sorted(recorded) == indices.tolist()  # every hidden sample recorded exactly once
    for rank, plan in enumerate(plans):
        real = [i for batch, n in plan for i in batch[:n]]
        assert real == indices[rank::num_processes].tolist()  # rank r keeps its slice
        assert all(i in set(indices.tolist()) for batch, _ in plan for i in batch)  # padding is real samples


@pytest.mark.parametrize("budget", [math.inf, 0.03, 0.001])
@pytest.mark.parametrize("num_processes", [2, 3, 8])
def test_budgeted_refresh_runs_equal_batches_on_every_rank(budget, num_processes):
    """The budgeted slice (same on every rank) still splits into equal batch counts and sizes."""
    n = 5000
    engine = HidingEngine(n, num_epochs=10, arguments=KakurenboArguments(refresh_budget=budget), seed=0,
                          holds_table=False)
    engine.hidden = np.random.default_rng(7).random(n) < 0.45
    for epoch in range(2, 40):
        indices = engine.samples_to_refresh(epoch)
        plans = [plan_refresh_batches(indices, rank, num_processes, 64) for rank in range(num_processes)]
        sizes = [[len(batch) for batch, _ in plan] for plan in plans]
        assert all(s == sizes[0] for s in sizes), (epoch, sizes)
        assert sorted(i for plan in plans for batch, real in plan for i in batch[:real]) == indices.tolist()


def test_refresh_geometry_is_validated():
    with pytest.raises(ValueError, match="rank"):
        plan_refresh_batches(np.arange(4), 2, 2, 8)


def _trainer(tmp_path):
    args = KakurenboTrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, use_cpu=True, report_to=[],
                                      per_device_train_batch_size=16, disable_tqdm=True)
    return KakurenboTrainer(model=make_vit(), args=args, train_dataset=make_image_dataset(32), data_collator=collate)


def test_deepspeed_config_scheduler_is_refused_with_the_fix(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.create_optimizer()
    trainer.lr_scheduler = DummyScheduler(trainer.optimizer)  # what transformers makes of a DS "scheduler"
    with pytest.raises(ValueError, match="Remove the 'scheduler' section from the DeepSpeed config"):
        trainer.create_scheduler(num_training_steps=4)


def test_deepspeed_scheduler_built_by_the_trainer_is_adapted(tmp_path):
    """A DS config with an optimizer and no scheduler: DeepSpeed calls the Trainer's create_scheduler."""
    import copy

    trainer = _trainer(tmp_path)
    optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=1e-3)

    def lr_scheduler_callable(optimizer):  # as transformers.integrations.deepspeed builds it
        trainer_copy = copy.copy(trainer)
        trainer_copy.lr_scheduler = None
        return trainer_copy.create_scheduler(num_training_steps=4, optimizer=optimizer)

    dummy = DummyScheduler(optimizer, lr_scheduler_callable=lr_scheduler_callable)
    built = dummy.lr_scheduler_callable(optimizer)
    assert isinstance(built, VirtualStepLR) and built.full_steps_per_epoch == 2
    wrapped = AcceleratedScheduler(built, optimizer)  # what accelerate.prepare hands back
    assert find_virtual_scheduler(wrapped) is built
    assert wrap_scheduler(wrapped, 2) is wrapped  # the Trainer's second create_scheduler call keeps it
    trainer.lr_scheduler = wrapped
    assert trainer.create_scheduler(num_training_steps=4) is wrapped
