"""Smoke tests of the task examples (causal LM, semantic segmentation): tiny settings, offline, in-process."""

from __future__ import annotations

import importlib
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--report_to", "none",
        "--log_level", "error", "--disable_tqdm", "true"]


pytestmark = pytest.mark.usefixtures("examples_env")  # offline, a datasets cache per test, examples/ importable


def test_causal_lm_example_trains_hides_and_compares(tmp_path):
    clm = importlib.import_module("causal_lm")
    out = str(tmp_path / "clm")
    results = clm.main(["--output_dir", out, "--num_train_epochs", "3", "--embedded_blocks", "48",
                        "--max_eval_samples", "16", "--n_embd", "32", "--n_layer", "1", "--n_head", "2",
                        "--vocab_size", "512", "--block_size", "32", "--hiding_fraction", "0.3", "--compare_plain",
                        *TINY])
    assert results["perplexity"] > 1 and results["plain"]["perplexity"] > 1
    assert len(results["hidden_per_epoch"]) == 3
    kinds = results["kinds"]
    assert set(kinds) == {"unique", "duplicate", "noise"}
    assert kinds["noise"]["ever_hidden"] == 0
    assert set(results["definitions"]["noise"]) == {"token accuracy", "target probability", "top probability",
                                                    "exp(-loss)"}
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
    assert os.path.isfile(os.path.join(out, "tokenizer.json"))


def test_causal_lm_train_file(tmp_path):
    clm = importlib.import_module("causal_lm")
    text = tmp_path / "train.txt"
    text.write_text("\n".join(f"line {i} of a small text file about hiding samples" for i in range(200)))
    results = clm.main(["--output_dir", str(tmp_path / "out"), "--train_file", str(text), "--num_train_epochs", "1",
                        "--n_embd", "32", "--n_layer", "1", "--n_head", "2", "--vocab_size", "300",
                        "--block_size", "32", *TINY])
    assert results["perplexity"] > 1
    assert results["kinds"]["unique"]["blocks"] > 0


def test_semantic_segmentation_example(tmp_path):
    seg = importlib.import_module("semantic_segmentation")
    results = seg.main(["--output_dir", str(tmp_path / "seg"), "--num_train_epochs", "2", "--embedded_train_size", "32",
                        "--embedded_validation_size", "8", "--image_size", "32", "--hidden_sizes", "8,16",
                        "--decoder_hidden_size", "16", "--compare_plain", *TINY])
    assert 0 <= results["eval_mean_iou"] <= 1 and 0 <= results["plain"]["eval_mean_iou"] <= 1
    assert results["mislabelled_ever_hidden"][1] == 3  # 10% of 32
    assert len(results["hidden_per_epoch"]) == 2


def test_climate_fields_are_deterministic_and_labelled():
    import numpy as np

    seg = importlib.import_module("semantic_segmentation")
    a, masks = seg.make_climate_fields(12, size=32, seed=3)
    b, _ = seg.make_climate_fields(12, size=32, seed=3)
    assert np.array_equal(a, b) and a.shape == (12, 4, 32, 32)
    assert set(np.unique(masks)) <= {0, 1, 2, 255}
    assert (masks[:, 0] == 255).all() and (masks == 1).any() and (masks == 2).any()


def test_task_benchmarks_smoke(tmp_path, monkeypatch):
    """`benchmarks.stats_memory` and `benchmarks.tasks` run end to end at toy sizes and write their records."""
    import json

    monkeypatch.syspath_prepend(ROOT)
    from benchmarks import stats_memory, tasks

    out = tmp_path / "sm.json"
    record = stats_memory.main(["--vocab", "512", "--seq", "64", "--dtypes", "float32", "--repeats", "1",
                                "--lm-hidden", "16", "--lm-layers", "1", "--lm-heads", "2", "--step-repeats", "1",
                                "--output", str(out)])
    row = record["results"][0]
    assert row["logits_bytes"] == 64 * 512 * 4 and row["stats_seconds"] > 0 and row["step_seconds"] > 0
    out = tmp_path / "lm.json"
    tasks.main(["--task", "lm", "--blocks", "24", "--epochs", "2", "--seeds", "0", "--methods", "baseline",
                "kakurenbo", "--output", str(out)])
    summary = json.loads(out.read_text())["summary"]
    assert set(summary) == {"baseline", "kakurenbo"} and len(summary["kakurenbo"]["time_ratio"]) == 1
