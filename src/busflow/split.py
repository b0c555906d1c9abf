"""Patient-level splits: images are grouped (by patient) and groups never cross a fold boundary.

Protocol ``kfold``: class-stratified, group-disjoint k folds (scikit-learn StratifiedGroupKFold). For test
fold k, column ``fold<k>`` gives every image's role: test, val (a grouped, stratified part of the rest for
early stopping) or train.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from busflow.data.folder import DatasetError

ROLES = ("train", "val", "test")


def patient_groups(index: pd.DataFrame) -> pd.DataFrame:
    """One group per patient (the grouping contract of split/groups.csv)."""
    return pd.DataFrame(
        {"image_id": index["image_id"], "group_id": index["patient_id"].astype(str), "reason": "patient"}
    )


def _grouped_folds(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Fold number of every sample; stratified by label, disjoint in groups."""
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = np.full(len(labels), -1, dtype=np.int64)
    for fold, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[test] = fold
    return folds


def _check_splittable(groups: pd.Series, n_folds: int) -> None:
    n_groups = groups.nunique()
    if n_groups < n_folds:
        raise DatasetError(f"only {n_groups} patient groups: too few for {n_folds} folds")


def kfold_split(index: pd.DataFrame, groups: pd.DataFrame, *, n_folds: int, val_fraction: float, seed: int) -> pd.DataFrame:
    """The folds.csv table: image_id, group_id, label, kfold and one role column per test fold."""
    table = index[["image_id", "label"]].merge(groups[["image_id", "group_id"]], on="image_id", validate="1:1")
    _check_splittable(table["group_id"], n_folds)
    labels = table["label"].to_numpy()
    group_ids = table["group_id"].to_numpy()
    table["kfold"] = _grouped_folds(labels, group_ids, n_folds, seed)
    val_splits = max(2, round(1 / val_fraction))
    for fold in range(n_folds):
        roles = np.where(table["kfold"].to_numpy() == fold, "test", "train").astype(object)
        rest = np.flatnonzero(roles == "train")
        _check_splittable(pd.Series(group_ids[rest]), val_splits)
        inner = _grouped_folds(labels[rest], group_ids[rest], val_splits, seed + fold + 1)
        roles[rest[inner == 0]] = "val"
        table[f"fold{fold}"] = roles
    return table[["image_id", "group_id", "label", "kfold", *[f"fold{k}" for k in range(n_folds)]]]


def role_indices(folds: pd.DataFrame, image_ids: np.ndarray, fold: int) -> dict[str, np.ndarray]:
    """Row numbers into the arrays (ordered as ``image_ids``) for each role of test fold ``fold``."""
    column = f"fold{fold}"
    if column not in folds.columns:
        raise DatasetError(f"folds table has no column '{column}' (folds: {folds.columns.tolist()})")
    role_of = dict(zip(folds["image_id"].astype(str), folds[column]))
    roles = np.array([role_of.get(str(i), "") for i in image_ids])
    missing = int((roles == "").sum())
    if missing:
        raise DatasetError(f"{missing} preprocessed image(s) have no role in the folds table; re-run the split")
    return {role: np.flatnonzero(roles == role) for role in ROLES}
