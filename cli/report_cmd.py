"""`fgssl report RUN_DIR`: report.md, a self-contained report.html and plots/ for a `fgssl simulate` run."""

from __future__ import annotations

import argparse

from cli.reports.report import PLOTS_DIR, write_report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `fgssl simulate` (finished or not)")
    p.add_argument("--quiet", action="store_true", help="print only where the report was written")


def run(args: argparse.Namespace) -> int:
    paths = write_report(args.run_dir)
    if not args.quiet:
        state = "finished" if paths.finished else f"did not finish (stopped at round {paths.last_round})"
        print(f"fgssl report: run {args.run_dir} {state}; {len(paths.plots)} plots")
    print(f"fgssl report: wrote {paths.markdown}, {paths.html} and {paths.html.parent / PLOTS_DIR}/")
    return 0
