"""One-vs-rest ROC and precision-recall curves of one class's scores, and its sensitivity at a fixed specificity.

Plain numpy. ``scores`` are any monotone scores of the class (probabilities, logits); ``positive`` marks the images of
the class. A threshold t calls an image positive when its score is above t, so images with equal scores always fall
on the same side: a run of tied scores is one step of a curve (a diagonal segment of the ROC curve, which gives the
Mann-Whitney AUC of `fgssl.metrics.macro_auc_ovr` with ties counted one half).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

SPECIFICITIES = (0.80, 0.90, 0.95)


def _checked(scores: Any, positive: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(positive, dtype=bool).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} positive flags")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return s, y


@dataclass
class Curves:
    """ROC (fpr, tpr) and precision-recall points, one per distinct score from the highest down, and their areas."""
    fpr: np.ndarray
    tpr: np.ndarray
    recall: np.ndarray
    precision: np.ndarray
    roc_auc: float
    average_precision: float


def one_vs_rest(scores: Any, positive: Any) -> Curves | None:
    """The curves of one class; None when the images hold no positive or no negative (a curve needs both)."""
    s, y = _checked(scores, positive)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # each distinct score's last position
    tp = np.cumsum(y)[last_of_tie].astype(np.float64)
    fp = (last_of_tie + 1) - tp
    fpr, tpr = np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    # average precision without interpolation: precision at each threshold, weighted by the recall it adds
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return Curves(fpr, tpr, np.r_[0.0, recall], np.r_[1.0, precision], auc, ap)


def sensitivity_at_specificity(scores: Any, positive: Any,
                               targets: tuple[float, ...] = SPECIFICITIES) -> list[dict[str, float | None]]:
    """For each target specificity: the lowest threshold that reaches it on these very images, and the sensitivity
    and specificity it gives (an image is positive when its score is above the threshold). None where the images hold
    no positive or no negative."""
    s, y = _checked(scores, positive)
    neg, pos = np.sort(s[~y]), s[y]
    rows: list[dict[str, float | None]] = []
    for target in targets:
        if not 0.0 < target <= 1.0:
            raise ValueError(f"a target specificity is in (0, 1], got {target}")
        if neg.size == 0 or pos.size == 0:
            rows.append({"target_specificity": target, "threshold": None, "specificity": None, "sensitivity": None})
            continue
        # at least k negatives must score at or below the threshold; the k-th lowest negative score is the lowest
        # such threshold, so it keeps the most positives above it
        k = max(1, math.ceil(target * neg.size - 1e-9))
        threshold = float(neg[k - 1])
        rows.append({"target_specificity": target, "threshold": threshold,
                     "specificity": float(np.mean(neg <= threshold)), "sensitivity": float(np.mean(pos > threshold))})
    return rows
