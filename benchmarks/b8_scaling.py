"""B8: how a simulated federation's rounds grow with sites: 4, 8, 16 and 32 sites with the same data per site.

Each federation is one `fgssl simulate` of the tiny model (the suite's: ResNet-10 at width 16, 32 px) with 40 images
a site, one SSL and two fine-tune rounds, after one untimed federation; the round times come from the run's own round events, the memory from
sampling the summed resident memory (PSS) of the run's whole process tree (Ray's workers included) once a second.
Figures: R² of a straight-line fit of median round time against sites (linear growth gives R² near 1; a quadratic
term, e.g. every site evaluating every site, bends it), and peak memory at the most sites / at the fewest.

    python -m benchmarks.b8_scaling [--quick] [--sites 4 8 16 32] [--per-site 40]
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from benchmarks.common import finish, median, parser, run_cli, tiny_config
from tests._procs import descendants, proc_table

TARGET_R2, TARGET_MEMORY = 0.95, 1.5


def _tree_pss_kib(root: int) -> int:
    tree = descendants({root}, proc_table())
    total = 0
    for pid in tree:
        try:
            for line in (Path("/proc") / str(pid) / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


class PeakMemory(threading.Thread):
    """Peak summed PSS of this process's children (the run being measured), sampled once a second."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.done, self.peak_kib, self.me = threading.Event(), 0, os.getpid()

    def run(self) -> None:
        while not self.done.wait(1.0):
            self.peak_kib = max(self.peak_kib, _tree_pss_kib(self.me) - self.base_kib)

    def start(self) -> None:
        self.base_kib = _tree_pss_kib(self.me)  # this benchmark's own process, not the run's
        super().start()


def federation(sites: int, per_site: int, rounds: tuple[int, int], out: Path) -> dict[str, float]:
    config = tiny_config(out / f"sites-{sites}.yaml", data={"num_samples": per_site * sites},
                         federation={"sites": sites, "min_nodes": sites, "ssl_rounds": rounds[0],
                                     "finetune_rounds": rounds[1], "max_local_batches": None})
    memory = PeakMemory()
    memory.start()
    try:
        result = run_cli("simulate", ["--config", str(config), "--out", str(out / f"run-{sites}")])
    finally:
        memory.done.set()
        memory.join()
    rounds_s = result["round_s"]
    return {"sites": sites, "wall_s": round(float(result["wall_s"]), 1), "round_s": rounds_s,
            "median_round_s": median(rounds_s[1:] or rounds_s), "peak_mib": memory.peak_kib // 1024}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--sites", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--per-site", type=int, default=40)
    args = ap.parse_args(argv)
    sites, rounds = ([2, 3], (0, 1)) if args.quick else (args.sites, (1, 2))
    with tempfile.TemporaryDirectory(prefix="fgssl-b8-") as tmp:
        if not args.quick:  # untimed: the first federation of a session pays for cold caches (it was the slowest)
            (Path(tmp) / "warm-up").mkdir()
            federation(sites[0], args.per_site, rounds, Path(tmp) / "warm-up")
        rows = [federation(n, args.per_site, rounds, Path(tmp)) for n in sites]
    x = np.array([r["sites"] for r in rows], float)
    y = np.array([r["median_round_s"] for r in rows], float)
    slope, intercept = np.polyfit(x, y, 1)
    residual = float(((y - (slope * x + intercept)) ** 2).sum())
    spread = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - residual / spread if spread > 0 else 1.0
    memory_ratio = rows[-1]["peak_mib"] / max(rows[0]["peak_mib"], 1)
    print(f"{'sites':>5} {'wall s':>7} {'median round s':>14} {'peak MiB':>8}  rounds (s)")
    for r in rows:
        print(f"{r['sites']:>5} {r['wall_s']:>7} {r['median_round_s']:>14.1f} {r['peak_mib']:>8}  {r['round_s']}")
    print(f"round time ≈ {intercept:.1f} s + {slope:.2f} s × sites (R² {r2:.3f}); peak memory {sites[-1]} / "
          f"{sites[0]} sites: {memory_ratio:.2f} (target ≤ {TARGET_MEMORY})")
    memory_ok = memory_ratio <= TARGET_MEMORY
    code = finish("B8", f"R² of round time vs sites ({'-'.join(map(str, sites))})", r2, TARGET_R2,
                  higher_is_better=True, quick=args.quick, memory_ratio=round(memory_ratio, 2),
                  memory_within=memory_ok, slope_s_per_site=round(float(slope), 2),
                  intercept_s=round(float(intercept), 1), rows=rows)
    return code if (memory_ok or args.quick) else 1


if __name__ == "__main__":
    sys.exit(main())
