"""`HidingController` without a Trainer: a stand-in host gives it the few things it reads.

Covers the run's start, an epoch's plan (refresh -> flush -> selection), checkpoint save/load
round trips, the resume position from saved plans, the sample counters, and the check of the
private Trainer members the hooks rely on.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kakurenbo_hf.core.config import KakurenboArguments
from kakurenbo_hf.distributed.topology import Topology
from kakurenbo_hf.hf.compat import PRIVATE_TRAINER_MEMBERS, check_trainer_members
from kakurenbo_hf.hf.controller import HidingController
from kakurenbo_hf.hf.resume import ResumePoint, resume_position


class Host:
    """What the controller reads from its trainer, without a model or a Trainer."""

    def __init__(self, num_epochs=4, should_save=True):
        self.args = SimpleNamespace(num_train_epochs=num_epochs, max_steps=-1, gradient_accumulation_steps=1,
                                    should_save=should_save, ignore_data_skip=False, per_device_train_batch_size=4,
                                    per_device_eval_batch_size=4,
                                    dataloader_drop_last=True)
        self.state = SimpleNamespace(global_step=0, epoch=0.0, log_history=[])
        self._train_batch_size = 4
        self.plans_seen = []

    def _restore_trainer_rng_state(self, checkpoint):
        raise AssertionError("not resuming here")

    def on_epoch_plan(self, plan):
        self.plans_seen.append(plan.epoch)


def make_controller(num_samples=40, **arguments):
    arguments = KakurenboArguments(**{"hiding_fraction": 0.5, **arguments})
    host = Host()
    controller = HidingController(host, arguments, Topology.single())
    controller.wrap_train_dataset([{"x": i} for i in range(num_samples)])
    controller.build_sampler(num_samples, seed=0, order="random")
    controller.start(num_epochs=4)
    return controller, host


def record_epoch(controller, num_samples, loss):
    indices = torch.arange(num_samples)
    controller.record(indices, torch.as_tensor(loss, dtype=torch.float32), torch.ones(num_samples),
                      torch.ones(num_samples, dtype=torch.bool))


def test_an_epoch_plan_flushes_records_and_hides_the_lowest_losses():
    controller, host = make_controller(confidence_threshold=0.0)
    record_epoch(controller, 40, np.arange(40, dtype=np.float32))
    plan = controller.plan_epoch(model=None, epoch=1)
    assert controller.engine.stats.num_updates > 0  # the flush reached the table
    assert plan.num_hidden == 20 and np.flatnonzero(controller.engine.hidden).tolist() == list(range(20))
    assert host.plans_seen == [1]  # the trainer's hook saw the plan


def test_the_refresh_forwards_the_slice_the_engine_asks_for(monkeypatch):
    controller, _ = make_controller(confidence_threshold=0.0, refresh_fraction=1.0, refresh_budget=float("inf"))
    record_epoch(controller, 40, np.arange(40, dtype=np.float32))
    controller.plan_epoch(model=None, epoch=1)
    refreshed = []
    monkeypatch.setattr(controller, "refresh", lambda model, indices: refreshed.append(np.asarray(indices).tolist()))
    record_epoch(controller, 40, np.arange(40, dtype=np.float32))
    plan = controller.plan_epoch(model=None, epoch=2)
    assert refreshed == [list(range(20))] and plan.num_refreshed == 20


def test_save_and_load_round_trip_the_hiding_state(tmp_path):
    controller, _ = make_controller(confidence_threshold=0.0)
    record_epoch(controller, 40, np.linspace(0, 1, 40, dtype=np.float32))
    controller.plan_epoch(model=None, epoch=1)
    controller.engine.set_epoch_geometry(4, 5, start_step=10)
    controller.save(str(tmp_path))
    fresh, _ = make_controller(confidence_threshold=0.0)
    fresh.begin_train()
    fresh.load(str(tmp_path), num_samples=40)
    fresh.start(num_epochs=4)
    assert np.array_equal(fresh.engine.hidden, controller.engine.hidden)
    assert np.array_equal(fresh.engine.stats.loss, controller.engine.stats.loss)
    assert fresh.engine.current_plan == controller.engine.current_plan


def test_load_refuses_a_state_of_another_training_set(tmp_path):
    controller, _ = make_controller()
    record_epoch(controller, 40, np.zeros(40, dtype=np.float32))
    controller.plan_epoch(model=None, epoch=1)
    controller.save(str(tmp_path))
    other, _ = make_controller(num_samples=48)
    with pytest.raises(ValueError, match="40 samples"):
        other.load(str(tmp_path), num_samples=48)


def test_resume_position_follows_the_saved_plans():
    plan = dict(epoch=2, target_fraction=0.5, num_hidden=10, num_candidates=10, moved_back=0, lr_factor=1.0,
                num_samples=40, start_step=20, update_steps=8, samples_per_step=4)
    assert resume_position([], 25, 4, 1, False) is None
    assert resume_position([plan], 28, 4, 1, False) == (3, 0, ResumePoint())  # the epoch was complete
    assert resume_position([plan], 25, 4, 2, False) == (2, 10, ResumePoint())  # 5 steps x 2 micro-batches done
    assert resume_position([plan], 25, 8, 1, False) == (2, 0, ResumePoint(new_geometry=True, saved_samples_per_step=4))
    assert resume_position([plan], 25, 4, 1, True) == (2, 0, ResumePoint())


def test_sample_counters_sum_forwarded_backpropagated_and_refreshed():
    controller, _ = make_controller()
    controller.count_samples(8, 8)
    controller.count_samples(4, 0)
    counters = controller.total_sample_counters()
    assert counters == {"forwarded": 12, "backpropagated": 8, "refresh_forwarded": 0}


def test_the_trainer_member_check_names_what_is_missing():
    class OldTrainer:
        def _run_epoch(self, model, epoch, train_dataloader):
            pass

    with pytest.raises(ImportError, match=r"OldTrainer\._run_epoch, which lacks the parameter\(s\) \['steps_in_epoch'"):
        check_trainer_members(OldTrainer)
    with pytest.raises(ImportError, match=r"OldTrainer\._get_train_sampler, which is missing.*transformers>=5\.3,<6"):
        check_trainer_members(OldTrainer, {"_get_train_sampler": ()})
    from transformers import Trainer

    check_trainer_members(Trainer)  # the installed transformers has every member
    assert "_run_epoch" in PRIVATE_TRAINER_MEMBERS


def test_run_summary_over_the_planned_epochs():
    controller, _ = make_controller(confidence_threshold=0.0)
    record_epoch(controller, 40, np.arange(40, dtype=np.float32))
    controller.plan_epoch(model=None, epoch=1)  # hides 20 of 40
    controller.count_samples(60, 60)
    summary = controller.run_summary()
    assert summary["kakurenbo/samples_backpropagated"] == 60 and summary["kakurenbo/samples_refreshed"] == 0
    assert summary["kakurenbo/saved_share"] == pytest.approx(0.5)  # one planned epoch, half of it hidden
    assert summary["kakurenbo/hidden_share/epoch_1"] == 0.5
    assert summary["kakurenbo/flush_seconds_total"] >= 0
