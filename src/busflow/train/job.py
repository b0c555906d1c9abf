"""One training job: a network fitted on the training part of one fold, saved with its model card, and its
predictions on the fold's test and validation parts written beside it.

The ``train`` stage runs a job on the preprocessed images; the ``cascade`` stage runs the same job on lesion
crops. Both write the files of the train contract (``layout.TRAIN_OUTPUTS``) and resume from the job's
checkpoint after an interruption.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from busflow.data.download import sha256_of
from busflow.data.preprocess import load_arrays
from busflow.errors import DatasetError, ModelFileError
from busflow.io import read_table
from busflow.model_card import CascadeLink, NetworkCard, TrainedOn
from busflow.models import build_model, model_tasks
from busflow.models.pretrained import NORMALIZATIONS, attach_input_normalization, load_pretrained
from busflow.predictions import prediction_table, save_predictions
from busflow.split.protocols import group_ids_of, role_indices
from busflow.train.accelerate import REFERENCE, Acceleration, acceleration, compile_model
from busflow.train.checkpoint import checkpoint_path, discard_checkpoint
from busflow.train.device import (
    apply_determinism,
    configure_threads,
    device_name,
    is_deterministic,
    params_device,
    resolve_deterministic,
    seed_everything,
)
from busflow.train.loop import ArrayData, FitRun, batch_source, fit, predict
from busflow.train.outputs import epoch_logger, save_run
from busflow.train.spec import TrainSpec


def job_seed(seed: int, model: str, fold: int) -> int:
    """A distinct, reproducible seed per (model, fold) job, independent of job order."""
    return (seed * 1_000_003 + sum(map(ord, model)) * 101 + fold) % 2**31


@dataclass(frozen=True)
class FoldData:
    """What one job learns from and predicts: one row per image of the run, and the rows of each role."""

    data: ArrayData  # the network's inputs (images or lesion crops), masks and labels
    image_ids: np.ndarray
    roles: Mapping[str, np.ndarray]  # train / val / test row numbers
    folds: pd.DataFrame  # the split table (group of every image)
    classes: list[str]

    @classmethod
    def load(cls, arrays_path: Path, folds_path: Path, fold: int, stage: str = "fold") -> FoldData:
        """The preprocessed arrays and the roles of test fold ``fold`` (``stage="cascade"``: the ROI classifier's column)."""
        arrays = load_arrays(arrays_path)
        folds = read_table(folds_path)
        return cls(ArrayData(arrays["images"], arrays["masks"], arrays["labels"]), arrays["image_ids"],
                   role_indices(folds, arrays["image_ids"], fold, stage=stage), folds, arrays["classes"].tolist())

    def describe(self) -> str:
        return " / ".join(f"{len(self.roles[role])} {role}" for role in ("train", "val", "test")) + " images"


@dataclass(frozen=True)
class EncoderStart:
    """What a pretrained start did to a network: the card's ``init`` entry and its input normalisation."""

    init: Mapping[str, Any] | None = None
    input_normalization: Mapping[str, float] | None = None


SCRATCH = EncoderStart()


def _verified(path: Path, sha256: str) -> Path:
    if not path.is_file() or sha256_of(path) != sha256:
        raise ModelFileError(f"{path}: the weight file changed (or is gone) since its init record was written; "
                             "rerun the workflow so that the init-weights stage records it again")
    return path


def _pretrained_encoder(record: Mapping[str, Any], fold: int, test_ids: np.ndarray) -> Mapping[str, str]:
    """The fold's self-supervised encoder (file and sha256), after checking that its pretraining pool holds none of
    the job's test images."""
    encoder = record["folds"].get(str(fold))
    if encoder is None:
        raise ModelFileError(f"the init record of {record['model']} has no {record['pretrain']} encoder for fold {fold}")
    seen = set(pd.read_csv(encoder["pool"], dtype=str)["image_id"]) & {str(i) for i in test_ids}
    if seen:
        raise DatasetError(f"{encoder['file']}: pretrained on {len(seen)} image(s) that fold {fold} of this job tests on "
                           f"(e.g. {min(seen)}); a pretrained encoder may only have seen the fold's training images")
    return encoder


def start_encoder(model: torch.nn.Module, arch: str, record: Mapping[str, Any] | None, fold: int, test_ids: np.ndarray,
                  log: Callable[[str], None]) -> EncoderStart:
    """Load the pretrained encoder that an init-weights record names for test fold ``fold`` (nothing for scratch).

    A weight file must still hash to the record's sha256: a file replaced after the init-weights stage ran is
    refused rather than silently trained from. A self-supervised encoder must not have seen ``test_ids``.
    """
    if record is None or record["init"] == "scratch":
        return SCRATCH
    if record["init"] == "pretrain":
        weights, source = _pretrained_encoder(record, fold, test_ids), f"self-supervised {record['pretrain']}, this fold's"
    else:
        weights, source = record, record.get("checkpoint") or record["file"]
    path = _verified(Path(weights["file"]), weights["sha256"])
    report = load_pretrained(model, arch, path, record["format"])
    log(report.summary())
    for line in report.adapted[:3]:
        log(f"  adapted {line}")
    normalization = NORMALIZATIONS[record["normalization"]]
    normalized = normalization.as_dict() if normalization else None
    attach_input_normalization(model, normalized)
    init = {"source": source, "sha256": weights["sha256"], **report.as_dict()}
    return EncoderStart(init=init, input_normalization=normalized)


def network_card(arch: str, options: Mapping[str, Any], *, classes: list[str], image_size: int, device: torch.device,
                 preprocess: Mapping[str, Any], setup: Acceleration = REFERENCE, cascade: CascadeLink | None = None,
                 start: EncoderStart = SCRATCH) -> NetworkCard:
    """Everything needed to rebuild the network and its input pipeline without params.yaml, and where it was trained."""
    return NetworkCard(
        arch=arch, options=dict(options), in_channels=1, n_classes=len(classes), classes=list(classes),
        tasks=sorted(model_tasks(arch)), image_size=image_size,
        preprocess={key: preprocess[key] for key in ("size", "enhance", "enhance_options", "classes")},
        trained_on=TrainedOn(device=str(device), device_name=device_name(device), torch=torch.__version__,
                             threads=torch.get_num_threads(), deterministic=is_deterministic(device),
                             fast_path=setup.fast_path, compiled=setup.compile),
        cascade=cascade, input_normalization=start.input_normalization, init=start.init)


def _cadence(accelerator: Mapping[str, Any]) -> int | None:
    """``accelerator.checkpoint_every``: epochs between checkpoints, None for ``auto``."""
    every = accelerator["checkpoint_every"]
    return None if every == "auto" else int(every)


def run_training_job(params: Mapping[str, Any], name: str, fold: int, spec: TrainSpec, inputs: FoldData, out_dir: Path, *,
                     tasks: frozenset[str] | None = None, cascade: CascadeLink | None = None, detail: str = "",
                     test_extras: Mapping[str, np.ndarray] | None = None, init: Mapping[str, Any] | None = None,
                     gpus: int = 0) -> None:
    """Seed, build, start the encoder, (compile), fit with checkpoints, save weights + card + history, predict
    test and validation.

    ``name`` seeds the job and prefixes its log lines; ``tasks`` restricts the losses (default: the network's
    outputs); ``test_extras`` are test-part arrays stored with the predictions (e.g. the cascade's crops);
    ``init`` is the model's init-weights record (None or scratch: random initialisation); ``gpus`` is the GPU
    count the scheduler granted the job (:func:`busflow.train.device.job_device`).
    """
    configure_threads()
    seed = job_seed(params["seed"], name, fold)
    seed_everything(seed)
    prefix = f"[{name} fold{fold}]"
    log = lambda line: print(f"{prefix} {line}", flush=True)
    accelerator = params["accelerator"]
    with params_device(params, gpus, log) as device:
        apply_determinism(resolve_deterministic(accelerator["deterministic"], device), device)
        model = build_model(spec.arch, in_channels=1, n_classes=len(inputs.classes), options=spec.options)
        log(f"{spec.arch}{detail} on {device}: {inputs.describe()}")
        start = start_encoder(model, spec.arch, init, fold, inputs.image_ids[inputs.roles["test"]], log)
        image_size = inputs.data.images.shape[-1]
        setup = compile_model(model, device, acceleration(params["accelerator"], device), image_size, log)
        out_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = checkpoint_path(out_dir)
        roles = inputs.roles
        # One batch source for training and predictions: on the fast path the arrays go to the device once.
        source = batch_source(inputs.data, device, setup, augment=spec.augment, seed=seed)
        precision = accelerator["predict_precision"]
        with epoch_logger(out_dir) as on_epoch:
            run = FitRun(device=device, seed=seed, setup=setup, checkpoint=checkpoint, checkpoint_every=_cadence(accelerator),
                         log=log, on_epoch=on_epoch, batches=source, precision=precision)
            history = fit(model, spec, inputs.data, roles["train"], roles["val"], tasks=tasks or model_tasks(spec.arch),
                          n_classes=len(inputs.classes), run=run)
        card = network_card(spec.arch, spec.options, classes=inputs.classes, image_size=image_size, device=device, preprocess=params["preprocess"],
                            setup=setup, cascade=cascade, start=start)
        save_run(out_dir, model, card, history)
        test, val = roles["test"], roles["val"]
        outputs = predict(model, source, test, device, precision=precision)
        test_ids = inputs.image_ids[test]
        table = prediction_table(test_ids, group_ids_of(inputs.folds, test_ids), inputs.data.labels[test], inputs.classes, outputs)
        save_predictions(out_dir, table, outputs, extra=test_extras,
                         validation=(inputs.image_ids[val], predict(model, source, val, device, precision=precision)))
        discard_checkpoint(checkpoint)
