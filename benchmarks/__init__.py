"""Benchmarks of kakurenbo_hf against the plain `transformers.Trainer`.

Each module is a command with its own `--help`; each prints a Markdown table and writes a JSON
record (machine, versions, date, exact command) under `benchmarks/results/` by default:

    python -m benchmarks.leaderboard # every strategy and the Trainer on four workloads, ranked
    python -m benchmarks.compare     # time-to-accuracy: Trainer vs KakurenboTrainer (vs random hiding)
    python -m benchmarks.overhead    # hiding_fraction=0: wall-time ratio and identical loss history
    python -m benchmarks.selection   # one epoch's selection + shuffle for N = 1e5 .. 1e7
    python -m benchmarks.refresh     # refresh cost per sample relative to a training step

Shared pieces (data, models, machine description, output) live in `benchmarks.common`; the
leaderboard's workloads in `benchmarks.workloads`.
"""
