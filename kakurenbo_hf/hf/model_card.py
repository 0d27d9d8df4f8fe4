"""The model card's section on sample hiding (`KakurenboMixin.create_model_card`)."""

from __future__ import annotations

from ..core.config import KakurenboArguments

# Hiding settings shown on the model card (the strategy-specific ones are in the training arguments).
_CARD_SETTINGS = ("hiding_strategy", "hiding_fraction", "confidence_threshold", "hiding_warmup_epochs",
                  "hiding_decay_milestones", "hiding_decay_factors", "lr_compensation", "refresh_hidden",
                  "refresh_fraction", "refresh_budget", "max_hidden_epochs", "kakurenbo_hide_probability")


def model_card_section(arguments: KakurenboArguments, summary: dict[str, float] | None) -> str:
    """The model card's Markdown section on sample hiding: settings, and the run's summary if trained."""
    lines = ["", "## Sample hiding (kakurenbo_hf)", "",
             "Trained with `KakurenboTrainer` (KAKURENBO, Nguyen et al., NeurIPS 2023): each epoch left out "
             "samples the model had already learned.", "", "| setting | value |", "|---|---|"]
    lines += [f"| `{name}` | `{getattr(arguments, name)}` |" for name in _CARD_SETTINGS if hasattr(arguments, name)]
    if summary:
        lines += ["", "| run | value |", "|---|---|",
                  f"| samples backpropagated | {int(summary['kakurenbo/samples_backpropagated'])} |",
                  f"| share of the epochs' samples left out | {summary['kakurenbo/saved_share']:.3f} |",
                  f"| samples refreshed (forward only) | {int(summary['kakurenbo/samples_refreshed'])} |"]
        if "kakurenbo/max_hidden_epochs" in summary:
            lines.append(f"| cap on consecutive hidden epochs, as applied | "
                         f"{int(summary['kakurenbo/max_hidden_epochs'])} |")
    return "\n".join(lines) + "\n"
