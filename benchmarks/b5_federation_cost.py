"""B5: a federated simulation of 4 sites / centralised training on the same samples and optimiser steps.

Both runs are whole commands (`fgssl simulate` and `fgssl train` with train.pooled_sites, the union of the same
sites' training splits), with the epochs of the centralised run set to the federation's total local epochs, so
both take the same optimiser steps over the same images; interleaved pairs, medians of wall times. The federation
pays Flower and Ray's start-up, sending and aggregating weights, and evaluating every site every round; the
centralised run evaluates the pooled validation split every epoch.

It also splits the federation's overhead into a fixed cost per run and per round, from the tiny model with one
local batch per round (training then costs almost nothing): per round = (T(3 rounds) - T(1 round)) / 2, per run =
T(1 round) - per round.

    python -m benchmarks.b5_federation_cost [--quick] [--pairs 5] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from benchmarks.common import finish, median, parser, run_cli, tiny_config
from fgssl.config import load_config, parse_overrides
from simulations import DEFAULT_CONFIG

TARGET = 1.10


def pair(config: Path, sets: list[str], out: Path, i: int) -> tuple[float, float]:
    cfg = load_config(config, sets)
    fed = cfg.federation
    ssl_epochs = fed.ssl_rounds * (fed.ssl_local_epochs or fed.local_epochs)
    flags = [a for s in sets for a in ("--set", s)]
    sim = run_cli("simulate", ["--config", str(config), "--out", str(out / f"simulate-{i}"), *flags])
    central = run_cli("train", ["--config", str(config), "--out", str(out / f"train-{i}"), *flags,
                                "--set", "train.pooled_sites=true", "--set", f"train.ssl_epochs={ssl_epochs}",
                                "--set", f"train.finetune_epochs={fed.finetune_rounds * fed.local_epochs}"])
    return float(sim["wall_s"]), float(central["wall_s"])


def fixed_costs(out: Path) -> dict[str, float]:
    times = {}
    for rounds in (1, 3):
        config = tiny_config(out / f"tiny-{rounds}.yaml", federation={
            "sites": 4, "ssl_rounds": 0, "finetune_rounds": rounds, "max_local_batches": 1})
        times[rounds] = [float(run_cli("simulate", ["--config", str(config), "--out",
                                                    str(out / f"tiny-{rounds}-{k}")])["wall_s"]) for k in range(2)]
    per_round = (median(times[3]) - median(times[1])) / 2
    return {"per_round_s": round(per_round, 2), "per_run_s": round(median(times[1]) - per_round, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--pairs", type=int, default=5, help="timed pairs after one warm-up pair")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override the default config (e.g. data.num_samples=800 for a shorter run)")
    args = ap.parse_args(argv)
    parse_overrides(args.sets)  # a bad --set fails here, before any run
    with tempfile.TemporaryDirectory(prefix="fgssl-b5-") as tmp:
        out = Path(tmp)
        config, pairs = DEFAULT_CONFIG, args.pairs
        if args.quick:
            config, pairs = tiny_config(out / "quick.yaml", federation={"sites": 2, "ssl_rounds": 0}), 1
        else:
            pair(config, args.sets, out, -1)  # warm-up: page cache, compiled bytecode
        runs = [pair(config, args.sets, out, i) for i in range(pairs)]
        costs = fixed_costs(out) if not args.quick else {"per_round_s": None, "per_run_s": None}
    sim, central = median([r[0] for r in runs]), median([r[1] for r in runs])
    print(f"config: {config.name} {' '.join(args.sets)}; {pairs} pairs after a warm-up, medians of wall times")
    for i, (s, c) in enumerate(runs):
        print(f"pair {i}: fgssl simulate {s:.1f} s, fgssl train (pooled) {c:.1f} s, ratio {s / c:.3f}")
    print(f"federation overhead: {costs['per_run_s']} s per run, {costs['per_round_s']} s per round (tiny model)")
    return finish("B5", "federated simulation / centralised training, same samples and steps", sim / central, TARGET,
                  quick=args.quick, simulate_s=round(sim, 1), train_s=round(central, 1), pairs=pairs,
                  overrides=args.sets, **costs)


if __name__ == "__main__":
    sys.exit(main())
