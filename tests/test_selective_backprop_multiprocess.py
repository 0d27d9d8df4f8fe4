"""Selective Backprop in two processes (`accelerate launch --multi_gpu --num_processes 2`, gloo on CPU).

Two launches of `tests/mp_worker.py`:

1. `sb` (checkpoints every 7 steps) and `sb_again` (the same run without checkpoints), in the same
   two processes: each rank selects from its own batches with its own draws and loss history, a
   backward runs on every rank at every step (no hang), the ranks end with the same weights, and
   the run is deterministic.
2. `sb_resume`: from a mid-epoch checkpoint of a selecting epoch of `sb`, in a fresh launch; it
   must continue exactly (each rank's loss history comes back from its own file).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from launch import launch_mp_worker
from mp_records import assert_same_weights, expected_shares, loss_logs, read_records, read_weights
from safetensors.numpy import load_file

from kakurenbo_hf.distributed.checkpoint import rank_state_file_name

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

NUM_PROCESSES = 2
BATCH_SIZE = 8
NUM_SAMPLES = 150  # 160 with even_batches padding: 10 steps per epoch, 10 batches per rank
EPOCHS = 3
STEPS_PER_EPOCH = 10
CHECKPOINT_STEP = 14  # inside epoch 1, the first selecting epoch (warm-up: epoch 0)
SB_RUN = dict(name="sb", model="vit", num_samples=NUM_SAMPLES, epochs=EPOCHS, batch_size=BATCH_SIZE,
              hiding_fraction=0.5, save_steps=7,
              hiding={"hiding_strategy": "selective_backprop", "selective_backprop_beta": 1.0})


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sb_mp_first"))
    launch_mp_worker(out, [SB_RUN, dict(SB_RUN, name="sb_again", save_steps=0)])
    return out


@pytest.fixture(scope="module")
def resumed(first, tmp_path_factory):
    checkpoint = os.path.join(first, "sb", "output", f"checkpoint-{CHECKPOINT_STEP}")
    out = str(tmp_path_factory.mktemp("sb_mp_resume"))
    launch_mp_worker(out, [dict(SB_RUN, name="sb_resume", save_steps=0, resume=checkpoint)])
    return out


def _is_subsequence(part: list[int], whole: list[int]) -> bool:
    rest = iter(whole)
    return all(any(item == candidate for candidate in rest) for item in part)


def test_every_rank_backpropagates_a_subset_of_its_own_batches_every_step(first):
    records = read_records(first, "sb")
    kept_total = 0
    for epoch in range(EPOCHS):
        order = records[0]["epochs"][str(epoch)]["order"]
        assert records[1]["epochs"][str(epoch)]["order"] == order
        shares, _ = expected_shares(order, NUM_PROCESSES, BATCH_SIZE)
        for rank, record in enumerate(records):
            assert record["world"]["num_processes"] == NUM_PROCESSES
            assert record["world"]["parallel_mode"] == "ParallelMode.DISTRIBUTED"
            trained = record["epochs"][str(epoch)]["trained"]
            forwards = [step for step in record["steps"] if step[1] == epoch]
            assert len(forwards) == STEPS_PER_EPOCH, f"rank {rank} epoch {epoch}: a backward in every step"
            if epoch == 0:  # warm-up: the whole share
                assert trained == shares[rank]
            else:
                assert _is_subsequence(trained, shares[rank]) and len(trained) < 0.8 * len(shares[rank]), (
                    f"rank {rank} epoch {epoch}: kept {len(trained)} of {len(shares[rank])}")
                kept_total += len(trained)
    padded = STEPS_PER_EPOCH * NUM_PROCESSES * BATCH_SIZE
    counters = records[0]["sample_counters"]
    assert counters == records[1]["sample_counters"]
    assert counters == {"forwarded": EPOCHS * padded + kept_total, "backpropagated": padded + kept_total,
                        "refresh_forwarded": 0}


def test_ranks_end_with_the_same_weights_and_the_run_is_deterministic(first):
    weights = read_weights(first, "sb")
    assert_same_weights(weights[0], weights[1], "sb: rank 0 vs rank 1")
    again = read_weights(first, "sb_again")
    assert_same_weights(weights[0], again[0], "sb vs sb_again")
    for rank, (record, repeat) in enumerate(zip(read_records(first, "sb"), read_records(first, "sb_again"))):
        assert record["epochs"] == repeat["epochs"], f"rank {rank}: another selection in the same run"
        assert record["steps"] == repeat["steps"]
    assert loss_logs(read_records(first, "sb")[0]) == loss_logs(read_records(first, "sb_again")[0])


def test_each_rank_checkpoints_its_own_loss_history(first):
    checkpoint = os.path.join(first, "sb", "output", f"checkpoint-{CHECKPOINT_STEP}")
    histories = [load_file(os.path.join(checkpoint, rank_state_file_name(rank)))["history"]
                 for rank in range(NUM_PROCESSES)]
    scored = (CHECKPOINT_STEP - STEPS_PER_EPOCH) * BATCH_SIZE  # rows each rank scored in the selecting epoch
    assert [history.size for history in histories] == [scored, scored]
    assert not np.array_equal(histories[0], histories[1])
    assert np.isfinite(histories[0]).all() and np.isfinite(histories[1]).all()


def test_resume_in_two_processes_is_exact(first, resumed):
    full, again = read_records(first, "sb"), read_records(resumed, "sb_resume")
    for rank in range(NUM_PROCESSES):
        assert loss_logs(again[rank], CHECKPOINT_STEP) == loss_logs(full[rank], CHECKPOINT_STEP)
        assert loss_logs(again[rank], CHECKPOINT_STEP)
        for epoch in (1, 2):
            tail = again[rank]["epochs"][str(epoch)]["trained"]
            assert tail and full[rank]["epochs"][str(epoch)]["trained"][-len(tail):] == tail
    resumed_weights, full_weights = read_weights(resumed, "sb_resume"), read_weights(first, "sb")
    for rank in range(NUM_PROCESSES):
        assert_same_weights(resumed_weights[rank], full_weights[rank], f"resumed vs uninterrupted, rank {rank}")
