"""A coordinator SIGKILLed mid-run takes its SuperLink with it, and `fgssl serve --resume` finishes the run with the
same hospitals (`--durable`: the SuperLink's state survives in the run directory): every round once or redone, and
no hospital's ledger below what it released. Its own file, so that
the suite's two workers can run it beside the other deployment tests."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from cli.deploy.certs import generate
from fgssl.privacy.ledger import DEFAULT_FILENAME, PrivacyLedger

from ._procs import log_tails
from .conftest import TINY, merge
from .test_deployment import FGSSL, Proc, _env, _free_port, _kill_leftovers, _node_args, _pids_mentioning


def _released_epsilons(metrics_text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in metrics_text.splitlines():
        rec = json.loads(line)
        if "epsilon" in rec:
            out[rec["site"]] = max(out.get(rec["site"], 0.0), rec["epsilon"])
    return out


def _cmdlines(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            out.append(f"{pid}: " + (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]))
        except OSError:
            pass
    return out


@pytest.mark.slow
def test_a_killed_coordinator_leaves_no_superlink_and_resumes_the_run(tmp_path):
    env = _env(tmp_path)
    certs = generate(tmp_path / "certs", nodes=2)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(merge(TINY, {
        "federation": {"sites": 2, "min_nodes": 2, "ssl_rounds": 1, "finetune_rounds": 1, "round_timeout_s": 300},
        "privacy": {"mode": "sample", "noise_multiplier": 1.0}})))  # a fixed σ: calibration is tested elsewhere
    port, run_dir = _free_port(), tmp_path / "run"
    serve_args = ["--certs", str(certs.out), "--address", f"127.0.0.1:{port}"]
    serve = Proc([*FGSSL, "serve", *serve_args, "--durable", "--config", str(config), "--out", str(run_dir), "--quiet"],
                 tmp_path / "serve.out", env)
    nodes, resumed = [], None
    try:
        serve.wait_for(r"registered 2 SuperNode public keys", 120)
        nodes = [Proc(_node_args(port, certs.ca_cert, certs.nodes[i].private_key, i, tmp_path / f"state{i}", 600),
                      tmp_path / f"node{i}.out", env) for i in range(2)]
        state = run_dir / "checkpoint" / "state.json"
        deadline = time.monotonic() + 300
        while not (state.exists() and json.loads(state.read_text())["round"] >= 1):
            assert serve.popen.poll() is None and time.monotonic() < deadline, log_tails(tmp_path)
            time.sleep(0.2)
        before = _released_epsilons((run_dir / "metrics.jsonl").read_text())
        os.kill(serve.popen.pid, signal.SIGKILL)  # no clean-up runs: only the children's parent-death signal
        serve.popen.wait(10)
        deadline = time.monotonic() + 10
        while left := _pids_mentioning(f"--port {port}") + _pids_mentioning(str(run_dir)):
            assert time.monotonic() < deadline, f"outlived the killed coordinator: {_cmdlines(left)}"
            time.sleep(0.2)

        resumed = Proc([*FGSSL, "serve", *serve_args, "--resume", str(run_dir), "--quiet"],
                       tmp_path / "resumed.out", env)
        assert resumed.wait(600) == 0, resumed.text[-4000:]
        assert "resuming" in resumed.text
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        for rnd in (1, 2):  # each round once in the results, redone or not
            assert sorted(r["site"] for r in records if r["round"] == rnd and r["site"] != "pooled") == ["0", "1"]
            assert all(r.get("status") == "accepted" for r in records if r["round"] == rnd and r["site"] != "pooled")
        released = _released_epsilons((run_dir / "metrics.jsonl").read_text())
        for site in ("0", "1"):
            (path,) = (tmp_path / f"state{site}").rglob(DEFAULT_FILENAME)
            with PrivacyLedger(path) as ledger:
                spent = ledger.spent(delta=records[-1].get("delta", 1e-5))
            assert spent >= max(before.get(site, 0.0), released[site]) - 1e-9, (site, spent, before, released)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["command"] == "serve" and summary["rounds"] == 2
    finally:
        for proc in [serve, *nodes, *([resumed] if resumed else [])]:
            proc.stop()
        leftovers = _kill_leftovers(str(tmp_path))
    assert leftovers == []


def test_resume_needs_a_run_directory_and_no_new_config(tmp_path):
    from .conftest import run_cli

    certs = generate(tmp_path / "certs", nodes=1)
    proc = run_cli("serve", "--certs", str(certs.out), "--resume", str(tmp_path / "nothing"), check=False)
    assert proc.returncode != 0 and "--resume" in proc.stderr and "config.yaml not found" in proc.stderr
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(TINY))
    proc = run_cli("serve", "--certs", str(certs.out), "--resume", str(tmp_path / "run"), "--set", "seed=3",
                   check=False)
    assert proc.returncode != 0 and "keeps its saved config" in proc.stderr and "Traceback" not in proc.stderr
