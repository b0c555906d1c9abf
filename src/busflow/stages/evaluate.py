"""The ``evaluate`` stage: metrics.json and per_image.csv for one model on one test fold."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from busflow.data.preprocess import load_arrays
from busflow.evaluate.lesion_size import size_columns
from busflow.evaluate.metrics import classification_metrics, lesion_mask, operating_point, segmentation_metrics
from busflow.io import write_csv, write_json
from busflow.predictions import load_predictions, rows_of


def _classification(params: Mapping[str, Any], labels: np.ndarray, probs: np.ndarray, classes: list[str],
                    validation: tuple[np.ndarray, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics and per-image columns; the positive class's operating point is fixed on validation."""
    metrics = classification_metrics(labels, probs, classes)
    columns = {"y_true": labels, "y_pred": probs.argmax(1), "confidence": probs.max(1)}
    setting = params["evaluate"]["operating_point"]
    if setting["positive_class"] in classes:
        positive = classes.index(setting["positive_class"])
        point = operating_point(*validation, labels, probs, positive, setting["rule"], setting["target_sensitivity"])
        metrics["operating_point"] = {"positive_class": setting["positive_class"], **point}
        metrics["sensitivity_at_threshold"] = point["test"]["sensitivity"]
        metrics["specificity_at_threshold"] = point["test"]["specificity"]
        columns["positive_call"] = probs[:, positive] >= point["threshold"]
    return metrics, columns


def evaluate_model(params: Mapping[str, Any], model: str, fold: int, arrays_path: Path, predictions_path: Path, out_dir: Path,
                   validation_arrays_path: Path | None = None) -> dict[str, Any]:
    """metrics.json and per_image.csv of one model's test predictions on one fold.

    The validation labels come from ``validation_arrays_path`` when the validation images belong to another
    dataset than the test images (external validation keeps the in-domain operating point).
    """
    arrays = load_arrays(arrays_path)
    validation_arrays = load_arrays(validation_arrays_path) if validation_arrays_path else arrays
    classes = arrays["classes"].tolist()
    test = load_predictions(predictions_path)
    rows = rows_of(arrays["image_ids"], test.image_ids, predictions_path)
    labels = arrays["labels"][rows]
    per_image = pd.DataFrame({"image_id": test.image_ids, "label": [classes[i] for i in labels]})
    tasks, classification, segmentation = [], None, None
    if "class_probs" in test.outputs:
        tasks.append("cls")
        val = load_predictions(predictions_path, "val")
        val_labels = validation_arrays["labels"][rows_of(validation_arrays["image_ids"], val.image_ids, predictions_path)]
        classification, columns = _classification(params, labels, test.outputs["class_probs"], classes,
                                                  (val_labels, val.outputs["class_probs"]))
        per_image = per_image.assign(**columns)
    if "mask_probs" in test.outputs:
        tasks.append("seg")
        predicted = lesion_mask(test.outputs["mask_probs"], params["evaluate"]["threshold"])
        truth = arrays["masks"][rows] > 0
        segmentation, per_image_seg = segmentation_metrics(predicted, truth, params["evaluate"]["empty_mask"])
        per_image = per_image.assign(**per_image_seg)
        if "pixel_spacing_mm" in arrays:  # arrays without the images' geometry (built by hand): no sizes in mm
            per_image = per_image.assign(**size_columns(predicted, truth, arrays["pixel_spacing_mm"][rows],
                                                        arrays["original_shape"][rows]))
    metrics = {"model": model, "fold": fold, "tasks": tasks, "n_test_images": len(rows),
               "classification": classification, "segmentation": segmentation}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", metrics)
    write_csv(out_dir / "per_image.csv", per_image)
    return metrics


def run(params: Mapping[str, Any], *, model: str, fold: int, arrays: Path, predictions: Path, out: Path,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """metrics.json and per_image.csv of ``model``'s test predictions on fold ``fold``, written into ``out``."""
    metrics = evaluate_model(params, model, fold, arrays, predictions, out)
    log(f"[{model} fold{fold}] {headline(metrics)}")
    return metrics


def headline(metrics: Mapping[str, Any]) -> str:
    """One line of the main numbers of an evaluation (accuracy, ROC AUC, Dice)."""
    values = {k: v for part in ("classification", "segmentation") if metrics[part]
              for k, v in metrics[part].items() if k in ("accuracy", "roc_auc_macro", "dice")}
    return "  ".join(f"{k} {v:.3f}" for k, v in values.items() if v is not None)
