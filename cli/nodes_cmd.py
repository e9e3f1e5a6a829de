"""`fgssl nodes`: several hospitals' SuperNodes on one machine, sharing one warm ClientApp launcher.

For a coordinator rehearsing a federation before the hospitals join, for demos and for load checks: every node is
a real SuperNode with its own key (from `fgssl certs`), its own state directory and its own TLS connection to the
SuperLink, exactly as `fgssl node` starts it. Only their ClientApps come from one launcher, so the machine imports
torch once instead of once per node (about 700 MB each).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


from .federation import DeployError
from .node_cmd import Site, Watch, add_shared_arguments, run_sites, standalone_main
from .processes import free_port


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the SuperLink's address")
    p.add_argument("--ca", required=True, metavar="FILE", help="the federation's CA certificate (ca.crt)")
    p.add_argument("--certs", required=True, metavar="DIR",
                   help="the `fgssl certs` folder: site i's key is nodes/node_<i>/node.key there")
    p.add_argument("--sites", required=True, type=parse_sites, metavar="LIST",
                   help="the site ids to run, e.g. 0-19 or 0,2,5")
    p.add_argument("--state-dir", required=True, metavar="DIR",
                   help="site i keeps its state in DIR/site<i>; the shared ClientApp launcher logs to DIR")
    add_shared_arguments(p)


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
    certs = Path(args.certs).expanduser().resolve()
    state = Path(args.state_dir).expanduser().resolve()
    sites = [Site(i, certs / "nodes" / f"node_{i}" / "node.key", state / f"site{i}", free_port(),
                  Watch(verbose=args.verbose, prefix=f"site {i}: ", command="fgssl nodes")) for i in args.sites]
    missing = [str(s.key) for s in sites if not s.key.is_file()]
    if missing:
        raise DeployError(f"--certs: no key for {len(missing)} of the sites: {', '.join(missing[:3])}"
                          + (" ..." if len(missing) > 3 else "") + " (make them with `fgssl certs --nodes N`)")
    return run_sites(args, sites, state, command="fgssl nodes")


def main(argv: list[str] | None = None) -> int:
    return standalone_main("fgssl nodes", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
