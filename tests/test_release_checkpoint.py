"""Checkpoints written by the previous release still load, and resume exactly.

`tests/data/release_0_1_0/` holds a mid-epoch checkpoint (step 9, in the first epoch that hides,
random augmentation) written by kakurenbo_hf 0.1.0 and the uninterrupted run's reference
(`write_release_checkpoint.py` says how). This release resumes from it and must end where the
previous release's uninterrupted run ended: same losses after the checkpoint, same hidden counts,
bit-identical final weights (CPU). The reference holds for the transformers release it was written
with (the newest supported, which CI's main run installs); an older Trainer loop logs and steps
differently, so `.ci/run` leaves this file out of its oldest-release run.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
from write_release_checkpoint import CHECKPOINT_STEP, run, summary  # noqa: E402

FIXTURE = DATA / "release_0_1_0"


@pytest.fixture(scope="module")
def reference():
    return json.loads((FIXTURE / "reference.json").read_text())


def test_this_release_runs_as_the_previous_one(tmp_path, reference):
    """The uninterrupted run is unchanged by this release (the reference was written by the previous one)."""
    assert summary(run(str(tmp_path / "out"))) == reference


def test_resume_from_a_previous_release_checkpoint_is_exact(tmp_path, reference):
    out = tmp_path / "out"
    checkpoint = out / f"checkpoint-{CHECKPOINT_STEP}"
    shutil.copytree(FIXTURE / "checkpoint", checkpoint)
    trainer = run(str(out), resume=str(checkpoint))
    resumed = summary(trainer)
    # The log up to the checkpoint comes from its trainer_state.json; what follows was trained here.
    assert [step for step, _ in resumed["losses"]] == list(range(1, reference["global_step"] + 1))
    assert resumed["losses"] == reference["losses"]
    assert resumed["hidden"] == reference["hidden"]
    assert resumed["weights_sha256"] == reference["weights_sha256"]
    plans = trainer.hiding_engine.plans
    assert [plan.epoch for plan in plans] == [0, 1, 2, 3]  # the saved plans of epochs 0-1 were read
