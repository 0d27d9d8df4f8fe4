"""Memory and time of the causal-LM per-sample statistics, against the model's own loss and a training step.

A language model's logits (batch x sequence x vocabulary) are the largest tensor of a training
step. For each vocabulary size and logits dtype this measures, on logits of (batch, sequence,
vocab) with 10% of the labels ignored:

- `stats`: `CausalLMStatistics` (chunked, float32 per chunk, no_grad): extra peak memory above
  what was allocated before the call, and wall time (median of `--repeats`);
- `naive`: the direct computation (`log_softmax(logits.float())`, gather, max): what chunking avoids;
- `loss`: the model's own loss as transformers computes it (`ForCausalLMLoss`: logits.float(),
  shift, cross-entropy), forward + backward: the reference the statistics ride on;
- `step`: one full training step (forward, loss, backward, AdamW) of a small GPT-2 built from a
  config (`--lm-hidden`, `--lm-layers`, `--lm-heads`) at this vocabulary and sequence length, and
  the statistics' time as a fraction of it.

Goals (issue 10): stats extra peak <= 10% of the logits tensor; stats time <= 5% of a training step.

Memory: on CUDA `torch.cuda.max_memory_allocated`; on CPU the process's peak resident set
(`VmHWM`, reset through /proc/self/clear_refs), with glibc told to return every block above 64 KiB
to the system when freed (the script re-executes itself with `MALLOC_MMAP_THRESHOLD_=65536`), so
freed tensors leave the resident set and the peak is the tensors' own.

    python -m benchmarks.stats_memory                          # vocab 32k and 128k, sequence 2048, CPU
    python -m benchmarks.stats_memory --device cuda --dtypes bfloat16 --batch 4
    python -m benchmarks.stats_memory --no-step                # statistics and loss only (fast)
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

from . import formatting, report, timing

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
GOAL_MEMORY_FRACTION = 0.10
GOAL_STEP_FRACTION = 0.05


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stats_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", nargs="+", type=int, default=[32000, 128000])
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--no-step", action="store_true", help="skip the training-step measurement")
    parser.add_argument("--lm-hidden", type=int, default=512)
    parser.add_argument("--lm-layers", type=int, default=4)
    parser.add_argument("--lm-heads", type=int, default=8)
    parser.add_argument("--step-repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help=timing.THREADS_HELP)
    parser.add_argument("--output", default=os.path.join(report.RESULTS_DIR, "stats_memory.json"))
    return parser


# --- memory probes --------------------------------------------------------------------------------


class CpuPeak:
    """Peak resident memory above the level at `start()` (bytes), from /proc/self/status."""

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"{key} not in /proc/self/status")

    def start(self) -> None:
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        self.base = self._status("VmRSS")

    def peak(self) -> int:
        return max(0, self._status("VmHWM") - self.base)


class CudaPeak:
    def __init__(self, device):
        self.device = device

    def start(self) -> None:
        import torch

        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self.base = torch.cuda.memory_allocated(self.device)

    def peak(self) -> int:
        import torch

        torch.cuda.synchronize(self.device)
        return max(0, torch.cuda.max_memory_allocated(self.device) - self.base)


def measure(fn, probe, repeats: int, sync) -> tuple[int, float]:
    """(peak extra bytes of one call, median seconds over `repeats` calls)."""
    fn()  # warm-up (allocator, kernels)
    sync()
    probe.start()
    result = fn()
    sync()
    peak = probe.peak()
    del result
    times = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - started)
        del result
    return peak, statistics.median(times)


# --- workloads ------------------------------------------------------------------------------------


def naive_statistics(logits, labels):
    import torch

    with torch.no_grad():
        log_probs = torch.log_softmax(logits.float()[:, :-1], -1)
        targets = labels[:, 1:]
        valid = targets != -100
        nll = -log_probs.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        hit = log_probs.argmax(-1) == targets
        count = valid.sum(1).clamp(min=1)
        return ((nll * valid).sum(1) / count, (torch.exp(-nll) * valid).sum(1) / count, (hit & valid).sum(1))


def model_loss(logits, labels):
    """transformers' ForCausalLMLoss, forward and backward through the logits."""
    import torch

    leaf = logits.detach().requires_grad_()
    upcast = leaf.float()
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:].contiguous()
    loss = torch.nn.functional.cross_entropy(upcast.view(-1, upcast.shape[-1]), shifted.view(-1), ignore_index=-100)
    loss.backward()
    return loss.detach()


def lm_step_seconds(vocab, args, device, sync) -> float:
    """Median seconds of one training step (forward, loss, backward, AdamW step) of a small GPT-2."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_positions=args.seq, n_embd=args.lm_hidden, n_layer=args.lm_layers,
                        n_head=args.lm_heads)
    model = GPT2LMHeadModel(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    input_ids = torch.randint(0, vocab, (args.batch, args.seq), device=device)

    def step():
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    times = []
    for _ in range(args.step_repeats):
        sync()
        started = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - started)
    parameters = sum(p.numel() for p in model.parameters())
    del model, optimizer
    gc.collect()
    return statistics.median(times), parameters


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = timing.set_threads(args.threads)
    from kakurenbo_hf.tasks import CausalLMStatistics
    from kakurenbo_hf.tasks.kernels import chunk_bytes_for

    probe = CudaPeak(device) if device.type == "cuda" else CpuPeak()
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    statistics_fn = CausalLMStatistics()
    rows, records = [], []
    for vocab in args.vocab:
        step_seconds, parameters = (None, None) if args.no_step else lm_step_seconds(vocab, args, device, sync)
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            generator = torch.Generator(device="cpu").manual_seed(0)
            logits = torch.randn(args.batch, args.seq, vocab, generator=generator).to(device=device, dtype=dtype)
            labels = torch.randint(0, vocab, (args.batch, args.seq), generator=generator)
            labels[torch.rand(labels.shape, generator=generator) < 0.1] = -100
            labels = labels.to(device)
            logits_bytes = logits.numel() * logits.element_size()
            stats_peak, stats_seconds = measure(lambda: statistics_fn({"logits": logits}, labels), probe,
                                                args.repeats, sync)
            naive_peak, naive_seconds = measure(lambda: naive_statistics(logits, labels), probe, args.repeats, sync)
            loss_peak, loss_seconds = measure(lambda: model_loss(logits, labels), probe, args.repeats, sync)
            record = {
                "vocab": vocab, "seq": args.seq, "batch": args.batch, "dtype": dtype_name,
                "logits_bytes": logits_bytes, "chunk_bytes": chunk_bytes_for(logits),
                "stats_peak_bytes": stats_peak, "stats_seconds": stats_seconds,
                "naive_peak_bytes": naive_peak, "naive_seconds": naive_seconds,
                "loss_peak_bytes": loss_peak, "loss_seconds": loss_seconds,
                "step_seconds": step_seconds, "lm_parameters": parameters,
            }
            records.append(record)
            mib = lambda b: b / 2 ** 20  # noqa: E731
            rows.append([
                f"{vocab // 1000}k", dtype_name, f"{mib(logits_bytes):.0f}",
                f"{mib(stats_peak):.1f} ({stats_peak / logits_bytes:.1%})",
                f"{mib(naive_peak):.0f} ({naive_peak / logits_bytes:.0%})",
                f"{mib(loss_peak):.0f} ({loss_peak / logits_bytes:.0%})",
                f"{1000 * stats_seconds:.0f}", f"{1000 * loss_seconds:.0f}", f"{stats_seconds / loss_seconds:.2f}",
                "-" if step_seconds is None else f"{step_seconds:.2f}",
                "-" if step_seconds is None else f"{stats_seconds / step_seconds:.1%}",
            ])
            del logits, labels
            gc.collect()
    headers = ["vocab", "logits dtype", "logits MiB", "stats extra peak MiB (of logits)",
               "naive extra peak MiB", "loss fwd+bwd extra peak MiB", "stats ms", "loss fwd+bwd ms",
               "stats / loss time", "LM step s", "stats / step time"]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else report.machine_info()["cpu"]
    lm = "" if args.no_step else (f"; LM step: GPT-2 hidden {args.lm_hidden}, {args.lm_layers} layers, "
                                  f"{args.lm_heads} heads, float32, AdamW")
    markdown = (f"`{report.command_line('benchmarks.stats_memory', argv)}` on {device_name} ({threads} torch "
                f"thread(s) on CPU), batch {args.batch}, sequence {args.seq}{lm}; goals: stats extra peak <= "
                f"{GOAL_MEMORY_FRACTION:.0%} of the logits, stats <= {GOAL_STEP_FRACTION:.0%} of a step\n\n"
                + formatting.markdown_table(headers, rows))
    record = {"command": report.command_line("benchmarks.stats_memory", argv), "machine": report.machine_info(),
              "device": str(device), "results": records}
    return report.publish(args.output, record, markdown)


def _reexec_with_malloc_settings() -> None:
    """On Linux, run again with glibc returning freed blocks > 64 KiB (CPU peaks = tensors' own)."""
    if sys.platform.startswith("linux") and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.stats_memory", *sys.argv[1:]],
                  dict(os.environ, **MALLOC_ENV))


if __name__ == "__main__":
    _reexec_with_malloc_settings()
    main()
