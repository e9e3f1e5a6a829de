"""DP-SGD cost relative to the non-private step on the same model and batch, per Opacus grad_sample_mode.

Workloads (the same batch for every mode; DP steps use the project's own DP code in fgssl/privacy/dp_train.py):
  finetune  one progressive fine-tune batch, four optimizer steps (3 jigsaw branches + concat): fgssl.train.finetune_batch
            vs four DPStepper.finetune_step calls
  ssl       one progressive SSL batch, four steps: fgssl.train.ssl_batch (Barlow Twins) vs four DPStepper.ssl_step
            calls (noisy statistic + per-sample surrogate gradient)
  single    one step on the sum of all four branches' cross-entropies (every parameter in one step); the only
            workload where Opacus' ghost clipping can run, since it needs a per-sample norm for every parameter
Times are interleaved over modes in one process (machine noise hits every mode alike) and printed as ratios to the
non-private step. Peak memory: after one warm-up step (gradients and optimizer state exist), the next step's peak
above the memory in use just before it: its working memory (CUDA: the allocator's peak; CPU: the peak RSS of a fresh
child process per measurement, with freed heap returned to the OS before the step).

    python benchmarks/dp_overhead.py [--size 64] [--batch 64] [--repeats 5] [--modes hooks functorch ew ghost]
                                     [--workloads finetune ssl single] [--no-memory] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fgssl.config import config_from_dict, load_config  # noqa: E402
from fgssl.jigsaw import jigsaw  # noqa: E402
from fgssl.model import BRANCHES, CONCAT, build_model  # noqa: E402
from fgssl.privacy.dp_train import DPSettings, DPStepper, PerSampleGradients, clip_and_sum  # noqa: E402
from fgssl.train import finetune_batch, make_optimizer, ssl_batch, train_mode  # noqa: E402

ALL_MODES = ("hooks", "functorch", "ew", "ghost")
WORKLOADS = ("finetune", "ssl", "single")
SIGMA, CLIP = 1.0, 1.0


def make_cfg(args):
    if args.config:  # a recipe's own model, frozen parts, size and batch; random weights time the same
        return load_config(args.config, ["model.weights=null"])
    return config_from_dict({"data": {"image_size": args.size},
                             "model": {"backbone": args.backbone, "norm": "group",
                                       "granularities": list(args.grid)},
                             "train": {"batch_size": args.batch}})


class FourBranchCE:
    """Σ_b CE(logits_b, y) with a `reduction` attribute, as Opacus' DPLossFastGradientClipping expects."""

    reduction = "sum"

    def __call__(self, out, y):
        losses = [F.cross_entropy(out.logits[b], y, reduction="none") for b in BRANCHES]
        per_sample = torch.stack(losses).sum(0)
        return per_sample if self.reduction == "none" else per_sample.sum()


def build_step(workload: str, mode: str, base_model, cfg, x, y, dev):
    """A zero-argument function doing one step (or one progressive batch) of `workload` under `mode`."""
    model = copy.deepcopy(base_model)
    phase = "ssl" if workload == "ssl" else "finetune"
    opt = make_optimizer(model, cfg, phase)  # freezes train.frozen
    train_mode(model, cfg)  # frozen parts in eval mode, as the recipe's loops run them
    gen = torch.Generator(device=dev).manual_seed(0)
    v2 = x.flip(-1)
    b = x.shape[0]

    if mode == "nonprivate":
        if workload == "finetune":
            return lambda: finetune_batch(model, x, y, cfg, opt, gen)
        if workload == "ssl":
            return lambda: ssl_batch(model, x, v2, cfg, opt, gen)

        def plain():
            opt.zero_grad(set_to_none=True)
            FourBranchCE()(model(x), y).div(b).backward()
            opt.step()
        return plain

    if mode == "ghost":
        if workload != "single":
            return None
        from opacus.grad_sample import GradSampleModuleFastGradientClipping
        from opacus.optimizers import DPOptimizerFastGradientClipping
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
        gsm = GradSampleModuleFastGradientClipping(model, max_grad_norm=CLIP, use_ghost_clipping=True,
                                                   loss_reduction="sum")
        dpo = DPOptimizerFastGradientClipping(opt, noise_multiplier=SIGMA, max_grad_norm=CLIP,
                                              expected_batch_size=b, loss_reduction="sum")
        crit = DPLossFastGradientClipping(gsm, dpo, FourBranchCE(), loss_reduction="sum")

        def ghost():
            dpo.zero_grad(set_to_none=True)
            crit(gsm(x), y).backward()
            dpo.step()
        return ghost

    if workload == "single":
        grads = PerSampleGradients(model, mode)
        params = [p for p in model.parameters() if p.requires_grad]

        def single():
            grads.clear()
            grads.backward(FourBranchCE()(grads(x), y))
            sums, _, _ = clip_and_sum([p.grad_sample for p in params], CLIP)
            for p, s in zip(params, sums):
                p.grad = (s + torch.normal(0.0, SIGMA * CLIP, s.shape, generator=gen, device=s.device)) / b
                p.grad_sample = None
            opt.step()
        return single

    dp = DPSettings(noise_multiplier=SIGMA, max_grad_norm=CLIP, statistic_noise_multiplier=2 * SIGMA,
                    grad_sample_mode=mode)
    stepper = DPStepper(model, opt, dp, phase=phase, expected_batch_size=b, generator=gen)
    w = cfg.loss.concat_weight

    def dp_batch():
        for branch in BRANCHES:
            v = x if branch == CONCAT else jigsaw(x, cfg.model.granularities[branch], gen)[0]
            weight = w if branch == CONCAT else 1.0
            if workload == "ssl":
                stepper.ssl_step(branch, v, v2, weight=weight)
            else:
                stepper.finetune_step(branch, v, y, weight=weight)
    return dp_batch


def setup(args):
    dev = torch.device(args.device)
    torch.manual_seed(0)
    cfg = make_cfg(args)
    model = build_model(cfg.model, 7).to(dev)
    g = torch.Generator().manual_seed(1)
    size, batch = cfg.data.image_size, cfg.train.batch_size
    x = torch.randn(batch, 3, size, size, generator=g).to(dev)
    y = torch.randint(0, 7, (batch,), generator=g).to(dev)
    return dev, cfg, model, x, y


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child_memory(args) -> None:
    """Run in a fresh process: peak memory increase (MiB) of one step of args.child = 'workload:mode'."""
    workload, mode = args.child.split(":")
    dev, cfg, model, x, y = setup(args)
    step = build_step(workload, mode, model, cfg, x, y, dev)
    step()  # warm-up: gradients and optimizer state now exist
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the next step's RSS growth is visible
    except OSError:
        pass
    before = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (Linux >= 4.0)
        peak = lambda: _status_kib("VmHWM")  # noqa: E731
    except OSError:
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # noqa: E731  (includes earlier peaks)
    step()
    print(json.dumps({"peak_mib": (peak() - before) / 1024}))


def memory_of(args, workload: str, mode: str) -> float:
    dev = torch.device(args.device)
    if dev.type == "cuda":
        _, cfg, model, x, y = setup(args)
        step = build_step(workload, mode, model, cfg, x, y, dev)
        step()  # warm-up
        sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        step()
        sync(dev)
        return (torch.cuda.max_memory_allocated(dev) - before) / 2**20
    cmd = [sys.executable, __file__, "--child", f"{workload}:{mode}", "--size", str(args.size),
           "--batch", str(args.batch), "--backbone", args.backbone, "--device", args.device,
           "--threads", str(args.threads), "--grid", *map(str, args.grid),
           *(["--config", str(args.config)] if args.config else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=dict(os.environ))
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--grid", type=int, nargs=3, default=[8, 4, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--modes", nargs="+", default=list(ALL_MODES), choices=ALL_MODES)
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--config", type=Path, help="time this recipe's model, frozen parts, image size and batch "
                    "(e.g. simulations/configs/dp.yaml) instead of --backbone/--size/--batch/--grid")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    # Opacus' hooks fire on module outputs when the input images need no gradient: expected, not worth a warning.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child_memory(args)
        return

    dev, cfg, model, x, y = setup(args)
    n_params = sum(p.numel() for p in model.parameters())
    trained = n_params - sum(p.numel() for part in cfg.train.frozen for p in getattr(model, part).parameters())
    m = cfg.model
    print(f"recipe: {args.config or 'command line'}; frozen: {', '.join(cfg.train.frozen) or 'nothing'} "
          f"({trained / 1e6:.2f}M of the weights train)")
    print(f"device={dev} backbone={m.backbone} width={m.width} ({m.norm} norm) size={cfg.data.image_size} "
          f"batch={cfg.train.batch_size} "
          f"threads={torch.get_num_threads()} repeats={args.repeats} σ={SIGMA} C={CLIP} "
          f"params={n_params / 1e6:.1f}M ({n_params * 4 / 2**20:.0f} MiB; per-sample gradients of the trained ones: "
          f"{trained * 4 * cfg.train.batch_size / 2**20:.0f} MiB)")
    print("peak MiB = a step's working memory above the steady state (weights, gradients, optimizer state)")
    for workload in args.workloads:
        modes = ["nonprivate"]
        steps = {}
        for mode in ["nonprivate", *args.modes]:
            try:
                fn = build_step(workload, mode, model, cfg, x, y, dev)
            except Exception as e:  # a mode Opacus cannot run on this model: report, don't stop
                print(f"  {workload}/{mode}: cannot run ({type(e).__name__}: {str(e)[:120]})")
                continue
            if fn is None:
                continue
            try:
                fn()  # warm-up (also catches modes that fail on the first step)
                sync(dev)
            except Exception as e:
                print(f"  {workload}/{mode}: failed ({type(e).__name__}: {str(e)[:120]})")
                continue
            steps[mode] = fn
            if mode != "nonprivate":
                modes.append(mode)
        times = {m: [] for m in steps}
        for _ in range(args.repeats):
            for m, fn in steps.items():  # interleaved
                sync(dev)
                t = time.perf_counter()
                fn()
                sync(dev)
                times[m].append(time.perf_counter() - t)
        del steps
        med = {m: sorted(v)[len(v) // 2] for m, v in times.items()}
        mem = {} if args.no_memory else {m: memory_of(args, workload, m) for m in med}
        base_t, base_m = med["nonprivate"], mem.get("nonprivate")
        what = {"finetune": "one progressive fine-tune batch (4 steps)", "ssl": "one progressive SSL batch (4 steps)",
                "single": "one step, all four branches"}[workload]
        print(f"\n{workload}: {what}")
        print(f"{'mode':>11}  {'median s':>9}  {'time ×':>7}  {'peak MiB':>9}  {'memory ×':>8}")
        for m in modes:
            if m not in med:
                continue
            mm = mem.get(m)
            mem_txt = f"{mm:9.0f}  {mm / base_m:7.2f}x" if mm is not None and base_m else f"{'-':>9}  {'-':>8}"
            print(f"{m:>11}  {med[m]:9.3f}  {med[m] / base_t:6.2f}x  {mem_txt}")


if __name__ == "__main__":
    main()
