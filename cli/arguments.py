"""Options shared by several commands (their parsers add them; nothing here imports a command)."""

from __future__ import annotations

import argparse


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
