"""How well each segmenter measures lesions in mm (``tables/lesion_size.csv``), where the images' pixel spacing is
known: the evaluate stage's per-image true and predicted longest diameter and area, pooled over the test folds.

A lesion the model missed (no predicted lesion) has no diameter to compare: it is counted (``missed``), and the
errors are taken over the lesions it found. Each error is a mean over those images with a group-bootstrap interval
(patients or duplicate clusters), like the pooled metrics of :mod:`busflow.report.uncertainty`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from busflow.evaluate.statistics import GroupBootstrap, percentile_interval, weighted_mean
from busflow.report.loading import RunResults
from busflow.report.uncertainty import BootstrapSettings, model_cases, model_seed

LESION_SIZE_COLUMNS = ["model", "statistic", "estimate", "ci_low", "ci_high", "n_lesion_images", "n_measured",
                       "n_groups", "missed_fraction", "true_diameter_median_mm", "confidence", "resamples"]
# statistic -> its label in the report
STATISTICS = {
    "diameter_abs_error_mm": "mean |error| of the longest diameter (mm)",
    "diameter_error_mm": "mean error of the longest diameter (mm)",
    "area_abs_relative_error": "mean |error| of the area / true area",
}
TRUE, PREDICTED = "lesion_diameter_mm_true", "lesion_diameter_mm_pred"


def _errors(measured: pd.DataFrame) -> dict[str, np.ndarray]:
    diameter_error = (measured[PREDICTED] - measured[TRUE]).to_numpy(dtype=np.float64)
    area_true = measured["lesion_area_mm2_true"].to_numpy(dtype=np.float64)
    area_error = np.abs(measured["lesion_area_mm2_pred"].to_numpy(dtype=np.float64) - area_true) / area_true
    return {"diameter_abs_error_mm": np.abs(diameter_error), "diameter_error_mm": diameter_error,
            "area_abs_relative_error": area_error}


def model_rows(run: RunResults, model: str, cases: pd.DataFrame, settings: BootstrapSettings) -> list[dict[str, Any]]:
    """The rows of one model: each statistic over its measured lesions, with its interval."""
    lesions = cases[cases[TRUE].notna()]
    measured = lesions[lesions[PREDICTED].notna()]
    if measured.empty:
        return []
    draw = GroupBootstrap.draw(measured["group_id"], settings.resamples, model_seed(run, model, settings))
    shared = {"n_lesion_images": len(lesions), "n_measured": len(measured), "n_groups": draw.n_groups,
              "missed_fraction": 1 - len(measured) / len(lesions),
              "true_diameter_median_mm": float(lesions[TRUE].median()),
              "confidence": settings.confidence, "resamples": settings.resamples}
    rows = []
    for statistic, values in _errors(measured).items():
        low, high = percentile_interval(weighted_mean(values, draw.weights), settings.confidence)
        rows.append({"model": model, "statistic": statistic, "estimate": float(values.mean()), "ci_low": low,
                     "ci_high": high, **shared})
    return rows


def lesion_size_table(run: RunResults, settings: BootstrapSettings) -> pd.DataFrame:
    """Per segmenter whose per-image tables measure lesions in mm, the size errors of :data:`STATISTICS`; empty
    when no image of the run has a known pixel spacing."""
    rows = []
    for model in run.models:
        cases = model_cases(run, model)
        if TRUE in cases.columns:
            rows += model_rows(run, model, cases, settings)
    return pd.DataFrame(rows, columns=LESION_SIZE_COLUMNS)
