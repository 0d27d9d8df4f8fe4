"""Smoke tests of the benchmarks: each runs once at a tiny size; outputs exist and parse.

No timing is asserted (timings on shared CI machines are noise). Each benchmark is called
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
    assert small["state_bytes_per_sample"] == pytest.approx(8.0)


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
    overhead.main(TINY + ["--dataset", "synthetic", "--epochs", "1", "--repeats", "1", "--output", str(out)])
    record = _load(out)
    assert record["kakurenbo_losses_identical"] is True
    assert record["verdict"] in ("PASS", "MISS")


@pytest.mark.slow
def test_refresh_smoke(tmp_path):
    from benchmarks import refresh

    out = tmp_path / "refresh.json"
    refresh.main(TINY + ["--dataset", "synthetic", "--epochs", "2", "--repeats", "1", "--output", str(out)])
    record = _load(out)
    assert record["ratio_direct"] > 0 and record["verdict"] in ("PASS", "MISS")


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
