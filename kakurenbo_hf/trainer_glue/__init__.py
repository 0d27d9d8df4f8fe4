"""Parts of `KakurenboMixin` that serve one concern each (mixed into it; see `trainer.py`)."""

from .batch_selection import BatchSelectionMixin
from .loss_weighting import LossWeightingMixin
from .resume import ResumeMixin, _ResumePoint

__all__ = ["BatchSelectionMixin", "LossWeightingMixin", "ResumeMixin", "_ResumePoint"]
