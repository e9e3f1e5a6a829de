"""The same app through Flower's own launcher: `flwr run .` with a local SuperLink, stopped by its pid."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_with(fragment: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if fragment in cmd and "flower-superlink" in cmd:
                pids.append(int(d.name))
    return pids


def _stop(pid: int, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process is still there after `grace` seconds."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline:
        if not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid):
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


def _state(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}") / "status").read_text().lower()
    except OSError:
        return "zombie"


@pytest.mark.slow
def test_flwr_run_executes_the_simulation_app(tiny_config, tmp_path):
    flwr = Path(sys.executable).parent / "flwr"
    if not flwr.exists():
        pytest.skip(f"the flwr command is not installed next to {sys.executable}")
    control_port = _free_port()
    env = dict(os.environ, FLWR_HOME=str(tmp_path / "flwr-home"), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
               FLWR_TELEMETRY_ENABLED="0", PATH=f"{flwr.parent}:{os.environ.get('PATH', '')}",
               FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(_free_port()),
               FLWR_LOCAL_CONTROL_API_PORT=str(control_port))
    run_dir = tmp_path / "run"
    cfg = tiny_config()
    try:
        proc = subprocess.run(
            [str(flwr), "run", ".", "local", "--stream",
             "--run-config", f"config='{cfg}' run-dir='{run_dir}'",
             "--federation-config", "num-supernodes=2 client-resources-num-cpus=1 init-args-num-cpus=2"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    finally:
        for pid in _pids_with(f":{control_port}"):
            _stop(pid)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["final"]) == {"0", "1", "pooled"}
    assert (run_dir / "model.safetensors").exists()
    assert "round 2/2 [finetune]" in proc.stdout + proc.stderr
    assert not _pids_with(f":{control_port}"), "the local SuperLink is still running"
