"""Helpers shared by the commands: config resolution, run directories and tables (progress: cli/progress.py)."""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fgssl.config import Config, load_config
from fgssl.rundir import RunDir, default_run_dir
from server.cross_site import CSV_FILE, display_rows


def resolve_config(args: argparse.Namespace, default_path: str | Path | None = None) -> Config:
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    return load_config(args.config or default_path, overrides)


def open_run_dir(args: argparse.Namespace, command: str) -> RunDir:
    return RunDir(args.out or default_run_dir(command))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        return "-" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def cross_site_text(table: dict[str, Any]) -> str:
    """The cross-site table (summary.json's `cross_site`) as `simulate` and `serve` print it at the end."""
    columns, rows = display_rows(table)
    return "\n".join([f"cross-site evaluation ({CSV_FILE}): rows are models, columns each site's test split",
                      format_table([dict(zip(columns, r)) for r in rows], columns), str(table.get("note", ""))])
