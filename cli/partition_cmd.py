"""`fgssl partition`: show and save how a simulation would split the data pool across virtual hospitals."""

from __future__ import annotations

import argparse
import json

from simulations.partition import compute_partition, label_divergence
from simulations import DEFAULT_CONFIG

from cli.common import format_table, open_run_dir, resolve_config
from cli.progress import Output


def add_arguments(p: argparse.ArgumentParser) -> None:
    from cli.arguments import add_run_arguments
    add_run_arguments(p)


def site_table(record: dict) -> str:
    names = list(record["class_names"])
    has_name = any("name" in s for s in record["sites"])
    columns = ["site"] + (["name"] if has_name else []) + ["images"] + names
    rows = [{"site": s["site"], "name": s.get("name"), "images": s["num_samples"],
             **dict(zip(names, s["class_counts"]))} for s in record["sites"]]
    totals = [sum(s["class_counts"][k] for s in record["sites"]) for k in range(len(names))]
    rows.append({"site": "total", "name": "", "images": sum(totals), **dict(zip(names, totals))})
    return format_table(rows, columns)


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args, DEFAULT_CONFIG)
    pool, parts, record = compute_partition(cfg)
    run_dir = open_run_dir(args, "partition")
    run_dir.write_config(cfg)
    json_path = run_dir.path / "partition.json"
    json_path.write_text(json.dumps(record))
    from cli.reports.plots import save_partition_chart  # matplotlib only when needed
    png_path = save_partition_chart(run_dir.path / "partition.png", record)
    params = ", ".join(f"{k}={v}" for k, v in record["params"].items())
    tv = label_divergence(pool.labels, parts, len(pool.class_names))
    if args.json:
        Output.from_args(args, "partition").emit(
            "done", command="partition", run_dir=str(run_dir.path), partition=str(json_path), plot=str(png_path),
            method=record["method"], params=record["params"], label_skew=tv, class_names=record["class_names"],
            sites=[{k: v for k, v in s.items() if k != "indices"} for s in record["sites"]])
        return 0
    print(f"fgssl partition: {cfg.data.dataset} data, {len(pool.labels)} images, {record['method']}"
          f"{f' ({params})' if params else ''} over {len(parts)} sites, seed {cfg.seed}")
    print(site_table(record))
    print(f"label skew: mean total-variation distance of a site's class mix from the pool's = {tv:.3f} "
          f"(0 = identical, 1 = disjoint)")
    print(f"fgssl partition: wrote {json_path} and {png_path}")
    return 0
