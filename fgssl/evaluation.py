"""A trained model judged on a labelled dataset: the data it is evaluated on, its class probabilities (optionally with
test-time flips), and every number `fgssl evaluate` reports.

The images come through the data path training uses (the cache, at the model's own image size and resize mode from
model.json), so what the model sees is what it saw in training. When the dataset is of the kind the model was trained
on, it is split the way training split it (the model's seed and data settings), so ``--split test`` on the training
data is the model's own test split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .calibration import BINS, reliability
from .config import ConfigError, DataConfig, load_config
from .curves import SPECIFICITIES, one_vs_rest, sensitivity_at_specificity
from .data.classes import FIXED_CLASSES, class_names_of
from .data.errors import DataError
from .data.images import ImageSet
from .data.official import APTOS2019_CLASSES
from .data.sources import load_split
from .metrics import classification_metrics, per_class_precision
from .model import FGSSLNet
from .train import predict

# Grades, not unordered classes: quadratic weighted kappa is reported for these class lists (APTOS 2019 and
# RetinaMNIST, which fgssl.data.medmnist names alike).
GRADED = (APTOS2019_CLASSES,)
DEFAULT_POSITIVE = "MEL"
# The image, its horizontal flip, its vertical flip and both: dims of (N, C, H, W) to flip.
FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))
THRESHOLD_NOTE = ("The thresholds for the fixed specificities are chosen on the evaluated images themselves, so the "
                  "sensitivities are optimistic for new images; fix a threshold on separate data before clinical use.")
ProgressCallback = Callable[[int, int], None]


@dataclass
class EvaluationData:
    """What the model is evaluated on: the resolved data settings, the split, the seed that split it, and notes."""
    cfg: DataConfig
    split: str
    seed: int
    notes: list[str] = field(default_factory=list)


def evaluation_data(card: dict[str, Any], dataset: str, root: str | None, split: str,
                    overrides: list[str] | None = None) -> EvaluationData:
    """The data settings to evaluate `card`'s model on `dataset` at `root`: the model's image size and resize mode,
    training's data settings when the dataset is of the kind it was trained on, then `overrides` (data.* only)."""
    trained = dict((card.get("config") or {}).get("data") or {})
    prep = card.get("preprocessing") or {}
    same_kind = trained.get("dataset") == dataset
    # The trained run's location of its images and cache belongs to the machine it ran on.
    base = {k: v for k, v in trained.items() if k not in ("root", "cache_dir")} if same_kind else {}
    base.update(dataset=dataset, root=root, image_size=prep.get("image_size", 64), resize=prep.get("resize", "crop"))
    for pair in overrides or []:
        if not pair.split("=", 1)[0].strip().startswith("data."):
            raise ConfigError(pair.split("=", 1)[0], "fgssl evaluate takes data.* settings only")
    cfg = load_config(None, overrides, base={"data": base}).data
    for key in ("image_size", "resize"):
        if getattr(cfg, key) != base[key]:
            raise ConfigError(f"data.{key}", f"the model takes {base[key]} (model.json's preprocessing); evaluating "
                                             "it on other images would not measure the model as trained")
    config = card.get("config") or {}
    seed = int(config.get("seed", 0))
    same_data = same_kind and (dataset == "synthetic" or bool(
        root and trained.get("root") and Path(root).resolve() == Path(trained["root"]).resolve()))
    notes = []
    if same_data:
        alone = (card.get("training") or {}).get("command") == "train" and \
            not (config.get("train") or {}).get("pooled_sites")
        if not alone:
            notes.append("the model was trained by a federation (or on its sites' union) whose sites split this very "
                         "dataset their own way: no split of it here is sure to hold only images the model never saw")
        elif split != "test":
            notes.append(f"the model was trained and selected on splits of this very dataset: only --split test "
                         f"holds images it never saw, and '{split}' includes some it did")
    return EvaluationData(cfg, split, seed, notes)


def check_classes(data_names: tuple[str, ...] | list[str], model_names: list[str] | tuple[str, ...]) -> np.ndarray:
    """Dataset class index -> model class index; refuses class sets that differ, listing both."""
    if sorted(data_names) != sorted(model_names) or len(set(data_names)) != len(data_names):
        raise DataError(f"the dataset's classes ({', '.join(data_names)}) differ from the model's "
                        f"({', '.join(model_names)}): a model is evaluated on data with the same classes", "data.dataset")
    return np.array([list(model_names).index(n) for n in data_names], dtype=np.int64)


def check_classes_early(cfg: DataConfig, model_names: list[str]) -> None:
    """Refuse a dataset whose classes are fixed by its kind before any image is read (they may take long to cache)."""
    if cfg.dataset in FIXED_CLASSES or cfg.dataset == "synthetic":
        check_classes(class_names_of(cfg), model_names)


def load_evaluation_images(data: EvaluationData, model_names: list[str],
                           progress: ProgressCallback | bool = False) -> ImageSet:
    """The split's images with labels in the model's class order."""
    check_classes_early(data.cfg, model_names)
    images, notes = load_split(data.cfg, data.seed, data.split, progress=progress)
    data.notes += notes
    to_model = check_classes(images.class_names, model_names)
    if tuple(images.class_names) != tuple(model_names):
        data.notes.append(f"the dataset lists the classes as {', '.join(images.class_names)}; its labels were "
                          "mapped to the model's order by name")
    labels = torch.from_numpy(to_model[images.labels.numpy()])
    return ImageSet(images.images, labels, tuple(model_names))


def class_probabilities(model: FGSSLNet, images: ImageSet, *, tta: bool = False, batch_size: int = 128,
                        progress: ProgressCallback | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Softmax of the model's prediction for every image; with `tta` also the mean softmax over the image and its
    horizontal, vertical and double flips (None without)."""
    plain, flipped = [], []
    n = len(images)
    for start in range(0, n, batch_size):
        chunk = images.subset(np.arange(start, min(n, start + batch_size)))
        views = []
        for dims in FLIPS if tta else FLIPS[:1]:
            view = chunk if not dims else ImageSet(torch.flip(chunk.images, dims), chunk.labels, chunk.class_names)
            views.append(torch.softmax(torch.from_numpy(predict(model, view, batch_size)[1]), dim=1).numpy())
        plain.append(views[0])
        flipped.append(np.mean(views, axis=0))
        if progress is not None:
            progress(min(n, start + batch_size), n)
    return np.concatenate(plain), np.concatenate(flipped) if tta else None


def positive_class(names: list[str] | tuple[str, ...], chosen: str | None = None) -> int:
    """The class whose sensitivity at fixed specificities is reported: `chosen`, else MEL when present, else the
    first."""
    if chosen is None:
        return list(names).index(DEFAULT_POSITIVE) if DEFAULT_POSITIVE in names else 0
    if chosen not in names:
        raise ConfigError("--positive-class", f"{chosen!r} is not one of the model's classes ({', '.join(names)})")
    return list(names).index(chosen)


def evaluation_metrics(labels: np.ndarray, probabilities: np.ndarray, names: list[str] | tuple[str, ...],
                       positive: int) -> dict[str, Any]:
    """Every number of one evaluation, JSON-ready: the classification metrics, per-class precision, calibration,
    one-vs-rest curves per class and the positive class's sensitivity at fixed specificities."""
    names = tuple(names)
    out = classification_metrics(labels, probabilities, names)
    if names not in GRADED:
        out.pop("quadratic_weighted_kappa")
    predicted = probabilities.argmax(axis=1)
    out["per_class_precision"] = dict(zip(names, per_class_precision(labels, predicted, len(names))))
    out["support"] = dict(zip(names, np.bincount(labels, minlength=len(names)).tolist()))
    calibration = reliability(probabilities, labels, BINS)
    out["expected_calibration_error"] = calibration["ece"]
    out["reliability"] = calibration["bins"]
    curves = {}
    for k, name in enumerate(names):
        c = one_vs_rest(probabilities[:, k], labels == k)
        curves[name] = None if c is None else {
            "roc_auc": c.roc_auc, "average_precision": c.average_precision,
            "fpr": _thin(c.fpr), "tpr": _thin(c.tpr), "recall": _thin(c.recall), "precision": _thin(c.precision)}
    out["curves"] = curves
    out["sensitivity_at_specificity"] = sensitivity_at_specificity(probabilities[:, positive], labels == positive,
                                                                   SPECIFICITIES)
    return out


def _thin(values: np.ndarray, most: int = 500) -> list[float]:
    """At most `most` points of a curve, its ends kept (plots need no more; a JSON of 100,000 points per class does
    no one any good)."""
    if values.size > most:
        values = values[np.unique(np.linspace(0, values.size - 1, most).round().astype(int))]
    return [round(float(v), 6) for v in values]


def evaluate_model(model: FGSSLNet, card: dict[str, Any], data: EvaluationData, images: ImageSet, *,
                   tta: bool = False, positive: str | None = None, batch_size: int = 128,
                   progress: ProgressCallback | None = None) -> dict[str, Any]:
    """The whole evaluation record (what evaluation.json holds)."""
    names = list(card["class_names"])
    pos = positive_class(names, positive)
    plain, flipped = class_probabilities(model, images, tta=tta, batch_size=batch_size, progress=progress)
    labels = images.labels.numpy()
    record: dict[str, Any] = {
        "model": {"class_names": names, "image_size": data.cfg.image_size, "resize": data.cfg.resize,
                  "trained_on": (card.get("training") or {}).get("dataset"),
                  "privacy": (card.get("privacy") or {}).get("text")},
        "data": {"dataset": data.cfg.dataset, "root": data.cfg.root, "split": data.split, "split_seed": data.seed,
                 "num_images": len(images), "class_counts": dict(zip(names, images.class_counts())),
                 "notes": list(data.notes)},
        "positive_class": names[pos],
        "specificity_note": THRESHOLD_NOTE,
        "plain": evaluation_metrics(labels, plain, names, pos),
    }
    if flipped is not None:
        record["tta"] = evaluation_metrics(labels, flipped, names, pos)
        record["tta_views"] = "mean softmax over the image and its horizontal, vertical and double flips"
    return record
