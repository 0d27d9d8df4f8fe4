"""Data sets that need no download (formula-driven)."""

from .fractal import (
    FRACTAL_DATA_VERSION,
    DivergentIFSError,
    filling_rate,
    ifs_probabilities,
    make_fractal_dataset,
    perturb_ifs,
    render_ifs,
    sample_fractal_classes,
    sample_ifs,
)

__all__ = [
    "FRACTAL_DATA_VERSION",
    "DivergentIFSError",
    "filling_rate",
    "ifs_probabilities",
    "make_fractal_dataset",
    "perturb_ifs",
    "render_ifs",
    "sample_fractal_classes",
    "sample_ifs",
]
