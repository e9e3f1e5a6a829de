"""B10 (GPU): FG-SSL's SSL and fine-tune steps against a plain torchvision training step, per unit of work.

Images/s of `fgssl.train.ssl_batch` and `finetune_batch` (the default recipe: three jigsaw steps and the concat
step per batch) and of a plain torchvision ResNet step (forward, cross-entropy, backward, SGD) on the same backbone,
batch and precision, each scaled by its FLOPs per image (counted with torch.utils.flop_counter on one step), so the
figure is FG-SSL's FLOP throughput / the plain step's: 1.0 means FG-SSL keeps the GPU as busy as plain training.
ResNet-50, 224 px, batch 200 on a GPU, both with fgssl.train's GPU settings (channels_last; bfloat16 autocast
under train.precision auto); without one it says so and stops (the --quick run checks the script on the
CPU with a tiny backbone).

    python -m benchmarks.b10_gpu [--quick] [--backbone resnet50] [--size 224] [--batch 200] [--repeats 5]
"""

from __future__ import annotations

import dataclasses
import sys

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import finish, interleaved, median, parser, skipped
from fgssl.config import load_config
from fgssl.model import build_model
from fgssl.train import autocast_dtype, finetune_batch, make_optimizer, ssl_batch, train_mode
from simulations import DEFAULT_CONFIG

TARGET = 0.9


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="train.precision for both (auto: bfloat16 autocast on a GPU)")
    args = ap.parse_args(argv)
    figure = "FG-SSL FLOP throughput / plain torchvision step (worse phase)"
    if not torch.cuda.is_available() and not args.quick:
        return skipped("B10", figure, "no GPU on this machine (run it where one is; --quick checks it on the CPU)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone, size, batch, repeats = ("resnet18", 32, 4, 1) if args.quick else (args.backbone, args.size, args.batch,
                                                                                args.repeats)
    cfg = load_config(DEFAULT_CONFIG)
    cfg = cfg.replace(model=dataclasses.replace(cfg.model, backbone=backbone),
                      data=dataclasses.replace(cfg.data, image_size=size),
                      train=dataclasses.replace(cfg.train, batch_size=batch, precision=args.precision))
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.num_classes).to(device)
    plain = getattr(torchvision.models, backbone)(num_classes=cfg.data.num_classes).to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, cfg.data.num_classes, (batch,), device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    opt_ssl, opt_ft = make_optimizer(model, cfg, "ssl"), make_optimizer(model, cfg, "finetune")
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)
    train_mode(model, cfg)
    amp = autocast_dtype(cfg, device)
    if device.type == "cuda":  # what fgssl.train.train_local does on a GPU, for both
        model.to(memory_format=torch.channels_last)
        plain.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def plain_step() -> None:
        opt_plain.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = plain(x)
        F.cross_entropy(logits.float(), y).backward()
        opt_plain.step()
        sync()

    steps = {"ssl": lambda: (ssl_batch(model, x, x.flip(-1), cfg, opt_ssl, gen), sync()),
             "finetune": lambda: (finetune_batch(model, x, y, cfg, opt_ft, gen), sync()), "plain": plain_step}
    flops = {}
    for name, fn in steps.items():
        with FlopCounterMode(display=False) as counter:
            fn()
        flops[name] = counter.get_total_flops() / batch
    times = interleaved(steps, repeats)
    rate = {name: batch / median(t) for name, t in times.items()}
    tflop_s = {name: rate[name] * flops[name] / 1e12 for name in steps}
    # significant figures, not decimals: a loaded CPU runs at 1e-4 TFLOP/s, which three decimals would call zero
    rows = {name: {"images_s": float(f"{rate[name]:.3g}"), "gflop_per_image": float(f"{flops[name] / 1e9:.3g}"),
                   "tflop_s": float(f"{tflop_s[name]:.3g}")} for name in steps}
    print(f"device {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu'}), {backbone}, "
          f"{size} px, batch {batch}, {amp or torch.float32} forward, channels_last={device.type == 'cuda'}, "
          f"medians of {repeats}")
    for name, r in rows.items():
        print(f"{name:>8}: {r['images_s']:>8} images/s, {r['gflop_per_image']:>6} GFLOP/image, {r['tflop_s']} TFLOP/s")
    ratio = min(tflop_s[p] for p in ("ssl", "finetune")) / tflop_s["plain"]
    return finish("B10", figure, ratio, TARGET, higher_is_better=True, quick=args.quick, backbone=backbone,
                  size=size, batch=batch, precision=str(amp or torch.float32), rows=rows)


if __name__ == "__main__":
    sys.exit(main())
