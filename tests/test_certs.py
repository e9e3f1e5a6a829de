"""`fgssl certs`: CA, SuperLink certificate and SuperNode keys, checked with cryptography and Flower's own loaders."""

from __future__ import annotations

import argparse
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from cli.deploy import certs
from cli.main import main

from .conftest import run_cli

PRIVATE_MARKERS = ("PRIVATE KEY", "b3BlbnNzaC1rZXktdjE")  # PEM header; base64 of "openssh-key-v1"


@pytest.fixture(scope="module")
def fed(tmp_path_factory) -> certs.Generated:
    out = tmp_path_factory.mktemp("fed") / "certs"
    return certs.generate(out, 3, "superlink.example.org,10.0.0.5,localhost,::1", days=30)


def load_cert(p: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(p.read_bytes())


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def private_files(g: certs.Generated) -> list[Path]:
    return [g.ca_key, g.server_key] + [n.private_key for n in g.nodes]


def test_ca_is_a_ca(fed):
    ca = load_cert(fed.ca_cert)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)  # self-signed signature checks out


def test_server_cert_verifies_against_ca_with_sans(fed):
    ca, srv = load_cert(fed.ca_cert), load_cert(fed.server_cert)
    srv.verify_directly_issued_by(ca)
    ca.public_key().verify(srv.signature, srv.tbs_certificate_bytes, ec.ECDSA(srv.signature_hash_algorithm))
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"superlink.example.org", "localhost"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("10.0.0.5"),
                                                            ipaddress.ip_address("::1")}
    assert srv.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    assert not srv.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(fed.server_key.read_bytes(), None)
    assert key.public_key() == srv.public_key()


def test_default_hosts():
    sans = certs.parse_hosts(None)
    assert x509.DNSName("localhost") in sans
    assert x509.IPAddress(ipaddress.ip_address("127.0.0.1")) in sans
    assert x509.IPAddress(ipaddress.ip_address("::1")) in sans


def test_permissions(fed):
    for p in private_files(fed):
        assert mode(p) == 0o600, p
        assert mode(p.parent) == 0o700, p.parent
    assert mode(fed.out / "nodes") == 0o700
    for p in [fed.ca_cert, fed.server_cert] + [n.public_key for n in fed.nodes]:
        assert mode(p) == 0o644, p


def test_node_keys_are_p256_openssh(fed):
    assert len(fed.nodes) == 3
    seen = set()
    for n in fed.nodes:
        priv = serialization.load_ssh_private_key(n.private_key.read_bytes(), None)
        pub = serialization.load_ssh_public_key(n.public_key.read_bytes())
        assert isinstance(priv, ec.EllipticCurvePrivateKey) and isinstance(priv.curve, ec.SECP256R1)
        assert isinstance(pub, ec.EllipticCurvePublicKey) and pub == priv.public_key()
        assert n.public_line.startswith("ecdsa-sha2-nistp256 ")
        seen.add(n.public_line)
    assert len(seen) == 3


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str) -> None:
    """A full TLS handshake over memory buffers: no sockets, no server."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    done = {"c": False, "s": False}
    for _ in range(20):
        for tag, obj, out, peer_in in (("c", client, c_out, s_in), ("s", server, s_out, c_in)):
            if not done[tag]:
                try:
                    obj.do_handshake()
                    done[tag] = True
                except ssl.SSLWantReadError:
                    pass
            if out.pending:
                peer_in.write(out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_flower_loaders_accept_the_files(fed):
    """Flower 1.42's own loading code accepts the files (no servers are started)."""
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.common.args import try_obtain_root_certificates, try_obtain_server_certificates
    from flwr.supercore.grpc import valid_certificates
    from flwr.supercore.primitives.asymmetric import bytes_to_public_key, verify_signature
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    # SuperLink: --ssl-ca-certfile / --ssl-certfile / --ssl-keyfile
    triple = try_obtain_server_certificates(argparse.Namespace(
        ssl_ca_certfile=str(fed.ca_cert), ssl_certfile=str(fed.server_cert), ssl_keyfile=str(fed.server_key)))
    assert valid_certificates(triple)
    import grpc
    grpc.ssl_server_credentials(((triple[2], triple[1]),), root_certificates=triple[0], require_client_auth=False)

    # SuperNode: --root-certificates, used as in flwr/supercore/protobuf/client.py; uvicorn side as load_cert_chain
    root = try_obtain_root_certificates(argparse.Namespace(root_certificates=str(fed.ca_cert), insecure=False), "x")
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cadata=root.decode("ascii"))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(fed.server_cert, fed.server_key)
    for host in ("superlink.example.org", "10.0.0.5", "localhost", "::1"):
        _handshake(server_ctx, client_ctx, host)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server_ctx, client_ctx, "other.example.org")

    # SuperNode auth: --auth-supernode-private-key, and `flwr supernode register node.pub`
    for n in fed.nodes:
        priv, pub = _try_setup_client_authentication(argparse.Namespace(
            auth_supernode_private_key=str(n.private_key), auth_supernode_public_key=None))
        registered = bytes_to_public_key(try_load_public_key(n.public_key))
        assert registered == pub
        msg = b"fgssl node auth"
        assert verify_signature(registered, msg, priv.sign(msg, ec.ECDSA(hashes.SHA256())))


def test_cli_output_has_public_keys_and_no_private_material(tmp_path):
    out = tmp_path / "c"
    proc = run_cli("certs", "--out", str(out), "--nodes", "2", timeout=120)
    for n in (0, 1):
        pub = (out / "nodes" / f"node_{n}" / "node.pub").read_text().strip()
        assert pub in proc.stdout
    assert str(out / "ca.crt") in proc.stdout
    for marker in PRIVATE_MARKERS:
        assert marker not in proc.stdout and marker not in proc.stderr
    for p in [out / "ca.key", out / "server.key"] + list(out.glob("nodes/*/node.key")):
        body = "".join(p.read_text().splitlines()[1:-1])
        assert body[:40] not in proc.stdout + proc.stderr


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["certs", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_refuses_to_overwrite_ca_unless_force(tmp_path, capsys):
    out = tmp_path / "c"
    assert _cli(capsys, "--out", str(out), "--nodes", "1")[0] == 0
    before = (out / "ca.crt").read_bytes()
    rc, _, err = _cli(capsys, "--out", str(out), "--nodes", "1")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert str(out / "ca.") in err and "--force" in err
    assert (out / "ca.crt").read_bytes() == before
    (out / "ca.key").chmod(0o644)  # --force must not keep a too-wide mode of the file it replaces
    rc, _, _ = _cli(capsys, "--out", str(out), "--nodes", "2", "--force")
    assert rc == 0 and (out / "ca.crt").read_bytes() != before
    assert mode(out / "ca.key") == 0o600
    srv = load_cert(out / "server.crt")
    srv.verify_directly_issued_by(load_cert(out / "ca.crt"))


@pytest.mark.parametrize("args, option", [
    (["--nodes", "0"], "--nodes"),
    (["--nodes", "-3"], "--nodes"),
    (["--nodes", "two"], "--nodes"),
    (["--nodes", "1", "--hosts", "bad host"], "--hosts"),
    (["--nodes", "1", "--hosts", "localhost,,127.0.0.1"], "--hosts"),
    (["--nodes", "1", "--hosts", "300.1.1.1"], "--hosts"),
    (["--nodes", "1", "--hosts=-x.example"], "--hosts"),
    (["--nodes", "1", "--days", "0"], "--days"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, option):
    out = tmp_path / "c"
    rc, stdout, err = _cli(capsys, "--out", str(out), *args)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and option in err
    assert not out.exists()


def test_bad_nodes_via_subprocess(tmp_path):
    proc = run_cli("certs", "--out", str(tmp_path / "c"), "--nodes", "0", check=False, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--nodes" in proc.stderr


def test_host_parsing():
    assert certs.parse_host("Node-1.Hospital.example") == x509.DNSName("node-1.hospital.example")
    assert certs.parse_host("*.hospital.example") == x509.DNSName("*.hospital.example")
    assert certs.parse_host("fe80::1") == x509.IPAddress(ipaddress.ip_address("fe80::1"))
    for bad in ("a..b", "host_name", "[::1]", "a" * 64 + ".example", "*", "http://x"):
        with pytest.raises(certs.CertsError, match="--hosts"):
            certs.parse_host(bad)
