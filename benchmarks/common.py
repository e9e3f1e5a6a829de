"""What every benchmark shares: the machine's description, interleaved timing, and the one result line it ends on.

Each figure is a ratio of two things measured in the same run, interleaved (A B A B ...) after a warm-up, as
medians: on a shared, noisy machine a burst of other work then slows both sides alike. A script prints its table,
then one line `RESULT {...json...}` last, and exits 1 when its target is missed (0 under --quick, which checks that
it runs and gives a well-formed result on tiny sizes, not the target).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULT_PREFIX = "RESULT "


def machine() -> dict[str, object]:
    """Enough to tell two machines apart in a results table."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
        mem_gib = round(kib / 2 ** 20, 1)
    except (OSError, StopIteration):
        pass
    info: dict[str, object] = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "memory_gib": mem_gib,
                               "python": platform.python_version()}
    try:
        import torch
        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each call, taking turns (A B A B ...) `repeats` times after `warmup` untimed turns."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for turn in range(warmup + repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if turn >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def parser(doc: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs, not the target")
    return ap


def finish(bench: str, figure: str, ratio: float, target: float, *, higher_is_better: bool = False,
           quick: bool = False, **details: object) -> int:
    """Print the result line last; the exit code says whether the target holds (always 0 under --quick)."""
    passed = ratio >= target if higher_is_better else ratio <= target
    result = {"id": bench, "figure": figure, "ratio": round(float(ratio), 4),
              "target": f"{'>=' if higher_is_better else '<='} {target:g}", "pass": bool(passed), "quick": quick,
              "machine": machine(), "command": " ".join(["python", "-m", f"benchmarks.{Path(sys.argv[0]).stem}",
                                                         *sys.argv[1:]]),
              **details}
    print(f"{bench}: {figure} = {ratio:.4g} (target {result['target']}): {'pass' if passed else 'MISSED'}")
    print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)
    return 0 if passed or quick else 1


def skipped(bench: str, figure: str, reason: str, quick: bool = False) -> int:
    """A figure this machine cannot measure (no GPU, no real data): said so, not counted as a pass."""
    print(f"{bench}: not run: {reason}")
    print(RESULT_PREFIX + json.dumps({"id": bench, "figure": figure, "skipped": reason, "quick": quick,
                                      "machine": machine()}), flush=True)
    return 0


def run_cli(command: str, args: list[str], timeout: float = 3600) -> dict[str, object]:
    """One `fgssl <command> --json ...` in its own process: its wall time, its JSON events, its final event."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(REPO), FLWR_TELEMETRY_ENABLED="0",
               FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cli.main", command, "--json", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"fgssl {command} {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    events = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return {"wall_s": wall, "events": events,
            "round_s": [float(e["seconds"]) for e in events if e.get("event") == "round"]}


def process_env(tmp: Path) -> dict[str, str]:
    """The environment of the fgssl/Flower processes a benchmark starts: this checkout, a private Flower home, offline."""
    return dict(os.environ, PYTHONPATH=str(REPO), FLWR_HOME=str(tmp / "flwr-home"), TMPDIR=str(tmp),
                PYTHONUNBUFFERED="1", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", FLWR_TELEMETRY_ENABLED="0")


def tiny_config(path: Path, **sections: dict) -> Path:
    """The test suite's tiny model and data (fixed costs dominate), with `sections` merged in, written to `path`."""
    import yaml

    from tests.conftest import TINY, merge

    path.write_text(yaml.safe_dump(merge(TINY, sections)))
    return path
