"""benchmarks/leakage_study.py: the BUSI preset reduced to its leakage study, and the README table it makes of
the committed result."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import leakage_study
from readme_results import README, with_table


def test_the_study_trains_only_the_leakage_models_on_the_folds_and_seeds_given(tmp_path: Path) -> None:
    params = leakage_study.study_params(tmp_path, size=96, folds=4, seeds=[3, 5, 8])
    preset = yaml.safe_load((REPO / "config" / "presets" / "busi.yaml").read_text())
    default = yaml.safe_load((REPO / "params.yaml").read_text())
    models = preset["leakage"]["models"]
    assert params["train"] == {"models": models, "folds": [0, 1, 2, 3]}
    assert params["leakage"] == {"models": models, "seeds": [3, 5, 8]}
    assert params["models"] == {name: default["models"][name] for name in models}  # the CPU-sized networks
    assert params["cascades"] == [] and params["ensembles"] == {}
    assert params["split"]["n_folds"] == 4 and params["preprocess"]["size"] == 96
    assert params["data"]["busi"]["path"] == str(tmp_path.resolve())


def test_the_readme_table_marks_the_intervals_that_exclude_zero() -> None:
    paired = pd.DataFrame([
        {"model": "resnet50", "score": "roc_auc_macro", "subset": "all", "n_pairs": 10, "n_seeds": 2, "grouped_mean": 0.8,
         "image_level_mean": 0.85, "difference": 0.05, "ci_low": 0.01, "ci_high": 0.09, "size": 128, "folds": 3, "minutes": 50.2},
        {"model": "unet", "score": "dice", "subset": "with a leaked sibling", "n_pairs": 4, "n_seeds": 2, "grouped_mean": 0.6,
         "image_level_mean": 0.61, "difference": 0.01, "ci_low": -0.02, "ci_high": 0.04, "size": 128, "folds": 3, "minutes": 50.2}])
    table = leakage_study.readme_table(paired)
    assert table.startswith("BUSI at 128 px, 3 grouped folds vs image-level folds drawn with 2 seeds")
    assert "(50 min on 2 cores;" in table
    assert "| resnet50 | macro ROC AUC | all | 10 | 0.800 | 0.850 | +0.050 [+0.010, +0.090] * |" in table
    assert "| unet | Dice | with a leaked sibling | 4 | 0.600 | 0.610 | +0.010 [−0.020, +0.040] |" in table


def test_the_readme_table_is_what_the_committed_study_gives() -> None:
    current = README.read_text(encoding="utf-8")
    expected = leakage_study.readme_table(pd.read_csv(leakage_study.RESULTS_CSV))
    assert current == with_table(current, expected, leakage_study.START, leakage_study.END)


def test_the_phantom_study_trains_the_default_run_s_leakage_models_on_each_acquisition() -> None:
    import phantom_leakage

    default = yaml.safe_load((REPO / "params.yaml").read_text())
    for acquisition in phantom_leakage.ACQUISITIONS:
        params = phantom_leakage.leakage_params(acquisition)
        assert params["data"]["synthetic"]["acquisition"] == acquisition
        assert params["train"]["models"] == default["leakage"]["models"] == list(params["models"])
        assert params["leakage"] == default["leakage"] and params["split"] == default["split"]
        assert params["cascades"] == [] and params["ensembles"] == {}
