"""B6: bytes a site uploads per round / the same update uploaded as float32 values; and what it costs in accuracy.

1. Bytes: for each phase of the default model, what one site's reply carries on the wire (array values and headers,
   as Flower serialises them) in the compact encoding (strategies/wire.py) / as float32 values. Exact, no timing.
2. Accuracy: the default run (`fgssl simulate`, simulations/configs/default.yaml) with
   federation.upload_encoding=float16_delta and =float32, per seed, interleaved; the pooled test accuracy of the two
   must agree within 0.5 points on the mean over seeds. The runs also give the upload bytes each site reported in
   metrics.jsonl, which must match part 1. Finished runs under --out are reused, so an interrupted benchmark resumes.

    python -m benchmarks.b6_upload_bytes [--quick] [--seeds 0 1] [--out DIR]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from flwr.app import RecordDict

from benchmarks.common import REPO, finish, parser
from fgssl.config import load_config
from server.app import initial_global
from simulations import DEFAULT_CONFIG
from strategies.fgssl_strategy import FGSSLStrategy
from strategies.flower import to_record, uploaded_bytes
from strategies.wire import encode

TARGET, MAX_ACCURACY_GAP = 0.5, 0.005
QUICK = {"seed": 1, "data": {"num_samples": 160, "image_size": 32},
         "model": {"backbone": "resnet10", "width": 16, "granularities": [4, 2, 1], "block_mid_channels": 16,
                   "block_out_channels": 32, "embed_dim": 16},
         "train": {"batch_size": 16},
         "federation": {"sites": 2, "ssl_rounds": 1, "finetune_rounds": 1, "max_local_batches": 2}}


def bytes_per_phase(config: Path) -> dict[str, dict[str, int]]:
    cfg = load_config(config)
    global_ = initial_global(cfg, cfg.data.num_classes)
    strategy = FGSSLStrategy(cfg.federation, list(global_), frozen=cfg.train.frozen)
    rng = np.random.default_rng(0)
    out = {}
    for phase in ("ssl", "finetune"):
        sent = {k: global_[k] for k in strategy.keys_to_send(phase)}
        trained = {k: (v + rng.normal(0, 1e-3, v.shape)).astype(v.dtype) if v.dtype.kind == "f" else v + 3
                   for k, v in sent.items()}
        plain = uploaded_bytes(RecordDict({"arrays": to_record(trained)}))
        compact = uploaded_bytes(RecordDict({"arrays": to_record(encode(trained, sent))}))
        out[phase] = {"tensors": len(sent), "float32_bytes": plain, "compact_bytes": compact}
    return out


def run(config: Path, encoding: str, seed: int, out: Path) -> dict[str, float]:
    """One default run (reused when already finished): pooled test figures and the sites' upload bytes."""
    run_dir = out / f"{encoding}-seed{seed}"
    if not (run_dir / "summary.json").is_file():
        env = dict(os.environ, PYTHONPATH=str(REPO))
        subprocess.run([sys.executable, "-m", "cli.main", "simulate", "--config", str(config), "--out", str(run_dir),
                        "--seed", str(seed), "--set", f"federation.upload_encoding={encoding}", "--quiet"],
                       cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((run_dir / "summary.json").read_text())
    pooled = summary["final"]["pooled"]
    uploads = [json.loads(line).get("train_upload_bytes") for line in (run_dir / "metrics.jsonl").open()]
    return {"accuracy": pooled["accuracy"], "balanced_accuracy": pooled["balanced_accuracy"],
            "majority_rate": pooled["majority_rate"], "elapsed_s": summary["elapsed_s"],
            "max_upload_bytes": max(u for u in uploads if u is not None)}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "fgssl-bench-b6")
    args = ap.parse_args(argv)
    config, seeds = DEFAULT_CONFIG, args.seeds
    if args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        config, seeds = args.out / "quick.yaml", [1]
        config.write_text(yaml.safe_dump(QUICK))
    sizes = bytes_per_phase(config)
    print(f"{'phase':>8} {'tensors':>7} {'float32 bytes':>13} {'compact bytes':>13} {'ratio':>6}")
    for phase, s in sizes.items():
        print(f"{phase:>8} {s['tensors']:>7} {s['float32_bytes']:>13,} {s['compact_bytes']:>13,} "
              f"{s['compact_bytes'] / s['float32_bytes']:6.3f}")
    ratio = max(s["compact_bytes"] / s["float32_bytes"] for s in sizes.values())
    # --quick: one compact run, checked against the float32 size of part 1 (the accuracy needs both and seeds)
    encodings = ("float16_delta",) if args.quick else ("float32", "float16_delta")
    runs = {(enc, seed): run(config, enc, seed, args.out) for seed in seeds for enc in encodings}
    if args.quick:
        runs["float32", seeds[0]] = {**runs["float16_delta", seeds[0]], "accuracy": float("nan"),
                                     "max_upload_bytes": max(s["float32_bytes"] for s in sizes.values())}
    print(f"\n{'seed':>4} {'encoding':>13} {'accuracy':>8} {'bal. acc.':>9} {'majority':>8} {'upload B':>10} "
          f"{'wall s':>6}")
    for (enc, seed), r in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"{seed:>4} {enc:>13} {r['accuracy']:8.4f} {r['balanced_accuracy']:9.4f} {r['majority_rate']:8.4f} "
              f"{r['max_upload_bytes']:>10,} {r['elapsed_s']:6.0f}")
    mean = {enc: statistics.mean(runs[enc, s]["accuracy"] for s in seeds) for enc in ("float32", "float16_delta")}
    gap = mean["float16_delta"] - mean["float32"]
    measured = max(r["max_upload_bytes"] for (enc, _), r in runs.items() if enc == "float16_delta") / \
        max(r["max_upload_bytes"] for (enc, _), r in runs.items() if enc == "float32")
    print(f"mean pooled test accuracy over seeds {seeds}: float16_delta {mean['float16_delta']:.4f}, float32 "
          f"{mean['float32']:.4f} (gap {gap * 100:+.2f} points, allowed ±{MAX_ACCURACY_GAP * 100:.1f}); "
          f"upload bytes in the runs' metrics: ratio {measured:.4f}")
    within = bool(abs(gap) <= MAX_ACCURACY_GAP)
    code = finish("B6", "compact upload bytes / float32 upload bytes (worse phase)", ratio, TARGET, quick=args.quick,
                  phases=sizes, accuracy_gap=round(gap, 4), accuracy_within=within, run_bytes_ratio=round(measured, 4),
                  seeds=seeds, runs={f"{e}-seed{s}": r for (e, s), r in runs.items()})
    return code if (within or args.quick) else 1


if __name__ == "__main__":
    sys.exit(main())
