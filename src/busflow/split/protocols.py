"""Grouped, class-stratified split protocols: a group (a patient, a duplicate cluster) never crosses roles.

``folds.csv`` holds, per image, its ``group_id``, ``label``, the ``protocol`` and one role column per test
fold, ``fold<k>`` (train, val, test or excluded). Protocols (``split.protocol``):

- ``kfold``: k group-disjoint folds (scikit-learn StratifiedGroupKFold); for test fold k a grouped, stratified
  part of the rest becomes ``val`` (early stopping).
- ``holdout``: one train/val/test partition by the fractions of ``split.holdout``.
- ``cascade``: the seed-002 protocol. ``fold0`` is the segmenter's split (15/5/80: train/val/rest); column
  ``cascade0`` splits only that rest 60/10/30 for the ROI classifier, which therefore never sees an image the
  segmenter was trained or validated on.
- ``official``: the dataset's published folds (BUS-BRA ``official_fold5``/``official_fold10`` of the index),
  with a patient-grouped validation part (the published validation columns are not patient-grouped).
- ``random_image``: k folds over single images, ignoring groups. Deliberately leaky: only for the leakage study,
  which draws it once per seed of ``leakage.seeds`` into ``folds_random_image.csv`` (columns ``seed<S>_fold<k>``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from busflow.errors import DatasetError

ROLES = ("train", "val", "test")
EXCLUDED = "excluded"
PROTOCOLS = ("kfold", "holdout", "cascade", "official", "random_image")
LEAKY_PROTOCOLS = frozenset({"random_image"})
FRACTION_PARTS = 20  # fractional protocols are built from 20 grouped, stratified parts (5 % resolution)


def n_test_folds(split: Mapping[str, Any]) -> int:
    """How many test folds (``fold<k>`` columns) the configured protocol produces."""
    protocol = split["protocol"]
    if protocol in ("kfold", "random_image"):
        return split["n_folds"]
    if protocol == "official":
        return split["official_folds"]
    return 1


def role_column(fold: int, stage: str = "fold") -> str:
    """Column of the folds table with the roles of test fold ``fold`` (stage ``cascade``: the ROI classifier)."""
    return f"{stage}{fold}"


def leaky_stage(split_seed: int) -> str:
    """Role-column stem of the image-level split drawn with ``split_seed``: its folds are ``seed<S>_fold<k>``."""
    return f"seed{split_seed}_fold"


_ROLE_COLUMN = re.compile(r"^(fold|cascade|seed\d+_fold)\d+$")


def role_columns(folds: pd.DataFrame) -> list[str]:
    """The role columns of a folds table (``fold<k>``, ``cascade<k>``, ``seed<S>_fold<k>``)."""
    return [c for c in folds.columns if _ROLE_COLUMN.match(str(c))]


def image_level_split(index: pd.DataFrame, groups: pd.DataFrame, split: Mapping[str, Any], seeds: Sequence[int]) -> pd.DataFrame:
    """The leakage study's image-level folds, drawn once per seed of ``seeds``: ``seed<S>_fold<k>`` columns."""
    tables = [make_split(index, groups, split, seed, protocol="random_image") for seed in seeds]
    columns = [table[role_columns(table)].rename(columns=lambda c, s=seed: f"{leaky_stage(s)}{c[len('fold'):]}")
               for seed, table in zip(seeds, tables)]
    base = tables[0].drop(columns=role_columns(tables[0]))
    return pd.concat([base, *columns], axis=1)


def _grouped_folds(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Fold number of every sample; stratified by label, disjoint in groups."""
    from sklearn.model_selection import StratifiedGroupKFold  # imported here: the Snakefile imports this module

    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise DatasetError(f"only {n_groups} patient/duplicate groups: too few for {n_splits} folds (lower split.n_folds or val_fraction)")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = np.full(len(labels), -1, dtype=np.int64)
    for fold, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[test] = fold
    return folds


def _grouped_fractions(labels: np.ndarray, groups: np.ndarray, fractions: Sequence[tuple[str, float]], seed: int) -> np.ndarray:
    """Role of every sample, the roles taking about the given fractions of the groups (stratified)."""
    n_parts = min(FRACTION_PARTS, len(np.unique(groups)))
    parts = _grouped_folds(labels, groups, n_parts, seed)
    bounds = np.round(np.cumsum([f for _, f in fractions]) * n_parts).astype(int)
    starts = np.concatenate([[0], bounds[:-1]])
    roles = np.empty(len(labels), dtype=object)
    for (role, _), start, stop in zip(fractions, starts, bounds):
        if stop <= start:
            raise DatasetError(f"too few groups ({n_parts}) to give the '{role}' part its fraction")
        roles[(parts >= start) & (parts < stop)] = role
    return roles


def _with_val(test_mask: np.ndarray, labels: np.ndarray, groups: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Roles for one test fold: test where ``test_mask``, a grouped val part of the rest, train otherwise."""
    roles = np.where(test_mask, "test", "train").astype(object)
    rest = np.flatnonzero(~test_mask)
    inner = _grouped_folds(labels[rest], groups[rest], max(2, round(1 / val_fraction)), seed)
    roles[rest[inner == 0]] = "val"
    return roles


def _kfold(labels: np.ndarray, groups: np.ndarray, split: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    folds = _grouped_folds(labels, groups, split["n_folds"], seed)
    return {role_column(k): _with_val(folds == k, labels, groups, split["val_fraction"], seed + k + 1)
            for k in range(split["n_folds"])}


def _holdout(labels: np.ndarray, groups: np.ndarray, split: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    fractions = [(role, split["holdout"][role]) for role in ROLES]
    return {role_column(0): _grouped_fractions(labels, groups, fractions, seed)}


def _cascade(labels: np.ndarray, groups: np.ndarray, split: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    segmentation = split["cascade"]["segmentation"]
    seg_roles = _grouped_fractions(labels, groups, [("train", segmentation["train"]), ("val", segmentation["val"]),
                                                    ("test", 1 - segmentation["train"] - segmentation["val"])], seed)
    rest = np.flatnonzero(seg_roles == "test")
    classification = split["cascade"]["classification"]
    cls_roles = np.full(len(labels), EXCLUDED, dtype=object)
    cls_roles[rest] = _grouped_fractions(labels[rest], groups[rest], [(r, classification[r]) for r in ROLES], seed + 1)
    return {role_column(0): seg_roles, role_column(0, "cascade"): cls_roles}


def _official(labels: np.ndarray, groups: np.ndarray, split: Mapping[str, Any], seed: int,
              official: np.ndarray) -> dict[str, np.ndarray]:
    return {role_column(k): _with_val(official == k, labels, groups, split["val_fraction"], seed + k + 1)
            for k in range(split["official_folds"])}


def _published_folds(index: pd.DataFrame, image_ids: pd.Series, split: Mapping[str, Any]) -> np.ndarray:
    """The dataset's own fold of each image (BUS-BRA's official_fold5 / official_fold10 index columns)."""
    column = f"official_fold{split['official_folds']}"
    if column not in index:
        raise DatasetError(f"split.protocol official: the dataset publishes no {split['official_folds']}-fold split "
                           "(only BUS-BRA does)")
    return index.set_index("image_id").loc[image_ids, column].to_numpy()


def _check_official_grouping(official: np.ndarray, groups: np.ndarray) -> None:
    per_group = pd.Series(official).groupby(groups).nunique()
    if (per_group > 1).any():
        raise DatasetError(f"official folds split group '{per_group.index[per_group > 1][0]}' across folds")


def _check_class_coverage(labels: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
    """Every train and test part must hold at least two classes when the dataset does: a one-class test fold
    has no ROC curve, a one-class training part cannot teach a classifier."""
    if len(np.unique(labels)) < 2:
        return
    for column, roles in columns.items():
        for role in ("train", "test"):
            present = np.unique(labels[roles == role])
            if len(present) == 1:
                raise DatasetError(f"{column}: its {role} part holds only class '{present[0]}' ({int((roles == role).sum())} images); "
                                   "use fewer folds (split.n_folds) or larger fractions, or a larger dataset")


BUILDERS = {"kfold": _kfold, "random_image": _kfold, "holdout": _holdout, "cascade": _cascade}


def make_split(index: pd.DataFrame, groups: pd.DataFrame, split: Mapping[str, Any], seed: int,
               protocol: str | None = None) -> pd.DataFrame:
    """The folds table of ``protocol`` (default ``split.protocol``); label-conflict images excluded if asked."""
    protocol = protocol or split["protocol"]
    table = index[["image_id", "label"]].merge(groups[["image_id", "group_id", "label_conflict"]], on="image_id", validate="1:1")
    keep = ~(table["label_conflict"].to_numpy(bool) & (split["label_conflicts"] == "drop"))
    labels = table["label"].to_numpy()[keep]
    group_ids = (table["image_id"] if protocol in LEAKY_PROTOCOLS else table["group_id"]).to_numpy()[keep]
    if protocol == "official":
        official = _published_folds(index, table["image_id"], split)[keep]
        _check_official_grouping(official, group_ids)
        columns = _official(labels, group_ids, split, seed, official)
    else:
        columns = BUILDERS[protocol](labels, group_ids, split, seed)
    _check_class_coverage(labels, columns)
    table = table[["image_id", "group_id", "label", "label_conflict"]].assign(protocol=protocol)
    for name, roles in columns.items():
        full = np.full(len(table), EXCLUDED, dtype=object)
        full[keep] = roles
        table[name] = full
    return table


def group_ids_of(folds: pd.DataFrame, image_ids: np.ndarray) -> list[str]:
    """The group of each of ``image_ids`` (for the prediction tables)."""
    group_of = dict(zip(folds["image_id"].astype(str), folds["group_id"]))
    return [group_of[str(i)] for i in image_ids]


def role_indices(folds: pd.DataFrame, image_ids: np.ndarray, fold: int, stage: str = "fold") -> dict[str, np.ndarray]:
    """Row numbers into the arrays (ordered as ``image_ids``) for each role of test fold ``fold``.

    ``stage="cascade"`` reads the ROI classifier's column where the protocol has one (seed-002 split).
    """
    column = role_column(fold, stage)
    if column not in folds.columns:
        if stage == "cascade":  # protocols without an ROI-classifier column: the fold's own roles
            return role_indices(folds, image_ids, fold)
        raise DatasetError(f"folds table has no column '{column}' (columns: {folds.columns.tolist()})")
    role_of = dict(zip(folds["image_id"].astype(str), folds[column]))
    roles = np.array([role_of.get(str(i), "") for i in image_ids], dtype=object)
    missing = int((roles == "").sum())
    if missing:
        raise DatasetError(f"{missing} preprocessed image(s) have no role in the folds table; re-run the split")
    return {role: np.flatnonzero(roles == role) for role in ROLES}
