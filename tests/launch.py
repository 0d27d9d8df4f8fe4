"""The one launcher of the multi-process tests: `accelerate launch` on CPU (gloo), a free port per call.

    from launch import launch, launch_mp_worker

    launch(LM_WORKER, "--out", out, "--name", "full")        # 2 processes: DDP over gloo, on CPU
    launch("benchmarks.sync", "--cpu", module=True, cwd=ROOT) # `-m benchmarks.sync` under the launcher
    launch_mp_worker(out, [run, ...], num_processes=1)        # tests/mp_worker.py in plain `python`

Every test that starts processes goes through `launch`: one place for the command line, the
environment (no GPU, one thread per process, offline) and the failure report (the command, the exit
status and the tails of stdout and stderr, raised as `LaunchError`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MP_WORKER = os.path.join(HERE, "mp_worker.py")

DEFAULT_TIMEOUT = 600  # seconds, per launch

# The environment of a launch on CPU: accelerate and torch see no GPU, each process uses one thread
# (the processes share a few cores), and nothing goes to the network.
CPU_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "ACCELERATE_USE_CPU": "1",
    "CUDA_VISIBLE_DEVICES": "",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

# A port found free can be taken by another program before the launched processes bind it: a launch
# whose rendezvous failed that way is run again on another port (only when the caller chose no port).
_PORT_ATTEMPTS = 3
_PORT_IN_USE = ("address already in use", "eaddrinuse")

_handed_out: set[int] = set()
_lock = threading.Lock()


class LaunchError(AssertionError):
    """A launch that exited non-zero or ran past its timeout. The message holds the command, the exit
    status and the tails of stdout and stderr; `result` is the `CompletedProcess` (None on a timeout)."""

    def __init__(self, message: str, result: subprocess.CompletedProcess | None = None):
        super().__init__(message)
        self.result = result


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now and never handed out before by this process."""
    with _lock:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port


def _text(output) -> str:
    if output is None:
        return ""
    return output.decode(errors="replace") if isinstance(output, bytes) else output


def _report(what: str, command: list[str], stdout, stderr) -> str:
    return (f"{what}\ncommand: {' '.join(command)}\n"
            f"--- stdout (tail) ---\n{_text(stdout)[-4000:]}\n--- stderr (tail) ---\n{_text(stderr)[-8000:]}")


def launch(script: str, *args: str, num_processes: int = 2, port: int | None = None,
           env: Mapping[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT, cpu: bool = True,
           distribution: Sequence[str] = ("--multi_gpu",), mixed_precision: str = "no", module: bool = False,
           cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run `script args...` in `num_processes` processes and return the finished process (text output).

    num_processes > 1: `python -m accelerate.commands.launch --multi_gpu --num_processes N
    --num_machines 1 --mixed_precision no --dynamo_backend no --main_process_port PORT script args...`;
    num_processes == 1: plain `python script args...` (no launcher, no process group).

    port: the rendezvous port; by default a free one, another for every call (and, if the processes
      still find it taken, the launch is run again on a new one, up to 3 times).
    env: variables set on top of `os.environ` and, with `cpu`, of `CPU_ENV`.
    timeout: seconds before the processes are killed and `LaunchError` raised.
    cpu: run on CPU (`CPU_ENV`: gloo, one thread per process). False: the machine's GPUs.
    distribution: how accelerate distributes: `--multi_gpu` (DDP, also on CPU) or an engine's plugin
      flags (`--use_fsdp ...`, `--use_deepspeed ...`).
    mixed_precision: accelerate's `--mixed_precision` ("no", "bf16", ...).
    module: `script` is a module name, run as `-m script` (e.g. "benchmarks.sync").
    cwd: the working directory of the processes.

    Raises `LaunchError` (an AssertionError) with the command and the output tails when the launch
    exits non-zero or times out.
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    environment = dict(os.environ)
    if cpu:
        environment.update(CPU_ENV)
    environment.update(env or {})
    target = ["-m", script] if module else [script]
    attempts = 1 if port is not None or num_processes == 1 else _PORT_ATTEMPTS
    for attempt in range(attempts):
        if num_processes == 1:
            command = [sys.executable, *target, *args]
        else:
            command = [sys.executable, "-m", "accelerate.commands.launch", *distribution,
                       "--num_processes", str(num_processes), "--num_machines", "1",
                       "--mixed_precision", mixed_precision, "--dynamo_backend", "no",
                       "--main_process_port", str(port if port is not None else free_port()), *target, *args]
        command = [str(part) for part in command]
        try:
            result = subprocess.run(command, env=environment, cwd=cwd, capture_output=True, text=True,
                                    timeout=timeout)
        except subprocess.TimeoutExpired as expired:
            raise LaunchError(_report(f"launch timed out after {timeout} s", command, expired.stdout,
                                      expired.stderr)) from None
        if result.returncode == 0:
            return result
        output = (result.stdout + result.stderr).lower()
        if attempt + 1 < attempts and any(sign in output for sign in _PORT_IN_USE):
            continue  # the port was taken between free_port() and the rendezvous: another one
        break
    raise LaunchError(_report(f"launch failed ({result.returncode})", command, result.stdout, result.stderr),
                      result)


def launch_mp_worker(out: str, runs: list[dict], num_processes: int = 2, **options) -> subprocess.CompletedProcess:
    """`tests/mp_worker.py --out OUT --runs JSON` through `launch` (its keyword options pass on).

    Each run is a dict of the worker's run options (see `mp_worker.py`); the worker writes its records
    under OUT/<run name>/ (read them with `mp_records`)."""
    return launch(MP_WORKER, "--out", str(out), "--runs", json.dumps(runs), num_processes=num_processes, **options)
