"""Checkpoints written by the previous release still load, and resume exactly.

`tests/data/release_0_1_0/` holds a mid-epoch checkpoint (step 9, in the first epoch that hides,
random augmentation) written by kakurenbo_hf 0.1.0 and the uninterrupted run's reference
(`write_release_checkpoint.py` says how). This release resumes from it and must end where the
previous release's uninterrupted run ended: same losses after the checkpoint, same hidden counts,
bit-identical final weights (CPU). Those numbers hold for the torch and transformers it was written
with (`reference.json`: versions); on another stack only the structural test runs (the others
say why they are skipped), and `.ci/run` leaves this file out of its oldest-release run.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
from write_release_checkpoint import CHECKPOINT_STEP, run, summary, versions  # noqa: E402

FIXTURE = DATA / "release_0_1_0"
REFERENCE = json.loads((FIXTURE / "reference.json").read_text())
SAME_STACK = versions() == REFERENCE["versions"]
exact = pytest.mark.skipif(not SAME_STACK, reason=f"the reference's numerics hold for {REFERENCE['versions']}, "
                                                  f"this environment has {versions()}")


def test_the_fixture_was_written_by_the_previous_release():
    import kakurenbo_hf

    assert REFERENCE["written_by"] == "0.1.0" != kakurenbo_hf.__version__


@pytest.fixture(scope="module")
def reference():
    return {key: value for key, value in REFERENCE.items() if key not in ("versions", "written_by")}


@pytest.fixture(scope="module")
def resumed_trainer(tmp_path_factory):
    out = tmp_path_factory.mktemp("release_checkpoint") / "out"
    checkpoint = out / f"checkpoint-{CHECKPOINT_STEP}"
    shutil.copytree(FIXTURE / "checkpoint", checkpoint)
    return run(str(out), resume=str(checkpoint))


def test_a_previous_release_checkpoint_resumes_in_its_epoch_with_its_plans(resumed_trainer, reference):
    """Any stack: the 0.1.0 hiding state loads; the run continues in epoch 1 and ends at the same step."""
    assert resumed_trainer.state.global_step == reference["global_step"]
    assert [plan.epoch for plan in resumed_trainer.hiding_engine.plans] == [0, 1, 2, 3]
    assert resumed_trainer.hiding_engine.plans[1].num_hidden == dict(reference["hidden"])[5]  # read, not replanned


@exact
def test_this_release_runs_as_the_previous_one(tmp_path, reference):
    """The uninterrupted run is unchanged by this release (the reference was written by the previous one)."""
    assert summary(run(str(tmp_path / "out"))) == reference


@exact
def test_resume_from_a_previous_release_checkpoint_is_exact(resumed_trainer, reference):
    trainer = resumed_trainer
    resumed = summary(trainer)
    # The log up to the checkpoint comes from its trainer_state.json; what follows was trained here.
    assert [step for step, _ in resumed["losses"]] == list(range(1, reference["global_step"] + 1))
    assert resumed["losses"] == reference["losses"]
    assert resumed["hidden"] == reference["hidden"]
    assert resumed["weights_sha256"] == reference["weights_sha256"]


def test_a_previous_release_checkpoint_reports_its_last_hidden_set():
    """0.1.0 kept only the current epoch's hidden set: the report has that one, and says so for the others."""
    from kakurenbo_hf import HidingReport

    report = HidingReport.from_checkpoint(str(FIXTURE / "checkpoint"))
    rows = report.epochs()
    assert [row["hidden_set_recorded"] for row in rows] == [False, True]
    assert len(report.hidden_indices(1)) == rows[1]["num_hidden"] > 0
    with pytest.raises(ValueError, match="not recorded"):
        report.hidden_indices(0)
    assert report.samples()["epochs_hidden"].sum() == rows[1]["num_hidden"]
