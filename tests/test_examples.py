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

TINY = [
    "--do_train", "--do_eval", "--num_train_epochs", "1", "--per_device_train_batch_size", "8",
    "--per_device_eval_batch_size", "16", "--save_strategy", "no", "--report_to", "none",
    "--learning_rate", "1e-3", "--log_level", "error", "--disable_tqdm", "true",
]
TINY_FRACTAL = ["--fractal_num_classes", "3", "--fractal_train_per_class", "6", "--fractal_test_per_class", "2"]
TINY_DEIT = ["--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--patch_size", "8"]


# Offline, a datasets cache per test, examples/ importable; the subprocesses below inherit it.
pytestmark = pytest.mark.usefixtures("examples_env")


def _example(name):
    return importlib.import_module(name)


def _check_outputs(out, results):
    assert "train_runtime" in results and 0.0 <= results["eval_accuracy"] <= 1.0
    assert os.path.isfile(os.path.join(out, "config.json"))
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
    with open(os.path.join(out, "all_results.json")) as f:
        assert "eval_accuracy" in json.load(f)


def _make_image_folder(root, per_class=6):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for cls, value in (("cat", 40), ("dog", 200)):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(value + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.png")


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
    _make_image_folder(tmp_path)
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
    proc = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "text_classification.py"), "--output_dir", out,
         "--synthetic_train_size", "200", "--synthetic_validation_size", "40", "--hidden_size", "32",
         "--num_hidden_layers", "1", "--hiding_fraction", "0.3", "--do_train", "--do_eval", "--num_train_epochs", "2"] + TINY[4:],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[text_classification]" in proc.stdout and "eval_accuracy=" in proc.stdout


# --- command-line defaults, "nothing to do", remove_unused_columns -------------------------------


def _capture_trainer(module, monkeypatch, run=False):
    """Replace `module.train_and_evaluate` by a spy: it records the trainer `main` built (and runs the
    real one if `run`). Returns the list the trainers are appended to."""
    seen = []
    real = module.train_and_evaluate

    def spy(trainer, training_args, name, num_labels):
        seen.append(trainer)
        return real(trainer, training_args, name, num_labels) if run else {}

    monkeypatch.setattr(module, "train_and_evaluate", spy)
    return seen


@pytest.mark.parametrize("case", ["output_dir_only", "readme_own_data", "user_overrides", "eval_only", "json"])
def test_image_classification_recipe_defaults_hold_with_arguments(tmp_path, monkeypatch, case):
    """Any argument used to drop every embedded default (do_train included): `--output_dir X` did nothing
    and the README's own-data command trained with TrainingArguments' 3 epochs at lr 5e-5."""
    ic = _example("image_classification")
    seen = _capture_trainer(ic, monkeypatch)
    out = str(tmp_path / "out")
    data = TINY_FRACTAL + ["--cache_dir", str(tmp_path / "cache")]
    expected = dict(do_train=True, do_eval=True, num_train_epochs=10, learning_rate=2e-3, weight_decay=0.05,
                    per_device_train_batch_size=32, per_device_eval_batch_size=64, seed=42, report_to=[])
    if case == "output_dir_only":
        argv = ["--output_dir", out] + data + TINY_DEIT
    elif case == "readme_own_data":  # the README's own-data command
        _make_image_folder(tmp_path)
        argv = ["--train_dir", str(tmp_path / "train"), "--validation_dir", str(tmp_path / "val"), "--do_train",
                "--do_eval", "--output_dir", out, "--cache_dir", str(tmp_path / "cache")] + TINY_DEIT
    elif case == "user_overrides":  # every flag the user passes wins over its default, in any spelling
        argv = ["--output_dir", out, "--learning_rate", "5e-5", "--num-train-epochs", "2", "--seed=7"] + data + TINY_DEIT
        expected.update(learning_rate=5e-5, num_train_epochs=2, seed=7)
    elif case == "eval_only":  # one action given: the other is not switched on behind the user's back
        argv = ["--output_dir", out, "--do_eval"] + data + TINY_DEIT
        expected.update(do_train=False)
    else:  # a JSON config: its keys override the same defaults
        config = {"output_dir": out, "learning_rate": 1e-4, "fractal_num_classes": 3, "fractal_train_per_class": 6,
                  "fractal_test_per_class": 2, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "cache_dir": str(tmp_path / "cache")}
        (tmp_path / "args.json").write_text(json.dumps(config))
        argv = [str(tmp_path / "args.json")]
        expected.update(learning_rate=1e-4)
    ic.main(argv)
    (trainer,) = seen
    got = {key: getattr(trainer.args, key) for key in expected}
    assert got == expected
    assert trainer.args.output_dir == out
    assert (trainer.train_dataset is not None) == expected["do_train"]
    assert trainer.eval_dataset is not None


@pytest.mark.parametrize("case", ["output_dir_only", "user_overrides"])
def test_text_classification_recipe_defaults_hold_with_arguments(tmp_path, monkeypatch, case):
    import csv

    tc = _example("text_classification")
    seen = _capture_trainer(tc, monkeypatch)
    rows = [("a good great movie", "pos"), ("a bad awful film", "neg")] * 6
    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "label")] + rows)
    argv = ["--output_dir", str(tmp_path / "out"), "--train_file", str(tmp_path / "train.csv"), "--hidden_size", "32",
            "--num_hidden_layers", "1"]
    expected = dict(do_train=True, do_eval=True, num_train_epochs=4, learning_rate=1e-3, weight_decay=0.01,
                    per_device_train_batch_size=32, per_device_eval_batch_size=128, seed=42, report_to=[])
    if case == "user_overrides":
        argv += ["--learning_rate", "3e-4", "--do_train", "--num_train_epochs", "1"]
        expected.update(learning_rate=3e-4, num_train_epochs=1, do_eval=False)
    tc.main(argv)
    (trainer,) = seen
    assert {key: getattr(trainer.args, key) for key in expected} == expected


def test_text_classification_nothing_to_do_is_an_error(tmp_path):
    tc = _example("text_classification")
    with pytest.raises(SystemExit, match="nothing to do"):
        tc.main(["--output_dir", str(tmp_path / "out"), "--do_train", "false", "--do_eval", "false"])
    assert not (tmp_path / "out").exists()


def test_image_classification_nothing_to_do_exits_non_zero(tmp_path):
    """A run that does nothing says so and fails (it used to exit 0 after printing an empty line)."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "image_classification.py"), "--output_dir", str(out),
         "--do_train", "false", "--do_eval", "false"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "nothing to do" in proc.stderr
    assert proc.stdout.strip() == ""
    assert not out.exists()


def _write_parquet_image_dataset(folder):
    """A local data set `load_dataset(folder)` reads: odd column names and an extra column."""
    import numpy as np
    from datasets import ClassLabel, Dataset, Features, Image, Value
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    features = Features({"img": Image(), "fine_label": ClassLabel(names=["dark", "light"]), "file_name": Value("string")})
    folder.mkdir()
    for split, n in (("train", 12), ("test", 4)):
        labels = [i % 2 for i in range(n)]
        images = [PILImage.fromarray(np.clip(40 + 160 * y + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8))
                  for y in labels]
        Dataset.from_dict({"img": images, "fine_label": labels, "file_name": [f"{split}_{i}.png" for i in range(n)]},
                          features=features).to_parquet(str(folder / f"{split}.parquet"))


@pytest.mark.parametrize("remove_unused_columns", [True, False])
def test_image_classification_respects_remove_unused_columns(tmp_path, monkeypatch, remove_unused_columns):
    """The user's --remove_unused_columns holds (it used to be forced to False) and training works either way,
    with an image column and a label column named otherwise than the model's arguments."""
    ic = _example("image_classification")
    seen = _capture_trainer(ic, monkeypatch, run=True)
    _write_parquet_image_dataset(tmp_path / "data")
    out = str(tmp_path / "out")
    results = ic.main(["--output_dir", out, "--dataset_name", str(tmp_path / "data"), "--image_column_name", "img",
                       "--label_column_name", "fine_label", "--remove_unused_columns", str(remove_unused_columns),
                       "--cache_dir", str(tmp_path / "cache")] + TINY + TINY_DEIT)
    _check_outputs(out, results)
    (trainer,) = seen
    assert trainer.args.remove_unused_columns is remove_unused_columns
    columns = trainer.get_train_dataloader().dataset.column_names  # what the Trainer reads rows from
    if remove_unused_columns:
        assert sorted(columns) == ["labels", "pixel_values"]
    else:
        assert sorted(columns) == ["file_name", "labels", "pixel_values"]
    with open(os.path.join(out, "config.json")) as f:
        assert sorted(json.load(f)["label2id"]) == ["dark", "light"]


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
