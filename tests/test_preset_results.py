"""benchmarks/preset_results.py: a preset's params for a real-data run, and the README rows it reads from a
finished run's report tables (the shared tiny run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import preset_results
from readme_results import COLUMNS

from busflow.config import load_params


def test_the_preset_reads_the_dataset_in_place_with_the_overrides(tmp_path: Path) -> None:
    params = preset_results.preset_params("busi", tmp_path, size=96, epochs=3, with_leakage=False)
    assert params["data"]["busi"]["path"] == str(tmp_path.resolve()) and params["preprocess"]["size"] == 96
    assert {spec["epochs"] for spec in params["models"].values()} == {3}
    assert all(cascade["classifier"]["epochs"] == 3 for cascade in params["cascades"])
    assert params["leakage"]["models"] == []
    kept = preset_results.preset_params("busi", tmp_path, size=None, epochs=None, with_leakage=True)
    preset = yaml.safe_load((REPO / "config" / "presets" / "busi.yaml").read_text())
    assert kept["leakage"] == preset["leakage"] and kept["preprocess"]["size"] == preset["preprocess"]["size"]


def test_external_datasets_replace_the_preset_s_and_are_read_in_place(tmp_path: Path) -> None:
    params = preset_results.preset_params("cross", tmp_path / "busi", size=None, epochs=None, with_leakage=False,
                                          external={"busbra": tmp_path / "busbra"}, folds=3)
    assert params["external"]["datasets"] == ["busbra"]
    assert params["data"]["busbra"]["path"] == str((tmp_path / "busbra").resolve())
    assert params["split"]["n_folds"] == 3 and params["train"]["folds"] == [0, 1, 2]
    preset = yaml.safe_load((REPO / "config" / "presets" / "cross.yaml").read_text())
    assert params["external"]["models"] == preset["external"]["models"]
    untouched = preset_results.preset_params("cross", tmp_path, size=None, epochs=None, with_leakage=False)
    assert untouched["external"] == preset["external"] and untouched["train"] == preset["train"]
    assert preset_results.external_folder("busbra=/data/BUSBRA") == ("busbra", Path("/data/BUSBRA"))
    with pytest.raises(SystemExit, match="DATASET=PATH"):
        preset_results.external_folder("busbra")


def test_the_rows_are_the_run_s_pooled_values_with_counts_and_minutes(tiny_project: Path) -> None:
    params = load_params(tiny_project / "params.yaml")
    tables = tiny_project / "results" / params["run"] / "report" / "tables"
    classes = preset_results.run_classes(tables)
    rows = preset_results.results_rows(tables, params, classes, "cmd", "a note")
    assert list(rows.columns[: len(COLUMNS)]) == COLUMNS
    assert classes == ["normal", "benign", "malignant"] and set(rows["task"]) == {"normal vs benign vs malignant"}

    leaderboard = pd.read_csv(tables / "leaderboard.csv").set_index(["model", "split"])
    for row in rows.itertuples():
        entry = leaderboard.loc[(row.model, params["split"]["protocol"])]
        assert row.pooled == pytest.approx(entry[f"{row.metric}_pooled"], abs=5e-4)
        assert row.ci_low <= row.pooled <= row.ci_high
    by_model = rows.drop_duplicates("model").set_index("model")
    assert {"unet", "resnet50", "cascade", "seg_ensemble"} <= set(by_model.index)
    assert set(rows.loc[rows["model"] == "unet", "metric"]) == {"dice"}  # a segmenter has no classification rows
    members = params["ensembles"]["seg_ensemble"]["members"]
    assert by_model.loc["seg_ensemble", "wall_min"] == pytest.approx(sum(by_model.loc[m, "wall_min"] for m in members), abs=0.15)
    assert (by_model["wall_min"] > 0).all()


def test_the_init_label_names_where_the_encoder_started() -> None:
    assert preset_results.init_label({"arch": "resnet50"}) == "scratch"
    assert preset_results.init_label({"init": {"pretrain": "simclr"}}) == "simclr in-domain pretraining"
    assert preset_results.init_label({"init": {"weights": "/w/resnet50-11ad3fa6.pth", "format": "torchvision"}}) == \
        "torchvision weights resnet50-11ad3fa6.pth"


def test_cpu_models_train_the_default_run_s_networks_on_the_preset_s_data(tmp_path: Path) -> None:
    params = preset_results.preset_params("busbra", tmp_path, size=None, epochs=None, with_leakage=False, cpu_models=True)
    default = yaml.safe_load((REPO / "params.yaml").read_text())
    preset = yaml.safe_load((REPO / "config" / "presets" / "busbra.yaml").read_text())
    assert params["models"] == default["models"] and params["accelerator"] == default["accelerator"]
    assert params["split"] == preset["split"] and params["preprocess"] == preset["preprocess"]
    assert params["cascades"] == preset["cascades"]
    assert set(params["ensembles"]) == set(default["ensembles"])  # its members are all trained by the preset
    preset_only = preset_results.preset_params("busbra", tmp_path, size=None, epochs=None, with_leakage=False)
    assert preset_only["models"] == preset["models"] and preset_only["ensembles"] == {}


def test_cpu_models_refuse_a_preset_model_the_default_run_does_not_have() -> None:
    preset = yaml.safe_load((REPO / "config" / "presets" / "busi.yaml").read_text())
    preset["train"]["models"] = ["unet", "swin_unet"]
    with pytest.raises(ValueError, match="swin_unet"):
        preset_results.with_cpu_models(preset)
