"""Round time of a real deployment on loopback, without and with SecAgg+, side by side.

Run: python benchmarks/deployment_rounds.py [--nodes 3 8] [--rounds 2] [--set KEY=VALUE ...]

For each node count it runs two federations one after the other with the same config: `fgssl serve` (SuperLink with
TLS and node authentication) and one `fgssl nodes` process for the hospitals (real SuperNodes, one warm ClientApp
launcher), first with plain aggregation, then with `federation.secure_aggregation=true`. It reports every round's
time as the ServerApp logged it and the SecAgg+/plain ratio of their means. The default is the default model
(simulations/configs/default.yaml: ResNet-18, 64 px) with GroupNorm (SecAgg+ refuses BatchNorm, whose running
statistics are not a mean), fine-tune rounds only, one local epoch.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cli.deploy.certs import generate  # noqa: E402
from cli.deploy.processes import free_port  # noqa: E402

BASE = ["model.norm=group", "federation.ssl_rounds=0", "federation.local_epochs=1"]


def _env(tmp: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), FLWR_HOME=str(tmp / "flwr-home"), TMPDIR=str(tmp),
                PYTHONUNBUFFERED="1", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", FLWR_TELEMETRY_ENABLED="0")


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
        port, env = free_port(), _env(tmp)
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, nargs="+", default=[3, 8])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--timeout", type=float, default=1800, help="seconds one federation may take")
    args = p.parse_args()
    print(f"config: default + {' '.join(BASE + args.overrides)}; {args.rounds} rounds; {os.cpu_count()} cores")
    print(f"{'nodes':>5}  {'plain round s':<24} {'SecAgg+ round s':<24} ratio")
    for n in args.nodes:
        plain = federation(n, args.rounds, False, args.overrides, args.timeout)
        secure = federation(n, args.rounds, True, args.overrides, args.timeout)
        ratio = (sum(secure) / len(secure)) / (sum(plain) / len(plain))
        print(f"{n:>5}  {' / '.join(f'{s:.0f}' for s in plain):<24} {' / '.join(f'{s:.0f}' for s in secure):<24} "
              f"{ratio:.2f}", flush=True)


if __name__ == "__main__":
    main()
