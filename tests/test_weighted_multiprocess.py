"""The weighted strategies (`infobatch`, `iswr`) in 2 processes: `accelerate launch --multi_gpu
--num_processes 2` on CPU (gloo), through `tests/mp_worker.py`.

Two launches (about a minute each on 2 cores):

1. `weighted_first`: `infobatch` and `iswr` runs with checkpoints, in the same two processes.
2. `weighted_resume`: both resumed from a mid-epoch checkpoint of a weighted epoch, in a fresh launch.

Checked: every rank holds the same plan, hidden set, loss weights and draws each epoch; each
rank's loss at each step is its samples' weighted cross-entropy (recomputed in the worker) over
the Trainer's global item count, and the logged loss is the ranks' mean; the multiset epochs are
split as accelerate splits any epoch and counted in `sample_counters`; the resumed runs reproduce
the uninterrupted ones (same losses, weights, draws, final model weights).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from launch import launch_mp_worker
from mp_records import assert_same_weights, expected_shares, read_records, read_weights, without_timing

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

NUM_PROCESSES = 2
BATCH_SIZE = 8  # per device
NUM_SAMPLES = 150  # not a multiple of NUM_PROCESSES * BATCH_SIZE: even_batches pads
EPOCHS = 4
SAVE_STEPS = 4
COMMON = dict(model="vit", num_samples=NUM_SAMPLES, epochs=EPOCHS, batch_size=BATCH_SIZE, save_steps=SAVE_STEPS)
RUNS = {
    "infobatch": dict(COMMON, name="infobatch", hiding_fraction=0.3, hiding={"hiding_strategy": "infobatch"}),
    "iswr": dict(COMMON, name="iswr", hiding_fraction=0.3, hiding={"hiding_strategy": "iswr"}),
}


@pytest.fixture(scope="module")
def weighted_first(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mp_weighted"))
    launch_mp_worker(out, list(RUNS.values()))
    return out


def _weighted_mid_epoch_checkpoint(out: str, name: str) -> tuple[str, int]:
    """The first mid-epoch checkpoint inside an epoch that has loss weights."""
    record = read_records(out, name)[0]
    for step in record["checkpoints"]:
        plan = next((p for p in record["plans"] if p["start_step"] < step < p["start_step"] + p["update_steps"]), None)
        if plan is not None and record["epochs"][str(plan["epoch"])]["weights"] is not None:
            return os.path.join(out, name, "output", f"checkpoint-{step}"), step
    raise AssertionError(f"{name}: no mid-epoch checkpoint in a weighted epoch; change SAVE_STEPS")


@pytest.fixture(scope="module")
def weighted_resume(weighted_first, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mp_weighted_resume"))
    steps, runs = {}, []
    for name, spec in RUNS.items():
        checkpoint, steps[name] = _weighted_mid_epoch_checkpoint(weighted_first, name)
        runs.append(dict(spec, name=name, save_steps=0, resume=checkpoint))
    launch_mp_worker(out, runs)
    return out, steps


@pytest.mark.parametrize("name", sorted(RUNS))
def test_every_rank_holds_the_same_decision(weighted_first, name):
    records = read_records(weighted_first, name)
    assert all(r["world"]["parallel_mode"] == "ParallelMode.DISTRIBUTED" for r in records)
    assert without_timing(records[1]["plans"]) == without_timing(records[0]["plans"])
    weighted_epochs = 0
    for epoch in range(EPOCHS):
        per_rank = [r["epochs"][str(epoch)] for r in records]
        for key in ("hidden", "sampler_hidden", "order", "weights", "draws"):
            assert per_rank[1][key] == per_rank[0][key], f"epoch {epoch}: ranks differ in {key}"
        weighted_epochs += per_rank[0]["weights"] is not None
        if name == "iswr" and epoch > 0:  # the epoch is the multiset of draws, ordered by the sampler
            assert sorted(per_rank[0]["order"]) == sorted(per_rank[0]["draws"])
            assert len(per_rank[0]["draws"]) > len(set(per_rank[0]["draws"])), "no sample was drawn twice"
    assert weighted_epochs >= 2
    assert_same_weights(*read_weights(weighted_first, name), f"{name}: rank 0 vs rank 1")


@pytest.mark.parametrize("name", sorted(RUNS))
def test_each_ranks_step_loss_is_its_weighted_share(weighted_first, name):
    records = read_records(weighted_first, name)
    table = {int(e): r["weights"] for e, r in records[0]["epochs"].items()}  # the main process's decisions
    epoch_of_step = {}
    for plan in records[0]["plans"]:
        for step in range(plan["start_step"], plan["start_step"] + plan["update_steps"]):
            epoch_of_step[step] = plan["epoch"]
    per_step_losses = {}
    for rank, record in enumerate(records):
        assert record["weighted_steps"], f"rank {rank} ran no weighted step"
        for entry in record["weighted_steps"]:
            weights = table[epoch_of_step[entry["step"]]]
            assert entry["weights"] == [weights[i] for i in entry["indices"]], "a rank used other weights"
            # The Trainer counts the labels of all ranks (num_items_in_batch) and scales by the number of
            # processes: each rank's loss is its weighted sum over its share of the global count.
            assert entry["num_items"] == NUM_PROCESSES * BATCH_SIZE
            expected = entry["weighted_sum"] * NUM_PROCESSES / entry["num_items"]
            assert entry["loss"] == pytest.approx(expected, rel=1e-5), (rank, entry["step"])
            per_step_losses.setdefault(entry["step"], []).append(entry["loss"])
    logged = {e["step"]: e["loss"] for e in records[0]["log_history"] if "loss" in e}
    for step, losses in per_step_losses.items():
        assert len(losses) == NUM_PROCESSES
        assert logged[step + 1] == pytest.approx(np.mean(losses), abs=1e-4)  # the logged loss: the ranks' mean


@pytest.mark.parametrize("name", sorted(RUNS))
def test_epochs_are_split_as_accelerate_splits_them_and_counted(weighted_first, name):
    records = read_records(weighted_first, name)
    total = 0
    for epoch in range(EPOCHS):
        per_rank = [r["epochs"][str(epoch)] for r in records]
        expected, pad = expected_shares(per_rank[0]["order"], NUM_PROCESSES, BATCH_SIZE)
        for rank in range(NUM_PROCESSES):
            assert per_rank[rank]["trained"] == expected[rank], f"epoch {epoch}, rank {rank}"
        plan = records[0]["plans"][epoch]
        assert len(per_rank[0]["order"]) == (plan["num_draws"] or NUM_SAMPLES - plan["num_hidden"])
        total += sum(len(r["trained"]) for r in per_rank)
    for record in records:
        assert record["sample_counters"] == {"forwarded": total, "backpropagated": total, "refresh_forwarded": 0}
    assert records[0]["refresh"] == []  # these rules score left-out samples by their latest training loss


@pytest.mark.parametrize("name", sorted(RUNS))
def test_resume_in_two_processes_is_exact(weighted_first, weighted_resume, name):
    out, steps = weighted_resume
    step = steps[name]
    full, resumed = read_records(weighted_first, name), read_records(out, name)
    for rank in range(NUM_PROCESSES):
        got, want = resumed[rank], full[rank]
        assert got["steps"][0][0] == step
        assert got["steps"] == [s for s in want["steps"] if s[0] >= step], f"rank {rank}: per-step losses differ"
        assert got["weighted_steps"] == [s for s in want["weighted_steps"] if s["step"] >= step]
        assert got["weighted_steps"][0]["step"] == step  # the resumed epoch's weights came from the checkpoint
        for epoch, record in got["epochs"].items():
            for key in ("hidden", "order", "weights", "draws"):
                assert record[key] == want["epochs"][epoch][key], f"rank {rank}, epoch {epoch}: {key} differs"
        assert without_timing(got["plans"]) == without_timing(want["plans"])
    for rank, (got, want) in enumerate(zip(read_weights(out, name), read_weights(weighted_first, name))):
        assert_same_weights(got, want, f"{name}: rank {rank} resumed vs uninterrupted")
