"""Metrics checked against small examples worked out by hand (arithmetic in the comments)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fgssl.metrics import (
    accuracy,
    balanced_accuracy,
    baseline_warning,
    below_majority,
    classification_metrics,
    constant_answer,
    confusion_matrix,
    macro_auc_ovr,
    macro_f1,
    per_class_recall,
    quadratic_weighted_kappa,
)

# Shared 3-class AUC example. Labels y = [0, 0, 1, 1, 2, 2].
AUC_Y = np.array([0, 0, 1, 1, 2, 2])
AUC_SCORES = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.3, 0.4, 0.3],
        [0.2, 0.5, 0.3],
        [0.4, 0.3, 0.3],
        [0.1, 0.3, 0.6],
        [0.3, 0.3, 0.4],
    ]
)
# Class 0: pos {0.7, 0.3}, neg {0.2, 0.4, 0.1, 0.3}
#   0.7 beats all 4 -> 4; 0.3: >0.2 (1), <0.4 (0), >0.1 (1), =0.3 (0.5) -> 2.5; AUC = 6.5/8 = 0.8125
# Class 1: pos {0.5, 0.3}, neg {0.2, 0.4, 0.3, 0.3}
#   0.5 -> 4; 0.3: 1 + 0 + 0.5 + 0.5 = 2;                                   AUC = 6/8   = 0.75
# Class 2: pos {0.6, 0.4}, neg {0.1, 0.3, 0.3, 0.3} -> 4 + 4;                AUC = 8/8   = 1.0
# Macro = (0.8125 + 0.75 + 1.0) / 3 = 2.5625 / 3
AUC_EXPECTED = 2.5625 / 3


def brute_force_auc(y: np.ndarray, scores: np.ndarray, k: int) -> float | None:
    """Reference AUC: count every (positive, negative) pair, ties worth 1/2."""
    aucs = []
    for c in range(k):
        pos = scores[y == c, c]
        neg = scores[y != c, c]
        if len(pos) == 0 or len(neg) == 0:
            continue
        wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
        aucs.append(wins / (len(pos) * len(neg)))
    return float(np.mean(aucs)) if aucs else None


# --------------------------------------------------------------------------- confusion / accuracy


def test_confusion_matrix_rows_are_true_cols_are_predicted() -> None:
    # true 0 predicted 1 twice, true 1 predicted 1 once -> cm[0,1] = 2, cm[1,1] = 1.
    cm = confusion_matrix(np.array([0, 0, 1]), np.array([1, 1, 1]), 2)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[0, 2], [0, 1]])


def test_confusion_matrix_counts_every_cell_and_pads_unused_classes() -> None:
    y_true = np.array([0, 1, 2, 2, 1, 0, 2])
    y_pred = np.array([0, 2, 2, 1, 1, 0, 0])
    cm = confusion_matrix(y_true, y_pred, 4)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = 2  # indices 0, 5
    expected[1, 2] = 1  # index 1
    expected[1, 1] = 1  # index 4
    expected[2, 2] = 1  # index 2
    expected[2, 1] = 1  # index 3
    expected[2, 0] = 1  # index 6
    np.testing.assert_array_equal(cm, expected)
    assert cm.sum() == len(y_true)


def test_accuracy() -> None:
    # 3 of 4 equal.
    assert accuracy(np.array([0, 1, 2, 1]), np.array([0, 1, 2, 2])) == pytest.approx(0.75)


def test_labels_accepted_as_lists() -> None:
    assert accuracy([0, 1], [0, 0]) == pytest.approx(0.5)


# --------------------------------------------------------------------------- recall-based


def test_balanced_accuracy_differs_from_accuracy_on_imbalanced_data() -> None:
    # 8 of class 0, 2 of class 1, always predict 0:
    # accuracy = 8/10 = 0.8; recalls = (8/8, 0/2) -> balanced = (1 + 0)/2 = 0.5.
    y_true = np.array([0] * 8 + [1] * 2)
    y_pred = np.zeros(10, dtype=np.int64)
    assert accuracy(y_true, y_pred) == pytest.approx(0.8)
    assert balanced_accuracy(y_true, y_pred, 2) == pytest.approx(0.5)


def test_balanced_accuracy_ignores_classes_absent_from_y_true() -> None:
    # Same data with K = 3: class 2 never occurs, so it must not drag the mean to (1+0+0)/3.
    y_true = np.array([0] * 8 + [1] * 2)
    y_pred = np.zeros(10, dtype=np.int64)
    assert balanced_accuracy(y_true, y_pred, 3) == pytest.approx(0.5)


def test_balanced_accuracy_partial_recalls() -> None:
    # class 0: 3 of 4 right (0.75); class 1: 1 of 2 right (0.5) -> (0.75 + 0.5)/2 = 0.625.
    y_true = np.array([0, 0, 0, 0, 1, 1])
    y_pred = np.array([0, 0, 0, 1, 1, 0])
    assert balanced_accuracy(y_true, y_pred, 2) == pytest.approx(0.625)


def test_per_class_recall_with_absent_class() -> None:
    # class 0: 1 of 2; class 1: 1 of 2; class 2 never a true label -> None (even though predicted).
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 1, 1, 2])
    assert per_class_recall(y_true, y_pred, 3) == [0.5, 0.5, None]


def test_macro_f1_by_hand() -> None:
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0])
    # class 0: tp=1 (i0), fp=1 (i4), fn=1 (i1) -> 2/(2+1+1) = 0.5
    # class 1: tp=2 (i2,i3), fp=1 (i1), fn=0   -> 4/(4+1)   = 0.8
    # class 2: tp=0, fn=1                      -> 0
    # mean = 1.3 / 3
    assert macro_f1(y_true, y_pred, 3) == pytest.approx(1.3 / 3)
    # A class on neither side (K = 4, class 3) is left out of the mean.
    assert macro_f1(y_true, y_pred, 4) == pytest.approx(1.3 / 3)


def test_macro_f1_counts_classes_only_predicted() -> None:
    # class 0: tp=1, fn=1 -> 2/3; class 1 only predicted: tp=0, fp=1 -> 0. mean = 1/3
    # (averaging over y_true's classes only would wrongly give 2/3).
    assert macro_f1(np.array([0, 0]), np.array([0, 1]), 2) == pytest.approx(1 / 3)


def test_macro_f1_perfect() -> None:
    y = np.array([0, 1, 2, 1])
    assert macro_f1(y, y, 5) == pytest.approx(1.0)


# --------------------------------------------------------------------------- AUC


def test_auc_perfect_ranking_is_one_and_reversed_is_zero() -> None:
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.2, 0.8, 0.9])
    good = np.stack([1 - p1, p1], axis=1)
    assert macro_auc_ovr(y, good, 2) == pytest.approx(1.0)
    bad = np.stack([p1, 1 - p1], axis=1)
    assert macro_auc_ovr(y, bad, 2) == pytest.approx(0.0)


def test_auc_all_ties_is_one_half() -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    assert macro_auc_ovr(y, np.zeros((6, 3)), 3) == pytest.approx(0.5)


def test_auc_partial_ties_count_one_half() -> None:
    y = np.array([0, 1, 1])
    scores = np.array([[0.5, 0.5], [0.5, 0.5], [0.1, 0.9]])
    # class 1: neg {0.5} vs pos {0.5 (tie: 0.5), 0.9 (win: 1)} -> 1.5/2 = 0.75
    # class 0: pos {0.5} vs neg {0.5 (tie: 0.5), 0.1 (win: 1)} -> 1.5/2 = 0.75
    assert macro_auc_ovr(y, scores, 2) == pytest.approx(0.75)


def test_auc_three_class_by_hand() -> None:
    assert macro_auc_ovr(AUC_Y, AUC_SCORES, 3) == pytest.approx(AUC_EXPECTED)


def test_auc_skips_classes_without_positives() -> None:
    # Add a 4th class that never occurs: it has no positives and must not enter the mean.
    scores = np.concatenate([AUC_SCORES, np.linspace(0, 1, 6)[:, None]], axis=1)
    assert macro_auc_ovr(AUC_Y, scores, 4) == pytest.approx(AUC_EXPECTED)


def test_auc_none_when_no_class_qualifies() -> None:
    # Only class 0 occurs: class 0 has no negatives, class 1 no positives.
    assert macro_auc_ovr(np.array([0, 0, 0]), np.random.default_rng(0).random((3, 2)), 2) is None


def test_auc_invariant_to_monotone_transform_per_column() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, size=40)
    logits = rng.normal(size=(40, 4))
    base = macro_auc_ovr(y, logits, 4)
    # exp is strictly increasing, and a different positive affine map per column keeps each
    # column's order; both must leave every one-vs-rest AUC unchanged.
    assert macro_auc_ovr(y, np.exp(logits), 4) == pytest.approx(base)
    scaled = logits * np.array([0.5, 3.0, 10.0, 1e-3]) + np.array([5.0, -2.0, 0.0, 100.0])
    assert macro_auc_ovr(y, scaled, 4) == pytest.approx(base)


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_brute_force_pair_count_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, k = 50, 4
    y = rng.integers(0, k, size=n)
    # Few distinct values -> many ties within every column.
    scores = rng.integers(0, 4, size=(n, k)).astype(np.float64)
    expected = brute_force_auc(y, scores, k)
    assert expected is not None
    assert macro_auc_ovr(y, scores, k) == pytest.approx(expected, abs=1e-12)


def test_auc_brute_force_reference_agrees_with_hand_example() -> None:
    # Guards the reference itself.
    assert brute_force_auc(AUC_Y, AUC_SCORES, 3) == pytest.approx(AUC_EXPECTED)


# --------------------------------------------------------------------------- QWK


def test_qwk_perfect_is_one() -> None:
    y = np.array([0, 1, 2, 3, 2, 1])
    assert quadratic_weighted_kappa(y, y, 4) == pytest.approx(1.0)


def test_qwk_by_hand() -> None:
    y_true = np.array([0, 1, 2, 2])
    y_pred = np.array([0, 2, 2, 1])
    # Confusion: (0,0)=1, (1,2)=1, (2,2)=1, (2,1)=1. Weights w_ij = (i-j)^2.
    # Observed weighted disagreement = 0 + 1 + 0 + 1 = 2.
    # Marginals: true r = [1,1,2], pred c = [1,1,2], N = 4. sum_ij w_ij r_i c_j:
    #   i=0: [0,1,4].[1,1,2] = 9;  i=1: 1*[1,0,1].[1,1,2] = 3;  i=2: 2*[4,1,0].[1,1,2] = 10  -> 22
    # Expected disagreement = 22 / 4 = 5.5.  kappa = 1 - 2/5.5 = 7/11.
    # (Linear weights would give 1 - 2/3.5 = 3/7, so this pins the quadratic weighting.)
    assert quadratic_weighted_kappa(y_true, y_pred, 3) == pytest.approx(7 / 11)


def test_qwk_complete_reversal_is_minus_one() -> None:
    # cm (0,2)=1, (2,0)=1: observed = 4 + 4 = 8; r = c = [1,0,1], N = 2:
    # expected = (w02 + w20) * 1 * 1 / 2 = 8/2 = 4 -> kappa = 1 - 8/4 = -1.
    assert quadratic_weighted_kappa(np.array([0, 2]), np.array([2, 0]), 3) == pytest.approx(-1.0)


def test_qwk_symmetric_in_true_and_pred() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 5, size=30)
    b = rng.integers(0, 5, size=30)
    assert quadratic_weighted_kappa(a, b, 5) == pytest.approx(quadratic_weighted_kappa(b, a, 5))
    c = np.array([0, 1, 2, 2])
    d = np.array([0, 2, 2, 1])
    assert quadratic_weighted_kappa(d, c, 3) == pytest.approx(7 / 11)


def test_qwk_degenerate_case_is_one() -> None:
    # All labels and predictions the same single class: expected disagreement 0 -> defined as 1.0.
    y = np.array([1, 1, 1])
    assert quadratic_weighted_kappa(y, y, 3) == 1.0
    assert quadratic_weighted_kappa(np.array([0, 0]), np.array([0, 0]), 1) == 1.0


def test_qwk_constant_prediction_on_mixed_labels_is_zero() -> None:
    # Predicting one class always: cm column 0 only, so observed = sum_i r_i w_i0 = expected
    # (c = [N, 0, ...]) -> kappa = 0, chance level.
    y_true = np.array([0, 1, 2, 2])
    assert quadratic_weighted_kappa(y_true, np.zeros(4, dtype=np.int64), 3) == pytest.approx(0.0)


# --------------------------------------------------------------------------- report


def _all_plain(value: object) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _all_plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_all_plain(v) for v in value)
    return value is None or type(value) in (int, float)


def test_classification_metrics_report() -> None:
    report = classification_metrics(AUC_Y, AUC_SCORES, ["nv", "mel", "bcc"])
    text = json.dumps(report, allow_nan=False)  # raises on NaN/inf and on numpy scalars
    assert json.loads(text) == report
    assert set(report) == {
        "num_examples",
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "macro_auc",
        "quadratic_weighted_kappa",
        "per_class_recall",
        "confusion_matrix",
        "majority_rate",
        "predicted_classes",
    }
    assert _all_plain(report)
    # argmax per row: [0, 1, 1, 0, 2, 2] vs y [0, 0, 1, 1, 2, 2] -> rows 0, 2, 4, 5 right.
    assert report["num_examples"] == 6
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["confusion_matrix"] == [[1, 1, 0], [1, 1, 0], [0, 0, 2]]
    assert report["per_class_recall"] == {"nv": 0.5, "mel": 0.5, "bcc": 1.0}
    assert report["balanced_accuracy"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert report["macro_auc"] == pytest.approx(AUC_EXPECTED)
    assert report["majority_rate"] == pytest.approx(2 / 6) and not below_majority(report)


def test_a_model_that_sacrifices_the_majority_class_is_flagged() -> None:
    """High balanced accuracy, accuracy under 'always the majority class': the flag fires, and only then."""
    y = np.array([0] * 8 + [1, 2])
    minority_lover = np.eye(3)[[1] * 6 + [0, 0, 1, 2]]  # six of eight majority images called class 1
    report = classification_metrics(y, minority_lover, ["nv", "mel", "bcc"])
    assert report["majority_rate"] == pytest.approx(0.8)
    assert report["accuracy"] == pytest.approx(0.4) and report["balanced_accuracy"] == pytest.approx(0.75)
    assert below_majority(report)
    constant = classification_metrics(y, np.eye(3)[[0] * 10], ["nv", "mel", "bcc"])
    assert constant["accuracy"] == pytest.approx(0.8) and not below_majority(constant)
    # ... which is why the constant answer has a flag of its own
    assert constant["predicted_classes"] == 1 and constant_answer(constant)
    assert report["predicted_classes"] == 3 and not constant_answer(report)


def test_classification_metrics_undefined_values_are_none() -> None:
    # Single true class: AUC undefined -> None; unseen classes' recall -> None; default names.
    scores = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    report = classification_metrics(np.array([0, 0]), scores)
    json.dumps(report, allow_nan=False)
    assert report["macro_auc"] is None
    assert report["per_class_recall"] == {"0": 0.5, "1": None, "2": None}
    assert _all_plain(report)


# --------------------------------------------------------------------------- validation


def test_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="differ in length: 3 vs 2"):
        confusion_matrix(np.array([0, 1, 1]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="differ in length"):
        accuracy(np.array([0]), np.array([0, 1]))


def test_rejects_labels_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"y_true has 1 label\(s\) outside \[0, 2\).*index 2: 2"):
        balanced_accuracy(np.array([0, 1, 2]), np.array([0, 1, 1]), 2)
    with pytest.raises(ValueError, match=r"y_pred .*outside \[0, 2\).*-1"):
        macro_f1(np.array([0, 1]), np.array([0, -1]), 2)
    with pytest.raises(ValueError, match=r"y_true .*outside \[0, 3\)"):
        macro_auc_ovr(np.array([0, 3]), np.zeros((2, 3)), 3)
    with pytest.raises(ValueError, match=r"y_true .*outside \[0, 3\)"):
        classification_metrics(np.array([0, 5]), np.zeros((2, 3)))


def test_rejects_empty_input() -> None:
    empty = np.array([], dtype=np.int64)
    with pytest.raises(ValueError, match="empty"):
        accuracy(empty, empty)
    with pytest.raises(ValueError, match="empty"):
        quadratic_weighted_kappa(empty, empty, 3)
    with pytest.raises(ValueError, match="empty"):
        classification_metrics(empty, np.zeros((0, 3)))


def test_rejects_wrong_score_shape() -> None:
    y = np.array([0, 1, 2])
    with pytest.raises(ValueError, match=r"2-D"):
        macro_auc_ovr(y, np.zeros(3), 3)
    with pytest.raises(ValueError, match=r"shape \(3, 2\), expected \(3, 3\)"):
        macro_auc_ovr(y, np.zeros((3, 2)), 3)
    with pytest.raises(ValueError, match=r"shape \(4, 3\), expected \(3, 3\)"):
        macro_auc_ovr(y, np.zeros((4, 3)), 3)
    with pytest.raises(ValueError, match=r"2-D"):
        classification_metrics(y, np.zeros(3))
    with pytest.raises(ValueError, match=r"expected \(3, 3\)"):
        classification_metrics(y, np.zeros((2, 3)))


def test_rejects_bad_score_values() -> None:
    y = np.array([0, 1])
    with pytest.raises(ValueError, match="NaN"):
        macro_auc_ovr(y, np.array([[0.1, np.nan], [0.2, 0.3]]), 2)
    with pytest.raises(ValueError, match="real numbers"):
        macro_auc_ovr(y, np.array([["a", "b"], ["c", "d"]]), 2)


def test_rejects_non_integer_or_non_1d_labels() -> None:
    with pytest.raises(ValueError, match="integer class indices, got dtype float64"):
        accuracy(np.array([0.0, 1.0]), np.array([0, 1]))
    with pytest.raises(ValueError, match="y_pred must hold integer"):
        accuracy(np.array([0, 1]), np.array([True, False]))
    with pytest.raises(ValueError, match=r"1-D .*shape \(2, 1\)"):
        accuracy(np.array([[0], [1]]), np.array([0, 1]))


def test_rejects_bad_num_classes() -> None:
    y = np.array([0])
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        confusion_matrix(y, y, 0)
    with pytest.raises(ValueError, match="num_classes must be an int"):
        confusion_matrix(y, y, 2.0)  # type: ignore[arg-type]


def test_rejects_bad_class_names() -> None:
    y = np.array([0, 1])
    scores = np.eye(2)
    with pytest.raises(ValueError, match="class_names has 3 entries but scores has 2 columns"):
        classification_metrics(y, scores, ["a", "b", "c"])
    with pytest.raises(ValueError, match="unique"):
        classification_metrics(y, scores, ["a", "a"])
    with pytest.raises(ValueError, match="strings"):
        classification_metrics(y, scores, ["a", 1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="not a single string"):
        classification_metrics(y, scores, "ab")


def test_the_baseline_warning_names_what_it_warns_about() -> None:
    y = np.array([0] * 8 + [1, 2])
    sacrificing = classification_metrics(y, np.eye(3)[[1] * 6 + [0, 0, 1, 2]], ["nv", "mel", "bcc"])
    constant = classification_metrics(y, np.eye(3)[[0] * 10], ["nv", "mel", "bcc"])
    sound = classification_metrics(y, np.eye(3)[[0] * 8 + [1, 2]], ["nv", "mel", "bcc"])
    assert "pooled test accuracy 0.400 is below its majority-class rate 0.800" in baseline_warning(sacrificing,
                                                                                                   "pooled test")
    assert "every site 1 test image the same class" in baseline_warning(constant, "site 1 test")
    assert baseline_warning(sound, "test") is None
