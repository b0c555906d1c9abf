"""The split audit: a non-leaky split passes, a planted duplicate or a split group fails naming the images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from busflow.split.audit import audit_split
from busflow.errors import DatasetError
from test_split import _groups, _index, _split_params

from busflow.split.protocols import make_split


def _case(n_patients: int = 40) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]:
    index = _index(n_patients).assign(patient_known=True)
    folds = make_split(index, _groups(index), _split_params(n_folds=3), seed=0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(len(index), 8, 8), dtype=np.uint8)
    return index, folds, index["image_id"].to_numpy(), images


def test_grouped_split_passes_and_counts_roles() -> None:
    index, folds, ids, images = _case()
    leaky = make_split(index, _groups(index), _split_params(n_folds=3), seed=0, protocol="random_image")
    summary, counts = audit_split({"main": folds, "leakage_study": leaky}, index, ids, images)
    assert summary["passed"]
    main, study = summary["splits"]
    assert main["crossings"] == 0 and not main["leaky"]
    assert study["leaky"] and study["crossings"] > 0  # recorded, not fatal
    fold0 = counts[(counts["split"] == "main") & (counts["column"] == "fold0")].set_index("role")
    assert fold0["images"].sum() == len(index)
    assert fold0[["normal", "benign", "malignant"]].sum(axis=1).equals(fold0["images"])


def test_planted_cross_split_duplicate_fails_naming_both_images() -> None:
    index, folds, ids, images = _case()
    test_image = folds.loc[folds["fold0"] == "test", "image_id"].iloc[0]
    train_image = folds.loc[folds["fold0"] == "train", "image_id"].iloc[0]
    position = {image_id: n for n, image_id in enumerate(ids)}
    images[position[train_image]] = images[position[test_image]]  # the same frame filed twice
    with pytest.raises(DatasetError, match=r"fold0: 1 identical_images across test\|train\+val"):
        audit_split({"main": folds}, index, ids, images)


def test_group_split_across_roles_fails() -> None:
    index, folds, ids, images = _case()
    patient = index.groupby("patient_id").size().idxmax()
    members = index.loc[index["patient_id"] == patient, "image_id"]
    folds.loc[folds["image_id"] == members.iloc[0], "fold1"] = "test"
    folds.loc[folds["image_id"] == members.iloc[1], "fold1"] = "train"
    with pytest.raises(DatasetError, match=f"fold1: 1 groups across test.*{patient}"):
        audit_split({"main": folds}, index, ids, images)


def test_patients_are_not_counted_where_the_source_has_none() -> None:
    index, folds, ids, images = _case()
    _, counts = audit_split({"main": folds}, index.assign(patient_known=False), ids, images)
    assert counts["patients"].isna().all() and (counts["groups"] > 0).all()
