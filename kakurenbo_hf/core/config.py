"""Every KAKURENBO knob, as dataclass fields that `HfArgumentParser` reads.

`KakurenboArguments` is pure (no transformers import) so the algorithm can be configured and
tested alone; `KakurenboTrainingArguments` (in `training_args.py`) mixes it into
`transformers.TrainingArguments`.
"""

from __future__ import annotations

import json
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path

LR_COMPENSATION_MODES = ("target", "realized", "none")

# The built-in strategies, one module each in strategies/ (read without importing them: the strategies
# import this module). `--help` lists them; a strategy registered in your own code is passed in Python.
BUILTIN_STRATEGIES = tuple(sorted(
    module.name for module in pkgutil.iter_modules([str(Path(__file__).resolve().parent.parent / "strategies")])
    if module.name not in ("base", "toolkit")
))

# Above this, an epoch would train on too little of the data and the LR compensation would exceed
# x10 (`schedule.MAX_LR_FACTOR`); the related work prunes at most 30-70%.
MAX_HIDING_FRACTION = 0.9

# The paper's ImageNet schedule steps the fraction at epochs 30, 60 and 80 of 90 (with the LR
# milestones); expressed as fractions of training so it transfers to any number of epochs. Not the
# default: on our leaderboard's four workloads (README, "Defaults") the decay halved the time saved
# at no accuracy gain. Pass these to get the paper's schedule.
PAPER_DECAY_MILESTONES = (1 / 3, 2 / 3, 8 / 9)
PAPER_DECAY_FACTORS = (0.8, 0.6, 0.4)
PAPER_HIDING_FRACTION = 0.3

# KAKURENBO's coverage rule (`max_hidden_epochs`): no sample hidden more than this many epochs in a row.
# Chosen on the extended leaderboard (docs/benchmarks.md, "Coverage rule"): without a cap a templated
# subgroup of a language model's data stayed hidden from the second epoch on and was forgotten.
KAKURENBO_MAX_HIDDEN_EPOCHS = 3


@dataclass
class KakurenboArguments:
    """Arguments of the hiding algorithm (Nguyen et al., NeurIPS 2023).

    Validated in `__post_init__`: a bad value raises `ValueError` naming the field and its
    allowed range before any training starts.
    """

    hiding_fraction: float = field(
        default=0.5,
        metadata={
            "help": "Maximum fraction F of the training set hidden per epoch (0 <= F <= 0.9). "
            "0 disables hiding: training is then identical to the plain Trainer. Default 0.5, chosen on the "
            "README's leaderboard (the paper used 0.3 with a decay schedule). For infobatch and "
            "selective_backprop it only switches hiding on (> 0) or off (0): their own settings decide how "
            "much is left out; forget and iswr use it with rules of their own (see their cards)."
        },
    )
    confidence_threshold: float = field(
        default=0.7,
        metadata={
            "help": "tau in [0, 1]: a low-loss candidate is hidden only if it was predicted correctly "
            "with confidence >= tau (classification: the top-class probability; other tasks: see the README's "
            "table of built-in statistics); otherwise it is moved back."
        },
    )
    hiding_decay_milestones: list[float] = field(
        default_factory=list,
        metadata={
            "help": "Points of training (fractions of the epochs, increasing, in (0, 1)) where the "
            "hiding fraction is multiplied by the matching entry of hiding_decay_factors. Default: none (no "
            "decay); the paper's schedule is 0.333 0.667 0.889 with factors 0.8 0.6 0.4."
        },
    )
    hiding_decay_factors: list[float] = field(
        default_factory=list,
        metadata={
            "help": "Multipliers of hiding_fraction from each milestone on (in [0, 1]); before the "
            "first milestone the multiplier is 1. Default: none; the paper's code uses 0.8 0.6 0.4."
        },
    )
    lr_compensation: str = field(
        default="realized",
        metadata={
            "choices": list(LR_COMPENSATION_MODES),
            "help": "How the learning rate makes up for the shorter epochs: 'realized' (default) scales it "
            "by 1/(1-hidden/N), so an epoch that hides nothing keeps the plain Trainer's LR; 'target' by "
            "1/(1-F_e) (the paper's rule, also when most candidates were moved back); 'none' leaves it."
        },
    )
    refresh_hidden: bool = field(
        default=True,
        metadata={
            "help": "Refresh the statistics of hidden samples with a forward-only pass (eval mode, no "
            "gradients) before the next selection. Without it hidden samples keep stale values."
        },
    )
    refresh_fraction: float = field(
        default=0.15,
        metadata={
            "help": "Share of last epoch's hidden samples refreshed before the next selection, in (0, 1]: a slice "
            "rotating with the epoch, so a sample hidden 1/refresh_fraction epochs in a row is refreshed at least "
            "once. Lower values make the refresh cheaper; hidden samples then keep older statistics longer."
        },
    )
    refresh_budget: float = field(
        default=0.03,
        metadata={
            "help": "Cap of the refresh pass, as a share of the samples the ending epoch trained (> 0; inf: no "
            "cap): while the refresh_fraction slice would exceed it, its rotation period doubles. A refreshed "
            "sample costs about 0.15-0.25 of a trained one (a forward without backward), so 0.03 keeps the "
            "refresh under about 1 percent of train time at any hiding fraction. For the paper's full refresh: "
            "refresh_fraction=1 with refresh_budget=inf."
        },
    )
    max_hidden_epochs: int | None = field(
        default=None,
        metadata={
            "help": "Coverage rule: a sample hidden in this many consecutive epochs is trained in the next one, "
            "whatever the strategy decides (0: no cap), so no sample is left out of more than max_hidden_epochs "
            "epochs in a row and a hidden subgroup cannot be forgotten for good. Default (None): the strategy's "
            f"own (kakurenbo: {KAKURENBO_MAX_HIDDEN_EPOCHS}; the published baselines: 0). Not for strategies that "
            "draw with replacement (iswr) or select inside each batch (selective_backprop)."
        },
    )
    save_hiding_plot: bool = field(
        default=False,
        metadata={
            "help": "Save hiding_report.png (the hidden share of each epoch, and the loss histogram of hidden vs "
            "visible samples) in every checkpoint folder and in output_dir at the end of training. Needs "
            "matplotlib (pip install 'kakurenbo_hf[plots]'); checked before training starts."
        },
    )
    refresh_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Batch size per device of the refresh pass (forward only, no gradients). Default: the larger "
            "of per_device_train_batch_size and per_device_eval_batch_size (a training batch fits, and a "
            "forward without gradients needs less memory than a training step)."
        },
    )
    hiding_warmup_epochs: int = field(
        default=1,
        metadata={
            "help": "Epochs trained on the full set before anything is hidden and before the learning "
            "rate is compensated (>= 1: statistics come from a full epoch)."
        },
    )
    hiding_strategy: str = field(
        default="kakurenbo",
        metadata={
            "choices": list(BUILTIN_STRATEGIES),
            "help": "How the hidden set is chosen: the name of a registered strategy "
            "(kakurenbo_hf.available_strategies(); each is described in kakurenbo_hf/strategies/<name>.py and in "
            "the README's Strategies section). Default 'kakurenbo': hide the low-loss samples predicted correctly "
            "and confidently. A strategy's own settings are the fields below named after it, or "
            "hiding_strategy_kwargs."
        },
    )
    hiding_strategy_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "The chosen strategy's own settings as a dict (a JSON string on the command line), like "
            "lr_scheduler_kwargs: '{\"beta\": 2}' with hiding_strategy=selective_backprop sets "
            "selective_backprop_beta. An unknown key is refused with the strategy's settings listed."
        },
    )

    # --- Settings of one strategy each, named `<strategy name>_<setting>`: read by strategies/<strategy name>.py,
    # checked by its `validate_arguments` when it is the one chosen. ---
    selective_backprop_beta: float = field(
        default=3.0,
        metadata={
            "help": "selective_backprop: beta >= 0; a sample is backpropagated with probability "
            "percentile(loss) ** beta (3: about a quarter of the samples, 2: a third, 1: half; 0: all)."
        },
    )
    selective_backprop_history: int = field(
        default=1024,
        metadata={"help": "selective_backprop: recent losses per process the percentile is taken over (>= 1)."},
    )
    selective_backprop_min_probability: float = field(
        default=0.0,
        metadata={"help": "selective_backprop: floor of every sample's selection probability, in [0, 1]."},
    )

    # --- resuming (a general setting, kept at its place in the field order) ---
    resume_without_hiding_state: bool = field(
        default=False,
        metadata={
            "help": "Allow resuming a hiding run from a checkpoint that lacks kakurenbo_state.safetensors "
            "(e.g. a copy of the standard files only). The run continues at the next epoch boundary "
            "(the rest of an interrupted epoch is skipped, with a warning) and hiding restarts from "
            "fresh statistics. Without it such a resume is refused: its epoch lengths are unknown."
        },
    )

    # --- settings of one strategy each, continued ---
    random_count: str = field(
        default="exact",
        metadata={
            "help": "hiding_strategy='random': how many samples an epoch hides. 'exact' (default): floor(F_e * N), "
            "the uniform dynamic pruning of Raju et al. 2021; 'kakurenbo': as many as KAKURENBO would hide from the "
            "same statistics (a control matched in time to KAKURENBO)."
        },
    )
    epsilon_greedy_epsilon: float = field(
        default=0.1,
        metadata={
            "help": "hiding_strategy='epsilon_greedy': share of the kept samples (in [0, 1]) drawn uniformly at "
            "random from the lower-loss rest; the others kept are the highest-loss samples."
        },
    )
    ucb_exploration: float = field(
        default=1.0,
        metadata={
            "help": "hiding_strategy='ucb': c >= 0 in score = running mean + c * running std of a sample's loss; the "
            "floor(F_e * N) lowest scores are hidden. 0: greedy on the running mean."
        },
    )
    ucb_decay: float = field(
        default=0.9,
        metadata={
            "help": "hiding_strategy='ucb': weight in [0, 1) of the history in the exponential moving mean and "
            "variance of each sample's loss (new = decay * old + (1 - decay) * observation); 0 keeps the last loss."
        },
    )
    forget_counting_epochs: int = field(
        default=2,
        metadata={
            "help": "hiding_strategy='forget': epochs (>= 2) whose forgetting events are counted before the hidden "
            "set is fixed for the rest of training (at the first epoch >= max(this, hiding_warmup_epochs))."
        },
    )
    forget_lag_counting_epochs: int = field(
        default=2,
        metadata={
            "help": "hiding_strategy='forget_lag': epochs (>= 2) counted before the first ranking; from then on each "
            "epoch hides the floor(F_e * N) samples forgotten least so far (counting goes on over the trained samples)."
        },
    )
    forget_original_counting_epochs: int = field(
        default=20,
        metadata={
            "help": "hiding_strategy='forget_original': the fewest epochs (>= 2) the counting run must have counted "
            "for a retraining run to use its counts (KAKURENBO's code counts 20)."
        },
    )
    forget_original_counts_from: str = field(
        default="",
        metadata={
            "help": "hiding_strategy='forget_original': a checkpoint folder (output_dir/checkpoint-N) of the counting "
            "run. Empty (default): this run is the counting run (hides nothing; its checkpoints hold the forgetting "
            "counts). Set: this run, from scratch, leaves out the floor(F * N) samples that run forgot least, in every "
            "epoch after the warm-up."
        },
    )
    kakurenbo_hide_probability: float | None = field(
        default=None,
        metadata={
            "help": "hiding_strategy='kakurenbo': each learned candidate is hidden with this probability p, drawn per "
            "sample and epoch (keyed by seed, epoch and index: the same on every process), from the "
            "floor(min(1, F_e / p) * N) lowest-loss samples, never more than floor(F_e * N). 1 (the paper's "
            "rule): every learned candidate among the floor(F_e * N) lowest is hidden. Below 1 a subgroup of "
            "learned samples is never left out whole, so it is trained a little every epoch (in (0, 1]). "
            "Default (None): the task's: 0.5 for causal language models (their easy rows, such as templates, "
            "were forgotten when all hidden at once), 1 for every other task."
        },
    )
    infobatch_prune_ratio: float = field(
        default=0.5,
        metadata={
            "help": "InfoBatch's r in (0, 0.9]: each sample whose latest loss is below the mean is left out of the "
            "epoch with probability r, and the kept ones get loss weight 1/(1-r). hiding_fraction only switches "
            "infobatch on (> 0)."
        },
    )
    infobatch_delta: float = field(
        default=0.875,
        metadata={
            "help": "InfoBatch's delta in (0, 1]: epoch e (from 0) prunes while e + 1 <= delta * num_train_epochs; "
            "the last epochs (an eighth by default) train on every sample with weight 1."
        },
    )
    iswr_smoothing: float = field(
        default=0.5,
        metadata={
            "help": "ISWR's s in [0, 1]: sample i is drawn with probability (1 - s) * loss_i / sum(loss) + s / N "
            "(0.5: Needell, Srebro and Ward's partially biased sampling; loss weights then stay <= 1/s)."
        },
    )
    iswr_draws_fraction: float | None = field(
        default=None,
        metadata={
            "help": "ISWR draws per epoch as a fraction of N, in (0, 1]. Default: as many as KAKURENBO's epoch "
            "would keep visible at most, N - floor(F_e * N) (F_e: hiding_fraction with its schedule)."
        },
    )
    iswr_unbiased: bool = field(
        default=True,
        metadata={
            "help": "ISWR weights each drawn sample's loss by 1/(N p_i), so a batch's mean loss estimates the full "
            "data's without bias. False: the model's own loss on the drawn samples (biased towards high loss, as "
            "the KAKURENBO authors' ISWR baseline)."
        },
    )

    def __post_init__(self):
        self.validate_hiding_arguments()

    def strategy_settings(self) -> dict[str, str]:
        """The chosen strategy's settings: key of `hiding_strategy_kwargs` -> field name."""
        prefix = f"{self.hiding_strategy}_"
        # Another strategy's name may start with this one's ("forget_lag" and "forget"): its fields are its own.
        longer = tuple(f"{name}_" for name in BUILTIN_STRATEGIES if name.startswith(prefix))
        return {name[len(prefix):]: name for name in KakurenboArguments.__dataclass_fields__
                if name.startswith(prefix) and not name.startswith(longer)}

    def _apply_strategy_kwargs(self) -> None:
        """`hiding_strategy_kwargs` into the strategy's fields, refusing unknown keys and contradictions."""
        kwargs = self.hiding_strategy_kwargs
        if kwargs is None:
            return
        if isinstance(kwargs, str):
            try:
                kwargs = json.loads(kwargs) if kwargs.strip() else {}
            except json.JSONDecodeError as error:
                raise ValueError(f"hiding_strategy_kwargs is not a JSON object: {kwargs!r} ({error})") from error
        if not isinstance(kwargs, dict):
            raise ValueError(f"hiding_strategy_kwargs must be a dict, got {type(kwargs).__name__}")
        self.hiding_strategy_kwargs = dict(kwargs)
        settings = self.strategy_settings()
        for key, value in kwargs.items():
            name = settings.get(key) or (key if key in settings.values() else None)  # "beta" or its field's name
            if name is None:
                raise ValueError(
                    f"hiding_strategy_kwargs has {key!r}, which is not a setting of hiding_strategy="
                    f"{self.hiding_strategy!r}; its settings are {sorted(settings) or 'none'}"
                )
            default = KakurenboArguments.__dataclass_fields__[name].default
            current = getattr(self, name)
            if current != default and current != value:
                raise ValueError(f"hiding_strategy_kwargs[{key!r}]={value!r} contradicts {name}={current!r}; "
                                 "give the setting once")
            setattr(self, name, value)

    def validate_hiding_arguments(self) -> None:
        """Raise `ValueError` for any field outside its allowed range."""
        from ..strategies.base import available_strategies, strategy_class

        if not 0.0 <= self.hiding_fraction <= MAX_HIDING_FRACTION:
            raise ValueError(
                f"hiding_fraction must be in [0, {MAX_HIDING_FRACTION}], got {self.hiding_fraction!r} (at most "
                f"{MAX_HIDING_FRACTION:.0%} of an epoch can be hidden, so every epoch trains on real data)"
            )
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ValueError(f"confidence_threshold must be in [0, 1], got {self.confidence_threshold!r}")
        milestones = list(self.hiding_decay_milestones)
        factors = list(self.hiding_decay_factors)
        if len(milestones) != len(factors):
            raise ValueError(
                "hiding_decay_milestones and hiding_decay_factors must have the same length, got "
                f"{len(milestones)} and {len(factors)}"
            )
        if any(not 0.0 < m < 1.0 for m in milestones) or any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(
                f"hiding_decay_milestones must be strictly increasing fractions in (0, 1), got {milestones!r}"
            )
        if any(not 0.0 <= f <= 1.0 for f in factors):
            raise ValueError(f"hiding_decay_factors must each be in [0, 1], got {factors!r}")
        if self.lr_compensation not in LR_COMPENSATION_MODES:
            raise ValueError(
                f"lr_compensation must be one of {LR_COMPENSATION_MODES}, got {self.lr_compensation!r}"
            )
        if not 0.0 < self.refresh_fraction <= 1.0:
            raise ValueError(f"refresh_fraction must be in (0, 1], got {self.refresh_fraction!r}")
        if not self.refresh_budget > 0.0:  # also rejects NaN
            raise ValueError(f"refresh_budget must be > 0 (inf: no cap), got {self.refresh_budget!r}")
        if self.refresh_batch_size is not None and (
            int(self.refresh_batch_size) != self.refresh_batch_size or self.refresh_batch_size < 1
        ):
            raise ValueError(f"refresh_batch_size must be a positive integer or None, got {self.refresh_batch_size!r}")
        if self.max_hidden_epochs is not None and (
            isinstance(self.max_hidden_epochs, bool) or int(self.max_hidden_epochs) != self.max_hidden_epochs
            or self.max_hidden_epochs < 0
        ):
            raise ValueError(f"max_hidden_epochs must be an integer >= 0 (0: no cap) or None (the strategy's "
                             f"default), got {self.max_hidden_epochs!r}")
        if int(self.hiding_warmup_epochs) != self.hiding_warmup_epochs or self.hiding_warmup_epochs < 1:
            raise ValueError(f"hiding_warmup_epochs must be an integer >= 1, got {self.hiding_warmup_epochs!r}")
        if self.hiding_strategy not in available_strategies():
            raise ValueError(
                f"hiding_strategy must be one of {available_strategies()}, got {self.hiding_strategy!r}"
            )
        self._apply_strategy_kwargs()
        # The chosen strategy checks its own settings (the registry knows every strategy by name).
        strategy = strategy_class(self.hiding_strategy)
        if self.max_hidden_epochs and not strategy.supports_coverage_rule:
            raise ValueError(
                f"max_hidden_epochs={self.max_hidden_epochs!r} does not apply to hiding_strategy="
                f"{self.hiding_strategy!r}: it draws its epoch with replacement or selects inside each batch, so no "
                "sample stays hidden for whole epochs. Leave max_hidden_epochs unset (None) or 0."
            )
        strategy.validate_arguments(self)

    def hiding_arguments(self) -> KakurenboArguments:
        """A plain `KakurenboArguments` copy of these fields (e.g. from a TrainingArguments subclass)."""
        return KakurenboArguments(**{name: getattr(self, name) for name in KakurenboArguments.__dataclass_fields__})
