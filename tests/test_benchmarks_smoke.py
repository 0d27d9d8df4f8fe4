"""Smoke tests of the benchmarks: each runs once at a tiny size; outputs exist, parse and agree with
what the benchmark measured (identical loss histories, counts of the refreshed samples, ratios
computed from the recorded timings).

No timing threshold is asserted (timings on shared CI machines are noise). Each benchmark is called
in-process through its `main(argv)`, so imports are paid once.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

# `benchmarks` is a folder of the repository, not an installed package.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

TINY = [
    "--num-classes", "3", "--instances-per-class", "8", "--test-instances-per-class", "3",
    "--image-size", "16", "--patch-size", "8", "--hidden-size", "16", "--num-layers", "1",
    "--num-heads", "2", "--batch-size", "8", "--eval-batch-size", "16", "--threads", "1",
]


@pytest.fixture(scope="module")
def fractal_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fractal_cache"))


def _load(path):
    assert os.path.exists(path), path
    with open(path) as f:
        record = json.load(f)
    assert record["command"].startswith("python -m benchmarks.")
    assert record["machine"]["torch"] and record["machine"]["transformers"] and record["machine"]["date"]
    assert "|" in record["markdown"]
    return record


def test_selection_smoke(tmp_path):
    from benchmarks import selection

    out = tmp_path / "selection.json"
    selection.main(["--sizes", "1000", "20000", "--max-loop-n", "1000", "--repeats", "1", "--output", str(out)])
    record = _load(out)
    small, big = record["results"]
    assert small["same_hidden_set"] is True and small["loop_extrapolated"] is False
    assert big["loop_extrapolated"] is True
    # 7 bytes of statistics per sample plus the hidden set as a bitmask (1/8 byte)
    assert small["state_bytes_per_sample"] == pytest.approx(7.125)


@pytest.mark.slow
def test_compare_smoke(tmp_path, fractal_cache):
    from benchmarks import compare

    out = tmp_path / "compare.json"
    compare.main(TINY + ["--epochs", "2", "--seeds", "0", "--methods", "baseline", "kakurenbo", "random",
                         "--cache-dir", fractal_cache, "--output", str(out)])
    record = _load(out)
    assert {r["method"] for r in record["runs"]} == {"baseline", "kakurenbo", "random"}
    for run in record["runs"]:
        assert len(run["per_epoch"]) == 2 and run["final_accuracy"] is not None
    assert (tmp_path / "compare.md").exists()
    assert (tmp_path / "compare_accuracy_vs_time.png").stat().st_size > 0
    assert (tmp_path / "compare_hiding.png").stat().st_size > 0
    assert "kakurenbo" in record["summary"] and record["summary"]["kakurenbo"]["train_time_ratio"]


@pytest.mark.slow
def test_overhead_smoke(tmp_path):
    from benchmarks import overhead

    out = tmp_path / "overhead.json"
    record = overhead.main(TINY + ["--dataset", "synthetic", "--epochs", "1", "--repeats", "1", "--output", str(out)])
    assert _load(out)["runs"] == json.loads(json.dumps(record["runs"]))
    (base,), (ours,) = record["runs"]["baseline"], record["runs"]["kakurenbo_f0"]
    # 24 samples, batch 8, 1 epoch, a loss logged at every step: 3 steps, bit-identical histories.
    assert base["optimizer_steps"] == ours["optimizer_steps"] == 3
    assert len(base["losses"]) == 3 and all(loss > 0 for loss in base["losses"])
    assert ours["losses"] == base["losses"] and ours["grad_norms"] == base["grad_norms"]
    assert record["losses_identical"] is True and record["kakurenbo_losses_identical"] is True
    assert record["first_difference"] is None
    for run in (base, ours):
        assert run["wall_seconds"] > 0 and 0 < run["train_runtime"] <= run["wall_seconds"]
    assert record["ratio_median"] == pytest.approx(ours["train_runtime"] / base["train_runtime"])
    assert record["pair_ratios"] == [pytest.approx(record["ratio_median"])]
    assert record["verdict"] == ("PASS" if record["ratio_median"] <= overhead.TARGET_RATIO else "MISS")


def test_overhead_f0_accounting_smoke(tmp_path):
    """The added-work estimate: every piece timed, the estimate follows from them, both F=0 jobs kept."""
    from benchmarks import overhead

    out = tmp_path / "overhead.json"
    overhead.main(TINY + ["--dataset", "synthetic", "--epochs", "1", "--repeats", "1", "--output", str(out)])
    record = overhead.main(["--job", "f0_accounting", "--dataset", "synthetic", "--num-classes", "3",
                            "--instances-per-class", "8", "--test-instances-per-class", "2", "--image-size", "16",
                            "--hidden-size", "32", "--num-layers", "1", "--num-heads", "2", "--batch-size", "8",
                            "--step-repeats", "3", "--op-repeats", "5", "--output", str(out)])
    accounting = record["f0_accounting"]
    assert accounting["step_seconds"] > 0 and len(accounting["pieces_seconds"]) == 5
    added = sum(max(0.0, value) for value in accounting["pieces_seconds"].values())
    assert accounting["added_seconds"] == pytest.approx(added)
    assert accounting["ratio_estimate"] == pytest.approx(1 + added / accounting["step_seconds"])
    assert set(record["ratios"]) == {"f0", "f0_accounting"}
    assert record["ratios"]["f0_accounting"]["verdict"] == (
        "PASS" if accounting["ratio_estimate"] <= overhead.TARGET_RATIO else "MISS")
    assert "kakurenbo_f0" in _load(out)["runs"]  # the F=0 job's runs were kept


def test_overhead_raises_when_loss_histories_differ(tmp_path, monkeypatch):
    """The benchmark's guard: a KakurenboTrainer(F=0) loss history that differs from the Trainer's fails
    the run (after writing the record), whatever the timings say."""
    from benchmarks import overhead

    def fake_run(method, w, train_dataset, seed):
        losses = [1.0, 0.5, 0.25] if method == "baseline" else [1.0, 0.5, 0.3]
        runtime = 1.0 if method == "baseline" else 1.5
        return {"method": method, "wall_seconds": runtime, "train_runtime": runtime, "optimizer_steps": 3,
                "losses": losses, "grad_norms": [1.0] * 3}

    monkeypatch.setattr(overhead, "run_one", fake_run)
    out = tmp_path / "overhead.json"
    with pytest.raises(AssertionError, match="differs"):
        overhead.main(TINY + ["--dataset", "synthetic", "--repeats", "2", "--output", str(out)])
    record = _load(out)
    assert record["kakurenbo_losses_identical"] is False and record["losses_identical"] is False
    assert record["first_difference"] == {"step": 2, "kakurenbo": 0.3, "trainer": 0.25}
    assert record["ratio_median"] == 1.5 and record["pair_ratios"] == [1.5, 1.5] and record["verdict"] == "MISS"


def test_overhead_loading_bound_smoke(tmp_path, monkeypatch):
    """The loading-bound job at a tiny size: per seed one plain Trainer and one KakurenboTrainer run; the
    counts, visible share, ratio and verdict agree with the runs; the F=0 job already in the record at
    `--output` is kept beside it, each with its own command; no machine path is written."""
    import math
    import statistics

    from benchmarks import overhead

    def fake_f0_run(method, w, train_dataset, seed):
        return {"method": method, "wall_seconds": 1.0, "train_runtime": 1.0, "optimizer_steps": 3,
                "losses": [1.0, 0.5, 0.25], "grad_norms": [1.0] * 3}

    out = tmp_path / "overhead.json"
    with monkeypatch.context() as patch:  # an F=0 record (fake timings) already at --output
        patch.setattr(overhead, "run_one", fake_f0_run)
        f0 = overhead.main(TINY + ["--dataset", "synthetic", "--repeats", "1", "--output", str(out)])
    n, batch, epochs = 8000, 2048, 3
    record = overhead.main(["--job", "loading_bound", "--num_samples", str(n), "--batch-size", str(batch),
                            "--epochs", str(epochs), "--seeds", "0", "1", "--threads", "1", "--output", str(out)])
    assert _load(out) == json.loads(json.dumps(record))
    assert str(tmp_path) not in out.read_text()
    assert record["command"].startswith("python -m benchmarks.overhead --job loading_bound --num_samples 8000")
    assert record["job"] == "loading_bound"
    lb = record["loading_bound"]
    assert lb["settings"]["num_samples"] == n and lb["settings"]["batch_size"] == batch
    assert lb["settings"]["epochs"] == epochs and lb["settings"]["hiding_fraction"] == 0.3 and lb["seeds"] == [0, 1]
    plain, ours = lb["runs"]["baseline"], lb["runs"]["kakurenbo"]
    assert [r["seed"] for r in plain] == [r["seed"] for r in ours] == [0, 1]
    for r in plain:
        assert r["backpropagated"] == r["forwarded"] == epochs * n and r["visible_share"] == 1.0
        assert r["hidden_per_epoch"] == [] and r["optimizer_steps"] == epochs * math.ceil(n / batch)
    for r in ours:
        hidden = r["hidden_per_epoch"]
        assert r["counts_from"] == "sample_counters" and len(hidden) == epochs and hidden[0] == 0
        assert 0 < max(hidden) <= 0.3 * n  # the separable data gets hidden, at most F x N an epoch
        assert r["backpropagated"] == sum(n - h for h in hidden)
        assert r["visible_share"] == pytest.approx(r["backpropagated"] / (epochs * n))
        assert r["optimizer_steps"] == sum(math.ceil((n - h) / batch) for h in hidden)
    for r in plain + ours:
        assert 0 < r["train_runtime"] <= r["wall_seconds"] + 1e-3
    assert lb["train_seconds"] == {"baseline": [r["train_runtime"] for r in plain],
                                   "kakurenbo": [r["train_runtime"] for r in ours]}
    ratio = statistics.median(lb["train_seconds"]["kakurenbo"]) / statistics.median(lb["train_seconds"]["baseline"])
    assert lb["ratio_median"] == pytest.approx(ratio)
    assert lb["pair_ratios"] == [pytest.approx(o["train_runtime"] / p["train_runtime"]) for p, o in zip(plain, ours)]
    assert lb["visible_share"] == pytest.approx(statistics.fmean(r["visible_share"] for r in ours))
    assert lb["visible_share"] < 1
    assert lb["hidden_share"] == pytest.approx(1 - lb["visible_share"])
    assert lb["target_ratio"] == pytest.approx(lb["visible_share"] + overhead.VISIBLE_MARGIN)
    assert lb["within_target"] == (lb["ratio_median"] <= lb["target_ratio"])
    assert lb["verdict"] == ("PASS" if lb["within_target"] else "MISS")
    assert set(lb["load"]) == {"before", "after", "quiet"}
    # both jobs' ratios, each with the command that measured it; the F=0 job's fields kept at the top level
    assert set(record["ratios"]) == {"f0", "loading_bound"}
    entry = record["ratios"]["loading_bound"]
    assert entry["command"] == lb["command"] == record["command"]
    assert (entry["ratio"], entry["visible_share"], entry["target"], entry["verdict"]) == (
        lb["ratio_median"], lb["visible_share"], lb["target_ratio"], lb["verdict"])
    assert record["ratios"]["f0"] == f0["ratios"]["f0"] and record["ratios"]["f0"]["command"] == f0["command"]
    assert record["runs"] == f0["runs"] and record["ratio_median"] == f0["ratio_median"] == 1.0
    assert "kept from the existing record" in record["markdown"] and lb["markdown"] in record["markdown"]


@pytest.mark.slow
def test_refresh_smoke(tmp_path, monkeypatch):
    """The refresh pass forwards exactly the samples hidden in the previous epoch, in eval mode, and the
    benchmark's counts and ratios are built from those passes."""
    import numpy as np

    from benchmarks import refresh
    from kakurenbo_hf.hf.controller import HidingController

    calls = []  # per refresh pass: (indices, rows forwarded, model.training seen during the forwards)
    original = HidingController.refresh

    def spy(self, model, indices):
        trainer = self.trainer
        forwarded, modes = [], set()
        statistics_fn = trainer.per_sample_statistics_fn

        def counting(outputs, labels):
            forwarded.append(len(labels))
            modes.add(trainer.accelerator.unwrap_model(model).training)
            return statistics_fn(outputs, labels)

        trainer.per_sample_statistics_fn = counting
        try:
            return original(self, model, indices)
        finally:
            trainer.per_sample_statistics_fn = statistics_fn
            calls.append((np.array(indices), sum(forwarded), modes))

    monkeypatch.setattr(HidingController, "refresh", spy)
    out = tmp_path / "refresh.json"
    # tau = 0: every correct low-loss candidate is hidden, so the tiny run hides (and refreshes) samples.
    record = refresh.main(TINY + ["--dataset", "synthetic", "--epochs", "3", "--repeats", "2",
                                  "--method", "kakurenbo:confidence_threshold=0,refresh_fraction=1,refresh_budget=inf",
                                  "--output", str(out)])
    _load(out)
    n = 24
    hidden = record["counts"]["hidden_per_epoch"]
    assert hidden == [h["hidden"] for h in record["hiding"]] and len(hidden) == 3
    assert hidden[0] == 0 and hidden[1] > 0
    refreshed = [h for h in hidden[:-1] if h > 0]  # the start of epoch e refreshes epoch e-1's hidden samples
    assert record["counts"]["refresh_samples"] == sum(hidden[:-1]) == sum(refreshed)
    assert record["counts"]["trained_samples"] == sum(n - h for h in hidden)
    training_calls, direct_calls = calls[: len(refreshed)], calls[len(refreshed):]
    assert [len(indices) for indices, _, _ in training_calls] == refreshed
    assert len(direct_calls) == 2 and all(len(indices) == n for indices, _, _ in direct_calls)
    for indices, forwarded, modes in calls:
        assert len(np.unique(indices)) == len(indices) == forwarded  # each sample forwarded once
        assert modes == {False}  # eval mode during the pass
    assert record["refresh_logged_seconds"] > 0 and len(record["refresh_direct_seconds"]) == 2
    assert all(t > 0 for t in record["refresh_direct_seconds"])
    assert record["ratio_direct"] == pytest.approx(
        record["refresh_direct_seconds_per_sample"] / record["train_seconds_per_sample"])
    assert record["ratio_logged"] == pytest.approx(
        record["refresh_logged_seconds"] / sum(refreshed) / record["train_seconds_per_sample"])
    assert record["verdict"] == ("PASS" if record["ratio_direct"] <= refresh.TARGET_RATIO else "MISS")


@pytest.mark.slow
def test_sync_smoke_two_processes(tmp_path):
    """The synchronisation benchmark under a real 2-process launch (gloo on CPU)."""
    from launch import launch

    out = tmp_path / "sync.json"
    launch("benchmarks.sync", "--cpu", "--num-samples", "5000", "--trials", "1", "--output", str(out),
           module=True, cwd=_ROOT, env={"PYTHONPATH": _ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")})
    record = _load(out)
    assert record["processes"] == 2 and record["num_samples"] == 5000 and record["layout"] == "sharded"
    assert record["median"]["flush_seconds"] > 0


def test_scale_cost_model_follows_the_layouts():
    """The scale benchmark's single-core rates and its model: sharded, each rank holds N/P of the table and
    receives its rows' records; on the main process, one rank receives (P - 1) shares and holds all."""
    from benchmarks import scale

    rates = scale.measure_rates(20_000)
    assert all(rates[key] > 0 for key in rates if key.endswith("_per_second"))
    sharded = scale.cost_model(10**8, 64, rates, layout="sharded")
    main = scale.cost_model(10**8, 64, rates, layout="main_process")
    assert sharded["refreshed_share"] <= 0.03 * 0.7  # the refresh budget caps the refreshed share
    records_per_rank = 10**8 / 64 * (0.7 + sharded["refreshed_share"])
    assert sharded["bytes_received_per_rank"] < 2 * 15 * records_per_rank + 10**8 / 8
    assert main["bytes_received_per_rank"] == 15 * records_per_rank * 63
    assert sharded["memory_table_rank"] < main["memory_table_rank"] / 10
    assert scale.cost_model(2 * 10**8, 64, rates)["memory_table_rank"] > sharded["memory_table_rank"]


LEADERBOARD_TINY = [
    "--threads", "1",
    "--text-train-samples", "48", "--text-test-samples", "16", "--text-hidden-size", "16", "--text-num-layers", "1",
    "--text-epochs", "3", "--text-batch-size", "8", "--text-max-length", "16",
    "--timm-cnn-num-classes", "3", "--timm-cnn-instances-per-class", "8", "--timm-cnn-test-instances-per-class", "3",
    "--timm-cnn-image-size", "32", "--timm-cnn-channels", "8/8/8/8", "--timm-cnn-stem-width", "8",
    "--timm-cnn-epochs", "3", "--timm-cnn-batch-size", "8",
    "--lm-templated-train-rows", "40", "--lm-templated-eval-rows", "20", "--lm-templated-block-size", "32",
    "--lm-templated-hidden-size", "16", "--lm-templated-num-layers", "1", "--lm-templated-num-heads", "2",
    "--lm-templated-epochs", "3", "--lm-templated-batch-size", "8", "--lm-templated-eval-batch-size", "20",
]


def test_leaderboard_smoke(tmp_path, fractal_cache):
    """Three workloads (two classifiers, the templated LM) x (plain, a labelled kakurenbo variant), one seed:
    every (workload, method) is in the record; the summary's ratios, deltas (to the full and to the
    same-compute plain run), worst groups and times to quality are what the per-run records say; the
    same-compute runs train round(share x plain's steps) steps, their schedule fitted to them, and are
    evaluated at their end."""
    from benchmarks import leaderboard

    out = tmp_path / "leaderboard.json"
    # random hiding hides its fraction whatever the model has learned, so the tiny runs train on fewer samples
    methods = ["plain", "r=random:hiding_fraction=0.4"]
    workloads = ("text", "timm_cnn", "lm_templated")
    leaderboard.main(LEADERBOARD_TINY + ["--workloads", *workloads, "--methods", *methods, "--seeds", "0",
                                         "--cache-dir", fractal_cache, "--output", str(out)])
    record = _load(out)
    assert record["command"].startswith("python -m benchmarks.leaderboard") and record["failures"] == []
    assert [m["label"] for m in record["methods"]] == ["plain", "r"]
    runs = {(r["workload"], r["method"], r["seed"]): r for r in record["runs"]}
    assert set(runs) == {(w, m, 0) for w in workloads for m in ("plain", "r")}
    assert set(record["summary"]) == set(workloads)
    same = {(c["workload"], c["seed"], c["max_steps"]): c for c in record["same_compute_runs"]}
    for workload, entries in record["summary"].items():
        quality = record["workloads"][workload]["quality"]
        scale, higher = quality["scale"], quality["higher_is_better"]
        assert set(entries) == {"plain", "r"}
        plain = runs[(workload, "plain", 0)]
        assert entries["plain"]["time_ratio"] == [1.0] and entries["plain"]["tta_ratio"] == [1.0]
        assert entries["plain"]["quality_delta"] == [0.0] and entries["plain"]["backprop_ratio"] == [1.0]
        n, epochs = record["workloads"][workload]["train_samples"], 3
        assert plain["forwarded"] == plain["backpropagated"] == n * epochs and plain["refresh_forwarded"] == 0
        for label, entry in entries.items():
            run = runs[(workload, label, 0)]
            assert len(run["per_epoch"]) == epochs and run["final_quality"] == run["per_epoch"][-1]["quality"]
            # worst group: the lowest class top-1, or the highest subgroup loss, of the final evaluation
            groups = run["final_groups"]
            assert set(groups) <= set(quality["groups"]) and groups
            worst = (min if higher else max)(groups.values())
            assert run["final_worst_group"] == pytest.approx(worst) and groups[run["final_worst_group_name"]] == worst
            assert run["per_epoch"][-1]["worst_group"] == pytest.approx(worst)
            assert entry["worst_group"] == [run["final_worst_group"]]
            assert entry["worst_group_delta"] == [pytest.approx(scale * (worst - plain["final_worst_group"]))]
            assert entry["train_seconds"] == [run["train_seconds"]]
            assert entry["time_ratio"] == [pytest.approx(run["train_seconds"] / plain["train_seconds"])]
            assert entry["cpu_time_ratio"] == [pytest.approx(run["train_cpu_seconds"] / plain["train_cpu_seconds"])]
            assert 0 < run["train_seconds"] < run["train_plus_eval_seconds"]
            assert entry["backprop_ratio"] == [pytest.approx(run["backpropagated"] / plain["backpropagated"])]
            assert entry["forward_ratio"] == [pytest.approx((run["forwarded"] + run["refresh_forwarded"]) / plain["forwarded"])]
            assert entry["quality_delta"] == [pytest.approx(scale * (run["final_quality"] - plain["final_quality"]))]
            # time to quality: the first epoch that reaches plain's final quality minus the tolerance, on both curves
            step = quality["tolerance"] / scale
            target = plain["final_quality"] - step if higher else plain["final_quality"] + step
            assert entry["tta_target"] == [pytest.approx(target)]

            def reaches(value):
                return value >= target - 1e-9 if higher else value <= target + 1e-9

            def first(per_epoch):
                hits = [e for e in per_epoch if reaches(e["quality"])]
                return hits[0]["train_seconds_cumulative"] if hits else None

            mine = first(run["per_epoch"])
            assert entry["tta_seconds"] == [mine]
            assert entry["tta_ratio"] == [None if mine is None else pytest.approx(mine / first(plain["per_epoch"]))]
        # the same-compute plain run: round(share x plain's steps) optimizer steps, cached by (workload, seed, steps)
        hiding = runs[(workload, "r", 0)]
        hidden = sum(hiding["hidden_per_epoch"])
        assert hidden > 0 and hiding["backpropagated"] == n * epochs - hidden
        steps = round(hiding["backpropagated"] / plain["backpropagated"] * plain["optimizer_steps"])
        assert 0 < steps < plain["optimizer_steps"]
        assert entries["r"]["same_compute_steps"] == [steps]
        assert entries["r"]["same_compute_share"] == [pytest.approx(steps / plain["optimizer_steps"])]
        c = same[(workload, 0, steps)]
        assert c["method"] == "plain (same compute)" and c["optimizer_steps"] == steps
        assert c["final_learning_rate"] == pytest.approx(0, abs=1e-9)  # the cosine schedule ends at its last step
        assert c["per_epoch"][-1]["quality"] == c["final_quality"]  # the last (partial) epoch is evaluated
        assert c["epochs_trained"] == pytest.approx(steps / (plain["optimizer_steps"] / epochs))
        assert entries["r"]["same_compute_quality"] == [c["final_quality"]]
        assert entries["r"]["quality_delta_same_compute"] == [
            pytest.approx(scale * (hiding["final_quality"] - c["final_quality"]))]
        assert entries["r"]["worst_group_delta_same_compute"] == [
            pytest.approx(scale * (hiding["final_worst_group"] - c["final_worst_group"]))]
        assert entries["r"]["beats_same_compute"] in (True, False)
    assert len(record["same_compute_runs"]) == len(workloads)  # one share per workload: one run each
    # the LM: eval loss per subgroup, hidden rows counted per training subgroup
    lm = record["workloads"]["lm_templated"]["quality"]
    assert lm["higher_is_better"] is False and lm["groups"] == ["prose", "templated"]
    hiding = runs[("lm_templated", "r", 0)]
    assert set(hiding["final_groups"]) == {"prose", "templated"}
    by_group = hiding["hidden_per_epoch_by_group"]
    assert [a + b for a, b in zip(by_group["prose"], by_group["templated"])] == hiding["hidden_per_epoch"]
    assert sum(hiding["train_group_sizes"].values()) == 40
    md = record["markdown"]
    assert "| text | r |" in md and "| timm_cnn | plain |" in md and "| lm_templated | r |" in md
    assert "≥ same-compute?" in md and "lr_compensation=none" in md
    assert (tmp_path / "leaderboard.md").read_text().count("| r |") >= 4  # 3 workload tables + the overview
    for plot in ("leaderboard_accuracy_vs_time.png", "leaderboard_pareto.png"):
        assert (tmp_path / plot).stat().st_size > 0
    assert str(tmp_path) not in out.read_text()  # no machine paths in the record


def _fake_run(method, qualities, seconds, backprop, workload="w", seed=0, steps=3, worst=None):
    """A leaderboard run record with the given per-epoch curve (train time = last epoch end + 0.5 s)."""
    per_epoch = [{"epoch": i + 1, "train_seconds_cumulative": t, "quality": a}
                 for i, (a, t) in enumerate(zip(qualities, seconds))]
    worst = qualities[-1] - 0.1 if worst is None else worst
    return {"workload": workload, "method": method, "seed": seed, "train_seconds": seconds[-1] + 0.5,
            "train_cpu_seconds": seconds[-1], "final_quality": qualities[-1], "final_worst_group": worst,
            "final_worst_group_name": "0", "final_groups": {"0": worst, "1": qualities[-1]}, "per_epoch": per_epoch,
            "forwarded": backprop, "backpropagated": backprop, "refresh_forwarded": 0, "optimizer_steps": steps,
            "max_steps": None, "epochs_trained": len(qualities), "final_learning_rate": 0.0}


def test_leaderboard_interleaves_and_reports_failures(tmp_path, monkeypatch):
    """Per seed, per workload, every method in turn, the order rotated by one per seed, then the plain
    Trainer's same-compute runs, one per distinct step count (methods of equal share share it); a failing
    run is listed and left out of the summary, the others go on."""
    from benchmarks import leaderboard, workloads

    calls = []
    backprop = {"plain": 100, "kakurenbo": 60, "random": 50, "ucb": 50}

    def fake_run_one(method, seed, wl, max_steps=None):
        calls.append((seed, wl.name, method.label if max_steps is None else max_steps))
        if (method.label, seed, max_steps) == ("random", 1, None):
            raise RuntimeError("boom")
        if max_steps is not None:
            run = _fake_run("plain", [0.5, 0.85], [0.6, 1.2], 10 * max_steps, workload=wl.name, seed=seed,
                            steps=max_steps)
            return {**run, "method": leaderboard.SAME_COMPUTE, "max_steps": max_steps}
        return _fake_run(method.label, [0.5, 0.9], [1.0, 2.0], backprop[method.label], workload=wl.name, seed=seed,
                         steps=10)

    def fake_build(name, settings, cache_dir=None, checkpoint_dir=None):
        return workloads.Prepared(name, settings, list(range(10)), list(range(4)), lambda seed: None, name)

    monkeypatch.setattr(leaderboard, "run_one", fake_run_one)
    monkeypatch.setattr(workloads, "build", fake_build)
    out = tmp_path / "leaderboard.json"
    record = leaderboard.main(["--workloads", "text", "timm_cnn", "--methods", "plain", "kakurenbo", "random", "ucb",
                               "--seeds", "0", "1", "--no-plots", "--output", str(out)])
    order = ["plain", "kakurenbo", "random", "ucb"]
    # plain's 10 steps x share: kakurenbo 6 steps; random and ucb 5 steps, one run for both
    assert calls == [(0, w, x) for w in ("text", "timm_cnn") for x in order + [5, 6]] + [
        (1, w, x) for w in ("text", "timm_cnn") for x in order[1:] + order[:1] + [5, 6]]
    assert record["failures"] == [{"workload": w, "method": "random", "seed": 1, "error": "RuntimeError: boom"}
                                  for w in ("text", "timm_cnn")]
    assert len(record["same_compute_runs"]) == 8
    summary = record["summary"]["text"]
    assert summary["random"]["seeds"] == [0] and summary["kakurenbo"]["seeds"] == [0, 1]
    assert summary["random"]["same_compute_steps"] == [5] and summary["ucb"]["same_compute_steps"] == [5, 5]
    assert summary["kakurenbo"]["same_compute_steps"] == [6, 6]
    assert summary["ucb"]["quality_delta_same_compute"] == [pytest.approx(5.0)] * 2  # 0.90 vs 0.85, in points
    assert summary["ucb"]["beats_same_compute"] is True and summary["ucb"]["within_tolerance"] is True
    assert "Failed runs" in _load(out)["markdown"]
    calls.clear()
    leaderboard.main(["--workloads", "text", "--methods", "plain", "kakurenbo", "--seeds", "0", "--no-plots",
                      "--no-same-compute", "--output", str(out)])
    assert calls == [(0, "text", "plain"), (0, "text", "kakurenbo")]
    assert _load(out)["summary"]["text"]["kakurenbo"]["beats_same_compute"] is None
    with pytest.raises(RuntimeError, match="boom"):
        leaderboard.main(["--workloads", "text", "--methods", "plain", "random", "--seeds", "1", "--no-plots",
                          "--fail-fast", "--output", str(out)])


def test_leaderboard_methods_and_time_to_quality():
    """Method specs with labels, plain added first, the paper's baselines without LR compensation by default;
    time to quality, ratios and verdicts on hand-made curves, for a top-1 and for a loss."""
    from benchmarks import leaderboard, trainers
    from benchmarks import quality as q

    from kakurenbo_hf.strategies import available_strategies

    defaults = leaderboard.parse_methods(leaderboard.default_methods())
    assert [m.label for m in defaults] == ["plain", *(name for name in available_strategies()
                                                      if name not in leaderboard.TWO_RUN_STRATEGIES)]
    assert "forget_original" in leaderboard.TWO_RUN_STRATEGIES  # a counting run and a retraining run
    for m in defaults[1:]:
        published = m.label in leaderboard.PUBLISHED_WITHOUT_LR_COMPENSATION
        assert m.base == m.label and (m.overrides.get("lr_compensation") == "none") == published
    assert {m.label for m in defaults if "lr_compensation" in m.overrides} == {
        "random", "epsilon_greedy", "ucb", "forget", "forget_lag", "iswr"} & set(available_strategies())
    methods = leaderboard.parse_methods(["random", "f30=kakurenbo:hiding_fraction=0.3", "kakurenbo"])
    assert [m.label for m in methods] == ["plain", "random", "f30", "kakurenbo"]
    assert methods[2].base == "kakurenbo" and methods[2].overrides["hiding_fraction"] == 0.3
    assert methods[1].overrides == {"hiding_strategy": "random"}
    # an optional field (None by default) takes the type of its annotation
    assert trainers.parse_method("kakurenbo:max_hidden_epochs=2")[1]["max_hidden_epochs"] == 2
    assert trainers.parse_method("kakurenbo:max_hidden_epochs=none")[1]["max_hidden_epochs"] is None
    with pytest.raises(ValueError, match="unique"):
        leaderboard.parse_methods(["kakurenbo", "kakurenbo:hiding_fraction=0.5", "kakurenbo"])
    with pytest.raises(ValueError, match="unknown method"):
        leaderboard.parse_methods(["nosuchstrategy"])

    top1 = {"w": q.classification(["0", "1"])}
    runs = [_fake_run("plain", [0.5, 0.8, 0.9], [1.0, 2.0, 3.0], 300),
            _fake_run("kakurenbo", [0.6, 0.896, 0.89], [0.8, 1.6, 2.4], 250),  # reaches 0.895 at 1.6 s
            _fake_run("random", [0.5, 0.7, 0.894], [0.8, 1.6, 2.4], 250)]  # never reaches 0.895
    methods = leaderboard.parse_methods(["plain", "kakurenbo", "random"])
    summary = leaderboard.summarize(runs, ["w"], methods, [0], top1)["w"]
    assert summary["plain"]["tta_seconds"] == [3.0] and summary["plain"]["tta_ratio"] == [1.0]
    assert summary["kakurenbo"]["tta_ratio"] == [pytest.approx(1.6 / 3.0)]
    assert summary["kakurenbo"]["time_ratio"] == [pytest.approx(2.9 / 3.5)]
    assert summary["kakurenbo"]["quality_delta"] == [pytest.approx(-1.0)]
    assert summary["kakurenbo"]["within_tolerance"] is False and summary["kakurenbo"]["saves_20pct"] is False
    assert summary["kakurenbo"]["beats_same_compute"] is None  # no same-compute run given
    assert summary["random"]["tta_ratio"] == [None] and summary["random"]["tta_reached"] == 0
    assert leaderboard.ranked(summary) == ["plain", "kakurenbo", "random"]
    table = leaderboard.tables({"w": summary}, methods, top1)
    assert "| w | random |" in table and "never" in table

    # a loss (lower is better): the target is plain's final + 0.01 nats, gains change sign
    loss = {"w": q.language_model([0, 1], ["prose", "templated"])}
    runs = [_fake_run("plain", [3.0, 2.5, 2.0], [1.0, 2.0, 3.0], 300, worst=2.5),
            _fake_run("kakurenbo", [3.0, 2.005, 2.008], [0.8, 1.6, 2.4], 250, worst=2.4)]
    same = [{**_fake_run("plain", [3.0, 2.1], [1.0, 2.0], 250, worst=2.45, steps=2), "max_steps": 2}]
    methods = leaderboard.parse_methods(["plain", "kakurenbo"])
    summary = leaderboard.summarize(runs, ["w"], methods, [0], loss, same)["w"]
    k = summary["kakurenbo"]
    assert k["tta_target"] == [pytest.approx(2.01)] and k["tta_ratio"] == [pytest.approx(1.6 / 3.0)]
    assert k["quality_delta"] == [pytest.approx(0.008)] and k["within_tolerance"] is True
    assert k["same_compute_steps"] == [2] and k["quality_delta_same_compute"] == [pytest.approx(-0.092)]
    assert k["worst_group_delta_same_compute"] == [pytest.approx(-0.05)] and k["beats_same_compute"] is True
    assert leaderboard.same_compute_curve(summary, same, runs, "w", loss["w"]) == [
        (pytest.approx(2 / 3), pytest.approx(-0.1), pytest.approx(0.05)), (1.0, 0.0, 0.0)]


def test_deit_transfer_pretrains_once_per_seed(tmp_path, fractal_cache, monkeypatch):
    """The transfer workload pre-trains once per seed, and every method's model holds the saved weights
    (not a fresh initialisation) with the same new head."""
    import torch
    from safetensors.torch import load_file

    from benchmarks import workloads

    calls = []
    original = workloads.pretrain_deit
    monkeypatch.setattr(workloads, "pretrain_deit", lambda *a: calls.append(a[1]) or original(*a))
    settings = workloads.DeitTransfer(pretrain_classes=3, pretrain_per_class=8, pretrain_test_per_class=2,
                                      pretrain_epochs=1, image_size=16, hidden_size=16, num_layers=1, num_heads=2,
                                      finetune_train_samples=40, batch_size=8)
    wl = workloads.build("deit_transfer", settings, fractal_cache, str(tmp_path))
    first, second, other_seed = wl.model(0), wl.model(0), wl.model(1)
    assert calls == [0, 1]
    assert first.config.num_labels == 10 and len(wl.train) == 40 and len(wl.test) == 1797 - 40
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    saved = [t for path in tmp_path.glob("deit_*_seed0/*.safetensors") for t in load_file(path).values()]
    assert saved
    body = {k: v for k, v in first.state_dict().items() if not k.startswith(("cls_classifier", "classifier"))}
    assert body and all(any(t.shape == v.shape and torch.equal(t, v) for t in saved) for v in body.values())
    assert not torch.equal(first.state_dict()["classifier.weight"], other_seed.state_dict()["classifier.weight"])
