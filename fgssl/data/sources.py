"""Turn the config's `data` section into train/val/test image sets.

Real datasets (isic2018, isic2017, aptos2019, medmnist, folder) are read from their cache (built or reused by
`fgssl.data.cache.prepare`; training never decodes the original files), then split:

- ISIC 2017, ISIC 2018 and MedMNIST with ``data.split: auto`` use the official Training / Validation / Test (ISIC
  2017: Test_v2; MedMNIST: train / val / test) parts when all three are present (``official`` insists on them); otherwise the pooled images are split
  like every other dataset:
- stratified by class into train/val/test by ``val_fraction`` / ``test_fraction``; when images carry a group id
  (HAM10000 ``lesion_id``, a folder's ``group_column``) whole groups are assigned, so no lesion or patient straddles
  two splits. Without one for ISIC 2018 the split is per image, and a note says so.

Notes (and skipped images) come back on `Splits.notes` / `Splits.skipped`; each caveat among them (per-image splits,
pooled ISIC 2017, skipped images) is also issued as a `DataWarning`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, NamedTuple

import numpy as np
import torch

from ..config import DataConfig
from . import synthetic
from .errors import DataError, DataWarning
from .images import ImageSet, stratified_split
from .medmnist import MEDMNIST_SPLITS
from .official import ISIC2017_PARTS, ISIC2018_PARTS, isic2018_part

if TYPE_CHECKING:
    from .cache import ProgressArg

SPLIT_NAMES = ("train", "val", "test")


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


class OfficialParts(NamedTuple):
    """The train / val / test parts a dataset ships, as the cache's partition names, and where each part lives."""
    label: str
    parts: tuple[str, str, str]
    where: Callable[[str], str]


OFFICIAL_PARTS: dict[str, OfficialParts] = {
    "isic2017": OfficialParts("ISIC 2017", ISIC2017_PARTS, lambda part: f"ISIC-2017_{part}_Data/"),
    "isic2018": OfficialParts("ISIC 2018", ISIC2018_PARTS, lambda part: f"{isic2018_part(part)[0]}/"),
    "medmnist": OfficialParts("MedMNIST", MEDMNIST_SPLITS, lambda part: f"key '{part}_images'"),
}


def cached_splits(cfg: DataConfig, seed: int, data) -> tuple[list[np.ndarray], list[tuple[str, bool]]]:
    """Indices of train/val/test in the loaded cache `data`, and notes on how they were chosen (text, is a caveat)."""
    notes: list[tuple[str, bool]] = []
    names = list(data.manifest.get("partition_names", []))
    fractions = (cfg.val_fraction, cfg.test_fraction)
    official = OFFICIAL_PARTS.get(cfg.dataset)
    if official is not None and cfg.split != "stratified":
        if names == list(official.parts):
            parts = [np.flatnonzero(data.partitions == k) for k in range(3)]
            notes.append((f"{official.label}: official splits (train = {official.parts[0]}, val = "
                          f"{official.parts[1]}, test = {official.parts[2]}: "
                          f"{len(parts[0])}/{len(parts[1])}/{len(parts[2])} images)", False))
            return parts, notes
        absent = [p for p in official.parts if p not in names]
        if cfg.split == "official":
            raise DataError(f"data.split=official needs {official.where(absent[0])} and its ground truth in "
                            f"{cfg.root}; found only {', '.join(names)}", "data.split")
        # A training part alone is the usual download, split as any other data; a partial set of parts is worth a note
        if names != list(official.parts[:1]):
            notes.append((f"{official.label}: official {', '.join(absent)} not found, so the {len(data)} images of "
                          f"{', '.join(names)} are split stratified (val_fraction={cfg.val_fraction}, "
                          f"test_fraction={cfg.test_fraction})", True))
    if data.manifest.get("has_groups"):
        parts = stratified_group_split(data.labels, data.groups, fractions, seed)
    else:
        parts = stratified_split(data.labels, fractions, seed)
    return parts, notes


def prepared_cache(cfg: DataConfig, *, workers: int = 1, progress: ProgressArg = True):
    """Build (or reuse, when still valid) the cache of the real dataset `cfg` names and open it.

    Returns (`PrepareResult`, `CachedData`); the images stay on disk (memory map) until rows are indexed.
    """
    from .cache import load_cache, prepare

    prepared = prepare(cfg, workers=workers, progress=progress)
    return prepared, load_cache(prepared.path)


def _open_cache(cfg: DataConfig, progress: ProgressArg, workers: int):
    """The cache of a real dataset (built when missing or stale), what it says about its images, and its skips."""
    prepared, data = prepared_cache(cfg, workers=workers, progress=progress)
    notes = list(prepared.notes)
    if prepared.skipped:
        notes.append(f"{len(prepared.skipped)} bad image(s) skipped (data.skip_bad_images), listed in "
                     f"{prepared.path / 'skipped.csv'}")
    return data, notes, prepared.skipped


def load_splits(cfg: DataConfig, seed: int, *, progress: bool = True, workers: int = 1) -> Splits:
    """Train/val/test image sets for the configured dataset; real datasets are built into / read from the cache."""
    if cfg.dataset == "synthetic":
        return split(synthetic_pool(cfg, seed), cfg, seed)
    data, cache_notes, skipped = _open_cache(cfg, progress, workers)
    parts, split_notes = cached_splits(cfg, seed, data)
    notes = [(n, True) for n in cache_notes] + split_notes
    for note, caveat in notes:
        if caveat:
            warnings.warn(note, DataWarning, stacklevel=2)
    train, val, test = (_take(data, p) for p in parts)
    return Splits(train, val, test, notes=[n for n, _ in notes], skipped=skipped)


def load_split(cfg: DataConfig, seed: int, which: str, *, progress: ProgressArg = True,
               workers: int = 1) -> tuple[ImageSet, list[str]]:
    """One split of the configured dataset as training makes it ("train", "val", "test"), or "all" its images, with
    notes on them (returned, not warned: the caller shows them)."""
    if which not in (*SPLIT_NAMES, "all"):
        raise ValueError(f"unknown split {which!r}; choose from: {', '.join(SPLIT_NAMES)}, all")
    if cfg.dataset == "synthetic":
        pool = synthetic_pool(cfg, seed)
        return (pool if which == "all" else getattr(split(pool, cfg, seed), which)), []
    data, notes, _ = _open_cache(cfg, progress, workers)
    if which == "all":
        return _take(data, np.arange(len(data))), notes
    parts, split_notes = cached_splits(cfg, seed, data)
    return _take(data, parts[SPLIT_NAMES.index(which)]), notes + [n for n, _ in split_notes]
