"""`fgssl simulate` attached to a Ray cluster it did not start (`simulation.ray_address`).

A real Ray head (`ray start --head --block`) runs on loopback as a separate process; the simulation joins it as a
driver, runs its clients on that cluster's workers, and leaves the cluster running when it ends.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import REPO, run_cli

RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    if not RAY.exists():
        pytest.skip(f"{RAY} not found (ray comes with flwr[simulation])")
    # Ray puts unix sockets under its temp dir, whose paths must stay under 108 bytes: not pytest's tmp_path.
    temp = Path(tempfile.mkdtemp(prefix="fgssl-ray-", dir="/tmp"))
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0", RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0")
    cmd = [str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
           "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false", "--temp-dir", str(temp),
           "--ray-client-server-port", str(_free_port()), "--dashboard-agent-listen-port", str(_free_port()),
           "--disable-usage-stats"]
    log = (temp / "head.out").open("w")
    head = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(temp.glob("session_*/logs/gcs_server.out")) or not _listening(port):
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not start (exit {head.poll()}):\n{(temp / 'head.out').read_text()}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", head, temp
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops the cluster's processes on SIGTERM
            try:
                head.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
                head.wait(10)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_simulation_runs_on_an_existing_ray_cluster_and_leaves_it_running(ray_head, tiny_config, tmp_path):
    address, head, temp = ray_head
    run_dir = tmp_path / "run"
    proc = run_cli("simulate", "--config", str(tiny_config()), "--out", str(run_dir),
                   "--set", f"simulation.ray_address={address}", timeout=600)
    assert f"attaching to the Ray cluster at {address}" in proc.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["final"]) >= {"0", "1", "pooled"}
    # The clients ran on that cluster: its workers wrote their logs into the head's session directory.
    assert list(temp.glob("session_*/logs/worker-*.out")), sorted(p.name for p in temp.glob("session_*/logs/*"))
    # ... and the simulation only detached: the cluster it did not start is still up.
    assert head.poll() is None and _listening(int(address.rsplit(":", 1)[1]))


def test_an_unreachable_ray_address_fails_clearly(tiny_config, tmp_path):
    port = _free_port()  # nothing listens here
    proc = run_cli("simulate", "--config", str(tiny_config()), "--out", str(tmp_path / "run"),
                   "--set", f"simulation.ray_address=127.0.0.1:{port}", timeout=300, check=False)
    assert proc.returncode != 0
    assert f"127.0.0.1:{port}" in proc.stderr and "simulation.ray_address" in proc.stderr, proc.stderr[-3000:]
