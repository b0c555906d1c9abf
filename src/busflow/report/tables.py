"""Report tables: dataset summary, split audit, per-fold metrics, per-class metrics, leaderboard.

All functions return plain :class:`pandas.DataFrame` objects with a fixed column order so the
CSV files are deterministic and header-only (but valid) when a section does not apply.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from .loading import FoldResult, RunResults, to_float

CLS_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "precision_macro",
    "recall_macro",
    "specificity_macro",
    "f1_macro",
    "roc_auc_macro",
)
SEG_METRICS: tuple[str, ...] = (
    "dice",
    "iou_tumour",
    "iou_background",
    "pixel_accuracy",
    "dice_lesion_images",
    "iou_lesion_images",
    "empty_image_false_positive_rate",
)
SEG_COUNTS: tuple[str, ...] = ("n_lesion_images", "n_empty_images")
PER_CLASS_METRICS: tuple[str, ...] = ("precision", "recall", "specificity", "f1", "roc_auc", "support")
# Metrics summarised in the leaderboard (mean, sd and pooled columns for each).
LEADERBOARD_METRICS: tuple[str, ...] = CLS_METRICS + (
    "dice",
    "iou_tumour",
    "pixel_accuracy",
    "dice_lesion_images",
    "iou_lesion_images",
    "empty_image_false_positive_rate",
)
ROLES: tuple[str, ...] = ("train", "val", "test")


# --------------------------------------------------------------------------- dataset & split


def dataset_table(index: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Images and patients per class, plus an ``all`` row."""
    rows = []
    for name in [*classes, *sorted(set(index["label"].astype(str)) - set(classes))]:
        part = index[index["label"].astype(str) == name]
        rows.append(_count_row(name, part, len(index)))
    rows.append(_count_row("all", index, len(index)))
    return pd.DataFrame(rows, columns=["class", "images", "patients", "fraction_images"])


def _count_row(name: str, part: pd.DataFrame, total: int) -> dict[str, object]:
    patients = part["patient_id"].nunique() if "patient_id" in part else math.nan
    return {
        "class": name,
        "images": len(part),
        "patients": patients,
        "fraction_images": len(part) / total if total else math.nan,
    }


def split_table(run: RunResults) -> pd.DataFrame:
    """Per fold and role: images, patients, groups and class counts, plus the overlap check."""
    table = _split_frame(run)
    columns = ["fold", "role", "images", "patients", "groups", *run.classes, "patient_overlap"]
    rows = []
    for fold in run.folds:
        col = f"fold{fold}"
        if col not in table:
            continue
        overlap = overlap_text(table, col)
        for role in _roles_present(table[col]):
            part = table[table[col] == role]
            counts = part["label"].astype(str).value_counts()
            rows.append(
                {
                    "fold": fold,
                    "role": role,
                    "images": len(part),
                    "patients": part["patient_id"].nunique(),
                    "groups": part["group_id"].nunique(),
                    **{c: int(counts.get(c, 0)) for c in run.classes},
                    "patient_overlap": overlap,
                }
            )
    return pd.DataFrame(rows, columns=columns)


def _split_frame(run: RunResults) -> pd.DataFrame:
    """folds.csv joined with patient ids (from index.csv) and labels."""
    table = run.folds_table.copy()
    wanted = [c for c in ("patient_id", "label") if c not in table and c in run.index]
    if wanted:
        table = table.merge(run.index[["image_id", *wanted]], on="image_id", how="left")
    if "patient_id" not in table:
        table["patient_id"] = table["group_id"]
    table["patient_id"] = table["patient_id"].fillna(table["group_id"])
    return table


def _roles_present(roles: pd.Series) -> list[str]:
    present = set(roles.dropna().astype(str))
    return [r for r in ROLES if r in present] + sorted(present - set(ROLES))


def overlap_text(table: pd.DataFrame, fold_col: str) -> str:
    """``"none"`` or a ``; ``-joined list of groups/patients that appear in more than one role."""
    leaks = _leaks(table, "group_id", fold_col, "group")
    group_names = {name for name, _ in leaks}
    leaks += [(n, r) for n, r in _leaks(table, "patient_id", fold_col, "patient") if n not in group_names]
    if not leaks:
        return "none"
    return "; ".join(f"{name} ({roles})" for name, roles in leaks)


def _leaks(table: pd.DataFrame, key: str, fold_col: str, kind: str) -> list[tuple[str, str]]:
    valid = table.dropna(subset=[key, fold_col])
    roles = valid.groupby(valid[key].astype(str))[fold_col].agg(lambda s: sorted(set(s.astype(str))))
    out = []
    for ident, role_list in roles.items():
        if len(role_list) > 1:
            ordered = [r for r in ROLES if r in role_list] + [r for r in role_list if r not in ROLES]
            out.append((f"{kind} {ident}", "/".join(ordered)))
    return sorted(out)


def overlap_by_fold(split: pd.DataFrame) -> dict[int, str]:
    """Fold -> overlap text, read back from :func:`split_table` output."""
    if split.empty:
        return {}
    first = split.drop_duplicates("fold")
    return {int(f): str(t) for f, t in zip(first["fold"], first["patient_overlap"])}


# --------------------------------------------------------------------------- per-fold metrics


def _fold_table(run: RunResults, part: str, metrics: tuple[str, ...]) -> pd.DataFrame:
    """One row per model x fold with the scalar ``metrics`` of one part ('classification'/'segmentation')."""
    columns = ["model", "fold", "n_test_images", *metrics]
    rows = [
        {"model": r.model, "fold": r.fold, "n_test_images": r.metrics.get("n_test_images"),
         **{m: to_float(getattr(r, part).get(m)) for m in metrics}}
        for r in run.results
        if getattr(r, part) is not None
    ]
    return pd.DataFrame(rows, columns=columns)


def classification_table(run: RunResults) -> pd.DataFrame:
    """One row per model x fold with all scalar classification metrics."""
    return _fold_table(run, "classification", tuple(CLS_METRICS))


def segmentation_table(run: RunResults) -> pd.DataFrame:
    """One row per model x fold with all scalar segmentation metrics."""
    return _fold_table(run, "segmentation", (*SEG_METRICS, *SEG_COUNTS))


def per_class_table(run: RunResults) -> pd.DataFrame:
    """One row per model x fold x class."""
    columns = ["model", "fold", "class", *PER_CLASS_METRICS]
    rows = []
    for r in run.results:
        if r.classification is None:
            continue
        per_class = r.classification.get("per_class") or {}
        for name in model_classes(r, run.classes):
            values = per_class.get(name) or {}
            rows.append({"model": r.model, "fold": r.fold, "class": name,
                         **{m: to_float(values.get(m)) for m in PER_CLASS_METRICS}})
    return pd.DataFrame(rows, columns=columns)


def model_classes(result: FoldResult, default: Sequence[str]) -> list[str]:
    """Class names of a classification result (from metrics.json, else the run's classes)."""
    cls = result.classification or {}
    return [str(c) for c in (cls.get("classes") or default)]


# --------------------------------------------------------------------------- leaderboard


def leaderboard_table(run: RunResults, cls_table: pd.DataFrame, seg_table: pd.DataFrame) -> pd.DataFrame:
    """One row per model: mean and sd over folds (NaN-skipping, sd with ddof=1) plus pooled values."""
    columns = ["model", "tasks", "n_folds"]
    for metric in LEADERBOARD_METRICS:
        columns += [f"{metric}_mean", f"{metric}_sd", f"{metric}_pooled"]
    rows = []
    for model in run.models:
        row: dict[str, object] = {"model": model, "tasks": model_tasks(run, model),
                                  "n_folds": len(run.of_model(model))}
        pooled = {**pooled_classification(run, model), **pooled_segmentation(run, model)}
        for metric in LEADERBOARD_METRICS:
            table = cls_table if metric in CLS_METRICS else seg_table
            values = table.loc[table["model"] == model, metric].astype(float)
            row[f"{metric}_mean"] = values.mean() if values.notna().any() else math.nan
            row[f"{metric}_sd"] = values.std(ddof=1) if values.notna().sum() > 1 else math.nan
            row[f"{metric}_pooled"] = pooled.get(metric, math.nan)
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def model_tasks(run: RunResults, model: str) -> str:
    """``cls``, ``seg`` or ``cls+seg`` from which metric blocks the model reported."""
    tasks = [t for t, has in (("cls", run.has_classification(model)), ("seg", run.has_segmentation(model))) if has]
    return "+".join(tasks) if tasks else "none"


def pooled_predictions(run: RunResults, model: str) -> pd.DataFrame:
    """Test predictions of all folds of a model, concatenated with a ``fold`` column."""
    parts = [r.predictions.assign(fold=r.fold) for r in run.of_model(model) if r.predictions is not None]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def pooled_classification(run: RunResults, model: str) -> dict[str, float]:
    """Classification metrics on the pooled test predictions of all folds."""
    preds = pooled_predictions(run, model)
    results = run.of_model(model)
    if preds.empty or not results or not {"y_true", "y_pred"} <= set(preds.columns):
        return {}
    classes = model_classes(results[0], run.classes)
    labels = list(range(len(classes)))
    y_true, y_pred = preds["y_true"].to_numpy(int), preds["y_pred"].to_numpy(int)
    prec, rec, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro",
                                                       zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "precision_macro": float(prec),
        "recall_macro": float(rec),
        "specificity_macro": _macro_specificity(y_true, y_pred, labels),
        "f1_macro": float(f1),
        "roc_auc_macro": _macro_auc(preds, classes),
    }


def _macro_specificity(y_true: np.ndarray, y_pred: np.ndarray, labels: list[int]) -> float:
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    total = cm.sum()
    spec = []
    for i in labels:
        fp = cm[:, i].sum() - cm[i, i]
        tn = total - cm[i, :].sum() - fp
        if tn + fp > 0:
            spec.append(tn / (tn + fp))
    return float(np.mean(spec)) if spec else math.nan


def one_vs_rest_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of a binary problem, NaN when only one class is present."""
    if len(np.unique(y_true)) < 2:
        return math.nan
    return float(roc_auc_score(y_true, scores))


def _macro_auc(preds: pd.DataFrame, classes: Sequence[str]) -> float:
    """Mean one-vs-rest AUC over classes with both positives and negatives in the pooled set."""
    aucs = []
    for i, name in enumerate(classes):
        col = f"prob_{name}"
        if col in preds:
            aucs.append(one_vs_rest_auc((preds["y_true"].to_numpy(int) == i).astype(int), preds[col].to_numpy(float)))
    aucs = [a for a in aucs if not math.isnan(a)]
    return float(np.mean(aucs)) if aucs else math.nan


def pooled_per_image(run: RunResults, model: str) -> pd.DataFrame:
    """Per-image segmentation rows of all folds of a model, with a ``fold`` column."""
    parts = [r.per_image.assign(fold=r.fold) for r in run.of_model(model)
             if r.segmentation is not None and "dice" in r.per_image]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def pooled_segmentation(run: RunResults, model: str) -> dict[str, float]:
    """Per-image segmentation metrics averaged over all test images of all folds."""
    per_image = pooled_per_image(run, model)
    if per_image.empty:
        return {}
    out = {"dice": _nanmean(per_image["dice"]), "iou_tumour": _nanmean(per_image.get("iou"))}
    if "area_true" in per_image:
        lesion = per_image["area_true"].astype(float) > 0
        out["dice_lesion_images"] = _nanmean(per_image.loc[lesion, "dice"])
        if "iou" in per_image:
            out["iou_lesion_images"] = _nanmean(per_image.loc[lesion, "iou"])
        if "area_pred" in per_image and (~lesion).any():
            out["empty_image_false_positive_rate"] = float(
                (per_image.loc[~lesion, "area_pred"].astype(float) > 0).mean())
    return out


def _nanmean(values: pd.Series | None) -> float:
    if values is None:
        return math.nan
    values = pd.to_numeric(values, errors="coerce")
    return float(values.mean()) if values.notna().any() else math.nan
