"""Jigsaw cost relative to a ResNet-18 forward+backward on the same batch, measured side by side in one run.

Compares this project's batched gather (one permutation per image) with PMG's generator (one permutation per
batch, a Python loop over tiles), re-implemented here for the comparison. Reports ratios, which survive a
noisy shared machine better than absolute times.

    python benchmarks/jigsaw_overhead.py [--size 64] [--batch 64] [--repeats 20]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision

from fgssl.jigsaw import jigsaw


def pmg_jigsaw(images: torch.Tensor, n: int) -> torch.Tensor:
    """PMG's scheme: one random tile order shared by the batch, tiles copied one by one."""
    block = images.shape[-1] // n
    order = [(i, j) for i in range(n) for j in range(n)]
    random.shuffle(order)
    out = images.clone()
    for k, (i, j) in enumerate(order):
        x, y = divmod(k, n)
        out[..., x * block:(x + 1) * block, y * block:(y + 1) * block] = \
            images[..., i * block:(i + 1) * block, j * block:(j + 1) * block]
    return out


def timed(fn, repeats: int) -> float:
    """Median seconds per call: robust to the bursts of other work on a shared machine."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--grid", type=int, nargs="+", default=[8, 4, 2])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7).to(dev)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    y = torch.randint(0, 7, (args.batch,), device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        sync()

    # Interleave the measurements so that machine noise hits all of them alike.
    rows = []
    for n in args.grid:
        step = timed(train_step, max(3, args.repeats // 4))
        ours = timed(lambda: (jigsaw(x, n, gen), sync()), args.repeats)
        pmg = timed(lambda: (pmg_jigsaw(x, n), sync()), args.repeats)
        step2 = timed(train_step, max(3, args.repeats // 4))
        base = (step + step2) / 2
        rows.append((n, base, ours / base, pmg / base, pmg / ours))
    print(f"device={dev} size={args.size} batch={args.batch} threads={torch.get_num_threads()}")
    print(f"{'grid':>4}  {'fwd+bwd s':>9}  {'ours/step':>9}  {'pmg/step':>9}  {'pmg/ours':>8}")
    for n, base, r_ours, r_pmg, speedup in rows:
        print(f"{n:>4}  {base:9.4f}  {r_ours:9.2%}  {r_pmg:9.2%}  {speedup:8.1f}x")


if __name__ == "__main__":
    main()
