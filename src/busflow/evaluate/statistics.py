"""Uncertainty of pooled test metrics: a bootstrap that resamples groups (patients or duplicate clusters).

Images of one patient are not independent, so a confidence interval that resamples images is too narrow.
:class:`GroupBootstrap` draws whole groups with replacement; a resample is represented by the number of
times each image occurs in it (its weight), so every statistic below is a *weighted* version of its usual
definition, evaluated for all resamples at once (arrays of shape resamples × images). With all weights 1
each statistic equals its scikit-learn counterpart (tests check this), which gives the point estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

Statistic = Callable[[np.ndarray], np.ndarray]  # weights (B × n) -> value per resample (B)


@dataclass(frozen=True)
class GroupBootstrap:
    """Image weights of ``n_resamples`` group resamples (B × n); row ``k`` counts each image's group draws."""

    weights: np.ndarray
    n_groups: int

    @classmethod
    def draw(cls, groups: Sequence[str], n_resamples: int, seed: int) -> "GroupBootstrap":
        codes, uniques = pd.factorize(pd.Series(list(groups), dtype=str))
        rng = np.random.default_rng(seed)
        draws = rng.multinomial(len(uniques), np.full(len(uniques), 1 / len(uniques)), size=n_resamples)
        return cls(draws[:, codes].astype(np.float64), len(uniques))


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of the defined resample values (NaN, NaN when fewer than 2 are defined)."""
    defined = samples[np.isfinite(samples)]
    if defined.size < 2:
        return np.nan, np.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(defined, [tail, 100 - tail])
    return float(low), float(high)


def two_sided_p(differences: np.ndarray) -> float:
    """Bootstrap p-value of "no difference": twice the smaller tail beyond zero (add-one corrected)."""
    defined = differences[np.isfinite(differences)]
    if defined.size == 0:
        return np.nan
    tail = min((defined <= 0).sum(), (defined >= 0).sum())
    return float(min(1.0, 2 * (tail + 1) / (defined.size + 1)))


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean of the defined (non-NaN) values in every resample."""
    values = np.asarray(values, dtype=np.float64)
    defined = ~np.isnan(values)
    return _ratio(weights[:, defined] @ values[defined], weights[:, defined].sum(1))


def binary_auc(is_positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted ROC AUC (Mann-Whitney, ties count one half) per resample; NaN when a side is absent."""
    order = np.argsort(scores, kind="stable")
    ordered = scores[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # one block per distinct score
    positives = np.add.reduceat((weights * is_positive)[:, order], starts, axis=1)
    negatives = np.add.reduceat((weights * ~is_positive)[:, order], starts, axis=1)
    below = np.cumsum(negatives, axis=1) - negatives
    pairs = (positives * (below + 0.5 * negatives)).sum(1)
    return _ratio(pairs, positives.sum(1) * negatives.sum(1))


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, weights: np.ndarray) -> np.ndarray:
    """Weighted confusion matrices, B × true class × predicted class."""
    cell = y_true * n_classes + y_pred
    one_hot = np.zeros((len(cell), n_classes * n_classes))
    one_hot[np.arange(len(cell)), cell] = 1.0
    return (weights @ one_hot).reshape(-1, n_classes, n_classes)


def _present_mean(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Mean over the classes present in each resample where the value is defined (B × classes -> B)."""
    used = present & np.isfinite(values)
    return _ratio(np.where(used, values, 0.0).sum(1), used.sum(1).astype(np.float64))


def confusion_statistics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, macro precision/recall/specificity/F1 and support-weighted F1 per
    resample; macro means over the classes present (with true images) in the resample, as in metrics.json."""
    matrix = _confusion(y_true, y_pred, n_classes, weights)
    true_positive = np.diagonal(matrix, axis1=1, axis2=2)
    support, called, total = matrix.sum(2), matrix.sum(1), matrix.sum((1, 2))[:, None]
    present = support > 0
    recall = _present_mean(_ratio(true_positive, support), present)
    f1 = np.nan_to_num(_ratio(2 * true_positive, support + called))
    return {
        "accuracy": _ratio(true_positive.sum(1), total[:, 0]),
        "balanced_accuracy": recall,
        "precision_macro": _present_mean(np.nan_to_num(_ratio(true_positive, called)), present),
        "recall_macro": recall,
        "specificity_macro": _present_mean(_ratio(total - support - called + true_positive, total - support), present),
        "f1_macro": _present_mean(f1, present),
        "f1_weighted": _ratio((f1 * support).sum(1), support.sum(1)),
    }


def macro_auc(y_true: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean one-vs-rest ROC AUC over the classes with both sides in the resample."""
    aucs = np.stack([binary_auc(y_true == c, probs[:, c], weights) for c in range(probs.shape[1])], axis=1)
    return _present_mean(aucs, np.isfinite(aucs))


def expected_calibration_error(correct: np.ndarray, confidence: np.ndarray, weights: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Top-label ECE: Σ_bins (bin share) · |accuracy − mean confidence| over equal-width confidence bins."""
    bins = np.clip((confidence * n_bins).astype(int), 0, n_bins - 1)
    one_hot = np.zeros((len(bins), n_bins))
    one_hot[np.arange(len(bins)), bins] = 1.0
    count = weights @ one_hot
    gap = np.abs((weights * correct) @ one_hot - (weights * confidence) @ one_hot)
    return _ratio(gap.sum(1), count.sum(1))


def calibration_bins(correct: np.ndarray, confidence: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Reliability-diagram table: per confidence bin its range, count, mean confidence and accuracy."""
    bins = np.clip((confidence * n_bins).astype(int), 0, n_bins - 1)
    frame = pd.DataFrame({"bin": bins, "correct": correct.astype(float), "confidence": confidence})
    grouped = frame.groupby("bin").agg(n=("correct", "size"), confidence=("confidence", "mean"), accuracy=("correct", "mean"))
    grouped = grouped.reindex(range(n_bins))
    grouped.insert(0, "bin_low", np.arange(n_bins) / n_bins)
    grouped.insert(1, "bin_high", np.arange(1, n_bins + 1) / n_bins)
    return grouped.fillna({"n": 0}).reset_index(drop=True)
