"""The ServerApp's work in a real deployment (SuperLink + hospital SuperNodes, started by `fgssl serve`).

Unlike simulation, the server holds no images: class names come from the config, and pooled metrics are computed
from the sites' confusion matrices. Everything else (rounds, strategy, checkpoints, run directory) is the same
`FederatedRun` as in simulation.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from flwr.serverapp import Grid

from fgssl.config import Config
from fgssl.data.classes import class_names_of
from fgssl.rundir import RunDir

from .app import FederatedRun, wait_for_sites

# Run-config keys `fgssl serve` sets (defaults in pyproject.toml's [tool.flwr.app.config]).
DEPLOYMENT_KEY = "deployment"
RESOLVED_CONFIG_KEY = "resolved-config"
RESUME_KEY = "resume"


def config_to_run_value(cfg: Config) -> str:
    """The resolved config as one run-config string: nodes cannot read the coordinator's YAML file."""
    return json.dumps(cfg.to_dict(), separators=(",", ":"))


def run_deployment(grid: Grid, cfg: Config, run_dir: RunDir, say: Callable[[str], None] = print, *,
                   resume: bool = False) -> dict[str, Any]:
    class_names = list(class_names_of(cfg.data))
    fed = cfg.federation
    say(f"waiting up to {fed.round_timeout_s:.0f} s for {fed.sites} SuperNodes (federation.sites) to connect")
    nodes = wait_for_sites(grid, fed.sites, timeout=fed.round_timeout_s, say=say)
    say(f"{len(nodes)} sites connected: {', '.join(f'site {s} = node {n}' for s, n in nodes.items())}")
    summary = FederatedRun(cfg, run_dir, grid, nodes, class_names, None, say).run(resume=resume)
    summary["command"] = "serve"
    run_dir.write_summary(summary)
    return summary
