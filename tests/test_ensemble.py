"""The ensemble stage: probability means, validation weights, alignment, and all-or-nothing output."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from busflow.config import validate_params
from busflow.data.preprocess import save_arrays
from busflow.errors import ParamsError
from busflow.predictions import PartOutputs, load_predictions, prediction_table, save_predictions
from busflow.stages import ensemble
from busflow.stages.ensemble import member_weights

from conftest import TINY_PARAMS

SIZE = 8
IDS = [f"img{i}" for i in range(8)]
TEST, VAL = IDS[:4], IDS[4:]


def _disc_masks() -> np.ndarray:
    masks = np.zeros((len(IDS), SIZE, SIZE), np.uint8)
    masks[:, 2:6, 2:6] = 1
    masks[3] = 0  # one normal image
    return masks


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """Arrays, folds and two members: ``good`` matches the truth on validation, ``poor`` misses half."""
    masks = _disc_masks()
    labels = np.array([0, 1, 1, 2, 0, 1, 2, 1])
    save_arrays(tmp_path / "arrays.npz", {"images": masks * 200, "masks": masks, "labels": labels,
                                          "image_ids": np.array(IDS), "classes": np.array(["normal", "benign", "malignant"])})
    pd.DataFrame({"image_id": IDS, "group_id": [f"g{i}" for i in range(8)]}).to_csv(tmp_path / "folds.csv", index=False)
    rng = np.random.default_rng(0)
    for name, damage in (("good", 0.0), ("poor", 0.5)):
        probs = masks.astype(np.float32)
        probs[:, :, : int(SIZE * damage)] = 0.0
        outputs = {"mask_probs": probs, "class_probs": rng.dirichlet(np.ones(3), len(IDS)).astype(np.float32)}
        test = {k: v[:4] for k, v in outputs.items()}
        table = prediction_table(TEST, TEST, labels[:4], ["normal", "benign", "malignant"], test)
        save_predictions(tmp_path / "models" / name / "fold0", table, test,
                         validation=(VAL, {k: v[4:] for k, v in outputs.items()}))
    return tmp_path


def _params(ensembles: dict) -> dict:
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["train"]["models"] = ["good", "poor"]
    params["train"]["folds"] = [0]
    params["models"] = {"good": copy.deepcopy(params["models"]["unet"]), "poor": copy.deepcopy(params["models"]["mtl_resnet50"])}
    params["cascades"][0]["segmenter"] = "good"
    params["leakage"]["models"] = []
    params["ablation"] = {"model": None, "lr": [], "options": {}}
    params["ensembles"] = ensembles
    return validate_params(params, check_registry=False)


def _build(run_dir: Path, ensembles: dict) -> Path:
    out = run_dir / "ensembles"
    ensemble.run(_params(ensembles), arrays=run_dir / "arrays.npz", folds=run_dir / "folds.csv", models=run_dir / "models", out=out,
                 log=lambda _: None)
    return out


def test_equal_weights_average_the_member_probabilities(run_dir: Path) -> None:
    out = _build(run_dir, {"mean": {"members": ["good", "poor"], "weights": "equal"}})
    combined = load_predictions(out / "mean/fold0/predictions.npz")
    members = [load_predictions(run_dir / f"models/{m}/fold0/predictions.npz") for m in ("good", "poor")]
    expected_masks = (members[0].outputs["mask_probs"] + members[1].outputs["mask_probs"]) / 2
    assert np.abs(combined.outputs["mask_probs"] - expected_masks).max() <= 1 / 255 + 1e-6  # stored as uint8
    np.testing.assert_allclose(combined.outputs["class_probs"], (members[0].outputs["class_probs"] + members[1].outputs["class_probs"]) / 2, rtol=1e-6)
    model = json.loads((out / "mean/fold0/model.json").read_text())
    assert model["weights"]["seg"] == {"good": 0.5, "poor": 0.5} and model["tasks"] == ["cls", "seg"]
    metrics = json.loads((out / "mean/fold0/metrics.json").read_text())
    assert metrics["n_test_images"] == 4 and metrics["segmentation"]["dice"] is not None


def test_validation_weights_follow_the_members_validation_dice(run_dir: Path) -> None:
    out = _build(run_dir, {"weighted": {"members": ["good", "poor"], "weights": "validation"}})
    weights = json.loads((out / "weighted/fold0/model.json").read_text())["weights"]["seg"]
    # Validation images: good has Dice 1 everywhere; poor loses 2 of 4 lesion columns (Dice 2/3) on three
    # lesion images and scores 1 on none (all validation images have lesions here).
    good, poor = 1.0, 2 * 8 / (8 + 16)
    assert weights["good"] == pytest.approx(good / (good + poor))
    assert weights["good"] > weights["poor"]
    metrics_weighted = json.loads((out / "weighted/fold0/metrics.json").read_text())["segmentation"]["dice"]
    equal = _build(run_dir, {"mean": {"members": ["good", "poor"], "weights": "equal"}})
    metrics_equal = json.loads((equal / "mean/fold0/metrics.json").read_text())["segmentation"]["dice"]
    assert metrics_weighted >= metrics_equal


def test_fixed_weights_are_normalised() -> None:
    parts = {"a": PartOutputs(np.array(["x"]), {}), "b": PartOutputs(np.array(["x"]), {})}
    weights = member_weights("mask_probs", ["a", "b"], [3, 1], parts, np.zeros((1, 2, 2)), 0.5)
    np.testing.assert_allclose(weights, [0.75, 0.25])


def test_members_predicting_different_images_are_refused_and_old_output_kept(run_dir: Path) -> None:
    out = _build(run_dir, {"mean": {"members": ["good", "poor"], "weights": "equal"}})
    before = (out / "mean/fold0/predictions.npz").read_bytes()
    poor = run_dir / "models/poor/fold0"
    outputs = {k: v[:3] for k, v in load_predictions(poor / "predictions.npz").outputs.items()}
    table = prediction_table(TEST[:3], TEST[:3], np.zeros(3, int), ["normal", "benign", "malignant"], outputs)
    save_predictions(poor, table, outputs, validation=(VAL, load_predictions(poor / "predictions.npz", "val").outputs))
    with pytest.raises(ValueError, match="poor/fold0/predictions.npz: predicted images differ"):
        _build(run_dir, {"mean": {"members": ["good", "poor"], "weights": "equal"}})
    assert (out / "mean/fold0/predictions.npz").read_bytes() == before


@pytest.mark.parametrize(("ensemble", "message"), [
    ({"members": ["good", "ghost"], "weights": "equal"}, "'ghost' is not one of train.models"),
    ({"members": ["good", "poor"], "weights": [1.0]}, "1 weights for 2 members"),
    ({"members": ["good", "poor"], "weights": [0, 0]}, "at least one weight must be positive"),
    ({"members": ["good"], "weights": "equal"}, "should be non-empty|is too short"),
    ({"members": ["good", "poor"], "weights": "median"}, "'median' is not one of equal, validation or a list of numbers"),
])
def test_bad_ensemble_settings_name_the_key(ensemble: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        _params({"bad": ensemble})


def test_an_ensemble_may_not_take_a_model_name() -> None:
    with pytest.raises(ParamsError, match="ensembles.good: the name clashes"):
        _params({"good": {"members": ["good", "poor"], "weights": "equal"}})


def test_members_without_a_shared_output_are_refused() -> None:
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["ensembles"] = {"mixed": {"members": ["unet", "resnet50"], "weights": "equal"}}
    with pytest.raises(ParamsError, match="ensembles.mixed.members: the members share no output"):
        validate_params(params)
