"""Run a whole federation on Flower's simulation engine (Ray), in this process."""

from __future__ import annotations

import os
import socket
import tempfile
from functools import partial
from pathlib import Path
from typing import Any, Callable

from fgssl.config import Config, ConfigError
from fgssl.privacy.data_ledger import data_statement
from fgssl.privacy.provenance import check_public_weights
from fgssl.rundir import RunDir

from .sites import build_sites


def flower_environment(flwr_home: Path) -> None:
    """Offline Flower: no dependency installs, no telemetry, quiet logs. Must run before flwr is imported."""
    os.environ.setdefault("FLWR_HOME", str(flwr_home))
    os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ.setdefault("FLWR_LOG_LEVEL", "ERROR")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def backend_config(cfg: Config) -> dict[str, Any]:
    sim = cfg.simulation
    init: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False}
    if sim.ray_address:
        init["address"] = sim.ray_address
    else:
        # "local" always starts a fresh cluster, even if a killed run left /tmp/ray/ray_current_cluster behind.
        init["address"] = "local"
        init["num_cpus"] = sim.total_cpus or os.cpu_count() or 1
        init["include_dashboard"] = False
        if sim.client_gpus > 0:
            import torch

            if not torch.cuda.is_available():  # Ray would wait forever for a GPU to schedule the sites on
                raise ConfigError("simulation.client_gpus", f"asks for {sim.client_gpus:g} GPU per site, but this "
                                  "machine has no GPU that torch can see (set it to 0)")
    return {"client_resources": {"num_cpus": sim.client_cpus, "num_gpus": float(sim.client_gpus)}, "init_args": init}


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail at once, naming the key, when nothing answers at a `host:port` Ray address (Ray itself retries for a
    minute and then reports a GCS timeout). `auto` and `ray://` client addresses are left to Ray."""
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError("simulation.ray_address", f"{address!r} is not HOST:PORT (the head's GCS port, "
                                                    "6379 by default), 'auto' or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError("simulation.ray_address", f"no Ray cluster answers at {address} ({e.strerror or e}); "
                                                    "start one with `ray start --head` or leave the key unset "
                                                    "to start a local cluster") from None


def simulate(cfg: Config, run_dir: RunDir, *, resume: bool = False,
             say: Callable[[str], None] = print,
             on_round: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Partition the data, start Ray, run the ServerApp and one ClientApp per site; returns the summary.

    `on_round`, when given, gets each round's structured record instead of `say` getting its line
    (see server.app.RoundHook).
    """
    flower_environment(Path(tempfile.gettempdir()) / "fgssl-flwr-home")
    from flwr.simulation import run_simulation

    from client.app import make_client_app
    from server.app import make_server_app

    if cfg.simulation.ray_address:
        check_ray_address(cfg.simulation.ray_address)
        say(f"attaching to the Ray cluster at {cfg.simulation.ray_address} (its nodes must have fgssl installed "
            f"and see {run_dir.path} and the data at the same paths)")
    sites = build_sites(cfg, run_dir.path)
    check_public_weights(cfg, sites.data_key)  # before anything trains
    say(f"partition: {cfg.partition.method} over {cfg.federation.sites} sites, sizes "
        f"{[len(p) for p in sites.parts]} (partition.json)")
    result: dict[str, Any] = {}
    server_app = make_server_app(cfg, run_dir, sites.class_names(), resume=resume,
                                 pooled_test=sites.pooled_test(), say=say, on_round=on_round, result=result,
                                 data_statement=partial(data_statement, cfg, sites.data_ledger, sites.groups()))
    run_simulation(server_app=server_app, client_app=make_client_app(lambda _context: (cfg, sites)),
                   num_supernodes=cfg.federation.sites, backend_config=backend_config(cfg))
    if not result:
        raise RuntimeError("the simulation ended without a result; see the log above")
    return result
