"""Split protocols: groups never straddle roles, classes stay balanced, the seed-002 cascade split keeps the
classifier away from the segmenter's images, and the result is deterministic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from busflow.config import load_schema
from busflow.errors import DatasetError
from busflow.split.protocols import EXCLUDED, make_split, n_test_folds, role_columns, role_indices


def _index(n_patients: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(n_patients):
        label = ["normal", "benign", "benign", "malignant"][patient % 4]
        for view in range(int(rng.integers(1, 4))):
            rows.append({"image_id": f"p{patient:03d}_v{view}", "patient_id": f"p{patient:03d}", "label": label})
    return pd.DataFrame(rows)


def _groups(index: pd.DataFrame, conflicts: frozenset[str] = frozenset()) -> pd.DataFrame:
    return pd.DataFrame({"image_id": index["image_id"], "group_id": index["patient_id"],
                         "label_conflict": index["image_id"].isin(conflicts)})


def _split_params(**overrides: object) -> dict:
    defaults = {"n_folds": 4, "val_fraction": 0.2, "protocol": "kfold", "holdout": {"train": 0.7, "val": 0.1, "test": 0.2},
                "cascade": {"segmentation": {"train": 0.15, "val": 0.05}, "classification": {"train": 0.6, "val": 0.1, "test": 0.3}},
                "official_folds": 5, "grouping": "auto", "duplicates": {}, "label_conflicts": "drop"}
    return {**defaults, **overrides}


def _assert_grouped(folds: pd.DataFrame) -> None:
    for column in role_columns(folds):
        roles_per_group = folds.groupby("group_id")[column].nunique()
        assert (roles_per_group == 1).all(), f"a group straddles roles in {column}"


def test_kfold_groups_never_cross_roles_and_every_image_is_tested_once() -> None:
    index = _index()
    folds = make_split(index, _groups(index), _split_params(), seed=1)
    assert role_columns(folds) == ["fold0", "fold1", "fold2", "fold3"]
    _assert_grouped(folds)
    for k in range(4):
        assert set(folds[f"fold{k}"]) == {"train", "val", "test"}
    assert ((folds[role_columns(folds)] == "test").sum(axis=1) == 1).all()


def test_classes_are_stratified_across_folds() -> None:
    index = _index(n_patients=120)
    folds = make_split(index, _groups(index), _split_params(n_folds=3), seed=3)
    test_fold = folds[role_columns(folds)].eq("test").to_numpy().argmax(axis=1)
    shares = pd.crosstab(test_fold, folds["label"], normalize="index")
    overall = folds["label"].value_counts(normalize=True)
    assert (shares.sub(overall, axis=1).abs() < 0.08).all().all()


def test_holdout_fractions_are_respected_by_groups() -> None:
    index = _index(n_patients=200)
    folds = make_split(index, _groups(index), _split_params(protocol="holdout"), seed=0)
    _assert_grouped(folds)
    shares = folds.drop_duplicates("group_id")["fold0"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.7, abs=0.05) and shares["test"] == pytest.approx(0.2, abs=0.05)


def test_cascade_protocol_keeps_the_classifier_off_segmenter_images() -> None:
    index = _index(n_patients=200)
    folds = make_split(index, _groups(index), _split_params(protocol="cascade"), seed=2)
    _assert_grouped(folds)
    segmenter_seen = folds["fold0"].isin(["train", "val"])
    assert (folds.loc[segmenter_seen, "cascade0"] == EXCLUDED).all()
    assert set(folds.loc[~segmenter_seen, "cascade0"]) == {"train", "val", "test"}
    groups = folds.drop_duplicates("group_id")
    assert groups["fold0"].value_counts(normalize=True)["train"] == pytest.approx(0.15, abs=0.04)
    rest = groups[groups["fold0"] == "test"]["cascade0"].value_counts(normalize=True)
    assert rest["train"] == pytest.approx(0.6, abs=0.06) and rest["test"] == pytest.approx(0.3, abs=0.06)
    roles = role_indices(folds, folds["image_id"].to_numpy(), 0, stage="cascade")
    assert not segmenter_seen.to_numpy()[np.concatenate(list(roles.values()))].any()


def test_official_protocol_uses_published_folds_with_a_grouped_val() -> None:
    index = _index(n_patients=100)
    patient_fold = {p: i % 5 for i, p in enumerate(sorted(index["patient_id"].unique()))}
    index["official_fold5"] = index["patient_id"].map(patient_fold)
    folds = make_split(index, _groups(index), _split_params(protocol="official"), seed=0)
    _assert_grouped(folds)
    for k in range(5):
        assert (folds["fold" + str(k)].eq("test") == index["official_fold5"].eq(k)).all()
    with pytest.raises(DatasetError, match="publishes no 10-fold split"):
        make_split(index, _groups(index), _split_params(protocol="official", official_folds=10), seed=0)


def test_random_image_protocol_ignores_groups() -> None:
    index = _index(n_patients=120)
    folds = make_split(index, _groups(index), _split_params(), seed=0, protocol="random_image")
    assert (folds["protocol"] == "random_image").all()
    crossing = (folds.groupby("group_id")["fold0"].nunique() > 1).sum()
    assert crossing > 10  # patients with several views are scattered across roles: the leak it exists to measure


def test_label_conflicts_are_dropped_or_kept_by_policy() -> None:
    index = _index()
    conflicted = frozenset(index["image_id"][:3])
    dropped = make_split(index, _groups(index, conflicted), _split_params(), seed=0)
    kept = make_split(index, _groups(index, conflicted), _split_params(label_conflicts="keep"), seed=0)
    is_conflict = dropped["image_id"].isin(conflicted)
    assert (dropped.loc[is_conflict, role_columns(dropped)] == EXCLUDED).all().all()
    assert (dropped.loc[~is_conflict, role_columns(dropped)] != EXCLUDED).all().all()
    assert (kept[role_columns(kept)] != EXCLUDED).all().all()


def test_split_is_deterministic_per_seed() -> None:
    index = _index()
    first = make_split(index, _groups(index), _split_params(n_folds=3), seed=5)
    again = make_split(index, _groups(index), _split_params(n_folds=3), seed=5)
    other = make_split(index, _groups(index), _split_params(n_folds=3), seed=6)
    pd.testing.assert_frame_equal(first, again)
    assert not first["fold0"].equals(other["fold0"])


def test_too_few_groups_for_the_folds() -> None:
    index = _index(n_patients=3)
    with pytest.raises(DatasetError, match="too few for 5 folds"):
        make_split(index, _groups(index), _split_params(n_folds=5), seed=0)


def test_fold_count_per_protocol() -> None:
    assert [n_test_folds(_split_params(protocol=p)) for p in ("kfold", "holdout", "cascade", "official", "random_image")] == [4, 1, 1, 5, 4]


def test_schema_defaults_match_the_protocol_settings_used_here() -> None:
    split_schema = load_schema()["properties"]["split"]["properties"]
    assert split_schema["holdout"]["default"] == _split_params()["holdout"]
    assert split_schema["cascade"]["properties"]["classification"]["default"] == _split_params()["cascade"]["classification"]


def test_role_indices_follow_array_order() -> None:
    index = _index(n_patients=30)
    folds = make_split(index, _groups(index), _split_params(n_folds=3), seed=0)
    image_ids = index["image_id"].to_numpy()[::-1]
    roles = role_indices(folds, image_ids, fold=1)
    assert set(image_ids[roles["test"]]) == set(folds.loc[folds["fold1"] == "test", "image_id"])
    with pytest.raises(DatasetError, match="no role"):
        role_indices(folds, np.append(image_ids, "stranger"), fold=1)
