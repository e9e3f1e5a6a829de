"""A run directory: resolved config, metrics (JSONL and CSV), summary and weights (safetensors, never pickle)."""

from __future__ import annotations

import csv
import json
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from safetensors.torch import load_file, save_file

from .config import Config


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


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def write_config(self, cfg: Config) -> Path:
        p = self.path / "config.yaml"
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
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

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
        p = self.path / "summary.json"
        _atomic_write(p, json.dumps(_jsonable(summary), indent=2))
        return p

    def save_weights(self, state: dict[str, torch.Tensor], name: str = "model.safetensors",
                     metadata: dict[str, str] | None = None) -> Path:
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, p)
        return p


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
