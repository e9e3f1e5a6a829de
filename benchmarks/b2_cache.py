"""B2: one epoch read from the prepared cache / the same epoch decoding the original JPEGs.

On the full ISIC 2018 Task 3 training set (HAM10000's 10,015 images, ../shared/realdata/isic2018_task3_full) at
64 px: the cache is built once into a temporary folder (`fgssl.data.cache.prepare`, its build rate is reported
too), then a shuffled epoch in batches of uint8 tensors (what training consumes) is read from the cache and, in
turn, by decoding and resizing every original file with the code the cache build uses. One torch/BLAS thread; the
files are in the OS page cache after the build, so decoding is not measured against a cold disk.

    python -m benchmarks.b2_cache [--quick] [--root DIR] [--size 64] [--repeats 5]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import SHARED, finish, interleaved, median, parser, skipped  # noqa: E402
from fgssl.config import DataConfig  # noqa: E402
from fgssl.data.cache import load_cache, prepare  # noqa: E402
from fgssl.data.official import decode_image, scan  # noqa: E402

TARGET = 0.05
FULL = SHARED / "realdata" / "isic2018_task3_full"
SAMPLE = SHARED / "realdata" / "ham10000_isic2018_task3"  # a few images in the same layout: the --quick run


def epoch_from_cache(path: Path, batch: int, seed: int) -> int:
    data = load_cache(path)
    order = np.random.default_rng(seed).permutation(len(data))
    seen = 0
    for start in range(0, len(order), batch):
        idx = np.sort(order[start:start + batch])
        x = torch.from_numpy(np.ascontiguousarray(data.images[idx]))
        y = torch.from_numpy(data.labels[idx])
        assert y.shape[0] == x.shape[0]
        seen += x.shape[0]
    return seen


def epoch_from_files(paths: list[Path], size: int, resize: str, batch: int, seed: int) -> int:
    order = np.random.default_rng(seed).permutation(len(paths))
    seen = 0
    for start in range(0, len(order), batch):
        x = torch.from_numpy(np.stack([decode_image(paths[i], size, resize) for i in order[start:start + batch]]))
        seen += x.shape[0]
    return seen


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--root", type=Path, default=None, help=f"an ISIC 2018 Task 3 root (default {FULL})")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    root = args.root or (SAMPLE if args.quick else FULL)
    figure = "cache epoch / decoding epoch"
    if not root.is_dir():
        return skipped("B2", figure, f"no ISIC 2018 Task 3 images at {root}", args.quick)
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DataConfig(dataset="isic2018", root=str(root), cache_dir=f"{tmp}/cache", image_size=args.size)
        t0 = time.perf_counter()
        built = prepare(cfg, workers=1, progress=False)
        build_s = time.perf_counter() - t0
        paths = [r.path for r in scan(cfg).records]
        times = interleaved({"cache": lambda: epoch_from_cache(built.path, args.batch, 0),
                             "decode": lambda: epoch_from_files(paths, args.size, cfg.resize, args.batch, 0)},
                            repeats)
    n = built.num_images
    cache_s, decode_s = median(times["cache"]), median(times["decode"])
    print(f"{n} images at {args.size} px from {root}; batch {args.batch}; medians of {repeats}, interleaved")
    print(f"cache build (1 thread, incl. scan): {n / build_s:,.0f} images/s ({build_s:.1f} s)")
    print(f"epoch from the cache: {n / cache_s:,.0f} images/s ({cache_s:.2f} s); decoding the originals: "
          f"{n / decode_s:,.0f} images/s ({decode_s:.1f} s)")
    return finish("B2", figure, cache_s / decode_s, TARGET, quick=args.quick, images=n, size=args.size,
                  cache_epoch_s=round(cache_s, 3), decode_epoch_s=round(decode_s, 2), build_s=round(build_s, 1))


if __name__ == "__main__":
    sys.exit(main())
