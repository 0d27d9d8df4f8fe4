"""Look at the fractal data set: a classes x instances picture, and filling-rate statistics.

Picture (one row per class, one column per instance, as the data set stores them)::

    python -m kakurenbo_hf.data.grid --output docs/fractals_grid.png

    python -m kakurenbo_hf.data.grid --classes 8 --instances 6 --image_size 64 --seed 0 \\
        --zoom 2 --output docs/fractals_grid.png

Filling-rate distribution of the images (one line per image size: ``fill`` is FractalDB's
filling rate at the resolution the points were plotted, ``nonblack`` the fraction of non-black
pixels of the stored image; then the classes' search filling rate, 512 px / 100,000 points)::

    python -m kakurenbo_hf.data.grid --stats --classes 40 --instances 3 --image_size 32 64

Everything goes through :func:`kakurenbo_hf.data.make_fractal_dataset` (in a temporary cache
directory unless ``--cache_dir`` is given), so the picture is exactly what a training run reads.
Extra ``make_fractal_dataset`` keywords can be given as JSON, e.g.
``--kwargs '{"color": "instance"}'``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from typing import Optional, Sequence

import numpy as np


def dataset_images(classes: int, instances: int, image_size: int, seed: int,
                   cache_dir: Optional[str] = None, **kwargs) -> np.ndarray:
    """``uint8`` array ``(classes, instances, H, W, 3)``: instance ``k`` of class ``c``."""
    import datasets

    from . import make_fractal_dataset

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        ds = make_fractal_dataset(num_classes=classes, instances_per_class=instances,
                                  image_size=image_size, seed=seed,
                                  cache_dir=cache_dir or tmp, keep_in_memory=True, **kwargs)
        out = np.zeros((classes, instances, image_size, image_size, 3), dtype=np.uint8)
        counts = [0] * classes
        for row in ds:  # rows are instance-major; keep the order per class
            c = row["label"]
            out[c, counts[c]] = np.asarray(row["image"].convert("RGB"))
            counts[c] += 1
    return out


def grid_image(images: np.ndarray, gap: int = 2, zoom: int = 1, gap_value: int = 96) -> np.ndarray:
    """Tile ``(rows, cols, H, W, 3)`` into one ``uint8`` picture, ``gap`` grey pixels between tiles."""
    rows, cols, h, w, ch = images.shape
    if zoom > 1:
        images = images.repeat(zoom, axis=2).repeat(zoom, axis=3)
        h, w = h * zoom, w * zoom
    out = np.full((rows * h + (rows + 1) * gap, cols * w + (cols + 1) * gap, ch), gap_value,
                  dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            y, x = gap + r * (h + gap), gap + c * (w + gap)
            out[y:y + h, x:x + w] = images[r, c]
    return out


def _summary(values: np.ndarray) -> dict:
    q = np.quantile(values, [0.1, 0.5, 0.9])
    return {"p10": round(float(q[0]), 4), "median": round(float(q[1]), 4),
            "p90": round(float(q[2]), 4), "min": round(float(values.min()), 4),
            "max": round(float(values.max()), 4),
            "share_below_0.2": round(float((values < 0.2).mean()), 4),
            "share_above_0.5": round(float((values > 0.5).mean()), 4)}


def fill_stats(images: np.ndarray) -> dict:
    """Filling-rate summary of ``(..., H, W, 3)`` images.

    ``fill``: FractalDB's filling rate at the resolution the points were plotted, i.e. the
    mean intensity (brightest channel / 255): an image stores, per pixel, the occupied fraction
    of its supersampled block (for binary images it is the fraction of non-black pixels).
    ``nonblack``: the fraction of pixels with any channel > 0 at the stored size.
    """
    flat = images.reshape(-1, *images.shape[-3:])
    bright = flat.max(axis=-1).reshape(len(flat), -1)
    return {"images": int(len(flat)),
            "fill": _summary(bright.mean(axis=1) / 255.0),
            "nonblack": _summary((bright > 0).mean(axis=1))}


def class_search_fill(classes: int, seed: int, **kwargs) -> Optional[dict]:
    """Quantiles of the classes' FractalDB search filling rate (512 px, 100,000 points)."""
    from . import fractal

    if not hasattr(fractal, "search_filling_rate"):  # generator v1 had no such rule
        return None
    keys = ("min_fill_rate", "min_maps", "max_maps", "sampler")
    _, fills = fractal.sample_fractal_classes(classes, seed=seed, return_fill=True,
                                              **{k: v for k, v in kwargs.items() if k in keys})
    q = np.quantile(fills, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {"classes": classes, "threshold": float(kwargs.get("min_fill_rate", 0.2)),
            "min": round(float(q[0]), 4), "p25": round(float(q[1]), 4),
            "median": round(float(q[2]), 4), "p75": round(float(q[3]), 4),
            "max": round(float(q[4]), 4)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--instances", type=int, default=6)
    parser.add_argument("--image_size", type=int, nargs="+", default=[64],
                        help="side in pixels; several sizes only with --stats")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zoom", type=int, default=2, help="nearest-neighbour upscaling of the picture")
    parser.add_argument("--gap", type=int, default=2)
    parser.add_argument("--output", default="fractals_grid.png", help="PNG file of the picture")
    parser.add_argument("--stats", action="store_true", help="print filling-rate statistics instead")
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--kwargs", default="{}", help="JSON dict of more make_fractal_dataset keywords")
    args = parser.parse_args(argv)
    extra = json.loads(args.kwargs)

    if args.stats:
        for size in args.image_size:
            images = dataset_images(args.classes, args.instances, size, args.seed, args.cache_dir, **extra)
            stats = fill_stats(images)
            print(json.dumps({"image_size": size, "classes": args.classes,
                              "instances": args.instances, "seed": args.seed, **stats}))
        search = class_search_fill(args.classes, args.seed, **extra)
        if search is not None:
            print(json.dumps({"search_filling_rate_of_the_classes": search}))
        return 0

    if len(args.image_size) != 1:
        parser.error("give one --image_size for a picture")
    from .fractal import pil_image

    Image = pil_image()
    images = dataset_images(args.classes, args.instances, args.image_size[0], args.seed,
                            args.cache_dir, **extra)
    Image.fromarray(grid_image(images, gap=args.gap, zoom=args.zoom)).save(args.output)
    print(f"wrote {args.output}: {args.classes} classes (rows) x {args.instances} instances "
          f"(columns) at {args.image_size[0]} px, seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
