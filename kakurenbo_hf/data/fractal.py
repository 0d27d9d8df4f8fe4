"""FractalDB-style formula-driven image classification data sets.

FractalDB (Kataoka et al., "Pre-training without Natural Images", ACCV 2020;
Nakashima et al., "Can Vision Transformers Learn without Natural Images?" /
"Pre-training Vision Transformers with Formula-driven Supervised Learning")
replaces natural photos by images of fractals.  Every *class* is an iterated
function system (IFS): a small set of random affine maps ``x' = A x + b``.
Every *instance* of the class is the same IFS with slightly perturbed
parameters.  No download and no labelling are needed, and the labels are
exactly known, which makes it a convenient data set for smoke-testing and
fine-tuning tiny ViT / DeiT models on CPU.

The rule implemented here
-------------------------
* **Class = IFS.**  Draw ``N`` maps, ``N`` uniform in ``[min_maps, max_maps]``
  (default 2..8).  Each map has six parameters ``(a11, a12, a21, a22, b1, b2)``
  drawn uniformly from ``[-1, 1]``.  Map ``i`` is chosen with probability
  ``|det A_i| / sum_j |det A_j|`` (FractalDB's rule).
* **Rejection.**  A candidate IFS is rendered; it is discarded (and the next
  parameters are drawn from the same seeded generator) when its point cloud
  diverges (non-finite or ``|x| > 1e4``) or when its *filling rate* (fraction
  of non-zero pixels of the rendered image) is below ``min_fill_rate``.
  FractalDB uses this rule to drop degenerate (line- or point-like) systems.
  Default ``min_fill_rate=0.1``, measured on the data set's own render
  (``image_size`` px, ``num_points`` points): at 32 px it rejects the
  line- and dot-like attractors, about 5 % of the draws (median fill of a
  draw is about 0.4).  Raise it (e.g. 0.3) for bulkier fractals.
* **Instances.**  Instance ``k`` of class ``c`` is derived from a generator
  seeded with ``(seed, c, k)``: one randomly chosen parameter of one randomly
  chosen map is multiplied by a weight ``w ~ U[1 - perturbation,
  1 + perturbation]`` (default ``perturbation=0.2``, i.e. FractalDB's
  ``[0.8, 1.2]``), optionally followed by a horizontal flip (``flip=False``
  by default) and, with ``color="instance"``, a random colour.
* **Rendering** is the chaos game, vectorised with numpy: ``ceil(num_points
  / 16)`` walkers are iterated in parallel (map chosen per walker per step by
  a cumulative-probability search), 20 burn-in steps are discarded and 16
  are recorded; many images are rendered in one batch, each from its own
  random stream.  Each axis of the point cloud is rescaled so that its
  1 %..99 % quantile box fills the canvas minus a margin (points outside are
  dropped: random maps with entries in [-1, 1] are often expanding, so the
  attractors have long sparse tails that would otherwise shrink the fractal
  to a dot), then rasterised with ``np.bincount``.  Occupied pixels get the
  chosen colour (white for ``color="gray"``) on black; images are ``uint8``
  ``(H, W, 3)``.

Knobs of :func:`make_fractal_dataset` (defaults)
------------------------------------------------
``num_classes=10``, ``instances_per_class=100``, ``image_size=32``,
``num_points=None`` (``max(2000, 4 * image_size**2)``: 4096 at 32 px),
``seed=0``, ``test_instances_per_class=0`` (``> 0`` returns a ``DatasetDict``
with ``"train"`` and ``"test"``), ``min_fill_rate=0.1``, ``min_maps=2``,
``max_maps=8``, ``perturbation=0.2``, ``flip=False``, ``color="gray"``
(``"gray"``, ``"class"``: one colour per class (makes colour a label cue),
``"instance"``: a random colour per image), ``margin=0.05`` (fraction of the
canvas kept empty on each side), ``cache_dir=None`` (``datasets`` default
cache).

Cost
----
Measured on the 2-core development machine (shared CPU, quiet): building
10 classes x 100 images at 32 px takes about 1 s, 10 x 200 train + 10 x 50
test about 2.5-3 s (rendering 2000 images alone: 1.6 s; the rest is PNG
encoding and Arrow writing); 2-3x longer when the machine is busy.  A second
call with the same arguments loads from the ``datasets`` cache in ~0.01 s.

Separability: with the defaults a nearest-centroid classifier on raw
grayscale pixels (10 classes, 200 train / 50 test per class, seeds 0-4)
reaches 99-100 % test accuracy (chance: 10 %); 97-100 % with ``flip=True``
and 94-99 % with ``color="instance"``.  A tiny ViT/DeiT fine-tuned on it
should therefore converge quickly on CPU.

Caching
-------
The data set is built with ``datasets.Dataset.from_generator`` and an explicit
``fingerprint`` (a hash of every argument that affects the pixels plus
:data:`FRACTAL_DATA_VERSION`), so a second call with the same arguments and
``cache_dir`` loads the Arrow files from the cache without re-running the
generator.  Bump :data:`FRACTAL_DATA_VERSION` when the rendering changes.
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
    "DivergentIFSError",
    "sample_ifs",
    "ifs_probabilities",
    "render_ifs",
    "filling_rate",
    "perturb_ifs",
    "sample_fractal_classes",
    "make_fractal_dataset",
]

#: Part of the cache fingerprint; bump whenever generated pixels change.
FRACTAL_DATA_VERSION = "fractal-v1"

_COLOR_MODES = ("gray", "class", "instance")
_DIVERGENCE_LIMIT = 1e4
_MAX_CLASS_ATTEMPTS = 1000  # per class
_MAX_INSTANCE_ATTEMPTS = 20
# Distinct stream tags so class sampling, instance perturbation and rendering
# never share random numbers.
_TAG_CLASSES, _TAG_CLASS_RENDER, _TAG_INSTANCE, _TAG_COLOR = 1, 2, 3, 4

# Counts generator runs (a cache hit must leave it unchanged); used by tests.
_GENERATOR_CALLS = 0


class DivergentIFSError(ValueError):
    """Raised by :func:`render_ifs` when the chaos game diverges."""


# ---------------------------------------------------------------------------
# IFS sampling
# ---------------------------------------------------------------------------
def sample_ifs(rng: np.random.Generator, min_maps: int = 2, max_maps: int = 8) -> np.ndarray:
    """Draw the parameters of a random IFS, as FractalDB does.

    Args:
        rng: numpy random generator (the only source of randomness).
        min_maps, max_maps: inclusive range of the number of affine maps.

    Returns:
        ``float64`` array of shape ``(n_maps, 6)``; row ``i`` is
        ``(a11, a12, a21, a22, b1, b2)`` of the map
        ``x' = [[a11, a12], [a21, a22]] @ x + [b1, b2]``, every entry uniform
        in ``[-1, 1]``.  Use :func:`ifs_probabilities` for the map
        probabilities (proportional to ``|det A|``).  No rejection is done
        here; see :func:`sample_fractal_classes` for the filling-rate rule.
    """
    if not 1 <= min_maps <= max_maps:
        raise ValueError(f"need 1 <= min_maps <= max_maps, got {min_maps}, {max_maps}")
    n = int(rng.integers(min_maps, max_maps + 1))
    return rng.uniform(-1.0, 1.0, size=(n, 6))


def ifs_probabilities(params: np.ndarray) -> np.ndarray:
    """Map-selection probabilities ``|det A_i| / sum_j |det A_j|`` (uniform if all are ~0)."""
    params = np.asarray(params, dtype=np.float64)
    det = np.abs(params[:, 0] * params[:, 3] - params[:, 1] * params[:, 2])
    total = det.sum()
    if not np.isfinite(total) or total <= 1e-12:
        return np.full(len(params), 1.0 / len(params))
    return det / total


_BURN_IN = 20
_STEPS = 16
_CLIP_QUANTILE = 0.01


def _draw_chaos_randomness(rng: np.random.Generator, num_points: int):
    """Per-image random numbers of the chaos game: start points and map choices."""
    walkers = -(-num_points // _STEPS)  # ceil
    x0 = rng.uniform(-1.0, 1.0, size=(2, walkers))
    u = rng.random((_BURN_IN + _STEPS, walkers))
    return x0, u


def _chaos_game_batch(params_list: Sequence[np.ndarray], num_points: int,
                      rngs: Sequence[np.random.Generator]) -> Tuple[np.ndarray, np.ndarray]:
    """Run the chaos game for several IFS at once.

    Each IFS ``b`` uses only the random numbers drawn from ``rngs[b]``, so its
    points do not depend on what else is in the batch.

    Returns:
        ``(xs, ys)``, each of shape ``(B, P)`` with ``P = 16 * ceil(num_points
        / 16)`` points per IFS; rows of divergent systems contain non-finite
        or huge values (see :func:`_diverged`).
    """
    bsz = len(params_list)
    nmax = max(len(p) for p in params_list)
    mats = np.zeros((bsz, nmax, 6))
    starts, choices = [], []
    for i, (p, rng) in enumerate(zip(params_list, rngs)):
        p = np.asarray(p, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 6 or len(p) == 0:
            raise ValueError(f"params must have shape (n_maps, 6), got {p.shape}")
        mats[i, :len(p)] = p
        cum = np.cumsum(ifs_probabilities(p))[:-1]  # last map takes the rest
        x0, u = _draw_chaos_randomness(rng, num_points)
        starts.append(x0)
        choices.append(np.searchsorted(cum, u, side="right") + i * nmax)
    walkers = starts[0].shape[1]
    x = np.concatenate(starts, axis=1)                # (2, B*W)
    index = np.concatenate(choices, axis=1)           # (T, B*W) global map index
    coef = np.ascontiguousarray(mats.reshape(-1, 6).T)  # (6, B*nmax)
    xs = np.empty((_STEPS, bsz * walkers))
    ys = np.empty((_STEPS, bsz * walkers))
    px, py = x[0], x[1]
    with np.errstate(all="ignore"):
        for t in range(_BURN_IN + _STEPS):
            m = coef[:, index[t]]                     # (6, B*W)
            px, py = m[0] * px + m[1] * py + m[4], m[2] * px + m[3] * py + m[5]
            if t >= _BURN_IN:
                xs[t - _BURN_IN] = px
                ys[t - _BURN_IN] = py

    def per_image(a):  # (T, B*W) -> (B, T*W)
        return a.reshape(_STEPS, bsz, walkers).transpose(1, 0, 2).reshape(bsz, -1)

    return per_image(xs), per_image(ys)


def _diverged(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """``(B,)`` bool: point cloud non-finite or beyond the divergence limit."""
    with np.errstate(invalid="ignore"):
        ok = (np.abs(xs) < _DIVERGENCE_LIMIT).all(axis=1) & (np.abs(ys) < _DIVERGENCE_LIMIT).all(axis=1)
    return ~ok  # NaN compares False, so it counts as divergent


def _rasterise(xs: np.ndarray, ys: np.ndarray, image_size: int, margin: float,
               clip_quantile: float = _CLIP_QUANTILE) -> np.ndarray:
    """``(B, P)`` finite coordinates -> ``(B, H, W)`` bool occupancy masks.

    Each axis is rescaled independently so that its ``[q, 1 - q]`` quantile
    range (``q = clip_quantile``; ``0`` means min..max) maps onto
    ``[margin, 1 - margin]`` of the canvas; points outside are dropped.  The
    quantile box keeps a few far-flung points of a heavy-tailed attractor from
    shrinking the fractal to a dot.
    """
    bsz = xs.shape[0]
    usable = image_size * (1.0 - 2.0 * margin)
    inside = np.ones(xs.shape, dtype=bool)
    pix = []
    for v in (xs, ys):
        if clip_quantile > 0:
            lo, hi = np.quantile(v, [clip_quantile, 1.0 - clip_quantile], axis=1)
            lo, hi = lo[:, None], hi[:, None]
            inside &= (v >= lo) & (v <= hi)
        else:
            lo, hi = v.min(axis=1, keepdims=True), v.max(axis=1, keepdims=True)
        extent = np.maximum(hi - lo, 1e-12)
        p = np.floor((v - lo) * (usable / extent) + image_size * margin).astype(np.int64)
        pix.append(np.clip(p, 0, image_size - 1))
    col, row = pix[0], image_size - 1 - pix[1]  # y axis points up
    flat = (np.arange(bsz)[:, None] * image_size + row) * image_size + col
    counts = np.bincount(flat[inside], minlength=bsz * image_size * image_size)
    return (counts > 0).reshape(bsz, image_size, image_size)


def _render_batch(params_list, image_size, num_points, rngs, colors, margin, flips):
    """Render several IFS; returns a list of ``uint8 (H, W, 3)`` arrays or ``None`` (divergent)."""
    if not params_list:
        return []
    xs, ys = _chaos_game_batch(params_list, num_points, rngs)
    bad = _diverged(xs, ys)
    result = [None] * len(params_list)
    good = np.flatnonzero(~bad)
    if len(good):
        masks = _rasterise(xs[good], ys[good], image_size, margin)
        for mask, i in zip(masks, good):
            if flips[i]:
                mask = mask[:, ::-1]
            img = np.zeros((image_size, image_size, 3), dtype=np.uint8)
            img[mask] = np.asarray(colors[i], dtype=np.uint8)
            result[i] = img
    return result


def render_ifs(params: np.ndarray, image_size: int, num_points: int,
               rng: np.random.Generator, color: Sequence[int] = (255, 255, 255),
               margin: float = 0.05, flip: bool = False) -> np.ndarray:
    """Render an IFS with the vectorised chaos game.

    ``ceil(num_points / 16)`` walkers start uniformly in ``[-1, 1]^2`` and are
    iterated in parallel for 20 burn-in steps (discarded) plus 16 recorded
    steps; at each step each walker applies a map drawn with probability
    :func:`ifs_probabilities`.  Each axis is rescaled so that the 1 %..99 %
    quantile range of the points spans the canvas minus ``margin`` on each
    side (points outside are dropped), then the points are rasterised with
    ``np.bincount``; occupied pixels get ``color``.

    Args:
        params: ``(n_maps, 6)`` array as returned by :func:`sample_ifs`.
        image_size: side of the square canvas in pixels.
        num_points: number of attractor points plotted (after burn-in).
        rng: numpy generator driving the chaos game (deterministic given it).
        color: RGB colour of the occupied pixels (background is black).
        margin: fraction of the canvas left empty on each side, in [0, 0.5).
        flip: mirror the image horizontally.

    Returns:
        ``uint8`` array of shape ``(image_size, image_size, 3)``.

    Raises:
        DivergentIFSError: if the point cloud is non-finite or exceeds 1e4.
    """
    if image_size < 1 or num_points < 1:
        raise ValueError("image_size and num_points must be >= 1")
    if not 0.0 <= margin < 0.5:
        raise ValueError(f"margin must be in [0, 0.5), got {margin}")
    (img,) = _render_batch([params], image_size, num_points, [rng], [color], margin, [flip])
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


def perturb_ifs(params: np.ndarray, rng: np.random.Generator, perturbation: float = 0.2) -> np.ndarray:
    """FractalDB-style instance: scale one parameter of one map by ``w ~ U[1-p, 1+p]``."""
    out = np.array(params, dtype=np.float64, copy=True)
    if perturbation > 0:
        i = int(rng.integers(len(out)))
        j = int(rng.integers(6))
        out[i, j] *= rng.uniform(1.0 - perturbation, 1.0 + perturbation)
    return out


def _random_color(rng: np.random.Generator) -> Tuple[int, int, int]:
    h = rng.random()
    s = rng.uniform(0.5, 1.0)
    r, g, b = colorsys.hsv_to_rgb(h, s, 1.0)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


# ---------------------------------------------------------------------------
# Classes and instances
# ---------------------------------------------------------------------------
def _canonical_render(params, class_index, image_size, num_points, seed, margin):
    """The render the filling-rate rule is applied to (rng fixed by seed and class)."""
    rng = np.random.default_rng([seed, _TAG_CLASS_RENDER, class_index])
    return render_ifs(params, image_size, num_points, rng, margin=margin)


@functools.lru_cache(maxsize=32)
def _sample_classes_cached(num_classes, image_size, num_points, seed, min_fill_rate,
                           min_maps, max_maps, margin):
    rng = np.random.default_rng([seed, _TAG_CLASSES])
    classes = []
    attempts = 0
    for c in range(num_classes):
        for _ in range(_MAX_CLASS_ATTEMPTS):
            attempts += 1
            params = sample_ifs(rng, min_maps, max_maps)
            try:
                img = _canonical_render(params, c, image_size, num_points, seed, margin)
            except DivergentIFSError:
                continue
            if filling_rate(img) >= min_fill_rate:
                classes.append(params)
                break
        else:
            raise RuntimeError(
                f"could not find an IFS for class {c} with filling rate >= {min_fill_rate} "
                f"in {_MAX_CLASS_ATTEMPTS} draws; lower min_fill_rate or raise num_points")
    logger.debug("sampled %d fractal classes in %d draws", num_classes, attempts)
    return tuple(classes)


def sample_fractal_classes(num_classes: int = 10, image_size: int = 32,
                           num_points: Optional[int] = None, seed: int = 0,
                           min_fill_rate: float = 0.1, min_maps: int = 2,
                           max_maps: int = 8, margin: float = 0.05):
    """Draw ``num_classes`` IFS that pass the divergence and filling-rate rules.

    Candidates come in order from ``np.random.default_rng([seed, 1])``; a
    candidate is kept when its render at ``image_size`` with ``num_points``
    points (its *canonical render*) has ``filling_rate >= min_fill_rate``.

    Returns:
        list of ``(n_maps, 6)`` arrays (copies; safe to modify).
    """
    num_points = _default_num_points(image_size) if num_points is None else int(num_points)
    return [p.copy() for p in _sample_classes_cached(
        int(num_classes), int(image_size), num_points, int(seed), float(min_fill_rate),
        int(min_maps), int(max_maps), float(margin))]


def _default_num_points(image_size: int) -> int:
    return max(2000, 4 * image_size * image_size)


def _render_instances(classes, pairs, *, image_size, num_points, seed, perturbation, flip,
                      color, margin):
    """Render instances ``(class_index, instance_index)`` in one batch.

    Instance ``(c, k)`` depends only on ``(seed, c, k)`` and the knobs: its own
    generator ``default_rng([seed, 3, c, k])`` draws, in order, a colour, a
    flip coin, the perturbation and the chaos-game numbers (the same draws
    whatever ``color`` / ``flip`` say, so those knobs never change the shape).
    A divergent perturbation is redrawn from the same generator.
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
        params.append(perturb_ifs(classes[c], rng, perturbation))
    images = _render_batch(params, image_size, num_points, rngs, colors, margin, flips)
    for i, img in enumerate(images):
        attempt = 1
        while img is None:
            # rare: redraw this instance's perturbation from its own generator
            p = classes[pairs[i][0]]
            if attempt < _MAX_INSTANCE_ATTEMPTS:
                p = perturb_ifs(p, rngs[i], perturbation)
            # after too many tries, the unperturbed class (known to converge)
            (img,) = _render_batch([p], image_size, num_points, [rngs[i]], [colors[i]],
                                   margin, [flips[i]])
            attempt += 1
        images[i] = img
    return images


_BATCH_SIZE = 64


def _fractal_generator(num_classes, image_size, num_points, seed, min_fill_rate, min_maps,
                       max_maps, margin, perturbation, flip, color, instance_start,
                       instance_stop, version) -> Iterator[dict]:
    """Generator handed to ``datasets.Dataset.from_generator`` (scalar kwargs only).

    Rows are instance-major: instance ``k`` of every class, then ``k + 1``...
    """
    global _GENERATOR_CALLS
    _GENERATOR_CALLS += 1
    from PIL import Image

    classes = _sample_classes_cached(num_classes, image_size, num_points, seed, min_fill_rate,
                                     min_maps, max_maps, margin)
    pairs = [(c, k) for k in range(instance_start, instance_stop) for c in range(num_classes)]
    for s in range(0, len(pairs), _BATCH_SIZE):
        chunk = pairs[s:s + _BATCH_SIZE]
        images = _render_instances(classes, chunk, image_size=image_size,
                                   num_points=num_points, seed=seed,
                                   perturbation=perturbation, flip=flip, color=color,
                                   margin=margin)
        for (c, _), img in zip(chunk, images):
            yield {"image": Image.fromarray(img), "label": c}


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
    min_fill_rate: float = 0.1,
    min_maps: int = 2,
    max_maps: int = 8,
    perturbation: float = 0.2,
    flip: bool = False,
    color: str = "gray",
    margin: float = 0.05,
    keep_in_memory: bool = False,
):
    """Build (or load from cache) a FractalDB-style classification data set.

    Args:
        num_classes: number of IFS classes (>= 1).
        instances_per_class: training images per class (>= 1).
        image_size: side of the square RGB images in pixels (>= 8).
        num_points: chaos-game points per image; ``None`` means
            ``max(2000, 4 * image_size**2)``.
        seed: everything (classes, instances, colours) is a function of it.
        test_instances_per_class: if ``> 0`` return a ``DatasetDict`` with a
            ``"test"`` split made of further, disjoint instances of the same
            classes; if ``0`` return a single ``Dataset``.
        cache_dir: ``datasets`` cache directory (``None``: the default one).
        min_fill_rate: filling-rate threshold for accepting a class, in [0, 1).
        min_maps, max_maps: range of the number of affine maps per IFS.
        perturbation: instance weight range ``[1 - p, 1 + p]``, in [0, 1).
        flip: randomly mirror half of the instances horizontally.
        color: ``"gray"`` (white on black), ``"class"`` (one colour per class)
            or ``"instance"`` (random colour per image).
        margin: empty border, as a fraction of the canvas, in [0, 0.5).
        keep_in_memory: passed to ``Dataset.from_generator``.

    Returns:
        ``datasets.Dataset`` with columns ``image`` (``Image()``, decoded to an
        RGB ``PIL.Image``) and ``label`` (``ClassLabel`` named ``fractal_000``,
        ...), rows ordered instance-major (labels cycle 0..C-1); or a
        ``DatasetDict`` with ``"train"`` / ``"test"`` when
        ``test_instances_per_class > 0``.
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
    if num_points is None:
        num_points = _default_num_points(image_size)
    num_points = _check_int("num_points", num_points, 1)
    if not 0.0 <= float(min_fill_rate) < 1.0:
        raise ValueError(f"min_fill_rate must be in [0, 1), got {min_fill_rate}")
    if not 0.0 <= float(perturbation) < 1.0:
        raise ValueError(f"perturbation must be in [0, 1), got {perturbation}")
    if not 0.0 <= float(margin) < 0.5:
        raise ValueError(f"margin must be in [0, 0.5), got {margin}")
    if color not in _COLOR_MODES:
        raise ValueError(f"color must be one of {_COLOR_MODES}, got {color!r}")

    common = dict(num_classes=num_classes, image_size=image_size, num_points=num_points,
                  seed=seed, min_fill_rate=float(min_fill_rate), min_maps=min_maps,
                  max_maps=max_maps, margin=float(margin), perturbation=float(perturbation),
                  flip=bool(flip), color=color, version=FRACTAL_DATA_VERSION)
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
