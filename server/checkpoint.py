"""Per-round checkpoints: global weights and strategy state (safetensors), round and RNG state (JSON), and the
weights and metrics of the round selected on validation so far (kept until a later checkpoint selects another).

`state.json` is replaced atomically after the files it names are complete, so a kill at any moment leaves either
the previous checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

NamedArrays = dict[str, np.ndarray]


@dataclass
class Checkpoint:
    round: int
    global_arrays: NamedArrays
    strategy_state: NamedArrays


def _save(arrays: NamedArrays, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: np.asarray(v, order="C") for k, v in arrays.items()}, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(directory: Path, rnd: int, global_arrays: NamedArrays, strategy_state: NamedArrays) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    weights, strategy = f"global_r{rnd}.safetensors", f"strategy_r{rnd}.safetensors"
    _save(global_arrays, directory / weights)
    _save(strategy_state, directory / strategy)
    state = {"round": rnd, "weights": weights, "strategy": strategy,
             "torch_rng": torch.get_rng_state().tolist()}
    tmp = directory / "state.json.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, directory / "state.json")
    for p in directory.glob("*_r*.safetensors"):
        if p.name not in (weights, strategy):
            p.unlink(missing_ok=True)


def load_checkpoint(directory: Path) -> Checkpoint | None:
    state_path = directory / "state.json"
    if not state_path.exists():
        return None
    state = json.loads(state_path.read_text())
    torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    return Checkpoint(int(state["round"]), load_file(str(directory / state["weights"])),
                      load_file(str(directory / state["strategy"])))


def _selected_paths(directory: Path, rnd: int) -> tuple[Path, Path]:
    # No "_r" in the names: save_checkpoint prunes "*_r*.safetensors" files of other rounds.
    return directory / f"selected-round{rnd}.safetensors", directory / f"selected-round{rnd}.json"


def save_selected(directory: Path, rnd: int, arrays: NamedArrays, evals: dict) -> None:
    """Round `rnd` won the selection: its weights and evaluation, durable before that round's checkpoint."""
    directory.mkdir(parents=True, exist_ok=True)
    weights, metrics = _selected_paths(directory, rnd)
    _save(arrays, weights)
    tmp = metrics.with_name(metrics.name + ".tmp")
    tmp.write_text(json.dumps(evals))
    os.replace(tmp, metrics)


def load_selected(directory: Path, rnd: int) -> tuple[NamedArrays, dict] | None:
    weights, metrics = _selected_paths(directory, rnd)
    if not (weights.is_file() and metrics.is_file()):
        return None
    return load_file(str(weights)), json.loads(metrics.read_text())


def drop_unselected(directory: Path, keep: int | None) -> None:
    """After a checkpoint: only the selected round's files stay (an older one is the fallback until then)."""
    for p in directory.glob("selected-round*"):
        stem = p.name[len("selected-round"):].split(".")[0]
        if stem.isdigit() and int(stem) != keep:
            p.unlink(missing_ok=True)


RELEASES = "client_releases.json"


def save_releases(directory: Path, releases: dict[str, int]) -> None:
    """Client-level DP: how many noised globals each site's update is in, fsynced before the newest one leaves the
    server. A crash after that broadcast and before the round's checkpoint redoes the round with fresh noise over
    the same updates: a second release, which this count keeps (the round's records, rewritten on resume, do not)."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (RELEASES + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(releases, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / RELEASES)


def load_releases(directory: Path) -> dict[str, int] | None:
    path = directory / RELEASES
    if not path.is_file():
        return None
    return {str(k): int(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
