"""The group stage: patients and duplicate frames join groups; clusters spanning classes are label conflicts."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from busflow.config import load_params
from busflow.data.folder import ingest_folder
import busflow.split.groups
from busflow.split.dedup import DuplicateSettings
from busflow.split.groups import build_groups, conflict_summary, grouping_sources
from conftest import REPO


@pytest.fixture(scope="module")
def split_params() -> dict:
    return load_params(REPO / "params.yaml", check_registry=False)["split"]


def _speckle(seed: int, shape: tuple[int, int] = (120, 160)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = rng.rayleigh(40.0, size=shape)
    return np.clip(np.cumsum(field, axis=1) / np.arange(1, shape[1] + 1) * 0.5 + field * 0.6, 0, 255).astype(np.uint8)


def _folder(root: Path, patients: bool) -> Path:
    """Four frames; 'b1' and 'm1' are the same frame (b1 cropped and enlarged) filed under two classes."""
    frames = {"benign/b0": _speckle(0), "benign/b1": _speckle(1), "normal/n0": _speckle(2)}
    same = Image.fromarray(_speckle(1)[10:110, 15:150]).resize((189, 140), Image.Resampling.BICUBIC)
    for name, array in frames.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / f"{name}.png")
    (root / "malignant").mkdir()
    same.save(root / "malignant" / "m1.png")
    if patients:
        (root / "patients.csv").write_text("image_id,patient_id\nb0,P1\nn0,P1\nb1,P2\nm1,P3\n")
    return root


def test_without_patients_duplicates_form_the_groups(tmp_path: Path, split_params: dict) -> None:
    index = ingest_folder(_folder(tmp_path / "raw", patients=False))
    assert grouping_sources("auto", index) == (False, True, False)
    groups, links = build_groups(index, split_params)
    group_of = groups.set_index("image_id")["group_id"]
    assert group_of["b1"] == group_of["m1"] == "dup:b1"
    assert len({group_of["b0"], group_of["n0"], group_of["b1"]}) == 3
    assert links["reason"].tolist() == ["near-duplicate"] and links["score"].iloc[0] > 0.9
    assert groups.set_index("image_id")["label_conflict"].to_dict() == {"b0": False, "b1": True, "m1": True, "n0": False}
    summary = conflict_summary(groups, index, "drop")
    assert summary.to_dict("records") == [{"group_id": "dup:b1", "images": "b1; m1", "labels": "benign; malignant",
                                           "n_images": 2, "action": "excluded from every split"}]


def test_patients_and_duplicates_merge_groups(tmp_path: Path, split_params: dict) -> None:
    index = ingest_folder(_folder(tmp_path / "raw", patients=True))
    patient_only, _ = build_groups(index, split_params)  # auto: patients are known
    assert patient_only.set_index("image_id")["group_id"].to_dict() == {"b0": "P1", "n0": "P1", "b1": "P2", "m1": "P3"}
    assert not patient_only["label_conflict"].any()  # conflicts are a property of duplicate clusters only
    both, links = build_groups(index, {**split_params, "grouping": "patient+duplicates"})
    group_of = both.set_index("image_id")["group_id"]
    assert group_of["b1"] == group_of["m1"] != group_of["b0"] == group_of["n0"] == "P1"
    assert set(links["reason"]) == {"patient", "near-duplicate"}


def test_busi_exact_duplicate_is_one_group_and_a_label_conflict(busi_duplicates: tuple[pd.DataFrame, pd.DataFrame],
                                                               split_params: dict) -> None:
    index, found = busi_duplicates  # the detector's links on BUSI (its own test: test_dedup.py), computed once

    def same_search(image_ids: list[str], paths: list[str], settings: DuplicateSettings) -> pd.DataFrame:
        assert image_ids == index["image_id"].tolist() and settings == DuplicateSettings()
        return found

    with mock.patch.object(busflow.split.groups, "find_duplicate_links", same_search):
        groups, links = build_groups(index, split_params)
    pair = groups.set_index("image_id").loc[["benign (433)", "malignant (145)"]]
    assert pair["group_id"].nunique() == 1 and pair["label_conflict"].all()
    assert set(pair["reason"]) == {"exact"} and (pair["score"] == 1.0).all()
    conflicts = conflict_summary(groups, index, "drop")
    assert "benign (433); malignant (145)" in conflicts["images"].tolist()
    multi = groups.groupby("group_id").size()
    assert 100 <= (multi > 1).sum() <= 250  # duplicate clusters (a plain 16x16 average hash finds 15)
    assert pd.Series(links["reason"]).isin(["exact", "near-duplicate"]).all()
