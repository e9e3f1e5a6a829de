"""In-memory image sets (uint8, N x 3 x H x W) and stratified splits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

# ImageNet statistics, so that optional local ImageNet weights see the inputs they were trained on.
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def to_float(images: Tensor, device: torch.device | str = "cpu") -> Tensor:
    """uint8 (B,3,H,W) -> normalised float32 on `device`."""
    x = images.to(device, non_blocking=True).float().div_(255.0)
    return (x - MEAN.to(x.device)) / STD.to(x.device)


@dataclass
class ImageSet:
    images: Tensor  # uint8 (N, 3, H, W)
    labels: Tensor  # int64 (N,)
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @staticmethod
    def concat(parts: "list[ImageSet]") -> "ImageSet":
        if not parts:
            raise ValueError("nothing to concatenate")
        return ImageSet(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]),
                        parts[0].class_names)

    def subset(self, indices: np.ndarray | Tensor) -> "ImageSet":
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ImageSet(self.images[idx], self.labels[idx], self.class_names)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def balanced_order(self, generator: torch.Generator | None = None, power: float = 1.0) -> Tensor:
        """len(self) indices drawn with replacement, each image with weight (1 / n_k)^power: power 1 makes every
        present class equally likely, 0.5 draws class k in proportion to sqrt(n_k), 0 is plain resampling.

        Skewed hospital data (ISIC: two thirds naevi) otherwise teaches the model to answer the majority class; a
        site with three images of a class replays each of them many times an epoch at power 1.
        """
        counts = torch.bincount(self.labels, minlength=self.num_classes).float()
        weights = 1.0 / counts[self.labels] if power == 1.0 else counts[self.labels].pow(-power)
        return torch.multinomial(weights, len(self), replacement=True, generator=generator)

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False, order: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (uint8 images, labels); the caller moves and normalises them on its device.

        `order` (indices, e.g. from balanced_order) replaces the default sequential or shuffled order.
        """
        n = len(self)
        if order is None:
            order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            yield self.images[idx], self.labels[idx]

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        if drop_last and n >= batch_size:
            return n // batch_size
        return -(-n // batch_size)


def stratified_split(labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Split indices into len(fractions)+1 parts per class: parts 1.. get `fractions`, part 0 the rest.

    Every class with enough samples appears in every part; rounding favours part 0 (training).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        cuts = []
        for f in fractions:
            k = int(np.floor(f * len(idx) + 0.5)) if len(idx) > len(fractions) else 0
            cuts.append(idx[start:start + k])
            start += k
        parts[0].append(idx[start:])
        for j, cut in enumerate(cuts):
            parts[j + 1].append(cut)
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts]


def labelled_indices(labels: Tensor, fraction: float, seed: int) -> np.ndarray:
    """Positions of a stratified, seeded `fraction` of the examples (sorted): round(fraction·n_k) of every class k,
    at least one of every class present. The scarce-label setting: fine-tuning sees these, SSL sees all."""
    y = labels.numpy()
    if fraction >= 1.0:
        return np.arange(len(y))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4C41424C]))  # own stream: "LABL"
    keep = []
    for k in np.unique(y):
        members = np.flatnonzero(y == k)
        keep.append(rng.permutation(members)[:max(1, int(round(fraction * len(members))))])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def labelled_part(train: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, dict]:
    """The labelled part of a training split and its record (written as labelled.json by the caller)."""
    keep = labelled_indices(train.labels, fraction, seed)
    part = train if len(keep) == len(train) else train.subset(keep)
    return part, {"label_fraction": fraction, "train_images": len(train), "labelled_images": len(part),
                  "class_counts": dict(zip(train.class_names, part.class_counts())),
                  "positions_in_train_split": keep.tolist()}
