"""Views of one lesion: phantoms with their patients hidden are grouped by patient, a patient's sweep lands in
one group, different patients of one class stay apart, and the group stage links views on request."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

from busflow.config import load_params
from busflow.data.folder import ingest_folder
from busflow.data.synthetic import generate_phantoms
from busflow.split.dedup import duplicate_clusters
from busflow.split.groups import build_groups
from busflow.split.views import (
    VIEW_REASON,
    ViewSettings,
    candidate_pairs,
    capture_enrichment,
    capture_flags,
    file_number,
    find_view_links,
    screen_views,
)

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from grouping_accuracy import grouping_scores, phantom_source

MIN_PAIR_PRECISION = MIN_PAIR_RECALL = 0.95


def _links(index: pd.DataFrame) -> pd.DataFrame:
    return find_view_links(index["image_id"].tolist(), index["image_path"].tolist(), index["label"].tolist())


def test_phantom_views_are_grouped_by_their_hidden_patients(tmp_path: Path) -> None:
    index, truth = phantom_source(tmp_path, n_patients=24, seed=5)  # 1-3 views each, names shuffled
    links = _links(index)
    assert set(links["reason"]) == {VIEW_REASON}
    scores = grouping_scores(truth, pd.Series(duplicate_clusters(index["image_id"].tolist(), links)))
    assert scores["true_pairs"] >= 20
    assert scores["pair_precision"] >= MIN_PAIR_PRECISION and scores["pair_recall"] >= MIN_PAIR_RECALL, scores


def test_a_sweep_of_one_lesion_is_one_group_and_other_patients_of_its_class_stay_apart(tmp_path: Path) -> None:
    generate_phantoms(tmp_path / "sweep", n_patients=1, seed=8, class_mix={"malignant": 1.0}, views_per_patient=(5, 5))
    generate_phantoms(tmp_path / "others", n_patients=6, seed=9, class_mix={"malignant": 1.0}, views_per_patient=(1, 1))
    index = pd.concat([ingest_folder(tmp_path / "sweep").assign(image_id=lambda f: "sweep_" + f["image_id"]),
                       ingest_folder(tmp_path / "others").assign(image_id=lambda f: "other_" + f["image_id"])],
                      ignore_index=True)
    clusters = pd.Series(duplicate_clusters(index["image_id"].tolist(), _links(index)))
    sweep = clusters[clusters.index.str.startswith("sweep_")]
    others = clusters[clusters.index.str.startswith("other_")]
    assert len(sweep) == 5 and sweep.nunique() == 1
    assert others.nunique() == 6 and not set(others) & set(sweep)


def test_candidates_share_a_class_and_lie_within_the_number_gap() -> None:
    ids = ["benign (4)", "benign (5)", "benign (12)", "malignant (5)", "scan"]
    labels = ["benign", "benign", "benign", "malignant", "benign"]
    assert [file_number(i) for i in ids] == [4, 5, 12, 5, None]
    assert candidate_pairs(ids, labels, None) == [(0, 1), (0, 2), (0, 4), (1, 2), (1, 4), (2, 4)]
    assert candidate_pairs(ids, labels, 1) == [(0, 1)]  # an image without a number pairs with no one then
    assert file_number("bus_0003-l") == 3


@pytest.mark.parametrize("grouping", ["duplicates+views", "patient+duplicates+views"])
def test_the_group_stage_links_views_on_request(tmp_path: Path, grouping: str) -> None:
    generate_phantoms(tmp_path, n_patients=4, seed=8, class_mix={"benign": 1.0}, views_per_patient=(2, 2))
    index = ingest_folder(tmp_path).assign(patient_id=lambda f: f["image_id"])  # every view its own "patient"
    split = {**load_params(REPO / "params.yaml", check_registry=False)["split"], "grouping": grouping}
    groups, links = build_groups(index, split)
    assert (links["reason"] == VIEW_REASON).sum() == 4
    assert groups["group_id"].nunique() == 4 and set(groups["reason"]) == {VIEW_REASON}
    without, _ = build_groups(index, {**split, "grouping": grouping.replace("+views", "")})
    assert without["group_id"].nunique() == 8


def test_equal_heights_are_capture_evidence_only_where_heights_vary() -> None:
    heights = [300, 300, 301, 420, 420, *range(500, 540)]
    pairs = [(0, 1), (0, 2), (3, 4), (1, 3)]
    assert capture_flags(heights, pairs, ViewSettings())[0] == [True, False, True, False]
    assert capture_flags(heights, pairs, ViewSettings(capture_height_tolerance=1))[0] == [False, False, True, False]  # 3 of 45 at 300±1
    assert capture_flags(heights, pairs, ViewSettings(capture_height_tolerance=1, max_capture_share=0.07))[0] == [True, True, True, False]
    assert capture_flags(heights, pairs, ViewSettings(capture_height_tolerance=None))[0] == [False] * 4
    assert capture_flags([256] * 45, pairs, ViewSettings())[0] == [False] * 4  # one size for all: no evidence


def test_capture_enrichment_compares_candidates_with_all_other_pairs() -> None:
    # 10 scans of 5 heights, numbered so that the candidates (neighbours) are (0,1) (2,3) ... : one capture each
    heights = [300, 300, 310, 310, 320, 320, 330, 330, 340, 340]
    neighbours = [(k, k + 1) for k in range(0, 10, 2)]
    assert capture_enrichment(heights, neighbours, 0) == math.inf  # no other pair shares a height
    crops = [300, 310, 300, 310, 300, 310, 300, 310, 300, 310]  # two sizes, assigned without regard to capture
    chance = capture_enrichment(crops, [(k, k + 2) for k in range(8)], 0)  # 8 of 8 candidates equal, 12 of 37 others
    assert chance == pytest.approx(1.0 / ((20 - 8) / (45 - 8)))
    assert capture_enrichment(crops, neighbours, 0) == 0.0  # no candidate pair of equal height
    assert math.isnan(capture_enrichment(heights[:3], [(0, 1), (0, 2), (1, 2)], 0))  # no pair left to compare with
    every_other = [(k, k + 2) for k in range(8)]
    assert capture_flags(crops, every_other, ViewSettings(max_capture_share=1.0))[0] == [False] * 8  # 3.1 < 5
    assert capture_flags(crops, every_other, ViewSettings(max_capture_share=1.0, min_capture_enrichment=3.0))[0] == [True] * 8


def _cropped_phantoms(folder: Path, heights: list[int]) -> pd.DataFrame:
    """One phantom per height, of different patients, each cut to its height (the rows below are dropped)."""
    import cv2

    generate_phantoms(folder, n_patients=len(heights), seed=4, class_mix={"benign": 1.0}, views_per_patient=(1, 1),
                      image_size=(96, 96))
    index = ingest_folder(folder).sort_values("image_id").reset_index(drop=True)
    for path, height in zip(index["image_path"], heights):
        cv2.imwrite(str(path), cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[:height])
    return index


def test_an_equal_rare_height_links_mutually_best_candidates_and_other_heights_need_a_strong_match(tmp_path: Path) -> None:
    heights = [80, 80, 80, *range(61, 84, 2)]  # three neighbouring scans of one height among 15 (a share of 0.2)
    ids = [f"scan ({number})" for number in (1, 2, 3, *range(10, 34, 2))]
    settings = ViewSettings(max_number_gap=2, max_capture_share=0.2)
    index = _cropped_phantoms(tmp_path / "varied", heights)
    inputs = ids, index["image_path"].tolist(), index["label"].tolist()
    table = screen_views(*inputs, settings)
    aligned_only = screen_views(*inputs, dataclasses.replace(settings, capture_height_tolerance=None))
    captured = table[table["same_capture"]]
    assert len(captured) == 3 and not aligned_only["same_capture"].any()  # the pairs of the three of height 80
    best = captured["score"].idxmax()  # the two images of height 80 most alike rank each other first
    assert captured.loc[best, "capture_rank"] == 1 and table.loc[best, "accepted"]
    assert not aligned_only.loc[best, "accepted"]  # different patients: the alignment alone keeps them apart
    others = captured.index != best
    assert (table.loc[captured.index[others], "accepted"] == aligned_only.loc[captured.index[others], "accepted"]).all()
    one_capture_or_unknown = ~table["other_capture"]
    assert (table["accepted"] | ~aligned_only["accepted"])[one_capture_or_unknown].all()  # capture links only add there
    across = table[table["other_capture"]]  # different heights on a source whose heights tell captures apart
    assert len(across) > 0 and (across["accepted"] == (across["score"] >= settings.strong_correlation)).all()

    uniform = _cropped_phantoms(tmp_path / "uniform", [80] * len(heights))  # every image of one height
    inputs = ids, uniform["image_path"].tolist(), uniform["label"].tolist()
    uniform_table = screen_views(*inputs, settings)
    assert not uniform_table["same_capture"].any() and not uniform_table["other_capture"].any()
