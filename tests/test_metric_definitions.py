"""Metric definitions behind the reproduction tables: pixel-pooled segmentation metrics, and every published
number tied to the paper's definition, its source and ours."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from busflow.evaluate.metrics import per_image_overlap, pixel_counts, pooled_overlap, segmentation_metrics
from busflow.report.content import ReportTables, reproduction_blocks
from busflow.report.loading import FoldResult
from busflow.report.render import Para, Table
from busflow.report.reproduction import BEST_FOLD, published, reproduction_table
from busflow.report.uncertainty import INTERVAL_COLUMNS

from conftest import BINARY, THREE, classes_of

NO_INTERVALS = pd.DataFrame(columns=INTERVAL_COLUMNS)


def _masks() -> tuple[np.ndarray, np.ndarray]:
    """A large lesion found whole, a small one missed, and a lesion-free image with false positives."""
    truth, predicted = np.zeros((3, 10, 10), bool), np.zeros((3, 10, 10), bool)
    truth[0, 1:9, 1:9] = predicted[0, 1:9, 1:9] = True  # 64 pixels, all found: Dice 1
    truth[1, 4:6, 4:6] = True  # 4 pixels, none found: Dice 0
    predicted[2, 0, :3] = True  # empty truth, 3 false-positive pixels
    return predicted, truth


def test_pooled_dice_is_the_f1_of_pooled_precision_and_recall() -> None:
    predicted, truth = _masks()
    tp, fp, fn = pixel_counts(predicted, truth)
    assert (tp.tolist(), fp.tolist(), fn.tolist()) == ([64, 0, 0], [0, 0, 3], [0, 4, 0])
    pooled = pooled_overlap(tp, fp, fn)
    precision, recall, dice = pooled["pooled_precision"], pooled["pooled_recall"], pooled["pooled_dice"]
    assert (precision, recall) == (pytest.approx(64 / 67), pytest.approx(64 / 68))
    assert dice == pytest.approx(2 * 64 / (2 * 64 + 3 + 4))
    assert dice == pytest.approx(2 * precision * recall / (precision + recall))
    assert pooled["pooled_iou"] == pytest.approx(dice / (2 - dice))
    lesion_dice = per_image_overlap(predicted, truth)[0][:2]
    assert lesion_dice.mean() == pytest.approx(0.5) and abs(dice - lesion_dice.mean()) > 0.4  # per image ≠ pooled


def test_pooled_metrics_need_no_empty_mask_convention() -> None:
    match, per_image = segmentation_metrics(*_masks(), convention="match")
    exclude, _ = segmentation_metrics(*_masks(), convention="exclude")
    # per_image.csv keeps each image's pixel counts, from which the report resamples the pooled metrics
    assert [per_image[c].tolist() for c in ("tp_pixels", "fp_pixels", "fn_pixels")] == [[64, 0, 0], [0, 0, 3], [0, 4, 0]]
    pooled = [f"pooled_{m}" for m in ("dice", "iou", "precision", "recall")]
    assert {k: match[k] for k in pooled} == {k: exclude[k] for k in pooled}
    assert match["dice"] != exclude["dice"]
    empty = np.zeros((2, 4, 4), bool)
    assert pooled_overlap(*pixel_counts(empty, empty)) == dict.fromkeys(pooled)  # nothing to pool: undefined


@pytest.mark.parametrize("paper", sorted(published()))
def test_every_published_number_has_its_definition_and_source(paper: str) -> None:
    source = published()[paper]
    assert source["protocol"].strip() and isinstance(source["missing"], list)
    for row in source["rows"]:
        assert row["definition"].strip() and row["source"].strip() and row["paper_model"].strip(), row
        assert row.get("aggregate") in (None, BEST_FOLD), row


def test_p000_segmentation_rows_read_the_pixel_pooled_metrics() -> None:
    rows = [row for row in published()["p000"]["rows"] if row["metric"].startswith("segmentation.")]
    assert {row["metric"] for row in rows} == {f"segmentation.pooled_{m}" for m in ("dice", "iou", "precision", "recall")}
    metrics = {"segmentation": {"dice": 0.5, "pooled_dice": 0.8, "pooled_iou": 0.8 / 1.2}}
    results = [FoldResult("mtl_resnet50", 0, Path("."), metrics, pd.DataFrame(), pd.DataFrame(), None)]
    table = reproduction_table("p000", results, "busflow kfold", NO_INTERVALS, classes=BINARY).set_index("metric")
    assert table.loc["Dice", "ours_mean"] == pytest.approx(0.8) and table.loc["IoU", "ours_mean"] == pytest.approx(2 / 3)
    assert table.loc["Dice", "definition"].startswith("pixel-pooled over the test set")
    assert "pixel-pooled on each test fold" in table.loc["Dice", "definition"]


def _classifier(model: str, fold: int, accuracy: float, specificity: float) -> FoldResult:
    metrics = {"classification": {"accuracy": accuracy, "per_class": {"malignant": {"specificity": specificity}}}}
    return FoldResult(model, fold, Path("."), metrics, pd.DataFrame(), pd.DataFrame(), None)


@pytest.mark.parametrize("paper", sorted(published()))
def test_reproduction_rows_name_both_definitions_and_the_source(paper: str) -> None:
    table = reproduction_table(paper, [], "busflow kfold", NO_INTERVALS, classes=classes_of(paper))
    assert len(table) == len(published()[paper]["rows"])
    assert table["definition"].str.contains(r"\(paper\) / .+ \(ours\)$").all()
    assert (table["paper_source"].str.len() > 0).all() and (table["paper_model"].str.len() > 0).all()
    assert (table["status"] == "model not in this run").all()


def test_best_fold_rows_give_our_best_fold() -> None:
    results = [_classifier("mtl_resnet50", 0, 0.80, 0.96), _classifier("mtl_resnet50", 1, 0.90, 0.94)]
    table = reproduction_table("p003", results, "busflow kfold", NO_INTERVALS, classes=BINARY).set_index(["model", "metric"])
    accuracy, fpr = table.loc[("mtl_resnet50", "ACC")], table.loc[("mtl_resnet50", "FPR")]
    assert accuracy["ours_best"] == pytest.approx(0.90) and fpr["ours_best"] == pytest.approx(0.04)  # lowest FPR
    assert accuracy["definition"] == ("best fold, malignant as the positive class (paper) / "
                                      "accuracy on each test fold, mean ± sd and best fold (ours)")
    assert math.isnan(table.loc[("unet_resnet50", "tumour IoU"), "ours_best"])  # Table II: fold not stated


def test_validation_score_is_set_beside_our_test_score() -> None:
    row = reproduction_table("p001", [], "busflow kfold", NO_INTERVALS, classes=THREE).set_index("model").loc["vgg19"]
    assert "validation split" in row["definition"] and "on each test fold" in row["definition"]


def test_models_busflow_lacks_keep_the_papers_name() -> None:
    results = [_classifier("cascade", 0, 0.9, 0.9)]
    table = reproduction_table("p002", results, "busflow cascade", NO_INTERVALS, classes=BINARY)
    lacking = {row["model"] for row in published()["p002"]["rows"] if row.get("in_busflow") is False}
    assert lacking and set(table.loc[table["model"].isin(lacking), "status"]) == {"model not in this run"}
    assert set(table.loc[table["model"] == "cascade", "paper_model"]) == {"SegNet, Experiment 2 (lr 0.00001, filters 16-64)"}


def test_report_shows_definitions_best_fold_and_lost_tables() -> None:
    results = [_classifier("mtl_resnet50", 0, 0.80, 0.96), _classifier("mtl_resnet50", 1, 0.90, 0.94)]
    for paper, best_fold_shown in (("p003", True), ("p004", False)):
        table = reproduction_table(paper, results, "busflow kfold", NO_INTERVALS, classes=classes_of(paper))
        blocks = reproduction_blocks(ReportTables({"reproduction": table}))
        shown = next(b.frame for b in blocks if isinstance(b, Table))
        assert ("ours best fold" in shown.columns) is best_fold_shown
        assert shown["definition (paper / ours)"].tolist() == table["definition"].tolist()
        lost = [b.text for b in blocks if isinstance(b, Para) and b.text.startswith("Not in the paper's text")]
        assert len(lost) == 1 and all(note in lost[0] for note in published()[paper]["missing"])
