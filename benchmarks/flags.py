"""Training settings as dataclasses, and one command-line flag per field.

`Training` holds what `benchmarks.trainers.make_trainer` reads (AdamW with warm-up and a schedule);
`Workload` adds every size of the reference workload (a small ViT or DeiT on fractal images, see
`benchmarks.builders`). Every size is a flag (`add_workload_arguments`), so the same command
scales up on a GPU.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields


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
                            choices: dict | None = None, underscore_aliases: bool = False) -> None:
    """One flag per field of the dataclass `instance` (its values are the defaults), in a group `title`.

    A field `hidden_size` with prefix "text_" becomes `--text-hidden-size` (dest `text_hidden_size`;
    `underscore_aliases` also accepts `--text_hidden_size`); read them back with `dataclass_from_args`.
    """
    group = parser.add_argument_group(title) if title else parser
    for f in fields(instance):
        if f.name in skip or f.name == "extra":
            continue
        default = getattr(instance, f.name)
        flags = ["--" + (prefix + f.name).replace("_", "-")]
        if underscore_aliases and "_" in prefix + f.name:
            flags.append("--" + prefix + f.name)
        kind = {"int": int, "float": float}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
        kwargs = dict(dest=prefix + f.name, default=default, help=f"(default: {default})", metavar=kind.__name__.upper())
        if choices and f.name in choices:
            kwargs["choices"] = choices[f.name]
        group.add_argument(*flags, type=kind, **kwargs)


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
    """The `Workload` the flags of `add_workload_arguments` describe."""
    return dataclass_from_args(Workload, args)
