"""B1: the jigsaw's cost next to a forward+backward of the default model on the same batch.

The default model (ResNet-18 FG-SSL net, BatchNorm) at 64 px with an 8x8 grid and batch 64 (the default run), and
at 224 px with a 16x16 grid and batch 16; ratio = jigsaw / (forward + backward), the larger of the two. This
project's jigsaw gives each image its own permutation in one gather; PMG's (one permutation per batch, a Python
loop over tiles, re-written here) is timed beside it for scale.

    python -m benchmarks.b1_jigsaw [--quick] [--repeats 9]
"""

from __future__ import annotations

import random
import sys

import torch
import torch.nn.functional as F

from benchmarks.common import finish, interleaved, median, parser
from fgssl.config import load_config
from fgssl.jigsaw import jigsaw
from fgssl.model import CONCAT, build_model
from simulations import DEFAULT_CONFIG

TARGET = 0.005


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


def measure(size: int, n: int, batch: int, repeats: int, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(load_config(DEFAULT_CONFIG).model, 7).to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 7, (batch,), device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        logits = model(x, (CONCAT,)).logits[CONCAT]
        F.cross_entropy(logits, y).backward()
        sync()

    times = interleaved({"step": step, "ours": lambda: (jigsaw(x, n, gen), sync()),
                         "pmg": lambda: (pmg_jigsaw(x, n), sync())}, repeats)
    med = {k: median(v) for k, v in times.items()}
    return {"size": size, "grid": n, "batch": batch, "step_s": round(med["step"], 4),
            "jigsaw_s": round(med["ours"], 6), "ratio": med["ours"] / med["step"], "pmg_ratio": med["pmg"] / med["step"]}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    cases = [(32, 8, 4), (64, 16, 2)] if args.quick else [(64, 8, 64), (224, 16, 16)]
    repeats = 2 if args.quick else args.repeats
    rows = [measure(size, n, batch, repeats, torch.device(args.device)) for size, n, batch in cases]
    print(f"device={args.device} threads={torch.get_num_threads()} repeats={repeats} (medians, interleaved)")
    print(f"{'px':>4} {'grid':>4} {'batch':>5}  {'fwd+bwd s':>9}  {'jigsaw/step':>11}  {'pmg/step':>9}")
    for r in rows:
        print(f"{r['size']:>4} {r['grid']:>4} {r['batch']:>5}  {r['step_s']:9.4f}  {r['ratio']:11.3%}  "
              f"{r['pmg_ratio']:9.2%}")
    worst = max(r["ratio"] for r in rows)
    return finish("B1", "jigsaw / forward+backward (worst case)", worst, TARGET, quick=args.quick, rows=rows)


if __name__ == "__main__":
    sys.exit(main())
