"""Split a labelled pool across simulated sites ("virtual hospitals").

Methods (``partition.method``):

- ``iid``: uniform random split into near-equal sites.
- ``dirichlet``: label skew; each class is shared among sites in proportions drawn from Dir(alpha).
- ``pathological``: every site holds exactly ``classes_per_site`` classes (McMahan-style shards).
- ``quantity``: quantity skew; site sizes follow a power law, labels are otherwise IID.
- ``natural``: one site per acquisition group given per sample (e.g. HAM10000's ``dataset`` column).

Every function is seeded and deterministic, assigns every sample to exactly one site and returns one sorted
``np.ndarray`` of pool indices per site. Impossible requests raise :class:`fgssl.config.ConfigError` naming the
config key to change (``partition.alpha``, ``partition.classes_per_site``, ``federation.sites`` ...).

Where the labels come from is pluggable: :data:`LABEL_SOURCES` maps ``data.dataset`` to a function returning the
pool's :class:`PoolLabels` (labels, class names, optional per-sample groups), so a real data set only has to register
its label reader to get every partitioner, ``fgssl partition`` and the simulation's ``partition.json``.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fgssl.config import Config, ConfigError, PartitionConfig

METHODS = ("iid", "dirichlet", "pathological", "quantity", "natural")

# HAM10000's acquisition sites (the `dataset` column of HAM10000_metadata_with_sites.csv).
HAM10000_SITES = ("vidir_molemax", "vidir_modern", "rosendahl", "vienna_dias")
HAM10000_SITES_FILE = "HAM10000_metadata_with_sites.csv"


# ---------------------------------------------------------------------------------------------------------------------
# Partitioners
# ---------------------------------------------------------------------------------------------------------------------

def _check_sites(n: int, sites: int, min_per_site: int = 1) -> None:
    if sites < 1:
        raise ConfigError("federation.sites", f"must be >= 1, got {sites}")
    if sites * min_per_site > n:
        need = f"{min_per_site} samples each" if min_per_site > 1 else "one sample each"
        raise ConfigError("federation.sites", f"{sites} sites need {need} but the pool has only {n} samples")


def iid(labels: np.ndarray, sites: int, seed: int) -> list[np.ndarray]:
    """Uniformly random, near-equal sites (sizes differ by at most one)."""
    _check_sites(len(labels), sites)
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, sites)]


def dirichlet(labels: np.ndarray, sites: int, alpha: float, seed: int, min_per_site: int = 2,
              max_tries: int = 100) -> list[np.ndarray]:
    """Each class is shared among sites in proportions drawn from Dir(alpha); small alpha = strong skew.

    Draws again (up to `max_tries`) until every site has at least `min_per_site` samples, so no site is empty.
    """
    if not alpha > 0:
        raise ConfigError("partition.alpha", f"must be > 0, got {alpha}")
    labels = np.asarray(labels)
    _check_sites(len(labels), sites, min_per_site)
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
    raise ConfigError("partition.alpha",
                      f"could not give each of {sites} sites {min_per_site} samples with alpha={alpha} from "
                      f"{len(labels)} samples in {max_tries} draws; raise partition.alpha, lower "
                      f"partition.min_per_site or use fewer sites")


def _holders_per_class(counts: np.ndarray, sites: int, k: int) -> np.ndarray:
    """How many sites hold each class: as equal as possible, at most min(sites, count) each, summing to sites*k.

    Extra holders go to the most frequent classes first; a class with too few samples passes its surplus on.
    """
    num = len(counts)
    caps = np.minimum(counts, sites)
    by_freq = np.lexsort((np.arange(num), -counts))  # most frequent first, ties by class id
    n = np.full(num, sites * k // num)
    n[by_freq[: sites * k % num]] += 1
    surplus = int(np.maximum(n - caps, 0).sum())
    n = np.minimum(n, caps)
    for c in by_freq:
        if surplus == 0:
            break
        add = min(surplus, int(caps[c] - n[c]))
        n[c] += add
        surplus -= add
    return n


def pathological(labels: np.ndarray, sites: int, classes_per_site: int, seed: int) -> list[np.ndarray]:
    """Every site holds exactly `classes_per_site` classes; each class is split evenly among the sites holding it.

    Class-to-site assignment: the classes (in a seeded random order), each repeated once per holding site, fill a
    `classes_per_site` x `sites` grid row by row; column j is site perm[j]. A class never needs more than `sites`
    consecutive cells, so no site gets a class twice, and every class is held by at least one site.
    """
    labels = np.asarray(labels)
    k = classes_per_site
    present, counts = np.unique(labels, return_counts=True)
    num = len(present)
    if k < 1:
        raise ConfigError("partition.classes_per_site", f"must be >= 1, got {k}")
    if k > num:
        raise ConfigError("partition.classes_per_site",
                          f"{k} classes per site but the pool has only {num} classes")
    if sites < 1:
        raise ConfigError("federation.sites", f"must be >= 1, got {sites}")
    if sites * k < num:
        raise ConfigError("partition.classes_per_site",
                          f"{sites} sites x {k} classes per site cannot cover all {num} classes (every sample must "
                          f"be assigned); use classes_per_site >= {-(-num // sites)} or more sites")
    capacity = int(np.minimum(counts, sites).sum())
    if sites * k > capacity:
        rare = ", ".join(f"class {c}: {n}" for c, n in zip(present, counts) if n < sites)
        raise ConfigError("federation.sites",
                          f"{sites} sites x {k} classes per site need {sites * k} (site, class) pairs, each with at "
                          f"least one sample, but the classes' samples allow only {capacity} ({rare}); use fewer "
                          f"sites or a smaller partition.classes_per_site")
    rng = np.random.default_rng(seed)
    holders = _holders_per_class(counts, sites, k)
    class_order = rng.permutation(num)
    site_of_column = rng.permutation(sites)
    slots = np.repeat(class_order, holders[class_order])  # length sites * k
    slot_site = site_of_column[np.arange(len(slots)) % sites]
    parts: list[list[np.ndarray]] = [[] for _ in range(sites)]
    for ci in class_order:
        idx = rng.permutation(np.flatnonzero(labels == present[ci]))
        for s, chunk in zip(slot_site[slots == ci], np.array_split(idx, holders[ci])):
            parts[s].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def quantity_shares(sites: int, exponent: float) -> np.ndarray:
    """Site shares of the pool under quantity skew: proportional to (rank + 1) ** -exponent; 0 = equal sizes."""
    w = np.arange(1, sites + 1, dtype=np.float64) ** -float(exponent)
    return w / w.sum()


def quantity_sizes(n: int, sites: int, exponent: float, min_per_site: int = 1) -> np.ndarray:
    """Site sizes (site 0 largest): `min_per_site` each, the rest by power-law shares (largest remainder)."""
    _check_sites(n, sites, max(min_per_site, 1))
    rest = n - sites * min_per_site
    exact = quantity_shares(sites, exponent) * rest
    sizes = np.floor(exact).astype(np.int64)
    short = rest - int(sizes.sum())
    sizes[np.argsort(-(exact - sizes), kind="stable")[:short]] += 1
    return sizes + min_per_site


def quantity(labels: np.ndarray, sites: int, exponent: float, seed: int, min_per_site: int = 1) -> list[np.ndarray]:
    """Quantity skew: site s gets a share proportional to (s + 1) ** -exponent (site 0 largest, at least
    `min_per_site` samples each); which samples go where is uniformly random, so labels are otherwise IID."""
    if not (np.isfinite(exponent) and exponent >= 0):
        raise ConfigError("partition.quantity_exponent", f"must be a finite number >= 0, got {exponent}")
    if min_per_site < 1:
        raise ConfigError("partition.min_per_site", f"must be >= 1, got {min_per_site}")
    sizes = quantity_sizes(len(labels), sites, exponent, min_per_site)
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.split(order, np.cumsum(sizes)[:-1])]


def natural_site_names(groups: Sequence[Any] | np.ndarray) -> list[str]:
    """The groups in site order: largest first, ties by name (site i of :func:`natural` is name i)."""
    names, counts = np.unique(np.asarray(groups), return_counts=True)
    order = sorted(range(len(names)), key=lambda i: (-counts[i], str(names[i])))
    return [str(names[i]) for i in order]


def natural(groups: Sequence[Any] | np.ndarray, sites: int, seed: int | None = None) -> list[np.ndarray]:
    """One site per distinct group label (e.g. acquisition site), largest first; `seed` is unused (no randomness).

    `sites` must equal the number of groups.
    """
    groups = np.asarray(groups)
    names, inverse = np.unique(groups, return_inverse=True)
    ordered = natural_site_names(groups)
    if sites != len(names):
        raise ConfigError("federation.sites",
                          f"the natural split has {len(names)} sites ({', '.join(ordered)}) but "
                          f"federation.sites={sites}; set federation.sites={len(names)}")
    pos = {str(n): i for i, n in enumerate(names)}
    return [np.flatnonzero(inverse == pos[name]) for name in ordered]


def partition(labels: np.ndarray, sites: int, cfg: PartitionConfig, seed: int,
              groups: Sequence[Any] | np.ndarray | None = None) -> list[np.ndarray]:
    """Dispatch on `cfg.method`. `groups` (one label per sample) is needed by, and only by, 'natural'."""
    labels = np.asarray(labels)
    if cfg.method == "iid":
        return iid(labels, sites, seed)
    if cfg.method == "dirichlet":
        return dirichlet(labels, sites, cfg.alpha, seed, min_per_site=cfg.min_per_site)
    if cfg.method == "pathological":
        return pathological(labels, sites, cfg.classes_per_site, seed)
    if cfg.method == "quantity":
        return quantity(labels, sites, cfg.quantity_exponent, seed, min_per_site=cfg.min_per_site)
    if cfg.method == "natural":
        if groups is None:
            raise ConfigError("partition.method",
                              "'natural' needs a per-sample acquisition site (e.g. HAM10000's `dataset` column, or "
                              "a folder data set's data.site_column), which this data set does not provide; choose "
                              "iid, dirichlet, pathological or quantity")
        if len(groups) != len(labels):
            raise ValueError(f"{len(groups)} group labels for {len(labels)} samples")
        return natural(groups, sites, seed)
    raise ConfigError("partition.method", f"unknown method '{cfg.method}'; choose from: {', '.join(METHODS)}")


def class_counts(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> list[list[int]]:
    return [np.bincount(labels[p], minlength=num_classes).tolist() for p in parts]


def label_divergence(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> float:
    """Mean total-variation distance between each site's label distribution and the pool's (0 = IID, 1 = disjoint)."""
    labels = np.asarray(labels)
    glob = np.bincount(labels, minlength=num_classes) / len(labels)
    tvs = [0.5 * np.abs(np.bincount(labels[p], minlength=num_classes) / len(p) - glob).sum() for p in parts if len(p)]
    return float(np.mean(tvs))


# ---------------------------------------------------------------------------------------------------------------------
# HAM10000 acquisition sites (natural split of ISIC 2018 Task 3)
# ---------------------------------------------------------------------------------------------------------------------

def read_ham10000_sites(path: str | Path) -> dict[str, str]:
    """image_id -> acquisition site name, from HAM10000_metadata_with_sites.csv
    (lesion_id,image_id,dx,dx_type,age,sex,localization,dataset). Errors name the file and row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (expected {HAM10000_SITES_FILE})")
    out: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in ("image_id", "dataset") if c not in header]
        if missing:
            raise ValueError(f"{path}: header {','.join(header) or '(empty)'} lacks column(s) {', '.join(missing)}")
        i_id, i_site = header.index("image_id"), header.index("dataset")
        for row_no, row in enumerate(reader, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}, row {row_no}: {len(row)} fields, expected {len(header)}")
            image_id, site = row[i_id].strip(), row[i_site].strip()
            if not image_id or not site:
                raise ValueError(f"{path}, row {row_no}: empty image_id or dataset")
            if image_id in out:
                raise ValueError(f"{path}, row {row_no}: duplicate image_id {image_id}")
            out[image_id] = site
    if not out:
        raise ValueError(f"{path}: no rows")
    return out


def groups_for(image_ids: Sequence[str], site_of: Mapping[str, str], source: str = "site table") -> np.ndarray:
    """The site of every image, in order; error naming the first image the table does not know."""
    try:
        return np.asarray([site_of[i] for i in image_ids], dtype=object).astype(str)
    except KeyError as e:
        raise ValueError(f"image {e.args[0]} has no acquisition site in {source}") from None


# ---------------------------------------------------------------------------------------------------------------------
# Where the pool's labels come from, and the saved record
# ---------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PoolLabels:
    """What a partitioner needs to know about a data pool: one label (and optionally one group) per sample."""

    labels: np.ndarray
    class_names: list[str]
    # Per-sample acquisition group (for method 'natural'); None when the data set has none.
    groups: np.ndarray | None = None


def _synthetic_labels(cfg: Config) -> PoolLabels:
    from fgssl.data import synthetic
    labels = synthetic.labels_for(np.arange(cfg.data.num_samples), cfg.seed, cfg.data.num_classes)
    return PoolLabels(labels, list(synthetic.class_names(cfg.data.num_classes)))


def _cache_workers(cfg: Config) -> int:
    """Decoding threads for a first cache build: the CPUs the simulation may use."""
    return max(1, cfg.simulation.total_cpus or os.cpu_count() or 1)


def _cached_labels(cfg: Config) -> PoolLabels:
    """Labels (and, for 'natural', acquisition sites) of a real data set, read from its prepared cache.

    The cache is built when missing or stale and reused when valid (`fgssl.data.cache.prepare`); only its small label
    arrays are read here, never the images. Sample i of the pool is row i of the cache.
    """
    from fgssl.data.sources import prepared_cache

    _, data = prepared_cache(cfg.data, workers=_cache_workers(cfg), progress=sys.stderr.isatty())
    groups = cached_sites(cfg, data.ids, data.sites) if cfg.partition.method == "natural" else None
    return PoolLabels(np.asarray(data.labels, dtype=np.int64), list(data.class_names), groups)


def cached_sites(cfg: Config, ids: np.ndarray, sites: np.ndarray) -> np.ndarray | None:
    """The acquisition site of every cached image, or None when the data set does not say.

    ISIC 2018: the `dataset` column of HAM10000_metadata.csv (kept in the cache) when every image has one, else the
    HAM10000_metadata_with_sites.csv table in data.root, matched by image id.
    """
    sites = np.asarray(sites).astype(str)
    if len(sites) and (sites != "").all():
        return sites
    if cfg.data.dataset != "isic2018":
        return None
    from fgssl.data.errors import DataError

    table = Path(cfg.data.root or ".") / HAM10000_SITES_FILE
    if not table.is_file():
        known = int((sites != "").sum())
        partly = (f"; HAM10000_metadata.csv names a `dataset` for only {known} of {len(sites)} images"
                  if known else "")
        raise ConfigError("partition.method",
                          f"'natural' needs each image's acquisition site: a `dataset` column in "
                          f"HAM10000_metadata.csv or {HAM10000_SITES_FILE} in data.root ({cfg.data.root}){partly}")
    try:
        return groups_for([str(i) for i in ids], read_ham10000_sites(table), str(table))
    except (OSError, ValueError) as e:  # the table's own errors name the file and row
        raise DataError(str(e), "data.root") from None


# data.dataset -> label reader. A real data set registers its own (e.g. ISIC 2018 with HAM10000 groups).
LABEL_SOURCES: dict[str, Callable[[Config], PoolLabels]] = {
    "synthetic": _synthetic_labels,
    "isic2018": _cached_labels,
    "isic2017": _cached_labels,
    "aptos2019": _cached_labels,
    "medmnist": _cached_labels,
    "folder": _cached_labels,
}


def pool_labels(cfg: Config) -> PoolLabels:
    try:
        source = LABEL_SOURCES[cfg.data.dataset]
    except KeyError:
        raise ConfigError("data.dataset", f"no label source for '{cfg.data.dataset}'; known: "
                                          f"{', '.join(LABEL_SOURCES)}") from None
    return source(cfg)


def partition_params(cfg: PartitionConfig) -> dict[str, Any]:
    """The config values that shaped a partition made with `cfg.method` (saved as `params`)."""
    keys = {"iid": (), "dirichlet": ("alpha", "min_per_site"), "pathological": ("classes_per_site",),
            "quantity": ("quantity_exponent", "min_per_site"), "natural": ()}[cfg.method]
    return {k: getattr(cfg, k) for k in keys}


def partition_record(cfg: PartitionConfig, seed: int, pool: PoolLabels, parts: list[np.ndarray]) -> dict[str, Any]:
    """The JSON-able partition.json: method, params, seed, class_names, sites[{site, num_samples, class_counts,
    indices}] (plus each site's `name` for a natural split)."""
    counts = class_counts(pool.labels, parts, len(pool.class_names))
    names = natural_site_names(pool.groups) if cfg.method == "natural" and pool.groups is not None else None
    sites = []
    for s, (p, c) in enumerate(zip(parts, counts)):
        entry: dict[str, Any] = {"site": s}
        if names is not None:
            entry["name"] = names[s]
        entry.update(num_samples=int(len(p)), class_counts=c, indices=np.asarray(p).tolist())
        sites.append(entry)
    return {"method": cfg.method, "params": partition_params(cfg), "seed": int(seed),
            "class_names": list(pool.class_names), "sites": sites}


def compute_partition(cfg: Config) -> tuple[PoolLabels, list[np.ndarray], dict[str, Any]]:
    """The partition a simulation of `cfg` uses: (pool labels, indices per site, partition.json record)."""
    pool = pool_labels(cfg)
    parts = partition(pool.labels, cfg.federation.sites, cfg.partition, cfg.seed, groups=pool.groups)
    return pool, parts, partition_record(cfg.partition, cfg.seed, pool, parts)
