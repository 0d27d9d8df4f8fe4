"""`KakurenboArguments`: defaults, validation, and parsing with `HfArgumentParser`."""

from __future__ import annotations

import dataclasses
import json

import pytest

from kakurenbo_hf.core.config import KakurenboArguments


def test_defaults():
    args = KakurenboArguments()
    # Chosen on the leaderboard (README, "Defaults"): F = 0.5, no decay, a 0.15 refresh slice.
    assert args.hiding_fraction == 0.5
    assert args.confidence_threshold == 0.7
    assert args.hiding_decay_factors == [] and args.hiding_decay_milestones == []
    assert args.refresh_fraction == 0.15
    assert args.refresh_budget == 0.03  # README, "Refresh budget": under 1% of train time on the leaderboard
    assert args.lr_compensation == "realized"  # cannot raise the LR when nothing is hidden
    assert args.resume_without_hiding_state is False
    assert args.refresh_hidden is True
    assert args.hiding_warmup_epochs == 1
    assert args.hiding_strategy == "kakurenbo"
    # list defaults are not shared between instances
    other = KakurenboArguments()
    other.hiding_decay_factors.append(0.1)
    assert KakurenboArguments().hiding_decay_factors == []


def test_the_papers_schedule_is_one_argument_set_away():
    from kakurenbo_hf.core.config import PAPER_DECAY_FACTORS, PAPER_DECAY_MILESTONES, PAPER_HIDING_FRACTION
    from kakurenbo_hf.core.schedule import target_hiding_fraction

    args = KakurenboArguments(hiding_fraction=PAPER_HIDING_FRACTION, hiding_decay_milestones=list(PAPER_DECAY_MILESTONES),
                              hiding_decay_factors=list(PAPER_DECAY_FACTORS))
    fractions = [target_hiding_fraction(e, 90, args.hiding_fraction, args.hiding_decay_milestones,
                                        args.hiding_decay_factors, 1) for e in (0, 1, 29, 30, 60, 80, 89)]
    assert fractions == pytest.approx([0.0, 0.3, 0.3, 0.24, 0.18, 0.12, 0.12])


def test_every_field_has_help():
    for f in dataclasses.fields(KakurenboArguments):
        assert f.metadata.get("help"), f.name


def test_help_formats():
    """argparse %-formats help strings: a bare '%' in one made `--help` raise."""
    from transformers import HfArgumentParser

    from kakurenbo_hf import KakurenboTrainingArguments

    text = HfArgumentParser(KakurenboTrainingArguments).format_help()
    assert "--refresh_budget" in text


@pytest.mark.parametrize(
    "kwargs, field_name",
    [
        ({"hiding_fraction": -0.1}, "hiding_fraction"),
        ({"hiding_fraction": 1.0}, "hiding_fraction"),
        ({"hiding_fraction": 1 - 1e-10}, "hiding_fraction"),
        ({"hiding_fraction": 0.91}, "hiding_fraction"),
        ({"hiding_fraction": 1.5}, "hiding_fraction"),
        ({"confidence_threshold": 1.5}, "confidence_threshold"),
        ({"confidence_threshold": -0.01}, "confidence_threshold"),
        ({"hiding_decay_milestones": [0.5, 0.3], "hiding_decay_factors": [0.8, 0.6]}, "hiding_decay_milestones"),
        ({"hiding_decay_milestones": [0.5, 0.5], "hiding_decay_factors": [0.8, 0.6]}, "hiding_decay_milestones"),
        ({"hiding_decay_milestones": [0.0, 0.5], "hiding_decay_factors": [0.8, 0.6]}, "hiding_decay_milestones"),
        ({"hiding_decay_milestones": [0.5, 1.0], "hiding_decay_factors": [0.8, 0.6]}, "hiding_decay_milestones"),
        ({"hiding_decay_milestones": [0.5, 1.2], "hiding_decay_factors": [0.8, 0.6]}, "hiding_decay_milestones"),
        ({"hiding_decay_milestones": [0.5], "hiding_decay_factors": [0.8, 0.6]}, "hiding_decay_milestones"),
        ({"hiding_decay_milestones": [0.2, 0.5], "hiding_decay_factors": [0.8]}, "hiding_decay_factors"),
        ({"hiding_decay_factors": [0.8, 1.2, 0.4]}, "hiding_decay_factors"),
        ({"hiding_decay_factors": [0.8, -0.1, 0.4]}, "hiding_decay_factors"),
        ({"lr_compensation": "foo"}, "lr_compensation"),
        ({"hiding_warmup_epochs": 0}, "hiding_warmup_epochs"),
        ({"hiding_warmup_epochs": -2}, "hiding_warmup_epochs"),
        ({"hiding_warmup_epochs": 1.5}, "hiding_warmup_epochs"),
        ({"hiding_strategy": "nope"}, "hiding_strategy"),
        ({"refresh_budget": 0.0}, "refresh_budget"),
        ({"refresh_budget": -1.0}, "refresh_budget"),
        ({"refresh_budget": float("nan")}, "refresh_budget"),
    ],
)
def test_bad_values_raise_value_error_naming_the_field(kwargs, field_name):
    with pytest.raises(ValueError, match=field_name):
        KakurenboArguments(**kwargs)


def test_valid_edge_values():
    KakurenboArguments(hiding_fraction=0.0)
    KakurenboArguments(hiding_fraction=0.9)
    KakurenboArguments(confidence_threshold=0.0)
    KakurenboArguments(confidence_threshold=1.0)
    KakurenboArguments(hiding_decay_milestones=[], hiding_decay_factors=[])
    KakurenboArguments(hiding_decay_milestones=[0.2, 0.5, 0.9], hiding_decay_factors=[1.0, 0.0, 0.0])
    for mode in ("target", "realized", "none"):
        KakurenboArguments(lr_compensation=mode)
    KakurenboArguments(hiding_strategy="random", hiding_warmup_epochs=5)


def test_hiding_arguments_copy():
    args = KakurenboArguments(hiding_fraction=0.2, hiding_strategy="random")
    copy = args.hiding_arguments()
    assert copy == args and copy is not args


# --- HfArgumentParser ------------------------------------------------------------------------


def parser():
    from transformers import HfArgumentParser

    return HfArgumentParser(KakurenboArguments)


def test_parse_cli_flags():
    (args,) = parser().parse_args_into_dataclasses(
        args=[
            "--hiding_fraction", "0.25",
            "--confidence_threshold", "0.9",
            "--hiding_decay_milestones", "0.5", "0.75",
            "--hiding_decay_factors", "0.5", "0.25",
            "--lr_compensation", "realized",
            "--refresh_hidden", "false",
            "--hiding_warmup_epochs", "2",
            "--hiding_strategy", "random",
        ]
    )
    assert args == KakurenboArguments(
        hiding_fraction=0.25,
        confidence_threshold=0.9,
        hiding_decay_milestones=[0.5, 0.75],
        hiding_decay_factors=[0.5, 0.25],
        lr_compensation="realized",
        refresh_hidden=False,
        hiding_warmup_epochs=2,
        hiding_strategy="random",
    )
    assert args.refresh_hidden is False
    assert isinstance(args.hiding_warmup_epochs, int)


def test_parse_cli_defaults_and_bool_forms():
    (args,) = parser().parse_args_into_dataclasses(args=[])
    assert args == KakurenboArguments()
    (args,) = parser().parse_args_into_dataclasses(args=["--refresh_hidden", "true"])
    assert args.refresh_hidden is True
    (args,) = parser().parse_args_into_dataclasses(args=["--no_refresh_hidden"])
    assert args.refresh_hidden is False


def test_parse_cli_validates():
    with pytest.raises(ValueError, match="hiding_fraction"):
        parser().parse_args_into_dataclasses(args=["--hiding_fraction", "1.0"])
    with pytest.raises(ValueError, match="hiding_decay_milestones"):
        parser().parse_args_into_dataclasses(args=["--hiding_decay_milestones", "0.5", "0.2"])


def test_parse_json_file(tmp_path):
    config = {
        "hiding_fraction": 0.2,
        "hiding_decay_milestones": [0.5],
        "hiding_decay_factors": [0.5],
        "refresh_hidden": False,
        "lr_compensation": "none",
    }
    path = tmp_path / "kakurenbo.json"
    path.write_text(json.dumps(config))
    (args,) = parser().parse_json_file(str(path))
    assert args == KakurenboArguments(**config)
    path.write_text(json.dumps({**config, "confidence_threshold": 1.5}))
    with pytest.raises(ValueError, match="confidence_threshold"):
        parser().parse_json_file(str(path))


def test_training_arguments_subclass(tmp_path):
    from transformers import HfArgumentParser, TrainingArguments

    from kakurenbo_hf import KakurenboTrainingArguments

    assert issubclass(KakurenboTrainingArguments, TrainingArguments)
    assert issubclass(KakurenboTrainingArguments, KakurenboArguments)
    hf_parser = HfArgumentParser(KakurenboTrainingArguments)
    (args,) = hf_parser.parse_args_into_dataclasses(
        args=[
            "--output_dir", str(tmp_path),
            "--use_cpu",
            "--learning_rate", "0.001",
            "--hiding_fraction", "0.2",
            "--hiding_decay_milestones", "0.25", "0.5", "0.75",
            "--hiding_decay_factors", "0.9", "0.8", "0.7",
            "--refresh_hidden", "false",
            "--report_to", "none",
        ]
    )
    assert args.learning_rate == 0.001
    assert args.hiding_fraction == 0.2
    assert args.hiding_decay_factors == [0.9, 0.8, 0.7]
    assert args.refresh_hidden is False
    assert args.hiding_arguments() == KakurenboArguments(
        hiding_fraction=0.2, hiding_decay_milestones=[0.25, 0.5, 0.75], hiding_decay_factors=[0.9, 0.8, 0.7],
        refresh_hidden=False,
    )
    # positional use, as with TrainingArguments
    assert KakurenboTrainingArguments(str(tmp_path), report_to="none").output_dir == str(tmp_path)
    with pytest.raises(ValueError, match="hiding_fraction"):
        hf_parser.parse_args_into_dataclasses(args=["--output_dir", str(tmp_path), "--hiding_fraction", "-0.1"])
    with pytest.raises(ValueError, match="lr_compensation"):
        KakurenboTrainingArguments(output_dir=str(tmp_path), lr_compensation="foo", report_to="none")


def test_integrations_are_exported_at_the_top_level():
    import kakurenbo_hf
    from kakurenbo_hf import integrations

    for name in ("KakurenboSeq2SeqTrainer", "KakurenboSeq2SeqTrainingArguments", "with_hiding", "with_hiding_arguments"):
        assert getattr(kakurenbo_hf, name) is getattr(integrations, name)
        assert name in kakurenbo_hf.__all__


# --- hiding_strategy_kwargs and choices ---------------------------------------------------------


def test_strategy_kwargs_set_the_strategy_settings():
    args = KakurenboArguments(hiding_strategy="selective_backprop", hiding_strategy_kwargs={"beta": 2.0})
    assert args.selective_backprop_beta == 2.0
    args = KakurenboArguments(hiding_strategy="ucb", hiding_strategy_kwargs='{"ucb_decay": 0.5, "exploration": 0.1}')
    assert (args.ucb_decay, args.ucb_exploration) == (0.5, 0.1) and args.hiding_strategy_kwargs == {
        "ucb_decay": 0.5, "exploration": 0.1}
    assert args.hiding_arguments().ucb_decay == 0.5  # copies keep them


@pytest.mark.parametrize("kwargs, match", [
    ({"bogus": 1}, r"'bogus', which is not a setting of hiding_strategy='ucb'; its settings are \['decay', 'exploration'\]"),
    ({"beta": 2.0}, "not a setting"),  # selective_backprop's, not ucb's
    ("{not json", "not a JSON object"),
    ('["decay"]', "must be a dict"),
])
def test_strategy_kwargs_refuse_what_the_strategy_does_not_have(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KakurenboArguments(hiding_strategy="ucb", hiding_strategy_kwargs=kwargs)


def test_strategy_kwargs_are_validated_by_the_strategy_and_must_not_contradict_fields():
    with pytest.raises(ValueError, match="selective_backprop_beta"):
        KakurenboArguments(hiding_strategy="selective_backprop", hiding_strategy_kwargs={"beta": -1.0})
    with pytest.raises(ValueError, match="contradicts ucb_decay=0.5"):
        KakurenboArguments(hiding_strategy="ucb", ucb_decay=0.5, hiding_strategy_kwargs={"decay": 0.7})


def test_command_line_lists_the_choices_and_takes_strategy_kwargs_as_json(tmp_path):
    from transformers import HfArgumentParser

    from kakurenbo_hf import KakurenboTrainingArguments, available_strategies
    from kakurenbo_hf.core.config import BUILTIN_STRATEGIES

    assert set(BUILTIN_STRATEGIES) <= set(available_strategies()) and "kakurenbo" in BUILTIN_STRATEGIES
    parser = HfArgumentParser(KakurenboTrainingArguments)
    help_text = parser.format_help()
    assert "--hiding_strategy {" + ",".join(BUILTIN_STRATEGIES) + "}" in help_text
    assert "--lr_compensation {target,realized,none}" in help_text
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--hiding_strategy", "selective_backprop",
         "--hiding_strategy_kwargs", '{"beta": 1.5}'])
    assert args.selective_backprop_beta == 1.5
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--lr_compensation", "double"])


def test_strategy_kwargs_do_not_reach_a_longer_named_strategys_fields():
    """`forget`'s settings are not `forget_lag`'s or `forget_original`'s, although their names share the prefix."""
    assert KakurenboArguments(hiding_strategy="forget").strategy_settings() == {
        "counting_epochs": "forget_counting_epochs"}
    with pytest.raises(ValueError, match="'lag_counting_epochs', which is not a setting of hiding_strategy='forget'"):
        KakurenboArguments(hiding_strategy="forget", hiding_strategy_kwargs={"lag_counting_epochs": 3})
    assert KakurenboArguments(hiding_strategy="forget_lag",
                              hiding_strategy_kwargs={"counting_epochs": 3}).forget_lag_counting_epochs == 3
