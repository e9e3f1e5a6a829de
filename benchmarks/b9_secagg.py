"""B9: a SecAgg+ round / a plain round, at 3 and 8 nodes, in simulation and in a real loopback deployment.

For each node count and path it runs two federations with the same config, plain aggregation then
`federation.secure_aggregation=true`, and compares their mean round times (as the ServerApp logged them). The
deployment is `fgssl serve` (SuperLink with TLS and node authentication) and one `fgssl nodes` process for the
hospitals (real SuperNodes, one warm ClientApp launcher); the simulation is `fgssl simulate`. The config is the
default model (ResNet-18, 64 px) with GroupNorm (SecAgg+ refuses BatchNorm, whose running statistics are not a
mean), fine-tune rounds only, one local epoch; --set shortens it. The target is on the worse path at 3 nodes.

    python -m benchmarks.b9_secagg [--quick] [--nodes 3 8] [--paths simulation deployment] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, finish, parser, process_env, run_cli, tiny_config
from cli.deploy.certs import generate
from cli.deploy.processes import free_port

TARGET = 1.3

BASE = ["model.norm=group", "federation.ssl_rounds=0", "federation.local_epochs=1"]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def federation(nodes: int, rounds: int, secagg: bool, overrides: list[str], timeout: float) -> list[float]:
    """One federation to its end; the seconds of each round from the ServerApp's log."""
    tmp = Path(tempfile.mkdtemp(prefix="fgssl-bench-"))
    try:
        certs = generate(tmp / "certs", nodes=nodes)
        port, env = free_port(), process_env(tmp)
        sets = [*BASE, f"federation.sites={nodes}", f"federation.min_nodes={nodes}",
                f"federation.finetune_rounds={rounds}", f"federation.secure_aggregation={str(secagg).lower()}",
                *overrides]
        serve_log, nodes_log = open(tmp / "serve.out", "w"), open(tmp / "nodes.out", "w")
        serve = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--certs", str(certs.out), "--address",
                                  f"127.0.0.1:{port}", "--out", str(tmp / "run"), "--quiet",
                                  *[a for s in sets for a in ("--set", s)]],
                                 cwd=REPO, env=env, stdout=serve_log, stderr=subprocess.STDOUT, start_new_session=True)
        hospitals = None
        try:
            deadline = time.monotonic() + 120
            while "SuperNode public key" not in (tmp / "serve.out").read_text():
                if serve.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fgssl serve did not start:\n{(tmp / 'serve.out').read_text()[-3000:]}")
                time.sleep(0.5)
            hospitals = subprocess.Popen(
                [sys.executable, "-m", "cli.nodes_cmd", "--superlink", f"127.0.0.1:{port}", "--ca",
                 str(certs.ca_cert), "--certs", str(certs.out), "--sites", f"0-{nodes - 1}", "--dataset", "synthetic",
                 "--state-dir", str(tmp / "sites")],
                cwd=REPO, env=env, stdout=nodes_log, stderr=subprocess.STDOUT, start_new_session=True)
            code = serve.wait(timeout)
        finally:
            _stop(serve)
            if hospitals is not None:
                _stop(hospitals)
            serve_log.close()
            nodes_log.close()
        log = (tmp / "run" / "flwr-run.log").read_text()
        seconds = [float(s) for s in re.findall(rf"round \d+/{rounds} \[\w+\] (\d+(?:\.\d+)?)s", log)]
        if code != 0 or len(seconds) != rounds:
            raise RuntimeError(f"federation of {nodes} (secagg={secagg}) failed (exit {code}):\n{log[-3000:]}")
        return seconds
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def simulation(nodes: int, rounds: int, secagg: bool, overrides: list[str], config: Path | None) -> list[float]:
    sets = [*BASE, f"federation.sites={nodes}", f"federation.min_nodes={nodes}",
            f"federation.finetune_rounds={rounds}", f"federation.secure_aggregation={str(secagg).lower()}", *overrides]
    with tempfile.TemporaryDirectory(prefix="fgssl-b9-") as tmp:
        args = ["--config", str(config)] if config else []
        return run_cli("simulate", [*args, "--out", f"{tmp}/run", *[a for s in sets for a in ("--set", s)]])["round_s"]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--nodes", type=int, nargs="+", default=[3, 8])
    p.add_argument("--paths", nargs="+", default=["simulation", "deployment"], choices=["simulation", "deployment"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--timeout", type=float, default=1800, help="seconds one federation may take")
    args = p.parse_args(argv)
    config = None
    nodes, paths, rounds = args.nodes, args.paths, args.rounds
    tmp = Path(tempfile.mkdtemp(prefix="fgssl-b9q-"))
    if args.quick:  # the tiny model, 3 simulated nodes, one round: the pipeline, not the figure
        config = tiny_config(tmp / "quick.yaml")
        nodes, paths, rounds = [3], ["simulation"], 1
    print(f"config: {'tiny' if config else 'default'} + {' '.join(BASE + args.overrides)}; {rounds} rounds; "
          f"{os.cpu_count()} cores")
    print(f"{'path':>10} {'nodes':>5}  {'plain round s':<24} {'SecAgg+ round s':<24} ratio")
    rows = []
    for path in paths:
        for n in nodes:
            if path == "simulation":
                plain = simulation(n, rounds, False, args.overrides, config)
                secure = simulation(n, rounds, True, args.overrides, config)
            else:
                plain = federation(n, rounds, False, args.overrides, args.timeout)
                secure = federation(n, rounds, True, args.overrides, args.timeout)
            ratio = (sum(secure) / len(secure)) / max(sum(plain) / len(plain), 1e-9)
            rows.append({"path": path, "nodes": n, "plain_round_s": plain, "secagg_round_s": secure, "ratio": ratio})
            print(f"{path:>10} {n:>5}  {' / '.join(f'{s:.1f}' for s in plain):<24} "
                  f"{' / '.join(f'{s:.1f}' for s in secure):<24} {ratio:.2f}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    at_three = [r["ratio"] for r in rows if r["nodes"] == min(nodes)]
    return finish("B9", f"SecAgg+ round / plain round at {min(nodes)} nodes (worse path)", max(at_three), TARGET,
                  quick=args.quick, rows=rows)


if __name__ == "__main__":
    sys.exit(main())
