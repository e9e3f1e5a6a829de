"""`fgssl study NAME`: run an experiment's arms × seeds (resumable) and write its results table and plot."""

from __future__ import annotations

import argparse
from pathlib import Path

from .progress import Output


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", metavar="NAME",
                   help="an experiment file (.yaml) or the name of one in simulations/configs/experiments/")
    p.add_argument("--out", metavar="DIR", help="where the runs and tables go (default: runs/study-NAME)")
    p.add_argument("--seeds", type=int, nargs="+", metavar="N", help="only these seeds (default: the file's)")
    p.add_argument("--quick", action="store_true",
                   help="one seed and the file's 'quick' overrides: checks that every arm runs (minutes)")
    p.add_argument("--plan", action="store_true", help="list the runs and their state; run nothing")
    p.add_argument("--quiet", action="store_true", help="only the results")


def run(args: argparse.Namespace) -> int:
    from .study import find_experiment, plan, read_experiment, run_state, run_study, write_results

    out_channel = Output("study", quiet=args.quiet)
    exp = read_experiment(find_experiment(args.experiment))
    runs = plan(exp, quick=args.quick, seeds=args.seeds)  # every arm's config validated before any run
    out = Path(args.out or f"runs/study-{exp.name}{'-quick' if args.quick else ''}").resolve()
    if args.plan:
        for r in runs:
            print(f"{r.name}: fgssl {r.arm.command} ({run_state(out / 'runs' / r.name, r.config(), r.arm.command)})")
        return 0
    out_channel.emit("start", f"fgssl study {exp.name}: {len(runs)} runs ({len(exp.arms)} arms × "
                     f"{len(runs) // len(exp.arms)} seeds) in {out}", result=True)
    errors = run_study(exp, runs, out, out_channel.say)
    paths = write_results(out, exp, runs, errors)
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"fgssl study: results in {paths['markdown']}, {paths['results']}, {paths['runs']}"
          + (f", {paths['plot']}" if "plot" in paths else ""))
    if errors:
        print(f"fgssl study: error: {len(errors)} of {len(runs)} runs failed (logs in {out / 'logs'})")
        return 1
    return 0
