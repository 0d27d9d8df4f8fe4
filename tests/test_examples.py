"""Smoke tests of examples/: each script runs end to end with tiny settings, offline.

Most call the script's `main(args_list)` in-process (importing transformers once); one runs a script
as a subprocess, as a user would. The slower ones are marked `slow`.
"""

import importlib
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

TINY = [
    "--do_train", "--do_eval", "--num_train_epochs", "1", "--per_device_train_batch_size", "8",
    "--per_device_eval_batch_size", "16", "--save_strategy", "no", "--report_to", "none",
    "--learning_rate", "1e-3", "--log_level", "error", "--disable_tqdm", "true",
]
TINY_FRACTAL = ["--fractal_num_classes", "3", "--fractal_train_per_class", "6", "--fractal_test_per_class", "2"]
TINY_DEIT = ["--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--patch_size", "8"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets_cache"))
    monkeypatch.syspath_prepend(EXAMPLES)


def _example(name):
    return importlib.import_module(name)


def _check_outputs(out, results):
    assert "train_runtime" in results and 0.0 <= results["eval_accuracy"] <= 1.0
    assert os.path.isfile(os.path.join(out, "config.json"))
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
    with open(os.path.join(out, "all_results.json")) as f:
        assert "eval_accuracy" in json.load(f)


def test_image_classification_default_model(tmp_path):
    out = str(tmp_path / "out")
    results = _example("image_classification").main(
        ["--output_dir", out, "--cache_dir", str(tmp_path / "cache"), "--hiding_fraction", "0.3"] + TINY + TINY_FRACTAL + TINY_DEIT
    )
    _check_outputs(out, results)
    assert os.path.isfile(os.path.join(out, "preprocessor_config.json"))


def test_image_classification_local_pretrained_folder(tmp_path):
    """The Hub code path (AutoConfig/AutoImageProcessor/AutoModel.from_pretrained) on a local folder."""
    ic = _example("image_classification")
    model, processor = ic.tiny_deit(5, {str(i): str(i) for i in range(5)}, {str(i): str(i) for i in range(5)},
                                    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, patch_size=8)
    folder = str(tmp_path / "tiny-deit")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    out = str(tmp_path / "out")
    results = ic.main(["--output_dir", out, "--model_name_or_path", folder, "--ignore_mismatched_sizes",
                       "--cache_dir", str(tmp_path / "cache")] + TINY + TINY_FRACTAL)
    _check_outputs(out, results)
    with open(os.path.join(out, "config.json")) as f:
        assert len(json.load(f)["id2label"]) == 3  # the head was resized to the data's classes


def test_image_classification_image_folder(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for cls, value in (("cat", 40), ("dog", 200)):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(value + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.png")
    out = str(tmp_path / "out")
    results = _example("image_classification").main(
        ["--output_dir", out, "--train_dir", str(tmp_path / "train"), "--validation_dir", str(tmp_path / "val"),
         "--cache_dir", str(tmp_path / "cache")] + TINY + TINY_DEIT
    )
    _check_outputs(out, results)
    with open(os.path.join(out, "config.json")) as f:
        assert sorted(json.load(f)["label2id"]) == ["cat", "dog"]


@pytest.mark.slow
def test_image_classification_timm_wrapper(tmp_path):
    pytest.importorskip("timm")
    out = str(tmp_path / "out")
    results = _example("image_classification").main(
        ["--output_dir", out, "--timm_model", "vit_tiny_patch16_224",
         "--timm_model_args", '{"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 8}',
         "--cache_dir", str(tmp_path / "cache")] + TINY + TINY_FRACTAL
    )
    _check_outputs(out, results)
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["model_type"] == "timm_wrapper" and config["architecture"] == "vit_tiny_patch16_224"
    # The saved wrapper reloads through the Auto classes without any download.
    from transformers import AutoModelForImageClassification

    assert AutoModelForImageClassification.from_pretrained(out).config.num_labels == 3


def test_text_classification_csv(tmp_path):
    import csv

    rows = [("a good great movie", "pos"), ("a bad awful film", "neg")] * 12
    for name, part in (("train.csv", rows), ("val.csv", rows[:6])):
        with open(tmp_path / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(part)
    out = str(tmp_path / "out")
    results = _example("text_classification").main(
        ["--output_dir", out, "--train_file", str(tmp_path / "train.csv"),
         "--validation_file", str(tmp_path / "val.csv"), "--hidden_size", "32", "--num_hidden_layers", "1"] + TINY
    )
    _check_outputs(out, results)
    assert os.path.isfile(os.path.join(out, "tokenizer.json"))


@pytest.mark.slow
def test_text_classification_generated_subprocess(tmp_path):
    """The CLI as a user runs it (generated data, trained tokenizer), in a fresh offline process."""
    out = str(tmp_path / "out")
    env = dict(os.environ, **OFFLINE_ENV)
    proc = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "text_classification.py"), "--output_dir", out,
         "--synthetic_train_size", "200", "--synthetic_validation_size", "40", "--hidden_size", "32",
         "--num_hidden_layers", "1", "--hiding_fraction", "0.3", "--do_train", "--do_eval", "--num_train_epochs", "2"] + TINY[4:],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[text_classification]" in proc.stdout and "eval_accuracy=" in proc.stdout


@pytest.mark.slow
def test_fractal_pretrain(tmp_path):
    pytest.importorskip("sklearn")
    out = str(tmp_path / "out")
    summary = _example("fractal_pretrain").main(
        ["--output_dir", out, "--pretrain_classes", "4", "--pretrain_per_class", "6", "--pretrain_test_per_class", "2",
         "--pretrain_epochs", "1", "--finetune_epochs", "1", "--finetune_train_samples", "40",
         "--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--patch_size", "8",
         "--per_device_train_batch_size", "8", "--log_level", "error", "--disable_tqdm", "true"]
    )
    assert set(summary) == {"pretrain", "finetune"}
    assert summary["finetune"]["classes"] == 10 and 0.0 <= summary["finetune"]["eval_accuracy"] <= 1.0
    assert os.path.isfile(os.path.join(out, "pretrained_model", "model.safetensors"))
    assert os.path.isfile(os.path.join(out, "summary.json"))
