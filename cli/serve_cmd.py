"""`fgssl serve`: the coordinator's side of a real federation (its work: cli/deploy/coordinator.py)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--certs", required=True, metavar="DIR",
                   help="directory written by `fgssl certs` (ca.crt, server.crt, server.key, nodes/*/node.pub)")
    p.add_argument("--address", default="0.0.0.0:8000", metavar="HOST:PORT",
                   help="where the SuperLink listens for SuperNodes and the flwr CLI (default: 0.0.0.0:8000)")
    p.add_argument("--register", nargs="+", metavar="PUBKEY",
                   help="hospital public keys to admit (default: every nodes/*/node.pub under --certs)")
    p.add_argument("--config", help="YAML config file (default: simulations/configs/default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set federation.sites=3 (repeatable)")
    p.add_argument("--out", help="run directory to write (default: runs/<timestamp>-serve)")
    p.add_argument("--seed", type=int, help="random seed (overrides the config's seed)")
    p.add_argument("--durable", action="store_true",
                   help="keep the SuperLink's state (registered nodes, runs, messages) in RUN_DIR/superlink.sqlite3, "
                        "so that after a crash `--resume` carries on with the hospitals' SuperNodes still connected "
                        "(costs disk and time every round: the messages go through SQLite)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a run whose coordinator stopped or crashed, from its last checkpoint, with its saved "
                        "config (the hospitals' `fgssl node` commands stay as they are)")
    p.add_argument("--quiet", action="store_true", help="print only this command's own lines, not Flower's stream")
    p.add_argument("--app", metavar="DIR", help="the Flower app folder (default: this project's source folder)")
    p.add_argument("--start-timeout", type=float, default=60.0, metavar="S",
                   help="seconds the SuperLink may take to start (default: 60)")
    p.add_argument("--ready-file", metavar="PATH",
                   help="create PATH once the keys are registered and the app is launched, remove it at the end "
                        "(a readiness check for orchestrators: nodes that connect earlier are refused)")


def run(args: argparse.Namespace) -> int:
    from cli.deploy.coordinator import serve
    return serve(args)
