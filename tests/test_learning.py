"""Learning happens: a small U-Net trained for a few epochs on phantoms segments held-out patients far
better than the same network untrained, and the cascade classifier beats chance on held-out patients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from busflow.config import load_params, model_spec
from busflow.data.folder import ingest_folder
from busflow.data.preprocess import preprocess_index
from busflow.data.rois import extract_rois
from busflow.data.synthetic import generate_phantoms
from busflow.models import build_model
from busflow.split.groups import build_groups
from busflow.split.protocols import make_split, role_indices
from busflow.train.device import seed_everything
from busflow.train.loop import ArrayData, FitRun, fit, predict
from busflow.train.spec import TrainSpec

from conftest import TINY_PARAMS

# One torch thread: with two, OpenMP's spin-waits slow these fits thirtyfold whenever another job (the Slurm
# pipeline the suite runs in the background) holds the other core.
pytestmark = pytest.mark.usefixtures("single_thread_torch")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> tuple[ArrayData, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("phantoms") / "raw"
    generate_phantoms(root, n_patients=70, seed=11, image_size=(96, 120))
    index = ingest_folder(root)
    arrays = preprocess_index(index, size=32)
    split = dict(load_params(TINY_PARAMS)["split"], n_folds=3, val_fraction=0.15)
    folds = make_split(index, build_groups(index, split)[0], split, seed=0)
    rows = role_indices(folds, arrays["image_ids"], fold=0)
    return ArrayData(arrays["images"], arrays["masks"], arrays["labels"]), rows


def _dice(probs: np.ndarray, masks: np.ndarray) -> float:
    predicted, truth = probs >= 0.5, masks > 0
    return float(2 * (predicted & truth).sum() / max(predicted.sum() + truth.sum(), 1))


def test_unet_dice_rises_well_above_untrained(phantoms) -> None:
    data, rows = phantoms
    seed_everything(0)
    spec = dict(load_params(TINY_PARAMS)["models"]["unet"], epochs=10, patience=0, lr=3e-3)
    model = build_model("unet", in_channels=1, n_classes=3, options=spec["options"])
    device = torch.device("cpu")
    untrained = _dice(predict(model, data, rows["test"], device)["mask_probs"], data.masks[rows["test"]])
    history = fit(model, TrainSpec.of(spec), data, rows["train"], rows["val"], tasks=frozenset({"seg"}), n_classes=3,
        run=FitRun(device=device, seed=0, log=lambda _: None))
    trained = _dice(predict(model, data, rows["test"], device)["mask_probs"], data.masks[rows["test"]])
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert trained > 0.45 and trained > untrained + 0.3, (untrained, trained)


def test_cascade_classifier_beats_chance_on_held_out_lesion_crops(phantoms) -> None:
    data, rows = phantoms
    seed_everything(0)
    spec = dict(model_spec(load_params(TINY_PARAMS), "cascade"), epochs=10, patience=0, lr=2e-3)
    crops, _ = extract_rois(data.images, data.masks > 0, margin=0.15, empty_fraction=0.5, size=32)
    crop_data = ArrayData(crops, np.zeros_like(crops), data.labels)
    model = build_model(spec["arch"], in_channels=1, n_classes=3, options=spec["options"])
    fit(model, TrainSpec.of(spec), crop_data, rows["train"], rows["val"], tasks=frozenset({"cls"}), n_classes=3,
        run=FitRun(device=torch.device("cpu"), seed=0, log=lambda _: None))
    probs = predict(model, crop_data, rows["test"], torch.device("cpu"))["class_probs"]
    auc = roc_auc_score(data.labels[rows["test"]], probs, multi_class="ovr")
    print(f"cascade crop AUC {auc:.3f}")
    assert auc > 0.7, auc
