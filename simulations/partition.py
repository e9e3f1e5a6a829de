"""Split a labelled pool across simulated sites: IID or Dirichlet label skew. Seeded; every index used once."""

from __future__ import annotations

import numpy as np

from fgssl.config import PartitionConfig


def iid(labels: np.ndarray, sites: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, sites)]


def dirichlet(labels: np.ndarray, sites: int, alpha: float, seed: int, min_per_site: int = 2,
              max_tries: int = 100) -> list[np.ndarray]:
    """Each class is shared among sites in proportions drawn from Dir(alpha); small alpha = strong skew.

    Draws again (up to `max_tries`) until every site has at least `min_per_site` samples, so no site is empty.
    """
    if alpha <= 0:
        raise ValueError(f"partition.alpha must be > 0, got {alpha}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(sites)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(sites, alpha))
            cuts = np.floor(np.cumsum(shares)[:-1] * len(idx) + 0.5).astype(int)
            for s, chunk in enumerate(np.split(idx, cuts)):
                parts[s].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_per_site:
            return out
    raise ValueError(f"could not give each of {sites} sites {min_per_site} samples with alpha={alpha} "
                     f"from {len(labels)} samples; raise partition.alpha or use fewer sites")


def partition(labels: np.ndarray, sites: int, cfg: PartitionConfig, seed: int) -> list[np.ndarray]:
    if sites > len(labels):
        raise ValueError(f"{sites} sites but only {len(labels)} samples")
    if cfg.method == "iid":
        return iid(labels, sites, seed)
    return dirichlet(labels, sites, cfg.alpha, seed)


def class_counts(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> list[list[int]]:
    return [np.bincount(labels[p], minlength=num_classes).tolist() for p in parts]
