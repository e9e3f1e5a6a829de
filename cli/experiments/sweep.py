"""The plan of a `fgssl sweep` and the running of its cells.

A sweep is the grid privacy budget ε × Dirichlet concentration α × seed over one base config. Each cell is one
`fgssl simulate` run in OUT/cells/<name>/, started as a child process (Ray and Flower do not like being started
repeatedly in one process, and a crash in one cell must not take the sweep down). Its fully resolved config is
written to OUT/configs/<name>.yaml first and compared with the cell's config.yaml on a rerun, which is what makes a
sweep resumable: a finished cell with the same config is skipped, an interrupted one resumed from its checkpoint.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import yaml

from fgssl.config import Config, ConfigError, load_config, parse_overrides
from fgssl.rundir import RunDir, RunFileError, read_json_object

from cli.deploy.processes import signals_interrupt


SPEC_KEYS = ("config", "set", "epsilons", "alphas", "seeds", "out")
NO_DP_WORDS = ("inf", "+inf", "infinity", "∞", "none")


def fmt_num(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:g}"


def fmt_eps(v: float) -> str:
    return "∞" if math.isinf(v) else f"{v:g}"


@dataclass(frozen=True)
class Cell:
    epsilon: float  # math.inf = no differential privacy
    alpha: float | None  # None = the base config's partition, unchanged
    seed: int

    @property
    def name(self) -> str:
        alpha = "" if self.alpha is None else f"-alpha{fmt_num(self.alpha)}"
        return f"eps{fmt_num(self.epsilon)}{alpha}-seed{self.seed}"

    @property
    def label(self) -> str:
        alpha = "" if self.alpha is None else f" α={self.alpha:g}"
        return f"ε={fmt_eps(self.epsilon)}{alpha} seed {self.seed}"

    def fields(self) -> dict[str, Any]:
        """JSON-safe description (JSON has no infinity: ε = "inf")."""
        return {"cell": self.name, "epsilon": fmt_num(self.epsilon) if math.isinf(self.epsilon) else self.epsilon,
                "alpha": self.alpha, "seed": self.seed}


@dataclass
class SweepSpec:
    config: str | None
    overrides: list[str]
    epsilons: list[float]
    alphas: list[float] | None
    seeds: list[int] | None
    out: str | None = None

    @property
    def any_dp(self) -> bool:
        return any(math.isfinite(e) for e in self.epsilons)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "set": list(self.overrides),
                "epsilons": [fmt_num(e) if math.isinf(e) else e for e in self.epsilons],
                "alphas": self.alphas, "seeds": self.seeds}


# ---- values: one parser for the command line (argparse types) and the spec file ----

def _epsilon(value: Any) -> float:
    if isinstance(value, str) and value.strip().lower() in NO_DP_WORDS:
        return math.inf
    if isinstance(value, bool) or value is None:
        raise ValueError(f"expected a number or inf, got {value!r}")
    try:
        eps = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number or inf (no DP), got {value!r}") from None
    if math.isnan(eps) or eps <= 0:
        raise ValueError(f"must be > 0 (use inf for no differential privacy), got {value!r}")
    return eps


def _alpha(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"expected a number, got {value!r}")
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None
    if not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"the Dirichlet concentration must be a finite number > 0, got {value!r}")
    return alpha


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected an integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"expected an integer, got {value!r}") from None


def _arg_type(parse: Callable[[Any], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = parse.__name__.strip("_")  # argparse names the type in its messages
    return convert


epsilon_arg, alpha_arg, seed_arg = _arg_type(_epsilon), _arg_type(_alpha), _arg_type(_seed)


def _list(raw: Any, key: str, parse: Callable[[Any], Any], where: str) -> list[Any]:
    if not isinstance(raw, list):
        raw = [raw]
    if not raw:
        raise ConfigError(key, f"must list at least one value{where}")
    out = []
    for i, v in enumerate(raw):
        try:
            out.append(parse(v))
        except ValueError as e:
            raise ConfigError(f"{key}[{i}]", f"{e}{where}") from None
    return out


def _no_repeats(values: list[Any], key: str, where: str = "") -> None:
    seen: set[Any] = set()
    for v in values:
        if v in seen:
            raise ConfigError(key, f"repeats the value {fmt_num(v) if isinstance(v, float) else v}{where}")
        seen.add(v)


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """A YAML sweep spec: config, set (list of key=value or a mapping), epsilons, alphas, seeds, out.
    Relative paths in it are relative to the spec file's folder."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("--spec", f"file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError("--spec", f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError("--spec", f"{p} must hold a mapping (config, set, epsilons, alphas, seeds, out)")
    for k in raw:
        if k not in SPEC_KEYS:
            close = difflib.get_close_matches(str(k), SPEC_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; known keys: {', '.join(SPEC_KEYS)}"
            raise ConfigError(str(k), f"unknown sweep spec key in {p}{hint}")
    where = f" (in {p})"
    spec: dict[str, Any] = {}
    for key, parse in (("epsilons", _epsilon), ("alphas", _alpha), ("seeds", _seed)):
        if key in raw:
            spec[key] = _list(raw[key], key, parse, where)
    for key in ("config", "out"):
        if raw.get(key) is not None:
            spec[key] = str((p.parent / str(raw[key])) if not Path(str(raw[key])).is_absolute() else raw[key])
    sets = raw.get("set") or []
    if isinstance(sets, dict):  # {privacy.delta: 1e-5} reads better in YAML than a list of strings
        sets = [f"{k}={json.dumps(v)}" for k, v in sets.items()]
    if not isinstance(sets, list) or not all(isinstance(s, str) for s in sets):
        raise ConfigError("set", f"must be a list of key=value strings or a mapping{where}")
    spec["set"] = sets
    return spec


def build_spec(args: argparse.Namespace) -> SweepSpec:
    """The sweep from --spec (if any) and the command line (which wins), validated."""
    file = read_spec_file(args.spec) if args.spec else {}
    epsilons = args.epsilons if args.epsilons is not None else file.get("epsilons")
    if not epsilons:
        raise ConfigError("--epsilons", "required: the privacy budgets to sweep, e.g. --epsilons 1 3 8 inf "
                          "(inf = no differential privacy), on the command line or in --spec")
    spec = SweepSpec(config=args.config or file.get("config"), overrides=list(file.get("set", [])) + args.overrides,
                     epsilons=list(epsilons),
                     alphas=list(args.alphas) if args.alphas is not None else file.get("alphas"),
                     seeds=list(args.seeds) if args.seeds is not None else file.get("seeds"),
                     out=args.out or file.get("out"))
    for key, values in (("--epsilons", spec.epsilons), ("--alphas", spec.alphas), ("--seeds", spec.seeds)):
        if values is not None:
            _no_repeats(values, key)
    _check_overrides(spec)
    return spec


def _check_overrides(spec: SweepSpec) -> None:
    """--set must not fight the sweep over a key it sets per cell (the cell's value would silently win)."""
    controlled = {"privacy.mode": "--epsilons", "privacy.target_epsilon": "--epsilons",
                  "privacy.noise_multiplier": "--epsilons"}
    if spec.seeds is not None:
        controlled["seed"] = "--seeds"
    if spec.alphas is not None:
        controlled.update({"partition.alpha": "--alphas", "partition.method": "--alphas"})
    flat = _flatten(parse_overrides(spec.overrides))
    for key, flag in controlled.items():
        if key in flat:
            raise ConfigError(f"--set {key}", f"is set by the sweep for every cell ({flag}); drop it")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ---- cells and their configs ----

def plan_cells(spec: SweepSpec, base: Config) -> list[Cell]:
    """ε outermost, then α, then seed: the seeds of one point of the plot finish together."""
    seeds = spec.seeds if spec.seeds is not None else [base.seed]
    alphas: list[float | None] = list(spec.alphas) if spec.alphas is not None else [None]
    return [Cell(e, a, s) for e in spec.epsilons for a in alphas for s in seeds]


def cell_overrides(cell: Cell, group_norm: bool) -> list[str]:
    out = [f"seed={cell.seed}"]
    if cell.alpha is not None:
        out += ["partition.method=dirichlet", f"partition.alpha={cell.alpha!r}"]
    if math.isinf(cell.epsilon):
        out += ["privacy.mode=none", "privacy.target_epsilon=null", "privacy.noise_multiplier=null"]
    else:
        out += ["privacy.mode=sample", f"privacy.target_epsilon={cell.epsilon!r}", "privacy.noise_multiplier=null"]
    if group_norm:  # the same model in every cell, so the ε = ∞ cells are a fair reference
        out.append("model.norm=group")
    return out


def switches_to_group_norm(spec: SweepSpec, base: Config) -> bool:
    """Whether every cell must use GroupNorm: a finite ε, and a base model whose BatchNorm would train under DP. A
    model DP can already train (GroupNorm, or the DP example's frozen BatchNorm backbone under GroupNorm heads) is
    kept as it is: the example's public weights were trained with BatchNorm, and GroupNorm layers in its frozen
    backbone would compute other features than the ones those weights learned."""
    if not spec.any_dp or base.private_norms:
        return False
    if _flatten(parse_overrides(spec.overrides)).get("model.norm", "group") != "group":
        raise ConfigError("--set model.norm", "must be 'group' when the sweep has a finite ε (DP-SGD cannot train "
                          "BatchNorm; only a frozen backbone and blocks under model.head_norm: group may keep it); "
                          "the sweep uses GroupNorm in every cell")
    return True


def cell_configs(spec: SweepSpec, default_config: Path) -> tuple[Config, dict[Cell, Config]]:
    """The base config and every cell's resolved config: all validated before any cell runs."""
    path = spec.config or default_config
    base = load_config(path, spec.overrides)
    group_norm = switches_to_group_norm(spec, base)
    configs = {}
    for cell in plan_cells(spec, base):
        try:
            configs[cell] = load_config(path, spec.overrides + cell_overrides(cell, group_norm))
        except ConfigError as e:
            raise ConfigError(e.key, f"{str(e).split(': ', 1)[1]} (in sweep cell {cell.label})") from None
    return base, configs


def normalised_config(cfg: Config) -> dict[str, Any]:
    return yaml.safe_load(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def saved_config_as_now(saved: dict[str, Any]) -> dict[str, Any] | None:
    """A run's saved config.yaml as this version resolves it: keys added since get their defaults, so a new
    option does not make every earlier run stale (its default is the old behaviour). None when it no longer loads
    (a key removed or renamed)."""
    try:
        return normalised_config(load_config(None, [], base=saved))
    except ConfigError:
        return None


def first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if a.get(k) != b.get(k):
                return first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
        return ""
    return f"{prefix.rstrip('.')}: {a!r} -> {b!r}"


@dataclass
class CellState:
    kind: str  # new | finished | resumable | partial | stale
    detail: str = ""


def cell_state(cell_dir: Path, cfg: Config) -> CellState:
    """What is on disk for a cell, judged against the config it should have run with."""
    if not cell_dir.exists():
        return CellState("new")
    try:
        run = RunDir.open(cell_dir)
    except RunFileError:
        return CellState("partial", "no readable config.yaml")
    if not run.has_config:
        return CellState("partial", "no readable config.yaml")
    expected, saved = normalised_config(cfg), saved_config_as_now(run.config)
    if saved is None:
        return CellState("stale", "its config.yaml no longer loads")
    if saved != expected:
        return CellState("stale", f"its config differs ({first_difference(saved, expected)})")
    summary = run.summary
    if summary is not None and isinstance(summary.get("final"), dict) and summary["final"]:
        return CellState("finished")
    state = read_json_object(cell_dir / "checkpoint" / "state.json")
    done = int(state["round"]) if state and isinstance(state.get("round"), int) else 0
    # A checkpoint of the last round without a summary is rerun rather than resumed: nothing is left to train, and
    # a fresh run is the simplest state to trust.
    if 1 <= done < cfg.federation.total_rounds:
        return CellState("resumable", f"stopped after round {done} of {cfg.federation.total_rounds}")
    return CellState("partial", "stopped before its first checkpoint" if done == 0
                     else "stopped after its last round but before writing summary.json")


def set_aside(cell_dir: Path, out: Path) -> Path:
    """Move a cell run with another config out of the way (kept, never deleted: it may be someone's result)."""
    target = out / "stale" / f"{cell_dir.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(cell_dir), str(target))
    return target


# ---- running one cell ----

@dataclass
class CellRun:
    ok: bool
    error: str = ""
    returncode: int = 0


def run_cell(cell_dir: Path, config_path: Path | None, log_path: Path,
             on_event: Callable[[dict[str, Any]], None]) -> CellRun:
    """`fgssl simulate --json` in a child process: fresh (config_path given) or resumed (None). Its JSON events go
    to `on_event`; its stderr and any other output to `log_path`."""
    cmd = [sys.executable, "-m", "cli.main", "simulate", "--json"]
    cmd += ["--config", str(config_path), "--out", str(cell_dir)] if config_path else ["--resume", str(cell_dir)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    error = ""
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
        try:
            assert proc.stdout is not None
            with signals_interrupt():  # SIGTERM too
                for line in proc.stdout:
                    event = _parse_event(line)
                    if event is None:
                        log.write(line)
                        log.flush()
                        continue
                    if event["event"] == "error":
                        error = str(event.get("message", "")).removeprefix("error: ")
                    on_event(event)
                rc = proc.wait()
        except BaseException:  # Ctrl-C, SIGTERM or a bug here: do not leave a simulation running behind the sweep
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    if rc == 0:
        return CellRun(True)
    if not error:
        error = _last_error_line(log_path) or f"exited with status {rc}"
    if rc < 0:
        error = f"killed by signal {-rc}" + (f": {error}" if error else "")
    return CellRun(False, error, rc)


def _parse_event(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def _last_error_line(log_path: Path) -> str:
    """The most telling line of a failed child's log: its `fgssl simulate: error:` line, else the last line."""
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    starts = [i for i, ln in enumerate(lines) if ln.startswith("$ ")]
    lines = [ln.strip() for ln in lines[starts[-1] + 1 if starts else 0:] if ln.strip()]  # this attempt only
    for ln in reversed(lines):
        if ln.startswith("fgssl simulate:"):
            return ln.split(": ", 1)[1]
    return lines[-1][-300:] if lines else ""
