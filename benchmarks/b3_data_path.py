"""B3: time in the data path / time in the training step, default config.

The data path of a local round: batches from the site's uint8 images, conversion to normalised floats, the random
views and the jigsaw views each progressive step trains on. The training step: everything else of
`fgssl.train.train_local` (forward, backward, optimiser). Timed per phase on one site's share of the default run
(the default model and batch, 600 synthetic images), interleaved: the data path alone, then the whole local round
over the same number of batches; training = whole - data path. The figure is the larger of the two phases' ratios.

    python -m benchmarks.b3_data_path [--quick] [--batches 4] [--repeats 5]
"""

from __future__ import annotations

import dataclasses
import sys

import torch

from benchmarks.common import finish, interleaved, median, parser
from fgssl.augment import random_view
from fgssl.config import load_config
from fgssl.data.images import ImageSet, to_float
from fgssl.data.synthetic import generate
from fgssl.model import build_model
from fgssl.recipe import progressive_steps
from fgssl.train import train_local
from simulations import DEFAULT_CONFIG

TARGET = 0.05


def data_path(cfg, data: ImageSet, phase: str, batches: int, seed: int) -> None:
    """What train_local does to the data of `batches` batches, without the model."""
    gen = torch.Generator().manual_seed(seed)
    for i, (xb, yb) in enumerate(data.batches(cfg.train.batch_size, shuffle=True, generator=gen, drop_last=True)):
        if i == batches:
            break
        x = to_float(xb, "cpu")
        views = [random_view(x, gen), random_view(x, gen)] if phase == "ssl" else [random_view(x, gen)]
        for step in progressive_steps(cfg):
            step.view(views[0], gen)
        yb.to("cpu")


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    cfg = load_config(DEFAULT_CONFIG)
    n, batches, repeats = (16, 1, 1) if args.quick else (600, args.batches, args.repeats)
    if args.quick:
        cfg = cfg.replace(data=dataclasses.replace(cfg.data, image_size=32),
                          model=dataclasses.replace(cfg.model, backbone="resnet10", width=16),
                          train=dataclasses.replace(cfg.train, batch_size=8))
    images, labels = generate(range(n), cfg.seed, cfg.data.image_size, cfg.data.num_classes, 0, cfg.data.site_shift)
    data = ImageSet(torch.from_numpy(images), torch.from_numpy(labels).long(),
                    tuple(str(c) for c in range(cfg.data.num_classes)))
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.num_classes)
    rows = []
    for phase in ("ssl", "finetune"):
        times = interleaved({
            "data": lambda: data_path(cfg, data, phase, batches, 1),
            "round": lambda: train_local(model, data, phase, cfg, max_batches=batches,
                                         generator=torch.Generator().manual_seed(1))}, repeats)
        d, whole = median(times["data"]), median(times["round"])
        rows.append({"phase": phase, "batches": batches, "data_s": round(d, 4), "round_s": round(whole, 3),
                     "ratio": d / max(whole - d, 1e-9)})
    print(f"default config ({cfg.model.backbone}, {cfg.data.image_size} px, batch {cfg.train.batch_size}), {n} images, "
          f"{batches} batches a round, {torch.get_num_threads()} threads, medians of {repeats}")
    print(f"{'phase':>8}  {'data path s':>11}  {'round s':>8}  {'data/train':>10}")
    for r in rows:
        print(f"{r['phase']:>8}  {r['data_s']:11.4f}  {r['round_s']:8.3f}  {r['ratio']:10.2%}")
    return finish("B3", "data path / training step (worse phase)", max(r["ratio"] for r in rows), TARGET,
                  quick=args.quick, rows=rows)


if __name__ == "__main__":
    sys.exit(main())
