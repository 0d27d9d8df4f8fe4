"""Benchmark records: where and with what a benchmark ran, its exact command, the JSON it writes.

A record holds no machine paths: on writing, the repository root is cut from every string (so an
`output` of `/…/repo/benchmarks/results/x.json` is stored as `benchmarks/results/x.json`), the
temporary folder becomes `$TMPDIR` and the home folder `~`. `publish` writes the record, stores its
Markdown table in it and prints that table.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import shlex
import sys
import tempfile

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")


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
    """The command that reproduces this run: `python -m <module> <arguments>`."""
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "-m", module, *args])


def _path_patterns() -> list[tuple[re.Pattern, str, str]]:
    """(pattern, replacement when a path goes on below the folder, replacement of the folder alone),
    longest folder first. A path starts at the string's start or after a character that cannot be
    inside a path name (a space, '=', a quote, ...)."""
    folders = {}
    for folder, below, alone in ((REPO_ROOT, "", "."), (tempfile.gettempdir(), "$TMPDIR/", "$TMPDIR"),
                                 (os.path.expanduser("~"), "~/", "~")):
        for variant in (folder, os.path.realpath(folder)):
            variant = variant.rstrip(os.sep)
            if variant and variant not in folders:
                folders[variant] = (below, alone)
    return [(re.compile(r"(?<![\w.\-/~$])" + re.escape(folder) + r"(/|(?![\w.\-]))"), *folders[folder])
            for folder in sorted(folders, key=len, reverse=True)]


def portable(value):
    """`value` (a record: dicts, lists, strings, numbers) with machine paths made relative (see the docstring)."""
    patterns = _path_patterns()

    def walk(v):
        if isinstance(v, str):
            for pattern, below, alone in patterns:
                v = pattern.sub(lambda m: below if m.group(1) else alone, v)
            return v
        if isinstance(v, dict):
            return {key: walk(item) for key, item in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(item) for item in v]
        return v

    return walk(value)


def relative_path(path: str) -> str:
    """`path` as stored in records: relative to the repository root, or under `$TMPDIR` / `~`."""
    return portable(os.path.abspath(path))


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def write_json(path: str, record: dict) -> str:
    """Write `record` (machine paths made relative) as indented JSON to `path`; return `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(portable(record), f, indent=2, default=_json_default)
        f.write("\n")
    return path


def read_json(path: str) -> dict | None:
    """The record at `path`, or None when there is none (or it does not parse)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def publish(path: str, record: dict, markdown: str) -> dict:
    """Store `markdown` in the record, write the JSON to `path`, print the table; the record comes back
    as written (machine paths made relative)."""
    record["markdown"] = markdown
    record.update(portable(record))
    write_json(path, record)
    print(record["markdown"])
    print(f"\nwrote {relative_path(path)}")
    return record
