"""`fgssl certs`: a federation CA, the SuperLink TLS certificate and one auth key pair per hospital SuperNode.

What Flower 1.42 does with the files (read from flwr's own source):

* SuperLink TLS: ``flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile server.crt --ssl-keyfile server.key``
  (flwr/superlink/cli/flower_superlink.py: the paths go to ``uvicorn.run(ssl_certfile=, ssl_keyfile=)`` for the
  HTTP Fleet/Control APIs on --host/--port, default 8000; flwr/common/args.py ``try_obtain_server_certificates``
  reads the three as bytes for the gRPC servers, flwr/supercore/grpc.py ``grpc.ssl_server_credentials``).  PEM.
* SuperNode TLS: ``flower-supernode --root-certificates ca.crt`` (flwr/common/args.py
  ``try_obtain_root_certificates``), a PEM CA bundle; flwr/supercore/protobuf/client.py loads it with
  ``ssl.SSLContext(PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=...)``, so the hostname must be in the SANs.
* SuperNode auth: ``flower-supernode --auth-supernode-private-key node.key`` is loaded with
  ``cryptography``'s ``load_ssh_private_key(data, None)`` and must be an EC key
  (flwr/supernode/cli/flower_supernode.py ``_try_setup_client_authentication``).
* Registration: the SuperLink is started with ``--enable-supernode-auth`` (needs TLS and the grpc-rere Fleet
  API); the old ``--auth-list-public-keys`` CSV is rejected in 1.42.  Each node's public key is registered with
  ``flwr supernode register node.pub [SUPERLINK]`` (flwr/cli/supernode/register.py: ``load_ssh_public_key``, EC on
  a NIST curve).
"""

from __future__ import annotations

import argparse

from cli.deploy.certs import DEFAULT_HOSTS, generate
from cli.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    # --nodes/--days are parsed as text and validated in run(), so bad values give one error line, not usage.
    p.add_argument("--out", required=True, help="directory to write the CA, server certificate and node keys to")
    p.add_argument("--nodes", required=True, metavar="N", help="number of hospital SuperNodes (one key pair each)")
    p.add_argument("--hosts", default=",".join(DEFAULT_HOSTS), metavar="NAME_OR_IP,...",
                   help="SuperLink host names / IP addresses for the server certificate's subjectAltNames "
                        f"(default: {','.join(DEFAULT_HOSTS)})")
    p.add_argument("--days", default="365", metavar="D", help="validity in days (default: 365)")
    p.add_argument("--force", action="store_true", help="replace an existing CA and keys in --out")


def run(args: argparse.Namespace) -> int:
    try:
        g = generate(args.out, args.nodes, args.hosts, args.days, force=args.force)
    except OSError as e:
        raise UserError(f"--out: {e}") from None

    first_host = g.hosts[0] if ":" not in g.hosts[0] else f"[{g.hosts[0]}]"
    print(f"fgssl certs: wrote a federation CA, a SuperLink certificate and {len(g.nodes)} SuperNode key "
          f"pair{'s' if len(g.nodes) != 1 else ''} under {g.out} (valid until {g.not_valid_after:%Y-%m-%d})")
    print(f"  CA certificate      {g.ca_cert}    (give to every SuperNode: --root-certificates)")
    print(f"  CA private key      {g.ca_key}    (0600; keep offline, the SuperLink does not need it)")
    print(f"  SuperLink cert      {g.server_cert}    (SANs: {', '.join(g.hosts)})")
    print(f"  SuperLink key       {g.server_key}    (0600)")
    print(f"  SuperNode keys      {g.out / 'nodes'}/node_<i>/node.key (0600) and node.pub")
    print()
    print("SuperLink:")
    print(f"  flower-superlink --enable-supernode-auth --ssl-ca-certfile {g.ca_cert} "
          f"--ssl-certfile {g.server_cert} --ssl-keyfile {g.server_key}")
    print()
    print("Public keys to register (one per hospital; run against the SuperLink's Control API):")
    for n in g.nodes:
        print(f"  node_{n.index}: {n.public_line}")
        print(f"    flwr supernode register {n.public_key}")
    print()
    print("Each hospital runs (copy only its own nodes/node_<i>/ directory and ca.crt there):")
    print(f"  flower-supernode --superlink {first_host}:8000 --root-certificates {g.ca_cert} "
          f"--auth-supernode-private-key {g.out / 'nodes'}/node_<i>/node.key")
    return 0
