"""Data sets that need no download (formula-driven).

``python -m kakurenbo_hf.data.grid`` renders the fractal data set as a classes x instances
picture (and ``--stats`` prints its filling-rate distribution); see ``docs/fractal_data.md``.
"""

from .fractal import (
    FRACTAL_DATA_VERSION,
    FRACTALDB_FILL_THRESHOLD,
    FRACTALDB_POINTS_PER_PIXEL,
    DivergentIFSError,
    filling_rate,
    ifs_probabilities,
    make_fractal_dataset,
    perturb_ifs,
    render_ifs,
    sample_fractal_classes,
    sample_ifs,
    search_filling_rate,
    sigma_factor_range,
)

__all__ = [
    "FRACTAL_DATA_VERSION",
    "FRACTALDB_FILL_THRESHOLD",
    "FRACTALDB_POINTS_PER_PIXEL",
    "DivergentIFSError",
    "filling_rate",
    "ifs_probabilities",
    "make_fractal_dataset",
    "perturb_ifs",
    "render_ifs",
    "sample_fractal_classes",
    "sample_ifs",
    "search_filling_rate",
    "sigma_factor_range",
]
