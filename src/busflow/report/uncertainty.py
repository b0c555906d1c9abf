"""Pooled metrics with group-bootstrap confidence intervals, and paired comparisons with a reference model.

Each model's test images of all folds are pooled (every image is tested once under k-fold). A statistic is
named by its path in metrics.json (``classification.accuracy``, ``classification.per_class.malignant.recall``,
``segmentation.dice``), so a pooled value and its interval sit beside the per-fold values of the same name.
Resamples draw whole groups (patients or duplicate clusters, the ``group_id`` of predictions.csv).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from busflow.errors import DatasetError
from busflow.evaluate.catalogue import CATALOGUE
from busflow.evaluate.metrics import PIXEL_COUNT_COLUMNS, pooled_ratios
from busflow.evaluate.statistics import (
    GroupBootstrap,
    binary_auc,
    calibration_bins,
    confusion_statistics,
    expected_calibration_error,
    macro_auc,
    percentile_interval,
    two_sided_p,
    weighted_mean,
)
from busflow.layout import SPLIT_FILES
from busflow.report.loading import FoldResult, RunResults

INTERVAL_COLUMNS = ["model", "metric", "n_images", "n_groups", "estimate", "ci_low", "ci_high", "confidence", "resamples"]
FAILURE_COLUMNS = ["model", "fold", "image_id", "label", "predicted", "confidence"]
FAILURES_PER_MODEL = 6
CALIBRATION_COLUMNS = ["model", "bin_low", "bin_high", "n", "confidence", "accuracy"]
COMPARISON_COLUMNS = ["model", "reference", "metric", "n_images", "n_groups", "model_value", "reference_value",
                      "difference", "ci_low", "ci_high", "p_value"]
SEG_PER_IMAGE = {m.name: m.per_image for m in CATALOGUE if m.per_image}  # pooled metric -> per_image.csv column
# Compared against the reference model (one row each when both models report the metric).
COMPARED = tuple(m.path for m in CATALOGUE if m.paired)


@dataclass(frozen=True)
class BootstrapSettings:
    resamples: int
    confidence: float
    seed: int


def bootstrap_settings(params: Mapping[str, Any]) -> BootstrapSettings:
    """``evaluate.bootstrap`` of params (1000 resamples, 95 % by default) and the run's seed."""
    bootstrap = (params.get("evaluate") or {}).get("bootstrap") or {}
    return BootstrapSettings(int(bootstrap.get("resamples", 1000)), float(bootstrap.get("confidence", 0.95)),
                             int(params.get("seed", 0)))


def model_cases(run: RunResults, model: str) -> pd.DataFrame:
    """One row per pooled test image: fold, group (from the split's folds table), per-image evaluation
    columns and class probabilities."""
    return results_cases(run, model, run.of_model(model))


def results_cases(run: RunResults, model: str, results: Sequence[FoldResult]) -> pd.DataFrame:
    """:func:`model_cases` of some fold results of ``model`` (e.g. its image-level folds)."""
    frame = _pooled_rows(results)
    if not frame.empty:
        frame["group_id"] = group_ids(run, model, frame["image_id"])
    return frame


def external_cases(results: Sequence[FoldResult]) -> pd.DataFrame:
    """One row per fold model and image of an external dataset (every fold model tested every image, so an image
    counts once per fold model), grouped by the external dataset's patients, or by image where it names none: the
    ``group_id`` the external stage wrote into predictions.csv. A resampled group brings all its rows along."""
    for result in results:
        path = result.directory / "predictions.csv"
        if result.predictions is None or "group_id" not in result.predictions:
            raise DatasetError(f"{path}: no group_id column to resample by")
        missing = sorted(set(result.per_image["image_id"].astype(str)) - set(result.predictions["image_id"].astype(str)))
        if missing:
            raise DatasetError(f"{path}: no group_id for {len(missing)} image(s) of per_image.csv: {missing[:10]}")
    frame = _pooled_rows(results, ("group_id",))
    if not frame.empty:
        frame["group_id"] = frame["group_id"].astype(str)
    return frame


def _pooled_rows(results: Sequence[FoldResult], keep: Sequence[str] = ()) -> pd.DataFrame:
    """The per_image.csv rows of ``results`` with their fold, and the class probabilities (and the ``keep``
    columns) of predictions.csv."""
    parts = []
    for result in results:
        cases = result.per_image.assign(fold=result.fold)
        if result.predictions is not None:
            columns = [*keep, *(c for c in result.predictions.columns if c.startswith("prob_"))]
            cases = cases.merge(result.predictions[["image_id", *columns]], on="image_id", how="left")
        parts.append(cases)
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if not frame.empty:
        frame["image_id"] = frame["image_id"].astype(str)
    return frame


def group_ids(run: RunResults, model: str, image_ids: pd.Series) -> list[str]:
    """The group of each image from the split's folds table; an image it does not list is an error, not a group
    of its own (that would make the bootstrap treat it as independent of its patient's other images)."""
    group_of = dict(zip(run.folds_table["image_id"].astype(str), run.folds_table["group_id"].astype(str)))
    unknown = sorted(set(image_ids) - set(group_of))
    if unknown:
        raise DatasetError(f"{run.root / SPLIT_FILES['folds']}: no group_id for {len(unknown)} test image(s) in the "
                           f"per_image.csv of {model}: {unknown[:10]}")
    return [group_of[i] for i in image_ids]


def _class_statistics(name: str, is_class: np.ndarray, called: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """One class against the rest: recall, precision, specificity, FPR and F1 per resample."""
    def total(selected: np.ndarray) -> np.ndarray:
        return weights @ selected.astype(np.float64)

    tp, fp, fn, tn = total(is_class & called), total(~is_class & called), total(is_class & ~called), total(~is_class & ~called)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = {"recall": tp / (tp + fn), "precision": tp / (tp + fp), "specificity": tn / (tn + fp),
                  "fpr": fp / (tn + fp), "f1": 2 * tp / (2 * tp + fp + fn)}
    return {f"classification.per_class.{name}.{metric}": value for metric, value in values.items()}


def _classification_statistics(cases: pd.DataFrame, classes: Sequence[str], positive_class: str, weights: np.ndarray) -> dict[str, np.ndarray]:
    y_true, y_pred = cases["y_true"].to_numpy(int), cases["y_pred"].to_numpy(int)
    out = {f"classification.{k}": v for k, v in confusion_statistics(y_true, y_pred, len(classes), weights).items()}
    out["classification.ece"] = expected_calibration_error((y_true == y_pred).astype(float), cases["confidence"].to_numpy(float), weights)
    probs = [f"prob_{c}" for c in classes]
    if set(probs) <= set(cases.columns):
        out["classification.roc_auc_macro"] = macro_auc(y_true, cases[probs].to_numpy(float), weights)
    for column, name in enumerate(classes):
        out.update(_class_statistics(name, y_true == column, y_pred == column, weights))
        if f"prob_{name}" in cases:
            out[f"classification.per_class.{name}.roc_auc"] = binary_auc(y_true == column, cases[f"prob_{name}"].to_numpy(float), weights)
    if "positive_call" in cases:
        positive = cases["label"].astype(str).to_numpy() == positive_class
        called = cases["positive_call"].astype(bool).to_numpy()
        out["classification.sensitivity_at_threshold"] = weighted_mean(np.where(positive, called, np.nan), weights)
        out["classification.specificity_at_threshold"] = weighted_mean(np.where(~positive, ~called, np.nan), weights)
    return out


def _segmentation_statistics(cases: pd.DataFrame, convention: str, weights: np.ndarray) -> dict[str, np.ndarray]:
    has_lesion = cases["area_true"].to_numpy(float) > 0
    scored = np.ones(len(cases), bool) if convention == "match" else has_lesion
    out = {}
    for metric, column in SEG_PER_IMAGE.items():
        if column in cases:
            values = cases[column].to_numpy(float)
            out[f"segmentation.{metric}"] = weighted_mean(np.where(scored, values, np.nan) if metric in ("dice", "iou_tumour") else values, weights)
    if "pixel_accuracy" in cases:
        out["segmentation.pixel_accuracy"] = weighted_mean(cases["pixel_accuracy"].to_numpy(float), weights)
    out["segmentation.dice_lesion_images"] = weighted_mean(np.where(has_lesion, cases["dice"], np.nan), weights)
    out["segmentation.iou_lesion_images"] = weighted_mean(np.where(has_lesion, cases["iou"], np.nan), weights)
    predicted_any = cases["area_pred"].to_numpy(float) > 0
    out["segmentation.empty_image_false_positive_rate"] = weighted_mean(np.where(has_lesion, np.nan, predicted_any), weights)
    if set(PIXEL_COUNT_COLUMNS) <= set(cases.columns):  # per_image.csv written before the counts has none
        totals = (weights @ cases[column].to_numpy(np.float64) for column in PIXEL_COUNT_COLUMNS)
        out.update({f"segmentation.{name}": value for name, value in pooled_ratios(*totals).items()})
    return out


def statistics_of(run: RunResults, model: str, cases: pd.DataFrame, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every pooled statistic of ``model`` on ``cases`` for each row of ``weights``."""
    out: dict[str, np.ndarray] = {}
    results = run.of_model(model)
    if run.has_classification(model) and "y_pred" in cases:
        classes = results[0].classification.get("classes") or run.classes
        point = next((r.classification.get("operating_point") for r in results if r.classification), None) or {}
        out.update(_classification_statistics(cases, classes, point.get("positive_class", "malignant"), weights))
    if run.has_segmentation(model) and "dice" in cases:
        convention = next(r.segmentation.get("empty_mask_convention", "match") for r in results if r.segmentation)
        out.update(_segmentation_statistics(cases, convention, weights))
    return out


def model_seed(run: RunResults, model: str, settings: BootstrapSettings) -> int:
    """The seed of a model's group resamples: the run's seed offset by the model's place in the run."""
    return settings.seed + (run.models.index(model) if model in run.models else 0)


def interval_table(run: RunResults, settings: BootstrapSettings) -> pd.DataFrame:
    """Per model and pooled statistic: the estimate on all test images and its group-bootstrap interval."""
    rows = []
    for model in run.models:
        cases = model_cases(run, model)
        if not cases.empty:
            rows += interval_rows(run, model, cases, settings)
    return pd.DataFrame(rows, columns=INTERVAL_COLUMNS)


def interval_rows(run: RunResults, model: str, cases: pd.DataFrame, settings: BootstrapSettings,
                  metrics: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Rows of :data:`INTERVAL_COLUMNS`: every pooled statistic of ``model`` (or those of ``metrics``) on ``cases``
    and its group-bootstrap interval; the model's place in the run seeds the resampling."""
    draw = GroupBootstrap.draw(cases["group_id"], settings.resamples, model_seed(run, model, settings))
    estimates = statistics_of(run, model, cases, np.ones((1, len(cases))))
    rows = []
    for metric, samples in statistics_of(run, model, cases, draw.weights).items():
        if metrics is not None and metric not in metrics:
            continue
        low, high = percentile_interval(samples, settings.confidence)
        rows.append({"model": model, "metric": metric, "n_images": len(cases), "n_groups": draw.n_groups,
                     "estimate": float(estimates[metric][0]), "ci_low": low, "ci_high": high,
                     "confidence": settings.confidence, "resamples": settings.resamples})
    return rows


def comparison_table(run: RunResults, reference: str | None, settings: BootstrapSettings) -> pd.DataFrame:
    """Each model minus the reference on the test images both predicted, with a paired group bootstrap:
    the same resampled groups enter both models' statistics, so the interval reflects the paired design."""
    reference = reference or (run.models[0] if run.models else None)
    rows = []
    if reference not in run.models:
        return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    reference_cases = model_cases(run, reference)
    for model in run.models:
        if model == reference or reference_cases.empty:
            continue
        cases = model_cases(run, model)
        common = sorted(set(cases.get("image_id", ())) & set(reference_cases["image_id"]))
        if not common:
            continue
        ours = cases.set_index("image_id").loc[common].reset_index()
        theirs = reference_cases.set_index("image_id").loc[common].reset_index()
        draw = GroupBootstrap.draw(ours["group_id"], settings.resamples, settings.seed)
        ones = np.ones((1, len(common)))
        point_ours, point_theirs = statistics_of(run, model, ours, ones), statistics_of(run, reference, theirs, ones)
        samples_ours, samples_theirs = statistics_of(run, model, ours, draw.weights), statistics_of(run, reference, theirs, draw.weights)
        for metric in COMPARED:
            if metric not in point_ours or metric not in point_theirs:
                continue
            differences = samples_ours[metric] - samples_theirs[metric]
            low, high = percentile_interval(differences, settings.confidence)
            mine, theirs_value = float(point_ours[metric][0]), float(point_theirs[metric][0])
            rows.append({"model": model, "reference": reference, "metric": metric, "n_images": len(common),
                         "n_groups": draw.n_groups, "model_value": mine, "reference_value": theirs_value,
                         "difference": mine - theirs_value, "ci_low": low, "ci_high": high, "p_value": two_sided_p(differences)})
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def interval_lookup(intervals: pd.DataFrame) -> Mapping[tuple[str, str], tuple[float, float, float]]:
    """(model, metric path) -> (estimate, ci_low, ci_high)."""
    return {(r.model, r.metric): (r.estimate, r.ci_low, r.ci_high) for r in intervals.itertuples()}


def calibration_table(run: RunResults) -> pd.DataFrame:
    """Reliability-diagram bins of each classifier's top-label confidence, pooled over folds."""
    parts = []
    for model in run.cls_models:
        cases = model_cases(run, model)
        if cases.empty or "confidence" not in cases:
            continue
        correct = (cases["y_true"].to_numpy(int) == cases["y_pred"].to_numpy(int)).astype(float)
        parts.append(calibration_bins(correct, cases["confidence"].to_numpy(float)).assign(model=model))
    return pd.concat(parts, ignore_index=True)[CALIBRATION_COLUMNS] if parts else pd.DataFrame(columns=CALIBRATION_COLUMNS)


def failure_table(run: RunResults, per_model: int = FAILURES_PER_MODEL) -> pd.DataFrame:
    """Per classifier, the misclassified test images it was most confident about (the failure gallery)."""
    parts = []
    for model in run.cls_models:
        cases = model_cases(run, model)
        if cases.empty or "y_pred" not in cases:
            continue
        classes = list(run.of_model(model)[0].classification.get("classes") or run.classes)
        wrong = cases[cases["y_true"].astype(int) != cases["y_pred"].astype(int)]
        wrong = wrong.sort_values(["confidence", "image_id"], ascending=[False, True], kind="mergesort").head(per_model)
        parts.append(pd.DataFrame({"model": model, "fold": wrong["fold"].astype(int), "image_id": wrong["image_id"],
                                   "label": wrong["label"], "predicted": [classes[int(i)] for i in wrong["y_pred"]],
                                   "confidence": wrong["confidence"].astype(float)}))
    return pd.concat(parts, ignore_index=True)[FAILURE_COLUMNS] if parts else pd.DataFrame(columns=FAILURE_COLUMNS)
