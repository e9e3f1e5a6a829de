"""Simulated hospitals: a partition of the data pool, each site with its own splits, shift and state directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fgssl.config import Config
from fgssl.data import synthetic
from fgssl.data.images import ImageSet
from fgssl.data.sources import Splits, split, synthetic_pool

from .partition import compute_partition


@dataclass
class SimulatedSites:
    """Picklable (small) description of every site; images are generated on demand inside the site's process."""

    cfg: Config
    parts: list[np.ndarray]
    state_root: Path

    def splits(self, site: int) -> Splits:
        data = synthetic_pool(self.cfg.data, self.cfg.seed, self.parts[site], site=site)
        return split(data, self.cfg.data, self.cfg.seed + site)

    def state_dir(self, site: int) -> Path:
        d = self.state_root / f"site_{site}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def pooled_test(self) -> ImageSet:
        """The union of every site's test split, each with its own acquisition shift."""
        tests = [self.splits(s).test for s in range(len(self.parts))]
        return ImageSet(_cat([t.images for t in tests]), _cat([t.labels for t in tests]), tests[0].class_names)

    def class_names(self) -> list[str]:
        return list(synthetic.class_names(self.cfg.data.num_classes))


def _cat(tensors):
    import torch
    return torch.cat(tensors)


def build_sites(cfg: Config, run_dir: Path, save: bool = True) -> SimulatedSites:
    """Partition the data pool across `federation.sites` (a pure function of the config) and save it with the run."""
    _, parts, record = compute_partition(cfg)
    if save:
        (run_dir / "partition.json").write_text(json.dumps(record))
    return SimulatedSites(cfg, parts, run_dir / "sites")
