"""End to end under FSDP2 and DeepSpeed ZeRO-2/3: CUDA machines only.

On CPU accelerate silently runs FSDP as DDP and DeepSpeed needs CUDA, so these tests are skipped
there (the reason is printed). On a machine with >= 2 GPUs they launch `tests/mp_worker.py` with
accelerate's FSDP2 / DeepSpeed plugins, train with hiding, refresh an odd number of hidden
samples, checkpoint, resume in a fresh launch, and check that every rank ends with the same
weights and the resumed run matches the uninterrupted one's hidden sets and step count.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from launch import launch_mp_worker
from mp_records import read_records, read_weights

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

NUM_GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0

needs_gpus = pytest.mark.skipif(NUM_GPUS < 2, reason="needs >= 2 CUDA GPUs: on CPU, FSDP silently runs as DDP")
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")

ENGINES = {
    "fsdp2": ["--use_fsdp", "--fsdp_version", "2", "--fsdp_reshard_after_forward", "true",
              "--fsdp_state_dict_type", "SHARDED_STATE_DICT"],
    "zero2": ["--use_deepspeed", "--zero_stage", "2"],
    "zero3": ["--use_deepspeed", "--zero_stage", "3", "--zero3_save_16bit_model", "true"],
}


# tests/mp_worker.py in 2 processes on the GPUs (not the CPU launch), in bf16, under an engine's plugin flags.
ON_GPUS = dict(num_processes=2, cpu=False, mixed_precision="bf16", timeout=1500)


@needs_gpus
@pytest.mark.parametrize("engine", ["fsdp2", pytest.param("zero2", marks=needs_deepspeed),
                                    pytest.param("zero3", marks=needs_deepspeed)])
def test_train_hide_refresh_checkpoint_resume(engine, tmp_path):
    out = str(tmp_path)
    # 151 samples: the hidden counts are odd in some epochs, so refresh shares differ by one sample.
    run = dict(name="full", model="vit", num_samples=151, epochs=4, batch_size=8, hiding_fraction=0.5,
               confidence_threshold=0.3, save_steps=7, use_cpu=False)
    launch_mp_worker(out, [run], distribution=ENGINES[engine], **ON_GPUS)
    full = read_records(out, "full")
    assert any(p["num_hidden"] % 2 for p in full[0]["plans"]), "no odd hidden count: change num_samples"
    for passes in zip(*(r["refresh"] for r in full)):
        assert passes[0]["forwards"] == passes[1]["forwards"]
    weights = read_weights(out, "full")
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    step = [s for s in full[0]["checkpoints"] if s < full[0]["global_step"]][-1]
    launch_mp_worker(out, [dict(run, name="resumed", save_steps=0,
                                resume=os.path.join(out, "full", "output", f"checkpoint-{step}"))],
                     distribution=ENGINES[engine], **ON_GPUS)
    resumed = read_records(out, "resumed")
    for rank in range(2):
        assert resumed[rank]["global_step"] == full[rank]["global_step"]
        for epoch, record in resumed[rank]["epochs"].items():
            assert record["hidden"] == full[rank]["epochs"][epoch]["hidden"]
