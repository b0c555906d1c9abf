"""The ``cascade`` stage, segment → crop → classify (after Macrì et al.), on one test fold.

The classifier trains on crops around the *ground-truth* lesions of the training part and is tested on
crops around the lesions the segmenter *predicted* on the test part, so segmentation errors propagate
into the classification result as they would in use. An image without a lesion (a normal image, or a
test image whose predicted mask is empty) contributes its central box instead, so the classifier also
learns what "no lesion here" looks like. Validation crops surround ground-truth lesions, as in training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from busflow.config import cascade_settings
from busflow.data.rois import extract_rois
from busflow.errors import ParamsError
from busflow.evaluate.metrics import lesion_mask
from busflow.model_card import CascadeLink
from busflow.predictions import load_predictions
from busflow.stages.init_weights import read_init_record
from busflow.train.job import FoldData, run_training_job
from busflow.train.loop import ArrayData
from busflow.train.spec import TrainSpec


def predicted_masks(segmenter_predictions: Path, image_ids: np.ndarray, threshold: float) -> np.ndarray:
    """The segmenter's lesion masks of ``image_ids`` (its test images or, with the cascade protocol, a part of them)."""
    test = load_predictions(segmenter_predictions).aligned_to(image_ids, segmenter_predictions, exact=False)
    return lesion_mask(test.outputs["mask_probs"], threshold)


def run(params: Mapping[str, Any], *, model: str, fold: int, arrays: Path, folds: Path, segmenter: Path, init: Path, out: Path,
        gpus: int = 0) -> None:
    """Train the crop classifier of cascade ``model`` (one of ``cascades:``) on fold ``fold`` and test it on crops of
    ``segmenter``'s predicted masks (``gpus``: what the scheduler granted the job)."""
    settings = cascade_settings(params).get(model)
    if settings is None:
        raise ParamsError(f"cascades: no cascade named '{model}' (defined: {sorted(cascade_settings(params)) or 'none'})")
    link = CascadeLink(segmenter=settings["segmenter"], margin=settings["margin"],
                       empty_roi_fraction=settings["empty_roi_fraction"], threshold=params["evaluate"]["threshold"])
    inputs = FoldData.load(arrays, folds, fold, stage="cascade")
    test = inputs.roles["test"]
    masks = inputs.data.masks.astype(bool)  # a new array: the test part is replaced below
    masks[test] = predicted_masks(segmenter, inputs.image_ids[test], link.threshold)
    crops, boxes = extract_rois(inputs.data.images, masks, margin=link.margin, empty_fraction=link.empty_roi_fraction,
                                size=settings["crop_size"])
    on_crops = replace(inputs, data=ArrayData(crops, np.zeros_like(crops), inputs.data.labels))
    run_training_job(params, settings["name"], fold, TrainSpec.of(settings["classifier"]), on_crops, out,
                     tasks=frozenset({"cls"}), cascade=link, detail=f" on {settings['crop_size']} px crops of {link.segmenter} masks",
                     test_extras={"boxes": boxes[test], "crops": crops[test]}, init=read_init_record(init), gpus=gpus)
