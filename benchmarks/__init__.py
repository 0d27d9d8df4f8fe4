"""Benchmarks of kakurenbo_hf against the plain `transformers.Trainer`.

Each module is a command with its own `--help`; each prints a Markdown table and writes a JSON
record (machine, versions, date, exact command) under `benchmarks/results/` by default:

    python -m benchmarks.leaderboard # every strategy vs the Trainer (full and same compute) on six workloads
    python -m benchmarks.compare     # time-to-accuracy: Trainer vs KakurenboTrainer (vs random hiding)
    python -m benchmarks.overhead    # hiding_fraction=0: wall-time ratio and identical loss history
    python -m benchmarks.overhead --job loading_bound  # a linear model on 1M Arrow rows: time vs visible share
    python -m benchmarks.selection   # one epoch's selection + shuffle for N = 1e5 .. 1e7
    python -m benchmarks.refresh     # refresh cost per sample relative to a training step

Shared pieces, one concern a module: `flags` (training settings and their flags), `builders`
(data and models), `trainers` (method specs, trainers, hiding logs), `timing` (threads, epoch
clocks, quiet-machine checks), `report` (machine, command, JSON records without machine paths),
`formatting` (Markdown tables); the leaderboard's workloads are in `benchmarks.workloads`, their
quality measures (overall and per class or subgroup) in `benchmarks.quality`.
"""
