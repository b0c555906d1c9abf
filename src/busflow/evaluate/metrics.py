"""Metric definitions: scikit-learn for classification; Dice/IoU written out in NumPy.

Dice and IoU follow MONAI's DiceMetric/MeanIoU with ``ignore_empty=False`` exactly (a test checks the
equality). They are written here because importing torch + MONAI costs an evaluate job ~20 s on a small
CPU machine, for two lines of arithmetic.

Empty ground-truth masks (normal images) are never dropped silently. Under the ``match`` convention an
image with an empty ground truth scores Dice = IoU = 1 when the predicted mask is empty as well and 0
otherwise (MONAI's ``ignore_empty=False``); under ``exclude`` such images leave the Dice/IoU mean. Either
way, the lesion-only means and the false-positive rate on empty images are reported separately.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

EMPTY_MASK_CONVENTIONS = {
    "match": "an image with an empty ground-truth mask scores Dice = IoU = 1 if the predicted mask is empty too, else 0",
    "exclude": "images with an empty ground-truth mask are left out of Dice/IoU (their false-positive rate is reported separately)",
}


def lesion_mask(stored_probs: np.ndarray, threshold: float) -> np.ndarray:
    """Binary lesion mask from probabilities stored as uint8 (probability × 255) in predictions.npz."""
    return stored_probs >= round(threshold * 255)


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


def _mean_defined(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro precision/recall/specificity/F1, one-vs-rest ROC AUC, per class."""
    labels = list(range(len(classes)))
    y_pred = probs.argmax(1)
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = {}
    for column, name in enumerate(classes):
        per_class[name] = {"precision": float(precision[column]), "recall": float(recall[column]),
                           "specificity": _specificity(matrix, column), "f1": float(f1[column]),
                           "roc_auc": _one_vs_rest_auc(y_true == column, probs[:, column]), "support": int(support[column])}
    present = [name for name in classes if per_class[name]["support"] > 0]
    return {
        "classes": list(classes),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        # Macro means run over the classes present in the test part.
        "precision_macro": _mean_defined([per_class[c]["precision"] for c in present]),
        "recall_macro": _mean_defined([per_class[c]["recall"] for c in present]),
        "specificity_macro": _mean_defined([per_class[c]["specificity"] for c in present]),
        "f1_macro": _mean_defined([per_class[c]["f1"] for c in present]),
        "roc_auc_macro": _mean_defined([per_class[c]["roc_auc"] for c in present]),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


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


def segmentation_metrics(predicted: np.ndarray, truth: np.ndarray, convention: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Aggregate and per-image segmentation metrics for boolean masks (N×H×W)."""
    if convention not in EMPTY_MASK_CONVENTIONS:
        raise ValueError(f"evaluate.empty_mask: unknown convention '{convention}' (choose from {sorted(EMPTY_MASK_CONVENTIONS)})")
    dice, iou, iou_background = per_image_overlap(predicted, truth)
    has_lesion = truth.reshape(len(truth), -1).any(1)
    predicted_any = predicted.reshape(len(predicted), -1).any(1)
    scored = np.ones(len(truth), bool) if convention == "match" else has_lesion
    summary = {
        "empty_mask_convention": convention,
        "dice": _nan_to_none(float(dice[scored].mean())) if scored.any() else None,
        "iou_tumour": _nan_to_none(float(iou[scored].mean())) if scored.any() else None,
        "iou_background": float(iou_background.mean()) if len(truth) else None,
        "pixel_accuracy": float((predicted == truth).mean()) if len(truth) else None,
        "dice_lesion_images": float(dice[has_lesion].mean()) if has_lesion.any() else None,
        "iou_lesion_images": float(iou[has_lesion].mean()) if has_lesion.any() else None,
        "empty_image_false_positive_rate": float(predicted_any[~has_lesion].mean()) if (~has_lesion).any() else None,
        "n_lesion_images": int(has_lesion.sum()),
        "n_empty_images": int((~has_lesion).sum()),
    }
    per_image = {"dice": dice, "iou": iou, "area_true": truth.reshape(len(truth), -1).sum(1),
                 "area_pred": predicted.reshape(len(predicted), -1).sum(1)}
    return summary, per_image
