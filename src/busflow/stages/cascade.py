"""Segment → crop → classify (after Macrì et al.): lesion boxes from masks, crops, and the cascade stage.

The classifier trains on crops around the *ground-truth* lesions of the training part and is tested on
crops around the lesions the segmenter *predicted* on the test part, so segmentation errors propagate
into the classification result as they would in use. An image without a lesion (a normal image, or a
test image whose predicted mask is empty) contributes its central box instead, so the classifier also
learns what "no lesion here" looks like.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from busflow.data.preprocess import load_arrays
from busflow.evaluate.metrics import lesion_mask
from busflow.io import read_table
from busflow.models import build_model
from busflow.data.rois import extract_rois
from busflow.split.protocols import group_ids_of, role_indices
from busflow.train.checkpoint import checkpoint_path, discard_checkpoint
from busflow.train.device import configure_threads, resolve_device, seed_everything
from busflow.train.accelerate import acceleration, compile_model
from busflow.train.loop import ArrayData, batch_source, fit, predict
from busflow.predictions import load_predictions, prediction_table, save_predictions
from busflow.train.outputs import epoch_logger, save_run
from busflow.stages.train import describe_model, job_seed

def _predicted_masks(segmenter_predictions: Path, image_ids: np.ndarray, threshold: float) -> np.ndarray:
    # The cascade's test images are the segmenter's test images or (cascade protocol) a part of them.
    test = load_predictions(segmenter_predictions).aligned_to(image_ids, segmenter_predictions, exact=False)
    return lesion_mask(test.outputs["mask_probs"], threshold)


def run_cascade(params: Mapping[str, Any], fold: int, arrays_path: Path, folds_path: Path, segmenter_predictions: Path, out_dir: Path) -> None:
    configure_threads()
    cascade = params["cascade"]
    spec = cascade["classifier"]
    seed = job_seed(params["seed"], cascade["name"], fold)
    seed_everything(seed)
    arrays = load_arrays(arrays_path)
    folds = read_table(folds_path)
    roles = role_indices(folds, arrays["image_ids"], fold, stage="cascade")
    classes = arrays["classes"].tolist()
    test = roles["test"]
    masks = arrays["masks"].astype(bool).copy()
    masks[test] = _predicted_masks(segmenter_predictions, arrays["image_ids"][test], params["evaluate"]["threshold"])
    crops, boxes = extract_rois(arrays["images"], masks, margin=cascade["margin"],
                                empty_fraction=cascade["empty_roi_fraction"], size=cascade["crop_size"])
    data = ArrayData(crops, np.zeros_like(crops), arrays["labels"])
    device = resolve_device(params["device"])
    model = build_model(spec["arch"], in_channels=1, n_classes=len(classes), options=spec.get("options"))
    prefix = f"[{cascade['name']} fold{fold}]"
    print(f"{prefix} {spec['arch']} on crops ({cascade['crop_size']} px) of {cascade['segmenter']} masks, device {device}", flush=True)
    log = lambda line: print(f"{prefix} {line}", flush=True)  # noqa: E731
    setup = compile_model(model, device, acceleration(params["accelerator"], device), cascade["crop_size"], log)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = checkpoint_path(out_dir)
    with epoch_logger(out_dir) as on_epoch:
        history = fit(model, frozenset({"cls"}), data, roles["train"], roles["val"], spec, n_classes=len(classes),
                      device=device, seed=seed, log=log, on_epoch=on_epoch, checkpoint=checkpoint, setup=setup)
    description = describe_model(spec, n_classes=len(classes), classes=classes, image_size=cascade["crop_size"], device=device,
                                 preprocess=params["preprocess"], setup=setup)
    description.update(cascade={"segmenter": cascade["segmenter"], "margin": cascade["margin"],
                                "empty_roi_fraction": cascade["empty_roi_fraction"], "threshold": params["evaluate"]["threshold"]})
    save_run(out_dir, model, description, history)
    source = batch_source(data, device, setup)
    outputs = predict(model, source, test, device)
    table = prediction_table(arrays["image_ids"][test], group_ids_of(folds, arrays["image_ids"][test]),
                             data.labels[test], classes, outputs)
    # Validation crops surround ground-truth lesions, as in training: the segmenter predicts only the test part.
    validation = (arrays["image_ids"][roles["val"]], predict(model, source, roles["val"], device))
    save_predictions(out_dir, table, outputs, extra={"boxes": boxes[test], "crops": crops[test]}, validation=validation)
    discard_checkpoint(checkpoint)
