"""Group bootstrap: weighted statistics equal scikit-learn's on the resampled data, and the intervals cover."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from busflow.evaluate.metrics import classification_metrics
from busflow.evaluate.statistics import (
    GroupBootstrap,
    binary_auc,
    confusion_statistics,
    expected_calibration_error,
    macro_auc,
    percentile_interval,
    two_sided_p,
    weighted_mean,
)

CLASSES = ["normal", "benign", "malignant"]


def _problem(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 3, n)
    probs = rng.dirichlet(np.ones(3), n) + np.eye(3)[y_true] * rng.random((n, 1))
    return y_true, probs / probs.sum(1, keepdims=True)


def test_all_ones_weights_reproduce_the_metrics_json_definitions() -> None:
    y_true, probs = _problem()
    ones = np.ones((1, len(y_true)))
    expected = classification_metrics(y_true, probs, CLASSES)
    found = confusion_statistics(y_true, probs.argmax(1), 3, ones)
    for name in ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "specificity_macro", "f1_macro", "f1_weighted"):
        assert found[name][0] == pytest.approx(expected[name]), name
    assert macro_auc(y_true, probs, ones)[0] == pytest.approx(expected["roc_auc_macro"])


def test_integer_weights_equal_duplicating_the_images() -> None:
    y_true, probs = _problem(seed=1)
    counts = np.random.default_rng(2).integers(0, 4, len(y_true))
    rows = np.repeat(np.arange(len(y_true)), counts)
    weights = counts[None, :].astype(float)
    y_rep, pred_rep = y_true[rows], probs[rows].argmax(1)
    found = confusion_statistics(y_true, probs.argmax(1), 3, weights)
    assert found["f1_macro"][0] == pytest.approx(f1_score(y_rep, pred_rep, average="macro", labels=np.unique(y_rep)))
    assert found["precision_macro"][0] == pytest.approx(
        precision_score(y_rep, pred_rep, average="macro", labels=np.unique(y_rep), zero_division=0))
    assert found["recall_macro"][0] == pytest.approx(recall_score(y_rep, pred_rep, average="macro", labels=np.unique(y_rep)))
    malignant = y_true == 2
    assert binary_auc(malignant, probs[:, 2], weights)[0] == pytest.approx(roc_auc_score(y_rep == 2, probs[rows, 2]))


def test_auc_counts_ties_as_one_half_and_is_undefined_without_both_sides() -> None:
    is_positive = np.array([True, False, True, False])
    scores = np.array([0.5, 0.5, 0.9, 0.1])
    assert binary_auc(is_positive, scores, np.ones((1, 4)))[0] == pytest.approx(roc_auc_score(is_positive, scores))
    assert np.isnan(binary_auc(is_positive, scores, np.array([[1.0, 0, 1, 0]])))[0]


def test_weighted_mean_skips_undefined_values() -> None:
    values = np.array([1.0, np.nan, 0.0, 0.5])
    assert weighted_mean(values, np.array([[1.0, 5.0, 1.0, 2.0]]))[0] == pytest.approx(0.5)


def test_resamples_draw_whole_groups() -> None:
    groups = ["a", "a", "b", "c", "c", "c"]
    draw = GroupBootstrap.draw(groups, n_resamples=50, seed=0)
    assert draw.n_groups == 3 and draw.weights.shape == (50, 6)
    # Images of one group always share their weight; each resample draws three groups.
    assert (draw.weights[:, 0] == draw.weights[:, 1]).all() and (draw.weights[:, 3] == draw.weights[:, 5]).all()
    assert (draw.weights[:, [0, 2, 3]].sum(1) == 3).all()


def test_calibration_error_by_hand() -> None:
    correct = np.array([1.0, 0.0, 1.0, 1.0])
    confidence = np.array([0.95, 0.95, 0.55, 0.55])
    # Bin 0.9-1.0: accuracy 0.5 vs confidence 0.95; bin 0.5-0.6: accuracy 1 vs 0.55 -> ECE = 0.5·0.45 + 0.5·0.45.
    assert expected_calibration_error(correct, confidence, np.ones((1, 4)))[0] == pytest.approx(0.45)


def test_paired_p_value_and_interval() -> None:
    assert two_sided_p(np.full(99, 0.2)) == pytest.approx(2 / 100)
    assert two_sided_p(np.linspace(-1, 1, 101)) == pytest.approx(1.0)
    low, high = percentile_interval(np.arange(1001, dtype=float), 0.9)
    assert (low, high) == (pytest.approx(50.0), pytest.approx(950.0))


def test_group_bootstrap_interval_covers_the_true_value() -> None:
    """Clustered images (a patient effect): the 95 % group-bootstrap interval of the mean Dice-like score
    covers the true mean in at least 90 % of simulated studies."""
    rng = np.random.default_rng(7)
    true_mean, covered, studies = 0.7, 0, 200
    for study in range(studies):
        n_patients = 40
        sizes = rng.integers(1, 5, n_patients)
        patient_effect = rng.normal(0, 0.15, n_patients)
        groups = np.repeat(np.arange(n_patients), sizes).astype(str)
        scores = true_mean + np.repeat(patient_effect, sizes) + rng.normal(0, 0.05, sizes.sum())
        # Weighting by the number of images keeps the estimand the image-level mean: equal-size expectation.
        draw = GroupBootstrap.draw(groups, n_resamples=400, seed=study)
        low, high = percentile_interval(weighted_mean(scores, draw.weights), 0.95)
        covered += low <= true_mean <= high
    assert covered / studies >= 0.90
