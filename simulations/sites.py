"""Simulated hospitals: a partition of the data pool, each site with its own splits, shift and state directory.

Synthetic data is generated on demand per site. A real data set (isic2018, isic2017, aptos2019, folder) is read from
its prepared cache (`fgssl.data.cache`): pool sample i is cache row i, and a site reads only its own rows of the
memory-mapped image array. With ``data.site_shift`` > 0 each site's images pass through its simulated camera
(`simulations.shift.apply_site_shift`, deterministic per (seed, site)). Each site's train/val/test splits follow
`fgssl.data.sources.cached_splits`: stratified by class, whole lesions/patients to one split when the cache knows
them (HAM10000 lesion ids), ISIC 2017's official partitions where `fgssl train` would use them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fgssl.config import Config
from fgssl.data import synthetic
from fgssl.data.errors import DataError, DataWarning
from fgssl.data.images import ImageSet
from fgssl.data.sources import Splits, cached_splits, split, synthetic_key, synthetic_pool
from fgssl.privacy.data_ledger import DataLedgerRef, Groups, data_ledger_ref, largest_group

from .partition import compute_partition
from .shift import apply_site_shift


@dataclass
class SimulatedSites:
    """Picklable (small) description of every site; images are generated or read on demand inside the site's process.

    It is sent to every simulated client, so it holds paths and index arrays only, never images.
    """

    cfg: Config
    parts: list[np.ndarray]
    state_root: Path
    # Real data sets: the cache folder the partition indexes, its class names and a fingerprint of its manifest
    # (a cache rebuilt since the partition was made could hold other rows under the same indices).
    cache: Path | None = None
    names: tuple[str, ...] = ()
    fingerprint: str = ""
    # Real data sets: their ledger over every run on the images (synthetic images keep per-run ledgers only).
    data_ledger: DataLedgerRef | None = None

    def splits(self, site: int) -> Splits:
        if self.cache is None:
            data = synthetic_pool(self.cfg.data, self.cfg.seed, self.parts[site], site=site)
            return split(data, self.cfg.data, self.cfg.seed + site)
        return self._cached_splits(site)

    def _open(self, site: int):
        """The cache, `site`'s rows in it (sorted) and its train/val/test as positions among those rows."""
        from fgssl.data.cache import load_cache

        if _fingerprint(self.cache) != self.fingerprint:
            raise DataError(f"the cache {self.cache} changed after the sites were partitioned (rebuilt or removed); "
                            "start the simulation again", "data.cache_dir")
        data = load_cache(self.cache)
        rows = self.site_rows(site)
        # The site's own view of the cache (label arrays only; cached_splits never touches images).
        view = dataclasses.replace(data, images=data.images[:0], **{a: getattr(data, a)[rows] for a in _ROW_ARRAYS})
        parts, notes = cached_splits(self.cfg.data, self.cfg.seed + site, view)
        return data, rows, parts, [n for n, _ in notes]

    def split_rows(self, site: int) -> list[np.ndarray]:
        """Real data sets: the cache rows of `site`'s train, val and test splits."""
        if self.cache is None:
            raise ValueError("split_rows is for real data sets; synthetic sites generate their images")
        _, rows, parts, _ = self._open(site)
        return [rows[p] for p in parts]

    def _cached_splits(self, site: int) -> Splits:
        data, rows, parts, notes = self._open(site)
        images = np.ascontiguousarray(data.images[rows])  # reads only this site's rows of the memory map
        if self.cfg.data.site_shift > 0:
            images = apply_site_shift(images, site, self.cfg.data.site_shift, self.cfg.seed)
        pool = ImageSet(torch.from_numpy(images), torch.from_numpy(np.asarray(data.labels[rows], dtype=np.int64)),
                        tuple(self.names))
        train, val, test = (pool.subset(p) for p in parts)
        return Splits(train, val, test, notes=notes)

    def groups(self) -> Groups | None:
        """The largest lesion/patient group at each site's training images and in the data set (None when the data
        set names no groups, or is synthetic): what the group-privacy statement needs."""
        if self.cache is None:
            return None
        from fgssl.data.cache import load_cache

        data = load_cache(self.cache)
        if not data.manifest.get("has_groups"):
            return None
        per_site = {s: largest_group(data.groups[self.split_rows(s)[0]].tolist()) for s in range(len(self.parts))}
        return Groups(per_site, largest_group(data.groups.tolist()),
                      {s: self.state_root / f"site_{s}" for s in range(len(self.parts))})

    @property
    def data_key(self) -> str:
        """Which images the sites share: a real data set's content key, or the synthetic population's."""
        return self.data_ledger.key if self.data_ledger else synthetic_key(self.cfg.data, self.cfg.seed)

    def site_rows(self, site: int) -> np.ndarray:
        """The pool indices (for a real data set: cache rows) of `site`, sorted: the order its images are read in."""
        return np.sort(np.asarray(self.parts[site], dtype=np.int64))

    def state_dir(self, site: int) -> Path:
        d = self.state_root / f"site_{site}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def pooled_test(self) -> ImageSet:
        """The union of every site's test split, each with its own acquisition shift."""
        return ImageSet.concat([self.splits(s).test for s in range(len(self.parts))])

    def class_names(self) -> list[str]:
        if self.cache is not None:
            return list(self.names)
        return list(synthetic.class_names(self.cfg.data.num_classes))


# The per-image arrays of a cache besides the images (see fgssl/data/cache.py).
_ROW_ARRAYS = ("labels", "ids", "groups", "partitions", "sites")


def _fingerprint(cache: Path) -> str:
    try:
        return hashlib.sha256((cache / "manifest.json").read_bytes()).hexdigest()[:16]
    except OSError:
        return ""


def build_sites(cfg: Config, run_dir: Path, save: bool = True) -> SimulatedSites:
    """Partition the data pool across `federation.sites` (a pure function of the config and, for a real data set, its
    files) and save it with the run."""
    pool, parts, record = compute_partition(cfg)
    if save:
        (run_dir / "partition.json").write_text(json.dumps(record))
    if cfg.data.dataset == "synthetic":
        return SimulatedSites(cfg, parts, run_dir / "sites")
    from fgssl.data.cache import cache_path, read_manifest

    # prepared (built or reused) by the label source just now; absolute, as clients may run in another folder
    cache = cache_path(cfg.data).resolve()
    manifest = read_manifest(cache)
    if manifest is None or int(manifest.get("num_images", -1)) != len(pool.labels):
        raise DataError(f"the cache {cache} changed while the sites were partitioned; start again", "data.cache_dir")
    if save:
        caveats = list(manifest.get("notes", []))
        if manifest.get("skipped"):
            caveats.append(f"{len(manifest['skipped'])} bad image(s) skipped (data.skip_bad_images), listed in "
                           f"{cache / 'skipped.csv'}")
        for note in caveats:
            warnings.warn(note, DataWarning, stacklevel=2)
    return SimulatedSites(cfg, parts, run_dir / "sites", cache=cache, names=tuple(manifest["class_names"]),
                          fingerprint=_fingerprint(cache), data_ledger=data_ledger_ref(cfg, cache, parts))


@dataclass
class PooledSites:
    """Every site's data in one place: the centralized baseline of a federation (`train.pooled_sites`)."""

    splits: Splits  # the union of the sites' train, val and test splits
    labelled: ImageSet  # the union of the sites' labelled training images, drawn per site as the federation does
    labelled_record: dict  # labelled.json: each site's record
    site_tests: list[ImageSet]  # each site's own test split


def pool_sites(cfg: Config, run_dir: Path) -> PooledSites:
    """The sites `fgssl simulate` would build from `cfg` (partition.json saved in `run_dir`), pooled; with
    train.only_site, training and validation come from that site alone."""
    from client.site import site_labelled

    sites = build_sites(cfg, run_dir)
    per_site = [sites.splits(s) for s in range(len(sites.parts))]
    chosen = range(len(per_site)) if cfg.train.only_site is None else [cfg.train.only_site]
    labelled, records = [], []
    for s in chosen:
        part, record = site_labelled(cfg, per_site[s].train, s)
        labelled.append(part)
        records.append({"site": s, **record})
    notes = list(dict.fromkeys(n for sp in per_site for n in sp.notes))
    train, val = (ImageSet.concat([getattr(per_site[s], k) for s in chosen]) for k in ("train", "val"))
    splits = Splits(train, val, ImageSet.concat([sp.test for sp in per_site]), notes=notes)
    return PooledSites(splits, ImageSet.concat(labelled),
                       {"label_fraction": cfg.train.label_fraction, "train_images": len(splits.train),
                        "labelled_images": sum(len(p) for p in labelled), "sites": records},
                       [sp.test for sp in per_site])
