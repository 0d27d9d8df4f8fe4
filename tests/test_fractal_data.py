"""Tests for kakurenbo_hf.data.fractal (FractalDB-style data sets)."""

import time

import datasets
import numpy as np
import pytest
from PIL import Image

from kakurenbo_hf.data import fractal as F
from kakurenbo_hf.data import (
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
from kakurenbo_hf.data.grid import dataset_images, fill_stats, grid_image

datasets.disable_progress_bars()

SIERPINSKI = np.array([[0.5, 0, 0, 0.5, 0.0, 0.0],
                       [0.5, 0, 0, 0.5, 0.5, 0.0],
                       [0.5, 0, 0, 0.5, 0.25, 0.5]])
# four half-scale copies tiling the unit square: the attractor is the whole square
SQUARE = np.array([[0.5, 0, 0, 0.5, 0.0, 0.0],
                   [0.5, 0, 0, 0.5, 0.5, 0.0],
                   [0.5, 0, 0, 0.5, 0.0, 0.5],
                   [0.5, 0, 0, 0.5, 0.5, 0.5]])


def _pixels(ds):
    return np.stack([np.asarray(img) for img in ds["image"]])


def _singular_values(params):
    return np.linalg.svd(params[:, :4].reshape(-1, 2, 2), compute_uv=False)


def _box_dimension(params, n=1_000_000):
    """Box-counting dimension of the attractor between 128 and 256 boxes per side."""
    zs = F._chaos_game_batch([params], n, [np.random.default_rng(0)])
    lo, hi, bad = F._bounds(zs)
    assert not bad[0]
    n128, n256 = (F._occupancy(zs, lo, hi, s, 0.0).sum() for s in (128, 256))
    return float(np.log2(n256 / n128))


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    """10 classes x 60 train + 20 test instances at 32 px (built once)."""
    cache = tmp_path_factory.mktemp("fractal_cache")
    return make_fractal_dataset(num_classes=10, instances_per_class=60, image_size=32, seed=0,
                                test_instances_per_class=20, cache_dir=str(cache))


# --------------------------------------------------------------------------- IFS sampling
def test_sigma_factor_sampling_follows_the_published_rule():
    """Anderson & Farrell: contractions, sum(s1 + 2 s2) in [(5+N)/2, (6+N)/2], b in [-1, 1]."""
    rng = np.random.default_rng(0)
    sizes = set()
    for _ in range(300):
        p = sample_ifs(rng)
        n = len(p)
        sizes.add(n)
        assert p.shape == (n, 6)
        s = _singular_values(p)
        assert np.all(s <= 1 + 1e-9) and np.all(s >= 0)
        lo, hi = sigma_factor_range(n)
        alpha = float((s[:, 0] + 2 * s[:, 1]).sum())
        assert lo - 1e-9 <= alpha <= hi + 1e-9
        assert np.all(np.abs(p[:, 4:]) <= 1)
    assert sizes == set(range(2, 8))  # FractalDB's randint(2, 8)
    assert sigma_factor_range(2) == (3.5, 4.0) and sigma_factor_range(7) == (6.0, 6.5)
    assert len(sample_ifs(np.random.default_rng(1), min_maps=3, max_maps=3)) == 3
    with pytest.raises(ValueError):
        sample_ifs(rng, min_maps=4, max_maps=3)
    with pytest.raises(ValueError):
        sample_ifs(rng, sampler="gaussian")


def test_singular_values_meet_their_constraints_exactly():
    rng = np.random.default_rng(5)
    for n in range(1, 9):
        for alpha in np.linspace(0.0, 3.0 * n, 7):
            s = F._sample_singular_values(rng, n, alpha)
            assert s.shape == (n, 2)
            assert np.all(s[:, 0] <= 1 + 1e-12) and np.all(s[:, 0] >= s[:, 1] - 1e-12)
            assert np.all(s[:, 1] >= 0)
            assert (s[:, 0] + 2 * s[:, 1]).sum() == pytest.approx(alpha, abs=1e-9)


def test_uniform_sampler_is_fractaldbs_draw():
    rng = np.random.default_rng(0)
    draws = [sample_ifs(rng, sampler="uniform") for _ in range(200)]
    assert {len(p) for p in draws} == set(range(2, 8))
    allp = np.concatenate(draws)
    assert np.all(np.abs(allp) <= 1) and allp.min() < -0.95 and allp.max() > 0.95
    # unlike the sigma-factor maps, many of these maps expand
    assert np.mean(_singular_values(allp)[:, 0] > 1) > 0.2


def test_ifs_probabilities_follow_abs_det():
    params = np.array([[1.0, 0, 0, 0.5, 0, 0],      # det 0.5
                       [0, 1.0, 1.0, 0, 0, 0],      # det -1
                       [0.5, 0, 0, 1.0, 0.3, 0.3]])  # det 0.5
    np.testing.assert_allclose(ifs_probabilities(params), [0.25, 0.5, 0.25])
    degenerate = np.zeros((4, 6))
    np.testing.assert_allclose(ifs_probabilities(degenerate), [0.25] * 4)


def test_chaos_game_picks_maps_with_their_probabilities():
    """Three maps, each to its own third of the plane: the points split like p = |det|."""
    params = np.array([[0.1, 0, 0, 0.1, -10.0, 0],   # det 0.01
                       [0.2, 0, 0, 0.1, 0.0, 0],     # det 0.02
                       [0.1, 0, 0, 0.1, 10.0, 0]])   # det 0.01
    zs = F._chaos_game_batch([params], 40_000, [np.random.default_rng(0)])
    x = zs.real.ravel()
    share = [np.mean(x < -5), np.mean(np.abs(x) < 5), np.mean(x > 5)]
    np.testing.assert_allclose(share, [0.25, 0.5, 0.25], atol=0.01)


def test_perturbation_is_fractaldbs_weighting():
    """One parameter kind, the same in every map, times w in [1 - p, 1 + p]."""
    base = sample_ifs(np.random.default_rng(3), min_maps=5, max_maps=5)
    kinds = set()
    for k in range(100):
        out = perturb_ifs(base, np.random.default_rng(k), 0.2)
        changed = np.flatnonzero(~np.isclose(out, base).all(axis=0))
        assert len(changed) == 1
        j = changed[0]
        kinds.add(j)
        w = out[:, j] / base[:, j]
        assert np.allclose(w, w[0]) and 0.8 <= w[0] <= 1.2
        np.testing.assert_array_equal(np.delete(out, j, axis=1), np.delete(base, j, axis=1))
    assert kinds == set(range(6))
    np.testing.assert_array_equal(perturb_ifs(base, np.random.default_rng(0), 0.0), base)


# --------------------------------------------------------------------------- rendering
def test_filling_rate_exact():
    img = np.zeros((10, 10, 3), dtype=np.uint8)
    img[0, :7, 0] = 1          # 7 pixels, red channel only
    img[5, 5] = 255            # 1 pixel, all channels
    assert filling_rate(img) == pytest.approx(0.08)
    assert filling_rate(img[..., 1]) == pytest.approx(0.01)
    assert filling_rate(Image.fromarray(img)) == pytest.approx(0.08)
    assert filling_rate(np.zeros((4, 8))) == 0.0
    assert filling_rate(np.ones((4, 8))) == 1.0
    with pytest.raises(ValueError):
        filling_rate(np.zeros(5))


def test_render_ifs_sierpinski_and_determinism():
    img = render_ifs(SIERPINSKI, 64, 20000, np.random.default_rng(0), color=(10, 200, 30))
    assert img.dtype == np.uint8 and img.shape == (64, 64, 3)
    occupied = img.max(axis=2) > 0
    # one pixel per point: occupied pixels have exactly the colour, background is black
    assert np.all(img[occupied] == [10, 200, 30]) and np.all(img[~occupied] == 0)
    # a triangle with holes: clearly less than the full canvas, more than a line
    assert 0.15 < filling_rate(img) < 0.6
    # margin: the outermost 3 pixels (5 % of 64 = 3.2) stay empty; the min..max box is used
    assert not occupied[:, :3].any() and not occupied[:, -3:].any()
    assert occupied[:, 3].any() and occupied[:, -4].any()
    # y axis points up: the apex (top row of the fractal) is narrow, the base wide
    rows = np.flatnonzero(occupied.any(axis=1))
    assert occupied[rows[0]].sum() < occupied[rows[-1]].sum()
    again = render_ifs(SIERPINSKI, 64, 20000, np.random.default_rng(0), color=(10, 200, 30))
    np.testing.assert_array_equal(img, again)
    flipped = render_ifs(SIERPINSKI, 64, 20000, np.random.default_rng(0), color=(10, 200, 30),
                         flip=True)
    np.testing.assert_array_equal(flipped, img[:, ::-1])


def test_supersampled_render_is_the_area_average_of_the_fine_render():
    """Intensity = occupied fraction of the 4x4 block; mean = fill rate of the fine render."""
    params = sample_fractal_classes(num_classes=1, seed=0)[0]
    coarse = render_ifs(params, 32, 6250, np.random.default_rng(1), supersample=4)
    fine = render_ifs(params, 128, 6250, np.random.default_rng(1), supersample=1)
    blocks = (fine[..., 0] > 0).reshape(32, 4, 32, 4).sum(axis=(1, 3))
    np.testing.assert_array_equal(coarse[..., 0], np.rint(blocks * 255 / 16).astype(np.uint8))
    assert np.array_equal(coarse[..., 0], coarse[..., 1]) and np.array_equal(coarse[..., 1], coarse[..., 2])
    assert blocks.mean() / 16 == pytest.approx(filling_rate(fine))
    # a coloured render has the same shape, each pixel a fraction of the colour
    red = render_ifs(params, 32, 6250, np.random.default_rng(1), color=(200, 0, 0), supersample=4)
    np.testing.assert_array_equal(red[..., 0], np.rint(blocks * 200 / 16).astype(np.uint8))
    assert not red[..., 1:].any()


def test_render_ifs_rejects_divergence():
    expanding = np.array([[1.5, 0, 0, 1.5, 0.1, 0.1], [1.2, 0.3, 0, 1.2, 0, 0]])
    with pytest.raises(DivergentIFSError):
        render_ifs(expanding, 32, 1000, np.random.default_rng(0))
    with pytest.raises(DivergentIFSError):
        search_filling_rate(expanding, np.random.default_rng(0))
    assert issubclass(DivergentIFSError, ValueError)
    with pytest.raises(ValueError):
        render_ifs(SIERPINSKI, 32, 1000, np.random.default_rng(0), supersample=16)


def test_walkers_start_on_the_attractor():
    """No transient points: every point of a contraction lies in its attractor's box."""
    zs = F._chaos_game_batch([SQUARE], 5000, [np.random.default_rng(0)])
    assert zs.real.min() >= 0 and zs.real.max() <= 1 and zs.imag.min() >= 0 and zs.imag.max() <= 1
    # no map contracts: the walkers start at the origin
    assert F._start_points(*F._batch_tables([np.array([[2.0, 0, 0, 2.0, 1, 1]])])[:2])[0] == 0


def test_batched_rendering_is_independent_of_batch():
    classes = sample_fractal_classes(num_classes=4, seed=3)
    kw = dict(image_size=32, num_points=2048, seed=3, perturbation=0.2, flip=True,
              color="instance", margin=0.05, supersample=4)
    batch = F._render_instances(classes, [(0, 1), (2, 7), (3, 0)], **kw)
    alone = F._render_instances(classes, [(2, 7)], **kw)
    np.testing.assert_array_equal(batch[1], alone[0])
    # 1000 points = 16 walkers x 62 steps + 8: the last step's other 8 lanes repeat points
    zs = F._chaos_game_batch([SQUARE, SIERPINSKI], 1000, [np.random.default_rng(0)] * 2)
    assert zs.shape == (63, 2, 16)
    np.testing.assert_array_equal(zs[-1, :, 8:], zs[-2, :, 8:])
    assert not np.array_equal(zs[-1, :, :8], zs[-2, :, :8])


# --------------------------------------------------------------------------- FractalDB's rule
def test_search_filling_rate_is_fractaldbs_setting():
    """100,000 points on 512 x 512 px with a 6 px pad, one pixel per point."""
    rng_seed = 4
    fill = search_filling_rate(SQUARE, np.random.default_rng(rng_seed))
    img = render_ifs(SQUARE, 512, 100_000, np.random.default_rng(rng_seed), margin=6 / 512)
    assert fill == pytest.approx(filling_rate(img), abs=1e-12)
    # a filled square drawn on the 500 x 500 px inside the pad: each of those pixels holds
    # Poisson(100000 / 500**2) points, so fill = (500 / 512)**2 * (1 - exp(-0.4)), about 0.314
    assert fill == pytest.approx((500 / 512) ** 2 * (1 - np.exp(-100_000 / 500 ** 2)), abs=0.01)
    assert fill >= FRACTALDB_FILL_THRESHOLD
    # a Sierpinski triangle is too thin for FractalDB's rule
    assert search_filling_rate(SIERPINSKI, np.random.default_rng(0)) < FRACTALDB_FILL_THRESHOLD
    assert FRACTALDB_FILL_THRESHOLD == 0.2
    assert FRACTALDB_POINTS_PER_PIXEL == pytest.approx(100_000 / 512 ** 2)


def test_every_class_passes_the_filling_rate_rule(monkeypatch):
    """Accepted candidates have a search fill >= threshold; rejected ones below it (or diverge)."""
    seen = []
    real = F._search_fill_batch

    def spy(params_list, rngs):
        fills = real(params_list, rngs)
        seen.extend(zip((p.copy() for p in params_list), fills))
        return fills

    monkeypatch.setattr(F, "_search_fill_batch", spy)
    F._sample_classes_cached.cache_clear()
    classes, fills = F.sample_fractal_classes(num_classes=6, seed=0, return_fill=True)
    F._sample_classes_cached.cache_clear()
    accepted = [f for p, f in seen if any(np.array_equal(p, c) for c in classes)]
    rejected = [f for p, f in seen if not any(np.array_equal(p, c) for c in classes)]
    assert len(accepted) == 6 and all(f >= 0.2 for f in accepted)
    assert sorted(accepted) == sorted(fills)
    assert rejected
    # candidates drawn after the last accepted one (same block) may pass; before it none does
    last = max(i for i, (p, _) in enumerate(seen) if any(np.array_equal(p, c) for c in classes))
    before = [f for i, (p, f) in enumerate(seen[:last])
              if not any(np.array_equal(p, c) for c in classes)]
    assert all(np.isnan(f) or f < 0.2 for f in before)
    # the fill rate is a property of the system, not of the random stream
    for c in classes:
        assert search_filling_rate(c, np.random.default_rng(99)) >= 0.2 - 0.01


def test_class_search_is_stable():
    F._sample_classes_cached.cache_clear()
    ten = sample_fractal_classes(num_classes=10, seed=1)
    five = sample_fractal_classes(num_classes=5, seed=1)
    for a, b in zip(five, ten):  # the first classes do not depend on how many are asked for
        np.testing.assert_array_equal(a, b)
    assert all(2 <= len(p) <= 7 for p in ten)
    F._sample_classes_cached.cache_clear()
    original = F._CANDIDATE_BLOCK
    try:
        F._CANDIDATE_BLOCK = 7  # nor on how many candidates are rendered together
        again = sample_fractal_classes(num_classes=10, seed=1)
    finally:
        F._CANDIDATE_BLOCK = original
        F._sample_classes_cached.cache_clear()
    for a, b in zip(again, ten):
        np.testing.assert_array_equal(a, b)
    # the threshold changes which candidates are kept
    loose = sample_fractal_classes(num_classes=10, seed=1, min_fill_rate=0.0)
    assert any(not np.array_equal(a, b) for a, b in zip(ten, loose))


def test_classes_are_fractals():
    """Contractions whose attractors have a box-counting dimension clearly between 1 and 2."""
    assert _box_dimension(SIERPINSKI) == pytest.approx(np.log2(3), abs=0.02)
    assert _box_dimension(SQUARE) == pytest.approx(2.0, abs=0.01)
    for params in sample_fractal_classes(num_classes=10, seed=0):
        assert np.all(_singular_values(params) <= 1 + 1e-9)
        assert 1.5 < _box_dimension(params) < 1.98


# --------------------------------------------------------------------------- data set
def test_dataset_features_shapes_and_labels(small_split):
    assert isinstance(small_split, datasets.DatasetDict)
    assert set(small_split) == {"train", "test"}
    train, test = small_split["train"], small_split["test"]
    assert len(train) == 600 and len(test) == 200
    assert isinstance(train.features["image"], datasets.Image)
    label = train.features["label"]
    assert isinstance(label, datasets.ClassLabel)
    assert label.num_classes == 10 and label.names[0] == "fractal_000"
    assert label.names[-1] == "fractal_009"
    img = train[0]["image"]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (32, 32)
    for split, n in ((train, 60), (test, 20)):
        assert np.bincount(split["label"], minlength=10).tolist() == [n] * 10
    # instance-major order: labels cycle through the classes
    assert train["label"][:12] == list(range(10)) + [0, 1]
    # test instances are new images, not copies of training ones
    tr = {p.tobytes() for p in _pixels(train)}
    assert not any(p.tobytes() in tr for p in _pixels(test))
    # gray default: R == G == B, intensities are 4x4 occupied fractions k / 16
    px = _pixels(train[:20])
    assert np.array_equal(px[..., 0], px[..., 1]) and np.array_equal(px[..., 1], px[..., 2])
    levels = np.rint(np.arange(17) * 255 / 16).astype(np.uint8)
    assert np.isin(px, levels).all()


def test_filling_rate_of_the_data_set_follows_fractaldb(small_split):
    """Mean intensity = FractalDB filling rate at the render resolution (0.38 points/pixel)."""
    px = _pixels(small_split["train"])
    render_fill = px[..., 0].reshape(len(px), -1).mean(axis=1) / 255.0
    # at most one render pixel per point: fill <= 6250 / 128**2 = 0.381
    assert render_fill.max() <= F._default_num_points(32) / 128 ** 2 + 1e-3
    # point drawings at FractalDB's density, none empty or shrunk to a dot
    assert 0.08 < np.median(render_fill) < 0.35 and render_fill.min() > 0.03
    stats = fill_stats(px)
    assert stats["images"] == 600
    assert stats["fill"]["median"] == pytest.approx(np.median(render_fill), abs=1e-4)
    assert stats["fill"]["share_above_0.5"] == 0
    nonblack = (px[..., 0] > 0).reshape(len(px), -1).mean(axis=1)
    assert stats["nonblack"]["max"] == pytest.approx(nonblack.max(), abs=1e-4)


def test_single_dataset_without_test_split(tmp_path):
    ds = make_fractal_dataset(num_classes=3, instances_per_class=4, image_size=16,
                              cache_dir=str(tmp_path))
    assert isinstance(ds, datasets.Dataset)
    assert len(ds) == 12 and ds[0]["image"].size == (16, 16)


def test_determinism(tmp_path):
    kw = dict(num_classes=4, instances_per_class=5, image_size=24, test_instances_per_class=2)
    a = make_fractal_dataset(seed=7, cache_dir=str(tmp_path / "a"), **kw)
    F._sample_classes_cached.cache_clear()  # the second build really searches again
    b = make_fractal_dataset(seed=7, cache_dir=str(tmp_path / "b"), **kw)  # fresh build
    c = make_fractal_dataset(seed=8, cache_dir=str(tmp_path / "a"), **kw)
    for split in ("train", "test"):
        np.testing.assert_array_equal(_pixels(a[split]), _pixels(b[split]))
        assert a[split]["label"] == b[split]["label"]
        assert not np.array_equal(_pixels(a[split]), _pixels(c[split]))
    # instance k of class c does not depend on how many instances are requested
    bigger = make_fractal_dataset(num_classes=4, instances_per_class=9, image_size=24, seed=7,
                                  cache_dir=str(tmp_path / "a"))
    np.testing.assert_array_equal(_pixels(bigger.select(range(20))), _pixels(a["train"]))


def test_color_and_flip_knobs(tmp_path):
    kw = dict(num_classes=3, instances_per_class=6, image_size=16, seed=2,
              cache_dir=str(tmp_path))
    gray = _pixels(make_fractal_dataset(**kw))
    inst = _pixels(make_fractal_dataset(color="instance", **kw))
    cls = _pixels(make_fractal_dataset(color="class", **kw))
    # colour never changes the shape
    for other in (inst, cls):
        np.testing.assert_array_equal(gray.max(axis=3) > 0, other.max(axis=3) > 0)

    def colours(px):  # binary renders (supersample=1): the one colour of each image
        return [tuple(np.unique(p[p.max(axis=2) > 0], axis=0)[0]) for p in px]

    cls = _pixels(make_fractal_dataset(color="class", supersample=1, **kw))
    inst = _pixels(make_fractal_dataset(color="instance", supersample=1, **kw))
    assert all(len(np.unique(p[p.max(axis=2) > 0], axis=0)) == 1 for p in np.concatenate([cls, inst]))
    labels = [i % 3 for i in range(18)]
    by_class = {}
    for lab, col in zip(labels, colours(cls)):
        by_class.setdefault(lab, set()).add(col)
    assert all(len(s) == 1 for s in by_class.values())  # one colour per class
    assert len(set(colours(inst))) > 10                   # a colour per image
    flipped = _pixels(make_fractal_dataset(flip=True, **kw))
    n_flipped = sum(not np.array_equal(f, g) for f, g in zip(flipped, gray))
    assert all(np.array_equal(f, g) or np.array_equal(f, g[:, ::-1])
               for f, g in zip(flipped, gray))
    assert 3 <= n_flipped <= 15
    # supersample=1: binary one-pixel-per-point images
    binary = _pixels(make_fractal_dataset(supersample=1, **kw))
    assert set(np.unique(binary)) <= {0, 255}
    np.testing.assert_array_equal(binary.max(axis=3) > 0, cls.max(axis=3) > 0)


def test_nearest_centroid_separates_classes(small_split):
    """Raw-pixel nearest centroid: measured 99.5 % (seed 0, 60/20 instances); chance is 10 %."""
    def xy(ds):
        return _pixels(ds).mean(axis=3).reshape(len(ds), -1) / 255.0, np.array(ds["label"])

    xtr, ytr = xy(small_split["train"])
    xte, yte = xy(small_split["test"])
    centroids = np.stack([xtr[ytr == c].mean(axis=0) for c in range(10)])
    pred = ((xte[:, None, :] - centroids[None]) ** 2).sum(axis=2).argmin(axis=1)
    acc = float((pred == yte).mean())
    assert acc > 0.75, acc


def test_cache_second_call_is_fast_and_skips_generator(tmp_path):
    kw = dict(num_classes=10, instances_per_class=20, image_size=32, seed=5,
              test_instances_per_class=5, cache_dir=str(tmp_path))
    calls0 = F._GENERATOR_CALLS
    t0 = time.perf_counter()
    first = make_fractal_dataset(**kw)
    t_build = time.perf_counter() - t0
    assert F._GENERATOR_CALLS == calls0 + 2  # train and test generated
    t0 = time.perf_counter()
    second = make_fractal_dataset(**kw)
    t_load = time.perf_counter() - t0
    assert F._GENERATOR_CALLS == calls0 + 2  # nothing regenerated
    assert t_load < 1.0 and t_load < t_build
    for split in ("train", "test"):
        np.testing.assert_array_equal(_pixels(first[split]), _pixels(second[split]))
        assert first[split]["label"] == second[split]["label"]
        assert first[split].cache_files == second[split].cache_files
        assert str(tmp_path) in first[split].cache_files[0]["filename"]
    # a different argument is a different cache entry
    make_fractal_dataset(**dict(kw, perturbation=0.1))
    assert F._GENERATOR_CALLS == calls0 + 4
    make_fractal_dataset(**dict(kw, supersample=2))
    assert F._GENERATOR_CALLS == calls0 + 6


def test_fingerprint_includes_the_version(tmp_path, monkeypatch):
    assert F.FRACTAL_DATA_VERSION == "fractal-v2"  # v1 caches (other pixels) are not reused
    kw = dict(num_classes=2, instances_per_class=2, image_size=16, cache_dir=str(tmp_path))
    calls0 = F._GENERATOR_CALLS
    make_fractal_dataset(**kw)
    monkeypatch.setattr(F, "FRACTAL_DATA_VERSION", "fractal-test")
    make_fractal_dataset(**kw)  # same arguments, new version: not read from the old cache
    assert F._GENERATOR_CALLS == calls0 + 2


def test_grid_picture(tmp_path):
    images = dataset_images(3, 2, 16, seed=0)
    assert images.shape == (3, 2, 16, 16, 3)
    # row c, column k is instance k of class c, in the data set's order
    ds = make_fractal_dataset(num_classes=3, instances_per_class=2, image_size=16,
                              cache_dir=str(tmp_path))
    np.testing.assert_array_equal(images[1, 1], np.asarray(ds[4]["image"]))
    pic = grid_image(images, gap=2, zoom=2)
    assert pic.shape == (3 * 32 + 4 * 2, 2 * 32 + 3 * 2, 3)
    np.testing.assert_array_equal(pic[2:34:2, 2:34:2], images[0, 0])


@pytest.mark.parametrize("kwargs", [
    dict(num_classes=0),
    dict(num_classes=2.5),
    dict(instances_per_class=0),
    dict(image_size=7),
    dict(num_points=0),
    dict(seed=-1),
    dict(test_instances_per_class=-1),
    dict(min_fill_rate=1.0),
    dict(min_fill_rate=0.5),  # more than 100,000 points can fill of 512 x 512 pixels
    dict(min_fill_rate=-0.1),
    dict(min_maps=0),
    dict(min_maps=5, max_maps=3),
    dict(perturbation=1.5),
    dict(margin=0.5),
    dict(color="purple"),
    dict(sampler="gaussian"),
    dict(supersample=0),
    dict(supersample=16),
])
def test_bad_arguments(kwargs, tmp_path):
    calls0 = F._GENERATOR_CALLS
    with pytest.raises(ValueError):
        make_fractal_dataset(cache_dir=str(tmp_path), **kwargs)
    assert F._GENERATOR_CALLS == calls0
