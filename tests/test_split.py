"""Patient-level k-fold split: groups never straddle roles, classes stay balanced, it is deterministic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from busflow.data.folder import DatasetError
from busflow.split import kfold_split, patient_groups, role_indices


def _index(n_patients: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(n_patients):
        label = ["normal", "benign", "benign", "malignant"][patient % 4]
        for view in range(int(rng.integers(1, 4))):
            rows.append({"image_id": f"p{patient:03d}_v{view}", "patient_id": f"p{patient:03d}", "label": label})
    return pd.DataFrame(rows)


def test_groups_never_cross_roles_and_every_image_is_tested_once() -> None:
    index = _index()
    folds = kfold_split(index, patient_groups(index), n_folds=4, val_fraction=0.2, seed=1)
    assert folds["kfold"].value_counts().sort_index().index.tolist() == [0, 1, 2, 3]
    for k in range(4):
        roles_per_group = folds.groupby("group_id")[f"fold{k}"].nunique()
        assert (roles_per_group == 1).all(), f"a patient straddles roles in fold {k}"
        assert set(folds[f"fold{k}"]) == {"train", "val", "test"}
        assert (folds.loc[folds["kfold"] == k, f"fold{k}"] == "test").all()
    for k in range(4):  # each image is a test image in exactly one fold
        assert ((folds[[f"fold{j}" for j in range(4)]] == "test").sum(axis=1) == 1).all()


def test_classes_are_stratified_across_folds() -> None:
    index = _index(n_patients=120)
    folds = kfold_split(index, patient_groups(index), n_folds=3, val_fraction=0.2, seed=3)
    shares = pd.crosstab(folds["kfold"], folds["label"], normalize="index")
    overall = folds["label"].value_counts(normalize=True)
    assert (shares.sub(overall, axis=1).abs() < 0.08).all().all()


def test_split_is_deterministic_per_seed() -> None:
    index = _index()
    first = kfold_split(index, patient_groups(index), n_folds=3, val_fraction=0.2, seed=5)
    again = kfold_split(index, patient_groups(index), n_folds=3, val_fraction=0.2, seed=5)
    other = kfold_split(index, patient_groups(index), n_folds=3, val_fraction=0.2, seed=6)
    pd.testing.assert_frame_equal(first, again)
    assert not first["kfold"].equals(other["kfold"])


def test_too_few_patients_for_the_folds() -> None:
    index = _index(n_patients=3)
    with pytest.raises(DatasetError, match="too few for 5 folds"):
        kfold_split(index, patient_groups(index), n_folds=5, val_fraction=0.2, seed=0)


def test_role_indices_follow_array_order() -> None:
    index = _index(n_patients=30)
    folds = kfold_split(index, patient_groups(index), n_folds=3, val_fraction=0.2, seed=0)
    image_ids = index["image_id"].to_numpy()[::-1]
    roles = role_indices(folds, image_ids, fold=1)
    test_ids = set(image_ids[roles["test"]])
    assert test_ids == set(folds.loc[folds["fold1"] == "test", "image_id"])
    with pytest.raises(DatasetError, match="no role"):
        role_indices(folds, np.append(image_ids, "stranger"), fold=1)
