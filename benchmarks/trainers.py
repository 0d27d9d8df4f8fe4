"""Training runs: method specs, the trainer of a method, and what a finished run hid and trained.

A method is `baseline` (or `plain`: the plain `transformers.Trainer`) or a registered hiding
strategy with optional `KakurenboArguments` overrides (`kakurenbo:hiding_fraction=0.4`);
`make_trainer` builds either trainer with identical training arguments.
"""

from __future__ import annotations

import dataclasses
import tempfile

from .builders import accuracy_metric, collate

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
    types = {f.name: str(f.type) for f in dataclasses.fields(KakurenboArguments)}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if not hasattr(defaults, key):
            raise ValueError(f"method {spec!r}: {key!r} is not a KakurenboArguments field")
        current = getattr(defaults, key)
        if current is None:  # an optional field (`max_hidden_epochs: int | None`): typed by its annotation
            kind = types.get(key, "")
            if value.lower() in ("none", ""):
                overrides[key] = None
            elif kind.startswith("bool"):
                overrides[key] = value.lower() in ("1", "true", "yes")
            elif kind.startswith("int"):
                overrides[key] = int(value)
            elif kind.startswith("float"):
                overrides[key] = float(value)
            else:
                overrides[key] = value
        elif isinstance(current, bool):
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


def make_trainer(
    method: str,
    w,
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
    compute_metrics=None,
    preprocess_logits_for_metrics=None,
    max_steps: int | None = None,
):
    """A `Trainer` (baseline) or `KakurenboTrainer` with identical training arguments.

    `w` is a `flags.Training` (a `Workload` is one); `data_collator` defaults to
    `builders.collate` (image rows); `use_cpu=False` lets the Trainer pick an accelerator;
    `compute_metrics` defaults to top-1 accuracy. `max_steps` (> 0) trains that many optimizer steps
    instead of `w.epochs` epochs: the LR schedule (warm-up ratio, decay) is fitted to them, and with
    per-epoch evaluation the last, partial epoch is evaluated too (the Trainer ends it with
    `on_epoch_end`).
    """
    from transformers import Trainer, TrainingArguments

    from kakurenbo_hf import KakurenboTrainer, KakurenboTrainingArguments

    base, overrides = parse_method(method)
    common = dict(
        output_dir=output_dir,
        num_train_epochs=w.epochs,
        max_steps=max_steps if max_steps else -1,
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
        compute_metrics=(compute_metrics or accuracy_metric) if evaluate else None,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics if evaluate else None,
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
    """A fresh temporary folder (trainer outputs, checkpoints); the caller removes it."""
    return tempfile.mkdtemp(prefix=prefix)
