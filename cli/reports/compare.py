"""Side-by-side comparison of finished or stopped `fgssl simulate` and `fgssl train` run directories.

Reads only each run's files (config.yaml, metrics.jsonl, summary.json): one row per run with its setup and final
metrics (pooled test metrics for a simulate run, test metrics for a train run), and the series for a per-round plot.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgssl.rundir import RunDir, RunFileError, SavedRun

from cli.errors import UserError
from cli.reports.report import ReportError, load_run
from cli.reports.run_files import is_finite_number

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
COLUMNS = ["run", "command", "dataset", "sites", "partition", "strategy", "privacy", "progress", "status",
           *METRICS]


class CompareError(UserError):
    """A path cannot be compared (not a run directory, unreadable). The message names the path."""


@dataclass
class RunRow:
    path: Path
    command: str
    row: dict[str, Any]
    pooled: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # simulate: (round, pooled record)

    @property
    def name(self) -> str:
        return str(self.row["run"])

    def metric_series(self, metric: str) -> list[tuple[int, float]]:
        return [(r, float(m[metric])) for r, m in self.pooled if is_finite_number(m.get(metric))]


def _open(path: Path) -> SavedRun:
    try:
        return RunDir.open(path)
    except RunFileError as e:
        raise CompareError(str(e)) from None


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    v = config.get(name)
    return v if isinstance(v, dict) else {}


def detect_command(path: Path) -> str:
    """'simulate' or 'train'; raises CompareError naming the path when it is not a run directory."""
    run = _open(path)
    if not run.has_config or not run.has_metrics:
        raise CompareError(f"{path} is not a run directory (needs config.yaml and metrics.jsonl)")
    if run.command is None:
        raise CompareError(f"{path} is not a run directory (metrics.jsonl holds no simulate or train records)")
    return run.command


def _partition_text(config: dict[str, Any]) -> str:
    p = _section(config, "partition")
    method = p.get("method", "-")
    if method == "dirichlet" and p.get("alpha") is not None:
        return f"dirichlet α={p['alpha']}"
    if method == "pathological" and p.get("classes_per_site") is not None:
        return f"pathological {p['classes_per_site']} classes/site"
    if method == "quantity" and p.get("quantity_exponent") is not None:
        return f"quantity exp={p['quantity_exponent']}"
    return str(method)


def _strategy_text(config: dict[str, Any]) -> str:
    f = _section(config, "federation")
    strategy, server = f.get("strategy", "fedavg"), f.get("server_optimizer", "fedavg")
    return f"{strategy} / server {server}"


def _privacy_text(mode: Any, eps: float | None) -> str:
    if mode in (None, "none"):
        return "none"
    return f"{mode}, max ε={eps:.2f}" if eps is not None else f"{mode}, ε=-"


def _simulate_row(path: Path, name: str) -> RunRow:
    try:
        run = load_run(path)
    except ReportError as e:
        raise CompareError(str(e)) from None
    final, eval_round = run.final_metrics()
    pooled = final.get("pooled", {})
    total = run.total_rounds
    done = run.total_rounds if run.finished else run.last_round
    status = "finished" if run.finished else f"stopped at round {run.last_round}"
    if not run.finished and eval_round is not None:
        status += f" (metrics from round {eval_round})"
    eps = None
    if run.summary and isinstance(run.summary.get("privacy"), dict) and is_finite_number(
            run.summary["privacy"].get("max_epsilon_spent")):
        eps = float(run.summary["privacy"]["max_epsilon_spent"])
    elif run.epsilon_last():
        eps = max(e for e, _, _ in run.epsilon_last().values())
    sites = run.summary.get("sites") if run.summary else None
    row = {
        "run": name, "command": "simulate",
        "dataset": run.section("data").get("dataset", "-"),
        "sites": sites if sites is not None else run.section("federation").get("sites", len(run.sites())),
        "partition": _partition_text(run.config), "strategy": _strategy_text(run.config),
        "privacy": _privacy_text(run.section("privacy").get("mode"), eps),
        "progress": f"{done}/{total if total is not None else '?'} rounds", "status": status,
        **{m: pooled.get(m) for m in METRICS},
    }
    series = sorted((int(r["round"]), r) for r in run.records
                    if str(r.get("site")) == "pooled" and is_finite_number(r.get("balanced_accuracy")))
    return RunRow(path, "simulate", row, pooled=series)


def _train_row(path: Path, name: str) -> RunRow:
    run = _open(path)
    config, summary, records = run.config, run.summary, run.records
    t = _section(config, "train")
    planned = None
    try:
        planned = int(t["ssl_epochs"]) + int(t["finetune_epochs"])
    except (KeyError, TypeError, ValueError):
        pass
    done = sum(1 for r in records if r.get("phase") in ("ssl", "finetune") and "epoch" in r)
    test = summary.get("test") if summary and isinstance(summary.get("test"), dict) else None
    if test is None:  # stopped: no test metrics (they are computed only at the end)
        status = f"stopped at epoch {done} (no test metrics)"
        test = {}
    else:
        status = "finished"
    row = {
        "run": name, "command": "train",
        "dataset": _section(config, "data").get("dataset", "-"),
        "sites": "-", "partition": "- (centralised)", "strategy": "- (centralised)",
        "privacy": "none",
        "progress": f"{done}/{planned if planned is not None else '?'} epochs", "status": status,
        **{m: test.get(m) for m in METRICS},
    }
    return RunRow(path, "train", row)


def _names(paths: list[Path]) -> list[str]:
    names = [p.resolve().name for p in paths]
    for i, p in enumerate(paths):
        if names.count(names[i]) > 1:
            names[i] = str(p)
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return out


def load_rows(run_dirs: list[str | Path]) -> list[RunRow]:
    paths = [Path(p) for p in run_dirs]
    commands = [detect_command(p) for p in paths]  # every path checked before any work
    rows = []
    for path, cmd, name in zip(paths, commands, _names(paths)):
        rows.append(_simulate_row(path, name) if cmd == "simulate" else _train_row(path, name))
    return rows


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


def write_csv(path: Path, rows: list[RunRow]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow(["" if r.row.get(c) is None else r.row.get(c) for c in COLUMNS])
    return path


def render_markdown(rows: list[RunRow], metric: str) -> str:
    head = "| " + " | ".join(COLUMNS) + " |"
    sep = "|" + "|".join("---:" if c in METRICS else "---" for c in COLUMNS) + "|"
    body = ["| " + " | ".join(_cell(r.row.get(c)).replace("|", "\\|") for c in COLUMNS) + " |" for r in rows]
    note = ("Metrics: pooled test metrics of the final (or last evaluated) round for `simulate` runs, "
            "held-out test metrics for `train` runs.")
    return "\n".join(["# Run comparison", "", note, "", head, sep, *body, "",
                      f"![{metric} per round](compare.png)", ""])
