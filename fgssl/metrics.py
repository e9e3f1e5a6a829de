"""Classification metrics for the evaluation reports, in plain numpy.

Labels are integer class indices in ``[0, K)``; scores are ``(N, K)`` arrays (logits or
probabilities). Every function validates its inputs and raises ``ValueError`` naming what is
wrong, because a silently wrong metric in a federated run is far harder to trace than a crash.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "balanced_accuracy",
    "classification_metrics",
    "confusion_matrix",
    "macro_auc_ovr",
    "macro_f1",
    "per_class_precision",
    "per_class_recall",
    "quadratic_weighted_kappa",
]


# --------------------------------------------------------------------------- validation


def _as_labels(name: str, labels: Any) -> np.ndarray:
    """Return ``labels`` as a non-empty 1-D int64 array, or raise ``ValueError``."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; metrics are undefined on zero examples")
    # Floats such as 1.0 are rejected rather than cast: they usually mean scores or
    # probabilities were passed where labels were expected.
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return int(num_classes)


def _check_range(name: str, labels: np.ndarray, num_classes: int) -> None:
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} has {int(bad.sum())} label(s) outside [0, {num_classes}); "
            f"first at index {first}: {int(labels[first])}"
        )


def _label_pair(y_true: Any, y_pred: Any, num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (y_true, y_pred) pair; range-check only when ``num_classes`` is given."""
    t = _as_labels("y_true", y_true)
    p = _as_labels("y_pred", y_pred)
    if t.shape[0] != p.shape[0]:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    if num_classes is not None:
        _check_range("y_true", t, num_classes)
        _check_range("y_pred", p, num_classes)
    return t, p


def _as_scores(scores: Any, num_examples: int, num_classes: int) -> np.ndarray:
    arr = np.asarray(scores)
    if arr.ndim != 2:
        raise ValueError(f"scores must be a 2-D (N, K) array, got shape {arr.shape}")
    if arr.shape != (num_examples, num_classes):
        raise ValueError(
            f"scores has shape {arr.shape}, expected ({num_examples}, {num_classes}) "
            "= (len(y_true), num_classes)"
        )
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"scores must be real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    # NaN has no place in a ranking; letting it through would give an arbitrary AUC.
    if np.isnan(arr).any():
        raise ValueError("scores contain NaN")
    return arr


# --------------------------------------------------------------------------- label metrics


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts as an int64 ``(K, K)`` array: rows are true classes, columns predicted classes."""
    k = _check_num_classes(num_classes)
    t, p = _label_pair(y_true, y_pred, k)
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of examples whose prediction equals the label."""
    t, p = _label_pair(y_true, y_pred, None)
    return float(np.mean(t == p))


def _recalls(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    support = cm.sum(axis=1)
    present = support > 0
    recall = np.zeros(cm.shape[0], dtype=np.float64)
    recall[present] = np.diag(cm)[present] / support[present]
    return recall, present


def per_class_recall(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> list[float | None]:
    """Recall of each class; ``None`` for classes that never occur in ``y_true``."""
    recall, present = _recalls(confusion_matrix(y_true, y_pred, num_classes))
    return [float(r) if ok else None for r, ok in zip(recall, present)]


def per_class_precision(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> list[float | None]:
    """Precision of each class (its share of correct predictions); ``None`` for classes never predicted."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    predicted = cm.sum(axis=0)
    return [float(cm[k, k] / predicted[k]) if predicted[k] else None for k in range(cm.shape[0])]


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Mean recall over the classes present in ``y_true`` (absent classes are ignored, as in sklearn)."""
    recall, present = _recalls(confusion_matrix(y_true, y_pred, num_classes))
    # y_true is non-empty, so at least one class is present.
    return float(recall[present].mean())


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean F1 over classes present in ``y_true`` or ``y_pred``; F1 is 0 when tp is 0."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    # 2tp + fp + fn > 0 exactly for the classes that appear on either side, so this mask
    # both picks the classes to average and guards the division.
    denom = 2 * tp + fp + fn
    used = denom > 0
    return float(np.mean(2 * tp[used] / denom[used]))


def quadratic_weighted_kappa(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Cohen's kappa with quadratic weights ``(i - j)^2``; 1.0 is perfect agreement.

    Degenerate case: when the expected (chance) disagreement is 0 — one class only, or labels
    and predictions all the same single class — the observed disagreement is necessarily 0 too,
    i.e. the predictions equal the labels. We return 1.0 there instead of sklearn's 0/0 = NaN,
    so the value is always a finite float. Note that this rewards a constant predictor on a
    single-class evaluation set; read it alongside the per-class numbers.
    """
    k = _check_num_classes(num_classes)
    cm = confusion_matrix(y_true, y_pred, k).astype(np.float64)
    n = cm.sum()
    idx = np.arange(k, dtype=np.float64)
    # The usual (K-1)^2 normaliser cancels in the ratio below; leaving it out also keeps K = 1 safe.
    weights = (idx[:, None] - idx[None, :]) ** 2
    expected = np.outer(cm.sum(axis=1), cm.sum(axis=0)) / n
    observed_disagreement = float((weights * cm).sum())
    expected_disagreement = float((weights * expected).sum())
    if expected_disagreement == 0.0:
        return 1.0
    return 1.0 - observed_disagreement / expected_disagreement


# --------------------------------------------------------------------------- ranking metrics


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` with ties sharing the mean of the ranks they span."""
    uniq, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    del uniq
    upper = np.cumsum(counts)  # highest rank held by each tie group
    group_rank = upper - (counts - 1) / 2.0
    return group_rank[inverse.reshape(-1)]


def macro_auc_ovr(y_true: np.ndarray, scores: np.ndarray, num_classes: int) -> float | None:
    """Macro one-vs-rest ROC AUC via the Mann-Whitney U statistic.

    Each class uses its own score column; ties count 1/2 (average ranks). Classes without both
    positives and negatives are skipped; ``None`` if none qualifies. Only the order of each
    column matters, so logits and probabilities give the same result.
    """
    k = _check_num_classes(num_classes)
    t = _as_labels("y_true", y_true)
    _check_range("y_true", t, k)
    s = _as_scores(scores, t.shape[0], k)
    n = t.shape[0]
    aucs: list[float] = []
    for c in range(k):
        pos = t == c
        n_pos = int(pos.sum())
        n_neg = n - n_pos
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = _average_ranks(s[:, c])
        # U = rank sum of positives minus its minimum possible value n_pos(n_pos+1)/2.
        u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
        aucs.append(u / (n_pos * n_neg))
    if not aucs:
        return None
    return float(np.mean(aucs))


def below_majority(metrics: dict[str, Any]) -> bool:
    """True for a model less accurate than always answering the majority class (balanced accuracy can hide it)."""
    acc, rate = metrics.get("accuracy"), metrics.get("majority_rate")
    return acc is not None and rate is not None and acc < rate - 1e-12


def constant_answer(metrics: dict[str, Any]) -> bool:
    """True for a model that gives every image of the set the same class: always answering the majority class
    scores exactly the majority rate, so `below_majority` alone lets it pass."""
    return metrics.get("predicted_classes") == 1


def no_better_than_majority(metrics: dict[str, Any]) -> bool:
    """Less accurate than always answering the majority class, or that very answer."""
    return below_majority(metrics) or constant_answer(metrics)


def baseline_warning(metrics: dict[str, Any], what: str) -> str | None:
    """The warning a run prints when `what` (e.g. "pooled test") shows no better than the majority-class baseline."""
    if below_majority(metrics):
        return (f"warning: {what} accuracy {metrics['accuracy']:.3f} is below its majority-class rate "
                f"{metrics['majority_rate']:.3f}: always answering the most frequent class would score higher")
    if constant_answer(metrics):
        return f"warning: the model gives every {what} image the same class: it is the majority-class baseline"
    return None


# A model's honest headline on one split (DESIGN §7): accuracy beside balanced accuracy and the majority-class rate,
# and how many images they are over. What a cross-site evaluation reports per (model, site's test split).
HEADLINE_METRICS = ("num_examples", "accuracy", "balanced_accuracy", "majority_rate")


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The HEADLINE_METRICS of a full metric set (classification_metrics)."""
    return {k: metrics.get(k) for k in HEADLINE_METRICS}


def majority_rate(y_true: np.ndarray, num_classes: int) -> float | None:
    """The share of the most frequent class in y_true: the accuracy of always predicting it."""
    if y_true.size == 0:
        return None
    return float(np.bincount(y_true, minlength=num_classes).max() / y_true.size)


# --------------------------------------------------------------------------- report


def classification_metrics(
    y_true: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """All metrics for one evaluation, as a JSON-serialisable dict of plain Python values.

    ``K`` is taken from ``scores.shape[1]``; predictions are the per-row argmax (ties go to the
    lowest class index). Undefined values are ``None``, never NaN. ``class_names`` defaults to
    ``"0" .. "K-1"`` and keys ``per_class_recall``.
    """
    s = np.asarray(scores)
    if s.ndim != 2 or s.shape[1] < 1:
        raise ValueError(f"scores must be a 2-D (N, K) array with K >= 1, got shape {s.shape}")
    k = int(s.shape[1])
    t = _as_labels("y_true", y_true)
    _check_range("y_true", t, k)
    s = _as_scores(s, t.shape[0], k)

    if class_names is None:
        names = [str(i) for i in range(k)]
    else:
        if isinstance(class_names, str):
            raise ValueError("class_names must be a sequence of strings, not a single string")
        names = list(class_names)
        if len(names) != k:
            raise ValueError(f"class_names has {len(names)} entries but scores has {k} columns")
        if not all(isinstance(n, str) for n in names):
            raise ValueError("class_names must all be strings")
        if len(set(names)) != k:
            raise ValueError(f"class_names must be unique, got {names}")

    pred = np.argmax(s, axis=1).astype(np.int64)
    cm = confusion_matrix(t, pred, k)
    return {
        "num_examples": int(t.shape[0]),
        "accuracy": accuracy(t, pred),
        # What always answering the most frequent class of this very set would score (see below_majority).
        "majority_rate": majority_rate(t, k),
        "balanced_accuracy": balanced_accuracy(t, pred, k),
        "macro_f1": macro_f1(t, pred, k),
        "macro_auc": macro_auc_ovr(t, s, k),
        "quadratic_weighted_kappa": quadratic_weighted_kappa(t, pred, k),
        # How many classes the model answers at all on this set; 1 is a constant answer (see constant_answer).
        "predicted_classes": int(np.unique(pred).size),
        "per_class_recall": dict(zip(names, per_class_recall(t, pred, k))),
        "confusion_matrix": [[int(v) for v in row] for row in cm],
    }
