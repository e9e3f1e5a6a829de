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
import sys

from cli.arguments import add_node_data_arguments
from cli.errors import standalone_main


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
    add_node_data_arguments(p)


def run(args: argparse.Namespace) -> int:
    from cli.deploy.supernodes import run_node
    return run_node(args)


def main(argv: list[str] | None = None) -> int:
    return standalone_main("fgssl node", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
