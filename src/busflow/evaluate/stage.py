"""The ``evaluate`` stage: metrics.json and per_image.csv for one model on one test fold."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from busflow.data.preprocess import load_arrays
from busflow.evaluate.metrics import classification_metrics, lesion_mask, segmentation_metrics
from busflow.io import write_csv, write_json
from busflow.predictions import rows_of


def evaluate_model(params: Mapping[str, Any], model: str, fold: int, arrays_path: Path, predictions_path: Path, out_dir: Path) -> dict[str, Any]:
    arrays = load_arrays(arrays_path)
    classes = arrays["classes"].tolist()
    with np.load(predictions_path, allow_pickle=False) as archive:
        outputs = {key: archive[key] for key in archive.files}
    rows = rows_of(arrays["image_ids"], outputs["image_ids"], predictions_path)
    labels = arrays["labels"][rows]
    per_image = pd.DataFrame({"image_id": outputs["image_ids"].astype(str), "label": [classes[i] for i in labels]})
    tasks, classification, segmentation = [], None, None
    if "class_probs" in outputs:
        tasks.append("cls")
        probs = outputs["class_probs"]
        classification = classification_metrics(labels, probs, classes)
        per_image = per_image.assign(y_true=labels, y_pred=probs.argmax(1), confidence=probs.max(1))
    if "mask_probs" in outputs:
        tasks.append("seg")
        predicted = lesion_mask(outputs["mask_probs"], params["evaluate"]["threshold"])
        segmentation, per_image_seg = segmentation_metrics(predicted, arrays["masks"][rows] > 0, params["evaluate"]["empty_mask"])
        per_image = per_image.assign(**per_image_seg)
    metrics = {"model": model, "fold": fold, "tasks": tasks, "n_test_images": int(len(rows)),
               "classification": classification, "segmentation": segmentation}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", metrics)
    write_csv(out_dir / "per_image.csv", per_image)
    return metrics


def headline(metrics: Mapping[str, Any]) -> str:
    """One line of the main numbers of an evaluation (accuracy, ROC AUC, Dice)."""
    values = {k: v for part in ("classification", "segmentation") if metrics[part]
              for k, v in metrics[part].items() if k in ("accuracy", "roc_auc_macro", "dice")}
    return "  ".join(f"{k} {v:.3f}" for k, v in values.items() if v is not None)
