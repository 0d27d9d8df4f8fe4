"""Run the README's main command and its examples, as printed there, and record what they measured.

    python -m benchmarks.run_examples                        # every job, one torch thread
    python -m benchmarks.run_examples --threads 1 --output benchmarks/results/examples.json
    python -m benchmarks.run_examples --jobs text_classification text_classification_plain --output $TMPDIR/x.json

Each job is the command the README prints (`python examples/<script>.py <arguments>`), run as a
subprocess from the repository root with `--output_dir` appended (a fresh temporary folder per
job, so no run reads another's files; the README's commands write to `outputs/<script>`). Two jobs
per classification example: with hiding (the default) and the same command with
`--hiding_fraction 0`, which is the plain `Trainer` (bit-identical on CPU); `causal_lm.py` and
`semantic_segmentation.py` train the plain `Trainer` themselves (`--compare_plain`), and
`fractal_pretrain.py` the fine-tuning from scratch (`--compare_scratch`).

Per job the record holds: the README command and the command as run, the process's wall time,
the load average when it started, and its figures: train seconds, the held-out quality the README
quotes (top-1 / accuracy, perplexity, mean IoU, digits top-1), optimizer steps and the end-of-run
summary (`kakurenbo/saved_share`, `kakurenbo/samples_backpropagated`, ...) where the script
writes them, read from the metrics files the scripts write (`all_results.json`,
`summary.json`) and from the summary lines they print. The README's examples table and
docs/tasks.md cite the record, `benchmarks/results/examples.json`; `tests/test_readme_records.py`
checks the README's figures against it.

The torch thread count is set through `OMP_NUM_THREADS` (`--threads`, default 1: on a shared CPU
more threads make the timings erratic); the Hub is kept offline (`HF_HUB_OFFLINE=1`,
`HF_DATASETS_OFFLINE=1`: the examples need nothing from it, and `evaluate.load` then falls back
at once to the scripts' numpy accuracy). Each job's wall time is in the record.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from . import report

EXAMPLES_DIR = os.path.join(report.REPO_ROOT, "examples")
DEFAULT_OUTPUT = os.path.join(report.RESULTS_DIR, "examples.json")


@dataclass(frozen=True)
class Job:
    """One command of the README: `python examples/<script>.py <args>`, and how to read its figures."""

    name: str
    script: str
    args: tuple[str, ...] = ()
    what: str = ""
    readme: str = field(default="examples table")  # where its figures are quoted

    @property
    def command(self) -> str:
        return shlex.join(["python", f"examples/{self.script}.py", *self.args])


JOBS = (
    Job("image_classification", "image_classification", (),
        "the README's main command: a DeiT from scratch on 10 embedded fractal classes, 10 epochs, hiding on",
        "main command, examples table"),
    Job("image_classification_plain", "image_classification", ("--hiding_fraction", "0"),
        "the same with hiding off: the plain Trainer", "main command, examples table"),
    Job("text_classification", "text_classification", (),
        "a BERT from a config on generated sentiment sentences, 4 epochs, hiding on"),
    Job("text_classification_plain", "text_classification", ("--hiding_fraction", "0"),
        "the same with hiding off: the plain Trainer"),
    Job("causal_lm", "causal_lm", ("--compare_plain",),
        "a GPT-2 from a config on standard-library docstrings with repeated and random blocks; then the plain "
        "Trainer from the same weights", "examples table, docs/tasks.md"),
    Job("semantic_segmentation", "semantic_segmentation", ("--compare_plain",),
        "a SegFormer from a config on DeepCAM-like climate fields with 10% wrong masks; then the plain Trainer",
        "examples table, docs/tasks.md"),
    Job("semantic_segmentation_accuracy_confidence", "semantic_segmentation", ("--statistics_confidence", "accuracy"),
        "the same with plain pixel accuracy as the confidence instead of the class-balanced one", "docs/tasks.md"),
    Job("fractal_pretrain", "fractal_pretrain", ("--compare_scratch",),
        "pre-train a DeiT on 20 fractal classes with hiding, fine-tune on digits; and digits from scratch"),
)
JOB_NAMES = tuple(job.name for job in JOBS)


# --- reading a job's figures --------------------------------------------------------------------

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf"


def _float(text: str) -> float:
    return float(text)  # "nan" when a script had nothing to print


def read_json_file(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def trainer_metrics(output_dir: str) -> dict:
    """`all_results.json` (the Trainer's `save_metrics`): train_runtime, eval_*, kakurenbo/* summary."""
    metrics = read_json_file(os.path.join(output_dir, "all_results.json"))
    keys = ("train_runtime", "train_loss", "eval_accuracy", "eval_loss", "eval_mean_iou", "eval_pixel_accuracy",
            "perplexity", "epoch")
    figures = {key: metrics[key] for key in keys if key in metrics}
    figures.update({key: value for key, value in metrics.items() if key.startswith("kakurenbo/")})
    return figures


def side_by_side_rows(stdout: str, tag: str) -> dict[str, list[str]]:
    """The `[tag] trainer | ... | ...` rows of a script's summary, by trainer name (KakurenboTrainer, Trainer)."""
    rows = {}
    for line in stdout.splitlines():
        match = re.match(rf"\[{re.escape(tag)}\] (KakurenboTrainer|Trainer) \| (.*)$", line.strip())
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return rows


def _int_list(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"-?\d+", text)]


def parse_classification(stdout: str, output_dir: str) -> dict:
    figures = trainer_metrics(output_dir)
    if "train_runtime" in figures:
        figures["train_seconds"] = figures["train_runtime"]
    return figures


def parse_causal_lm(stdout: str, output_dir: str) -> dict:
    figures = {"trainer_metrics": trainer_metrics(output_dir)}
    for name, cells in side_by_side_rows(stdout, "causal_lm").items():
        key = "kakurenbo" if name == "KakurenboTrainer" else "plain"
        figures[key] = {"train_seconds": _float(cells[0]), "optimizer_steps": int(cells[1]),
                        "perplexity": _float(cells[2])}
    tau = None
    definitions, kinds, names = {}, {}, None
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("[causal_lm] hidden per epoch"):
            match = re.search(r"of (\d+) blocks\): \[(.*)\]", line)
            if match:
                figures["blocks"] = int(match.group(1))
                figures["hidden_per_epoch"] = _int_list(match.group(2))
        elif line.startswith("[causal_lm] after training"):
            match = re.search(r"tau = (" + _NUMBER + ")", line)
            tau = float(match.group(1)) if match else None
        elif line.startswith("[causal_lm] kind | "):
            names = [cell.strip() for cell in line[len("[causal_lm] kind | "):].split("|")]
        elif names and re.match(r"\[causal_lm\] (\w+) \| ", line):
            kind, rest = re.match(r"\[causal_lm\] (\w+) \| (.*)$", line).groups()
            cells = [cell.strip() for cell in rest.split("|")]
            definitions[kind] = {}
            for name, cell in zip(names, cells):
                match = re.match(rf"({_NUMBER}) \(({_NUMBER})%\)", cell)
                if match:
                    definitions[kind][name] = {"mean": float(match.group(1)),
                                               "share_at_or_above_tau": float(match.group(2)) / 100}
        else:
            match = re.match(r"\[causal_lm\] (\w+)\s+blocks\s+(\d+)\s+ever hidden\s+(\d+)\s+hidden in the last epoch\s+"
                             rf"(\d+)\s+mean confidence\s+({_NUMBER})\s+correct\s+({_NUMBER})\s+mean loss\s+({_NUMBER})",
                             line)
            if match:
                kinds[match.group(1)] = {"blocks": int(match.group(2)), "ever_hidden": int(match.group(3)),
                                         "hidden_last_epoch": int(match.group(4)),
                                         "mean_confidence": float(match.group(5)), "correct": float(match.group(6)),
                                         "mean_loss": float(match.group(7))}
    if tau is not None:
        figures["tau"] = tau
    if definitions:
        figures["definitions"] = definitions
    if kinds:
        figures["kinds"] = kinds
    if "kakurenbo" in figures:
        figures["train_seconds"] = figures["kakurenbo"]["train_seconds"]
    return figures


def parse_segmentation(stdout: str, output_dir: str) -> dict:
    figures = {"trainer_metrics": trainer_metrics(output_dir)}
    for name, cells in side_by_side_rows(stdout, "semantic_segmentation").items():
        key = "kakurenbo" if name == "KakurenboTrainer" else "plain"
        figures[key] = {"train_seconds": _float(cells[0]), "optimizer_steps": int(cells[1]),
                        "eval_mean_iou": _float(cells[2]), "eval_pixel_accuracy": _float(cells[3])}
    for line in stdout.splitlines():
        line = line.strip()
        match = re.match(r"\[semantic_segmentation\] hidden per epoch \(of (\d+)\): \[(.*)\]", line)
        if match:
            figures["samples"] = int(match.group(1))
            figures["hidden_per_epoch"] = _int_list(match.group(2))
        match = re.match(r"\[semantic_segmentation\] ever hidden: clean (\d+) of (\d+), mislabelled (\d+) of (\d+)", line)
        if match:
            clean, clean_total, wrong, wrong_total = (int(g) for g in match.groups())
            figures["clean_ever_hidden"] = {"hidden": clean, "of": clean_total, "share": clean / max(clean_total, 1)}
            figures["mislabelled_ever_hidden"] = {"hidden": wrong, "of": wrong_total, "share": wrong / max(wrong_total, 1)}
    if "kakurenbo" in figures:
        figures["train_seconds"] = figures["kakurenbo"]["train_seconds"]
    return figures


def parse_fractal_pretrain(stdout: str, output_dir: str) -> dict:
    summary = read_json_file(os.path.join(output_dir, "summary.json"))
    figures = dict(summary)
    if "pretrain" in summary and "finetune" in summary:
        figures["train_seconds"] = sum(summary[phase].get("train_runtime") or 0.0 for phase in ("pretrain", "finetune"))
    return figures


PARSERS = {
    "image_classification": parse_classification,
    "text_classification": parse_classification,
    "causal_lm": parse_causal_lm,
    "semantic_segmentation": parse_segmentation,
    "fractal_pretrain": parse_fractal_pretrain,
}


# --- running -----------------------------------------------------------------------------------

def child_environment(threads: int) -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    if threads > 0:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [report.REPO_ROOT, env.get("PYTHONPATH")]))
    return env


def run_job(job: Job, threads: int, workdir: str, log_dir: str | None = None) -> dict:
    """Run `job` as a subprocess from the repository root; its record entry (figures, wall time, exit status)."""
    output_dir = os.path.join(workdir, job.name)
    argv = [sys.executable, os.path.join("examples", f"{job.script}.py"), *job.args, "--output_dir", output_dir]
    try:
        load = list(os.getloadavg())
    except OSError:  # pragma: no cover
        load = None
    print(f"[run_examples] {job.name}: {job.command}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=report.REPO_ROOT, env=child_environment(threads), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        with open(os.path.join(log_dir, f"{job.name}.log"), "w") as f:
            f.write(done.stdout + "\n--- stderr ---\n" + done.stderr)
    entry = {
        "name": job.name,
        "what": job.what,
        "quoted_in": job.readme,
        "command": job.command,
        "run_as": shlex.join(["python", *argv[1:]]),
        "returncode": done.returncode,
        "wall_seconds": wall,
        "loadavg_at_start": load,
    }
    if done.returncode != 0:
        entry["stderr_tail"] = done.stderr[-4000:]
        print(f"[run_examples] {job.name} FAILED (exit {done.returncode}):\n{done.stderr[-2000:]}", flush=True)
        return entry
    entry["figures"] = PARSERS[job.script](done.stdout, output_dir)
    entry["summary_lines"] = [line for line in done.stdout.splitlines() if line.startswith(f"[{job.script}]")]
    print(f"[run_examples] {job.name}: {wall:.1f} s", flush=True)
    return entry


# --- the record's table ------------------------------------------------------------------------

def headline(entry: dict) -> tuple[str, str]:
    """(quality name, value) of a job: the figure the README quotes."""
    figures = entry.get("figures") or {}
    name = entry["name"]
    if name.startswith(("image_classification", "text_classification")):
        value = figures.get("eval_accuracy")
        return ("top-1" if name.startswith("image") else "accuracy"), _fmt(value, 3)
    if name == "causal_lm":
        k, p = figures.get("kakurenbo", {}), figures.get("plain", {})
        return "perplexity (plain Trainer)", f"{_fmt(k.get('perplexity'), 2)} ({_fmt(p.get('perplexity'), 2)})"
    if name.startswith("semantic_segmentation"):
        k, p = figures.get("kakurenbo", {}), figures.get("plain", {})
        text = _fmt(k.get("eval_mean_iou"), 4)
        if p:
            text += f" ({_fmt(p.get('eval_mean_iou'), 4)})"
        return "mean IoU (plain Trainer)", text
    if name == "fractal_pretrain":
        pre, ft, sc = (figures.get(phase, {}).get("eval_accuracy") for phase in ("pretrain", "finetune", "scratch"))
        return "top-1: pre-train / fine-tuned / scratch", f"{_fmt(pre, 3)} / {_fmt(ft, 3)} / {_fmt(sc, 3)}"
    return "-", "-"


def _fmt(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(record: dict) -> str:
    lines = [
        f"`{record['command']}` ({record['threads']} torch thread(s) per job, {record['machine']['cpu']}, "
        f"{record['machine']['date']}). Each job is the README's command, run from the repository root.",
        "",
        "| job | command | wall s | train s | figure | value | saved share | samples backpropagated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in record["jobs"]:
        figures = entry.get("figures") or {}
        metrics = figures.get("trainer_metrics", figures)
        quality, value = headline(entry) if entry["returncode"] == 0 else ("failed", f"exit {entry['returncode']}")
        saved = metrics.get("kakurenbo/saved_share")
        backprop = metrics.get("kakurenbo/samples_backpropagated")
        lines.append(
            f"| {entry['name']} | `{entry['command']}` | {entry['wall_seconds']:.1f} | "
            f"{_fmt(figures.get('train_seconds'), 1)} | {quality} | {value} | {_fmt(saved, 3)} | "
            f"{'-' if backprop is None else int(backprop)} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_examples", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per job, through OMP_NUM_THREADS (default 1; 0: leave the environment's)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="the JSON record (default %(default)s)")
    parser.add_argument("--jobs", nargs="+", choices=JOB_NAMES, default=list(JOB_NAMES),
                        help="jobs to run (default: all, in this order: %(default)s)")
    parser.add_argument("--logs", default=None, help="folder for each job's stdout and stderr (default: none kept)")
    parser.add_argument("--keep-outputs", action="store_true",
                        help="keep the jobs' output folders (printed) instead of deleting them")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    jobs = [job for job in JOBS if job.name in args.jobs]
    record = {"benchmark": "examples", "command": report.command_line("benchmarks.run_examples", argv),
              "machine": report.machine_info(), "threads": args.threads, "output": report.relative_path(args.output)}
    if args.threads > 0:  # the jobs' thread count (OMP_NUM_THREADS), not this parent process's
        record["machine"]["torch_threads"] = args.threads
    workdir = tempfile.mkdtemp(prefix="kakurenbo_examples_")
    try:
        record["jobs"] = [run_job(job, args.threads, workdir, args.logs) for job in jobs]
    finally:
        if args.keep_outputs:
            print(f"[run_examples] outputs kept in {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    record["failures"] = [entry["name"] for entry in record["jobs"] if entry["returncode"] != 0]
    report.publish(args.output, record, markdown(record))
    if record["failures"]:
        print(f"[run_examples] failed: {record['failures']}", file=sys.stderr)
    return record


if __name__ == "__main__":
    main()
