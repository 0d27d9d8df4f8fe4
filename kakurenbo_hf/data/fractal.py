"""FractalDB-style formula-driven image classification data sets.

FractalDB (Kataoka et al., "Pre-training without Natural Images", ACCV 2020, and its
reference renderer ``hirokatsukataoka16/FractalDB-Pretrained-ResNet-PyTorch``; Nakashima et
al., "Can Vision Transformers Learn without Natural Images?", AAAI 2022) replaces natural
photos by images of fractals.  Every *class* is an iterated function system (IFS): a few
affine maps ``x' = A x + b``.  Every *instance* is the same IFS with one parameter re-weighted.
No download and no labelling are needed and the labels are exact, which makes it a convenient
data set for pre-training and smoke-testing tiny ViT / DeiT models on CPU.

Which published rule each step follows
--------------------------------------
1. **Number of maps** ``N`` uniform in ``{min_maps..max_maps}``, default ``{2..7}``
   (FractalDB's search draws ``numpy.random.randint(2, 8)``).
2. **Maps: the sigma-factor rule** (default ``sampler="sigma_factor"``; Anderson and Farrell,
   "Improving Fractal Pre-training", WACV 2022).  Each linear part is built from
   its SVD, ``A_i = U_i diag(s_i1, s_i2) V_i^T``: ``U_i``, ``V_i`` are random orthogonal
   2x2 matrices (uniform rotation angle, reflection with probability 1/2); the singular values
   satisfy ``1 >= s_i1 >= s_i2 >= 0`` (every map is a contraction, so no system diverges)
   and their *sigma factor* ``alpha = sum_i (s_i1 + 2 s_i2)`` is drawn uniformly in the
   paper's range ``[(5 + N) / 2, (6 + N) / 2]`` (lower values give sparse dust, higher ones
   solid shapes).  How ``alpha`` is split between the maps is ours: the per-map budgets
   ``w_i = s_i1 + 2 s_i2`` are ``alpha`` times a flat Dirichlet draw, redrawn while some
   ``w_i > 3`` (bounded stick-breaking in random order if ``alpha`` is too close to ``3 N``
   for that), and ``s_i2`` is uniform in the interval that keeps ``1 >= s_i1 >= s_i2``.
   Translations ``b_i`` are uniform in ``[-1, 1]^2``.
   ``sampler="uniform"`` is FractalDB's own draw instead: all six parameters uniform in
   ``[-1, 1]`` (often expanding; only about 2 % of such draws pass step 4, so it is ~8x slower).
3. **Map probabilities** ``p_i = |det A_i| / sum_j |det A_j|`` (FractalDB; also Anderson and
   Farrell).
4. **Class search: FractalDB's filling-rate rule at its published setting.**  A candidate IFS
   is rendered exactly as FractalDB's search renders it - 100,000 chaos-game points, the
   min..max box of the points scaled per axis onto a 512 x 512 canvas with a 6-pixel pad, one
   pixel per point - and kept if its *filling rate* (non-black pixels / all pixels) is at
   least ``min_fill_rate``, default **0.2** (the README's ``--rate 0.2 --numof_point 100000``).
   Candidates whose points are non-finite or beyond ``1e4`` are rejected too.  With the
   sigma-factor sampler about 13 % of the candidates pass.  :func:`search_filling_rate`
   computes this quantity.
5. **Instances: FractalDB's intra-class weighting.**  One of the six parameter kinds
   ``(a11, a12, a21, a22, b1, b2)`` - the same one in *every* map - is multiplied by
   ``w ~ U[1 - perturbation, 1 + perturbation]``, default ``[0.8, 1.2]`` (FractalDB's
   ``weights_0.1.csv`` uses the grid ``{0.8, 0.9, 1.1, 1.2}``; a continuous ``w`` gives
   unlimited distinct instances).  Options: a horizontal flip (``flip``; FractalDB stores four
   flips) and colour.  FractalDB keeps the class's map probabilities; here they are
   recomputed from the weighted maps (a difference of a few per cent in the probabilities).
   Deviation: with the sigma-factor sampler a weighting that would make a map expand
   (largest singular value > 1) is redrawn, so instances stay contractions like their class;
   otherwise about 0.5 % of the instances grow sparse far-flung tails and the min..max box
   shrinks the fractal to a dot.
6. **Rendering at FractalDB's density.**  FractalDB plots 100,000 points on 512 x 512 pixels,
   ``100000 / 512**2 = 0.38`` points per pixel, which is what makes its images thin point
   drawings rather than solid shapes.  Small images cannot show that at one pixel per point
   (a 32 px image would get 390 points: speckle), so each image is rendered at
   ``supersample`` (default 4) times its size with 0.38 points per *render* pixel (6,250
   points for 32 px), one render pixel per point, min..max box per axis (no quantile clipping:
   the maps are contractions, the attractor is bounded), and then area-averaged down to
   ``image_size`` - what FractalDB's own training pipeline does when it resizes its 512 px
   images to the network's input.  A pixel's intensity is the fraction of its
   ``supersample**2`` render pixels that hold a point, times the colour; the *mean*
   intensity of an image is therefore its FractalDB filling rate at the render resolution.
   ``supersample=1`` gives binary one-pixel-per-point images.
   Deviations from FractalDB: the images are much smaller (32 px by default instead of 512 px,
   for CPU training); the canvas keeps ``margin`` (5 %) empty on each side instead of 6 px;
   points are plotted as single pixels (FractalDB's final renderer can paint random 3x3
   patches, which at 32 px would cover most of the image).

The chaos game is vectorised with numpy: each image runs ``ceil(num_points / 64)`` walkers in
parallel, all started at the fixed point of the most probable contracting map (a point of
the attractor, so no point is a transient), 8 steps discarded, 64 recorded; the maps are
chosen per walker per step from the image's own random stream.

Knobs of :func:`make_fractal_dataset` (defaults)
------------------------------------------------
``num_classes=10``, ``instances_per_class=100``, ``image_size=32``, ``num_points=None``
(FractalDB's density at the render resolution: ``round(100000 / 512**2 * (supersample *
image_size)**2)``, 6,250 at 32 px), ``seed=0``, ``test_instances_per_class=0`` (``> 0``
returns a ``DatasetDict`` with ``"train"`` and ``"test"``), ``min_fill_rate=0.2``,
``min_maps=2``, ``max_maps=7``, ``perturbation=0.2``, ``flip=False``, ``color="gray"``
(``"gray"``: white on black; ``"class"``: one colour per class (makes colour a label cue);
``"instance"``: a random colour per image), ``margin=0.05``, ``sampler="sigma_factor"``
(or ``"uniform"``), ``supersample=4``, ``cache_dir=None`` (``datasets`` default cache).

Measured (``python -m kakurenbo_hf.data.grid --stats``; ``docs/fractal_data.md``)
--------------------------------------------------------------------------------
40 classes x 3 instances, seed 0: the classes' search filling rate is >= 0.2 by construction
(median 0.22, max 0.25; 100,000 points can fill at most 0.38); the images' filling rate at the
render resolution (their mean intensity) has median 0.22 at 32 px and 0.21 at 64 px, none
above 0.27 (v1: median 0.43, a third of the images above 0.5).  Most non-black pixels are
partly covered: about half of a 32 px image's pixels are non-black.  A raw-pixel
nearest-centroid classifier separates 10 classes at 98-100 % (200 / 50 images per class).
Building 10 classes x 100 images at 32 px takes about 0.65x the CPU time of the v1 generator
(0.5 s on the 2-core development machine); a second call loads from the cache.

Caching
-------
The data set is built with ``datasets.Dataset.from_generator`` and an explicit ``fingerprint``
(a hash of every argument that affects the pixels plus :data:`FRACTAL_DATA_VERSION`), so a
second call with the same arguments and ``cache_dir`` loads the Arrow files from the cache
without re-running the generator.  Bump :data:`FRACTAL_DATA_VERSION` when the pixels change.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import json
import logging
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "FRACTAL_DATA_VERSION",
    "FRACTALDB_FILL_THRESHOLD",
    "FRACTALDB_POINTS_PER_PIXEL",
    "DivergentIFSError",
    "sample_ifs",
    "sigma_factor_range",
    "ifs_probabilities",
    "render_ifs",
    "filling_rate",
    "search_filling_rate",
    "perturb_ifs",
    "sample_fractal_classes",
    "make_fractal_dataset",
]

#: Part of the cache fingerprint; bump whenever generated pixels change.
#: v1: uniform maps, fill >= 0.1 at the data set's own size, quantile box, 4 points/pixel.
#: v2: sigma-factor maps, FractalDB's search rule (512 px, 100k points, fill >= 0.2),
#:     FractalDB's density (0.38 points/pixel) at 4x supersampling, all-maps weighting.
FRACTAL_DATA_VERSION = "fractal-v2"

# FractalDB's category search (param_search/ifs_search.py and its README): 100,000 points,
# 512 x 512 canvas, 6-pixel pad, filling-rate threshold 0.2.
FRACTALDB_SEARCH_SIZE = 512
FRACTALDB_SEARCH_PAD = 6
FRACTALDB_SEARCH_POINTS = 100_000
#: FractalDB's published filling-rate threshold.
FRACTALDB_FILL_THRESHOLD = 0.2
#: FractalDB's points per pixel: 100,000 points on 512 x 512 pixels (~0.381).
FRACTALDB_POINTS_PER_PIXEL = FRACTALDB_SEARCH_POINTS / FRACTALDB_SEARCH_SIZE ** 2

_SAMPLERS = ("sigma_factor", "uniform")
_COLOR_MODES = ("gray", "class", "instance")
_DIVERGENCE_LIMIT = 1e4
_MAX_CLASS_ATTEMPTS = 1000  # per class
_MAX_INSTANCE_ATTEMPTS = 20
_MAX_BUDGET_DRAWS = 100
_CANDIDATE_BLOCK = 4  # class candidates rendered together (the result does not depend on it)
# Distinct stream tags so class sampling, candidate rendering, instance perturbation and
# colours never share random numbers.
_TAG_CLASSES, _TAG_CLASS_RENDER, _TAG_INSTANCE, _TAG_COLOR = 1, 2, 3, 4

# Counts generator runs (a cache hit must leave it unchanged); used by tests.
_GENERATOR_CALLS = 0


class DivergentIFSError(ValueError):
    """Raised by :func:`render_ifs` when the chaos game diverges."""


# ---------------------------------------------------------------------------
# IFS sampling
# ---------------------------------------------------------------------------
def sigma_factor_range(n_maps: int) -> Tuple[float, float]:
    """Anderson and Farrell's range of the sigma factor for ``n_maps`` maps: ``((5+N)/2, (6+N)/2)``."""
    return (5.0 + n_maps) / 2.0, (6.0 + n_maps) / 2.0


def _random_orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 2, 2)`` random orthogonal matrices: uniform rotation, reflection with probability 1/2."""
    theta = rng.uniform(-np.pi, np.pi, n)
    reflect = rng.random(n) < 0.5
    c, s = np.cos(theta), np.sin(theta)
    q = np.empty((n, 2, 2))
    q[:, 0, 0], q[:, 0, 1] = c, -s
    q[:, 1, 0], q[:, 1, 1] = s, c
    q[reflect, :, 1] *= -1.0
    return q


def _sample_singular_values(rng: np.random.Generator, n: int, alpha: float) -> np.ndarray:
    """``(n, 2)`` singular values with ``1 >= s1 >= s2 >= 0`` and ``sum(s1 + 2 s2) == alpha``."""
    if not 0.0 <= alpha <= 3.0 * n:
        raise ValueError(f"sigma factor {alpha} outside [0, {3 * n}] for {n} maps")
    # per-map budgets w_i = s_i1 + 2 s_i2 in [0, 3], summing to alpha: uniform on that set
    # (flat Dirichlet, redrawn while some w_i > 3: at most half the draws in the published band)
    for _ in range(_MAX_BUDGET_DRAWS):
        w = alpha * rng.dirichlet(np.ones(n))
        if np.all(w <= 3.0):
            break
    else:  # alpha close to 3n: bounded stick-breaking in a random order
        w = np.empty(n)
        rest = alpha
        for i in range(n - 1):
            w[i] = rng.uniform(max(0.0, rest - 3.0 * (n - 1 - i)), min(3.0, rest))
            rest -= w[i]
        w[-1] = rest
        w = np.clip(rng.permutation(w), 0.0, 3.0)
    lo = np.maximum(0.0, (w - 1.0) / 2.0)  # s1 = w - 2 s2 <= 1
    hi = w / 3.0                           # s1 >= s2
    s2 = rng.uniform(lo, np.maximum(lo, hi))
    s1 = w - 2.0 * s2
    return np.stack([np.clip(s1, 0.0, 1.0), np.clip(s2, 0.0, 1.0)], axis=1)


def sample_ifs(rng: np.random.Generator, min_maps: int = 2, max_maps: int = 7,
               sampler: str = "sigma_factor") -> np.ndarray:
    """Draw the parameters of a random IFS.

    Args:
        rng: numpy random generator (the only source of randomness).
        min_maps, max_maps: inclusive range of the number of affine maps.
        sampler: ``"sigma_factor"`` (Anderson and Farrell 2022: contractions built from their
            SVD, sigma factor ``sum(s1 + 2 s2)`` uniform in :func:`sigma_factor_range`,
            translations uniform in ``[-1, 1]``) or ``"uniform"`` (FractalDB: all six
            parameters uniform in ``[-1, 1]``).

    Returns:
        ``float64`` array of shape ``(n_maps, 6)``; row ``i`` is ``(a11, a12, a21, a22, b1,
        b2)`` of the map ``x' = [[a11, a12], [a21, a22]] @ x + [b1, b2]``.  Use
        :func:`ifs_probabilities` for the map probabilities.  No rejection is done here; see
        :func:`sample_fractal_classes` for the filling-rate rule.
    """
    if not 1 <= min_maps <= max_maps:
        raise ValueError(f"need 1 <= min_maps <= max_maps, got {min_maps}, {max_maps}")
    if sampler not in _SAMPLERS:
        raise ValueError(f"sampler must be one of {_SAMPLERS}, got {sampler!r}")
    n = int(rng.integers(min_maps, max_maps + 1))
    if sampler == "uniform":
        return rng.uniform(-1.0, 1.0, size=(n, 6))
    lo, hi = sigma_factor_range(n)
    alpha = min(rng.uniform(lo, hi), 3.0 * n)  # (6+N)/2 > 3N only for N = 1
    u, v = _random_orthogonal(rng, n), _random_orthogonal(rng, n)
    s = _sample_singular_values(rng, n, alpha)
    a = (u * s[:, None, :]) @ np.transpose(v, (0, 2, 1))  # U diag(s) V^T
    b = rng.uniform(-1.0, 1.0, size=(n, 2))
    return np.concatenate([a.reshape(n, 4), b], axis=1)


def ifs_probabilities(params: np.ndarray) -> np.ndarray:
    """Map-selection probabilities ``|det A_i| / sum_j |det A_j|`` (uniform if all are ~0)."""
    params = np.asarray(params, dtype=np.float64)
    det = np.abs(params[:, 0] * params[:, 3] - params[:, 1] * params[:, 2])
    total = det.sum()
    if not np.isfinite(total) or total <= 1e-12:
        return np.full(len(params), 1.0 / len(params))
    return det / total


# ---------------------------------------------------------------------------
# Chaos game and rasterisation
# ---------------------------------------------------------------------------
_BURN_IN = 8
_STEPS = 64


def _batch_tables(params_list):
    """Per-map tables of a batch, maps of image ``b`` at ``b * nmax ...``; padded maps get p = 0.

    Returns ``(mats (B, nmax, 6), probs (B, nmax), n_maps (B,))``.
    """
    bsz = len(params_list)
    nmax = max(len(p) for p in params_list)
    mats = np.zeros((bsz, nmax, 6))
    probs = np.zeros((bsz, nmax))
    n_maps = np.empty(bsz, dtype=np.intp)
    for i, p in enumerate(params_list):
        p = np.asarray(p, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 6 or len(p) == 0:
            raise ValueError(f"params must have shape (n_maps, 6), got {p.shape}")
        mats[i, :len(p)] = p
        probs[i, :len(p)] = ifs_probabilities(p)
        n_maps[i] = len(p)
    return mats, probs, n_maps


def _start_points(mats: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``(B,)`` complex start points: the fixed point of each IFS's most probable contraction.

    Such a fixed point lies on the attractor (the attractor is closed and invariant under the
    map, and iterating the map from any of its points converges to the fixed point), so the
    walkers produce no transient points.  The origin when no map contracts.
    """
    a, b, c, d, e, f = np.moveaxis(mats, -1, 0)  # each (B, nmax)
    tr, det = a + d, a * d - b * c
    with np.errstate(all="ignore"):
        disc = tr * tr - 4.0 * det
        root = np.sqrt(np.abs(disc))
        radius = np.where(disc >= 0, np.maximum(np.abs(tr + root), np.abs(tr - root)) / 2.0,
                          np.sqrt(np.abs(det)))  # complex pair: |lambda|^2 = det
        score = np.where(radius < 1.0 - 1e-9, probs, -1.0)
        k = score.argmax(axis=1)
        rows = np.arange(len(mats))
        a, b, c, d, e, f = (v[rows, k] for v in (a, b, c, d, e, f))
        # (I - A) x = t  =>  x = adj(I - A) t / det(I - A)
        den = (1.0 - a) * (1.0 - d) - b * c
        x = ((1.0 - d) * e + b * f) / den
        y = (c * e + (1.0 - a) * f) / den
    ok = (score[rows, k] >= 0) & np.isfinite(x) & np.isfinite(y)
    return np.where(ok, x + 1j * y, 0.0)


def _chaos_game_batch(params_list: Sequence[np.ndarray], num_points: int,
                      rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Run the chaos game for several IFS at once.

    Each IFS ``b`` uses only the random numbers drawn from ``rngs[b]``, so its points do not
    depend on what else is in the batch.  Points are ``complex64`` ``x + iy``; the affine map
    ``(x, y) -> A (x, y) + t`` is ``z -> p z + q conj(z) + r`` with ``p = ((a11 + a22) +
    i (a21 - a12)) / 2``, ``q = ((a11 - a22) + i (a21 + a12)) / 2``, ``r = t1 + i t2``.

    Returns:
        ``(T, B, W)`` ``complex64`` array: step ``t`` of walker ``w`` of IFS ``b``; together
        the ``T * W`` points of an IFS are exactly its first ``num_points`` points in
        step-major order (the unused tail of the last step repeats points of the step before).
        Divergent systems contain non-finite or huge values (see :func:`_bounds`).
    """
    bsz = len(params_list)
    mats, probs, _ = _batch_tables(params_list)
    nmax = mats.shape[1]
    walkers = -(-num_points // _STEPS)  # ceil
    steps = -(-num_points // walkers)   # <= _STEPS
    u = np.empty((bsz, _BURN_IN + steps, walkers))
    for i, rng in enumerate(rngs):
        rng.random(out=u[i])
    # map choice = searchsorted(cumulative probabilities, u, side="right"), all images at once
    cum = np.cumsum(probs, axis=1)[:, :-1]
    choice = np.zeros(u.shape, dtype=np.uint8)
    for j in range(nmax - 1):
        np.add(choice, u >= cum[:, j, None, None], out=choice, casting="unsafe")
    last = np.array([len(p) - 1 for p in params_list], dtype=np.uint8)
    np.minimum(choice, last[:, None, None], out=choice)  # rounding never picks a padded map
    index = choice.transpose(1, 0, 2).astype(np.intp)  # (steps, B, W)
    index += (np.arange(bsz) * nmax)[None, :, None]
    index = index.reshape(_BURN_IN + steps, bsz * walkers)
    a, b, c, d, e, f = mats.reshape(-1, 6).T
    p = (((a + d) + 1j * (c - b)) / 2.0).astype(np.complex64)
    q = (((a - d) + 1j * (c + b)) / 2.0).astype(np.complex64)
    r = (e + 1j * f).astype(np.complex64)
    z = np.repeat(_start_points(mats, probs).astype(np.complex64), walkers)
    zs = np.empty((steps, bsz * walkers), dtype=np.complex64)
    with np.errstate(all="ignore"):
        for t in range(_BURN_IN + steps):
            i = index[t]
            z = p.take(i) * z + q.take(i) * z.conj() + r.take(i)
            if t >= _BURN_IN:
                zs[t - _BURN_IN] = z
    zs = zs.reshape(steps, bsz, walkers)
    used = num_points - (steps - 1) * walkers  # walkers used in the last step
    if used < walkers:
        zs[-1, :, used:] = zs[-2, :, used:]
    return zs


def _bounds(zs: np.ndarray):
    """Per-IFS ``(lo, hi, diverged)``: complex min/max corners of ``(T, B, W)`` points."""
    steps, bsz, walkers = zs.shape
    v = zs.view(np.float32).reshape(steps, bsz, walkers, 2)
    with np.errstate(invalid="ignore"):
        mn = v.min(axis=0).min(axis=1).astype(np.float64)  # (B, 2); NaN propagates
        mx = v.max(axis=0).max(axis=1).astype(np.float64)
        ok = (np.isfinite(mn).all(axis=1) & np.isfinite(mx).all(axis=1)
              & (np.abs(mn) < _DIVERGENCE_LIMIT).all(axis=1)
              & (np.abs(mx) < _DIVERGENCE_LIMIT).all(axis=1))
    return mn[:, 0] + 1j * mn[:, 1], mx[:, 0] + 1j * mx[:, 1], ~ok  # NaN fails the tests


def _occupancy(zs: np.ndarray, lo: np.ndarray, hi: np.ndarray, size: int, pad: float) -> np.ndarray:
    """``(T, B, W)`` finite points -> ``(B, size, size)`` bool, one pixel per point.

    Each axis is scaled on its own so that the min..max range of the points spans the canvas
    minus ``pad`` pixels on each side (FractalDB's rescale); the y axis points up.
    """
    bsz = zs.shape[1]
    itype = np.int32 if bsz * size * size < 2 ** 31 else np.int64
    usable = size - 2.0 * pad
    pix = []
    for v, l, h in ((zs.real, lo.real, hi.real), (zs.imag, lo.imag, hi.imag)):
        scale = (usable / np.maximum(h - l, 1e-12)).astype(np.float32)[None, :, None]
        w = v - l.astype(np.float32)[None, :, None]  # >= 0: l is the minimum of v
        w *= scale
        w += np.float32(pad)
        k = w.astype(itype)  # floor, as the values are >= 0
        np.minimum(k, size - 1, out=k)
        pix.append(k)
    col, row = pix
    # flat index of (image b, row size-1-row, col): ((b + 1) * size - 1 - row) * size + col
    row *= -size
    row += (np.arange(1, bsz + 1, dtype=itype)[None, :, None] * size - 1) * size
    row += col
    occupied = np.zeros(bsz * size * size, dtype=bool)
    occupied[row.reshape(-1)] = True
    return occupied.reshape(bsz, size, size)


def _block_sums(occupied: np.ndarray, s: int) -> np.ndarray:
    """``(B, s*H, s*W)`` bool -> ``(B, H, W)`` ``uint8`` number of True in each ``s x s`` block."""
    bsz, size, _ = occupied.shape
    n = size // s
    o = occupied.view(np.uint8).reshape(bsz * n, s, n, s)
    rows = o[:, 0].copy()
    for i in range(1, s):
        rows += o[:, i]
    out = rows[..., 0].copy()
    for j in range(1, s):
        out += rows[..., j]
    return out.reshape(bsz, n, n)


def _render_batch(params_list, image_size, num_points, rngs, colors, margin, flips, supersample=1):
    """Render several IFS; returns a list of ``uint8 (H, W, 3)`` arrays or ``None`` (divergent).

    The points are plotted one pixel each on a ``supersample * image_size`` canvas; each
    ``supersample x supersample`` block becomes a pixel of intensity (occupied fraction) x colour.
    """
    if not params_list:
        return []
    zs = _chaos_game_batch(params_list, num_points, rngs)
    lo, hi, bad = _bounds(zs)
    result = [None] * len(params_list)
    good = np.flatnonzero(~bad)
    if len(good):
        size = image_size * supersample
        occupied = _occupancy(zs[:, good], lo[good], hi[good], size, margin * size)
        counts = _block_sums(occupied, supersample)
        rgb = np.asarray([colors[i] for i in good], dtype=np.float64) / (supersample * supersample)
        images = np.rint(counts[..., None] * rgb[:, None, None, :]).astype(np.uint8)
        for img, i in zip(images, good):
            result[i] = img[:, ::-1] if flips[i] else img
    return result


def render_ifs(params: np.ndarray, image_size: int, num_points: int,
               rng: np.random.Generator, color: Sequence[int] = (255, 255, 255),
               margin: float = 0.05, flip: bool = False, supersample: int = 1) -> np.ndarray:
    """Render an IFS with the vectorised chaos game.

    ``ceil(num_points / 64)`` walkers start at a point of the attractor (the fixed point of the
    most probable contracting map) and are iterated in parallel for 8 discarded plus up to 64
    recorded steps; at each step each walker applies a map drawn with probability
    :func:`ifs_probabilities`.  ``num_points`` points are scaled per axis so that their
    min..max box spans the canvas minus ``margin`` on each side and plotted one pixel per point
    on a ``supersample * image_size`` canvas; each ``supersample x supersample`` block becomes
    one pixel whose intensity is the occupied fraction of the block times ``color``.  With
    ``supersample=1`` every occupied pixel is exactly ``color``.

    Args:
        params: ``(n_maps, 6)`` array as returned by :func:`sample_ifs`.
        image_size: side of the square image in pixels.
        num_points: number of attractor points plotted.
        rng: numpy generator driving the chaos game (deterministic given it).
        color: RGB colour of fully occupied pixels (background is black).
        margin: fraction of the canvas left empty on each side, in [0, 0.5).
        flip: mirror the image horizontally.
        supersample: render at this many times ``image_size``, then area-average (<= 15).

    Returns:
        ``uint8`` array of shape ``(image_size, image_size, 3)``.

    Raises:
        DivergentIFSError: if the point cloud is non-finite or exceeds 1e4.
    """
    if image_size < 1 or num_points < 1 or not 1 <= supersample <= 15:
        raise ValueError("image_size and num_points must be >= 1, supersample in [1, 15]")
    if not 0.0 <= margin < 0.5:
        raise ValueError(f"margin must be in [0, 0.5), got {margin}")
    (img,) = _render_batch([params], image_size, num_points, [rng], [color], margin, [flip],
                           supersample)
    if img is None:
        raise DivergentIFSError("IFS diverges (points non-finite or > 1e4)")
    return img


def filling_rate(image) -> float:
    """Fraction of pixels that are not black (any channel > 0).

    Accepts a PIL image or an array of shape ``(H, W)`` or ``(H, W, C)``.
    """
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {arr.shape}")
    return float(np.count_nonzero(arr)) / arr.size


def _search_fill_batch(params_list, rngs) -> np.ndarray:
    """FractalDB's search filling rate of several IFS (``nan`` for divergent ones)."""
    zs = _chaos_game_batch(params_list, FRACTALDB_SEARCH_POINTS, rngs)
    lo, hi, bad = _bounds(zs)
    fills = np.full(len(params_list), np.nan)
    good = np.flatnonzero(~bad)
    if len(good):
        occupied = _occupancy(zs[:, good], lo[good], hi[good], FRACTALDB_SEARCH_SIZE,
                              FRACTALDB_SEARCH_PAD)
        fills[good] = np.count_nonzero(occupied.reshape(len(good), -1), axis=1) / occupied[0].size
    return fills


def search_filling_rate(params: np.ndarray, rng: np.random.Generator) -> float:
    """The filling rate FractalDB's category search measures.

    100,000 chaos-game points, min..max box per axis onto 512 x 512 pixels with a 6-pixel pad,
    one pixel per point; returns occupied pixels / all pixels (at most ``100000 / 512**2``,
    about 0.38).  FractalDB keeps a system when this is ``>= 0.2``.

    Raises:
        DivergentIFSError: if the point cloud is non-finite or exceeds 1e4.
    """
    (fill,) = _search_fill_batch([np.asarray(params, dtype=np.float64)], [rng])
    if not np.isfinite(fill):
        raise DivergentIFSError("IFS diverges (points non-finite or > 1e4)")
    return float(fill)


def perturb_ifs(params: np.ndarray, rng: np.random.Generator, perturbation: float = 0.2) -> np.ndarray:
    """FractalDB's instance: one parameter kind (the same in every map) times ``w ~ U[1-p, 1+p]``."""
    out = np.array(params, dtype=np.float64, copy=True)
    if perturbation > 0:
        j = int(rng.integers(6))
        out[:, j] *= rng.uniform(1.0 - perturbation, 1.0 + perturbation)
    return out


def _random_color(rng: np.random.Generator) -> Tuple[int, int, int]:
    h = rng.random()
    s = rng.uniform(0.5, 1.0)
    r, g, b = colorsys.hsv_to_rgb(h, s, 1.0)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


# ---------------------------------------------------------------------------
# Classes and instances
# ---------------------------------------------------------------------------
def _candidate_rng(seed: int, candidate: int) -> np.random.Generator:
    """The chaos-game stream of the search render of candidate number ``candidate``."""
    return np.random.default_rng([seed, _TAG_CLASS_RENDER, candidate])


@functools.lru_cache(maxsize=32)
def _sample_classes_cached(num_classes, seed, min_fill_rate, min_maps, max_maps, sampler):
    """Classes in order: candidate ``j`` is the ``j``-th draw of ``default_rng([seed, 1])``.

    Candidates are rendered a few at a time, but each with its own stream, so which ones are
    kept does not depend on the block size.
    """
    rng = np.random.default_rng([seed, _TAG_CLASSES])
    classes, fills = [], []
    drawn = 0
    limit = _MAX_CLASS_ATTEMPTS * num_classes
    while len(classes) < num_classes:
        if drawn >= limit:
            raise RuntimeError(
                f"found only {len(classes)} of {num_classes} IFS with a search filling rate >= "
                f"{min_fill_rate} in {drawn} draws; lower min_fill_rate")
        block = [sample_ifs(rng, min_maps, max_maps, sampler) for _ in range(_CANDIDATE_BLOCK)]
        block_fills = _search_fill_batch(block, [_candidate_rng(seed, drawn + j)
                                                 for j in range(len(block))])
        drawn += len(block)
        for params, fill in zip(block, block_fills):
            if np.isfinite(fill) and fill >= min_fill_rate and len(classes) < num_classes:
                classes.append(params)
                fills.append(float(fill))
    logger.debug("sampled %d fractal classes in %d draws", num_classes, drawn)
    return tuple(classes), tuple(fills)


def sample_fractal_classes(num_classes: int = 10, image_size: Optional[int] = None,
                           num_points: Optional[int] = None, seed: int = 0,
                           min_fill_rate: float = FRACTALDB_FILL_THRESHOLD, min_maps: int = 2,
                           max_maps: int = 7, margin: Optional[float] = None, *,
                           sampler: str = "sigma_factor", return_fill: bool = False):
    """Draw ``num_classes`` IFS that pass FractalDB's filling-rate rule.

    Candidates come in order from ``np.random.default_rng([seed, 1])`` (see :func:`sample_ifs`
    for ``sampler``); a candidate is kept when its :func:`search_filling_rate` (512 px,
    100,000 points, candidate ``j`` rendered with ``default_rng([seed, 2, j])``) is
    ``>= min_fill_rate``.  The first ``k`` classes do not depend on ``num_classes``.

    ``image_size``, ``num_points`` and ``margin`` are accepted for compatibility and ignored:
    the rule is applied at FractalDB's setting, whatever size the images are rendered at.

    Returns:
        list of ``(n_maps, 6)`` arrays (copies; safe to modify); with ``return_fill=True``
        also the list of their search filling rates.
    """
    del image_size, num_points, margin
    classes, fills = _sample_classes_cached(int(num_classes), int(seed), float(min_fill_rate),
                                            int(min_maps), int(max_maps), str(sampler))
    classes = [p.copy() for p in classes]
    return (classes, list(fills)) if return_fill else classes


def _default_num_points(image_size: int, supersample: int = 4) -> int:
    """FractalDB's points per pixel at the render resolution (6,250 for 32 px at 4x)."""
    return max(1, int(round(FRACTALDB_POINTS_PER_PIXEL * (image_size * supersample) ** 2)))


def _max_singular_values(params: np.ndarray) -> np.ndarray:
    """Largest singular value of each map's linear part (closed form for 2x2)."""
    a = np.asarray(params, dtype=np.float64)[:, :4]
    frob2 = (a * a).sum(axis=1)
    det = a[:, 0] * a[:, 3] - a[:, 1] * a[:, 2]
    return np.sqrt((frob2 + np.sqrt(np.maximum(frob2 * frob2 - 4.0 * det * det, 0.0))) / 2.0)


def _weighted_instance(params, rng, perturbation, contractive):
    """FractalDB's weighting; with ``contractive``, redrawn while it makes a map expand."""
    for _ in range(_MAX_INSTANCE_ATTEMPTS):
        out = perturb_ifs(params, rng, perturbation)
        if not contractive or np.all(_max_singular_values(out) <= 1.0 + 1e-9):
            return out
    return np.array(params, dtype=np.float64, copy=True)


def _render_instances(classes, pairs, *, image_size, num_points, seed, perturbation, flip,
                      color, margin, supersample=1, contractive=True):
    """Render instances ``(class_index, instance_index)`` in one batch.

    Instance ``(c, k)`` depends only on ``(seed, c, k)`` and the knobs: its own generator
    ``default_rng([seed, 3, c, k])`` draws, in order, a colour, a flip coin, the weighting and
    the chaos-game numbers (the same draws whatever ``color`` / ``flip`` say, so those knobs
    never change the shape).  With ``contractive`` (the sigma-factor classes, whose maps all
    contract) a weighting that lifts a map's largest singular value above 1 is redrawn from
    the same generator: an expanding map gives the attractor long sparse tails, and the
    min..max box then shrinks the fractal to a dot.  A divergent weighting is redrawn too.
    """
    rngs, colors, flips, params = [], [], [], []
    for c, k in pairs:
        rng = np.random.default_rng([seed, _TAG_INSTANCE, c, k])
        inst_color = _random_color(rng)
        coin = rng.random() < 0.5
        if color == "gray":
            rgb = (255, 255, 255)
        elif color == "class":
            rgb = _random_color(np.random.default_rng([seed, _TAG_COLOR, c]))
        else:
            rgb = inst_color
        rngs.append(rng)
        colors.append(rgb)
        flips.append(bool(flip) and bool(coin))
        params.append(_weighted_instance(classes[c], rng, perturbation, contractive))
    images = _render_batch(params, image_size, num_points, rngs, colors, margin, flips,
                           supersample)
    for i, img in enumerate(images):
        attempt = 1
        while img is None:
            # rare: redraw this instance's weighting from its own generator
            p = classes[pairs[i][0]]
            if attempt < _MAX_INSTANCE_ATTEMPTS:
                p = _weighted_instance(p, rngs[i], perturbation, contractive)
            # after too many tries, the unweighted class (known to converge)
            (img,) = _render_batch([p], image_size, num_points, [rngs[i]], [colors[i]],
                                   margin, [flips[i]], supersample)
            attempt += 1
        images[i] = img
    return images


_BATCH_SIZE = 64
_BATCH_POINTS = 2_000_000


def _fractal_generator(num_classes, image_size, num_points, seed, min_fill_rate, min_maps,
                       max_maps, margin, perturbation, flip, color, sampler, supersample,
                       instance_start, instance_stop, version) -> Iterator[dict]:
    """Generator handed to ``datasets.Dataset.from_generator`` (scalar kwargs only).

    Rows are instance-major: instance ``k`` of every class, then ``k + 1``...
    """
    global _GENERATOR_CALLS
    _GENERATOR_CALLS += 1
    Image = pil_image()

    classes, _ = _sample_classes_cached(num_classes, seed, min_fill_rate, min_maps, max_maps,
                                        sampler)
    pairs = [(c, k) for k in range(instance_start, instance_stop) for c in range(num_classes)]
    # images rendered together (bounded memory for big images; the pixels do not depend on it)
    batch = max(1, min(_BATCH_SIZE, _BATCH_POINTS // num_points))
    for s in range(0, len(pairs), batch):
        chunk = pairs[s:s + batch]
        images = _render_instances(classes, chunk, image_size=image_size,
                                   num_points=num_points, seed=seed,
                                   perturbation=perturbation, flip=flip, color=color,
                                   margin=margin, supersample=supersample,
                                   contractive=sampler == "sigma_factor")
        for (c, _), img in zip(chunk, images):
            yield {"image": Image.fromarray(img), "label": c}


def pil_image():
    """`PIL.Image`, or an `ImportError` naming the extra that installs it (images are PIL images)."""
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError(
            "kakurenbo_hf.data renders its fractal images as PIL images and needs Pillow: "
            'pip install "kakurenbo_hf[examples]" (or pip install pillow).'
        ) from error
    return Image


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def make_fractal_dataset(
    num_classes: int = 10,
    instances_per_class: int = 100,
    image_size: int = 32,
    num_points: Optional[int] = None,
    seed: int = 0,
    test_instances_per_class: int = 0,
    cache_dir: Optional[str] = None,
    *,
    min_fill_rate: float = FRACTALDB_FILL_THRESHOLD,
    min_maps: int = 2,
    max_maps: int = 7,
    perturbation: float = 0.2,
    flip: bool = False,
    color: str = "gray",
    margin: float = 0.05,
    sampler: str = "sigma_factor",
    supersample: int = 4,
    keep_in_memory: bool = False,
):
    """Build (or load from cache) a FractalDB-style classification data set.

    Args:
        num_classes: number of IFS classes (>= 1).
        instances_per_class: training images per class (>= 1).
        image_size: side of the square RGB images in pixels (>= 8).
        num_points: chaos-game points per image; ``None`` means FractalDB's density,
            ``round(100000 / 512**2 * (supersample * image_size)**2)``.
        seed: everything (classes, instances, colours) is a function of it.
        test_instances_per_class: if ``> 0`` return a ``DatasetDict`` with a ``"test"`` split
            made of further, disjoint instances of the same classes; if ``0`` return a single
            ``Dataset``.
        cache_dir: ``datasets`` cache directory (``None``: the default one).
        min_fill_rate: FractalDB's search threshold (512 px, 100,000 points) for accepting a
            class, in ``[0, 0.38]`` (0.38 is the most 100,000 points can fill).
        min_maps, max_maps: range of the number of affine maps per IFS.
        perturbation: instance weight range ``[1 - p, 1 + p]``, in [0, 1).
        flip: randomly mirror half of the instances horizontally.
        color: ``"gray"`` (white on black), ``"class"`` (one colour per class) or
            ``"instance"`` (random colour per image).
        margin: empty border, as a fraction of the canvas, in [0, 0.5).
        sampler: ``"sigma_factor"`` (Anderson and Farrell 2022) or ``"uniform"`` (FractalDB).
        supersample: render at this many times ``image_size`` and area-average (>= 1; 1 gives
            binary images).
        keep_in_memory: passed to ``Dataset.from_generator``.

    Returns:
        ``datasets.Dataset`` with columns ``image`` (``Image()``, decoded to an RGB
        ``PIL.Image``) and ``label`` (``ClassLabel`` named ``fractal_000``, ...), rows ordered
        instance-major (labels cycle 0..C-1); or a ``DatasetDict`` with ``"train"`` /
        ``"test"`` when ``test_instances_per_class > 0``.
    """
    import datasets

    num_classes = _check_int("num_classes", num_classes, 1)
    instances_per_class = _check_int("instances_per_class", instances_per_class, 1)
    image_size = _check_int("image_size", image_size, 8)
    seed = _check_int("seed", seed, 0)
    test_instances_per_class = _check_int("test_instances_per_class", test_instances_per_class, 0)
    min_maps = _check_int("min_maps", min_maps, 1)
    max_maps = _check_int("max_maps", max_maps, 1)
    if min_maps > max_maps:
        raise ValueError(f"min_maps ({min_maps}) must be <= max_maps ({max_maps})")
    supersample = _check_int("supersample", supersample, 1)
    if supersample > 15:
        raise ValueError(f"supersample must be <= 15, got {supersample}")
    if num_points is None:
        num_points = _default_num_points(image_size, supersample)
    num_points = _check_int("num_points", num_points, 1)
    if not 0.0 <= float(min_fill_rate) <= FRACTALDB_POINTS_PER_PIXEL:
        raise ValueError(f"min_fill_rate must be in [0, {FRACTALDB_POINTS_PER_PIXEL:.3f}] (the most "
                         f"100,000 points can fill of 512 x 512 pixels), got {min_fill_rate}")
    if not 0.0 <= float(perturbation) < 1.0:
        raise ValueError(f"perturbation must be in [0, 1), got {perturbation}")
    if not 0.0 <= float(margin) < 0.5:
        raise ValueError(f"margin must be in [0, 0.5), got {margin}")
    if color not in _COLOR_MODES:
        raise ValueError(f"color must be one of {_COLOR_MODES}, got {color!r}")
    if sampler not in _SAMPLERS:
        raise ValueError(f"sampler must be one of {_SAMPLERS}, got {sampler!r}")

    common = dict(num_classes=num_classes, image_size=image_size, num_points=num_points,
                  seed=seed, min_fill_rate=float(min_fill_rate), min_maps=min_maps,
                  max_maps=max_maps, margin=float(margin), perturbation=float(perturbation),
                  flip=bool(flip), color=color, sampler=sampler, supersample=supersample,
                  version=FRACTAL_DATA_VERSION)
    features = datasets.Features({
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=[f"fractal_{c:03d}" for c in range(num_classes)]),
    })

    def build(split: str, start: int, stop: int):
        gen_kwargs = dict(common, instance_start=start, instance_stop=stop)
        fingerprint = hashlib.sha256(
            json.dumps(dict(gen_kwargs, split=split), sort_keys=True).encode()).hexdigest()[:32]
        return datasets.Dataset.from_generator(
            _fractal_generator, features=features, cache_dir=cache_dir,
            keep_in_memory=keep_in_memory, gen_kwargs=gen_kwargs, split=split,
            fingerprint=fingerprint)

    train = build("train", 0, instances_per_class)
    if test_instances_per_class == 0:
        return train
    test = build("test", instances_per_class, instances_per_class + test_instances_per_class)
    return datasets.DatasetDict({"train": train, "test": test})
