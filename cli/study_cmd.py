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
    p.add_argument("--arms", nargs="+", metavar="ARM", help="only these arms (default: all); the table keeps the rest")
    p.add_argument("--quick", action="store_true",
                   help="one seed and the file's 'quick' overrides: checks that every arm runs (minutes)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every arm (repeatable), e.g. the paper's scale; use its own --out")
    p.add_argument("--plan", action="store_true", help="list the runs and their state; run nothing")
    p.add_argument("--quiet", action="store_true", help="only the results")


def run(args: argparse.Namespace) -> int:
    from .errors import UserError
    from .study import find_experiment, plan, read_experiment, run_state, run_study, write_results

    out_channel = Output("study", quiet=args.quiet)
    exp = read_experiment(find_experiment(args.experiment))
    unknown = sorted(set(args.arms or ()) - {a.name for a in exp.arms})
    if unknown:
        raise UserError(f"fgssl study: {exp.name} has no arm {', '.join(unknown)} "
                        f"(its arms: {', '.join(a.name for a in exp.arms)})")
    overrides = tuple(args.overrides)
    every = plan(exp, quick=args.quick, overrides=overrides)  # every arm's config validated before any run
    runs = [r for r in plan(exp, quick=args.quick, seeds=args.seeds, overrides=overrides)
            if not args.arms or r.arm.name in args.arms]
    out = Path(args.out or f"runs/study-{exp.name}{'-quick' if args.quick else ''}").resolve()
    if args.plan:
        for r in runs:
            print(f"{r.name}: fgssl {r.arm.command} ({run_state(out / 'runs' / r.name, r.config(), r.arm.command)})")
        return 0
    arms = len({r.arm.name for r in runs})
    out_channel.emit("start", f"fgssl study {exp.name}: {len(runs)} runs ({arms} arms × "
                     f"{len(runs) // max(arms, 1)} seeds) in {out}", result=True)
    errors = run_study(exp, runs, out, out_channel.say)
    # the table covers the whole file (what other invocations finished too), named seeds that it lacks included
    extra = [r for r in runs if r.name not in {e.name for e in every}]
    paths = write_results(out, exp, every + extra, errors)
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"fgssl study: results in {paths['markdown']}, {paths['results']}, {paths['runs']}"
          + (f", {paths['plot']}" if "plot" in paths else ""))
    if errors:
        print(f"fgssl study: error: {len(errors)} of {len(runs)} runs failed (logs in {out / 'logs'})")
        return 1
    return 0
