"""How far a classifier's confidence is from its accuracy: expected calibration error and its reliability table.

Confidence is the highest class probability of an image; the images are binned by it into equal-width bins
((0, 1/B], (1/B, 2/B], ..., the first one closed at 0), and ECE = Σ_b (n_b / n) · |accuracy_b − confidence_b|.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BINS = 15


def reliability(probabilities: Any, labels: Any, bins: int = BINS) -> dict[str, Any]:
    """{"ece", "bins": [{"lower", "upper", "count", "confidence", "accuracy"}]} (mean confidence and accuracy are
    None for an empty bin)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if p.ndim != 2 or p.shape[0] != y.size or y.size == 0:
        raise ValueError(f"probabilities of shape {p.shape} do not fit {y.size} labels")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        members = which == b
        n = int(members.sum())
        conf = float(confidence[members].mean()) if n else None
        acc = float(correct[members].mean()) if n else None
        if n:
            ece += n / y.size * abs(acc - conf)
        table.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": n, "confidence": conf,
                      "accuracy": acc})
    return {"ece": float(ece), "bins": table}
