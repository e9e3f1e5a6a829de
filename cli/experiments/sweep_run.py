"""The sweep itself: every cell in turn (skipping, resuming or rerunning it), the tables and plot after each."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from fgssl.config import Config
from fgssl.rundir import default_run_dir
from simulations import DEFAULT_CONFIG

from cli.common import format_table
from cli.progress import Output
from cli.experiments.sweep import (Cell, build_spec, cell_configs, cell_state, fmt_eps, run_cell, set_aside,
                                   switches_to_group_norm)
from cli.experiments.sweep_results import (CellResult, group, read_cell, render_markdown, save_utility_vs_epsilon,
                                           write_cells_csv, write_results_csv)


def _partition_text(cfg: Config) -> str:
    p = cfg.partition
    return f"{p.method} α={p.alpha:g}" if p.method == "dirichlet" else p.method


def _write_all(root: Path, results: list[CellResult], partition_text: str) -> None:
    points = group(results)
    write_cells_csv(root / "cells.csv", results)
    write_results_csv(root / "results.csv", points)
    (root / "results.md").write_text(render_markdown(points, results, partition_text), encoding="utf-8")
    save_utility_vs_epsilon(root / "utility_vs_epsilon.png", points, partition_text)


def _metrics_text(r: CellResult) -> str:
    parts = [f"{name} {r.metrics[k]:.3f}" for k, name in (("balanced_accuracy", "balanced accuracy"),
                                                          ("macro_auc", "macro AUC")) if r.metrics.get(k) is not None]
    if r.epsilon_spent is not None:
        parts.append(f"ε spent {r.epsilon_spent:.2f}")
    return ", ".join(parts)


def _summary_rows(results: list[CellResult]) -> list[dict[str, Any]]:
    rows = []
    for p in group(results):
        row: dict[str, Any] = {"ε": fmt_eps(p.epsilon)}
        if p.alpha is not None:
            row["α"] = f"{p.alpha:g}"
        row["seeds"] = f"{len(p.finished)}/{len(p.results)}"
        for key, name in (("balanced_accuracy", "balanced acc"), ("macro_auc", "macro AUC"), ("accuracy", "accuracy"),
                          ("epsilon_spent", "ε spent")):
            mean, std = p.stat(key)
            row[name] = "-" if mean is None else f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")
        rows.append(row)
    return rows


def run_sweep(args: argparse.Namespace) -> int:
    """`fgssl sweep` from its parsed arguments; the exit code (1 when a cell failed)."""
    out = Output.from_args(args, "sweep")
    spec = build_spec(args)
    base, configs = cell_configs(spec, DEFAULT_CONFIG)  # every cell validated before anything runs
    root = Path(spec.out or default_run_dir("sweep"))
    cells: list[Cell] = list(configs)
    partition_text = _partition_text(base)
    alphas = "" if spec.alphas is None else f" × α {', '.join(f'{a:g}' for a in spec.alphas)}"
    seeds = sorted({c.seed for c in cells})
    grid = f"ε {', '.join(fmt_eps(e) for e in spec.epsilons)}{alphas} × seeds {', '.join(map(str, seeds))}"
    out.emit("start", f"fgssl sweep: {len(cells)} cell{'s' if len(cells) != 1 else ''} ({grid}) in {root}",
             result=True, command="sweep", out=str(root), cells=[c.fields() for c in cells])
    if switches_to_group_norm(spec, base):
        out.emit("note", "note: model.norm=group in every cell: DP-SGD needs GroupNorm, and the ε = ∞ cells use it "
                 "too so that they are a fair reference", result=True, text="model.norm=group in every cell")
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False, allow_unicode=True),
                                     encoding="utf-8")
    results: list[CellResult] = []
    for i, cell in enumerate(cells, 1):
        results.append(_run_one(out, root, cell, configs[cell], f"[{i}/{len(cells)}] {cell.label}"))
        pending = [CellResult(c, root / "cells" / c.name, "not run") for c in cells[i:]]
        _write_all(root, results + pending, partition_text)  # after every cell: a stopped sweep keeps its table

    failed = [r for r in results if r.status == "failed"]
    if not out.json:
        rows = _summary_rows(results)
        print(format_table(rows, list(rows[0])))
    out.emit("done", f"fgssl sweep: wrote {root / 'results.csv'}, {root / 'results.md'}, {root / 'cells.csv'} and "
             f"{root / 'utility_vs_epsilon.png'}", result=True, command="sweep", out=str(root),
             results=str(root / "results.csv"), plot=str(root / "utility_vs_epsilon.png"),
             finished=sum(r.status == "finished" for r in results), failed=len(failed))
    if failed:
        names = ", ".join(f"{r.cell.name} ({r.error})" for r in failed)
        print(f"fgssl sweep: {len(failed)} of {len(cells)} cells failed: {names}; logs in {root / 'logs'}; "
              f"run the same command again to retry them", file=sys.stderr)
        return 1
    return 0


def _run_one(out: Output, root: Path, cell: Cell, cfg: Config, tag: str) -> CellResult:
    cell_dir = root / "cells" / cell.name
    state = cell_state(cell_dir, cfg)
    fields = {**cell.fields(), "run_dir": str(cell_dir)}
    if state.kind == "finished":
        out.emit("cell", f"{tag}: skipping, already finished with the same config ({cell_dir})", status="skipped",
                 **fields)
        return read_cell(cell, cell_dir)
    if state.kind == "stale":
        moved = set_aside(cell_dir, root)
        out.emit("cell", f"{tag}: {state.detail}; the old run is moved to {moved}", status="set_aside",
                 moved_to=str(moved), reason=state.detail, **fields)
    elif state.kind == "partial":
        shutil.rmtree(cell_dir)  # nothing to resume from; a fresh start keeps metrics.jsonl and the ledgers clean
        out.emit("cell", f"{tag}: {state.detail}; starting it again", status="restarting", reason=state.detail,
                 **fields)
    config_path = None
    if state.kind == "resumable":
        out.emit("cell", f"{tag}: resuming ({state.detail})", status="resuming", **fields)
    else:
        config_path = root / "configs" / f"{cell.name}.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
        out.emit("cell", f"{tag}: running in {cell_dir}", status="running", **fields)

    def relay(event: dict[str, Any]) -> None:
        if event.get("event") == "round":  # the rest (partition, report paths) is in the cell's directory
            body = {k: v for k, v in event.items() if k != "event"}
            out.emit("round", f"  {tag}: {event.get('text', '')}", **cell.fields(), **body)

    log = root / "logs" / f"{cell.name}.log"
    started = time.monotonic()
    outcome = run_cell(cell_dir, config_path, log, relay)
    wall = time.monotonic() - started
    result = read_cell(cell, cell_dir)
    if outcome.ok and result.status != "finished":
        outcome.ok, outcome.error = False, f"exited normally but wrote no readable {cell_dir / 'summary.json'}"
    if not outcome.ok:
        result = CellResult(cell, cell_dir, "failed", error=outcome.error)
        out.emit("cell", f"{tag}: FAILED after {wall:.0f} s: {outcome.error} (log: {log})", result=True,
                 status="failed", error=outcome.error, log=str(log), seconds=round(wall, 1), **fields)
        return result
    out.emit("cell", f"{tag}: done in {wall:.0f} s: {_metrics_text(result)}", status="finished",
             seconds=round(wall, 1), metrics=result.metrics, epsilon_spent=result.epsilon_spent, **fields)
    return result
