"""Shared pieces of the benchmarks: workload flags, data, models, trainers, timing, output.

The reference workload is a small ViT (or DeiT) built from a config, trained from scratch on
formula-driven fractal images (`kakurenbo_hf.data.make_fractal_dataset`). Every size is a flag
(`add_workload_arguments`), so the same command scales up on a GPU.

Images are converted once to normalised float tensors, outside every timed region, and held in
memory (`--data-format memory`, the default) or as a torch-formatted Arrow `datasets.Dataset`
(`--data-format arrow`, what most Hugging Face scripts use). Both trainers read the same rows
through the same collate function.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields

import numpy as np

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# --- machine and output ----------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """Where and with what a benchmark ran."""
    import torch

    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.cuda.is_available() and torch.cuda.get_device_name(0) or None,
    }
    for name in ("transformers", "accelerate", "datasets", "kakurenbo_hf"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # pragma: no cover - reporting only
            info[name] = None
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:  # pragma: no cover
        pass
    return info


def command_line(module: str, argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "-m", module, *args])


def write_json(path: str, record: dict) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2, default=_json_default)
        f.write("\n")
    return path


def publish(path: str, record: dict, markdown: str) -> dict:
    """Store `markdown` in the record, write the JSON to `path`, print the table."""
    record["markdown"] = markdown
    write_json(path, record)
    print(markdown)
    print(f"\nwrote {path}")
    return record


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_std(values) -> tuple[float, float]:
    values = [float(v) for v in values]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt_mean_std(values, scale: float = 1.0, digits: int = 3, suffix: str = "", minmax: bool = True) -> str:
    """'m ± s [min–max]' of `values` x `scale` ('m' for one value; `minmax=False` drops the range)."""
    values = [scale * float(v) for v in values]
    m, s = mean_std(values)
    if len(values) == 1:
        return f"{m:.{digits}f}{suffix}"
    spread = f" [{min(values):.{digits}f}–{max(values):.{digits}f}]" if minmax else ""
    return f"{m:.{digits}f} ± {s:.{digits}f}{suffix}{spread}"


# --- workload ----------------------------------------------------------------------------------


@dataclass
class Training:
    """The training fields `make_trainer` reads (AdamW with warm-up and a schedule); reference defaults."""

    epochs: int = 12
    batch_size: int = 32
    eval_batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_ratio: float = 0.05
    lr_scheduler: str = "cosine"


@dataclass
class Workload(Training):
    """Every size of the reference workload (flags of the same names, dashes for underscores)."""

    dataset: str = "fractal"  # fractal | synthetic (class templates + noise, no generator needed)
    num_classes: int = 10
    instances_per_class: int = 150
    test_instances_per_class: int = 50
    image_size: int = 32
    data_seed: int = 0
    data_format: str = "memory"  # memory | arrow
    cache_dir: str | None = None
    model: str = "vit"  # vit | deit
    patch_size: int = 8
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: int = 2
    extra: dict = field(default_factory=dict)


def add_dataclass_arguments(parser, instance, prefix: str = "", title: str | None = None, skip=(),
                            choices: dict | None = None) -> None:
    """One flag per field of the dataclass `instance` (its values are the defaults), in a group `title`.

    A field `hidden_size` with prefix "text_" becomes `--text-hidden-size` (dest `text_hidden_size`);
    read them back with `dataclass_from_args`.
    """
    group = parser.add_argument_group(title) if title else parser
    for f in fields(instance):
        if f.name in skip or f.name == "extra":
            continue
        default = getattr(instance, f.name)
        flag = "--" + (prefix + f.name).replace("_", "-")
        kind = {"int": int, "float": float}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
        kwargs = dict(dest=prefix + f.name, default=default, help=f"(default: {default})", metavar=kind.__name__.upper())
        if choices and f.name in choices:
            kwargs["choices"] = choices[f.name]
        group.add_argument(flag, type=kind, **kwargs)


def dataclass_from_args(cls, args: argparse.Namespace, prefix: str = "", **fixed):
    """The `cls` instance read back from flags added by `add_dataclass_arguments` (`fixed` wins)."""
    values = {f.name: getattr(args, prefix + f.name) for f in fields(cls) if hasattr(args, prefix + f.name)}
    return cls(**{**values, **fixed})


WORKLOAD_CHOICES = {"dataset": ["fractal", "synthetic"], "data_format": ["memory", "arrow"], "model": ["vit", "deit"]}


def add_workload_arguments(parser: argparse.ArgumentParser, **defaults) -> None:
    """Add one flag per `Workload` field; `defaults` overrides the dataclass defaults."""
    add_dataclass_arguments(parser, Workload(**defaults), title="workload (every size is a flag)",
                            choices=WORKLOAD_CHOICES)


def workload_from_args(args: argparse.Namespace) -> Workload:
    return dataclass_from_args(Workload, args)


class TensorRows:
    """A map-style dataset of in-memory tensors: rows are dicts, batched reads in one indexing."""

    def __init__(self, pixel_values, labels):
        self.pixel_values = pixel_values
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}

    def __getitems__(self, indices) -> list[dict]:
        return [{"pixel_values": self.pixel_values[i], "labels": self.labels[i]} for i in indices]


def collate(features: list[dict]) -> dict:
    """A user-style collate_fn (builds a fresh dict), identical for every trainer."""
    import torch

    return {
        "pixel_values": torch.stack([torch.as_tensor(f["pixel_values"]) for f in features]),
        "labels": torch.as_tensor([int(f["labels"]) for f in features], dtype=torch.long),
    }


def _images_to_array(images, image_size: int) -> np.ndarray:
    """PIL images -> (N, 3, S, S) float32 in [-1, 1]."""
    array = np.stack([np.asarray(img.convert("RGB").resize((image_size, image_size))) for img in images])
    array = array.astype(np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(array.transpose(0, 3, 1, 2))


def _synthetic_arrays(w: Workload):
    rng = np.random.default_rng(w.data_seed)
    templates = rng.normal(size=(w.num_classes, 3, w.image_size, w.image_size)).astype(np.float32)

    def split(per_class):
        labels = np.tile(np.arange(w.num_classes), per_class)
        scale = rng.uniform(0.3, 2.5, size=(labels.size, 1, 1, 1)).astype(np.float32)
        noise = rng.normal(size=(labels.size, 3, w.image_size, w.image_size)).astype(np.float32)
        return (templates[labels] + scale * noise).astype(np.float32), labels.astype(np.int64)

    return split(w.instances_per_class), split(w.test_instances_per_class)


def prepare_data(w: Workload):
    """(train, test) datasets of `pixel_values` (float tensors) and `labels`; built once, untimed."""
    import torch

    started = time.perf_counter()
    if w.dataset == "fractal":
        from kakurenbo_hf.data import make_fractal_dataset

        splits = make_fractal_dataset(
            num_classes=w.num_classes,
            instances_per_class=w.instances_per_class,
            image_size=w.image_size,
            seed=w.data_seed,
            test_instances_per_class=w.test_instances_per_class,
            cache_dir=w.cache_dir,
        )
        arrays = []
        for name in ("train", "test"):
            split = splits[name]
            arrays.append((_images_to_array(split["image"], w.image_size), np.asarray(split["label"], dtype=np.int64)))
    else:
        arrays = list(_synthetic_arrays(w))
    out = []
    for x, y in arrays:
        if w.data_format == "memory":
            out.append(TensorRows(torch.from_numpy(x), torch.from_numpy(y)))
        else:
            from datasets import Dataset

            out.append(Dataset.from_dict({"pixel_values": x, "labels": y}).with_format("torch"))
    w.extra["data_prepare_seconds"] = time.perf_counter() - started
    return out[0], out[1]


def build_model(w: Workload, seed: int):
    """A freshly initialised ViT/DeiT classifier (seeded: same weights for every method)."""
    import torch
    from transformers import DeiTConfig, DeiTForImageClassification, ViTConfig, ViTForImageClassification

    config_cls, model_cls = (ViTConfig, ViTForImageClassification) if w.model == "vit" else (
        DeiTConfig,
        DeiTForImageClassification,
    )
    config = config_cls(
        image_size=w.image_size,
        patch_size=w.patch_size,
        num_channels=3,
        hidden_size=w.hidden_size,
        num_hidden_layers=w.num_layers,
        num_attention_heads=w.num_heads,
        intermediate_size=w.mlp_ratio * w.hidden_size,
        num_labels=w.num_classes,
    )
    torch.manual_seed(seed)
    return model_cls(config)


def accuracy_metric(eval_pred) -> dict:
    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


# --- methods -----------------------------------------------------------------------------------

PLAIN_METHODS = ("baseline", "plain")  # the plain `transformers.Trainer` (two names for it)


def method_bases() -> tuple[str, ...]:
    """What a method spec may start with: the plain Trainer, or a registered hiding strategy."""
    from kakurenbo_hf.strategies import available_strategies

    return PLAIN_METHODS + tuple(available_strategies())


def parse_method(spec: str) -> tuple[str, dict]:
    """'kakurenbo' or 'kakurenbo:hiding_fraction=0.4,refresh_hidden=false' -> (base, overrides).

    `baseline` (or `plain`) is the plain Trainer; any other base is a registered hiding strategy
    (`kakurenbo_hf.strategies.available_strategies()`): KakurenboTrainer with
    hiding_strategy=<base>. Overrides are fields of `KakurenboArguments`, converted to the type of
    their default (lists with `/`: `hiding_decay_milestones=0.333/0.667,hiding_decay_factors=0.8/0.6`; empty:
    `hiding_decay_factors=`). `plain` comes back as `baseline`.
    """
    from kakurenbo_hf import KakurenboArguments

    base, _, rest = spec.partition(":")
    bases = method_bases()
    if base not in bases:
        raise ValueError(f"unknown method {base!r}: use one of {bases} (optionally ':field=value,...')")
    base = "baseline" if base in PLAIN_METHODS else base
    overrides: dict = {}
    defaults = KakurenboArguments()
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if not hasattr(defaults, key):
            raise ValueError(f"method {spec!r}: {key!r} is not a KakurenboArguments field")
        current = getattr(defaults, key)
        if isinstance(current, bool):
            overrides[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(current, (int, float)):
            overrides[key] = type(current)(value)
        elif isinstance(current, list):
            overrides[key] = [float(v) for v in value.split("/") if v]  # empty: an empty list
        else:
            overrides[key] = value
    if base == "baseline" and overrides:
        raise ValueError("the baseline takes no hiding overrides")
    if base != "baseline":
        overrides.setdefault("hiding_strategy", base)
    return base, overrides


class EpochTimer:
    """TrainerCallback: wall clock at train begin, each epoch end, each evaluation end.

    The Trainer evaluates right after `on_epoch_end`, so evaluation time is the gap between an
    epoch end and the next `on_evaluate`; train-only time excludes it. On a GPU each reading waits
    for the queued kernels first, so an epoch's work is not counted as evaluation.
    """

    def __init__(self):
        import torch
        from transformers import TrainerCallback

        outer = self

        def clock():
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
            return time.perf_counter(), time.process_time()

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                outer.train_begin = clock()
                outer.epoch_ends, outer.evals = [], []

            def on_epoch_end(self, args, state, control, **kwargs):
                outer.epoch_ends.append(clock())

            def on_evaluate(self, args, state, control, metrics=None, **kwargs):
                outer.evals.append((clock(), dict(metrics or {})))

        self.callback = _Callback()
        self.train_begin = None
        self.epoch_ends: list[float] = []
        self.evals: list[tuple[float, dict]] = []

    def per_epoch(self) -> list[dict]:
        """Per epoch: cumulative train-only wall (and process CPU) seconds at its end, eval seconds, metrics."""
        rows, eval_total, eval_cpu_total = [], 0.0, 0.0
        for i, (end, end_cpu) in enumerate(self.epoch_ends):
            row = {"epoch": i + 1, "train_seconds_cumulative": end - self.train_begin[0] - eval_total,
                   "train_cpu_seconds_cumulative": end_cpu - self.train_begin[1] - eval_cpu_total}
            if i < len(self.evals):
                (eval_time, eval_cpu), metrics = self.evals[i]
                row["eval_seconds"] = eval_time - end
                row["eval_cpu_seconds"] = eval_cpu - end_cpu
                eval_total += eval_time - end
                eval_cpu_total += eval_cpu - end_cpu
                row["accuracy"] = metrics.get("eval_accuracy")
                row["eval_loss"] = metrics.get("eval_loss")
            rows.append(row)
        return rows

    @property
    def eval_seconds(self) -> float:
        return sum(r.get("eval_seconds", 0.0) for r in self.per_epoch())

    @property
    def eval_cpu_seconds(self) -> float:
        return sum(r.get("eval_cpu_seconds", 0.0) for r in self.per_epoch())


def make_trainer(
    method: str,
    w: Workload,
    model,
    train_dataset,
    eval_dataset,
    seed: int,
    output_dir: str,
    evaluate: bool = True,
    logging_steps: int | None = None,
    callbacks=(),
    data_collator=None,
    use_cpu: bool = True,
):
    """A `Trainer` (baseline) or `KakurenboTrainer` with identical training arguments.

    `w` is a `Training` (a `Workload` is one); `data_collator` defaults to
    `collate` (image rows); `use_cpu=False` lets the Trainer pick an accelerator.
    """
    from transformers import Trainer, TrainingArguments

    from kakurenbo_hf import KakurenboTrainer, KakurenboTrainingArguments

    base, overrides = parse_method(method)
    common = dict(
        output_dir=output_dir,
        num_train_epochs=w.epochs,
        per_device_train_batch_size=w.batch_size,
        per_device_eval_batch_size=w.eval_batch_size,
        learning_rate=w.lr,
        weight_decay=w.weight_decay,
        warmup_steps=w.warmup_ratio,
        lr_scheduler_type=w.lr_scheduler,
        eval_strategy="epoch" if evaluate else "no",
        save_strategy="no",
        logging_strategy="steps" if logging_steps else "epoch",
        logging_steps=logging_steps or 500,
        report_to="none",
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        use_cpu=use_cpu,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        remove_unused_columns=False,
    )
    kwargs = dict(
        model=model,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if evaluate else None,
        data_collator=data_collator or collate,
        compute_metrics=accuracy_metric if evaluate else None,
        callbacks=list(callbacks),
    )
    if base == "baseline":
        return Trainer(args=TrainingArguments(**common), **kwargs)
    return KakurenboTrainer(args=KakurenboTrainingArguments(**common, **overrides), **kwargs)


def hiding_log(trainer) -> list[dict]:
    """The `kakurenbo/*` entries of the log history, one per epoch (empty for the plain Trainer)."""
    return [
        {k.split("/", 1)[1]: v for k, v in entry.items() if k.startswith("kakurenbo/")} | {"epoch": entry.get("epoch")}
        for entry in trainer.state.log_history
        if "kakurenbo/hidden" in entry
    ]


def sample_counts(num_samples: int, epochs: int, hiding: list[dict], refresh_hidden: bool) -> dict:
    """Samples forwarded+backwarded in training, and forwarded in refresh passes, from the logs.

    Epoch e trains N - hidden_e samples; the refresh at the start of epoch e forwards the samples
    hidden in epoch e-1 (the last epoch's hidden samples are never refreshed).
    """
    hidden = [int(h["hidden"]) for h in hiding] if hiding else [0] * epochs
    trained = sum(num_samples - h for h in hidden)
    if hiding and "refreshed" in hiding[0]:  # logged by the trainer (refresh_fraction < 1 refreshes a slice)
        refreshed = sum(int(h["refreshed"]) for h in hiding)
    else:
        refreshed = sum(hidden[:-1]) if refresh_hidden else 0
    return {"trained_samples": trained, "refresh_samples": refreshed, "hidden_per_epoch": hidden}


def tempdir(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=prefix)


THREADS_HELP = (
    "torch intra-op threads (default 1 on CPU, torch's choice on GPU; 0 = torch's choice). On a shared "
    "CPU, 2+ threads make OpenMP wait on descheduled threads: a run measured here took 7 s once and "
    "177 s (of process CPU time) another time. One thread keeps timings comparable."
)


def set_threads(threads: int | None) -> int:
    """Apply `--threads` (None: 1 on CPU-only machines, torch's choice with CUDA; 0: torch's choice)."""
    import torch

    if threads is None:
        threads = 0 if torch.cuda.is_available() else 1
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
