"""Every number in the README's results tables is in the JSON record the table cites.

Which tables are checked. A Markdown table is a *results table* when the paragraph just above it
(its caption: the non-blank lines directly above the table, at most one blank line between them
and the table) names one or more records, `benchmarks/results/<name>.json`. Every other table
(arguments, logged keys, ...) is not checked. A results table's figures must all come from the
records it cites.

Which cells. Every cell of every row below the header, except:
  - columns whose header starts with a descriptive word (`DESCRIPTIVE_HEADERS`: workload,
    method, strategy, script, command, what, job, task, ...): they name and describe, they do
    not measure;
  - text in backticks (`--seeds 0 1 2`, `top-1`) and link targets (`[text](target)`);
  - numbers glued to a word (`top-1`, `x10`, `resnet10t`, `F_e`).
A cell holding `PENDING-...` (a figure that a benchmark run has not produced yet) fails the test
with the table's line, its record and the command that will produce it: that is intended.

When a number matches. A number written with d decimals (an optional sign, `-`, `+` or `−`;
thousands separated by commas; a `k` suffix multiplies by 1000) matches a record value v when
|v - x| <= half a unit of its last written digit (so 0.648 matches 0.6481 and 0.6475, not
0.6470). The record values are:
  - every number in the record (any depth);
  - every number written in a string of the record (the table the benchmark rendered itself, in
    its `markdown`; its descriptions and command);
  - the mean of every list of two or more numbers (per-seed values: a table's mean ± std).
A number followed by `%` also matches 100 v (a share written as a percentage) and 100 (1 - v)
(a time ratio written as the share saved).

Also checked: every `benchmarks/results/<file>` that README.md or docs/*.md cite exists, and the
checker itself (a synthetic README and record that disagree must fail).
"""

from __future__ import annotations

import bisect
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

RECORD = re.compile(r"benchmarks/results/[\w.\-]+\.json")
CITED_FILE = re.compile(r"benchmarks/results/[\w.\-]+\.(?:json|md|png)")
DESCRIPTIVE_HEADERS = ("workload", "method", "strategy", "script", "command", "what", "job", "task", "argument",
                       "reads", "rule", "note", "trainer", "kind", "variant")
# A number not glued to a word on its left (top-1, x10, F_e) and not inside another number.
NUMBER = re.compile(r"(?<![\w.])(?<![A-Za-z]-)(?P<sign>[-+\u2212]?)(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<frac>\.\d+)?"
                    r"(?P<k>k\b)?(?P<pct>\s*%)?")
PENDING = re.compile(r"PENDING-[A-Z\-]+")
PRODUCERS = {  # the command that (re)writes a record, for the failure message
    "benchmarks/results/examples.json": "python -m benchmarks.run_examples --threads 1",
    "benchmarks/results/leaderboard.json": "python -m benchmarks.leaderboard (its command is in the record)",
}


@dataclass
class Table:
    line: int  # 1-based line of the header
    caption: str
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Number:
    value: float
    tolerance: float
    percent: bool
    text: str


def split_row(line: str) -> list[str]:
    cells = line.strip().strip("|").split("|")
    return [cell.strip() for cell in cells]


def tables(text: str) -> list[Table]:
    """The Markdown tables of `text`, each with its caption (the paragraph just above it)."""
    lines = text.splitlines()
    found, i = [], 0
    while i < len(lines):
        if lines[i].lstrip().startswith("|") and i + 1 < len(lines) and re.match(r"^\s*\|[\s:|\-]+\|\s*$", lines[i + 1]):
            start = i
            header = split_row(lines[i])
            i += 2
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(split_row(lines[i]))
                i += 1
            j = start - 1
            if j >= 0 and not lines[j].strip():
                j -= 1
            caption = []
            while j >= 0 and lines[j].strip() and not lines[j].lstrip().startswith("|"):
                caption.insert(0, lines[j])
                j -= 1
            found.append(Table(start + 1, "\n".join(caption), header, rows))
        else:
            i += 1
    return found


def numbers(cell: str) -> list[Number]:
    """The figures written in a cell (backticks, link targets and glued numbers left out)."""
    cell = re.sub(r"`[^`]*`", " ", cell)
    cell = re.sub(r"\]\([^)]*\)", "]", cell)
    found = []
    for match in NUMBER.finditer(cell):
        digits = match.group("int").replace(",", "") + (match.group("frac") or "")
        decimals = len(match.group("frac") or ".") - 1
        scale = 1000.0 if match.group("k") else 1.0
        value = float(digits) * scale * (-1.0 if match.group("sign") in ("-", "\u2212") else 1.0)
        tolerance = 0.5 * 10.0 ** (-decimals) * scale + 1e-9 * max(1.0, abs(value))
        found.append(Number(value, tolerance, bool(match.group("pct")), match.group(0).strip()))
    return found


class RecordValues:
    """Every value a figure may be read from in a set of records (see the module docstring)."""

    def __init__(self, records: list):
        values: list[float] = []

        def walk(item):
            if isinstance(item, bool):
                values.append(float(item))
            elif isinstance(item, (int, float)):
                if math.isfinite(item):
                    values.append(float(item))
            elif isinstance(item, str):
                values.extend(number.value for number in numbers(item))
            elif isinstance(item, dict):
                for value in item.values():
                    walk(value)
            elif isinstance(item, list):
                plain = [x for x in item if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)]
                if len(plain) >= 2 and len(plain) == len(item):
                    values.append(sum(plain) / len(plain))
                for value in item:
                    walk(value)

        for record in records:
            walk(record)
        self.plain = sorted(values)
        self.percent = sorted(set(self.plain + [100.0 * v for v in values] + [100.0 * (1.0 - v) for v in values]))

    def has(self, number: Number) -> bool:
        pool = self.percent if number.percent else self.plain
        i = bisect.bisect_left(pool, number.value - number.tolerance)
        return i < len(pool) and pool[i] <= number.value + number.tolerance


def descriptive(header: str) -> bool:
    words = re.findall(r"[a-z]+", header.lower())
    return bool(words) and words[0] in DESCRIPTIVE_HEADERS


def check(text: str, root: Path) -> tuple[list[str], list[str], int]:
    """(mismatches and missing records, PENDING cells, number of results tables) of a README's text."""
    problems, pending, checked = [], [], 0
    for table in tables(text):
        cited = sorted(set(RECORD.findall(table.caption)))
        if not cited:
            continue
        checked += 1
        missing = [name for name in cited if not (root / name).is_file()]
        where = f"README line {table.line} (cites {', '.join(cited)})"
        if missing:
            problems.append(f"{where}: record {', '.join(missing)} does not exist; produce it with "
                            f"{' / '.join(PRODUCERS.get(name, 'its benchmark') for name in missing)}")
            records = [json.loads((root / name).read_text()) for name in cited if name not in missing]
        else:
            records = [json.loads((root / name).read_text()) for name in cited]
        values = RecordValues(records)
        for row in table.rows:
            for column, cell in enumerate(row):
                header = table.header[column] if column < len(table.header) else ""
                marks = PENDING.findall(cell)
                if marks:
                    pending.append(f"{where}, row '{row[0]}', column '{header}': {', '.join(marks)}")
                    continue
                if descriptive(header) or missing:
                    continue
                for number in numbers(cell):
                    if not values.has(number):
                        problems.append(f"{where}, row '{row[0]}', column '{header}': {number.text} is not in the "
                                        "record (after the table's rounding)")
    return problems, pending, checked


def test_readme_results_tables_match_their_records():
    problems, pending, checked = check(README.read_text(), ROOT)
    assert checked >= 2, "the README should hold its results tables (headline, examples, strategies), each citing its record"
    message = []
    if problems:
        message.append("README figures that disagree with their records:\n  " + "\n  ".join(problems))
    if pending:
        commands = sorted({command for name, command in PRODUCERS.items() if any(name in p for p in pending)})
        message.append(f"{len(pending)} README cells are still PENDING (fill them from the record once "
                       f"{' and '.join(commands) or 'its benchmark'} has run):\n  " + "\n  ".join(pending))
    assert not message, "\n\n".join(message)


def cited_files() -> dict[str, list[str]]:
    cited: dict[str, list[str]] = {}
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        for name in CITED_FILE.findall(page.read_text()):
            cited.setdefault(name, []).append(str(page.relative_to(ROOT)))
    return cited


def test_every_cited_record_exists():
    cited = cited_files()
    assert "benchmarks/results/leaderboard.json" in cited
    missing = {name: sorted(set(pages)) for name, pages in cited.items() if not (ROOT / name).is_file()}
    assert not missing, "cited but missing: " + "; ".join(
        f"{name} (cited in {', '.join(pages)}; produce it with {PRODUCERS.get(name, 'its benchmark')})"
        for name, pages in missing.items())


# --- the checker itself --------------------------------------------------------------------------

SYNTHETIC_RECORD = {
    "command": "python -m benchmarks.toy --seeds 0 1 2",
    "summary": {"toy": {"time_ratio": [0.60, 0.62, 0.64], "final_accuracy": [0.981, 0.99, 0.985],
                        "samples": 18000}},
    "markdown": "| method | Δ top-1 (pt) |\n|---|---|\n| kakurenbo | -0.20 ± 0.35 |",
}


def synthetic_readme(cells: str, record: str = "benchmarks/results/toy.json") -> str:
    return "\n".join([
        "# toy", "", "Unchecked: no record named.", "", "| argument | default |", "|---|---|", "| F | 0.77 |", "",
        f"Measured (`python -m benchmarks.toy --seeds 0 1 2`, record `{record}`):", "",
        "| workload | time ratio | top-1 | Δ top-1 (pt) | saved | samples |", "|---|---|---|---|---|---|",
        cells, "",
    ])


@pytest.fixture
def toy_root(tmp_path):
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "toy.json").write_text(json.dumps(SYNTHETIC_RECORD))
    return tmp_path


def test_checker_accepts_a_table_that_agrees_with_its_record(toy_root):
    # 0.620: the mean of the per-seed ratios; 38%: 1 - 0.62 as the share saved; 0.985: a per-seed value
    # (and the mean, 0.9853, rounded); -0.20 ± 0.35: the record's own table; 18.0k: 18000.
    text = synthetic_readme("| toy (10 classes, `--epochs 12`) | 0.620 | 0.985 | -0.20 ± 0.35 | 38% | 18.0k |")
    problems, pending, checked = check(text, toy_root)
    assert (problems, pending, checked) == ([], [], 1)


def test_checker_fails_when_table_and_record_drift_apart(toy_root):
    text = synthetic_readme("| toy | 0.648 | 0.985 | -0.25 | 30% | 18.0k |")
    problems, pending, _ = check(text, toy_root)
    assert len(problems) == 3 and not pending
    assert any("0.648" in p for p in problems) and any("-0.25" in p for p in problems)
    assert any("30%" in p for p in problems)
    assert all("README line" in p and "toy.json" in p for p in problems)


def test_checker_respects_the_tables_rounding(toy_root):
    # 0.62 written with 2 decimals covers [0.615, 0.625]; with 3 decimals 0.621 does not match 0.620.
    assert check(synthetic_readme("| toy | 0.62 | 0.99 | -0.2 | 38% | 18k |"), toy_root)[0] == []
    assert len(check(synthetic_readme("| toy | 0.621 | 0.99 | -0.2 | 38% | 18k |"), toy_root)[0]) == 1


def test_checker_reports_pending_cells_and_missing_records(toy_root):
    problems, pending, _ = check(synthetic_readme("| toy | 0.620 | PENDING-SAME-COMPUTE | -0.20 | 38% | 18k |"), toy_root)
    assert problems == [] and len(pending) == 1 and "PENDING-SAME-COMPUTE" in pending[0]
    problems, _, _ = check(synthetic_readme("| toy | 0.620 | 0.985 | -0.20 | 38% | 18k |",
                                            record="benchmarks/results/absent.json"), toy_root)
    assert len(problems) == 1 and "absent.json" in problems[0] and "does not exist" in problems[0]


def test_number_parsing():
    assert [n.value for n in numbers("top-1 0.85, x10, resnet10t, `--seeds 0 1 2`, 1,200 and −0.40 / +0.06")] == \
        [0.85, 1200.0, -0.40, 0.06]
    assert [n.value for n in numbers("0.770–0.941 and 0.735-0.917")] == [0.770, 0.941, 0.735, 0.917]
    (pct,) = numbers("38 %")
    assert pct.percent and pct.value == 38.0 and pct.tolerance == pytest.approx(0.5)
    (k,) = numbers("18.0k")
    assert k.value == 18000.0 and k.tolerance == pytest.approx(50.0, rel=1e-6)
