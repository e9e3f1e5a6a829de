"""How a hospital's node runs: its SuperNode processes, the warm ClientApp launcher, and what their logs say.

`fgssl node` (one site) and `fgssl nodes` (several sites on one machine, for rehearsals) parse their arguments in
cli/node_cmd.py and cli/nodes_cmd.py and run here. Each SuperNode connects to the SuperLink over TLS (trusting only
the federation's CA) and authenticates with the hospital's private key; the node's own settings (site id, dataset,
state directory, privacy budget) travel as Flower's --node-config to every ClientApp (`client.local_site`). Flower's
failure modes (untrusted certificate, unregistered key, SuperLink gone) become one clear message, and a SuperNode
that has given up reconnecting (Flower keeps it running) is stopped.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from client.node_settings import NodeSettings
from cli.deploy.federation import (DeployError, check_private_file, flower_env, join_address, launcher_command,
                                   node_config_arg, parse_address, supernode_command, write_runtime_secret)
from cli.deploy.processes import Child, become_subreaper, free_port, stop_all, stop_on_signals

_ROUND = re.compile(r"\[RUN (\d+)(?:, ROUND ([^\]]*))?\]")
_RECEIVING = re.compile(r"Receiving: (\w+) message")
_NODE_ID = re.compile(r"SuperNode ID: (\d+)")


def say_as(command: str, line: str) -> None:
    """One progress line, starting with the command's name (`fgssl nodes` runs the node code for several sites)."""
    print(f"{command}: {line}", flush=True)


@dataclass
class Watch:
    """What the SuperNode's log says, as it says it."""
    verbose: bool
    prefix: str = ""  # "site N: " when several SuperNodes share one terminal
    command: str = "fgssl node"  # what this process's lines start with (`fgssl nodes` runs several sites)
    node_id: str | None = None
    # Where the SuperLink's acceptance of this site is recorded until the SuperNode signs off cleanly: a restart
    # after a crash is refused while the SuperLink still counts the dead SuperNode as online.
    connection_file: Path | None = None
    superlink: str = ""
    gave_up_at: float | None = None
    reasons: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _round: str = ""

    def __call__(self, line: str) -> None:
        text = line.strip()
        if self.verbose:
            print(self.prefix + text, flush=True)
        with self.lock:
            if m := _NODE_ID.search(text):
                self.node_id = m.group(1)
                self.say(f"{self.prefix}connected to the SuperLink as Flower node {self.node_id}")
                if self.connection_file is not None:
                    self.connection_file.write_text(json.dumps({
                        "superlink": self.superlink, "node_id": self.node_id,
                        "connected_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}))
            elif m := _ROUND.search(text):
                self._round = f"run {m.group(1)}" + (f", {m.group(2)}" if m.group(2) else "")
            elif (m := _RECEIVING.search(text)) and not self.verbose:
                self.say(self.prefix + (f"{self._round}: {m.group(1)} message received" if self._round else
                                        f"{m.group(1)} message received"))
            elif "Giving up reconnection" in text:
                self.gave_up_at = time.monotonic()
            if "CERTIFICATE_VERIFY_FAILED" in text or "SSL/TLS handshake error" in text:
                self._add("tls")
            elif "Failed to activate SuperNode" in text:
                self._add("auth")
            elif "Unable to parse the private key" in text:
                self._add("key")
            elif "Connection refused" in text or "Name or service not known" in text:
                self._add("unreachable")
            if not self.verbose and ("ERROR" in text or "raised an exception" in text):
                print(f"  {self.prefix}{text}", flush=True)

    def say(self, line: str) -> None:
        say_as(self.command, line)

    def _add(self, reason: str) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)


@dataclass
class Site:
    """One hospital's SuperNode as this process runs it."""
    site: int
    key: Path
    state: Path
    port: int
    watch: Watch
    node: Child | None = None
    code: int | None = None


def _explain(site: Site, superlink: str, args: argparse.Namespace, launcher_log: Path) -> str:
    reasons, code = site.watch.reasons, site.code or 0
    gave_up, connected = site.watch.gave_up_at is not None, site.watch.node_id is not None
    if "tls" in reasons:
        return (f"TLS: the SuperLink at {superlink} presented a certificate that {args.ca} does not vouch for "
                "(is --ca the federation's ca.crt, and is this host name among the certificate's --hosts?)")
    if "key" in reasons:
        return f"--key {site.key} is not an OpenSSH EC private key (use node.key written by `fgssl certs`)"
    if "auth" in reasons:
        earlier = _earlier_connection(site, superlink)
        if earlier and site.watch.command != "fgssl node":  # `fgssl nodes` does not wait (run_node does)
            return (f"the SuperLink at {superlink} did not accept this node: {_still_online(earlier)}; run the "
                    "same command again after that")
        if earlier:
            return (f"the SuperLink at {superlink} did not accept this node: {_still_online(earlier)}; `fgssl node` "
                    f"tries again for up to {STALE_NODE_S + STALE_RETRY_S:g} s after its start, so if it still "
                    "stops here, another SuperNode with this site's key is running: stop it, then run the same "
                    "command again")
        return (f"the SuperLink at {superlink} refused this node's key: its public key (node.pub next to {site.key}) "
                "is not registered with this federation; ask the coordinator to register it")
    wait = f"{args.max_wait_time:g} s" if args.max_wait_time else "retries"
    if gave_up and connected:
        return f"lost the SuperLink at {superlink} (no answer for {wait}); the federation is gone or unreachable"
    if gave_up:
        return f"could not reach the SuperLink at {superlink} (gave up after {wait})"
    if "launcher" in reasons:
        return f"the ClientApp launcher stopped, so this node could run no task; see {launcher_log}"
    if code < 0:
        return f"the SuperNode was killed by {signal.Signals(-code).name}"
    return "the SuperNode stopped unexpectedly"


STALE_NODE_S = 60  # Flower 1.42's SuperNode heartbeat interval (30 s) × the SuperLink's patience (2)
STALE_RETRY_S = 15.0
CONNECTION_FILE = "connection.json"


def _still_online(earlier: dict[str, str]) -> str:
    return (f"this site's previous SuperNode (Flower node {earlier['node_id']}, connected {earlier['connected_at']}) "
            f"stopped without signing off, and the SuperLink counts it as online until its heartbeat lapses (up to "
            f"{STALE_NODE_S} s in Flower 1.42)")


def _earlier_connection(site: Site, superlink: str) -> dict[str, str] | None:
    """The record of this site's last SuperNode that was accepted by this SuperLink and never signed off."""
    try:
        record = json.loads((site.state / CONNECTION_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("superlink") == superlink else None


def _common_paths(args: argparse.Namespace) -> tuple[str, Path, Path | None]:
    """The SuperLink address, the CA and the data root, checked."""
    host, port = parse_address(args.superlink, "--superlink")
    ca = Path(args.ca).expanduser().resolve()
    if not ca.is_file():
        raise DeployError(f"--ca: {ca} not found (the federation's ca.crt)")
    root = Path(args.root).expanduser().resolve() if args.root else None
    if root is not None and not root.is_dir():
        raise DeployError(f"--root: {root} is not a directory")
    return join_address(host, port), ca, root


def _supernode(site: Site, args: argparse.Namespace, superlink: str, ca: Path, root: Path | None,
               secret: Path) -> list[str]:
    check_private_file(site.key, "--key: the SuperNode private key")
    site.state.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings = NodeSettings(site=site.site, dataset=args.dataset, state_dir=site.state, root=root,
                            max_epsilon=args.max_epsilon, delta=args.delta, csv=args.csv,
                            path_column=args.path_column, label_column=args.label_column,
                            group_column=args.group_column,
                            skip_bad_images=args.skip_bad_images, data_changed=args.data_changed)
    return supernode_command(superlink, ca, site.key, site.port, node_config_arg(settings.to_node_config()),
                             args.max_wait_time or None, secret)


class StillOnline(Exception):
    """The SuperLink refused the node because it still counts the site's previous, crashed SuperNode as online."""


def run_sites(args: argparse.Namespace, sites: list[Site], launcher_dir: Path, command: str = "fgssl node",
              wait_for_stale: bool = False) -> int:
    """Start a SuperNode per site and one warm ClientApp launcher for all of them; supervise until they end.

    With `wait_for_stale`, a refusal only because the site's previous SuperNode never signed off raises StillOnline
    instead of printing an error, so that the caller can try again once that SuperNode's heartbeat has lapsed."""
    say = functools.partial(say_as, command)
    superlink, ca, root = _common_paths(args)
    secret = launcher_dir / "runtime.secret"
    commands = [_supernode(s, args, superlink, ca, root, secret) for s in sites]  # checks every key first
    launcher_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_runtime_secret(secret)

    stop_on_signals()
    become_subreaper()

    data = "share of the built-in synthetic data" if args.dataset == "synthetic" else f"{args.dataset} in {root}"
    budget = f"; privacy budget ε ≤ {args.max_epsilon:g}" if args.max_epsilon else ""
    launcher: Child | None = None
    stopping = False
    try:
        for s, cmd in zip(sites, commands):
            say(f"site {s.site} ({'its ' if len(sites) == 1 else ''}{data}{budget}) joining the SuperLink at "
                f"{superlink} over TLS (CA {ca}), authenticated with {s.key}")
            say(f"{s.watch.prefix}state in {s.state}; SuperNode log: {s.state / 'supernode.log'}")
            s.watch.connection_file, s.watch.superlink = s.state / CONNECTION_FILE, superlink
            s.node = Child(f"the SuperNode of site {s.site}", cmd, s.state / "supernode.log",
                           env=flower_env(s.state / "flwr-home"), cwd=s.state, on_line=s.watch)
        log = launcher_dir / "clientapp.log"
        argv = launcher_command([(s.port, s.node.pid, s.state / "flwr-home") for s in sites], secret)
        launcher = Child("the ClientApp launcher", argv, log, env=flower_env(launcher_dir / "flwr-home"),
                         cwd=launcher_dir,
                         on_line=Watch(verbose=args.verbose, command=command) if len(sites) > 1 else sites[0].watch)
        started = ", ".join(f"{s.watch.prefix}pid {s.node.pid}" for s in sites)
        say(f"SuperNode started ({started}); ClientApps run in forks of pid {launcher.pid} (log: {log})")
        _supervise(sites, launcher)
    except KeyboardInterrupt:
        stopping = True
        say(f"stopping the SuperNode{'s' * (len(sites) > 1)} "
            f"({', '.join(f'pid {s.node.pid}' for s in sites if s.node)})"
            + (f" and the ClientApp launcher (pid {launcher.pid})" if launcher else ""))
        raise
    finally:
        stop_all([launcher, *(s.node for s in sites)])
        for s in sites:
            if s.node is not None:
                s.code = s.node.returncode
                if (s.code == 0 or stopping) and s.watch.node_id is not None:  # it signed off
                    (s.state / CONNECTION_FILE).unlink(missing_ok=True)
    earlier = [_earlier_connection(s, superlink) for s in sites if s.watch.reasons == ["auth"]]
    if wait_for_stale and len(earlier) == len(sites) and all(earlier):
        raise StillOnline(f"the SuperLink at {superlink} did not accept this node yet: {_still_online(earlier[0])}")
    failed = 0
    for s in sites:
        w = s.watch
        if w.gave_up_at is not None or w.reasons or s.code != 0:
            failed += 1
            reason = _explain(s, superlink, args, launcher_dir / "clientapp.log")
            print(f"{command}: error: {w.prefix}{reason} (SuperNode exit code {s.code}; log: "
                  f"{s.state / 'supernode.log'})", file=sys.stderr)
    if failed:
        return 1
    say(f"the SuperNode{'s' * (len(sites) > 1)} stopped")
    return 0


def _supervise(sites: list[Site], launcher: Child) -> None:
    """Until every SuperNode has ended. Flower's SuperNode stays up after it gives up reconnecting: stop it once it
    has said so. Without the launcher no node can run a task, so all stop with it."""
    live = list(sites)
    while live:
        if not launcher.alive():
            for s in live:
                s.watch.reasons.append("launcher")
                s.node.stop()
            return
        for s in list(live):
            if s.watch.gave_up_at is not None and time.monotonic() - s.watch.gave_up_at > 3.0:
                s.node.stop()
            if not s.node.alive():
                live.remove(s)
        time.sleep(0.2)


def run_node(args: argparse.Namespace) -> int:
    """`fgssl node`: one site's SuperNode. Restarted after a crash, it is refused while the SuperLink still counts the
    dead SuperNode as online (at most STALE_NODE_S after that one's last heartbeat, which was before this start): it
    tries again every STALE_RETRY_S until then, so an operator or a supervisor only has to start it once."""
    state = Path(args.state_dir).expanduser().resolve()
    give_up = time.monotonic() + STALE_NODE_S + STALE_RETRY_S
    while True:
        site = Site(args.site, Path(args.key).expanduser().resolve(), state, args.port or free_port(),
                    Watch(verbose=args.verbose))
        try:
            return run_sites(args, [site], state, wait_for_stale=time.monotonic() + STALE_RETRY_S < give_up)
        except StillOnline as refused:
            say_as("fgssl node", f"{refused}; trying again in {STALE_RETRY_S:g} s")
            time.sleep(STALE_RETRY_S)


def run_nodes(args: argparse.Namespace) -> int:
    """`fgssl nodes`: the given sites' SuperNodes, their keys from the `fgssl certs` folder."""
    certs = Path(args.certs).expanduser().resolve()
    state = Path(args.state_dir).expanduser().resolve()
    sites = [Site(i, certs / "nodes" / f"node_{i}" / "node.key", state / f"site{i}", free_port(),
                  Watch(verbose=args.verbose, prefix=f"site {i}: ", command="fgssl nodes")) for i in args.sites]
    missing = [str(s.key) for s in sites if not s.key.is_file()]
    if missing:
        raise DeployError(f"--certs: no key for {len(missing)} of the sites: {', '.join(missing[:3])}"
                          + (" ..." if len(missing) > 3 else "") + " (make them with `fgssl certs --nodes N`)")
    return run_sites(args, sites, state, command="fgssl nodes")
