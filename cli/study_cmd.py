"""`fgssl study NAME`: run an experiment's arms × seeds (resumable) and write its results table and plot."""

from __future__ import annotations

import argparse


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
    from cli.experiments.study import run_experiment
    return run_experiment(args)
