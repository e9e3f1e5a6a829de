"""Flower 1.42 deployment plumbing for `fgssl serve` and `fgssl node`: commands, environment, connection, keys.

Facts this relies on (read from flwr 1.42's source): the SuperLink serves its Fleet, Control and Runtime APIs on one
HTTPS port (``--host/--port``); ``--enable-supernode-auth`` needs TLS and registered public keys
(``flwr supernode register <pub> <connection>`` through the Control API); the ``flwr`` CLI finds a SuperLink through
a named connection in ``$FLWR_HOME/config.toml`` (``[superlink.<name>] address, root-certificates``); a SuperNode
serves its own Runtime API on ``--port`` (default 9094, so nodes on one host need distinct ports), starts a SuperExec
that launches one ClientApp process per message unless ``--isolation process`` leaves that to another process
(``cli.deploy.warm_clientapps`` here), and takes ``--node-config`` as ``key=value`` pairs in TOML syntax.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from cryptography import x509
from cli.errors import UserError

CONNECTION = "fgssl"
# flwr's own console scripts are looked up next to this interpreter (a venv need not be on PATH).
BIN_DIR = Path(sys.executable).parent


class DeployError(UserError):
    """A deployment step failed; the message is one line for the user and names the file, key or process."""


def flower_tool(name: str) -> str:
    path = BIN_DIR / name
    if not path.exists():
        raise DeployError(f"{name} not found next to {sys.executable}; install this project with its Flower "
                          "dependency (pip install -e .)")
    return str(path)


def flower_env(flwr_home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Offline Flower: a private FLWR_HOME, no runtime dependency installs, no telemetry, helpers on PATH."""
    env = dict(os.environ if base is None else base)
    # INFO: serve and node follow Flower's INFO lines (node ids, received messages); a quieter level inherited
    # from the caller (simulate sets ERROR) would leave them blind.
    env.update(FLWR_HOME=str(flwr_home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
               FLWR_TELEMETRY_ENABLED="0", PYTHONUNBUFFERED="1", FLWR_LOG_LEVEL="INFO")
    # SuperLink and SuperNode start flower-superexec, flwr-serverapp and flwr-clientapp by name.
    env["PATH"] = os.pathsep.join([str(BIN_DIR), env.get("PATH", "")])
    return env


def toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return toml_string(str(value))


def check_private_file(path: Path, what: str) -> None:
    """A private key must exist and be readable by its owner only (as ssh insists)."""
    if not path.is_file():
        raise DeployError(f"{what} {path} not found")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise DeployError(f"{what} {path} is readable by other users (mode {mode:04o}); run: chmod 600 {path}")


# ------------------------------------------------------------------------------------------------ SuperLink side
@dataclass(frozen=True)
class ServerCerts:
    ca_cert: Path
    cert: Path
    key: Path

    @classmethod
    def from_dir(cls, certs: Path) -> "ServerCerts":
        """The files `fgssl certs --out DIR` wrote that a SuperLink needs (never the CA's private key)."""
        if not certs.is_dir():
            raise DeployError(f"--certs: {certs} is not a directory (create one with `fgssl certs --out {certs}`)")
        out = cls(certs / "ca.crt", certs / "server.crt", certs / "server.key")
        for p in (out.ca_cert, out.cert):
            if not p.is_file():
                raise DeployError(f"--certs: {p} not found (written by `fgssl certs`)")
        check_private_file(out.key, "--certs: the SuperLink's TLS key")
        return out

    def hosts(self) -> list[str]:
        """The certificate's subjectAltNames: the names clients may use to reach the SuperLink."""
        try:
            cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (ValueError, x509.ExtensionNotFound) as e:
            raise DeployError(f"--certs: {self.cert} is not a PEM certificate with subjectAltNames ({e})") from None
        return [str(v) for v in sans.get_values_for_type(x509.IPAddress)] + \
            list(sans.get_values_for_type(x509.DNSName))


def local_host_for(hosts: Sequence[str], bind_host: str) -> str:
    """How this machine reaches its own SuperLink under a name its certificate covers (TLS checks the name)."""
    for candidate in ("127.0.0.1", "localhost", "::1"):
        if candidate in hosts and (bind_host in ("0.0.0.0", "::", candidate)
                                   or (candidate == "localhost" and bind_host == "127.0.0.1")):
            return candidate
    if bind_host not in ("0.0.0.0", "::") and bind_host in hosts:
        return bind_host
    dns = [h for h in hosts if not _is_ip(h)]
    if dns:
        return dns[0]
    raise DeployError(f"the SuperLink certificate covers {', '.join(hosts)}, none of which reaches --address "
                      f"{bind_host} from this machine; make certificates with --hosts including 127.0.0.1")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def parse_address(text: str, option: str) -> tuple[str, int]:
    """'HOST:PORT' or '[V6]:PORT' -> (host, port)."""
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text.strip())
    if not m:
        raise DeployError(f"{option}: expected HOST:PORT (e.g. 0.0.0.0:8000 or [::1]:8000), got {text!r}")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if not 1 <= int(port) <= 65535:
        raise DeployError(f"{option}: port must be between 1 and 65535, got {port}")
    return host, int(port)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def superlink_command(certs: ServerCerts, host: str, port: int, database: Path | None = None) -> list[str]:
    """`database`: the SuperLink's state (registered nodes, runs, messages) in SQLite instead of memory, so that a
    coordinator started again (`fgssl serve --resume`) knows the hospitals' SuperNodes, which then carry on."""
    return [flower_tool("flower-superlink"), "--enable-supernode-auth",
            "--ssl-ca-certfile", str(certs.ca_cert), "--ssl-certfile", str(certs.cert),
            "--ssl-keyfile", str(certs.key), "--host", host, "--port", str(port),
            *(["--database", str(database)] if database else [])]


def write_connection(flwr_home: Path, address: str, ca_cert: Path, name: str = CONNECTION) -> Path:
    """The named SuperLink connection the `flwr` CLI uses (run, supernode register)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(f"[superlink]\ndefault = {toml_string(name)}\n\n"
                    f"[superlink.{name}]\naddress = {toml_string(address)}\n"
                    f"root-certificates = {toml_string(str(ca_cert.resolve()))}\n", encoding="utf-8")
    return path


def find_public_keys(certs: Path) -> list[Path]:
    """Every hospital's public key that `fgssl certs` wrote (nodes/node_<i>/node.pub), in node order."""
    def index(p: Path) -> tuple[int, str]:
        m = re.search(r"(\d+)$", p.parent.name)
        return (int(m.group(1)) if m else 1 << 30, str(p))
    return sorted((certs / "nodes").glob("*/node.pub"), key=index)


def register_keys(keys: Sequence[Path], env: dict[str, str], workers: int = 4) -> dict[Path, str]:
    """`flwr supernode register` for each key through the Control API; returns key file -> Flower node id."""
    flwr = flower_tool("flwr")

    def one(key: Path) -> tuple[Path, str]:
        if not key.is_file():
            raise DeployError(f"--register: public key file {key} not found")
        proc = subprocess.run([flwr, "supernode", "register", str(key), CONNECTION], env=env, capture_output=True,
                              text=True, timeout=120)
        out = proc.stdout + proc.stderr
        m = re.search(r"SuperNode (\d+) registered", out)
        if proc.returncode != 0 and "already in use" in out:  # a resumed coordinator's SuperLink keeps its keys
            return key, "registered before"
        if proc.returncode != 0 or not m:
            reason = " ".join(line.strip() for line in out.strip().splitlines()[-3:])
            raise DeployError(f"registering the public key {key} failed: {reason}")
        return key, m.group(1)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return dict(pool.map(one, keys))


def write_run_config(path: Path, values: Mapping[str, Any]) -> Path:
    """A TOML file for `flwr run --run-config FILE.toml` (quoting long JSON values safely)."""
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()), encoding="utf-8")
    return path


def flwr_run_command(app_dir: Path, run_config: Path) -> list[str]:
    return [flower_tool("flwr"), "run", str(app_dir), CONNECTION, "--run-config", str(run_config), "--stream"]


# ------------------------------------------------------------------------------------------------ SuperNode side
def write_runtime_secret(path: Path) -> Path:
    """A fresh random secret, readable by this user only, shared by the SuperNode and its ClientApp launcher."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    return path


def launcher_command(nodes: Sequence[tuple[int, int, Path]], runtime_secret: Path) -> list[str]:
    """`nodes`: (local Runtime API port, SuperNode pid, its Flower home) for every SuperNode whose ClientApps the
    launcher runs. Several nodes' tasks run at once, so they split the cores rather than each taking all."""
    cmd = [sys.executable, "-m", "cli.deploy.warm_clientapps", "--secret-file", str(runtime_secret)]
    if len(nodes) > 1:
        cmd += ["--threads", str(max(1, (os.cpu_count() or 1) // len(nodes)))]
    for port, pid, home in nodes:
        cmd += ["--node", f"127.0.0.1:{port}", str(pid), str(home)]
    return cmd


def node_config_arg(values: Mapping[str, Any]) -> str:
    """Flower's --node-config text: space-separated key=value, strings in TOML literal quotes."""
    parts = []
    for k, v in values.items():
        if isinstance(v, str):
            # Flower splits on whitespace outside quotes and parses each value as TOML.
            if "'" in v or "\n" in v:
                raise DeployError(f"{k}: {v!r} contains a quote or line break, which Flower's --node-config "
                                  "cannot carry; use a path without them")
            parts.append(f"{k}='{v}'")
        else:
            parts.append(f"{k}={toml_value(v)}")
    return " ".join(parts)


def supernode_command(superlink: str, ca_cert: Path, key: Path, port: int, node_config: str,
                      max_wait_time: float | None, runtime_secret: Path) -> list[str]:
    """The SuperNode leaves ClientApp processes to `cli.deploy.warm_clientapps`, which signs its task requests with
    `runtime_secret`."""
    cmd = [flower_tool("flower-supernode"), "--superlink", superlink, "--root-certificates", str(ca_cert),
           "--auth-supernode-private-key", str(key), "--host", "127.0.0.1", "--port", str(port),
           "--node-config", node_config, "--isolation", "process",
           "--superexec-auth-secret-file", str(runtime_secret)]
    if max_wait_time:
        cmd += ["--max-wait-time", f"{max_wait_time:g}"]
    return cmd
