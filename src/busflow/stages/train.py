"""The ``train`` stage: one model on one fold, from the preprocessed arrays and the folds table."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from busflow.config import model_spec
from busflow.data.preprocess import load_arrays
from busflow.models import build_model, model_tasks
from busflow.io import read_table
from busflow.split.protocols import group_ids_of, role_indices
from busflow.train.checkpoint import checkpoint_path, discard_checkpoint
from busflow.train.accelerate import REFERENCE, Acceleration, acceleration, compile_model
from busflow.train.device import configure_threads, device_name, is_deterministic, resolve_device, seed_everything
from busflow.train.loop import ArrayData, batch_source, fit, predict
from busflow.predictions import prediction_table, save_predictions
from busflow.train.outputs import epoch_logger, save_run


def job_seed(seed: int, model: str, fold: int) -> int:
    """A distinct, reproducible seed per (model, fold) job, independent of job order."""
    return (seed * 1_000_003 + sum(map(ord, model)) * 101 + fold) % 2**31


def describe_model(spec: Mapping[str, Any], *, n_classes: int, classes: list[str], image_size: int, device: torch.device,
                   preprocess: Mapping[str, Any], setup: Acceleration = REFERENCE) -> dict[str, Any]:
    """Everything needed to rebuild the network and its input pipeline without params.yaml, and where it was trained."""
    return {"arch": spec["arch"], "options": dict(spec.get("options", {})), "in_channels": 1,
            "n_classes": n_classes, "classes": classes, "image_size": image_size,
            "tasks": sorted(model_tasks(spec["arch"])), "input_scaling": "uint8 / 255",
            "preprocess": {key: preprocess[key] for key in ("size", "enhance", "enhance_options", "classes")},
            "trained_on": {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "deterministic": is_deterministic(device),
                           "fast_path": setup.fast_path, "compiled": setup.compile}}


def ablation_spec(params: Mapping[str, Any], lr: float, variant: str) -> dict[str, Any]:
    """The ablation model's training spec with one grid cell's learning rate and options."""
    ablation = params["ablation"]
    if variant not in ablation["options"]:
        raise ValueError(f"ablation.options: no option set '{variant}' (defined: {sorted(ablation['options'])})")
    spec = copy.deepcopy(model_spec(params, ablation["model"]))
    spec["lr"] = lr
    spec["options"] = {**spec.get("options", {}), **ablation["options"][variant]}
    return spec


def train_model(params: Mapping[str, Any], model_name: str, fold: int, arrays_path: Path, folds_path: Path, out_dir: Path,
                spec: Mapping[str, Any] | None = None) -> None:
    """Train one model on one fold (``spec`` replaces its params entry, e.g. for an ablation cell)."""
    configure_threads()
    spec = spec or model_spec(params, model_name)
    seed = job_seed(params["seed"], model_name, fold)
    seed_everything(seed)
    arrays = load_arrays(arrays_path)
    folds = read_table(folds_path)
    roles = role_indices(folds, arrays["image_ids"], fold)
    classes = arrays["classes"].tolist()
    data = ArrayData(arrays["images"], arrays["masks"], arrays["labels"])
    device = resolve_device(params["device"])
    tasks = model_tasks(spec["arch"])
    model = build_model(spec["arch"], in_channels=1, n_classes=len(classes), options=spec.get("options"))
    prefix = f"[{model_name} fold{fold}]"
    print(f"{prefix} {spec['arch']} on {device}: {len(roles['train'])} train / {len(roles['val'])} val / {len(roles['test'])} test images", flush=True)
    log = lambda line: print(f"{prefix} {line}", flush=True)  # noqa: E731
    setup = compile_model(model, device, acceleration(params["accelerator"], device), data.images.shape[-1], log)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = checkpoint_path(out_dir)
    with epoch_logger(out_dir) as on_epoch:
        history = fit(model, tasks, data, roles["train"], roles["val"], spec, n_classes=len(classes), device=device,
                      seed=seed, log=log, on_epoch=on_epoch, checkpoint=checkpoint, setup=setup)
    description = describe_model(spec, n_classes=len(classes), classes=classes, image_size=data.images.shape[-1],
                                 device=device, preprocess=params["preprocess"], setup=setup)
    save_run(out_dir, model, description, history)
    test, val = roles["test"], roles["val"]
    source = batch_source(data, device, setup)
    outputs = predict(model, source, test, device)
    groups = group_ids_of(folds, arrays["image_ids"][test])
    save_predictions(out_dir, prediction_table(arrays["image_ids"][test], groups, data.labels[test], classes, outputs), outputs,
                     validation=(arrays["image_ids"][val], predict(model, source, val, device)))
    discard_checkpoint(checkpoint)
