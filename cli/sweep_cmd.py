"""`fgssl sweep`: privacy-budget × heterogeneity experiments, one `fgssl simulate` run per (ε, α, seed).

    fgssl sweep --epsilons 1 3 8 inf --alphas 0.3 1.0 --seeds 0 1 [--config FILE] [--set KEY=VALUE ...]
                [--spec SWEEP.yaml] [--out DIR] [--quiet|--json]

Writes OUT/cells/<cell>/ (a full run directory each), OUT/results.csv, OUT/results.md, OUT/cells.csv and
OUT/utility_vs_epsilon.png. Running the same command again with the same --out skips finished cells, resumes
interrupted ones and reruns failed ones. A failed cell does not stop the sweep; the exit status is then 1.
"""

from __future__ import annotations

import argparse

from cli.experiments.sweep import alpha_arg, epsilon_arg, seed_arg


def add_arguments(p: argparse.ArgumentParser) -> None:
    from cli.arguments import add_output_arguments
    p.add_argument("--epsilons", nargs="+", type=epsilon_arg, metavar="EPS",
                   help="privacy budgets ε per site (privacy.target_epsilon, DP-SGD); inf = no differential privacy")
    p.add_argument("--alphas", nargs="+", type=alpha_arg, metavar="ALPHA",
                   help="Dirichlet label-skew concentrations (partition.alpha; smaller = more skewed); "
                        "default: the config's partition, unchanged")
    p.add_argument("--seeds", nargs="+", type=seed_arg, metavar="SEED",
                   help="seeds, one run each per (ε, α) (default: the config's seed)")
    p.add_argument("--config", help="base YAML config of every cell (default: simulations/configs/default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one base config value for every cell (repeatable)")
    p.add_argument("--spec", metavar="FILE",
                   help="YAML sweep spec with any of: config, set, epsilons, alphas, seeds, out (relative paths "
                        "are relative to the spec file); command-line values win")
    p.add_argument("--out", help="sweep directory (default: runs/<timestamp>-sweep); reuse it to resume")
    add_output_arguments(p)


def run(args: argparse.Namespace) -> int:
    from cli.experiments.sweep_run import run_sweep
    return run_sweep(args)
