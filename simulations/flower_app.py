"""The simulation as a Flower app for `flwr run .` (see [tool.flwr.app] in pyproject.toml).

Flower passes only flat run-config values, so the app reads `config` (a YAML path; empty = the packaged default),
`overrides` (`key=value` pairs separated by ';') and `run-dir` from it, and resolves the same Config object that
`fgssl simulate` would.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from client.app import make_client_app
from fgssl.config import Config, load_config
from fgssl.rundir import RunDir
from server.app import FederatedRun, wait_for_sites

from .sites import SimulatedSites, build_sites

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


@lru_cache(maxsize=4)
def _resolve(config: str, overrides: str, run_dir: str) -> tuple[Config, SimulatedSites]:
    pairs = [p.strip() for p in overrides.split(";") if p.strip()]
    cfg = load_config(config or DEFAULT_CONFIG, pairs)
    return cfg, build_sites(cfg, Path(run_dir), save=False)


def _from_context(context: Context) -> tuple[Config, SimulatedSites]:
    rc = context.run_config
    return _resolve(str(rc.get("config", "")), str(rc.get("overrides", "")), str(rc.get("run-dir", "runs/flwr-run")))


client_app = make_client_app(_from_context)
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg, _ = _from_context(context)
    run_dir = RunDir(str(context.run_config.get("run-dir", "runs/flwr-run")))
    run_dir.write_config(cfg)
    sites = build_sites(cfg, run_dir.path)
    nodes = wait_for_sites(grid, cfg.federation.sites, timeout=cfg.federation.round_timeout_s)
    FederatedRun(cfg, run_dir, grid, nodes, sites.class_names(), sites.pooled_test(), print).run(resume=False)
