"""Metric definitions: scikit-learn for classification; Dice/IoU/HD95 written out in NumPy/SciPy.

Dice and IoU follow MONAI's DiceMetric/MeanIoU with ``ignore_empty=False``, and the 95 % Hausdorff distance
MONAI's ``compute_hausdorff_distance(percentile=95)``, exactly (tests check the equality). They are written
here because importing torch + MONAI costs an evaluate job ~20 s on a small CPU machine, for a few lines
of arithmetic. The HD95 is in pixels of the preprocessed image and undefined when either mask is empty.
Pixel precision TP / (TP + FP) and recall TP / (TP + FN) are per image, averaged over the images where
they are defined (a predicted lesion, a true lesion respectively). The pixel-pooled metrics (``pooled_dice``,
``pooled_iou``, ``pooled_precision``, ``pooled_recall``) sum TP, FP and FN over all test images of the fold
first, as papers reporting one number over a test set do; pooled Dice is then the F1 of pooled precision and
recall, and pooled IoU = Dice / (2 − Dice).

Classification: per class one-vs-rest, then macro means (over the classes present in the test part) and
support-weighted means. The operating point takes the positive class (malignant) against the rest at a
threshold chosen on the fold's validation images and applies it unchanged to the test images.

Empty ground-truth masks (normal images) are never dropped silently. Under the ``match`` convention an
image with an empty ground truth scores Dice = IoU = 1 when the predicted mask is empty as well and 0
otherwise (MONAI's ``ignore_empty=False``); under ``exclude`` such images leave the Dice/IoU mean. Either
way, the lesion-only means and the false-positive rate on empty images are reported separately. The pooled
metrics need no convention: an image with an empty ground truth adds only its false-positive pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from busflow.evaluate.statistics import expected_calibration_error

EMPTY_MASK_CONVENTIONS = {
    "match": "an image with an empty ground-truth mask scores Dice = IoU = 1 if the predicted mask is empty too, else 0",
    "exclude": "images with an empty ground-truth mask are left out of Dice/IoU (their false-positive rate is reported separately)",
}
# per_image.csv's pixel counts of each test image, from which the report resamples the pixel-pooled metrics
PIXEL_COUNT_COLUMNS = ("tp_pixels", "fp_pixels", "fn_pixels")


def lesion_mask(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Binary lesion mask: lesion probability (as read by ``busflow.predictions.load_predictions``) ≥ threshold."""
    return probs >= threshold


def _nan_to_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _one_vs_rest_auc(is_class: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC of one class against the rest; undefined (None) when the test part lacks either side."""
    if is_class.all() or not is_class.any():
        return None
    return float(roc_auc_score(is_class, scores))


def _specificity(matrix: np.ndarray, column: int) -> float | None:
    true_negative = matrix.sum() - matrix[column, :].sum() - matrix[:, column].sum() + matrix[column, column]
    negatives = matrix.sum() - matrix[column, :].sum()
    return float(true_negative / negatives) if negatives else None


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _mean_defined(values: Sequence[float | None], weights: Sequence[float] | None = None) -> float | None:
    """(Weighted) mean of the values that are defined; None when none is."""
    weights = [1.0] * len(values) if weights is None else weights
    pairs = [(v, w) for v, w in zip(values, weights) if v is not None]
    total = sum(w for _, w in pairs)
    return float(sum(v * w for v, w in pairs) / total) if total else None


def _class_block(y_true: np.ndarray, probs: np.ndarray, matrix: np.ndarray, column: int,
                 precision: float, recall: float, f1: float, support: int) -> dict[str, Any]:
    is_class = y_true == column
    specificity = _specificity(matrix, column)
    return {"precision": float(precision), "recall": float(recall), "specificity": specificity,
            "fpr": None if specificity is None else 1.0 - specificity, "f1": float(f1),
            "roc_auc": _one_vs_rest_auc(is_class, probs[:, column]),
            "pr_auc": float(average_precision_score(is_class, probs[:, column])) if is_class.any() else None,
            "support": int(support)}


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy; per class precision, recall (sensitivity), specificity, FPR, F1, ROC AUC
    and PR AUC (average precision), one class against the rest; their macro and support-weighted means."""
    labels = list(range(len(classes)))
    y_pred = probs.argmax(1)
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = {name: _class_block(y_true, probs, matrix, c, precision[c], recall[c], f1[c], support[c])
                 for c, name in enumerate(classes)}
    # Macro means run over the classes present in the test part; weighted means weigh them by support.
    present = [name for name in classes if per_class[name]["support"] > 0]
    supports = [per_class[name]["support"] for name in present]
    correct, confidence = (y_true == y_pred).astype(np.float64), probs.max(1).astype(np.float64)
    summary: dict[str, Any] = {"classes": list(classes), "accuracy": float(accuracy_score(y_true, y_pred)),
                               "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
                               "ece": _nan_to_none(float(expected_calibration_error(correct, confidence, np.ones((1, len(y_true))))[0]))}
    for metric in ("precision", "recall", "specificity", "f1", "roc_auc", "pr_auc"):
        values = [per_class[name][metric] for name in present]
        summary[f"{metric}_macro"] = _mean_defined(values)
        summary[f"{metric}_weighted"] = _mean_defined(values, supports)
    return {**summary, "per_class": per_class, "confusion_matrix": matrix.tolist()}


OPERATING_RULES = {
    "youden": "the validation threshold maximising Youden's J = sensitivity + specificity - 1",
    "sensitivity": "the highest validation threshold whose sensitivity reaches the target",
}


def operating_threshold(is_positive: np.ndarray, scores: np.ndarray, rule: str, target_sensitivity: float = 0.9) -> float | None:
    """Decision threshold on ``scores`` chosen on *validation* data; None when a side is missing there."""
    if is_positive.all() or not is_positive.any():
        return None
    fpr, tpr, thresholds = roc_curve(is_positive, scores, drop_intermediate=False)
    thresholds = np.minimum(thresholds, 1.0)  # the first threshold is +inf: "call nothing positive"
    if rule == "youden":
        youden = tpr - fpr
        return float(thresholds[np.flatnonzero(youden >= youden.max() - 1e-12)[0]])  # ties: the highest threshold
    if rule == "sensitivity":
        return float(thresholds[int(np.argmax(tpr >= target_sensitivity))])
    raise ValueError(f"evaluate.operating_point.rule: unknown rule '{rule}' (choose from {sorted(OPERATING_RULES)})")


def binary_metrics(is_positive: np.ndarray, called_positive: np.ndarray) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV, F1 and accuracy of positive/negative calls, with the counts."""
    tn, fp, fn, tp = confusion_matrix(is_positive, called_positive, labels=[False, True]).ravel().tolist()
    return {"sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp), "ppv": _ratio(tp, tp + fp),
            "npv": _ratio(tn, tn + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn), "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def operating_point(y_val: np.ndarray, probs_val: np.ndarray, y_test: np.ndarray, probs_test: np.ndarray,
                    positive: int, rule: str, target_sensitivity: float) -> dict[str, Any]:
    """Positive class against the rest at a threshold chosen on validation, applied unchanged to test."""
    threshold = operating_threshold(y_val == positive, probs_val[:, positive], rule, target_sensitivity)
    chosen_on = "validation"
    if threshold is None:  # validation lacks a side: fall back to the neutral threshold, and say so
        threshold, chosen_on = 0.5, "default 0.5 (the validation part lacks positives or negatives)"
    return {"rule": rule, "threshold": threshold, "chosen_on": chosen_on,
            "validation": binary_metrics(y_val == positive, probs_val[:, positive] >= threshold),
            "test": binary_metrics(y_test == positive, probs_test[:, positive] >= threshold)}


def _overlap(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU of boolean masks (N×H×W). An empty ground truth scores 1 if the
    prediction is empty as well, else 0 (MONAI's ``ignore_empty=False``)."""
    flat_pred, flat_true = predicted.reshape(len(predicted), -1), truth.reshape(len(truth), -1)
    intersection = (flat_pred & flat_true).sum(1).astype(np.float64)
    sizes = flat_pred.sum(1) + flat_true.sum(1)
    empty_truth, empty_pred = ~flat_true.any(1), ~flat_pred.any(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        dice = np.where(empty_truth, empty_pred.astype(np.float64), 2 * intersection / sizes)
        iou = np.where(empty_truth, empty_pred.astype(np.float64), intersection / (sizes - intersection))
    return dice, iou


def per_image_overlap(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image tumour Dice, tumour IoU and background IoU."""
    predicted, truth = predicted.astype(bool), truth.astype(bool)
    dice, iou = _overlap(predicted, truth)
    _, iou_background = _overlap(~predicted, ~truth)
    return dice, iou, iou_background


def pixel_counts(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image true-positive, false-positive and false-negative pixel counts of boolean masks (N×H×W)."""
    flat_pred = predicted.reshape(len(predicted), -1).astype(bool)
    flat_true = truth.reshape(len(truth), -1).astype(bool)
    return (flat_pred & flat_true).sum(1), (flat_pred & ~flat_true).sum(1), (~flat_pred & flat_true).sum(1)


def _precision_recall(true_positive: np.ndarray, false_positive: np.ndarray,
                      false_negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    true_positive = true_positive.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return true_positive / (true_positive + false_positive), true_positive / (true_positive + false_negative)


def pixel_precision_recall(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image TP / (TP + FP) (NaN when nothing is predicted) and TP / (TP + FN) (NaN without a lesion)."""
    return _precision_recall(*pixel_counts(predicted, truth))


def pooled_ratios(tp: np.ndarray | float, fp: np.ndarray | float, fn: np.ndarray | float) -> dict[str, np.ndarray]:
    """Pixel-pooled Dice, IoU, precision and recall of pixel counts already summed over images (scalars, or one
    total per bootstrap resample); NaN where a denominator is 0."""
    tp, fp, fn = (np.asarray(total, dtype=np.float64) for total in (tp, fp, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"pooled_dice": 2 * tp / (2 * tp + fp + fn), "pooled_iou": tp / (tp + fp + fn),
                "pooled_precision": tp / (tp + fp), "pooled_recall": tp / (tp + fn)}


def pooled_overlap(true_positive: np.ndarray, false_positive: np.ndarray, false_negative: np.ndarray) -> dict[str, float | None]:
    """Pixel-pooled Dice, IoU, precision and recall from per-image counts: the counts are summed over the images
    before dividing (None where a denominator is 0). No empty-mask convention applies: an image without a lesion
    adds only its false positives."""
    totals = (float(np.sum(counts)) for counts in (true_positive, false_positive, false_negative))
    return {name: _nan_to_none(float(value)) for name, value in pooled_ratios(*totals).items()}


def _edges(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels: the mask minus its erosion, the image border counting as outside (as MONAI)."""
    padded = np.pad(mask, 1)
    return (padded ^ ndimage.binary_erosion(padded))[1:-1, 1:-1]


def hausdorff95(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Symmetric 95th-percentile Hausdorff distance in pixels between the mask boundaries (MONAI's
    ``compute_hausdorff_distance(percentile=95)``); NaN when either mask is empty."""
    if not predicted.any() or not truth.any():
        return math.nan
    edges_pred, edges_true = _edges(predicted), _edges(truth)
    to_true = ndimage.distance_transform_edt(~edges_true)[edges_pred]
    to_pred = ndimage.distance_transform_edt(~edges_pred)[edges_true]
    return float(max(np.percentile(to_true, 95), np.percentile(to_pred, 95)))


def _nanmean_or_none(values: np.ndarray) -> float | None:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else None


def segmentation_metrics(predicted: np.ndarray, truth: np.ndarray, convention: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Aggregate and per-image segmentation metrics for boolean masks (N×H×W). ``convention`` scores empty
    ground truths in ``dice`` and ``iou_tumour``; the ``pooled_*`` values are pixel-pooled and need none."""
    if convention not in EMPTY_MASK_CONVENTIONS:
        raise ValueError(f"evaluate.empty_mask: unknown convention '{convention}' (choose from {sorted(EMPTY_MASK_CONVENTIONS)})")
    dice, iou, iou_background = per_image_overlap(predicted, truth)
    counts = pixel_counts(predicted, truth)
    precision, recall = _precision_recall(*counts)
    hd95 = np.array([hausdorff95(p, t) for p, t in zip(predicted.astype(bool), truth.astype(bool))])
    has_lesion = truth.reshape(len(truth), -1).any(1)
    predicted_any = predicted.reshape(len(predicted), -1).any(1)
    scored = np.ones(len(truth), bool) if convention == "match" else has_lesion
    summary = {
        "empty_mask_convention": convention,
        "dice": _nan_to_none(float(dice[scored].mean())) if scored.any() else None,
        "iou_tumour": _nan_to_none(float(iou[scored].mean())) if scored.any() else None,
        "iou_background": float(iou_background.mean()) if len(truth) else None,
        "pixel_accuracy": float((predicted == truth).mean()) if len(truth) else None,
        "pixel_precision": _nanmean_or_none(precision),
        "pixel_recall": _nanmean_or_none(recall),
        **pooled_overlap(*counts),
        "hd95": _nanmean_or_none(hd95),
        "n_hd95_images": int((~np.isnan(hd95)).sum()),
        "dice_lesion_images": float(dice[has_lesion].mean()) if has_lesion.any() else None,
        "iou_lesion_images": float(iou[has_lesion].mean()) if has_lesion.any() else None,
        "empty_image_false_positive_rate": float(predicted_any[~has_lesion].mean()) if (~has_lesion).any() else None,
        "n_lesion_images": int(has_lesion.sum()),
        "n_empty_images": int((~has_lesion).sum()),
    }
    pixel_accuracy = (predicted == truth).reshape(len(truth), -1).mean(1)
    per_image = {"dice": dice, "iou": iou, "pixel_accuracy": pixel_accuracy, "pixel_precision": precision, "pixel_recall": recall, "hd95": hd95,
                 "area_true": truth.reshape(len(truth), -1).sum(1),
                 "area_pred": predicted.reshape(len(predicted), -1).sum(1),
                 **dict(zip(PIXEL_COUNT_COLUMNS, counts))}
    return summary, per_image
