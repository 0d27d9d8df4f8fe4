"""The language-model path in 2 processes (`accelerate launch --multi_gpu --num_processes 2`, gloo, CPU).

Two launches of `tests/lm_mp_worker.py`: a run with checkpoints, then a fresh launch resumed from
one of its mid-epoch checkpoints taken after hiding started. Checked: both ranks trained as one
DDP job (same weights, same hidden sets), learnable rows were hidden and noise rows never, and
the resumed run ends with the same weights, losses and hidden sets as the uninterrupted one.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from launch import launch
from mp_records import read_records, read_weights

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "lm_mp_worker.py")
SAVE_STEPS = 10


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("lm_mp"))
    launch(WORKER, "--out", out, "--name", "full", "--save_steps", str(SAVE_STEPS))
    full = read_records(out, "full")
    # the first checkpoint inside an epoch that hides samples (not at its end)
    first_hiding_epoch = min(int(e) for e, hidden in full[0]["hidden_sets"].items() if hidden)
    checkpoints = sorted(int(name.split("-")[1]) for name in os.listdir(os.path.join(out, "run"))
                         if name.startswith("checkpoint-"))
    state = lambda step: json.load(open(os.path.join(out, "run", f"checkpoint-{step}", "trainer_state.json")))  # noqa: E731
    resume_step = next(step for step in checkpoints
                       if state(step)["epoch"] > first_hiding_epoch and state(step)["epoch"] % 1 > 1e-6)
    launch(WORKER, "--out", out, "--name", "resumed", "--resume", os.path.join(out, "run", f"checkpoint-{resume_step}"))
    return out, resume_step


def test_ranks_train_one_model_and_hide_learned_rows(runs):
    out, _ = runs
    records = read_records(out, "full")
    assert [r["world"]["num_processes"] for r in records] == [2, 2]
    assert all("DISTRIBUTED" in r["world"]["parallel_mode"] for r in records)
    assert records[0]["hidden_sets"] == records[1]["hidden_sets"]
    hidden = set().union(*map(set, records[0]["hidden_sets"].values()))
    assert hidden, "nothing was hidden"
    assert all(i < 30 for i in hidden), "a noise row was hidden"
    weights = read_weights(out, "full")
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name


def test_resumed_lm_run_matches_the_uninterrupted_one(runs):
    out, resume_step = runs
    full, resumed = read_records(out, "full"), read_records(out, "resumed")
    for rank in range(2):
        after = {s: v for s, v in full[rank]["losses"].items() if int(s) > resume_step}
        assert after == {s: v for s, v in resumed[rank]["losses"].items() if int(s) > resume_step}
        for epoch, hidden in resumed[rank]["hidden_sets"].items():
            assert full[rank]["hidden_sets"][epoch] == hidden
        assert resumed[rank]["global_step"] == full[rank]["global_step"]
    full_weights, resumed_weights = read_weights(out, "full"), read_weights(out, "resumed")
    for rank in range(2):
        for name in full_weights[rank]:
            assert torch.equal(full_weights[rank][name], resumed_weights[rank][name]), name
