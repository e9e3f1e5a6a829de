"""`fgssl compare RUN_DIR...`: one table (printed, compare.csv, compare.md) and compare.png across runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from fgssl.rundir import default_run_dir

from cli.common import format_table
from cli.reports.compare import COLUMNS, METRICS, load_rows, render_markdown, write_csv

METRIC_LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro F1",
                 "macro_auc": "macro AUC"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+",
                   help="run directories written by `fgssl simulate` or `fgssl train` (finished or not)")
    p.add_argument("--out", help="directory to write compare.csv, compare.md and compare.png "
                                 "(default: runs/<timestamp>-compare)")
    p.add_argument("--metric", choices=METRICS, default="balanced_accuracy",
                   help="metric drawn per round in compare.png (default: balanced_accuracy)")


def run(args: argparse.Namespace) -> int:
    rows = load_rows(args.run_dirs)
    out = Path(args.out or default_run_dir("compare"))
    out.mkdir(parents=True, exist_ok=True)
    print(format_table([r.row for r in rows], COLUMNS))
    write_csv(out / "compare.csv", rows)
    (out / "compare.md").write_text(render_markdown(rows, args.metric), encoding="utf-8")

    from cli.reports.plots import save_compare_curves  # matplotlib only when drawing
    label = METRIC_LABELS[args.metric]
    series = {r.name + ("" if r.row["status"] == "finished" else f" ({r.row['status'].split(' (')[0]})"):
              r.metric_series(args.metric) for r in rows if r.command == "simulate"}
    refs = {r.name: float(r.row[args.metric]) for r in rows
            if r.command == "train" and r.row.get(args.metric) is not None}
    save_compare_curves(out / "compare.png", series, refs, label,
                        title=f"Test {label} per round: pooled for federated runs, dashed for centralised runs")
    print(f"fgssl compare: wrote {out / 'compare.csv'}, {out / 'compare.md'} and {out / 'compare.png'}")
    return 0
