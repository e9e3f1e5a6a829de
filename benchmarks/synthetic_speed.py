"""Generation speed of the built-in synthetic data (64 px, one thread).

Run: python benchmarks/synthetic_speed.py [--n 4096] [--size 64] [--site-shift 0]
Prints one line: images per second (best of --repeats, after a warm-up).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# One thread, like a hospital node's data loader on a small machine; must be set before numpy loads.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fgssl.data.synthetic import generate  # noqa: E402


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096, help="images per timed run")
    ap.add_argument("--size", type=int, default=64, help="image size in px")
    ap.add_argument("--num-classes", type=int, default=7)
    ap.add_argument("--site-shift", type=float, default=0.0, help="> 0 adds site 1's acquisition shift")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    site = 1 if args.site_shift > 0 else None
    generate(range(256), 0, args.size, args.num_classes, site, args.site_shift)  # warm-up
    best = float("inf")
    for r in range(args.repeats):
        start = r * args.n  # fresh indices each run, so nothing is cached
        t0 = time.perf_counter()
        generate(range(start, start + args.n), 0, args.size, args.num_classes, site, args.site_shift)
        best = min(best, time.perf_counter() - t0)
    rate = args.n / best
    print(
        f"synthetic generate: {rate:,.0f} images/s ({args.n} images, {args.size} px, "
        f"{args.num_classes} classes, site_shift={args.site_shift:g}, 1 thread, best of {args.repeats})"
    )
    return rate


if __name__ == "__main__":
    main()
