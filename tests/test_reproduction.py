"""Reproduction tables: published numbers beside ours, with honest gaps for models or metrics a run lacks."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from busflow.report.loading import FoldResult
from busflow.report.reproduction import metric_value, published, reproduction_table
from busflow.report.uncertainty import INTERVAL_COLUMNS

from conftest import BINARY, THREE

NO_INTERVALS = pd.DataFrame(columns=INTERVAL_COLUMNS)


def _result(model: str, fold: int, accuracy: float, malignant_specificity: float) -> FoldResult:
    metrics = {"classification": {"accuracy": accuracy, "roc_auc_macro": 0.9,
                                  "per_class": {"malignant": {"specificity": malignant_specificity, "recall": 0.8}}},
               "segmentation": {"iou_tumour": 0.5}}
    return FoldResult(model, fold, Path("."), metrics, pd.DataFrame(), pd.DataFrame(), None)


def test_metric_paths_and_false_positive_rate() -> None:
    metrics = _result("m", 0, 0.9, 0.97).metrics
    assert metric_value(metrics, "classification.accuracy") == 0.9
    assert metric_value(metrics, "classification.per_class.malignant.fpr") == pytest.approx(0.03)
    assert math.isnan(metric_value(metrics, "classification.f1_weighted"))
    assert math.isnan(metric_value(metrics, "segmentation.per_class.x.y"))


def test_p003_table_sets_published_beside_ours() -> None:
    results = [_result("mtl_resnet50", 0, 0.80, 0.96), _result("mtl_resnet50", 1, 0.90, 0.94)]
    table = reproduction_table("p003", results, "busflow kfold", NO_INTERVALS, classes=BINARY).set_index(["model", "metric"])
    accuracy = table.loc[("mtl_resnet50", "ACC")]
    assert accuracy["paper_value"] == 0.9461 and accuracy["ours_mean"] == pytest.approx(0.85)
    assert accuracy["delta"] == pytest.approx(0.85 - 0.9461) and accuracy["folds"] == 2 and accuracy["status"] == "ok"
    assert table.loc[("mtl_resnet50", "FPR"), "ours_mean"] == pytest.approx(0.05)
    assert table.loc[("swin_tiny", "ACC"), "status"] == "model not in this run"
    assert math.isnan(accuracy["ours_pooled"])  # no interval computed for it here
    assert len(table) == len(published()["p003"]["rows"])


def test_metrics_a_run_does_not_compute_are_said_so() -> None:
    table = reproduction_table("p001", [_result("vgg19", 0, 0.9, 0.9)], "busflow kfold", NO_INTERVALS, classes=THREE)
    assert table.set_index("model").loc["vgg19", "status"] == "metric not computed"


def test_a_number_over_other_classes_is_listed_without_ours() -> None:
    """P004's surviving numbers are over three classes: a benign-vs-malignant run does not set its own beside them."""
    results = [_result("mtl_resunet_p004", 0, 0.9, 0.9)]
    three = reproduction_table("p004", results, "busflow kfold", NO_INTERVALS, classes=THREE).set_index("metric")
    assert three.loc["ACC", "status"] == "ok" and three.loc["ACC", "ours_mean"] == 0.9
    two = reproduction_table("p004", results, "busflow kfold", NO_INTERVALS, classes=BINARY).set_index("metric")
    assert set(two["status"]) == {"paper's value is over normal, benign, malignant; this run has benign, malignant"}
    assert two["ours_mean"].isna().all() and two["paper_value"].notna().all()


def test_no_paper_gives_an_empty_table_and_unknown_paper_an_error() -> None:
    assert reproduction_table(None, [], "x", NO_INTERVALS, classes=BINARY).empty
    with pytest.raises(ValueError, match="no published values for 'p999'"):
        reproduction_table("p999", [], "x", NO_INTERVALS, classes=BINARY)


def test_every_published_model_is_a_model_of_its_preset() -> None:
    import yaml

    from conftest import REPO

    for paper, source in published().items():
        preset = yaml.safe_load((REPO / "config" / "presets" / f"{paper}.yaml").read_text())
        assert preset["reproduces"] == paper
        ours = {*preset["train"]["models"], *(cascade["name"] for cascade in preset["cascades"]), *(preset.get("ensembles") or {})}
        not_ours = {row["model"] for row in source["rows"] if row.get("in_busflow") is False}
        assert {row["model"] for row in source["rows"]} - ours == not_ours, paper  # the paper's names, flagged


def test_pooled_value_and_interval_sit_beside_the_fold_mean() -> None:
    intervals = pd.DataFrame([{"model": "mtl_resnet50", "metric": "classification.accuracy", "n_images": 100, "n_groups": 80,
                               "estimate": 0.86, "ci_low": 0.79, "ci_high": 0.92, "confidence": 0.95, "resamples": 1000}],
                             columns=INTERVAL_COLUMNS)
    results = [_result("mtl_resnet50", 0, 0.80, 0.96), _result("mtl_resnet50", 1, 0.90, 0.94)]
    row = reproduction_table("p003", results, "busflow kfold", intervals, classes=BINARY).set_index(["model", "metric"]).loc[("mtl_resnet50", "ACC")]
    assert (row["ours_pooled"], row["ci_low"], row["ci_high"]) == (0.86, 0.79, 0.92)
