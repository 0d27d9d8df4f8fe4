"""`HidingReport`: what a run hid, epoch by epoch and sample by sample, after training or from a checkpoint.

    report = trainer.hiding_report()                        # after train() (every rank, multi-process)
    report = HidingReport.from_checkpoint("out/checkpoint-500")   # no model, no Trainer
    report.hidden_indices(epoch=3)                          # int64 array of the samples epoch 3 left out
    report.epochs()                                         # one dict per epoch: hidden, target, LR factor, ...
    table = report.samples()                                # per sample: loss, confidence, correct,
                                                            #   epochs_hidden, longest_hidden_streak
    report.to_pandas(); report.to_dataset(train_dataset)    # merged with the user's columns by index
    report.plot("hiding_report.png")                         # hidden share per epoch, loss histograms

The statistics are the table's latest values (the last training read or refresh of each sample);
`correct` and `confidence` are the task's (see `kakurenbo_hf.tasks`). Each epoch's hidden set is
kept as a packed bitmask (N/8 bytes per epoch, checkpointed); a checkpoint of a release before
0.2.0 holds only its last epoch's set, so earlier epochs are reported as not recorded. Pure numpy;
pandas, datasets and matplotlib are imported only by the exports that need them.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from .bitmask import unpack
from .engine import EpochPlan, history_from_state


class HidingReport:
    """The hidden sets and per-sample statistics of one run.

    Args:
        num_samples: N, the training set's size.
        plans: the run's `EpochPlan`s, one per epoch planned so far.
        hidden_history: one packed bitmask (N/8 bytes) per plan, None where not recorded.
        stats: the table's columns (`loss`, `confidence`, `correct`, each of N values), or None.
    """

    def __init__(self, num_samples: int, plans: list[EpochPlan], hidden_history: list[np.ndarray | None],
                 stats: dict[str, np.ndarray] | None):
        if len(hidden_history) != len(plans):
            raise ValueError(f"{len(hidden_history)} hidden sets for {len(plans)} epoch plans")
        self.num_samples = int(num_samples)
        self.plans = list(plans)
        self.hidden_history = list(hidden_history)
        self.stats = stats

    # --- building it --------------------------------------------------------------------------------

    @classmethod
    def from_state(cls, state: dict) -> HidingReport:
        """From a `HidingEngine.state_dict()` (or a checkpoint's hiding state) holding the whole table."""
        num_samples = int(state["num_samples"])
        plans = [EpochPlan(**plan) for plan in state.get("plans") or []]
        return cls(num_samples, plans, history_from_state(state, len(plans)), state.get("stats") or None)

    @classmethod
    def from_checkpoint(cls, folder: str) -> HidingReport:
        """From a checkpoint folder written by `KakurenboTrainer` (one process or many, table whole or
        sharded); needs no model. Raises `ValueError` if the folder holds no hiding state."""
        from ..distributed.checkpoint import HIDING_STATE_NAME, load_hiding_state

        state = load_hiding_state(folder, with_stats=True)
        if state is None:
            raise ValueError(f"{folder} has no {HIDING_STATE_NAME}: it was not written by a KakurenboTrainer")
        return cls.from_state(state)

    # --- epochs -------------------------------------------------------------------------------------

    def _plan_index(self, epoch: int) -> int:
        for position, plan in enumerate(self.plans):
            if plan.epoch == epoch:
                return position
        raise ValueError(f"epoch {epoch} was not planned; planned epochs: {[p.epoch for p in self.plans]}")

    def hidden_mask(self, epoch: int) -> np.ndarray:
        """Bool mask over the N samples: True where `epoch` left the sample out."""
        bits = self.hidden_history[self._plan_index(epoch)]
        if bits is None:
            raise ValueError(f"epoch {epoch}'s hidden set was not recorded (a checkpoint of a release before 0.2.0 "
                             "keeps only its last epoch's set)")
        return unpack(bits, self.num_samples)

    def hidden_indices(self, epoch: int) -> np.ndarray:
        """The indices (int64, ascending) of the samples `epoch` left out."""
        return np.flatnonzero(self.hidden_mask(epoch)).astype(np.int64)

    def epochs(self) -> list[dict]:
        """One dict per planned epoch: the numbers logged as `kakurenbo/...` and whether its set is recorded."""
        rows = []
        for plan, bits in zip(self.plans, self.hidden_history):
            row = asdict(plan)
            row["hidden_fraction"] = plan.hidden_fraction
            row["num_trained"] = plan.num_trained
            row["hidden_set_recorded"] = bits is not None
            rows.append(row)
        return rows

    # --- samples ------------------------------------------------------------------------------------

    def _recorded_masks(self):
        return [unpack(bits, self.num_samples) for bits in self.hidden_history if bits is not None]

    def epochs_hidden(self) -> np.ndarray:
        """Per sample: in how many recorded epochs it was hidden (int32)."""
        counts = np.zeros(self.num_samples, dtype=np.int32)
        for mask in self._recorded_masks():
            counts += mask
        return counts

    def longest_hidden_streak(self) -> np.ndarray:
        """Per sample: the most consecutive recorded epochs it was hidden in (int32)."""
        current = np.zeros(self.num_samples, dtype=np.int32)
        longest = np.zeros(self.num_samples, dtype=np.int32)
        for mask in self._recorded_masks():
            current = np.where(mask, current + 1, 0).astype(np.int32)
            np.maximum(longest, current, out=longest)
        return longest

    def samples(self) -> dict[str, np.ndarray]:
        """Per-sample columns, N rows each: `index`, `loss`, `confidence`, `correct` (the table's latest
        values; +inf / 0 / False for a sample never seen), `epochs_hidden`, `longest_hidden_streak`,
        and `hidden_last_epoch` (hidden in the last planned epoch)."""
        columns = {"index": np.arange(self.num_samples, dtype=np.int64)}
        if self.stats is not None:
            columns.update(loss=np.asarray(self.stats["loss"], dtype=np.float32),
                           confidence=np.asarray(self.stats["confidence"], dtype=np.float32),
                           correct=np.asarray(self.stats["correct"], dtype=bool))
        columns["epochs_hidden"] = self.epochs_hidden()
        columns["longest_hidden_streak"] = self.longest_hidden_streak()
        last = self.hidden_history[-1] if self.hidden_history else None
        columns["hidden_last_epoch"] = (unpack(last, self.num_samples).copy() if last is not None
                                        else np.zeros(self.num_samples, dtype=bool))
        return columns

    def plot(self, path: str) -> str:
        """Save the report's picture (hidden share per epoch; loss of hidden vs visible samples) at `path`
        (needs matplotlib: `pip install 'kakurenbo_hf[plots]'`). Returns `path`."""
        return plot_report(self, path)

    def to_pandas(self):
        """`samples()` as a pandas DataFrame indexed by sample index."""
        import pandas as pd

        return pd.DataFrame(self.samples()).set_index("index", drop=False)

    def to_dataset(self, train_dataset=None):
        """`samples()` as a `datasets.Dataset`; with `train_dataset` (the training set, a `datasets.Dataset`
        of N rows) its columns come first, row i beside sample i's statistics."""
        import datasets

        report = datasets.Dataset.from_dict({name: values for name, values in self.samples().items()})
        if train_dataset is None:
            return report
        if len(train_dataset) != self.num_samples:
            raise ValueError(f"the report covers {self.num_samples} samples, the dataset has {len(train_dataset)}")
        clashes = sorted(set(report.column_names) & set(train_dataset.column_names))
        if clashes:
            report = report.rename_columns({name: f"kakurenbo_{name}" for name in clashes})
        return datasets.concatenate_datasets([train_dataset, report], axis=1)


PLOT_FILE_NAME = "hiding_report.png"


def require_matplotlib():
    """matplotlib's pyplot on the Agg backend, or an ImportError that names the extra to install."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("the hiding report's picture needs matplotlib: pip install 'kakurenbo_hf[plots]' "
                          "(or pip install matplotlib), or leave save_hiding_plot off") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_report(report: HidingReport, path: str, bins: int = 40) -> str:
    """Save a two-panel picture of `report` at `path`: the hidden share of each epoch (with the samples
    the coverage rule called back), and the histogram of the latest loss of the samples hidden in the
    last epoch against the visible ones. Returns `path`."""
    plt = require_matplotlib()
    figure, (shares, losses) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [plan.epoch for plan in report.plans]
    hidden = [plan.hidden_fraction for plan in report.plans]
    called_back = [plan.coverage_moved_back / plan.num_samples for plan in report.plans]
    shares.bar(epochs, hidden, color="tab:blue", label="hidden")
    shares.bar(epochs, called_back, bottom=hidden, color="tab:orange", label="called back by the coverage rule")
    shares.plot(epochs, [plan.target_fraction for plan in report.plans], "k_", ms=18, mew=1.5, label="target F_e")
    shares.set(xlabel="epoch", ylabel="share of the training set", title="Hidden share per epoch", ylim=(0, 1))
    shares.legend(fontsize=8)
    columns = report.samples()
    if "loss" in columns:
        loss = columns["loss"].astype(np.float64)
        seen = np.isfinite(loss)
        last = columns["hidden_last_epoch"]
        if seen.any():
            edges = np.histogram_bin_edges(loss[seen], bins=bins)
            for mask, label, color in ((seen & ~last, "visible", "tab:green"), (seen & last, "hidden", "tab:blue")):
                losses.hist(loss[mask], bins=edges, alpha=0.6, color=color, label=f"{label} ({int(mask.sum())})")
        losses.legend(fontsize=8)
    losses.set(xlabel="latest per-sample loss (hidden: as last seen)", ylabel="samples",
               title=f"Loss of hidden vs visible samples, epoch {epochs[-1] if epochs else '-'}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
