"""Turn the config's `data` section into train/val/test image sets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import DataConfig
from . import synthetic
from .images import ImageSet, stratified_split


@dataclass
class Splits:
    train: ImageSet
    val: ImageSet
    test: ImageSet

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def synthetic_pool(cfg: DataConfig, seed: int, indices: np.ndarray | None = None,
                   site: int | None = None) -> ImageSet:
    """Generate synthetic images for `indices` (default: 0..num_samples-1), optionally with a site's shift."""
    idx = np.arange(cfg.num_samples) if indices is None else np.asarray(indices)
    images, labels = synthetic.generate(idx, seed=seed, image_size=cfg.image_size, num_classes=cfg.num_classes,
                                        site=site, site_shift=cfg.site_shift)
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels).long(),
                    synthetic.class_names(cfg.num_classes))


def split(data: ImageSet, cfg: DataConfig, seed: int) -> Splits:
    train, val, test = stratified_split(data.labels.numpy(), (cfg.val_fraction, cfg.test_fraction), seed)
    return Splits(data.subset(train), data.subset(val), data.subset(test))


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    if cfg.dataset == "synthetic":
        return split(synthetic_pool(cfg, seed), cfg, seed)
    raise ValueError(f"unknown dataset '{cfg.dataset}'")
