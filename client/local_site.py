"""A hospital's own data and state on a deployed SuperNode (`fgssl node`).

`fgssl node` hands its flags to Flower as the SuperNode's ``--node-config`` (flat ``key=value`` pairs); every
ClientApp process of that node reads them back here. The federation's run config says *how* to train (model, image
size, rounds, privacy); the node says *what* it trains on (its dataset folder, or its share of the built-in synthetic
data), where it keeps its state (privacy ledger, cache, site-local weights) and the largest ε it will ever spend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fgssl.config import Config, config_from_dict
from fgssl.data.cache import cache_path, content_key, load_cache
from fgssl.data.classes import class_names_of
from fgssl.privacy.data_ledger import OtherDataError, check_node_data
from fgssl.data.sources import Splits, load_splits, split, synthetic_pool

from .node_settings import DATASET_KEY, NodeConfigError, NodeSettings, is_deployed

__all__ = ["LocalSite", "NodeConfigError", "NodeSettings", "is_deployed", "local_config"]


def local_config(cfg: Config, node: NodeSettings) -> Config:
    """The federation's config with this node's data location, cache, privacy budget and δ."""
    raw = cfg.to_dict()
    data = raw["data"]
    data.update(dataset=node.dataset, root=str(node.root) if node.root else None,
                cache_dir=str(node.state_dir / "cache"), skip_bad_images=node.skip_bad_images)
    if node.dataset != "synthetic":
        data["site_shift"] = 0.0  # a simulated camera; a hospital's images already come from its own
    if node.dataset == "folder":
        data.update(csv=node.csv, group_column=node.group_column,
                    **{k: v for k, v in (("path_column", node.path_column), ("label_column", node.label_column)) if v})
    else:
        data.update(csv=None, group_column=None, class_names=[])
    privacy = raw["privacy"]
    privacy["site_delta"] = node.delta  # the hospital's, never the coordinator's
    if node.max_epsilon is not None:
        if privacy["mode"] != "sample":
            # Only sample-level DP is noised here and counted in this node's own ledger; client-level DP is the
            # server's noise and the server's accounting, which a hospital cannot hold to its budget.
            raise NodeConfigError("max-epsilon", f"this node spends at most ε={node.max_epsilon:g} of sample-level "
                                  f"DP, which it enforces itself, but the run has privacy.mode={privacy['mode']}, so "
                                  "it does not train in this run")
        ceiling = privacy.get("max_epsilon")
        # The stricter of the hospital's budget and the federation's.
        privacy["max_epsilon"] = node.max_epsilon if ceiling is None else min(float(ceiling), node.max_epsilon)
    return config_from_dict(raw)


class LocalSite:
    """SiteProvider for one deployed node: only its own site exists here, and its ledger in its own state directory
    is the ledger of its data."""

    data_ledger = None

    def __init__(self, federation: Config, node: NodeSettings, synthetic_indices: np.ndarray | None = None) -> None:
        self.federation, self.node = federation, node
        self.cfg = local_config(federation, node)
        if node.dataset == "synthetic" and synthetic_indices is None:
            raise ValueError("a synthetic node needs its share of the pool (synthetic_indices)")
        self.indices = synthetic_indices
        self._splits: Splits | None = None

    def _check_site(self, site: int) -> None:
        if site != self.node.site:
            raise ValueError(f"this node is site {self.node.site}, asked for site {site}")

    def splits(self, site: int) -> Splits:
        self._check_site(site)
        if self._splits is None:
            data = self.cfg.data
            if data.dataset == "synthetic":
                pool = synthetic_pool(data, self.cfg.seed, self.indices, site=site)
                # The same split a simulated site gets, so deployment and simulation can be compared run for run.
                splits = split(pool, data, self.cfg.seed + site)
            else:
                splits = load_splits(data, self.cfg.seed, progress=False)
                try:  # this state directory's ledger belongs to one data set
                    check_node_data(self.node.state_dir, content_key(load_cache(cache_path(data))),
                                    changed=self.node.data_changed)
                except OtherDataError as e:
                    raise NodeConfigError("data-changed", str(e)) from None
            expected = tuple(class_names_of(self.federation.data))
            if tuple(splits.train.class_names) != expected:
                raise NodeConfigError(DATASET_KEY, f"this node's {data.dataset} data has classes "
                                      f"{', '.join(splits.train.class_names)}, but the federation trains on "
                                      f"{self.federation.data.dataset} with classes {', '.join(expected)}")
            self._splits = splits
        return self._splits

    def state_dir(self, site: int) -> Path:
        self._check_site(site)
        self.node.state_dir.mkdir(parents=True, exist_ok=True)
        return self.node.state_dir
