"""A run directory: resolved config, metrics (JSONL and CSV), summary and weights (safetensors, never pickle).

`RunDir(path)` is the writer (it creates the folder); `RunDir.open(path)` is the one reader, for reports, comparisons,
sweeps and studies, tolerant of what a killed run leaves (a last line cut short, no summary yet). Torch is imported
only to read or write weights, so the readers start light.
"""

from __future__ import annotations

import csv
import json
import math
import os
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from .config import Config

if TYPE_CHECKING:
    import torch

CONFIG, METRICS, SUMMARY, PARTITION = "config.yaml", "metrics.jsonl", "summary.json", "partition.json"
RUN_UID = "run_uid"


class RunFileError(ValueError):
    """A run directory that cannot be read (not a folder, a config that is not YAML); names the path."""


def default_run_dir(command: str, root: str | Path = "runs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{stamp}-{command}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return _jsonable(value.item())
    return value


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is missing, unreadable, cut short or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """metrics.jsonl's records and the number of lines that are not one (a line cut short by a kill)."""
    if not path.is_file():
        return [], 0
    records, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad += 1
    return records, bad


@dataclass
class SavedRun:
    """What a run directory holds, read once. `config` is config.yaml as plain YAML ({} when absent), so runs of
    older versions with keys that no longer exist still read."""
    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    bad_lines: int
    summary: dict[str, Any] | None
    partition: dict[str, Any] | None
    has_config: bool
    has_metrics: bool

    def section(self, name: str) -> dict[str, Any]:
        v = self.config.get(name)
        return v if isinstance(v, dict) else {}

    @property
    def command(self) -> str | None:
        """'simulate' or 'train' (from the summary, else from the kind of records), None when neither."""
        if self.summary and self.summary.get("command") in ("simulate", "train"):
            return str(self.summary["command"])
        if any("round" in r and "site" in r for r in self.records):
            return "simulate"
        if any("epoch" in r or r.get("phase") == "final" for r in self.records):
            return "train"
        return None


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def open(path: str | Path) -> SavedRun:
        """Read a run directory without changing it; RunFileError when it is not a folder or its config.yaml is
        not YAML. Missing files read as empty: each caller says what it needs."""
        path = Path(path)
        if not path.is_dir():
            raise RunFileError(f"{path} is not a run directory (no such directory)")
        config: dict[str, Any] = {}
        config_path = path / CONFIG
        if config_path.is_file():
            try:
                loaded = yaml.safe_load(config_path.read_text(encoding="utf-8"))
            except yaml.YAMLError as e:
                raise RunFileError(f"{config_path} is not valid YAML: {str(e).splitlines()[0]}") from None
            config = loaded if isinstance(loaded, dict) else {}
        records, bad = read_records(path / METRICS)
        return SavedRun(path, config, records, bad, read_json_object(path / SUMMARY),
                        read_json_object(path / PARTITION), config_path.is_file(), (path / METRICS).is_file())

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    def uid(self, *, fresh: bool) -> str:
        """This run's random id (RUN_UID in the folder): made anew for a fresh run, kept by a resumed one, so two runs
        never share one, even in the same folder. Data ledgers tell runs apart by it."""
        path = self.path / RUN_UID
        if not fresh and path.is_file() and (kept := path.read_text(encoding="utf-8").strip()):
            return kept
        uid = secrets.token_hex(16)
        _atomic_write(path, uid + "\n")
        return uid

    def write_config(self, cfg: Config) -> Path:
        p = self.path / CONFIG
        _atomic_write(p, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return p

    def log(self, record: dict[str, Any]) -> None:
        """Append one metrics record; flushed and fsynced so a killed run keeps every finished line."""
        line = json.dumps(_jsonable(record), sort_keys=False)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_records(self.metrics_path)[0]

    def truncate_metrics(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Drop records that a resumed run will write again (those of rounds after the checkpoint)."""
        kept = [r for r in self.read_metrics() if keep(r)]
        _atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def write_metrics_csv(self) -> Path:
        """metrics.csv mirrors metrics.jsonl with scalar columns (nested values are JSON-encoded)."""
        rows = self.read_metrics()
        columns: list[str] = []
        for r in rows:
            columns += [k for k in r if k not in columns]
        p = self.path / "metrics.csv"
        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            for r in rows:
                w.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()})
        return p

    def write_summary(self, summary: dict[str, Any]) -> Path:
        p = self.path / SUMMARY
        _atomic_write(p, json.dumps(_jsonable(summary), indent=2))
        return p

    def save_weights(self, state: dict[str, "torch.Tensor"], name: str = "model.safetensors",
                     metadata: dict[str, str] | None = None) -> Path:
        from safetensors.torch import save_file

        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, p)
        return p


def load_weights(path: str | Path) -> dict[str, "torch.Tensor"]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
