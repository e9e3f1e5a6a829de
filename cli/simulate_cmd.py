"""`fgssl simulate`: a whole federation of virtual hospitals on Flower's simulation engine."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fgssl.config import ConfigError, load_config
from fgssl.metrics import baseline_warning
from fgssl.rundir import CONFIG, RunDir
from simulations import DEFAULT_CONFIG

from cli.common import cross_site_text, format_table, open_run_dir, resolve_config, seed_everything
from cli.progress import Output

TABLE = ["site", "num_examples", "accuracy", "majority_rate", "balanced_accuracy", "macro_f1", "macro_auc", "epsilon"]
POOLED_SCALARS = ("balanced_accuracy", "accuracy", "macro_auc", "macro_f1")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from cli.arguments import add_run_arguments
    add_run_arguments(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")


def round_event(rec: dict[str, Any]) -> dict[str, Any]:
    """Flatten server.app's per-round record into the fields of a JSON "round" event."""
    train, evals = rec.get("train", {}), rec.get("evals", {})
    losses = [r["train_loss"] for r in train.values() if isinstance(r.get("train_loss"), (int, float))]
    eps = [r["epsilon"] for r in train.values() if isinstance(r.get("epsilon"), (int, float))]
    out: dict[str, Any] = {"round": rec["round"], "total": rec["total"], "phase": rec["phase"],
                           "seconds": round(float(rec["seconds"]), 2)}
    if losses:
        out["mean_local_loss"] = sum(losses) / len(losses)
    if eps:
        out["max_epsilon"] = max(eps)
    pooled = evals.get("pooled") or {}
    for k in POOLED_SCALARS:
        if k in pooled:
            out[f"pooled_{k}"] = pooled[k]
    out["sites"] = {str(s): {k: r[k] for k in ("status", "train_loss", "epsilon") if k in r}
                    for s, r in train.items()}
    for s, m in evals.items():
        if s != "pooled" and "balanced_accuracy" in m:
            out["sites"].setdefault(str(s), {})["balanced_accuracy"] = m["balanced_accuracy"]
    dropped = [{"site": str(s), "status": r.get("status"), "reason": r.get("reason", "")}
               for s, r in train.items() if r.get("status") in ("rejected", "refused")]
    if dropped:
        out["dropped"] = dropped
    out["text"] = rec.get("text", "")
    return out


def run(args: argparse.Namespace) -> int:
    out = Output.from_args(args, "simulate")
    if args.resume:
        saved = Path(args.resume) / CONFIG  # checked before RunDir, which would create the folder
        if not saved.is_file():
            raise ConfigError("--resume", f"{saved} not found: is {args.resume} a run directory?")
        run_dir = RunDir(args.resume)
        if args.config or args.overrides or args.seed is not None:
            raise ConfigError("--resume", "a resumed run keeps its saved config; drop --config/--set/--seed")
        cfg = load_config(saved)
    else:
        cfg = resolve_config(args, DEFAULT_CONFIG)
        run_dir = open_run_dir(args, "simulate")
        run_dir.write_config(cfg)
    out.emit("start", f"fgssl simulate: writing to {run_dir.path}", result=True, command="simulate",
             run_dir=str(run_dir.path), rounds=cfg.federation.total_rounds, sites=cfg.federation.sites,
             resume=bool(args.resume))
    seed_everything(cfg.seed)
    from simulations.run import simulate

    def on_round(rec: dict[str, Any]) -> None:
        out.emit("round", rec["text"], **round_event(rec))

    summary = simulate(cfg, run_dir, resume=bool(args.resume), say=out.say, on_round=on_round)
    final = summary.get("final", {})
    rows = [{"site": s, **m} for s, m in final.items()]
    out.emit("selected", f"model: {summary['selected']['text']}", result=True, round=summary.get("final_round"))
    if rows and not out.json:
        columns = [c for c in TABLE if c != "epsilon" or any("epsilon" in r for r in rows)]
        print(format_table(rows, columns))
        for r in rows:
            if warning := baseline_warning(r, f"{'pooled' if r['site'] == 'pooled' else 'site ' + r['site']} test"):
                print(warning)
    if summary.get("cross_site"):
        out.emit("cross_site", cross_site_text(summary["cross_site"]), result=True, **summary["cross_site"])
    if any(m.get("kept_at_site") for m in final.values()):
        out.emit("note", f"note: each site's own metrics stayed at the site: {run_dir.path}/sites/site_<i>/"
                 "evaluations.jsonl", result=True, text="site metrics kept at the sites")
    out.emit("privacy", f"privacy: {summary['privacy']['text']}", result=True, **summary["privacy"])
    from cli.reports.report import report_at_end
    text_done = (f"fgssl simulate: done in {summary['elapsed_s']:.0f} s; results in {run_dir.path} "
                 f"(summary.json, metrics.jsonl, metrics.csv, "
                 f"{'cross_site.csv, ' if summary.get('cross_site') else ''}partition.json, model.safetensors + "
                 "model.json, checkpoint/)")
    if out.json:
        paths = report_at_end(run_dir.path, say=out.say)
        scalars = {s: {k: v for k, v in m.items() if not isinstance(v, (dict, list))} for s, m in final.items()}
        out.emit("done", command="simulate", run_dir=str(run_dir.path), seconds=summary["elapsed_s"],
                 final=scalars, report=str(paths.html) if paths else None)
    else:
        print(text_done)
        report_at_end(run_dir.path)
    return 0
