"""The grouping benchmark's scores against known patients, and its phantoms that hide their patients."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from grouping_accuracy import grouping_scores, phantom_source


def test_pair_precision_recall_and_ari_of_a_known_grouping() -> None:
    truth = pd.Series({"a": 1, "b": 1, "c": 2, "d": 2, "e": 3})
    # a-b right, c joined to a and b wrongly, c-d missed: linked pairs ab, ac, bc; true pairs ab, cd
    scores = grouping_scores(truth, pd.Series({"a": "x", "b": "x", "c": "x", "d": "y", "e": "z"}))
    assert scores["true_pairs"] == 2 and scores["linked_pairs"] == 3
    assert scores["pair_precision"] == pytest.approx(1 / 3) and scores["pair_recall"] == pytest.approx(1 / 2)
    perfect = grouping_scores(truth, truth.map({1: "p", 2: "q", 3: "r"}))
    assert perfect["pair_precision"] == perfect["pair_recall"] == perfect["ari"] == 1.0
    singletons = grouping_scores(truth, pd.Series({i: i for i in truth.index}))
    assert singletons["pair_precision"] == 1.0 and singletons["pair_recall"] == 0.0 and singletons["ari"] == 0.0


def test_phantoms_hide_their_patients_from_the_detector(tmp_path: Path) -> None:
    index, truth = phantom_source(tmp_path, n_patients=6, seed=1, image_size=(48, 60))
    assert set(index.columns) == {"image_id", "image_path", "label"}
    assert all(name.startswith("img") for name in index["image_id"])
    assert not list(tmp_path.rglob("patients.csv")) and not list(tmp_path.rglob("pixel_spacing.csv"))
    assert list(truth.index) == list(index["image_id"]) and truth.nunique() == 6 and len(truth) > 6
    assert all(Path(path).stem == image_id for path, image_id in zip(index["image_path"], index["image_id"]))
