"""Real multi-process training: `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo).

Two launches of `tests/mp_worker.py` (about a minute each on 2 cores, most of it imports):

1. `first`: three runs in the same two processes
   - `hide`: KakurenboTrainer, tiny ViT, hiding on, checkpoints every few steps (some mid-epoch);
   - `f0`:   KakurenboTrainer with hiding_fraction=0, tiny DeiT;
   - `plain`: transformers.Trainer, same DeiT, data and arguments.
   - `aug`:  as `hide`, with random augmentation (flip + noise through `set_transform`).
2. `resume`: from a mid-epoch checkpoint of `hide`, to the end, in a fresh launch.
3. `aug_resume`: from a mid-epoch and from an epoch-end checkpoint of `aug`.
4. Another number of processes: `hide` (2 processes) resumed in 1 process, and `solo` (1 process,
   plain `python`) resumed in 2.

Each rank writes what it hid, what it trained on, what it refreshed, its per-step losses and its
final weights; the tests compare the ranks' records with each other and with the expectations.
"""

from __future__ import annotations

import glob
import math
import os

import numpy as np
import pytest
from launch import launch_mp_worker
from mp_records import assert_same_weights, expected_shares, loss_logs, read_records, read_weights, without_timing

from kakurenbo_hf.core.stats import SampleStats
from kakurenbo_hf.strategies.kakurenbo import KakurenboStrategy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

NUM_PROCESSES = 2
BATCH_SIZE = 8  # per device
NUM_SAMPLES = 150  # not a multiple of NUM_PROCESSES * BATCH_SIZE: even_batches pads
EPOCHS = 4
SAVE_STEPS = 7

HIDE_RUN = dict(name="hide", model="vit", num_samples=NUM_SAMPLES, epochs=EPOCHS, batch_size=BATCH_SIZE,
                hiding_fraction=0.5, confidence_threshold=0.42, save_steps=SAVE_STEPS,
                hiding=dict(max_hidden_epochs=1))  # the coverage rule acts from epoch 2: resumes must replay it
F0_RUN = dict(name="f0", trainer="kakurenbo", model="deit", num_samples=NUM_SAMPLES, epochs=3, batch_size=BATCH_SIZE,
              hiding_fraction=0.0)
PLAIN_RUN = dict(F0_RUN, name="plain", trainer="plain")
AUG_RUN = dict(HIDE_RUN, name="aug", augment=True, save_steps=1)  # every step: mid-epoch and epoch-end ones


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mp_first"))
    launch_mp_worker(out, [HIDE_RUN, F0_RUN, PLAIN_RUN, AUG_RUN])
    return out


def _mid_epoch_checkpoint(out: str, name: str, num_processes: int = NUM_PROCESSES) -> tuple[str, int, dict]:
    """The last mid-epoch checkpoint of `name` inside a hiding epoch that is not the last one."""
    record = read_records(out, name, num_processes)[0]
    plans = record["plans"]
    candidates = []
    for step in record["checkpoints"]:
        plan = next((p for p in plans if p["start_step"] < step < p["start_step"] + p["update_steps"]), None)
        if plan is not None and plan["num_hidden"] > 0 and plan["epoch"] < EPOCHS - 1:
            candidates.append((step, plan))
    assert candidates, f"no mid-epoch checkpoint in a hiding epoch; plans {plans}; change SAVE_STEPS"
    step, plan = candidates[-1]
    return os.path.join(out, name, "output", f"checkpoint-{step}"), step, plan


@pytest.fixture(scope="module")
def resume(first, tmp_path_factory):
    """A fresh launch resuming `hide` from a mid-epoch checkpoint of a hiding epoch (not the last)."""
    checkpoint, step, plan = _mid_epoch_checkpoint(first, "hide")
    assert os.path.isfile(os.path.join(checkpoint, "kakurenbo_state.safetensors"))
    out = str(tmp_path_factory.mktemp("mp_resume"))
    launch_mp_worker(out, [dict(HIDE_RUN, name="resume", save_steps=0, resume=checkpoint)])
    return out, step, plan


def test_runs_are_really_distributed(first):
    for name in ("hide", "f0", "plain"):
        for rank, record in enumerate(read_records(first, name)):
            world = record["world"]
            assert world["process_index"] == rank
            assert world["num_processes"] == NUM_PROCESSES == world["world_size"]
            assert world["parallel_mode"] == "ParallelMode.DISTRIBUTED", world


def test_hidden_sets_identical_across_ranks(first):
    """(a) every rank hides the same samples every epoch, and later epochs do hide something."""
    records = read_records(first, "hide")
    plans = records[0]["plans"]
    assert [p["epoch"] for p in plans] == list(range(EPOCHS))
    assert without_timing(records[1]["plans"]) == without_timing(plans)
    for epoch in range(EPOCHS):
        per_rank = [r["epochs"][str(epoch)] for r in records]
        hidden = per_rank[0]["hidden"]
        for rank_record in per_rank:
            assert rank_record["hidden"] == hidden, f"epoch {epoch}: hidden sets differ across ranks"
            assert rank_record["sampler_hidden"] == hidden, f"epoch {epoch}: sampler and engine disagree"
            assert rank_record["order"] == per_rank[0]["order"], f"epoch {epoch}: epoch orders differ across ranks"
            assert rank_record["sampler_epoch"] == epoch
        assert len(hidden) == plans[epoch]["num_hidden"]
        if epoch == 0:
            assert hidden == [], "nothing may be hidden in the warm-up epoch"
    hidden_counts = [len(records[0]["epochs"][str(e)]["hidden"]) for e in range(1, EPOCHS)]
    assert all(count > 0 for count in hidden_counts), f"the tiny model hid nothing in some epoch: {hidden_counts}"
    assert any(p["moved_back"] > 0 for p in plans), "no candidate was moved back: raise confidence_threshold"


def test_table_is_sharded_and_selects_as_one_table(first):
    """Each rank holds only its contiguous rows of the statistics table (KAKURENBO is shardable), and the
    hidden set every rank ends with is the whole table's selection: the shards, put back together and
    given to the single-process rule, hide exactly the same samples."""
    records = read_records(first, "hide")
    plans = records[0]["plans"]
    for epoch in range(1, EPOCHS):
        tables = [record["tables"][str(epoch)] for record in records]
        assert all(table["sharded"] for table in tables)
        assert tables[0]["start"] == 0 and tables[-1]["stop"] == NUM_SAMPLES
        assert all(a["stop"] == b["start"] for a, b in zip(tables, tables[1:]))  # contiguous, disjoint
        assert all(table["rows"] == table["stop"] - table["start"] < NUM_SAMPLES for table in tables)
        assert all(table["hidden_bits"] == tables[0]["hidden_bits"] for table in tables)
        whole = SampleStats(NUM_SAMPLES)
        whole.load_state_dict({name: np.concatenate([np.asarray(t[name]) for t in tables]).astype(dtype)
                               for name, dtype in (("loss", np.float32), ("confidence", np.float16), ("correct", bool))})
        assert np.isfinite(whole.loss).all()  # every sample was seen (trained or refreshed)
        strategy = KakurenboStrategy(confidence_threshold=HIDE_RUN["confidence_threshold"], seed=0)
        expected = strategy.select(whole, tables[0]["target_fraction"], epoch)
        # The coverage rule (max_hidden_epochs=1): last epoch's hidden samples train in this one.
        called_back = np.zeros(NUM_SAMPLES, dtype=bool)
        called_back[records[0]["epochs"][str(epoch - 1)]["hidden"]] = True
        called_back &= expected.hidden
        hidden = expected.hidden & ~called_back
        assert np.packbits(hidden).tolist() == tables[0]["hidden_bits"], f"epoch {epoch}"
        assert int(hidden.sum()) == plans[epoch]["num_hidden"] > 0
        assert expected.moved_back == plans[epoch]["moved_back"]
        assert int(called_back.sum()) == plans[epoch]["coverage_moved_back"]
    assert sum(plan["coverage_moved_back"] for plan in plans) > 0, "the coverage rule never acted"
    assert max(records[0]["report"]["longest_hidden_streak"]) == 1, "a sample stayed hidden two epochs in a row"


def test_ranks_share_the_visible_set(first):
    """(b) the ranks' shares are disjoint apart from even_batches padding and cover exactly the visible set."""
    records = read_records(first, "hide")
    padded_epochs = 0
    for epoch in range(EPOCHS):
        per_rank = [r["epochs"][str(epoch)] for r in records]
        hidden = set(per_rank[0]["hidden"])
        visible = set(range(NUM_SAMPLES)) - hidden
        order = per_rank[0]["order"]
        assert len(order) == len(visible) and set(order) == visible, f"epoch {epoch}: order is not the visible set"
        expected, pad = expected_shares(order, NUM_PROCESSES, BATCH_SIZE)
        padded_epochs += pad > 0
        trained = [rank_record["trained"] for rank_record in per_rank]
        for rank in range(NUM_PROCESSES):
            assert trained[rank] == expected[rank], f"epoch {epoch}, rank {rank}: not its BatchSamplerShard share"
            assert not hidden & set(trained[rank]), f"epoch {epoch}: rank {rank} trained a hidden sample"
        assert set().union(*map(set, trained)) == visible, f"epoch {epoch}: the ranks do not cover the visible set"
        overlap = set(trained[0]) & set(trained[1])
        assert overlap <= set(order[:pad]), f"epoch {epoch}: ranks overlap beyond the padding"
        assert sum(map(len, trained)) == len(visible) + pad
        steps = records[0]["plans"][epoch]["update_steps"]
        assert len(trained[0]) == steps * BATCH_SIZE, f"epoch {epoch}: {len(trained[0])} samples in {steps} steps"
    assert padded_epochs > 0, "no epoch exercised the even_batches padding"


def test_final_weights_identical_across_ranks(first):
    """(c) DDP keeps the replicas identical."""
    for name in ("hide", "f0", "plain"):
        weights = read_weights(first, name)
        assert_same_weights(weights[0], weights[1], f"{name}: rank 0 vs rank 1")


def test_no_hiding_matches_plain_trainer(first):
    """(d) hiding_fraction=0 trains exactly like transformers.Trainer under the same launch."""
    f0, plain = read_records(first, "f0"), read_records(first, "plain")
    for rank in range(NUM_PROCESSES):
        assert f0[rank]["steps"] == plain[rank]["steps"], f"rank {rank}: per-step losses differ"
        assert loss_logs(f0[rank]) == loss_logs(plain[rank]), f"rank {rank}: logged losses differ"
        assert f0[rank]["global_step"] == plain[rank]["global_step"]
        assert f0[rank]["state_epoch"] == plain[rank]["state_epoch"] == F0_RUN["epochs"]
        assert f0[rank]["refresh"] == []
        assert all(e["hidden"] == [] for e in f0[rank]["epochs"].values())
    assert len(f0[0]["steps"]) == F0_RUN["epochs"] * -(-NUM_SAMPLES // (NUM_PROCESSES * BATCH_SIZE))
    f0_weights, plain_weights = read_weights(first, "f0"), read_weights(first, "plain")
    for rank in range(NUM_PROCESSES):
        assert_same_weights(f0_weights[rank], plain_weights[rank], f"rank {rank}: f0 vs plain Trainer")


def test_run_summary_is_the_same_on_every_rank_and_counts_every_rank(first):
    """train()'s hiding summary: counters summed over both ranks, identical on each, logged on each."""
    records = read_records(first, "hide")
    summaries = [r["train_metrics"] for r in records]
    assert summaries[0] == summaries[1]
    summary = summaries[0]
    plans = records[0]["plans"]
    trained = sum(plan["num_draws"] or plan["num_samples"] - plan["num_hidden"] for plan in plans)
    # even_batches pads the last batches with repeated samples: every rank trains as many rows per step.
    assert summary["kakurenbo/samples_backpropagated"] == records[0]["sample_counters"]["backpropagated"] >= trained
    assert summary["kakurenbo/saved_share"] == pytest.approx(1 - trained / (len(plans) * NUM_SAMPLES))
    assert [summary[f"kakurenbo/hidden_share/epoch_{p['epoch']}"] for p in plans] == [
        p["num_hidden"] / p["num_samples"] for p in plans]
    assert summary["kakurenbo/max_hidden_epochs"] == 1
    assert summary["kakurenbo/coverage_moved_back_total"] == sum(p["coverage_moved_back"] for p in plans) > 0
    for record in records:
        final = next(e for e in reversed(record["log_history"]) if "kakurenbo/saved_share" in e)
        assert final["kakurenbo/samples_backpropagated"] == summary["kakurenbo/samples_backpropagated"]


def test_hiding_report_is_whole_and_the_same_on_every_rank(first):
    """trainer.hiding_report() in two processes (a sharded table): every rank gets every sample's statistics
    and each epoch's hidden set as trained; a checkpoint (sharded table files) reports the same epochs."""
    from kakurenbo_hf import HidingReport

    records = read_records(first, "hide")
    reports = [r["report"] for r in records]
    assert reports[0] == reports[1]
    report = reports[0]
    assert len(report["loss"]) == NUM_SAMPLES and all(math.isfinite(loss) for loss in report["loss"])
    for epoch, hidden in report["hidden"].items():
        assert hidden == records[0]["epochs"][epoch]["hidden"], f"epoch {epoch}"
    counts = np.zeros(NUM_SAMPLES, dtype=int)
    for hidden in report["hidden"].values():
        counts[hidden] += 1
    assert report["epochs_hidden"] == counts.tolist() and max(report["epochs_hidden"]) > 0
    assert all(0 < s <= c for s, c in zip(report["longest_hidden_streak"], counts) if c)
    checkpoints = sorted(glob.glob(os.path.join(first, "hide", "output", "checkpoint-*")),
                         key=lambda path: int(path.rsplit("-", 1)[1]))
    from_disk = HidingReport.from_checkpoint(checkpoints[-1])
    assert from_disk.num_samples == NUM_SAMPLES and from_disk.stats["loss"].shape == (NUM_SAMPLES,)
    for row in from_disk.epochs():
        assert from_disk.hidden_indices(row["epoch"]).tolist() == report["hidden"][str(row["epoch"])]


def test_refresh_is_split_across_ranks(first):
    """(e) each rank refreshes its own slice of last epoch's hidden samples; together all of them."""
    records = read_records(first, "hide")
    refreshes = [r["refresh"] for r in records]
    assert len(refreshes[0]) == len(refreshes[1]) == EPOCHS - 2  # before every epoch after the first hiding one
    for passes in zip(*refreshes):
        epoch = passes[0]["before_epoch"]
        full = passes[0]["full"]
        assert all(p["before_epoch"] == epoch and p["full"] == full for p in passes)
        assert full == records[0]["epochs"][str(epoch - 1)]["hidden"], f"epoch {epoch}: refreshed not last hidden set"
        mine = [p["mine"] for p in passes]
        for rank in range(NUM_PROCESSES):
            assert mine[rank] == full[rank::NUM_PROCESSES], f"epoch {epoch}: rank {rank} refreshed the wrong share"
            assert 0 < len(mine[rank]) < len(full), f"epoch {epoch}: rank {rank} refreshed {len(mine[rank])}/{len(full)}"
        assert not set(mine[0]) & set(mine[1])
        assert sorted(mine[0] + mine[1]) == sorted(full)


def test_resume_in_two_processes_is_exact(first, resume):
    """(f) resuming from a mid-epoch checkpoint in a fresh launch reproduces the uninterrupted run."""
    out, step, plan = resume
    full, resumed = read_records(first, "hide"), read_records(out, "resume")
    epoch = plan["epoch"]
    done = step - plan["start_step"]
    for rank in range(NUM_PROCESSES):
        got, want = resumed[rank], full[rank]
        assert got["world"]["parallel_mode"] == "ParallelMode.DISTRIBUTED"
        assert sorted(map(int, got["epochs"])) == list(range(epoch, EPOCHS))
        for e in range(epoch, EPOCHS):
            g, w = got["epochs"][str(e)], want["epochs"][str(e)]
            assert g["hidden"] == w["hidden"], f"rank {rank}, epoch {e}: hidden sets differ after resume"
            assert g["order"] == w["order"], f"rank {rank}, epoch {e}: epoch order differs after resume"
            skipped = done * BATCH_SIZE if e == epoch else 0
            assert g["trained"] == w["trained"][skipped:], f"rank {rank}, epoch {e}: trained other samples"
        assert got["refresh"] == [r for r in want["refresh"] if r["before_epoch"] > epoch]
        assert without_timing(got["plans"]) == without_timing(want["plans"])
        assert got["steps"][0][0] == step, "the resumed run did not start at the checkpoint's step"
        assert got["steps"] == [s for s in want["steps"] if s[0] >= step], f"rank {rank}: per-step losses differ"
        # The log history up to the checkpoint comes back from its trainer_state.json.
        assert loss_logs(got) == loss_logs(want), f"rank {rank}: logged losses differ"
        assert loss_logs(got, after_step=step), "the resumed run logged no loss"
        assert got["global_step"] == want["global_step"]
        assert got["state_epoch"] == pytest.approx(want["state_epoch"])
    resumed_weights, full_weights = read_weights(out, "resume"), read_weights(first, "hide")
    assert_same_weights(resumed_weights[0], resumed_weights[1], "resume: rank 0 vs rank 1")
    for rank in range(NUM_PROCESSES):
        assert_same_weights(resumed_weights[rank], full_weights[rank], f"rank {rank}: resumed vs uninterrupted")


def test_refresh_runs_equal_forward_counts_on_every_rank(first):
    """Under FSDP / ZeRO-3 every forward is a collective: ranks must run as many, of the same size."""
    for name in ("hide", "aug"):
        records = read_records(first, name)
        for passes in zip(*(r["refresh"] for r in records)):
            forwards = [p["forwards"] for p in passes]
            assert all(f == forwards[0] for f in forwards), f"{name}: refresh forwards differ across ranks: {forwards}"
            assert len(forwards[0]) >= 1


# --- random augmentation: resume stays exact ---------------------------------------------------


@pytest.fixture(scope="module")
def aug_resume(first, tmp_path_factory):
    records = read_records(first, "aug")
    mid, mid_step, _ = _mid_epoch_checkpoint(first, "aug")
    # The last step of an epoch before a later hiding epoch: the resume starts with that epoch's refresh.
    plans = records[0]["plans"]
    end_step = next(p["start_step"] + p["update_steps"] for p in plans[1:-1]
                    if (p["start_step"] + p["update_steps"]) in records[0]["checkpoints"])
    end = os.path.join(first, "aug", "output", f"checkpoint-{end_step}")
    out = str(tmp_path_factory.mktemp("mp_aug_resume"))
    launch_mp_worker(out, [dict(AUG_RUN, name="mid", save_steps=0, resume=mid),
                           dict(AUG_RUN, name="end", save_steps=0, resume=end)])
    return out, {"mid": mid_step, "end": end_step}


@pytest.mark.parametrize("where", ["mid", "end"])
def test_resume_with_random_augmentation_is_exact_in_two_processes(first, aug_resume, where):
    out, steps = aug_resume
    step = steps[where]
    full, resumed = read_records(first, "aug"), read_records(out, where)
    for rank in range(NUM_PROCESSES):
        assert resumed[rank]["steps"] == [s for s in full[rank]["steps"] if s[0] >= step], f"rank {rank}: losses differ"
        assert without_timing(resumed[rank]["plans"]) == without_timing(full[rank]["plans"])
    for rank, (got, want) in enumerate(zip(read_weights(out, where), read_weights(first, "aug"))):
        assert_same_weights(got, want, f"aug {where}: rank {rank} resumed vs uninterrupted")


# --- resume on another number of processes --------------------------------------------------


def _check_resumed_in_new_world(original: list[dict], resumed: list[dict], step: int, plan: dict,
                                old_processes: int) -> None:
    epoch = plan["epoch"]
    order = original[0]["epochs"][str(epoch)]["order"]
    hidden = set(original[0]["epochs"][str(epoch)]["hidden"])
    done = (step - plan["start_step"]) * BATCH_SIZE * old_processes
    before, remaining = set(order[:done]), set(order[done:])
    after = [i for record in resumed for i in record["epochs"][str(epoch)]["trained"]]
    assert set(after) == remaining, "the resumed epoch did not train exactly the samples not yet trained"
    assert not set(after) & before, "samples of the resumed epoch were trained twice"
    assert not set(after) & hidden, "a hidden sample was trained"
    new_processes = len(resumed)
    padding = len(after) - len(remaining)
    assert 0 <= padding < new_processes * BATCH_SIZE, f"{padding} repeats: more than even_batches padding"
    for record in resumed:
        assert record["state_epoch"] == pytest.approx(EPOCHS)
        assert abs(record["final_lr"]) < 1e-9, f"the linear schedule did not end at 0: {record['final_lr']}"
        assert record["plans"][-1]["epoch"] == EPOCHS - 1
        for e in range(epoch + 1, EPOCHS):  # later epochs: every visible sample once, no hidden one
            seen = [i for r in resumed for i in r["epochs"][str(e)]["trained"]]
            later_hidden = set(record["epochs"][str(e)]["hidden"])
            assert set(seen) == set(range(NUM_SAMPLES)) - later_hidden
    for e in range(epoch + 1, EPOCHS):
        assert len({tuple(r["epochs"][str(e)]["hidden"]) for r in resumed}) == 1, "ranks disagree on a hidden set"


@pytest.fixture(scope="module")
def two_to_one(first, tmp_path_factory):
    checkpoint, step, plan = _mid_epoch_checkpoint(first, "hide")
    out = str(tmp_path_factory.mktemp("mp_two_to_one"))
    launch_mp_worker(out, [dict(HIDE_RUN, name="two_to_one", save_steps=0, resume=checkpoint)], num_processes=1)
    return out, step, plan


def test_resume_from_two_processes_in_one(first, two_to_one):
    out, step, plan = two_to_one
    _check_resumed_in_new_world(read_records(first, "hide"), read_records(out, "two_to_one", 1), step, plan, 2)


@pytest.fixture(scope="module")
def one_to_two(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mp_solo"))
    launch_mp_worker(out, [dict(HIDE_RUN, name="solo", save_steps=9)], num_processes=1)
    checkpoint, step, plan = _mid_epoch_checkpoint(out, "solo", 1)
    launch_mp_worker(out, [dict(HIDE_RUN, name="one_to_two", save_steps=0, resume=checkpoint)])
    return out, step, plan


def test_resume_from_one_process_in_two(one_to_two):
    out, step, plan = one_to_two
    _check_resumed_in_new_world(read_records(out, "solo", 1), read_records(out, "one_to_two"), step, plan, 1)
