"""Turn the config's `data` section into train/val/test image sets.

Real datasets (isic2018, isic2017, aptos2019, folder) are read from their cache (built or reused by
`fgssl.data.cache.prepare`; training never decodes the original files), then split:

- ISIC 2017 with ``data.split: auto`` uses the official Training / Validation / Test_v2 partitions when all three are
  present (``official`` insists on them); otherwise the pooled images are split like every other dataset:
- stratified by class into train/val/test by ``val_fraction`` / ``test_fraction``; when images carry a group id
  (HAM10000 ``lesion_id``, a folder's ``group_column``) whole groups are assigned, so no lesion or patient straddles
  two splits. Without one for ISIC 2018 the split is per image, and a note says so.

Notes (and skipped images) come back on `Splits.notes` / `Splits.skipped`; each caveat among them (per-image splits,
pooled ISIC 2017, skipped images) is also issued as a `DataWarning`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import DataConfig
from . import synthetic
from .errors import DataError, DataWarning
from .images import ImageSet, stratified_split


@dataclass
class Splits:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    # Things a user should know about these splits (e.g. "per image, lesion ids unknown").
    notes: list[str] = field(default_factory=list)
    # Images left out because data.skip_bad_images was set: {"id", "file", "reason"} each.
    skipped: list[dict[str, str]] = field(default_factory=list)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def synthetic_pool(cfg: DataConfig, seed: int, indices: np.ndarray | None = None,
                   site: int | None = None) -> ImageSet:
    """Generate synthetic images for `indices` (default: 0..num_samples-1), optionally with a site's shift."""
    if cfg.dataset != "synthetic":
        raise DataError(f"data.dataset={cfg.dataset} is read from files, not generated", "data.dataset")
    idx = np.arange(cfg.num_samples) if indices is None else np.asarray(indices)
    images, labels = synthetic.generate(idx, seed=seed, image_size=cfg.image_size, num_classes=cfg.num_classes,
                                        site=site, site_shift=cfg.site_shift)
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels).long(),
                    synthetic.class_names(cfg.num_classes))


def synthetic_key(cfg: DataConfig, seed: int) -> str:
    """What identifies the built-in images a run draws on: image i depends on (seed, i, size, classes), so a seed and
    a class count name one population of lesions, whatever the size or pool size (another seed: other lesions)."""
    return f"synthetic-seed{seed}-classes{cfg.num_classes}"


def split(data: ImageSet, cfg: DataConfig, seed: int) -> Splits:
    train, val, test = stratified_split(data.labels.numpy(), (cfg.val_fraction, cfg.test_fraction), seed)
    return Splits(data.subset(train), data.subset(val), data.subset(test))


def stratified_group_split(labels: np.ndarray, groups: np.ndarray, fractions: tuple[float, ...],
                           seed: int) -> list[np.ndarray]:
    """Like `stratified_split`, but whole groups go to one part: each group is stratified by its most common label.

    Parts' sizes follow `fractions` in groups, so in images they are approximate when groups differ in size.
    """
    labels = np.asarray(labels)
    uniq, inverse = np.unique(np.asarray(groups), return_inverse=True)
    counts = np.zeros((len(uniq), int(labels.max()) + 1 if len(labels) else 1), dtype=np.int64)
    np.add.at(counts, (inverse, labels), 1)
    group_parts = stratified_split(counts.argmax(axis=1), fractions, seed)
    part_of_group = np.empty(len(uniq), dtype=np.int64)
    for j, gp in enumerate(group_parts):
        part_of_group[gp] = j
    part = part_of_group[inverse]
    return [np.flatnonzero(part == j) for j in range(len(fractions) + 1)]


def _take(data, idx: np.ndarray) -> ImageSet:
    idx = np.sort(np.asarray(idx, dtype=np.int64))
    images = np.ascontiguousarray(data.images[idx])  # reads only these rows of the memory-mapped cache
    return ImageSet(torch.from_numpy(images), torch.from_numpy(np.asarray(data.labels[idx])).long(),
                    data.class_names)


def cached_splits(cfg: DataConfig, seed: int, data) -> tuple[list[np.ndarray], list[tuple[str, bool]]]:
    """Indices of train/val/test in the loaded cache `data`, and notes on how they were chosen (text, is a caveat)."""
    notes: list[tuple[str, bool]] = []
    names = list(data.manifest.get("partition_names", []))
    fractions = (cfg.val_fraction, cfg.test_fraction)
    if cfg.dataset == "isic2017" and cfg.split != "stratified":
        official = ["Training", "Validation", "Test_v2"]
        if names == official:
            parts = [np.flatnonzero(data.partitions == k) for k in range(3)]
            notes.append(("ISIC 2017: official splits (train = Training, val = Validation, test = Test_v2: "
                          f"{len(parts[0])}/{len(parts[1])}/{len(parts[2])} images)", False))
            return parts, notes
        absent = [p for p in official if p not in names]
        if cfg.split == "official":
            raise DataError(f"data.split=official needs ISIC-2017_{absent[0]}_Data/ and its ground truth in "
                            f"{cfg.root}; found only {', '.join(names)}", "data.split")
        notes.append((f"ISIC 2017: official {', '.join(absent)} not found, so the {len(data)} images of "
                      f"{', '.join(names)} are split stratified (val_fraction={cfg.val_fraction}, "
                      f"test_fraction={cfg.test_fraction})", True))
    if data.manifest.get("has_groups"):
        parts = stratified_group_split(data.labels, data.groups, fractions, seed)
    else:
        parts = stratified_split(data.labels, fractions, seed)
    return parts, notes


def prepared_cache(cfg: DataConfig, *, workers: int = 1, progress: bool = True):
    """Build (or reuse, when still valid) the cache of the real dataset `cfg` names and open it.

    Returns (`PrepareResult`, `CachedData`); the images stay on disk (memory map) until rows are indexed.
    """
    from .cache import load_cache, prepare

    prepared = prepare(cfg, workers=workers, progress=progress)
    return prepared, load_cache(prepared.path)


def load_splits(cfg: DataConfig, seed: int, *, progress: bool = True, workers: int = 1) -> Splits:
    """Train/val/test image sets for the configured dataset; real datasets are built into / read from the cache."""
    if cfg.dataset == "synthetic":
        return split(synthetic_pool(cfg, seed), cfg, seed)
    from .cache import load_cache, prepare

    prepared = prepare(cfg, workers=workers, progress=progress)
    data = load_cache(prepared.path)
    parts, split_notes = cached_splits(cfg, seed, data)
    notes = [(n, True) for n in prepared.notes] + split_notes
    skipped = prepared.skipped
    if skipped:
        notes.append((f"{len(skipped)} bad image(s) skipped (data.skip_bad_images), listed in "
                      f"{prepared.path / 'skipped.csv'}", True))
    for note, caveat in notes:
        if caveat:
            warnings.warn(note, DataWarning, stacklevel=2)
    train, val, test = (_take(data, p) for p in parts)
    return Splits(train, val, test, notes=[n for n, _ in notes], skipped=skipped)
