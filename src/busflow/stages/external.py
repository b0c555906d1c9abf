"""The ``external`` stage: test the run's trained models on other datasets (external validation).

For every dataset of ``external.datasets`` the stage fetches it like the download stage (``data.<name>``),
preprocesses it with the run's own ``preprocess`` settings, and runs every fold model of
``external.models`` on *all* its images: none of them was seen in training, and no patient is shared
between datasets. Each fold model keeps the operating threshold it chose on its in-domain validation
images, so nothing is tuned on the external data. Output: ``external/<dataset>/{raw,data}/`` and
``external/<dataset>/<model>/fold<k>/`` with the files of the evaluate stage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from busflow.data.folder import patients_known
from busflow.data.sources import fetch_dataset
from busflow.errors import ModelFileError
from busflow.io import atomic_dir
from busflow.predictions import load_predictions, prediction_table, save_predictions
from busflow.stages import preprocess
from busflow.stages.evaluate import evaluate_model, headline
from busflow.train.device import configure_threads, params_device
from busflow.train.loop import ArrayData, predict
from busflow.train.outputs import load_trained


def predict_external(model_dir: Path, arrays: Mapping[str, np.ndarray], groups: list[str], device: Any, out_dir: Path,
                     precision: str = "fp32") -> None:
    """predictions.npz/.csv of one fold model on every image of an external dataset."""
    model, card = load_trained(model_dir)
    classes = arrays["classes"].tolist()
    if card.classes != classes or card.image_size != arrays["images"].shape[-1]:
        raise ModelFileError(f"{model_dir / 'model.json'}: trained on classes {card.classes} at {card.image_size} px, "
                             f"but the external data has {classes} at {arrays['images'].shape[-1]} px")
    data = ArrayData(arrays["images"], arrays["masks"], arrays["labels"])
    rows = np.arange(len(arrays["image_ids"]))
    outputs = predict(model.to(device), data, rows, device, precision=precision)
    table = prediction_table(arrays["image_ids"], groups, arrays["labels"], classes, outputs)
    # The fold model's own validation outputs travel along, so evaluation keeps its in-domain operating point.
    validation = load_predictions(model_dir / "predictions.npz", "val")
    save_predictions(out_dir, table, outputs, validation=(validation.image_ids, validation.outputs))


def run(params: Mapping[str, Any], *, arrays: Path, models: Path, out: Path, gpus: int = 0,
        log: Callable[[str], None] = print) -> None:
    """Every external dataset × model × fold, written into ``out`` (replaced only when all succeed), on the
    device :func:`busflow.train.device.job_device` gives a job granted ``gpus`` GPUs."""
    configure_threads()
    settings = params["external"]
    with params_device(params, gpus, log) as device, atomic_dir(out) as staging:
        for dataset in settings["datasets"]:
            prefixed = lambda line, dataset=dataset: log(f"[{dataset}] {line}")
            fetch_dataset(params, staging / dataset / "raw", dataset=dataset)
            data_dir = staging / dataset / "data"
            index, external_arrays = preprocess.run(params, raw=staging / dataset / "raw", index=data_dir / "index.csv",
                                                    arrays=data_dir / "arrays.npz", skipped=data_dir / "skipped.csv", log=prefixed)
            groups = index["patient_id" if patients_known(index) else "image_id"].astype(str).tolist()
            for model in settings["models"]:
                for fold in params["train"]["folds"]:
                    out_dir = staging / dataset / model / f"fold{fold}"
                    predict_external(models / model / f"fold{fold}", external_arrays, groups, device, out_dir,
                                     params["accelerator"]["predict_precision"])
                    metrics = evaluate_model(params, model, fold, data_dir / "arrays.npz", out_dir / "predictions.npz", out_dir,
                                             validation_arrays_path=arrays)
                    prefixed(f"{model} fold{fold}: {headline(metrics)}")
