"""A site's answers of the last rounds, kept so that a request asked again is answered, not worked again.

The coordinator asks a site again when its reply did not arrive (server/exchange.py); a lost upload must not cost
the hospital a second round of training or a second charge to its privacy ledger. A request is the same request when
its round, kind, configuration and every received array are byte for byte the same (a coordinator resumed from its
checkpoint sends exactly that, and is answered from here too: re-sending the same bits releases nothing new). The
answer is written before it is sent; a node killed between its ledger charge and this write trains again when asked
again and is charged again, which over-counts and never under-counts.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from safetensors.numpy import load_file, save_file

NamedArrays = dict[str, np.ndarray]
KEEP_ROUNDS = 2  # the round a request can still be asked again in, and the one before it (a resumed coordinator)
_ENTRY = re.compile(r"^(train|evaluate)-r(\d+)-[0-9a-f]{16}\.json$")


def request_digest(arrays: NamedArrays, config: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


class ReplyCache:
    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "replies"

    @contextmanager
    def task(self, kind: str, rnd: int, arrays: NamedArrays, config: dict[str, Any]) -> Iterator["CachedTask"]:
        """Hold this round's lock (a copy of a request waits for the first to finish) and give the entry."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / f"{kind}-r{rnd}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield CachedTask(self, kind, rnd, request_digest(arrays, config))

    def forget_before(self, rnd: int) -> None:
        for p in self.dir.iterdir():
            m = _ENTRY.match(p.name)
            if m and int(m.group(2)) < rnd:
                p.with_suffix(".safetensors").unlink(missing_ok=True)
                p.unlink(missing_ok=True)
            elif p.suffix == ".lock" and (n := re.search(r"-r(\d+)\.lock$", p.name)) and int(n.group(1)) < rnd:
                p.unlink(missing_ok=True)


class CachedTask:
    def __init__(self, cache: ReplyCache, kind: str, rnd: int, digest: str) -> None:
        self.cache, self.rnd = cache, rnd
        self.stem = cache.dir / f"{kind}-r{rnd}-{digest}"

    def load(self) -> tuple[NamedArrays, dict[str, Any]] | None:
        """The answer given before, or None. The info JSON is written last, so its presence means complete."""
        info_path = self.stem.with_suffix(".json")
        if not info_path.is_file():
            return None
        arrays_path = self.stem.with_suffix(".safetensors")
        arrays = load_file(str(arrays_path)) if arrays_path.is_file() else {}
        return arrays, json.loads(info_path.read_text())

    def save(self, arrays: NamedArrays, info: dict[str, Any]) -> None:
        if arrays:
            tmp = self.stem.with_suffix(".safetensors.tmp")
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
            os.replace(tmp, self.stem.with_suffix(".safetensors"))
        tmp = self.stem.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(info, default=_plain))
        os.replace(tmp, self.stem.with_suffix(".json"))
        self.cache.forget_before(self.rnd - KEEP_ROUNDS + 1)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a cached reply")
