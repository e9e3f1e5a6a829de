"""The numbers `fgssl evaluate` adds to the metric set: per-class precision, calibration, one-vs-rest curves and
sensitivity at a fixed specificity, checked against hand computations and brute force."""

from __future__ import annotations

import numpy as np
import pytest

from fgssl.calibration import reliability
from fgssl.curves import one_vs_rest, sensitivity_at_specificity
from fgssl.evaluation import check_classes, evaluation_metrics, positive_class
from fgssl.config import ConfigError
from fgssl.data.errors import DataError
from fgssl.metrics import macro_auc_ovr, per_class_precision


def test_per_class_precision_by_hand():
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 1])
    # class 0: 1 of 1 predicted right; class 1: 2 of 4; class 2 never predicted
    assert per_class_precision(y_true, y_pred, 3) == [1.0, 0.5, None]


def test_reliability_and_ece_by_hand():
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.4, 0.6], [0.45, 0.55], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 0, 1])
    out = reliability(probs, labels, bins=5)  # bins (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]
    counts = [b["count"] for b in out["bins"]]
    assert counts == [0, 0, 2, 1, 2]
    top = out["bins"][4]
    assert top["confidence"] == pytest.approx(0.925) and top["accuracy"] == 0.5
    mid = out["bins"][2]  # confidences 0.6 and 0.55: one right, one wrong
    assert mid["confidence"] == pytest.approx(0.575) and mid["accuracy"] == 0.5
    want = 2 / 5 * abs(0.5 - 0.575) + 1 / 5 * abs(1.0 - 0.7) + 2 / 5 * abs(0.5 - 0.925)
    assert out["ece"] == pytest.approx(want)
    assert out["bins"][0]["confidence"] is None
    # a perfectly calibrated set: confidence 1.0 and always right
    assert reliability(np.eye(3), np.arange(3))["ece"] == 0.0
    with pytest.raises(ValueError, match="do not fit 2 labels"):
        reliability(np.eye(3), np.arange(2))
    with pytest.raises(ValueError, match="bins must be >= 1"):
        reliability(np.eye(3), np.arange(3), bins=0)


def _brute_force_auc(scores, positive):
    pos, neg = scores[positive], scores[~positive]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


def test_roc_and_pr_curves_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 40) / 5.0  # many ties
    positive = rng.random(40) < 0.4
    c = one_vs_rest(scores, positive)
    assert c.roc_auc == pytest.approx(_brute_force_auc(scores, positive))
    assert (c.fpr[0], c.tpr[0], c.fpr[-1], c.tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(c.fpr) >= 0) and np.all(np.diff(c.tpr) >= 0) and len(c.fpr) == len(np.unique(scores)) + 1
    # average precision: at each distinct threshold, precision weighted by the recall it adds
    ap = 0.0
    last_recall = 0.0
    for t in np.unique(scores)[::-1]:
        called = scores >= t
        recall = (called & positive).sum() / positive.sum()
        ap += (recall - last_recall) * (called & positive).sum() / called.sum()
        last_recall = recall
    assert c.average_precision == pytest.approx(ap)
    assert one_vs_rest(scores, np.zeros(40, bool)) is None
    with pytest.raises(ValueError, match="40 scores but 39 positive flags"):
        one_vs_rest(scores, positive[:39])
    with pytest.raises(ValueError, match="NaN"):
        one_vs_rest(np.r_[np.nan, scores[1:]], positive)


def test_one_vs_rest_aucs_agree_with_the_macro_auc():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 60)
    probs = rng.dirichlet(np.ones(4), 60)
    aucs = [one_vs_rest(probs[:, k], labels == k).roc_auc for k in range(4)]
    assert np.mean(aucs) == pytest.approx(macro_auc_ovr(labels, probs, 4))


def test_sensitivity_at_specificity_is_the_best_threshold():
    rng = np.random.default_rng(2)
    scores = np.round(rng.random(80), 2)
    positive = rng.random(80) < 0.3
    for row in sensitivity_at_specificity(scores, positive, (0.8, 0.9, 0.95)):
        # every threshold reaching the target, tried: the reported one has the highest sensitivity
        best = max((np.mean(scores[positive] > t), t) for t in np.r_[scores, -1.0]
                   if np.mean(scores[~positive] <= t) >= row["target_specificity"] - 1e-12)
        assert row["sensitivity"] == pytest.approx(best[0])
        assert row["specificity"] >= row["target_specificity"]
        assert row["specificity"] == pytest.approx(np.mean(scores[~positive] <= row["threshold"]))
    # a perfect ranking: full sensitivity at any specificity
    perfect = sensitivity_at_specificity(np.r_[np.zeros(10), np.ones(5)], np.r_[np.zeros(10, bool), np.ones(5, bool)])
    assert [r["sensitivity"] for r in perfect] == [1.0, 1.0, 1.0]
    assert sensitivity_at_specificity([0.1, 0.2], [True, True])[0]["sensitivity"] is None
    with pytest.raises(ValueError, match="target specificity is in"):
        sensitivity_at_specificity([0.1, 0.2], [True, False], (1.5,))


def test_evaluation_metrics_graded_and_positive_class():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, 50)
    probs = rng.dirichlet(np.ones(5), 50)
    grades = ("no_dr", "mild", "moderate", "severe", "proliferative_dr")
    graded = evaluation_metrics(labels, probs, grades, positive=0)
    assert "quadratic_weighted_kappa" in graded
    names = ("a", "b", "c", "d", "e")
    plain = evaluation_metrics(labels, probs, names, positive=positive_class(names, "c"))
    assert "quadratic_weighted_kappa" not in plain
    assert plain["support"] == dict(zip(names, np.bincount(labels, minlength=5).tolist()))
    assert plain["per_class_precision"]["c"] == per_class_precision(labels, probs.argmax(1), 5)[2]
    assert plain["curves"]["c"]["roc_auc"] == pytest.approx(one_vs_rest(probs[:, 2], labels == 2).roc_auc)
    assert plain["sensitivity_at_specificity"] == sensitivity_at_specificity(probs[:, 2], labels == 2)
    assert positive_class(("NV", "MEL")) == 1 and positive_class(("x", "y")) == 0
    with pytest.raises(ConfigError, match="'MEL' is not one of the model's classes \\(x, y\\)"):
        positive_class(("x", "y"), "MEL")


def test_class_sets_match_by_name():
    assert check_classes(("b", "a", "c"), ["a", "b", "c"]).tolist() == [1, 0, 2]
    with pytest.raises(DataError, match=r"dataset's classes \(a, b\) differ from the model's \(a, b, c\)"):
        check_classes(("a", "b"), ["a", "b", "c"])
