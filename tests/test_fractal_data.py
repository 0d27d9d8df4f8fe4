"""Tests for kakurenbo_hf.data.fractal (FractalDB-style data sets)."""

import time

import datasets
import numpy as np
import pytest
from PIL import Image

from kakurenbo_hf.data import fractal as F
from kakurenbo_hf.data import (
    DivergentIFSError,
    filling_rate,
    ifs_probabilities,
    make_fractal_dataset,
    render_ifs,
    sample_fractal_classes,
    sample_ifs,
)

datasets.disable_progress_bars()


def _pixels(ds):
    return np.stack([np.asarray(img) for img in ds["image"]])


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    """10 classes x 60 train + 20 test instances at 32 px (built once)."""
    cache = tmp_path_factory.mktemp("fractal_cache")
    return make_fractal_dataset(num_classes=10, instances_per_class=60, image_size=32, seed=0,
                                test_instances_per_class=20, cache_dir=str(cache))


# --------------------------------------------------------------------------- low level
def test_sample_ifs_ranges():
    rng = np.random.default_rng(0)
    sizes = set()
    for _ in range(200):
        p = sample_ifs(rng)
        assert p.ndim == 2 and p.shape[1] == 6
        assert 2 <= len(p) <= 8
        assert np.all(p >= -1) and np.all(p <= 1)
        sizes.add(len(p))
    assert sizes == set(range(2, 9))
    assert len(sample_ifs(np.random.default_rng(1), min_maps=3, max_maps=3)) == 3
    with pytest.raises(ValueError):
        sample_ifs(rng, min_maps=4, max_maps=3)


def test_ifs_probabilities_follow_abs_det():
    params = np.array([[1.0, 0, 0, 0.5, 0, 0],      # det 0.5
                       [0, 1.0, 1.0, 0, 0, 0],      # det -1
                       [0.5, 0, 0, 1.0, 0.3, 0.3]])  # det 0.5
    np.testing.assert_allclose(ifs_probabilities(params), [0.25, 0.5, 0.25])
    degenerate = np.zeros((4, 6))
    np.testing.assert_allclose(ifs_probabilities(degenerate), [0.25] * 4)


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
    # Sierpinski triangle: three half-scale maps
    sierpinski = np.array([[0.5, 0, 0, 0.5, 0.0, 0.0],
                           [0.5, 0, 0, 0.5, 0.5, 0.0],
                           [0.5, 0, 0, 0.5, 0.25, 0.5]])
    img = render_ifs(sierpinski, 64, 20000, np.random.default_rng(0), color=(10, 200, 30))
    assert img.dtype == np.uint8 and img.shape == (64, 64, 3)
    occupied = img.max(axis=2) > 0
    # occupied pixels have exactly the colour, background is black
    assert np.all(img[occupied] == [10, 200, 30]) and np.all(img[~occupied] == 0)
    # a triangle with holes: clearly less than the full canvas, more than a line
    assert 0.15 < filling_rate(img) < 0.6
    # margin: the outermost 2 pixels (5 % of 64 = 3.2) stay empty
    assert not occupied[:, :2].any() and not occupied[:, -2:].any()
    # y axis points up: the apex (top row of the fractal) is narrow, the base wide
    rows = np.flatnonzero(occupied.any(axis=1))
    assert occupied[rows[0]].sum() < occupied[rows[-1]].sum()
    again = render_ifs(sierpinski, 64, 20000, np.random.default_rng(0), color=(10, 200, 30))
    np.testing.assert_array_equal(img, again)
    flipped = render_ifs(sierpinski, 64, 20000, np.random.default_rng(0), color=(10, 200, 30),
                         flip=True)
    np.testing.assert_array_equal(flipped, img[:, ::-1])


def test_render_ifs_rejects_divergence():
    expanding = np.array([[1.5, 0, 0, 1.5, 0.1, 0.1], [1.2, 0.3, 0, 1.2, 0, 0]])
    with pytest.raises(DivergentIFSError):
        render_ifs(expanding, 32, 1000, np.random.default_rng(0))
    assert issubclass(DivergentIFSError, ValueError)


def test_batched_rendering_is_independent_of_batch():
    classes = sample_fractal_classes(num_classes=4, seed=3)
    kw = dict(image_size=32, num_points=2048, seed=3, perturbation=0.2, flip=True,
              color="instance", margin=0.05)
    batch = F._render_instances(classes, [(0, 1), (2, 7), (3, 0)], **kw)
    alone = F._render_instances(classes, [(2, 7)], **kw)
    np.testing.assert_array_equal(batch[1], alone[0])


# --------------------------------------------------------------------------- classes
def test_every_class_passes_filling_rate_rule():
    for min_fill in (0.1, 0.3):
        classes = sample_fractal_classes(num_classes=10, image_size=32, seed=0,
                                         min_fill_rate=min_fill)
        assert len(classes) == 10
        for c, params in enumerate(classes):
            assert 2 <= len(params) <= 8
            # the canonical render of a class (the one the rule was applied to)
            canonical = F._canonical_render(params, c, 32, F._default_num_points(32), 0, 0.05)
            assert filling_rate(canonical) >= min_fill
    # the threshold changes which candidates are kept
    strict = sample_fractal_classes(num_classes=10, image_size=32, seed=0, min_fill_rate=0.3)
    loose = sample_fractal_classes(num_classes=10, image_size=32, seed=0, min_fill_rate=0.0)
    assert any(not np.array_equal(a, b) for a, b in zip(strict, loose))


def test_filling_rate_rule_applied_in_sampling(monkeypatch):
    """Each accepted candidate's own render passes; rejected ones fail (or diverge)."""
    seen = []
    real_render = F.render_ifs

    def spy(params, image_size, num_points, rng, **kw):
        try:
            img = real_render(params, image_size, num_points, rng, **kw)
        except DivergentIFSError:
            seen.append((params.copy(), None))
            raise
        seen.append((params.copy(), filling_rate(img)))
        return img

    monkeypatch.setattr(F, "render_ifs", spy)
    F._sample_classes_cached.cache_clear()
    classes = F.sample_fractal_classes(num_classes=6, image_size=32, seed=0, min_fill_rate=0.4)
    F._sample_classes_cached.cache_clear()
    accepted = [fill for p, fill in seen if any(np.array_equal(p, c) for c in classes)]
    rejected = [fill for p, fill in seen if not any(np.array_equal(p, c) for c in classes)]
    assert len(accepted) == 6 and all(f >= 0.4 for f in accepted)
    assert rejected, "expected some candidates to be rejected at a 0.4 threshold"
    assert all(f is None or f < 0.4 for f in rejected)


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
    # gray default: R == G == B
    px = _pixels(train[:20])
    assert np.array_equal(px[..., 0], px[..., 1]) and np.array_equal(px[..., 1], px[..., 2])


def test_single_dataset_without_test_split(tmp_path):
    ds = make_fractal_dataset(num_classes=3, instances_per_class=4, image_size=16,
                              cache_dir=str(tmp_path))
    assert isinstance(ds, datasets.Dataset)
    assert len(ds) == 12 and ds[0]["image"].size == (16, 16)


def test_determinism(tmp_path):
    kw = dict(num_classes=4, instances_per_class=5, image_size=24, test_instances_per_class=2)
    a = make_fractal_dataset(seed=7, cache_dir=str(tmp_path / "a"), **kw)
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

    def colours(px):
        return [tuple(np.unique(p[p.max(axis=2) > 0], axis=0)[0]) for p in px]

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


def test_nearest_centroid_separates_classes(small_split):
    """Raw-pixel nearest centroid: measured 98.5 % (seed 0, 60/20 instances); chance is 10 %."""
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


@pytest.mark.parametrize("kwargs", [
    dict(num_classes=0),
    dict(num_classes=2.5),
    dict(instances_per_class=0),
    dict(image_size=7),
    dict(num_points=0),
    dict(seed=-1),
    dict(test_instances_per_class=-1),
    dict(min_fill_rate=1.0),
    dict(min_fill_rate=-0.1),
    dict(min_maps=0),
    dict(min_maps=5, max_maps=3),
    dict(perturbation=1.5),
    dict(margin=0.5),
    dict(color="purple"),
])
def test_bad_arguments(kwargs, tmp_path):
    calls0 = F._GENERATOR_CALLS
    with pytest.raises(ValueError):
        make_fractal_dataset(cache_dir=str(tmp_path), **kwargs)
    assert F._GENERATOR_CALLS == calls0
