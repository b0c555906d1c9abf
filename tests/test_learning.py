"""Learning happens: a small U-Net trained for a few epochs on phantoms segments held-out patients far
better than the same network untrained, and a classifier beats chance on held-out patients."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from busflow.config import load_params, model_spec
from busflow.data.folder import ingest_folder
from busflow.data.preprocess import preprocess_index
from busflow.data.synthetic import generate_phantoms
from busflow.models import build_model
from busflow.train.device import seed_everything
from busflow.train.loop import ArrayData, fit, predict
from conftest import TINY_PARAMS

import torch


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> tuple[ArrayData, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("phantoms") / "raw"
    generate_phantoms(root, n_patients=90, seed=11, image_size=(96, 120))
    index = ingest_folder(root)
    arrays = preprocess_index(index, size=32)
    patients = index["patient_id"].to_numpy()
    unique = np.unique(patients)
    held_out = np.isin(patients, unique[-25:])
    validation = np.isin(patients, unique[-35:-25])
    rows = {"train": np.flatnonzero(~held_out & ~validation), "val": np.flatnonzero(validation), "test": np.flatnonzero(held_out)}
    return ArrayData(arrays["images"], arrays["masks"], arrays["labels"]), rows


def _dice(probs: np.ndarray, masks: np.ndarray) -> float:
    predicted, truth = probs >= 0.5, masks > 0
    return float(2 * (predicted & truth).sum() / max(predicted.sum() + truth.sum(), 1))


def test_unet_dice_rises_well_above_untrained(phantoms) -> None:
    data, rows = phantoms
    seed_everything(0)
    spec = dict(load_params(TINY_PARAMS)["models"]["unet"], epochs=12, patience=0, lr=3e-3)
    model = build_model("unet", in_channels=1, n_classes=3, options=spec["options"])
    device = torch.device("cpu")
    untrained = _dice(predict(model, data, rows["test"], device)["mask_probs"], data.masks[rows["test"]])
    history = fit(model, frozenset({"seg"}), data, rows["train"], rows["val"], spec, n_classes=3, device=device, seed=0, log=lambda _: None)
    trained = _dice(predict(model, data, rows["test"], device)["mask_probs"], data.masks[rows["test"]])
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert trained > 0.45 and trained > untrained + 0.3, (untrained, trained)


def test_classifier_beats_chance_on_held_out_patients(phantoms) -> None:
    data, rows = phantoms
    seed_everything(0)
    params = load_params(TINY_PARAMS)
    spec = dict(model_spec(params, "cascade"), epochs=15, patience=0, lr=2e-3)
    model = build_model(spec["arch"], in_channels=1, n_classes=3, options=spec["options"])
    fit(model, frozenset({"cls"}), data, rows["train"], rows["val"], spec, n_classes=3, device=torch.device("cpu"), seed=0, log=lambda _: None)
    probs = predict(model, data, rows["test"], torch.device("cpu"))["class_probs"]
    truth = data.labels[rows["test"]]
    lesion_auc = roc_auc_score(truth > 0, 1 - probs[:, 0])  # lesion vs normal
    assert lesion_auc > 0.7, lesion_auc
