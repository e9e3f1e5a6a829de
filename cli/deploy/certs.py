"""Federation certificates and SuperNode authentication keys (pure `cryptography`, no Flower import).

Layout written under an output directory ``DIR``::

    DIR/                      0700
      ca.crt                  0644  federation CA (self-signed, CA:true, keyCertSign/cRLSign)
      ca.key                  0600  CA private key (keep offline; not needed by the SuperLink)
      server.crt              0644  SuperLink TLS certificate signed by the CA (SANs = hosts, serverAuth)
      server.key              0600  SuperLink TLS private key (PEM, PKCS#8, unencrypted)
      nodes/                  0700
        node_<i>/             0700
          node.key            0600  SuperNode auth key, EC P-256, OpenSSH private-key format, unencrypted
          node.pub            0644  its public key, one OpenSSH line ("ecdsa-sha2-nistp256 AAAA...")

Formats follow what Flower 1.42 loads (see the report / ``cli/certs_cmd.py``): ``flower-superlink
--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile`` take PEM bytes handed to gRPC; ``flower-supernode
--root-certificates`` takes the PEM CA; ``flower-supernode --auth-supernode-private-key`` is read with
``cryptography``'s ``load_ssh_private_key(data, None)`` and must be EC; ``flwr supernode register
<pubkey-file>`` reads the public key with ``load_ssh_public_key`` and requires a NIST EC curve.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cli.errors import UserError

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
MAX_NODES = 1000
MAX_DAYS = 36500

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
PUBLIC_FILE_MODE = 0o644

_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class CertsError(UserError):
    """Invalid input or a refused overwrite; the message is one line meant for the user."""


# --------------------------------------------------------------------------------------------- validation
def parse_host(value: str) -> x509.GeneralName:
    """One ``--hosts`` entry as a SAN: an IP address (v4/v6) or a DNS name (ASCII, optional leading ``*.``)."""
    v = value.strip()
    if not v:
        raise CertsError("--hosts: empty entry")
    try:
        return x509.IPAddress(ipaddress.ip_address(v))
    except ValueError:
        pass
    name = v[:-1] if v.endswith(".") else v
    labels = name.split(".")
    if labels and labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    if (len(name) > 253 or not all(_LABEL.match(label) for label in labels)
            or labels[-1].isdigit()):  # e.g. 300.1.1.1: not an IP and not a name either
        raise CertsError(f"--hosts: {value!r} is neither an IP address nor a valid DNS name")
    return x509.DNSName(name.lower())


def parse_hosts(value: str | Sequence[str] | None) -> list[x509.GeneralName]:
    """Comma-separated (or already split) hosts → de-duplicated SAN entries, order kept."""
    if value is None:
        items: Sequence[str] = DEFAULT_HOSTS
    elif isinstance(value, str):
        items = value.split(",")
    else:
        items = value
    if not items:
        raise CertsError("--hosts: no host given")
    out: list[x509.GeneralName] = []
    for item in items:
        san = parse_host(item)
        if san not in out:
            out.append(san)
    return out


def parse_positive_int(value: str | int, option: str, maximum: int) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise CertsError(f"{option}: expected a whole number, got {value!r}") from None
    if n < 1 or n > maximum:
        raise CertsError(f"{option}: must be between 1 and {maximum}, got {n}")
    return n


# --------------------------------------------------------------------------------------------- file writing
def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the first instant (O_EXCL, no window where it is wider)."""
    if path.is_symlink() or path.exists():
        path.unlink()  # callers have already checked overwrite permission
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.fchmod(fd, mode)  # umask may have narrowed public files; set exactly
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    _write_file(path, data, PRIVATE_FILE_MODE)


def write_public(path: Path, data: bytes) -> None:
    _write_file(path, data, PUBLIC_FILE_MODE)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it 0700."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR_MODE)
    return path


# --------------------------------------------------------------------------------------------- crypto
def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FG-SSL federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(days: int, now: _dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("FG-SSL federation CA")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(now + _dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                     sans: Sequence[x509.GeneralName], days: int, now: _dt.datetime
                     ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cn = str(sans[0].value)
    cert = (x509.CertificateBuilder()
            .subject_name(_name(cn[:64])).issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(min(now + _dt.timedelta(days=days), ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def make_node_key() -> tuple[bytes, bytes]:
    """(OpenSSH private key bytes, OpenSSH public key line) for one SuperNode, EC P-256."""
    key = ec.generate_private_key(ec.SECP256R1())
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return priv, pub + b"\n"


# --------------------------------------------------------------------------------------------- whole layout
@dataclass
class NodeKeys:
    index: int
    dir: Path
    private_key: Path
    public_key: Path
    public_line: str  # the OpenSSH public key line (safe to print)


@dataclass
class Generated:
    out: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    hosts: list[str]
    not_valid_after: _dt.datetime
    nodes: list[NodeKeys] = field(default_factory=list)


def layout(out: Path, nodes: int) -> dict[str, Path]:
    paths = {"ca_cert": out / "ca.crt", "ca_key": out / "ca.key",
             "server_cert": out / "server.crt", "server_key": out / "server.key"}
    for i in range(nodes):
        paths[f"node_{i}_key"] = out / "nodes" / f"node_{i}" / "node.key"
        paths[f"node_{i}_pub"] = out / "nodes" / f"node_{i}" / "node.pub"
    return paths


def generate(out: str | Path, nodes: int, hosts: str | Sequence[str] | None = None, days: int = 365,
             force: bool = False) -> Generated:
    """Validate, check for existing files, then write the CA, server certificate and node keys."""
    out = Path(out).expanduser()
    nodes = parse_positive_int(nodes, "--nodes", MAX_NODES)
    days = parse_positive_int(days, "--days", MAX_DAYS)
    sans = parse_hosts(hosts)
    if out.exists() and not out.is_dir():
        raise CertsError(f"--out: {out} exists and is not a directory")
    paths = layout(out, nodes)
    if not force:
        # The CA first, so that the message names it when a federation already lives here.
        for p in paths.values():
            if p.exists() or p.is_symlink():
                what = "CA" if p.name.startswith("ca.") else "file"
                raise CertsError(f"refusing to overwrite existing {what} {p} (use --force to replace it)")

    now = _dt.datetime.now(_dt.timezone.utc)
    ca_key, ca_cert = make_ca(days, now)
    srv_key, srv_cert = make_server_cert(ca_key, ca_cert, sans, days, now)

    private_dir(out)
    write_private(paths["ca_key"], _pem_pkcs8(ca_key))
    write_public(paths["ca_cert"], ca_cert.public_bytes(serialization.Encoding.PEM))
    write_private(paths["server_key"], _pem_pkcs8(srv_key))
    write_public(paths["server_cert"], srv_cert.public_bytes(serialization.Encoding.PEM))
    del ca_key, srv_key

    result = Generated(out=out, ca_cert=paths["ca_cert"], ca_key=paths["ca_key"],
                       server_cert=paths["server_cert"], server_key=paths["server_key"],
                       hosts=[str(s.value) for s in sans], not_valid_after=srv_cert.not_valid_after_utc)
    private_dir(out / "nodes")
    for i in range(nodes):
        node_dir = private_dir(out / "nodes" / f"node_{i}")
        priv, pub = make_node_key()
        write_private(paths[f"node_{i}_key"], priv)
        write_public(paths[f"node_{i}_pub"], pub)
        del priv
        result.nodes.append(NodeKeys(i, node_dir, paths[f"node_{i}_key"], paths[f"node_{i}_pub"],
                                     pub.decode().strip()))
    return result
