"""The hidden-set strategies in real training, in 2 processes and in 1: every rank takes the same
decision, and a run interrupted by a checkpoint and resumed is the uninterrupted run.

`random` (exact count), `epsilon_greedy`, `ucb` and `forget` train a tiny ViT through
`tests/mp_worker.py` (2 processes: `accelerate launch --multi_gpu --num_processes 2` on CPU with
gloo; 1 process: plain `python`), all four in one launch, with checkpoints every few steps. A
second launch resumes each from its last mid-epoch checkpoint of epoch 1: the first hiding epoch
(for `forget` an epoch that still counts forgetting events, so the counts cross the checkpoint),
and compares hidden sets, epoch orders, trained samples, per-step losses and final weights with
the uninterrupted run.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction

import pytest
from launch import launch_mp_worker
from mp_records import assert_same_weights, loss_logs, read_records, read_weights, without_timing

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

NUM_SAMPLES = 150  # not a multiple of 2 processes x 8: even_batches pads
EPOCHS = 4
HIDING_FRACTION = 0.5
STRATEGIES = {
    "random": {"hiding_strategy": "random"},
    "epsilon_greedy": {"hiding_strategy": "epsilon_greedy", "epsilon_greedy_epsilon": 0.3},
    "ucb": {"hiding_strategy": "ucb", "ucb_exploration": 1.0, "ucb_decay": 0.5},
    "forget": {"hiding_strategy": "forget", "forget_counting_epochs": 2,  # the paper's decay: the set ignores it
               "hiding_decay_milestones": [1 / 3, 2 / 3, 8 / 9], "hiding_decay_factors": [0.8, 0.6, 0.4]},
}
SAVE_STEPS = {2: 3, 1: 7}  # per number of processes: several checkpoints inside epoch 1


def _run(name: str, num_processes: int, **extra) -> dict:
    spec = dict(name=name, model="vit", num_samples=NUM_SAMPLES, epochs=EPOCHS, batch_size=8,
                hiding_fraction=HIDING_FRACTION, save_steps=SAVE_STEPS[num_processes], hiding=STRATEGIES[name])
    return {**spec, **extra}


def _epoch_one_checkpoint(out: str, name: str, num_processes: int) -> tuple[str, int, dict]:
    record = read_records(out, name, num_processes)[0]
    plan = record["plans"][1]
    inside = [s for s in record["checkpoints"] if plan["start_step"] < s < plan["start_step"] + plan["update_steps"]]
    assert inside, f"{name}: no checkpoint inside epoch 1 ({plan}); change SAVE_STEPS"
    return os.path.join(out, name, "output", f"checkpoint-{inside[-1]}"), inside[-1], plan


@pytest.fixture(scope="module", params=[2, 1], ids=["2proc", "1proc"])
def runs(request, tmp_path_factory):
    """(num_processes, folder of the uninterrupted runs, folder of the resumed runs, checkpoint steps)."""
    num_processes = request.param
    out = str(tmp_path_factory.mktemp(f"strategies_{num_processes}proc"))
    launch_mp_worker(out, [_run(name, num_processes) for name in STRATEGIES], num_processes=num_processes)
    resumed, steps = os.path.join(out, "resumed"), {}
    specs = []
    for name in STRATEGIES:
        checkpoint, steps[name], _ = _epoch_one_checkpoint(out, name, num_processes)
        specs.append(_run(name, num_processes, save_steps=0, resume=checkpoint))
    launch_mp_worker(resumed, specs, num_processes=num_processes)
    return num_processes, out, resumed, steps


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_rank_takes_the_same_decision(runs, name):
    num_processes, out, _, _ = runs
    records = read_records(out, name, num_processes)
    plans = records[0]["plans"]
    assert [p["epoch"] for p in plans] == list(range(EPOCHS))
    for rank, record in enumerate(records):
        assert record["world"]["num_processes"] == num_processes
        assert without_timing(record["plans"]) == without_timing(plans), f"rank {rank}: plans differ"
        for epoch in range(EPOCHS):
            mine, first = record["epochs"][str(epoch)], records[0]["epochs"][str(epoch)]
            assert mine["hidden"] == first["hidden"], f"rank {rank}, epoch {epoch}: hidden sets differ"
            assert mine["sampler_hidden"] == mine["hidden"], f"rank {rank}, epoch {epoch}: sampler disagrees"
            assert mine["order"] == first["order"], f"rank {rank}, epoch {epoch}: orders differ"
            assert not set(mine["trained"]) & set(mine["hidden"]), f"rank {rank}, epoch {epoch}: trained a hidden one"
    if num_processes > 1:
        assert_same_weights(*read_weights(out, name, num_processes)[:2], f"{name}: rank 0 vs rank 1")


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_hidden_counts_follow_the_rule_in_training(runs, name):
    num_processes, out, _, _ = runs
    record = read_records(out, name, num_processes)[0]
    plans, epochs = record["plans"], record["epochs"]
    assert epochs["0"]["hidden"] == []  # warm-up
    if name == "forget":
        assert epochs["1"]["hidden"] == []  # still counting forgetting events
        chosen = epochs["2"]["hidden"]
        assert len(chosen) == math.floor(HIDING_FRACTION * NUM_SAMPLES)
        assert epochs["3"]["hidden"] == chosen  # static, though F_e decays
        assert plans[3]["target_fraction"] < plans[2]["target_fraction"] <= HIDING_FRACTION
        assert record["refresh"] == []  # no refresh pass: the decision never reads it
    else:
        for epoch in range(1, EPOCHS):
            expected = math.floor(Fraction(repr(plans[epoch]["target_fraction"])) * NUM_SAMPLES)
            assert len(epochs[str(epoch)]["hidden"]) == expected > 0, (epoch, plans[epoch])
        assert record["refresh"], "no refresh pass ran"


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_resume_from_a_checkpoint_is_the_uninterrupted_run(runs, name):
    num_processes, out, resumed_out, steps = runs
    step = steps[name]
    full, resumed = read_records(out, name, num_processes), read_records(resumed_out, name, num_processes)
    done = (step - full[0]["plans"][1]["start_step"]) * 8  # samples of epoch 1 each rank trained before it
    for rank in range(num_processes):
        got, want = resumed[rank], full[rank]
        assert sorted(map(int, got["epochs"])) == list(range(1, EPOCHS))
        for epoch in range(1, EPOCHS):
            g, w = got["epochs"][str(epoch)], want["epochs"][str(epoch)]
            assert g["hidden"] == w["hidden"], f"rank {rank}, epoch {epoch}: hidden sets differ after resume"
            assert g["order"] == w["order"], f"rank {rank}, epoch {epoch}: orders differ after resume"
            skipped = done if epoch == 1 else 0
            assert g["trained"] == w["trained"][skipped:], f"rank {rank}, epoch {epoch}: trained other samples"
        assert without_timing(got["plans"]) == without_timing(want["plans"])
        assert got["steps"][0][0] == step
        assert got["steps"] == [s for s in want["steps"] if s[0] >= step], f"rank {rank}: per-step losses differ"
        assert loss_logs(got) == loss_logs(want), f"rank {rank}: logged losses differ"
    for rank, (got, want) in enumerate(zip(read_weights(resumed_out, name, num_processes),
                                          read_weights(out, name, num_processes))):
        assert_same_weights(got, want, f"{name}: rank {rank} resumed vs uninterrupted")
