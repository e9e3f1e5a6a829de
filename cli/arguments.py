"""Options shared by several commands (their parsers add them; nothing here imports a command)."""

from __future__ import annotations

import argparse

from fgssl.config import DATASETS


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


def add_node_data_arguments(p: argparse.ArgumentParser) -> None:
    """The options `fgssl node` and `fgssl nodes` share: the data, the budget, the patience."""
    p.add_argument("--dataset", required=True, choices=DATASETS,
                   help="the local data's format; 'synthetic' generates this site's share of the built-in data")
    p.add_argument("--root", metavar="DIR", help="the local dataset folder, as the challenge ships it")
    p.add_argument("--max-epsilon", type=float, metavar="EPS",
                   help="the most ε of sample-level DP this hospital ever spends; it refuses rounds beyond it and "
                        "does not train in runs without privacy.mode=sample")
    p.add_argument("--delta", type=float, metavar="D",
                   help="the δ this hospital's ε is computed at; it refuses runs that ask a larger one (default: "
                        "min(1e-5, 1/(10 n)) for its n training images)")
    p.add_argument("--csv", help="folder data: the CSV of image paths and labels (relative to --root)")
    p.add_argument("--path-column", help="folder data: the CSV column of image paths")
    p.add_argument("--label-column", help="folder data: the CSV column of labels")
    p.add_argument("--group-column", help="folder data: the CSV column of patient/lesion ids (group-aware splits)")
    p.add_argument("--skip-bad-images", action="store_true", help="skip (and list) unreadable or missing images")
    p.add_argument("--data-changed", action="store_true",
                   help="the local data set changed since the state directory was first used (images added, removed, "
                        "relabelled): its privacy ledger takes the new data set and keeps counting the old releases")
    p.add_argument("--max-wait-time", type=float, default=120.0, metavar="S",
                   help="give up after S seconds without the SuperLink (default: 120; 0 = keep trying)")
    p.add_argument("--verbose", action="store_true", help="print the SuperNode's whole log, not only key lines")
