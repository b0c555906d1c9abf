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
from busflow.data.bad_samples import BadSamples
from busflow.data.preprocess import preprocess_raw, save_arrays
from busflow.data.sources import fetch_dataset
from busflow.stages.evaluate import evaluate_model, headline
from busflow.io import atomic_dir, write_csv
from busflow.predictions import load_predictions, prediction_table, save_predictions
from busflow.train.device import configure_threads, resolve_device
from busflow.train.loop import ArrayData, predict
from busflow.train.outputs import load_trained


def predict_external(model_dir: Path, arrays: Mapping[str, np.ndarray], groups: list[str], device: Any, out_dir: Path) -> None:
    """predictions.npz/.csv of one fold model on every image of an external dataset."""
    model, description = load_trained(model_dir)
    classes = arrays["classes"].tolist()
    if description["classes"] != classes or description["image_size"] != arrays["images"].shape[-1]:
        raise ValueError(f"{model_dir / 'model.json'}: trained on classes {description['classes']} at "
                         f"{description['image_size']} px, but the external data has {classes} at {arrays['images'].shape[-1]} px")
    data = ArrayData(arrays["images"], arrays["masks"], arrays["labels"])
    rows = np.arange(len(arrays["image_ids"]))
    outputs = predict(model.to(device), data, rows, device)
    table = prediction_table(arrays["image_ids"], groups, arrays["labels"], classes, outputs)
    # The fold model's own validation outputs travel along, so evaluation keeps its in-domain operating point.
    validation = load_predictions(model_dir / "predictions.npz", "val")
    save_predictions(out_dir, table, outputs, validation=(validation.image_ids, validation.outputs))


def run_external(params: Mapping[str, Any], arrays_path: Path, models_dir: Path, out_root: Path,
                 log: Callable[[str], None] = print) -> None:
    """Every external dataset × model × fold, written into ``out_root`` (replaced only when all succeed)."""
    configure_threads()
    settings, device = params["external"], resolve_device(params["device"])
    with atomic_dir(out_root) as staging:
        for dataset in settings["datasets"]:
            fetch_dataset(params, staging / dataset / "raw", dataset=dataset)
            bad = BadSamples(params["data"]["on_bad_sample"])
            index, arrays, left_out = preprocess_raw(staging / dataset / "raw", params["preprocess"], bad)
            external_arrays = staging / dataset / "data" / "arrays.npz"
            save_arrays(external_arrays, arrays)
            write_csv(staging / dataset / "data" / "index.csv", index)
            write_csv(staging / dataset / "data" / "skipped.csv", bad.table())
            log(f"[{dataset}] {bad.summary(staging / dataset / 'data' / 'skipped.csv')}")
            groups = index["patient_id"].astype(str).tolist() if patients_known(index) else index["image_id"].astype(str).tolist()
            log(f"[{dataset}] {len(index)} images preprocessed like the run ({left_out} of other classes left out)")
            for model in settings["models"]:
                for fold in params["train"]["folds"]:
                    out_dir = staging / dataset / model / f"fold{fold}"
                    predict_external(models_dir / model / f"fold{fold}", arrays, groups, device, out_dir)
                    metrics = evaluate_model(params, model, fold, external_arrays, out_dir / "predictions.npz", out_dir,
                                             validation_arrays_path=arrays_path)
                    log(f"[{dataset}] {model} fold{fold}: {headline(metrics)}")
