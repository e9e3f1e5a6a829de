"""The simulation as a Flower app for `flwr run .` (see [tool.flwr.app] in pyproject.toml).

Flower passes only flat run-config values, so the app reads `config` (a YAML path; empty = the packaged default),
`overrides` (`key=value` pairs separated by ';') and `run-dir` from it, and resolves the same Config object that
`fgssl simulate` would.

The same app serves a real deployment (`fgssl serve` + `fgssl node`): there the run config carries
`deployment = true` and the whole resolved config (`resolved-config`, JSON), because hospitals cannot read the
coordinator's files; a SuperNode started by `fgssl node` names its own data in its node config, and its ClientApp
trains on that (`client.local_site`) instead of a simulated partition.
"""

from __future__ import annotations

import json
from functools import lru_cache, partial
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from simulations import DEFAULT_CONFIG
from client.app import make_client_app
from client.local_site import LocalSite, NodeConfigError, NodeSettings, is_deployed, local_config
from client.site import SiteProvider
from fgssl.config import Config, config_from_dict, load_config
from fgssl.privacy.data_ledger import data_statement
from fgssl.privacy.provenance import check_public_weights
from fgssl.rundir import RunDir
from server.app import FederatedRun, wait_for_sites
from server.deployment import DEPLOYMENT_KEY, RESOLVED_CONFIG_KEY, RESUME_KEY, run_deployment

from .partition import compute_partition
from .sites import SimulatedSites, build_sites



@lru_cache(maxsize=4)
def _resolve(config: str, overrides: str, run_dir: str) -> tuple[Config, SimulatedSites]:
    pairs = [p.strip() for p in overrides.split(";") if p.strip()]
    cfg = load_config(config or DEFAULT_CONFIG, pairs)
    return cfg, build_sites(cfg, Path(run_dir), save=False)


def _simulated(context: Context) -> tuple[Config, SimulatedSites]:
    rc = context.run_config
    return _resolve(str(rc.get("config", "")), str(rc.get("overrides", "")), str(rc.get("run-dir", "runs/flwr-run")))


def _deployed_config(context: Context) -> Config:
    text = str(context.run_config.get(RESOLVED_CONFIG_KEY, ""))
    if not text:
        raise NodeConfigError(RESOLVED_CONFIG_KEY, "this run carries no resolved config; a node started with "
                                                   "`fgssl node` joins runs started with `fgssl serve`")
    return config_from_dict(json.loads(text))


def _local_site(cfg: Config, node: NodeSettings) -> LocalSite:
    indices = None
    if node.dataset == "synthetic":
        # The node's share of the built-in data: the partition a simulation of this config would give its site.
        sites = cfg.federation.sites
        if node.site >= sites:
            raise NodeConfigError("partition-id", f"synthetic data is shared among federation.sites={sites} sites "
                                                  f"(ids 0..{sites - 1}); this node is site {node.site}")
        indices = compute_partition(local_config(cfg, node))[1][node.site]
    return LocalSite(cfg, node, indices)


def _from_context(context: Context) -> tuple[Config, SiteProvider]:
    if is_deployed(context.node_config):
        cfg = _deployed_config(context)
        site = _local_site(cfg, NodeSettings.from_node_config(context.node_config))
        return site.cfg, site
    return _simulated(context)


client_app = make_client_app(_from_context)
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    if context.run_config.get(DEPLOYMENT_KEY):
        cfg = _deployed_config(context)
        run_deployment(grid, cfg, RunDir(str(context.run_config.get("run-dir", "runs/flwr-run"))), print,
                       resume=bool(context.run_config.get(RESUME_KEY, False)))
        return
    cfg, _ = _simulated(context)
    run_dir = RunDir(str(context.run_config.get("run-dir", "runs/flwr-run")))
    run_dir.write_config(cfg)
    sites = build_sites(cfg, run_dir.path)
    check_public_weights(cfg, sites.data_key)
    nodes = wait_for_sites(grid, cfg.federation.sites, timeout=cfg.federation.round_timeout_s)
    FederatedRun(cfg, run_dir, grid, nodes, sites.class_names(), sites.pooled_test(), print,
                 data_statement=partial(data_statement, cfg, sites.data_ledger, sites.groups())).run(resume=False)
