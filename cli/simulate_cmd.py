"""`fgssl simulate`: a whole federation of virtual hospitals on Flower's simulation engine."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from fgssl.config import ConfigError, load_config
from fgssl.rundir import RunDir

from .common import format_table, open_run_dir, resolve_config, seed_everything

DEFAULT_CONFIG = Path(str(resources.files("simulations") / "configs" / "default.yaml"))
TABLE = ["site", "num_examples", "accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "epsilon"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .main import add_run_arguments
    add_run_arguments(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")


def run(args: argparse.Namespace) -> int:
    if args.resume:
        run_dir = RunDir(args.resume)
        saved = run_dir.path / "config.yaml"
        if not saved.is_file():
            raise ConfigError("--resume", f"{saved} not found: is {run_dir.path} a run directory?")
        if args.config or args.overrides or args.seed is not None:
            raise ConfigError("--resume", "a resumed run keeps its saved config; drop --config/--set/--seed")
        cfg = load_config(saved)
    else:
        cfg = resolve_config(args, DEFAULT_CONFIG)
        run_dir = open_run_dir(args, "simulate")
        run_dir.write_config(cfg)
    print(f"fgssl simulate: writing to {run_dir.path}", flush=True)
    seed_everything(cfg.seed)
    from simulations.run import simulate

    def say(line: str) -> None:
        if not args.quiet:
            print(line, flush=True)

    summary = simulate(cfg, run_dir, resume=bool(args.resume), say=say)
    final = summary.get("final", {})
    rows = [{"site": s, **m} for s, m in final.items()]
    if rows:
        columns = [c for c in TABLE if c != "epsilon" or any("epsilon" in r for r in rows)]
        print(format_table(rows, columns))
    print(f"privacy: {summary['privacy']['text']}")
    print(f"fgssl simulate: done in {summary['elapsed_s']:.0f} s; results in {run_dir.path} "
          f"(summary.json, metrics.jsonl, metrics.csv, partition.json, model.safetensors, checkpoint/)")
    from .report import report_at_end
    report_at_end(run_dir.path)
    return 0
