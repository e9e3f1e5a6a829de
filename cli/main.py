"""The `fgssl` command."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from cli.errors import run_command

# (name, help, module): a command's module is imported only when that command runs or shows its --help, so that
# `fgssl --help` and the torch-free commands (node, nodes, certs) start without importing torch.
COMMANDS: list[tuple[str, str, str]] = [
    ("simulate", "federated FG-SSL over virtual hospitals on Flower's simulation engine", "simulate_cmd"),
    ("train", "centralised FG-SSL pretraining then progressive fine-tuning", "train_cmd"),
    ("partition", "show and save how the data pool is split across virtual hospitals (table, partition.json, PNG)",
     "partition_cmd"),
    ("prepare", "decode and resize a real dataset (ISIC 2018/2017, APTOS 2019, folder) once into the training cache",
     "prepare_cmd"),
    ("certs", "federation CA, SuperLink TLS certificate and one SuperNode auth key pair per hospital", "certs_cmd"),
    ("serve", "coordinator: SuperLink with TLS and node authentication, register hospital keys, run the federation",
     "serve_cmd"),
    ("node", "hospital: one authenticated SuperNode over TLS that trains on this site's own data", "node_cmd"),
    ("nodes", "rehearsal: several hospitals' SuperNodes on this machine (own keys and state, one ClientApp launcher)",
     "nodes_cmd"),
    ("evaluate", "a trained model's full metric set on a labelled dataset (calibration, ROC/PR curves, sensitivity at "
                 "fixed specificity, flips), as JSON, Markdown and HTML", "evaluate_cmd"),
    ("predict", "class probabilities for new images from a trained model (run directory or model.json), as a CSV",
     "predict_cmd"),
    ("report", "write report.md, a self-contained report.html and plots/ for a simulate run (finished or not)",
     "report_cmd"),
    ("compare", "one table (compare.csv, compare.md) and one per-round plot comparing simulate and train runs",
     "compare_cmd"),
    ("sweep", "privacy-budget x heterogeneity experiments: one simulate run per (ε, α, seed), results table and plot",
     "sweep_cmd"),
    ("study", "an experiment's arms x seeds (train and simulate runs, resumable), its results table and plot",
     "study_cmd"),
    ("ledger", "a privacy ledger's history (a node's state directory or a data set's ledger): entries, ε per run and "
               "over its lifetime", "ledger_cmd"),
]


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI; only `selected`'s module is imported (None: every command's, e.g. for docs and tests)."""
    parser = argparse.ArgumentParser(prog="fgssl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, module in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if selected is None or name == selected:
            mod = importlib.import_module(f"cli.{module}")
            mod.add_arguments(p)
            p.set_defaults(func=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = {name for name, _, _ in COMMANDS}
    parser = build_parser(next((a for a in argv if a in names), ""))
    args = parser.parse_args(argv)
    return run_command(f"fgssl {args.command}", args, args.func)


if __name__ == "__main__":
    sys.exit(main())
