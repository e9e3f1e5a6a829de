"""A real deployment on loopback: `fgssl serve` (SuperLink, TLS, SuperNode authentication) and `fgssl node` processes.

One federation serves most tests (each start costs seconds of CPU per process): four hospitals on the synthetic data,
one of which is SIGKILLed while it trains, plus a node with an unregistered key and one that does not trust the CA.
Every process is started here and stopped by pid in a finally block; FLWR_HOME lives in the test's tmp folder.

The load check (many SuperNodes from one `fgssl nodes`) is in test_deployment_load.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from cli.deploy.certs import generate

from ._procs import pids_mentioning
from .conftest import REPO, TINY, merge

FGSSL = [sys.executable, "-m", "cli.main"]
RUN_FILES = ("config.yaml", "metrics.jsonl", "metrics.csv", "summary.json", "model.safetensors", "checkpoint")


def _env(tmp: Path) -> dict[str, str]:
    # FLWR_LOG_LEVEL=ERROR is what an in-process `simulate` earlier in the same session leaves behind; serve and
    # node must still see Flower's INFO lines.
    return dict(os.environ, PYTHONPATH=str(REPO), FLWR_HOME=str(tmp / "flwr-home"), TMPDIR=str(tmp),
                PYTHONUNBUFFERED="1", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", FLWR_TELEMETRY_ENABLED="0",
                FLWR_LOG_LEVEL="ERROR")


class Proc:
    """A command whose output goes to a file that the test reads as it grows."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str], sigint_ignored: bool = False) -> None:
        self.log = log
        self._file = open(log, "w")
        # sigint_ignored: started as a non-interactive shell starts a background job (a CI script, `cmd &`)
        preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
        self.popen = subprocess.Popen(args, cwd=REPO, env=env, stdout=self._file, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=preexec)

    @property
    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if m := re.search(pattern, self.text):
                return m
            if self.popen.poll() is not None:
                raise AssertionError(f"exited ({self.popen.returncode}) before /{pattern}/:\n{self.text[-3000:]}")
            time.sleep(0.3)
        raise AssertionError(f"no /{pattern}/ within {timeout:.0f} s:\n{self.text[-3000:]}")

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout:.0f} s:\n{self.text[-3000:]}") from None

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM (the command stops its own SuperLink/SuperNode), SIGKILL to its group after `grace` s."""
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self._file.close()


_pids_mentioning = pids_mentioning


def _kill_leftovers(fragment: str) -> list[int]:
    """Last resort after a failure: anything still running with this test's tmp path on its command line."""
    left = _pids_mentioning(fragment)
    for pid in left:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            print(f"leftover pid {pid} (state {state[0]}, parent {state[1]}): {cmd[:300]}")
        except OSError:
            pass
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def _node_args(port: int, ca: Path, key: Path, site: int, state: Path, wait: float) -> list[str]:
    # `python -m cli.node_cmd` is `fgssl node` without the entry point (test_node_refuses_a_key_others_can_read
    # goes through `fgssl node`); neither imports torch.
    return [sys.executable, "-m", "cli.node_cmd", "--superlink", f"127.0.0.1:{port}", "--ca", str(ca),
            "--key", str(key), "--site", str(site), "--dataset", "synthetic", "--state-dir", str(state),
            "--max-wait-time", f"{wait:g}"]


def _private_value(path: Path) -> int:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key
    data = path.read_bytes()
    key = load_ssh_private_key(data, None) if b"OPENSSH" in data else load_pem_private_key(data, None)
    return key.private_numbers().private_value


def _free_port() -> int:
    from cli.deploy.processes import free_port
    return free_port()


@dataclass
class Federation:
    tmp: Path
    run_dir: Path
    serve: Proc
    nodes: dict[str, Proc] = field(default_factory=dict)
    serve_code: int | None = None
    node_codes: dict[str, int] = field(default_factory=dict)
    leftovers: list[int] = field(default_factory=list)
    seconds: float = 0.0
    private_keys: list[Path] = field(default_factory=list)


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Federation:
    """Four hospitals (sites 0-3), node 3 SIGKILLed mid-round; an unregistered node; a node with another CA."""
    t0 = time.monotonic()
    tmp = tmp_path_factory.mktemp("deploy")
    env = _env(tmp)
    certs = generate(tmp / "certs", nodes=6)  # 0-3 hospitals, 4 registered but untrusting, 5 never registered
    stranger_ca = generate(tmp / "other-certs", nodes=1).ca_cert
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(merge(TINY, {"federation": {"sites": 4, "min_nodes": 2,
                                                                 "round_timeout_s": 240}})))
    port = _free_port()
    run_dir = tmp / "run"
    register = [str(certs.nodes[i].public_key) for i in range(5)]
    serve = Proc([*FGSSL, "serve", "--certs", str(certs.out), "--address", f"127.0.0.1:{port}", "--register",
                  *register, "--config", str(config), "--out", str(run_dir)], tmp / "serve.out", env)
    fed = Federation(tmp, run_dir, serve, private_keys=[n.private_key for n in certs.nodes] +
                     [certs.server_key, certs.ca_key])
    try:
        serve.wait_for(r"registered 5 SuperNode public keys", 90)
        for i in range(4):
            # Node 0 waits briefly for a vanished SuperLink so that the test sees it give up by itself.
            fed.nodes[f"site{i}"] = Proc(_node_args(port, certs.ca_cert, certs.nodes[i].private_key, i,
                                                    tmp / f"state{i}", 8 if i == 0 else 60),
                                         tmp / f"node{i}.out", env)
        fed.nodes["untrusting"] = Proc(
            _node_args(port, stranger_ca, certs.nodes[4].private_key, 4, tmp / "state-untrusting", 10),
            tmp / "untrusting.out", env)
        fed.nodes["unregistered"] = Proc(
            _node_args(port, certs.ca_cert, certs.nodes[5].private_key, 5, tmp / "state-unregistered", 10),
            tmp / "unregistered.out", env)
        victim = fed.nodes["site3"]
        pid = int(victim.wait_for(r"SuperNode started \(pid (\d+)\)", 60).group(1))
        victim.wait_for(r"train-1: train message received", 180)
        os.kill(pid, signal.SIGKILL)  # the SuperNode itself: its ClientApp dies with it, like a crashed host
        fed.serve_code = serve.wait(300)
        # Node 0 notices the SuperLink is gone and stops by itself; the others are stopped as Ctrl-C would.
        fed.node_codes["site0"] = fed.nodes["site0"].wait(60)
        for name, proc in fed.nodes.items():
            if name != "site0":
                proc.stop()
                fed.node_codes[name] = proc.popen.returncode
    finally:
        for proc in [serve, *fed.nodes.values()]:
            proc.stop()
        fed.leftovers = _kill_leftovers(str(tmp))
    fed.seconds = time.monotonic() - t0
    print(f"\nshared federation: {fed.seconds:.0f} s")
    return fed


@pytest.mark.slow
def test_tls_authenticated_federation_writes_a_run_directory(federation):
    f = federation
    assert f.serve_code == 0, f.serve.text[-4000:]
    for name in RUN_FILES:
        assert (f.run_dir / name).exists(), f"{name} missing from {sorted(p.name for p in f.run_dir.iterdir())}"
    assert (f.run_dir / "superlink.log").stat().st_size > 0
    summary = json.loads((f.run_dir / "summary.json").read_text())
    assert summary["command"] == "serve" and summary["rounds"] == 2
    assert summary["sites"] == 4 and set(summary["final"]) == {"0", "1", "2", "3", "pooled"}
    assert "eval_error" in summary["final"]["3"]  # dead by evaluation time
    assert all("balanced_accuracy" in summary["final"][s] for s in ("0", "1", "2", "pooled"))
    records = [json.loads(line) for line in (f.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {(r["round"], r["site"]) for r in records} >= {(1, "0"), (1, "1"), (1, "2"), (2, "pooled")}
    out = f.serve.text
    assert "SuperNode authentication on" in out and "round 2/2 [finetune]" in out
    # the cross-site evaluation runs over the same SuperLink: the live hospitals' cells, and the dead one's error
    cross = summary["cross_site"]["cells"]["global"]
    assert all("balanced_accuracy" in cross[s] for s in ("0", "1", "2")) and "error" in cross["3"], cross
    assert "cross-site evaluation (cross_site.csv)" in out and (f.run_dir / "cross_site.csv").is_file()
    assert "stopping the SuperLink" in out


@pytest.mark.slow
def test_node_killed_mid_run_is_dropped_and_the_run_continues(federation):
    records = [json.loads(line) for line in (federation.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "killed by SIGKILL" in federation.nodes["site3"].text
    victim = {r["round"]: r for r in records if r["site"] == "3"}
    assert victim[1]["status"] == "rejected" and "client error" in victim[1]["reason"], victim
    for rnd in (1, 2):
        accepted = [r["site"] for r in records if r["round"] == rnd and r.get("status") == "accepted"]
        assert sorted(accepted) == ["0", "1", "2"], records


@pytest.mark.slow
def test_unregistered_key_is_refused(federation):
    f = federation
    node = f.nodes["unregistered"]
    assert f.node_codes["unregistered"] == 1, node.text
    assert "refused this node's key" in node.text and "not registered" in node.text
    assert "Failed to activate SuperNode" in (f.tmp / "state-unregistered" / "supernode.log").read_text()
    assert re.search(r"activate-node.* 412", (f.run_dir / "superlink.log").read_text())
    assert "5" not in json.loads((f.run_dir / "summary.json").read_text())["final"]


@pytest.mark.slow
def test_node_that_does_not_trust_the_ca_cannot_connect(federation):
    f = federation
    node = f.nodes["untrusting"]
    assert f.node_codes["untrusting"] == 1, node.text
    assert "TLS" in node.text and "does not vouch for" in node.text
    assert "CERTIFICATE_VERIFY_FAILED" in (f.tmp / "state-untrusting" / "supernode.log").read_text()
    assert "4" not in json.loads((f.run_dir / "summary.json").read_text())["final"]


@pytest.mark.slow
def test_nodes_stop_cleanly_and_leave_no_process(federation):
    f = federation
    assert "lost the SuperLink" in f.nodes["site0"].text and f.node_codes["site0"] == 1
    for name in ("site1", "site2"):
        assert f.node_codes[name] == 130 and "stopping the SuperNode" in f.nodes[name].text
        assert not (f.tmp / f"state{name[-1]}" / "connection.json").exists()  # signed off
    # The SIGKILLed site never signed off: its record says so to the restarted node (see the test below).
    record = json.loads((f.tmp / "state3" / "connection.json").read_text())
    assert record["node_id"].isdigit() and record["superlink"].startswith("127.0.0.1:")
    assert f.leftovers == []


def test_a_restart_refused_after_a_crash_says_why_not_that_the_key_is_unknown(tmp_path):
    import argparse

    from cli.deploy.supernodes import CONNECTION_FILE, Site, Watch, _explain

    site = Site(3, tmp_path / "node.key", tmp_path, 0, Watch(verbose=False))
    site.watch.reasons.append("auth")
    args = argparse.Namespace(ca=tmp_path / "ca.crt", max_wait_time=60)
    assert "is not registered" in _explain(site, "10.0.0.1:9092", args, tmp_path / "clientapp.log")
    (tmp_path / CONNECTION_FILE).write_text(json.dumps({"superlink": "10.0.0.1:9092", "node_id": "77",
                                                        "connected_at": "2026-12-02T10:00:00+00:00"}))
    said = _explain(site, "10.0.0.1:9092", args, tmp_path / "clientapp.log")
    assert "previous SuperNode (Flower node 77" in said and "up to 60 s" in said and "not registered" not in said
    # A record from another federation says nothing about this one.
    assert "is not registered" in _explain(site, "10.0.0.2:9092", args, tmp_path / "clientapp.log")


def test_fgssl_nodes_which_does_not_wait_says_to_run_it_again_later(tmp_path):
    import argparse

    from cli.deploy.supernodes import CONNECTION_FILE, Site, Watch, _explain

    site = Site(3, tmp_path / "node.key", tmp_path, 0, Watch(verbose=False, command="fgssl nodes"))
    site.watch.reasons.append("auth")
    (tmp_path / CONNECTION_FILE).write_text(json.dumps({"superlink": "10.0.0.1:9092", "node_id": "77",
                                                        "connected_at": "2026-12-02T10:00:00+00:00"}))
    said = _explain(site, "10.0.0.1:9092", argparse.Namespace(ca=tmp_path / "ca.crt", max_wait_time=60),
                    tmp_path / "clientapp.log")
    assert "previous SuperNode (Flower node 77" in said and said.endswith("run the same command again after that")
    assert "tries again" not in said


def test_a_restarted_node_waits_for_its_crashed_supernode_to_lapse_then_gives_up(tmp_path, monkeypatch, capsys):
    """`fgssl node` tries again while the SuperLink still counts the site's crashed SuperNode as online, and stops
    trying once that one's heartbeat must have lapsed (then another SuperNode with the key is the cause). The real
    refusal and retry run in the crash campaign's quick trial (tests/test_crash_campaign.py)."""
    import argparse

    from cli.deploy import supernodes

    clock = {"now": 1000.0}
    monkeypatch.setattr(supernodes.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(supernodes.time, "sleep", lambda s: clock.__setitem__("now", clock["now"] + s))
    calls = []

    def refused_until(lapse_s):
        def run_sites(args, sites, state, wait_for_stale=False):
            calls.append((clock["now"], wait_for_stale))
            if clock["now"] - 1000.0 < lapse_s:
                if wait_for_stale:
                    raise supernodes.StillOnline("the SuperLink at x did not accept this node yet")
                return 1
            return 0
        return run_sites

    args = argparse.Namespace(state_dir=str(tmp_path), site=0, key=str(tmp_path / "node.key"), port=None,
                              verbose=False)
    monkeypatch.setattr(supernodes, "run_sites", refused_until(40))
    assert supernodes.run_node(args) == 0
    assert [t - 1000.0 for t, _ in calls] == [0, 15, 30, 45] and all(w for _, w in calls)
    assert capsys.readouterr().out.count("trying again in 15 s") == 3
    calls.clear()
    clock["now"] = 1000.0
    monkeypatch.setattr(supernodes, "run_sites", refused_until(10_000))  # never lapses: another node holds the key
    assert supernodes.run_node(args) == 1
    last = supernodes.STALE_NODE_S + supernodes.STALE_RETRY_S
    assert calls[-1] == (1000.0 + 60, False) and all(t - 1000.0 < last for t, _ in calls)


@pytest.mark.slow
def test_private_keys_are_private_and_never_logged(federation):
    f = federation
    public = "".join(p.read_text() for p in f.tmp.rglob("*") if p.suffix in (".pub", ".crt"))
    key_files = {p for p in f.tmp.rglob("*.key")}  # every key here, this federation's and the stranger CA's
    lines = [line for p in key_files for line in p.read_text().splitlines()]
    secrets = []
    for key in f.private_keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        assert stat.S_IMODE(key.parent.stat().st_mode) & 0o077 == 0, key.parent
        # The key file's own base64 lines (not the format header every key shares, not its public half) and the
        # private number in hex.
        secrets += [line for line in key.read_text().splitlines()
                    if len(line) >= 40 and "-----" not in line and line not in public and lines.count(line) == 1]
        secrets.append(format(_private_value(key), "x"))
    assert len(secrets) > 2 * len(f.private_keys)
    scanned = 0
    for path in f.tmp.rglob("*"):
        if path.is_file() and path not in key_files:
            text = path.read_bytes().decode(errors="replace")
            scanned += 1
            leaked = [s for s in secrets if s in text]
            assert not leaked, f"private key material in {path}"
    assert scanned > 10


def _serve_proc(tmp_path: Path) -> Proc:
    """`fgssl serve` for one hospital (sites=1, min_nodes=1), its certificates under tmp_path/certs."""
    certs = generate(tmp_path / "certs", nodes=1)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(merge(TINY, {"federation": {"sites": 1, "min_nodes": 1}})))
    return Proc([*FGSSL, "serve", "--certs", str(certs.out), "--address", f"127.0.0.1:{_free_port()}",
                 "--config", str(config), "--out", str(tmp_path / "run")], tmp_path / "serve.out", _env(tmp_path),
                sigint_ignored=True)


def _serve_waiting(tmp_path: Path, app_running: bool) -> tuple[Proc, int]:
    """`fgssl serve` up to the launch of the app (or until its ServerApp waits for hospitals, which never come);
    returns it and the SuperLink's pid."""
    serve = _serve_proc(tmp_path)
    pid = int(serve.wait_for(r"SuperLink up \(pid (\d+)\)", 90).group(1))
    serve.wait_for(r"waiting up to \d+ s for 1 SuperNodes" if app_running else "launching the app", 90)
    return serve, pid


STOP_LIMIT_S = 10.0  # Ctrl-C / SIGTERM to every started process gone, in every state


def _stop_within_limit(proc: Proc, sig: int = signal.SIGINT) -> float:
    t0 = time.monotonic()
    os.kill(proc.popen.pid, sig)
    proc.wait(STOP_LIMIT_S)
    return time.monotonic() - t0


@pytest.mark.slow
@pytest.mark.parametrize("state", ["starting", "waiting for nodes"])
def test_serve_stops_everything_promptly(tmp_path, state):
    if state == "starting":
        serve = _serve_proc(tmp_path)
        serve.wait_for(r"starting the SuperLink", 90)
        superlink = None
    else:
        serve, superlink = _serve_waiting(tmp_path, app_running=True)
    try:
        seconds = _stop_within_limit(serve)
    finally:
        serve.stop()
        left = _kill_leftovers(str(tmp_path))
    print(f"\nserve stopped in {seconds:.1f} s while {state}")
    assert serve.popen.returncode == 130 and "interrupted" in serve.text, serve.text[-2000:]
    if superlink is not None:
        assert f"stopping the SuperLink (pid {superlink})" in serve.text
        assert not Path(f"/proc/{superlink}").exists()
    assert left == []


@pytest.mark.slow
def test_serve_and_node_stop_promptly_mid_round(tmp_path):
    """Both sides get their signal while the hospital trains: each stops all it started within the limit."""
    serve, _ = _serve_waiting(tmp_path, app_running=True)
    certs = tmp_path / "certs"
    node = Proc(_node_args(int(re.search(r"127\.0\.0\.1:(\d+)", serve.text).group(1)), certs / "ca.crt",
                           certs / "nodes" / "node_0" / "node.key", 0, tmp_path / "state", 30),
                tmp_path / "node.out", _env(tmp_path), sigint_ignored=True)
    try:
        node.wait_for(r"train message received", 180)
        # Both signals at once, the coordinator's first: a node that has stopped leaves the federation at once,
        # and a coordinator polling every 0.25 s would fail its round (no node left) before its own signal came.
        t0 = time.monotonic()
        os.kill(serve.popen.pid, signal.SIGINT)
        os.kill(node.popen.pid, signal.SIGTERM)
        node.wait(STOP_LIMIT_S)
        node_s = time.monotonic() - t0
        serve.wait(2 * STOP_LIMIT_S)
        serve_s = time.monotonic() - t0
    finally:
        node.stop()
        serve.stop()
        left = _kill_leftovers(str(tmp_path))
    print(f"\nmid-round: node stopped in {node_s:.1f} s, serve in {serve_s:.1f} s")
    assert serve_s <= STOP_LIMIT_S, f"serve stopped {serve_s:.1f} s after its signal:\n{serve.text[-1500:]}"
    assert node.popen.returncode == 130 and "stopping the SuperNode" in node.text, node.text[-2000:]
    assert serve.popen.returncode == 130, serve.text[-2000:]
    assert left == []


def _wait_for_file_text(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.3)
    raise AssertionError(f"no {text!r} in {path} within {timeout:.0f} s")


@pytest.mark.parametrize("command", ["node", "nodes"])
def test_node_stops_promptly_while_it_waits_for_the_superlink(tmp_path, command):
    """The SuperNodes retry a SuperLink that is not there yet and the launcher polls it: a hospital (`fgssl node`)
    or a rehearsal of two (`fgssl nodes`) gives up on Ctrl-C or SIGTERM, every process it started gone within the
    limit."""
    certs = generate(tmp_path / "certs", nodes=2)
    port, state = _free_port(), tmp_path / "state"
    if command == "node":
        args, logs = _node_args(port, certs.ca_cert, certs.nodes[0].private_key, 0, state, 300), [state]
    else:
        args = [sys.executable, "-m", "cli.nodes_cmd", "--superlink", f"127.0.0.1:{port}", "--ca", str(certs.ca_cert),
                "--certs", str(certs.out), "--sites", "0-1", "--dataset", "synthetic", "--state-dir", str(state),
                "--max-wait-time", "300"]
        logs = [state / "site0", state / "site1"]
    node = Proc(args, tmp_path / "node.out", _env(tmp_path), sigint_ignored=True)
    try:
        node.wait_for(r"SuperNode started \(.*pid \d+\)", 60)
        for folder in logs:
            _wait_for_file_text(folder / "supernode.log", "Connection attempt failed", 60)
        _wait_for_file_text(state / "clientapp.log", "ClientApp launcher ready", 60)
        seconds = _stop_within_limit(node, signal.SIGINT if command == "node" else signal.SIGTERM)
    finally:
        node.stop()
        left = _kill_leftovers(str(tmp_path))
    print(f"\nwaiting fgssl {command} stopped in {seconds:.1f} s")
    assert node.popen.returncode == 130 and "stopping the SuperNode" in node.text, node.text[-2000:]
    assert left == []


@pytest.mark.slow
def test_serve_fails_clearly_when_the_superlink_dies(tmp_path):
    serve, superlink = _serve_waiting(tmp_path, app_running=False)
    try:
        os.kill(superlink, signal.SIGKILL)
        assert serve.wait(60) == 1
    finally:
        serve.stop()
        left = _kill_leftovers(str(tmp_path))
    assert f"the SuperLink (pid {superlink}) exited with code -9 during the run" in serve.text
    assert "superlink.log" in serve.text and left == []


def test_node_refuses_a_key_others_can_read(tmp_path):
    key = generate(tmp_path / "certs", nodes=1).nodes[0].private_key
    key.chmod(0o644)
    proc = subprocess.run([*FGSSL, "node", "--superlink", "127.0.0.1:9", "--ca", str(tmp_path / "certs" / "ca.crt"),
                           "--key", str(key), "--site", "0", "--dataset", "synthetic", "--state-dir",
                           str(tmp_path / "state")], cwd=REPO, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "readable by other users" in proc.stderr and "chmod 600" in proc.stderr


def _node_without_superlink(tmp_path: Path) -> tuple[Proc, int, int, Path]:
    """`fgssl node` pointed at a port where no SuperLink listens (it keeps retrying for 60 s); returns it, its
    SuperNode's and its launcher's pids, and its state folder, once the launcher polls the SuperNode."""
    certs = generate(tmp_path / "certs", nodes=1)
    state = tmp_path / "state"
    node = Proc(_node_args(_free_port(), certs.ca_cert, certs.nodes[0].private_key, 0, state, 60),
                tmp_path / "node.out", _env(tmp_path), sigint_ignored=True)
    m = node.wait_for(r"SuperNode started \(pid (\d+)\); ClientApps run in forks of pid (\d+)", 60)
    deadline = time.monotonic() + 90
    while "polling the SuperNode's Runtime API" not in (state / "clientapp.log").read_text(errors="replace"):
        assert time.monotonic() < deadline and node.popen.poll() is None, (state / "clientapp.log").read_text()
        time.sleep(0.3)
    return node, int(m.group(1)), int(m.group(2)), state


def test_the_runtime_api_serves_tasks_only_to_requests_signed_with_the_node_secret(tmp_path):
    from cli.deploy.warm_clientapps import Launcher, RefusedSecret

    node, supernode, _, state = _node_without_superlink(tmp_path)
    try:
        secret = state / "runtime.secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_bytes()) == 32
        port = re.search(r"--port (\d+)", Path(f"/proc/{supernode}/cmdline").read_bytes().replace(b"\0", b" ")
                         .decode()).group(1)
        address = f"127.0.0.1:{port}"
        home = state / "flwr-home"
        signed = Launcher({address: (supernode, home)}, secret.read_bytes(), poll_s=0.1)
        forged = Launcher({address: (supernode, home)}, b"x" * 32, poll_s=0.1)
        try:
            assert signed.acquire(address) is None and signed.answering[address]  # answered: no run, no task
            with pytest.raises(RefusedSecret, match="refused this launcher's secret"):
                forged.acquire(address)
        finally:
            signed.stop()
            forged.stop()
    finally:
        node.stop()
        left = _kill_leftovers(str(tmp_path))
    assert left == []


def test_node_stops_with_a_clear_error_when_its_clientapp_launcher_dies(tmp_path):
    node, supernode, launcher, state = _node_without_superlink(tmp_path)
    try:
        os.kill(launcher, signal.SIGKILL)
        assert node.wait(60) == 1
    finally:
        node.stop()
        left = _kill_leftovers(str(tmp_path))
    assert "the ClientApp launcher stopped, so this node could run no task" in node.text
    assert str(state / "clientapp.log") in node.text
    assert not Path(f"/proc/{supernode}").exists() and left == []


def test_nodes_names_the_missing_keys_and_rejects_bad_site_lists(tmp_path):
    from cli.nodes_cmd import parse_sites

    assert parse_sites("0-2,5") == [0, 1, 2, 5]
    for bad in ("", "a", "1-", "0-2,1"):
        with pytest.raises(Exception, match="site id|give each site once"):
            parse_sites(bad)
    generate(tmp_path / "certs", nodes=2)
    proc = subprocess.run([*FGSSL, "nodes", "--superlink", "127.0.0.1:9", "--ca", str(tmp_path / "certs" / "ca.crt"),
                           "--certs", str(tmp_path / "certs"), "--sites", "0-3", "--dataset", "synthetic",
                           "--state-dir", str(tmp_path / "state")], cwd=REPO, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "no key for 2 of the sites" in proc.stderr and "node_2/node.key" in proc.stderr, proc.stderr
    assert not (tmp_path / "state").exists()  # nothing started, nothing written
