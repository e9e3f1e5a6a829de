"""`fgssl node`: one hospital's side of a real federation.

Starts one Flower SuperNode that connects to the SuperLink over TLS (trusting only the federation's CA) and
authenticates with the hospital's private key. The node's own settings (its site id, dataset folder and format,
state directory, privacy budget) travel as Flower's --node-config to every ClientApp process it starts
(`client.local_site`). The SuperNode's full log goes to STATE_DIR/supernode.log; this command prints the lines that
matter and turns Flower's failure modes (untrusted certificate, unregistered key, SuperLink gone) into one clear
message. Flower's SuperNode keeps running after it gives up reconnecting, so this command stops it then.
"""

from __future__ import annotations

import argparse
import functools
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from client.node_settings import NodeSettings
from fgssl.config import DATASETS

from . import errors
from .federation import (DeployError, check_private_file, flower_env, join_address, launcher_command,
                         node_config_arg, parse_address, supernode_command, write_runtime_secret)
from .processes import Child, become_subreaper, free_port, stop_all, stop_on_signals

_ROUND = re.compile(r"\[RUN (\d+)(?:, ROUND ([^\]]*))?\]")
_RECEIVING = re.compile(r"Receiving: (\w+) message")
_NODE_ID = re.compile(r"SuperNode ID: (\d+)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the SuperLink's address")
    p.add_argument("--ca", required=True, metavar="FILE", help="the federation's CA certificate (ca.crt)")
    p.add_argument("--key", required=True, metavar="FILE",
                   help="this hospital's SuperNode private key (node.key from `fgssl certs`; must be 0600)")
    p.add_argument("--site", required=True, type=int, metavar="N", help="this hospital's site id in the federation")
    p.add_argument("--state-dir", required=True, metavar="DIR",
                   help="this node's state: privacy ledger, image cache, site-local weights, logs")
    p.add_argument("--port", type=int, metavar="P",
                   help="local port for the node's ClientApp processes (default: a free one)")
    add_shared_arguments(p)


def add_shared_arguments(p: argparse.ArgumentParser) -> None:
    """The options `fgssl node` and `fgssl nodes` share: the data, the budget, the patience."""
    p.add_argument("--dataset", required=True, choices=DATASETS,
                   help="the local data's format; 'synthetic' generates this site's share of the built-in data")
    p.add_argument("--root", metavar="DIR", help="the local dataset folder, as the challenge ships it")
    p.add_argument("--max-epsilon", type=float, metavar="EPS",
                   help="the most ε of sample-level DP this hospital ever spends; it refuses rounds beyond it and "
                        "does not train in runs without privacy.mode=sample")
    p.add_argument("--delta", type=float, metavar="D",
                   help="the δ this hospital's ε is computed at; it refuses runs that ask a larger one (default: "
                        "min(1e-5, 1/(10 n)) for its n training images)")
    p.add_argument("--csv", help="folder data: the CSV of image paths and labels (relative to --root)")
    p.add_argument("--path-column", help="folder data: the CSV column of image paths")
    p.add_argument("--label-column", help="folder data: the CSV column of labels")
    p.add_argument("--group-column", help="folder data: the CSV column of patient/lesion ids (group-aware splits)")
    p.add_argument("--skip-bad-images", action="store_true", help="skip (and list) unreadable or missing images")
    p.add_argument("--max-wait-time", type=float, default=120.0, metavar="S",
                   help="give up after S seconds without the SuperLink (default: 120; 0 = keep trying)")
    p.add_argument("--verbose", action="store_true", help="print the SuperNode's whole log, not only key lines")


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


def standalone_main(prog: str, doc: str, add: Callable[[argparse.ArgumentParser], None],
                    run_command: Callable[[argparse.Namespace], int], argv: list[str] | None) -> int:
    """`python -m cli.node_cmd` / `cli.nodes_cmd`: the same arguments and exit codes as through `fgssl`."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    add(parser)
    return errors.run_command(prog, parser.parse_args(argv), run_command)


def run(args: argparse.Namespace) -> int:
    return _node(args)


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
                            skip_bad_images=args.skip_bad_images)
    return supernode_command(superlink, ca, site.key, site.port, node_config_arg(settings.to_node_config()),
                             args.max_wait_time or None, secret)


def run_sites(args: argparse.Namespace, sites: list[Site], launcher_dir: Path, command: str = "fgssl node") -> int:
    """Start a SuperNode per site and one warm ClientApp launcher for all of them; supervise until they end."""
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
    try:
        for s, cmd in zip(sites, commands):
            say(f"site {s.site} ({'its ' if len(sites) == 1 else ''}{data}{budget}) joining the SuperLink at "
                f"{superlink} over TLS (CA {ca}), authenticated with {s.key}")
            say(f"{s.watch.prefix}state in {s.state}; SuperNode log: {s.state / 'supernode.log'}")
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
        say(f"stopping the SuperNode{'s' * (len(sites) > 1)} "
            f"({', '.join(f'pid {s.node.pid}' for s in sites if s.node)})"
            + (f" and the ClientApp launcher (pid {launcher.pid})" if launcher else ""))
        raise
    finally:
        stop_all([launcher, *(s.node for s in sites)])
        for s in sites:
            if s.node is not None:
                s.code = s.node.returncode
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


def _node(args: argparse.Namespace) -> int:
    state = Path(args.state_dir).expanduser().resolve()
    site = Site(args.site, Path(args.key).expanduser().resolve(), state, args.port or free_port(),
                Watch(verbose=args.verbose))
    return run_sites(args, [site], state)


def main(argv: list[str] | None = None) -> int:
    return standalone_main("fgssl node", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
