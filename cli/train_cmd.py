"""`fgssl train`: centralised SSL pretraining then progressive fine-tuning on one dataset."""

from __future__ import annotations

import argparse

from fgssl.metrics import baseline_warning

from cli.common import format_table, open_run_dir, resolve_config, seed_everything
from cli.progress import Output


def add_arguments(p: argparse.ArgumentParser) -> None:
    from cli.arguments import add_run_arguments
    add_run_arguments(p)


def run(args: argparse.Namespace) -> int:
    out = Output.from_args(args, "train")
    cfg = resolve_config(args)
    run_dir = open_run_dir(args, "train")
    run_dir.write_config(cfg)
    out.emit("start", f"fgssl train: writing to {run_dir.path}", result=True, command="train",
             run_dir=str(run_dir.path))
    seed_everything(cfg.seed)
    from simulations.central import train_central
    summary = train_central(cfg, run_dir, out)
    test, test_last = summary["test"], summary["test_last"]
    last_differs = summary["selected"]["epoch"] != cfg.train.finetune_epochs
    if out.json:
        out.emit("done", command="train", run_dir=str(run_dir.path), seconds=summary["elapsed_s"],
                 test={k: v for k, v in test.items() if not isinstance(v, (dict, list))})
        return 0
    out.emit("selected", f"model: {summary['selected']['text']}", result=True)
    rows = [{"split": "test", **test}] + ([{"split": "test (last epoch)", **test_last}] if last_differs else [])
    rows += [{"split": f"site {s} test", **m} for s, m in summary.get("site_tests", {}).items()]
    print(format_table(rows, ["split", "num_examples", "accuracy", "majority_rate", "balanced_accuracy", "macro_f1",
                              "macro_auc"]))
    if warning := baseline_warning(test, "test"):
        print(warning)
    print(f"fgssl train: done in {summary['elapsed_s']:.0f} s; results in {run_dir.path} "
          f"(summary.json, metrics.jsonl, model.safetensors + model.json)")
    return 0
