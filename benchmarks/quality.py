"""Quality of a leaderboard workload: what is measured, overall and on every subgroup, at each evaluation.

A workload declares a `Quality`: the metric's name, whether higher is better, how it is shown
(top-1 in %, deltas in points; an eval loss in nats per token, deltas in nats), the tolerance of the
"no worse than the full plain run" verdict, and its groups (classes, or declared subgroups of the
evaluation rows). Its `compute_metrics` (given to the Trainer) returns, at every evaluation,

    {metric: overall value, metric + "_worst": worst group's value, metric + "_group_<name>": each group's value}

(the Trainer logs them with the `eval_` prefix). Two kinds are built here:

- `classification(class_names)`: top-1 accuracy overall and per class (the worst class is the
  lowest); classes absent from the evaluation set are left out.
- `language_model(group_of_row, group_names)`: the eval loss (mean negative log-likelihood per
  predicted token, -100 labels ignored, token-weighted) overall and per declared subgroup of the
  evaluation rows (the worst subgroup is the highest loss). `preprocess_logits_for_metrics` reduces
  each row's logits to (loss sum, token count) on the fly, so evaluation never holds the logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np


@dataclass(frozen=True)
class Quality:
    """What a workload's quality is and how it is judged (see the module docstring)."""

    name: str  # "top-1", "eval loss"
    metric: str  # key of the evaluation metrics without the `eval_` prefix: "accuracy", "lm_loss"
    higher_is_better: bool
    scale: float = 1.0  # shown values = metric x scale (100: percent)
    unit: str = ""  # of shown values: "%", "nats/token"
    delta_unit: str = ""  # of shown deltas: "pt", "nats"
    tolerance: float = 0.0  # in shown units: a delta this much worse than the full plain run still passes
    group_kind: str = "class"  # "class" or "subgroup"
    groups: tuple[str, ...] = ()
    # Evaluation hooks, handed to the Trainer (not part of the record).
    compute_metrics: Callable | None = field(default=None, compare=False, repr=False)
    preprocess_logits_for_metrics: Callable | None = field(default=None, compare=False, repr=False)

    def shown(self, value: float | None) -> float | None:
        return None if value is None else float(value) * self.scale

    def gain(self, value: float, reference: float) -> float:
        """How much better `value` is than `reference`, in shown units (positive: better)."""
        delta = (float(value) - float(reference)) * self.scale
        return delta if self.higher_is_better else -delta

    def reaches(self, value: float | None, target: float) -> bool:
        """Whether `value` is at least as good as `target` (both in metric units)."""
        if value is None or not np.isfinite(value):
            return False
        return value >= target - 1e-9 if self.higher_is_better else value <= target + 1e-9

    def target(self, reference: float) -> float:
        """`reference` (metric units) made worse by the tolerance: the time-to-quality target."""
        step = self.tolerance / self.scale
        return reference - step if self.higher_is_better else reference + step

    def worst_of(self, groups: dict[str, float]) -> tuple[str | None, float | None]:
        """The worst group (name, value): lowest if higher is better, else highest; for classes, the mean of
        the lowest tenth (`worst_classes`), named after how many classes it takes."""
        if not groups:
            return None, None
        if self.group_kind == "class":
            count = max(1, int(np.ceil(WORST_CLASS_SHARE * len(groups))))
            if count > 1:
                return f"lowest {count} classes", worst_classes(groups)
        pick = min if self.higher_is_better else max
        name = pick(groups, key=lambda g: groups[g])
        return name, groups[name]

    def groups_from_metrics(self, metrics: dict) -> dict[str, float]:
        """Per-group values out of a metrics dict (with or without the `eval_` prefix)."""
        out = {}
        for prefix in (f"eval_{self.metric}_group_", f"{self.metric}_group_"):
            for key, value in metrics.items():
                if key.startswith(prefix) and value is not None:
                    out[key[len(prefix):]] = float(value)
            if out:
                return out
        return out

    def overall_from_metrics(self, metrics: dict) -> float | None:
        value = metrics.get(f"eval_{self.metric}", metrics.get(self.metric))
        return None if value is None else float(value)

    def describe(self) -> dict:
        """The declaration as stored in the record (no hooks)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("compute_metrics", "preprocess_logits_for_metrics")}
        out["groups"] = list(self.groups)
        return out

    @property
    def label(self) -> str:
        """Column label: 'top-1 %', 'eval loss (nats/token)'."""
        if not self.unit:
            return self.name
        return f"{self.name} {self.unit}" if self.unit == "%" else f"{self.name} ({self.unit})"

    def tolerance_text(self) -> str:
        sign = "-" if self.higher_is_better else "+"
        return f"Δ {'≥' if self.higher_is_better else '≤'} {sign}{self.tolerance:g} {self.delta_unit}".rstrip()


def _metrics(metric: str, groups: dict[str, float], overall: float, worst: float | None) -> dict:
    out = {metric: float(overall)}
    if worst is not None:
        out[metric + "_worst"] = float(worst)
    out.update({f"{metric}_group_{name}": float(value) for name, value in groups.items()})
    return out


WORST_CLASS_SHARE = 0.1  # the worst group of a classifier: its lowest-scoring tenth of the classes


def worst_classes(groups: dict[str, float]) -> float | None:
    """Mean top-1 of the ceil(10%) lowest-scoring classes (the single lowest one with 10 classes or fewer).

    With many classes and a few test images each, the single lowest class is one or two images: its
    top-1 moves by 5-10 points between runs that differ in nothing that matters. A tenth of the
    classes still shows a forgotten part of the data, with less of that noise."""
    if not groups:
        return None
    count = max(1, int(np.ceil(WORST_CLASS_SHARE * len(groups))))
    return float(np.mean(sorted(groups.values())[:count]))


def classification(class_names) -> Quality:
    """Top-1 accuracy overall and per class (worst group = the mean of the lowest tenth of the classes)."""
    names = [str(n) for n in class_names]

    def compute_metrics(eval_pred) -> dict:
        logits, labels = eval_pred
        logits = logits[0] if isinstance(logits, tuple) else logits
        labels = np.asarray(labels)
        correct = np.argmax(logits, axis=-1) == labels
        groups = {names[c]: float(correct[labels == c].mean()) for c in range(len(names)) if np.any(labels == c)}
        return _metrics("accuracy", groups, correct.mean(), worst_classes(groups))

    return Quality("top-1", "accuracy", True, scale=100.0, unit="%", delta_unit="pt", tolerance=0.5,
                   group_kind="class", groups=tuple(names), compute_metrics=compute_metrics)


LM_TOLERANCE_NATS = 0.01  # about 1% of perplexity


def token_loss_sums(logits, labels):
    """Per row: (sum of the next-token negative log-likelihoods, number of predicted tokens), labels shifted
    as a causal LM shifts them (-100 ignored). `preprocess_logits_for_metrics` of `language_model`."""
    import torch

    logits = logits[0] if isinstance(logits, tuple) else logits
    shifted, targets = logits[:, :-1, :].float(), labels[:, 1:]
    mask = targets != -100
    nll = torch.nn.functional.cross_entropy(shifted.reshape(-1, shifted.shape[-1]),
                                            targets.clamp(min=0).reshape(-1), reduction="none").view(targets.shape)
    return torch.stack([(nll * mask).sum(dim=1), mask.sum(dim=1).to(nll.dtype)], dim=1)


def language_model(group_of_row, group_names) -> Quality:
    """Eval loss (nats per predicted token) overall and per subgroup of the evaluation rows, in their order
    (`group_of_row[i]`: the group index of evaluation row i; worst = the highest loss)."""
    group_of_row = np.asarray(group_of_row)
    names = [str(n) for n in group_names]

    def compute_metrics(eval_pred) -> dict:
        sums = np.asarray(eval_pred.predictions if hasattr(eval_pred, "predictions") else eval_pred[0])
        if sums.shape[0] != group_of_row.shape[0]:
            raise ValueError(f"{sums.shape[0]} evaluated rows, {group_of_row.shape[0]} rows with a group")
        groups = {}
        for g, name in enumerate(names):
            rows = group_of_row == g
            if rows.any():
                groups[name] = float(sums[rows, 0].sum() / max(sums[rows, 1].sum(), 1))
        overall = float(sums[:, 0].sum() / max(sums[:, 1].sum(), 1))
        return _metrics("lm_loss", groups, overall, max(groups.values()) if groups else None)

    return Quality("eval loss", "lm_loss", False, scale=1.0, unit="nats/token", delta_unit="nats",
                   tolerance=LM_TOLERANCE_NATS, group_kind="subgroup", groups=tuple(names),
                   compute_metrics=compute_metrics, preprocess_logits_for_metrics=token_loss_sums)
