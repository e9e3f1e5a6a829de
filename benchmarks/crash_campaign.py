"""Crash campaign: a real loopback federation, one process SIGKILLed at a random moment, restarted as an operator would.

Each trial runs `fgssl serve` and four `fgssl node` hospitals (the tests' tiny model, sample-level DP, three rounds,
min_nodes 2) and SIGKILLs one process chosen at random: the coordinator (`fgssl serve`), a hospital's SuperNode, a
hospital's ClientApp launcher, or a training task (a ClientApp fork), at a moment drawn uniformly from the first
minute. Restarts are what a supervisor (systemd's Restart=on-failure) or an operator does: the coordinator with
`fgssl serve --resume RUN_DIR`, a hospital whose `fgssl node` stopped with the same `fgssl node` command; a killed
task needs none. Only the trials that kill the coordinator start it `--durable` (its SuperLink's state on disk, so
the hospitals' SuperNodes stay connected across the resume): that is the one kill that needs it, and it makes every
round about three times slower. Trial 0 kills nothing and gives the time a run takes. The --quick trial (in the
test suite) is two hospitals, one of whose SuperNodes is killed 10 s in, while the coordinator asks who is there.

After each trial it checks: the run finished (exit 0, summary.json); every round is in metrics.jsonl once per site;
each hospital's ledger ε is at least the largest ε that hospital ever released (every reply the coordinator logged,
watched twice a second, and every reply the node cached); the final weights are finite; no process of the trial is
left. One JSON line per trial goes to trials.jsonl under --out (a rerun skips the trials already there), and the
summary (completed, under-counts, redone rounds, time lost per kill) is printed last.

    python -m benchmarks.crash_campaign [--trials 100] [--quick] [--seed 0] [--out DIR]
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks.common import REPO, finish, parser, process_env
from cli.deploy.certs import generate
from cli.deploy.processes import free_port
from fgssl.privacy.ledger import DEFAULT_FILENAME, PrivacyLedger
from tests._procs import pids_mentioning, proc_table
from tests.conftest import TINY, merge

KINDS = ("coordinator", "supernode", "launcher", "task")
SITES = 4
ROUNDS = 3


def config(sites: int) -> dict:
    return merge(TINY, {"federation": {"sites": sites, "min_nodes": 2, "ssl_rounds": 1, "finetune_rounds": 2,
                                       "round_timeout_s": 300, "reask_after_s": 20},
                        # A fixed σ: the campaign checks what is recorded against what is released, not σ's
                        # calibration, whose bisection costs every task a few CPU seconds.
                        "privacy": {"mode": "sample", "noise_multiplier": 1.0}})


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def _children(pid: int) -> list[int]:
    return [p for p, row in proc_table().items() if row.parent == pid]


class Released(threading.Thread):
    """The largest ε each site released, from the coordinator's log and the nodes' cached replies, twice a second."""

    def __init__(self, run_dir: Path, states: list[Path]) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.states, self.done = run_dir, states, threading.Event()
        self.epsilon: dict[str, float] = {}

    def sample(self) -> None:
        texts = []
        try:
            texts += (self.run_dir / "metrics.jsonl").read_text().splitlines()
        except OSError:
            pass
        for site, state in enumerate(self.states):
            for p in (state / "replies").glob("train-*.json") if (state / "replies").is_dir() else []:
                try:
                    texts.append(json.dumps({**json.loads(p.read_text()), "site": str(site)}))
                except (OSError, ValueError):
                    pass
        for line in texts:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line being written
            if "epsilon" in rec and rec.get("site") != "pooled":
                self.epsilon[str(rec["site"])] = max(self.epsilon.get(str(rec["site"]), 0.0), float(rec["epsilon"]))

    def run(self) -> None:
        while not self.done.wait(0.5):
            self.sample()


def trial(k: int, kind: str | None, moment: float, out: Path, sites: int = SITES) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix=f"crash-{k}-", dir=out))
    env = process_env(tmp)
    certs = generate(tmp / "certs", nodes=sites)
    config_file = tmp / "config.yaml"
    config_file.write_text(yaml.safe_dump(config(sites)))
    port, run_dir = free_port(), tmp / "run"
    durable = kind == "coordinator"
    serve_args = ["cli.main", "serve", "--certs", str(certs.out), "--address", f"127.0.0.1:{port}", "--quiet",
                  *(["--durable"] if durable else [])]
    states = [tmp / f"state{i}" for i in range(sites)]

    def node_args(i: int) -> list[str]:
        return ["cli.node_cmd", "--superlink", f"127.0.0.1:{port}", "--ca", str(certs.ca_cert), "--key",
                str(certs.nodes[i].private_key), "--site", str(i), "--dataset", "synthetic", "--state-dir",
                str(states[i]), "--max-wait-time", "600"]

    t0 = time.monotonic()
    serve = _start([*serve_args, "--config", str(config_file), "--out", str(run_dir)], tmp / "serve-0.out", env)
    logs = {"serve": [tmp / "serve-0.out"], **{i: [tmp / f"node{i}-0.out"] for i in range(sites)}}
    nodes: dict[int, subprocess.Popen] = {}
    released = Released(run_dir, states)
    note, restarts, killed_at_round = "", 0, None
    try:
        deadline = time.monotonic() + 120
        while f"registered {sites} SuperNode public keys" not in logs["serve"][0].read_text():
            if serve.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start: {logs['serve'][0].read_text()[-2000:]}")
            time.sleep(0.3)
        nodes = {i: _start(node_args(i), logs[i][0], env) for i in range(sites)}
        released.start()
        kill_time = time.monotonic() + moment
        finished, deadline = False, time.monotonic() + 900
        while time.monotonic() < deadline:
            if kind is not None and kill_time and time.monotonic() >= kill_time:
                kill_time = 0.0
                state = run_dir / "checkpoint" / "state.json"
                killed_at_round = json.loads(state.read_text())["round"] if state.exists() else 0
                note = _kill(kind, serve, nodes, logs)
            code = serve.poll()
            if code is not None:
                if code == 0:
                    finished = True
                    break
                restarts += 1  # the coordinator died: the operator resumes it on the same address
                logs["serve"].append(tmp / f"serve-{restarts}.out")
                serve = _start([*serve_args, "--resume", str(run_dir)], logs["serve"][-1], env)
            for i, proc in nodes.items():
                if proc.poll() not in (None, 0):  # a hospital's command stopped with an error: run it again
                    restarts += 1
                    logs[i].append(tmp / f"node{i}-{len(logs[i])}.out")
                    nodes[i] = _start(node_args(i), logs[i][-1], env)
            time.sleep(0.5)
        seconds = time.monotonic() - t0
    finally:
        released.done.set()
        for proc in [serve, *nodes.values()]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [serve, *nodes.values()]:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(1.0)
        orphans = pids_mentioning(str(tmp))
        for pid in orphans:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    released.sample()
    return {"trial": k, "kind": kind, "sites": sites, "durable": durable, "moment_s": round(moment, 1),
            "killed": note, "restarts": restarts,
            "killed_at_round": killed_at_round, "seconds": round(seconds, 1), **_check(run_dir, states, released),
            "finished": finished, "orphans": len(orphans), "dir": str(tmp)}


def _kill(kind: str, serve: subprocess.Popen, nodes: dict[int, subprocess.Popen], logs: dict) -> str:
    """SIGKILL one process of `kind`; what was killed, in words."""
    if kind == "coordinator":
        os.kill(serve.pid, signal.SIGKILL)
        return f"fgssl serve (pid {serve.pid})"
    site = random.randrange(len(nodes))
    text = logs[site][-1].read_text()
    m = re.search(r"SuperNode started \(pid (\d+)\); ClientApps run in forks of pid (\d+)", text)
    if not m:
        return f"nothing: site {site}'s node had not started"
    supernode, launcher = int(m.group(1)), int(m.group(2))
    if kind == "supernode":
        victim = supernode
    elif kind == "launcher":
        victim = launcher
    else:
        deadline = time.monotonic() + 20  # a task runs only while the site trains or evaluates
        while not (tasks := _children(launcher)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not tasks:
            return f"nothing: site {site} ran no task within 20 s"
        victim = tasks[0]
    try:
        os.kill(victim, signal.SIGKILL)
    except ProcessLookupError:
        return f"nothing: site {site}'s {kind} had already ended"
    return f"site {site}'s {kind} (pid {victim})"


def _check(run_dir: Path, states: list[Path], released: Released) -> dict[str, object]:
    out: dict[str, object] = {}
    try:
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    except OSError:
        records = []
    pairs = [(r["round"], r["site"]) for r in records]
    expected = {(rnd, str(s)) for rnd in range(1, ROUNDS + 1) for s in range(len(states))}
    out["rounds_once"] = len(pairs) == len(set(pairs)) and expected <= set(pairs)
    delta = next((r["delta"] for r in records if "delta" in r), 1e-5)
    under = {}
    for site, state in enumerate(states):
        found = list(state.rglob(DEFAULT_FILENAME))
        spent = 0.0
        if found:
            with PrivacyLedger(found[0]) as ledger:
                spent = ledger.spent(delta=delta)
        if spent < released.epsilon.get(str(site), 0.0) - 1e-9:
            under[str(site)] = {"ledger": spent, "released": released.epsilon[str(site)]}
    out["under_counts"] = under
    out["released_epsilon"] = {s: round(e, 4) for s, e in sorted(released.epsilon.items())}
    model = run_dir / "model.safetensors"
    if model.exists():
        from safetensors.numpy import load_file
        out["weights_finite"] = all(np.isfinite(v).all() for v in load_file(str(model)).values())
    else:
        out["weights_finite"] = False
    return out


def _passed(result: dict[str, object]) -> bool:
    return bool(result["finished"] and result["rounds_once"] and result["weights_finite"]
                and not result["under_counts"] and not result["orphans"])


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--trials", type=int, default=100, help="trials with a kill (plus trial 0 without)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "fgssl-crash-campaign")
    ap.add_argument("--keep", action="store_true", help="keep each trial's folder (logs, run directory, states)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "trials.jsonl"
    done = {json.loads(line)["trial"]: json.loads(line) for line in path.read_text().splitlines()} \
        if path.exists() else {}
    rng = random.Random(args.seed)
    plan = [(0, None, 0.0)] + [(k, rng.choice(KINDS), rng.uniform(3, 60)) for k in range(1, args.trials + 1)]
    if args.quick:
        plan = [(1, "supernode", 10.0)]
    for k, kind, moment in plan:
        if k in done:
            continue
        random.seed(args.seed * 100_003 + k)
        result = trial(k, kind, moment, args.out, sites=2 if args.quick else SITES)
        if not args.keep and _passed(result):  # a failed trial keeps its logs and run directory for the diagnosis
            shutil.rmtree(result["dir"], ignore_errors=True)
        done[k] = result
        with path.open("a") as f:
            f.write(json.dumps(result) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "dir"}), flush=True)
    killed = [r for r in done.values() if r["kind"]]
    baseline = [r["seconds"] for r in done.values() if not r["kind"]]
    failed = [r["trial"] for r in killed if not (r["finished"] and r["rounds_once"] and r["weights_finite"])]
    under = [r["trial"] for r in killed if r["under_counts"]]
    orphans = [r["trial"] for r in killed if r["orphans"]]
    lost = [r["seconds"] - baseline[0] for r in killed] if baseline else []
    by_kind = {kd: sum(1 for r in killed if r["kind"] == kd) for kd in KINDS}
    print(f"{len(killed)} trials with a kill ({by_kind}); finished with every round once: {len(killed) - len(failed)}; "
          f"failed: {failed}; ledger under-counts: {under}; orphans left: {orphans}; resumed coordinators: "
          f"{sum(1 for r in killed if r['kind'] == 'coordinator' and r['restarts'])}; time lost per kill: max "
          f"{max(lost, default=0):.0f} s, median {statistics.median(lost) if lost else 0:.0f} s "
          f"(run without a kill: {baseline[0] if baseline else '?'} s)")
    bad = len(failed) + len(under) + len(orphans)
    return finish("crash", "failed, under-counted or orphaned trials / trials", bad / max(len(killed), 1), 0.0,
                  quick=args.quick, trials=len(killed), failed=failed, under_counts=under, orphans=orphans,
                  max_lost_s=round(max(lost, default=0), 1), by_kind=by_kind)


if __name__ == "__main__":
    sys.exit(main())
