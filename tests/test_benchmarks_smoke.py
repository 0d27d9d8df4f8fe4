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


@pytest.mark.slow
def test_refresh_smoke(tmp_path, monkeypatch):
    """The refresh pass forwards exactly the samples hidden in the previous epoch, in eval mode, and the
    benchmark's counts and ratios are built from those passes."""
    import numpy as np

    from benchmarks import refresh
    from kakurenbo_hf import KakurenboTrainer

    calls = []  # per _refresh call: (indices, rows forwarded, model.training seen during the forwards)
    original = KakurenboTrainer._refresh

    def spy(self, model, indices):
        forwarded, modes = [], set()
        statistics_fn = self.per_sample_statistics_fn

        def counting(outputs, labels):
            forwarded.append(len(labels))
            modes.add(self.accelerator.unwrap_model(model).training)
            return statistics_fn(outputs, labels)

        self.per_sample_statistics_fn = counting
        try:
            return original(self, model, indices)
        finally:
            self.per_sample_statistics_fn = statistics_fn
            calls.append((np.array(indices), sum(forwarded), modes))

    monkeypatch.setattr(KakurenboTrainer, "_refresh", spy)
    out = tmp_path / "refresh.json"
    # tau = 0: every correct low-loss candidate is hidden, so the tiny run hides (and refreshes) samples.
    record = refresh.main(TINY + ["--dataset", "synthetic", "--epochs", "3", "--repeats", "2",
                                  "--method", "kakurenbo:confidence_threshold=0,refresh_fraction=1", "--output", str(out)])
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
    import socket
    import subprocess

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "sync.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--main_process_port", str(port), "-m", "benchmarks.sync", "--cpu", "--num-samples", "5000",
         "--trials", "1", "--output", str(out)],
        check=True, cwd=_ROOT, env=env, timeout=600,
    )
    record = _load(out)
    assert record["processes"] == 2 and record["num_samples"] == 5000
    assert record["median"]["flush_seconds"] > 0
