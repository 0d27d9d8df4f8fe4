"""Summaries for the printed reports: Markdown tables and 'mean ± std [min–max]' cells."""

from __future__ import annotations

import statistics


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table (floats to 4 significant digits)."""
    def cell(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_std(values) -> tuple[float, float]:
    """(mean, sample standard deviation) of `values`: (nan, nan) for none, std 0 for one."""
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
