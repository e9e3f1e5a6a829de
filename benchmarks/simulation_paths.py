"""What moving `fgssl simulate` onto Flower's supported path would cost: the same tiny federation run by
`fgssl simulate` (Flower's `run_simulation`, deprecated since 1.13) and by `flwr run . local` (a local SuperLink in
simulation mode, which starts the app in its own process), interleaved A B A B, medians of whole-command wall times.

    python benchmarks/simulation_paths.py [--repeats 3]

The model and data are the test suite's tiny ones, so the figures are the fixed cost of a run, which is what the
suite pays again and again; the ratio is printed last.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.conftest import TINY  # noqa: E402
from tests.test_flwr_run import _free_port, _pids_with  # noqa: E402


def run_simulate(config: Path, out: Path) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "cli.main", "simulate", "--config", str(config), "--out", str(out),
                    "--quiet"], cwd=REPO, check=True, capture_output=True)
    return time.monotonic() - started


def run_flwr(config: Path, out: Path, home: Path) -> float:
    flwr = Path(sys.executable).parent / "flwr"
    control = _free_port()
    env = dict(os.environ, FLWR_HOME=str(home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
               FLWR_TELEMETRY_ENABLED="0", PATH=f"{flwr.parent}:{os.environ.get('PATH', '')}",
               FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(_free_port()), FLWR_LOCAL_CONTROL_API_PORT=str(control))
    started = time.monotonic()
    try:
        subprocess.run([str(flwr), "run", ".", "local", "--stream", "--run-config",
                        f"config='{config}' run-dir='{out}'", "--federation-config",
                        "num-supernodes=2 client-resources-num-cpus=1 init-args-num-cpus=2"],
                       cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
        seconds = time.monotonic() - started
    finally:
        for pid in _pids_with(f":{control}"):  # Flower leaves its local SuperLink running
            os.kill(pid, signal.SIGTERM)
    if not (out / "summary.json").is_file():
        raise RuntimeError(f"flwr run wrote no summary in {out}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = root / "tiny.yaml"
        config.write_text(yaml.safe_dump(TINY))
        times: dict[str, list[float]] = {"simulate": [], "flwr run": []}
        for i in range(args.repeats + 1):  # the first pair warms the file cache and is left out
            a = run_simulate(config, root / f"sim{i}")
            b = run_flwr(config, root / f"flwr{i}", root / f"home{i}")
            if i:
                times["simulate"].append(a)
                times["flwr run"].append(b)
            print(f"pair {i}{' (warm-up)' if not i else ''}: fgssl simulate {a:.1f} s, flwr run {b:.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"median wall: fgssl simulate {med['simulate']:.1f} s, flwr run . local {med['flwr run']:.1f} s "
          f"({os.cpu_count()} CPUs, {args.repeats} pairs)")
    print(f"ratio flwr run / fgssl simulate: {med['flwr run'] / med['simulate']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
