"""`fgssl nodes`: several hospitals' SuperNodes on one machine, sharing one warm ClientApp launcher.

For a coordinator rehearsing a federation before the hospitals join, for demos and for load checks: every node is
a real SuperNode with its own key (from `fgssl certs`), its own state directory and its own TLS connection to the
SuperLink, exactly as `fgssl node` starts it. Only their ClientApps come from one launcher, so the machine imports
torch once instead of once per node (about 700 MB each).
"""

from __future__ import annotations

import argparse
import sys

from cli.arguments import add_node_data_arguments
from cli.errors import standalone_main


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the SuperLink's address")
    p.add_argument("--ca", required=True, metavar="FILE", help="the federation's CA certificate (ca.crt)")
    p.add_argument("--certs", required=True, metavar="DIR",
                   help="the `fgssl certs` folder: site i's key is nodes/node_<i>/node.key there")
    p.add_argument("--sites", required=True, type=parse_sites, metavar="LIST",
                   help="the site ids to run, e.g. 0-19 or 0,2,5")
    p.add_argument("--state-dir", required=True, metavar="DIR",
                   help="site i keeps its state in DIR/site<i>; the shared ClientApp launcher logs to DIR")
    add_node_data_arguments(p)


def parse_sites(text: str) -> list[int]:
    sites: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise argparse.ArgumentTypeError(f"{part!r} is not a site id or a range like 0-19")
        sites += range(int(first), int(last) + 1) if dash else [int(first)]
    if not sites or len(set(sites)) != len(sites):
        raise argparse.ArgumentTypeError(f"{text!r}: give each site once")
    return sites


def run(args: argparse.Namespace) -> int:
    from cli.deploy.supernodes import run_nodes
    return run_nodes(args)


def main(argv: list[str] | None = None) -> int:
    return standalone_main("fgssl nodes", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
