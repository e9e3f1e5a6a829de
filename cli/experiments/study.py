"""`fgssl study`: an experiment file's arms × seeds, each one `fgssl train` or `fgssl simulate` run, and their table.

An experiment file (simulations/configs/experiments/*.yaml) names its seeds, the overrides of its quick variant and
its arms; an arm is a command, an optional config file and `--set` overrides:

    description: what the experiment asks
    seeds: [0, 1, 2]
    quick: [federation.finetune_rounds=1, train.finetune_epochs=1]   # --quick: one seed, these overrides on top
    arms:
      pooled:  {command: train, config: simulations/configs/default.yaml, set: [train.finetune_epochs=10]}
      fedavg:  {command: simulate}

Each run lives in OUT/runs/<arm>-seed<N>/ and is a child process (a crash stays one failed run). The fully resolved
config is compared with a run's config.yaml: a finished run with the same config is skipped, an interrupted
`simulate` with a checkpoint is resumed, anything else of another config is moved to OUT/stale/ (never deleted).
Results come from the runs' summary.json files only, so they can be rewritten at any time.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from fgssl.config import Config, ConfigError, load_config
from fgssl.rundir import RunDir, RunFileError, SavedRun, read_json_object
from simulations import DEFAULT_CONFIG

from cli.deploy.processes import signals_interrupt
from cli.errors import UserError
from cli.progress import Output
from cli.reports.run_files import finite_or_none
from cli.experiments.sweep import normalised_config, saved_config_as_now, set_aside
from cli.experiments.sweep_results import mean_std, plus_minus

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO / "simulations" / "configs" / "experiments"
COMMANDS = ("train", "simulate")
FILE_KEYS = ("description", "seeds", "quick", "arms")
ARM_KEYS = ("command", "config", "set")
# (key, column title): pooled test metrics, then the FLamby-style mean of the sites' own test balanced accuracy.
METRICS = (("balanced_accuracy", "balanced acc."), ("accuracy", "accuracy"), ("majority_rate", "majority rate"),
           ("macro_f1", "macro-F1"), ("macro_auc", "macro-AUC"), ("site_mean_balanced_accuracy", "site-mean BA"))


@dataclass(frozen=True)
class Arm:
    name: str
    command: str
    config: Path | None
    overrides: tuple[str, ...]


@dataclass
class Experiment:
    name: str
    path: Path
    description: str
    seeds: list[int]
    arms: list[Arm]
    quick: list[str] = field(default_factory=list)


def find_experiment(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p.resolve()
    candidate = EXPERIMENTS / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = ", ".join(sorted(q.stem for q in EXPERIMENTS.glob("*.yaml"))) or "none"
    raise ConfigError("study", f"no experiment '{name_or_path}' (a .yaml file, or one of: {known})")


def read_experiment(path: Path) -> Experiment:
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError("study", f"{where}: cannot read it as YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError("study", f"{where}: expected a mapping with {', '.join(FILE_KEYS)}")
    unknown = sorted(set(raw) - set(FILE_KEYS))
    if unknown:
        raise ConfigError(f"study.{unknown[0]}", f"{where}: unknown key; expected {', '.join(FILE_KEYS)}")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise ConfigError("study.seeds", f"{where}: a list of distinct integers >= 0, got {seeds!r}")
    arms_raw = raw.get("arms")
    if not isinstance(arms_raw, dict) or not arms_raw:
        raise ConfigError("study.arms", f"{where}: a mapping of arm name -> {{command, config, set}}")
    arms = [_arm(name, spec, path) for name, spec in arms_raw.items()]
    quick = _string_list(raw.get("quick", []), "study.quick", where)
    return Experiment(path.stem, path, str(raw.get("description", "")).strip(), seeds, arms, quick)


def _string_list(value: Any, key: str, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise ConfigError(key, f"{where}: a list of key=value overrides, got {value!r}")
    return list(value)


def _arm(name: Any, spec: Any, path: Path) -> Arm:
    where = f"{path}, arm '{name}'"
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError("study.arms", f"{path}: arm names are letters, digits, '-' and '_', got {name!r}")
    if not isinstance(spec, dict) or set(spec) - set(ARM_KEYS):
        raise ConfigError(f"study.arms.{name}", f"{where}: expected keys {', '.join(ARM_KEYS)}, got {spec!r}")
    command = spec.get("command")
    if command not in COMMANDS:
        raise ConfigError(f"study.arms.{name}.command", f"{where}: one of {', '.join(COMMANDS)}, got {command!r}")
    config = spec.get("config")
    if config is not None:
        config = Path(config) if Path(config).is_absolute() else REPO / config
        if not config.is_file():
            raise ConfigError(f"study.arms.{name}.config", f"{where}: file not found: {config}")
    elif command == "simulate":
        config = DEFAULT_CONFIG
    return Arm(name, command, config, tuple(_string_list(spec.get("set", []), f"study.arms.{name}.set", where)))


@dataclass(frozen=True)
class Run:
    arm: Arm
    seed: int
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.arm.name}-seed{self.seed}"

    def config(self) -> Config:
        try:
            return load_config(self.arm.config, [*self.overrides, f"seed={self.seed}"])
        except ConfigError as e:
            raise ConfigError(e.key, f"arm '{self.arm.name}': {e.message}") from None


def plan(exp: Experiment, quick: bool = False, seeds: list[int] | None = None,
         overrides: tuple[str, ...] = ()) -> list[Run]:
    """Every run of the experiment, each config resolved (so a bad arm fails before anything runs). `overrides`
    apply to every arm, after its own and the quick ones (e.g. the paper's scale)."""
    chosen = seeds if seeds is not None else exp.seeds[:1] if quick else exp.seeds
    # Seed-major: a study stopped half way has every arm at its first seeds, not some arms at all seeds.
    runs = [Run(arm, s, (*arm.overrides, *(exp.quick if quick else ()), *overrides))
            for s in chosen for arm in exp.arms]
    for r in runs:
        r.config()
    return runs


def run_state(run_dir: Path, cfg: Config, command: str) -> str:
    """new | finished | resumable | stale (another config or a run that cannot continue)."""
    if not run_dir.exists():
        return "new"
    try:
        return state_of(RunDir.open(run_dir), cfg, command)
    except RunFileError:
        return "stale"


def state_of(saved: SavedRun, cfg: Config, command: str) -> str:
    """run_state of a run directory already read."""
    run_dir = saved.path
    if not saved.has_config or saved_config_as_now(saved.config) != normalised_config(cfg):
        return "stale"
    summary = saved.summary
    if summary is not None and (summary.get("test") or summary.get("final")):
        return "finished"
    state = read_json_object(run_dir / "checkpoint" / "state.json")
    if command == "simulate" and state and isinstance(state.get("round"), int) and state["round"] >= 1:
        return "resumable"  # train has no checkpoints: an unfinished train run starts again
    return "stale"


def execute(run: Run, run_dir: Path, config_path: Path, resume: bool, log_path: Path) -> tuple[bool, str]:
    """One child `fgssl train|simulate --quiet`; (ok, error line)."""
    cmd = [sys.executable, "-m", "cli.main", run.arm.command, "--quiet"]
    cmd += ["--resume", str(run_dir)] if resume else ["--config", str(config_path), "--out", str(run_dir)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            with signals_interrupt():  # SIGTERM too
                rc = proc.wait()
        except BaseException:  # Ctrl-C: do not leave a training run behind
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if rc == 0:
        return True, ""
    lines = [ln for ln in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ": error:" in ln]
    return False, (errors or lines or [f"exited with status {rc}"])[-1][-300:]


# ---- results ----

def read_run(run: Run, run_dir: Path) -> dict[str, Any]:
    """One row: the run's pooled test metrics (train: its test split; simulate: the union of the sites' tests) and
    the mean over sites of each site's own test balanced accuracy."""
    row: dict[str, Any] = {"arm": run.arm.name, "command": run.arm.command, "seed": run.seed, "status": "not run"}
    try:
        saved = RunDir.open(run_dir)
    except RunFileError:
        return row
    if state_of(saved, run.config(), run.arm.command) != "finished":  # a run of another config does not count
        return row
    summary = saved.summary or {}
    if run.arm.command == "train":
        pooled, sites = summary.get("test") or {}, summary.get("site_tests") or {}  # site_tests: pooled_sites
    else:
        final = summary.get("final") or {}
        pooled = final.get("pooled") or {}
        sites = {s: m for s, m in final.items() if s != "pooled" and isinstance(m, dict)}
    row.update({k: finite_or_none(pooled.get(k)) for k, _ in METRICS if k != "site_mean_balanced_accuracy"})
    site_ba = [finite_or_none(m.get("balanced_accuracy")) for m in sites.values()]
    site_ba = [v for v in site_ba if v is not None]
    row["site_mean_balanced_accuracy"] = float(np.mean(site_ba)) if site_ba else None
    row["seconds"] = finite_or_none(summary.get("elapsed_s"))
    row["status"] = "finished"
    return row


def aggregate(rows: list[dict[str, Any]], arms: list[Arm]) -> list[dict[str, Any]]:
    """Per arm: mean and sample std (n-1) over its finished seeds."""
    out = []
    for arm in arms:
        done = [r for r in rows if r["arm"] == arm.name and r["status"] == "finished"]
        agg: dict[str, Any] = {"arm": arm.name, "command": arm.command, "runs": len(done)}
        for key in [k for k, _ in METRICS] + ["seconds"]:
            agg[f"{key}_mean"], agg[f"{key}_std"] = mean_std([r[key] for r in done if r.get(key) is not None])
        out.append(agg)
    return out


def render_markdown(exp: Experiment, points: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    head = ["arm", "command", "runs"] + [title for _, title in METRICS] + ["minutes"]
    lines = [f"# Study {exp.name}", "", exp.description, "",
             "Mean ± sample std over seeds; pooled test metrics (train: its test split; simulate: the union of the "
             "sites' test splits, model selected on validation). site-mean BA: each site's own test balanced "
             "accuracy, averaged (FLamby's way). A model whose accuracy is under the majority rate is marked ▼.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        flag = " ▼" if (p["accuracy_mean"] is not None and p["majority_rate_mean"] is not None
                        and p["accuracy_mean"] < p["majority_rate_mean"]) else ""
        cells = [p["arm"] + flag, p["command"], str(p["runs"])]
        cells += [plus_minus(p[f"{k}_mean"], p[f"{k}_std"]) for k, _ in METRICS]
        cells.append("–" if p["seconds_mean"] is None else f"{p['seconds_mean'] / 60:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["", "Failed runs: " + "; ".join(f"{r['arm']} seed {r['seed']}: {r.get('error', '')}"
                                                   for r in failed)]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r[k] for k in keys})
    return path


def save_plot(path: Path, exp: Experiment, points: list[dict[str, Any]]) -> Path | None:
    shown = [p for p in points if p["balanced_accuracy_mean"] is not None]
    if not shown:
        return None
    from cli.reports.plots import save_figure  # matplotlib only when drawing
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(shown) + 2), 4.2))
    x = np.arange(len(shown))
    for offset, key, label in ((-0.2, "balanced_accuracy", "balanced accuracy"), (0.2, "accuracy", "accuracy")):
        means = [p[f"{key}_mean"] or 0.0 for p in shown]
        stds = [p[f"{key}_std"] or 0.0 for p in shown]
        ax.bar(x + offset, means, 0.38, yerr=stds, capsize=3, label=label)
    for i, p in enumerate(shown):
        if p["majority_rate_mean"] is not None:
            ax.hlines(p["majority_rate_mean"], i - 0.4, i + 0.4, colors="k", linestyles="dashed",
                      label="majority-class rate" if i == 0 else None)
    ax.set_xticks(x, [p["arm"] for p in shown], rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("pooled test")
    ax.set_title(f"{exp.name}: mean ± std over seeds")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def write_results(out: Path, exp: Experiment, runs: list[Run], errors: dict[str, str]) -> dict[str, Path]:
    rows = []
    for r in runs:
        row = read_run(r, out / "runs" / r.name)
        if r.name in errors and row["status"] != "finished":
            row.update(status="failed", error=errors[r.name])
        rows.append(row)
    points = aggregate(rows, exp.arms)
    paths = {"runs": write_csv(out / "runs.csv", rows), "results": write_csv(out / "results.csv", points)}
    (out / "results.md").write_text(render_markdown(exp, points, rows), encoding="utf-8")
    paths["markdown"] = out / "results.md"
    plot = save_plot(out / "results.png", exp, points)
    if plot is not None:
        paths["plot"] = plot
    return paths


def run_study(exp: Experiment, runs: list[Run], out: Path, say: Callable[[str], None],
              table: list[Run] | None = None) -> dict[str, str]:
    """Run what is not finished yet, in order; returns {run name: error} for the runs that failed. After every run
    the tables are rewritten over `table` (default: `runs`), so that a study stopped midway leaves them whole."""
    errors: dict[str, str] = {}
    (out / "configs").mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(runs, 1):
        cfg = r.config()
        run_dir = out / "runs" / r.name
        config_path = out / "configs" / f"{r.name}.yaml"
        config_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
        state = run_state(run_dir, cfg, r.arm.command)
        tag = f"[{i}/{len(runs)}] {r.name}"
        if state == "finished":
            say(f"{tag}: finished earlier, skipped")
            continue
        if state == "stale":
            say(f"{tag}: {run_dir} holds another or unfinished run; moved to {set_aside(run_dir, out)}")
        say(f"{tag}: {'resuming' if state == 'resumable' else 'running'} fgssl {r.arm.command} "
            f"(log: {out / 'logs' / (r.name + '.log')})")
        ok, error = execute(r, run_dir, config_path, state == "resumable", out / "logs" / f"{r.name}.log")
        if not ok:
            errors[r.name] = error
            say(f"{tag}: failed: {error}")
        else:
            row = read_run(r, run_dir)
            say(f"{tag}: balanced accuracy {row.get('balanced_accuracy') or float('nan'):.3f}, accuracy "
                f"{row.get('accuracy') or float('nan'):.3f} (majority {row.get('majority_rate') or float('nan'):.3f})")
        write_results(out, exp, table or runs, errors)  # after every run: never behind by more than one
    return errors


def run_experiment(args: argparse.Namespace) -> int:
    """`fgssl study` from its parsed arguments; the exit code (1 when a run failed)."""
    out_channel = Output("study", quiet=args.quiet)
    exp = read_experiment(find_experiment(args.experiment))
    unknown = sorted(set(args.arms or ()) - {a.name for a in exp.arms})
    if unknown:
        raise UserError(f"fgssl study: {exp.name} has no arm {', '.join(unknown)} "
                        f"(its arms: {', '.join(a.name for a in exp.arms)})")
    overrides = tuple(args.overrides)
    every = plan(exp, quick=args.quick, overrides=overrides)  # every arm's config validated before any run
    runs = [r for r in plan(exp, quick=args.quick, seeds=args.seeds, overrides=overrides)
            if not args.arms or r.arm.name in args.arms]
    out = Path(args.out or f"runs/study-{exp.name}{'-quick' if args.quick else ''}").resolve()
    if args.plan:
        for r in runs:
            print(f"{r.name}: fgssl {r.arm.command} ({run_state(out / 'runs' / r.name, r.config(), r.arm.command)})")
        return 0
    arms = len({r.arm.name for r in runs})
    out_channel.emit("start", f"fgssl study {exp.name}: {len(runs)} runs ({arms} arms × "
                     f"{len(runs) // max(arms, 1)} seeds) in {out}", result=True)
    # the table covers the whole file (what other invocations finished too), named seeds that it lacks included
    table = every + [r for r in runs if r.name not in {e.name for e in every}]
    errors = run_study(exp, runs, out, out_channel.say, table)
    paths = write_results(out, exp, table, errors)
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"fgssl study: results in {paths['markdown']}, {paths['results']}, {paths['runs']}"
          + (f", {paths['plot']}" if "plot" in paths else ""))
    if errors:
        print(f"fgssl study: error: {len(errors)} of {len(runs)} runs failed (logs in {out / 'logs'})")
        return 1
    return 0
