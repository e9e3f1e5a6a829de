"""Cache build speed, and reading an epoch from the cache vs decoding the original files, side by side.

Run: python benchmarks/cache_speed.py [--realdata DIR] [--sizes 64 224] [--workers 1] [--repeats 3] [--batch 64]

For each real sample dataset (default: ../shared/realdata next to the repository: ISIC 2018 Task 3, ISIC 2017 Part 3)
and image size it
1. builds the cache from scratch into a temporary folder (`fgssl.data.cache.prepare`, --workers decoding threads)
   and reports images/s;
2. reads one shuffled epoch in batches as uint8 tensors (what training consumes) from the cache, and the same epoch
   by decoding and resizing every original file (`decode_image`, the code the cache build uses), and reports both
   rates and their ratio.
Every figure is the best of --repeats, after one warm-up, with the files in the OS page cache (so decoding is not
measured against a cold disk). One torch/BLAS thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fgssl.config import DataConfig  # noqa: E402
from fgssl.data.cache import load_cache, prepare  # noqa: E402
from fgssl.data.official import decode_image, scan  # noqa: E402

DATASETS = (("isic2018", "ham10000_isic2018_task3"), ("isic2017", "isic2017"))


def best(fn, repeats: int) -> float:
    fn()  # warm-up (page cache, lazy imports)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def epoch_from_cache(path: Path, batch: int, seed: int) -> int:
    data = load_cache(path)
    order = np.random.default_rng(seed).permutation(len(data))
    seen = 0
    for start in range(0, len(order), batch):
        idx = np.sort(order[start:start + batch])
        x = torch.from_numpy(np.ascontiguousarray(data.images[idx]))
        y = torch.from_numpy(data.labels[idx])
        assert x.shape[0] == y.shape[0]
        seen += x.shape[0]
    return seen


def epoch_from_files(paths: list[Path], size: int, resize: str, batch: int, seed: int) -> int:
    order = np.random.default_rng(seed).permutation(len(paths))
    seen = 0
    for start in range(0, len(order), batch):
        x = torch.from_numpy(np.stack([decode_image(paths[i], size, resize) for i in order[start:start + batch]]))
        seen += x.shape[0]
    return seen


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realdata", type=Path, default=REPO.parent / "shared" / "realdata")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--workers", type=int, default=1, help="decoding threads for the cache build")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if not args.realdata.is_dir():
        sys.exit(f"no real sample data at {args.realdata} (see --realdata)")
    print(f"{'dataset':9} {'px':>4} {'images':>6}  {'build img/s':>11}  {'cache epoch img/s':>17}  "
          f"{'decode epoch img/s':>18}  {'cache/decode':>12}")
    for name, sub in DATASETS:
        root = args.realdata / sub
        if not root.is_dir():
            continue
        for size in args.sizes:
            with tempfile.TemporaryDirectory() as tmp:
                builds = iter(range(1_000_000))

                def build() -> None:
                    cfg = DataConfig(dataset=name, root=str(root), cache_dir=f"{tmp}/b{next(builds)}", image_size=size)
                    prepare(cfg, workers=args.workers, progress=False)

                cfg = DataConfig(dataset=name, root=str(root), cache_dir=f"{tmp}/main", image_size=size)
                result = prepare(cfg, workers=args.workers, progress=False)
                n = result.num_images
                t_build = best(build, args.repeats)
                paths = [r.path for r in scan(cfg).records]
                t_cache = best(lambda: epoch_from_cache(result.path, args.batch, 0), args.repeats)
                t_files = best(lambda: epoch_from_files(paths, size, cfg.resize, args.batch, 0), args.repeats)
            print(f"{name:9} {size:>4} {n:>6}  {n / t_build:>11.1f}  {n / t_cache:>17.0f}  {n / t_files:>18.1f}  "
                  f"{t_files / t_cache:>11.0f}x")
    print(f"(build: from scratch incl. scan, {args.workers} decoding thread(s); epochs: shuffled, batch "
          f"{args.batch}, uint8 tensors; best of {args.repeats}; warm page cache; 1 torch thread)")


if __name__ == "__main__":
    main()
