"""The `fgssl` command."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from fgssl.config import ConfigError
from strategies.fgssl_strategy import RoundFailed

from . import simulate_cmd, train_cmd
from . import partition_cmd
from . import prepare_cmd
from . import certs_cmd
from . import serve_cmd, node_cmd, nodes_cmd
from . import report_cmd
from . import compare_cmd
from . import sweep_cmd
from . import study_cmd

# Each entry: (name, help, add_arguments, run)
COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = [
    ("simulate", "federated FG-SSL over virtual hospitals on Flower's simulation engine", simulate_cmd.add_arguments,
     simulate_cmd.run),
    ("train", "centralised FG-SSL pretraining then progressive fine-tuning", train_cmd.add_arguments, train_cmd.run),
    ("partition", "show and save how the data pool is split across virtual hospitals (table, partition.json, PNG)",
     partition_cmd.add_arguments, partition_cmd.run),
    ("prepare", "decode and resize a real dataset (ISIC 2018/2017, APTOS 2019, folder) once into the training cache",
     prepare_cmd.add_arguments, prepare_cmd.run),
    ("certs", "federation CA, SuperLink TLS certificate and one SuperNode auth key pair per hospital",
     certs_cmd.add_arguments, certs_cmd.run),
    ("serve", "coordinator: SuperLink with TLS and node authentication, register hospital keys, run the federation",
     serve_cmd.add_arguments, serve_cmd.run),
    ("node", "hospital: one authenticated SuperNode over TLS that trains on this site's own data",
     node_cmd.add_arguments, node_cmd.run),
    ("nodes", "rehearsal: several hospitals' SuperNodes on this machine (own keys and state, one ClientApp launcher)",
     nodes_cmd.add_arguments, nodes_cmd.run),
    ("report", "write report.md, a self-contained report.html and plots/ for a simulate run (finished or not)",
     report_cmd.add_arguments, report_cmd.run),
    ("compare", "one table (compare.csv, compare.md) and one per-round plot comparing simulate and train runs",
     compare_cmd.add_arguments, compare_cmd.run),
    ("sweep", "privacy-budget x heterogeneity experiments: one simulate run per (ε, α, seed), results table and plot",
     sweep_cmd.add_arguments, sweep_cmd.run),
    ("study", "an experiment's arms x seeds (train and simulate runs, resumable), its results table and plot",
     study_cmd.add_arguments, study_cmd.run),
]


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that writes a run directory."""
    p.add_argument("--config", help="YAML config file (defaults apply to missing keys)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set model.backbone=resnet34 (repeatable)")
    p.add_argument("--out", help="run directory to write (default: runs/<timestamp>-<command>)")
    p.add_argument("--seed", type=int, help="random seed (overrides the config's seed)")
    add_output_arguments(p)


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    """--quiet / --json, for every command with long-running steps (see cli/progress.py)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quiet", action="store_true", help="no progress output, only results")
    g.add_argument("--json", action="store_true",
                   help="machine-readable output: one JSON object per line on stdout, each with an \"event\" key")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fgssl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, add_args, run in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(func=run)
    return parser


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    print(f"fgssl {args.command}: {message}", file=sys.stderr)
    if getattr(args, "json", False):  # a JSON reader sees the end of the stream too
        print(json.dumps({"event": "error", "command": args.command, "message": message, "exit_code": code},
                         ensure_ascii=False), flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
