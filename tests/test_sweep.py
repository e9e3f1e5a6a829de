"""`fgssl sweep`: an ε × seed grid of simulate runs on the built-in data; results, resuming, failures, bad input."""

import csv
import json
import math
import time

import numpy as np
import pytest
import yaml

from cli.experiments.sweep_results import PLOT_FIGSIZE, CellResult
from cli.reports.plots import REPORT_DPI

from .conftest import REPO, TINY, merge, run_cli
from .test_report import png_size

# The smallest run that still trains and evaluates: one fine-tune round of one local batch per site.
SWEEP = {"data": {"num_samples": 120}, "train": {"batch_size": 8},
         "federation": {"ssl_rounds": 0, "finetune_rounds": 1, "max_local_batches": 1}}
CELLS = ["eps8-seed0", "epsinf-seed0"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(merge(TINY, SWEEP)))
    args = ("sweep", "--config", str(cfg), "--epsilons", "8", "inf", "--seeds", "0", "--out", str(root / "out"))
    started = time.monotonic()
    proc = run_cli(*args)
    return {"out": root / "out", "args": args, "proc": proc, "seconds": time.monotonic() - started}


@pytest.mark.slow
def test_sweep_runs_every_cell_and_writes_results(sweep):
    """Two real cells (one DP, one not); the mean ± std over seeds is test_results_are_the_mean_and_std_over_seeds."""
    out, proc = sweep["out"], sweep["proc"]
    assert "fgssl sweep: 2 cells (ε 8, ∞ × seeds 0)" in proc.stdout
    assert "[1/2] ε=8 seed 0: running in" in proc.stdout and "[2/2] ε=∞ seed 0: done in" in proc.stdout
    assert "[1/2] ε=8 seed 0: round 1/1 [finetune]" in proc.stdout  # each cell's rounds stream through

    summaries = {c: json.loads((out / "cells" / c / "summary.json").read_text()) for c in CELLS}
    for c in CELLS:
        cfg = yaml.safe_load((out / "cells" / c / "config.yaml").read_text())
        dp = c.startswith("eps8")
        assert cfg["privacy"]["mode"] == ("sample" if dp else "none") and cfg["model"]["norm"] == "group"
        assert cfg["privacy"]["target_epsilon"] == (8.0 if dp else None) and cfg["seed"] == int(c[-1])
        assert (out / "cells" / c / "report.html").is_file()

    cells = {r["cell"]: r for r in csv.DictReader((out / "cells.csv").open())}
    assert list(cells) == CELLS and {r["status"] for r in cells.values()} == {"finished"}
    rows = {r["epsilon"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert list(rows) == ["8.0", "inf"]
    for eps, cell in (("8.0", "eps8-seed0"), ("inf", "epsinf-seed0")):
        assert (rows[eps]["seeds_finished"], rows[eps]["seeds_failed"]) == ("1", "0")
        pooled = summaries[cell]["final"]["pooled"]
        assert float(rows[eps]["balanced_accuracy_mean"]) == pytest.approx(pooled["balanced_accuracy"], abs=1e-6)
        assert rows[eps]["balanced_accuracy_std"] == ""  # one seed has no spread
    spent = summaries["eps8-seed0"]["privacy"]["max_epsilon_spent"]
    assert float(rows["8.0"]["epsilon_spent_mean"]) == pytest.approx(spent, abs=1e-6)
    assert 0 < spent <= 8.0 + 1e-6 and rows["inf"]["epsilon_spent_mean"] == ""
    md = (out / "results.md").read_text()
    assert "| 8 | 1/1 | " in md and "| ∞ | 1/1 | " in md and "utility_vs_epsilon.png" in md
    assert (out / "utility_vs_epsilon.png").stat().st_size > 5000


def test_results_are_the_mean_and_std_over_seeds(tmp_path):
    """The tables and plot from cell directories as finished runs leave them (summary.json only)."""
    from cli.experiments.sweep import Cell
    from cli.experiments.sweep_results import read_cell
    from cli.experiments.sweep_run import _write_all

    rng = np.random.default_rng(0)
    summaries, results = {}, []
    for eps in (8.0, math.inf):
        for seed in (0, 1, 2):
            cell = Cell(eps, None, seed)
            run_dir = tmp_path / "cells" / cell.name
            run_dir.mkdir(parents=True)
            pooled = {k: float(rng.uniform(0.2, 0.9)) for k in ("balanced_accuracy", "macro_auc", "accuracy")}
            summary = {"final": {"pooled": pooled}, "elapsed_s": 12.5, "chance_balanced_accuracy": 0.2,
                       "privacy": {"max_epsilon_spent": float(rng.uniform(5, 8)) if eps == 8 else None}}
            (run_dir / "summary.json").write_text(json.dumps(summary))
            summaries[cell.name] = summary
            results.append(read_cell(cell, run_dir) if seed < 2 else CellResult(cell, run_dir, "failed", error="x"))
    _write_all(tmp_path, results, "iid")

    rows = {r["epsilon"]: r for r in csv.DictReader((tmp_path / "results.csv").open())}
    assert list(rows) == ["8.0", "inf"]
    for eps, prefix in (("8.0", "eps8"), ("inf", "epsinf")):
        row = rows[eps]
        assert (row["seeds_finished"], row["seeds_failed"]) == ("2", "1")
        for metric in ("balanced_accuracy", "macro_auc", "accuracy"):
            values = [summaries[f"{prefix}-seed{s}"]["final"]["pooled"][metric] for s in (0, 1)]
            assert float(row[f"{metric}_mean"]) == pytest.approx(np.mean(values), abs=1e-6)
            assert float(row[f"{metric}_std"]) == pytest.approx(np.std(values, ddof=1), abs=1e-6)
    spent = [summaries[f"eps8-seed{s}"]["privacy"]["max_epsilon_spent"] for s in (0, 1)]
    assert float(rows["8.0"]["epsilon_spent_mean"]) == pytest.approx(np.mean(spent), abs=1e-6)
    assert rows["inf"]["epsilon_spent_mean"] == ""
    cells = {r["cell"]: r["status"] for r in csv.DictReader((tmp_path / "cells.csv").open())}
    assert cells == {f"{p}-seed{s}": "finished" if s < 2 else "failed" for p in ("eps8", "epsinf") for s in range(3)}

    md = (tmp_path / "results.md").read_text()
    assert "| 8 | 2/3 (1 failed) | " in md and "| ∞ | 2/3 (1 failed) | " in md and " ± " in md and "utility_vs_epsilon.png" in md
    png = tmp_path / "utility_vs_epsilon.png"
    assert png.stat().st_size > 5000
    assert png_size(png) == (round(PLOT_FIGSIZE[0] * REPORT_DPI), round(PLOT_FIGSIZE[1] * REPORT_DPI))


@pytest.mark.slow
def test_a_second_sweep_skips_finished_cells(sweep):
    out = sweep["out"]
    mtimes = {c: (out / "cells" / c / "summary.json").stat().st_mtime_ns for c in CELLS}
    results = (out / "results.csv").read_text()
    started = time.monotonic()
    proc = run_cli(*sweep["args"], "--json")
    seconds = time.monotonic() - started
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    cells = [e for e in events if e["event"] == "cell"]
    assert [(e["cell"], e["status"]) for e in cells] == [(c, "skipped") for c in CELLS]
    assert not [e for e in events if e["event"] == "round"]
    assert events[-1]["event"] == "done" and events[-1]["finished"] == 2 and events[-1]["failed"] == 0
    assert {c: (out / "cells" / c / "summary.json").stat().st_mtime_ns for c in CELLS} == mtimes
    assert (out / "results.csv").read_text() == results
    assert seconds < sweep["seconds"] / 3, (seconds, sweep["seconds"])


def test_cell_states_decide_skip_resume_restart(tmp_path):
    from cli.experiments.sweep import cell_state
    from fgssl.config import config_from_dict
    cfg = config_from_dict(merge(TINY, {"federation": {"ssl_rounds": 1, "finetune_rounds": 1}}))
    cell = tmp_path / "cell"
    assert cell_state(cell, cfg).kind == "new"
    cell.mkdir()
    assert cell_state(cell, cfg).kind == "partial"  # no config.yaml: started, nothing usable
    (cell / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    assert cell_state(cell, cfg).kind == "partial"  # no checkpoint
    (cell / "checkpoint").mkdir()
    (cell / "checkpoint" / "state.json").write_text('{"round": 1}')
    state = cell_state(cell, cfg)
    assert state.kind == "resumable" and state.detail == "stopped after round 1 of 2"
    (cell / "checkpoint" / "state.json").write_text('{"round": 2}')  # the last round, but no summary
    assert cell_state(cell, cfg).kind == "partial"
    (cell / "summary.json").write_text('{"final": {"pooled": {"balanced_accuracy": 0.5}}}')
    assert cell_state(cell, cfg).kind == "finished"
    other = config_from_dict(merge(TINY, {"seed": 7, "federation": {"ssl_rounds": 1, "finetune_rounds": 1}}))
    state = cell_state(cell, other)
    assert state.kind == "stale" and "seed: 1 -> 7" in state.detail
    # a run from before an option existed is still this config (the option's default is the old behaviour) ...
    older = cfg.to_dict()
    del older["federation"]["reask_after_s"]
    (cell / "config.yaml").write_text(yaml.safe_dump(older, sort_keys=False))
    assert cell_state(cell, cfg).kind == "finished"
    # ... but one with a key this version does not know is not
    (cell / "config.yaml").write_text(yaml.safe_dump({**older, "gone": 1}, sort_keys=False))
    state = cell_state(cell, cfg)
    assert state.kind == "stale" and "no longer loads" in state.detail


@pytest.mark.slow
def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(tiny_config, tmp_path):
    # Valid config, but the data set is not there: every cell fails in its own process, quickly.
    missing = tmp_path / "no-aptos"
    cfg = tiny_config(data={"dataset": "aptos2019", "root": str(missing)})
    out = tmp_path / "out"
    proc = run_cli("sweep", "--config", str(cfg), "--epsilons", "inf", "--seeds", "0", "1", "--out", str(out),
                   check=False)
    assert proc.returncode == 1
    assert "[1/2] ε=∞ seed 0: FAILED" in proc.stdout and "[2/2] ε=∞ seed 1: FAILED" in proc.stdout
    assert "2 of 2 cells failed" in proc.stderr and "run the same command again" in proc.stderr
    cells = list(csv.DictReader((out / "cells.csv").open()))
    assert [r["status"] for r in cells] == ["failed", "failed"]
    assert all(str(missing) in r["error"] for r in cells), cells
    assert (out / "logs" / "epsinf-seed0.log").is_file()
    md = (out / "results.md").read_text()
    assert "## Failed cells" in md and "| ∞ | 0/2 (2 failed) |" in md
    assert png_size(out / "utility_vs_epsilon.png") == (1100, 480)


@pytest.mark.slow
def test_sigterm_stops_the_sweep_and_the_simulation_it_is_running(tiny_config, tmp_path):
    """`kill <sweep pid>` (a scheduler, `timeout`): the sweep stops its running cell's simulation as on Ctrl-C; it
    used to die at once and leave the simulation running on."""
    import subprocess
    import sys

    from ._procs import sigterm_stops_child

    cfg = tiny_config(federation={"ssl_rounds": 0, "finetune_rounds": 30})
    out = tmp_path / "out"
    sweep = subprocess.Popen([sys.executable, "-m", "cli.main", "sweep", "--config", str(cfg), "--epsilons", "inf",
                              "--seeds", "0", "1", "--out", str(out), "--quiet"], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cell = out / "cells" / "epsinf-seed0"
    sigterm_stops_child(sweep, cell / "partition.json", str(cell))
    assert not (out / "cells" / "epsinf-seed1").exists()  # nothing after the stopped cell started


@pytest.mark.parametrize("args, message", [
    (["--epsilons", "-1", "inf"], "argument --epsilons: must be > 0 (use inf for no differential privacy)"),
    (["--epsilons", "eight"], "argument --epsilons: expected a number or inf (no DP), got 'eight'"),
    (["--epsilons", "8", "--alphas", "0"], "argument --alphas: the Dirichlet concentration must be a finite"),
    (["--epsilons"], "argument --epsilons: expected at least one argument"),
    (["--epsilons", "8", "--seeds", "1.5"], "argument --seeds: expected an integer, got '1.5'"),
])
def test_bad_arguments_are_argparse_errors(args, message, capsys, tmp_path):
    from cli.main import main
    with pytest.raises(SystemExit) as e:
        main(["sweep", *args, "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, spec, message", [
    ([], None, "config key '--epsilons': required: the privacy budgets to sweep"),
    (["--epsilons", "8", "8"], None, "config key '--epsilons': repeats the value 8"),
    (["--epsilons", "8", "--set", "privacy.target_epsilon=3"], None,
     "config key '--set privacy.target_epsilon': is set by the sweep for every cell (--epsilons); drop it"),
    (["--epsilons", "8", "--set", "model.norm=batch"], None, "config key '--set model.norm': must be 'group'"),
    (["--epsilons", "inf", "--set", "federation.min_nodes=9"], None,
     "config key 'federation.min_nodes': min_nodes=9 is more than the 4 sites of the federation"),
    ([], {"epsilons": []}, "config key 'epsilons': must list at least one value (in "),
    ([], {"epsilons": [1, -3]}, "config key 'epsilons[1]': must be > 0"),
    ([], {"epsilons": ["inf"], "alphas": [0.5, 0]}, "config key 'alphas[1]': the Dirichlet concentration"),
    ([], {"epsilon": [1]}, "config key 'epsilon': unknown sweep spec key in"),
])
def test_bad_sweeps_stop_before_any_cell_runs(args, spec, message, capsys, tmp_path):
    from cli.main import main
    if spec is not None:
        (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
        args = [*args, "--spec", str(tmp_path / "sweep.yaml")]
    assert main(["sweep", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fgssl sweep: error: ") and message in err, err
    assert not (tmp_path / "o").exists()


def test_spec_file_gives_the_grid_and_the_command_line_wins(tmp_path):
    import argparse
    from cli.experiments.sweep import build_spec, cell_configs, plan_cells
    from simulations import DEFAULT_CONFIG
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY))
    (tmp_path / "sweep.yaml").write_text(
        "config: base.yaml\nset: {federation.finetune_rounds: 2}\nepsilons: [1, 3, .inf]\nalphas: [0.3, 1]\n"
        "seeds: [0, 1]\n")
    args = argparse.Namespace(spec=str(tmp_path / "sweep.yaml"), config=None, overrides=[], epsilons=None,
                              alphas=None, seeds=[5], out=None)
    spec = build_spec(args)
    base, configs = cell_configs(spec, DEFAULT_CONFIG)
    assert spec.epsilons == [1.0, 3.0, math.inf] and spec.alphas == [0.3, 1.0] and spec.seeds == [5]
    assert [c.name for c in plan_cells(spec, base)] == [
        "eps1-alpha0.3-seed5", "eps1-alpha1-seed5", "eps3-alpha0.3-seed5", "eps3-alpha1-seed5",
        "epsinf-alpha0.3-seed5", "epsinf-alpha1-seed5"]
    cell = next(c for c in configs if c.name == "eps3-alpha0.3-seed5")
    cfg = configs[cell]
    assert (cfg.privacy.mode, cfg.privacy.target_epsilon, cfg.partition.method, cfg.partition.alpha, cfg.seed) == \
        ("sample", 3.0, "dirichlet", 0.3, 5)
    assert cfg.federation.finetune_rounds == 2 and cfg.data.num_samples == 240  # the spec's base config and set


def test_a_model_dp_can_train_is_kept_in_every_cell_and_batch_norm_that_would_train_becomes_group_norm(tmp_path):
    """The DP example's frozen BatchNorm backbone (public weights trained with BatchNorm) stays BatchNorm in every
    cell: GroupNorm there would compute other features than the ones the weights learned. A base whose BatchNorm
    would train under DP gets GroupNorm in every cell, the ε = ∞ ones included."""
    import argparse
    from cli.experiments.sweep import build_spec, cell_configs
    from simulations import DEFAULT_CONFIG

    def cells(config, overrides=()):
        args = argparse.Namespace(spec=None, config=config, overrides=list(overrides), epsilons=[8.0, math.inf],
                                  alphas=None, seeds=[0], out=None)
        return list(cell_configs(build_spec(args), DEFAULT_CONFIG)[1].values())

    # dp.yaml names runs/public/model.safetensors, which a fresh clone has not trained yet; only its path is checked
    public = tmp_path / "model.safetensors"
    public.write_bytes(b"")
    dp = cells(str(REPO / "simulations" / "configs" / "dp.yaml"), [f"model.weights={public}"])
    assert [(c.privacy.mode, c.model.norm, c.model.head_norm, c.train.frozen) for c in dp] == \
        [("sample", "batch", "group", ("backbone", "blocks")), ("none", "batch", "group", ("backbone", "blocks"))]
    plain = cells(None)  # default.yaml: BatchNorm that trains
    assert [(c.privacy.mode, c.model.norm) for c in plain] == [("sample", "group"), ("none", "group")]
