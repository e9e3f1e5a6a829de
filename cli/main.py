"""The `fgssl` command."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Callable, Sequence

from fgssl.config import ConfigError
from strategies.fgssl_strategy import RoundFailed

from .arguments import add_output_arguments, add_run_arguments  # noqa: F401 (commands used to import them here)

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
    ("report", "write report.md, a self-contained report.html and plots/ for a simulate run (finished or not)",
     "report_cmd"),
    ("compare", "one table (compare.csv, compare.md) and one per-round plot comparing simulate and train runs",
     "compare_cmd"),
    ("sweep", "privacy-budget x heterogeneity experiments: one simulate run per (ε, α, seed), results table and plot",
     "sweep_cmd"),
    ("study", "an experiment's arms x seeds (train and simulate runs, resumable), its results table and plot",
     "study_cmd"),
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


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    print(f"fgssl {args.command}: {message}", file=sys.stderr)
    if getattr(args, "json", False):  # a JSON reader sees the end of the stream too
        print(json.dumps({"event": "error", "command": args.command, "message": message, "exit_code": code},
                         ensure_ascii=False), flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = {name for name, _, _ in COMMANDS}
    parser = build_parser(next((a for a in argv if a in names), ""))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        return _fail(args, f"error: {e}", 2)
    except (RoundFailed, TimeoutError) as e:
        return _fail(args, f"error: {e}", 1)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
