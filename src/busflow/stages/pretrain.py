"""The ``pretrain`` stage: every self-supervised encoder of the ``pretrain`` section, for one test fold.

Leak-free by construction: the fold's pretraining pool is its training and validation images (no labels are
read), never its test images. ``images.csv`` lists the pool; each encoder is written as a busflow weight file
with a record of what it saw (``pretrain.json``), which the training jobs check against their own test
images before they start from it. With no encoder configured the stage writes the pool alone (and imports no
torch), so both orchestrators keep one DAG.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from busflow.data.preprocess import load_arrays
from busflow.errors import DatasetError
from busflow.io import atomic_dir, read_table, write_csv, write_json
from busflow.layout import PRETRAIN_ENCODER, PRETRAIN_HISTORY, PRETRAIN_POOL, PRETRAIN_RECORD
from busflow.split.protocols import role_indices

if TYPE_CHECKING:
    import torch

POOL, ENCODER, RECORD, HISTORY = PRETRAIN_POOL, PRETRAIN_ENCODER, PRETRAIN_RECORD, PRETRAIN_HISTORY
METHOD = "SimCLR (NT-Xent on two augmented views per image), busflow.pretrain"
POOL_ROLES = ("train", "val")  # never "test"


def pretraining_pool(folds: pd.DataFrame, image_ids: np.ndarray, fold: int) -> np.ndarray:
    """Row numbers of the images fold ``fold`` may pretrain on: its training and validation parts."""
    roles = role_indices(folds, image_ids, fold)
    pool = np.sort(np.concatenate([roles[role] for role in POOL_ROLES]))
    if np.intersect1d(pool, roles["test"]).size:  # the split's roles are disjoint; this guards the code above
        raise DatasetError(f"fold {fold}: the pretraining pool would contain test images")
    return pool


def pretrain_one(name: str, settings: Mapping[str, Any], images: np.ndarray, seed: int, device: torch.device,
                 deterministic: Any, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Pretrain encoder ``name`` on ``images`` and write it with its history into ``out``; return its record."""
    import torch

    from busflow.models import build_model
    from busflow.models.pretrained import save_encoder
    from busflow.pretrain import PretrainSpec, pretrain
    from busflow.train.device import apply_determinism, resolve_deterministic, seed_everything

    seed_everything(seed)
    apply_determinism(resolve_deterministic(deterministic, device), device)
    spec = PretrainSpec(**{k: v for k, v in settings.items() if k not in ("arch", "options")})
    model = build_model(settings["arch"], in_channels=1, n_classes=2, options=settings["options"])
    started = time.perf_counter()
    history = pretrain(model, images, spec, device=device, seed=seed, log=lambda line: log(f"[{name}] {line}"))
    out.mkdir(parents=True, exist_ok=True)
    written = save_encoder(model, settings["arch"], out / ENCODER, {"method": METHOD, "pretrain": name})
    write_csv(out / HISTORY, pd.DataFrame(history))
    record = {"name": name, "arch": settings["arch"], "options": dict(settings["options"]), "method": METHOD,
              "settings": dict(settings), "images": len(images), "pool": POOL, "encoder_tensors": written,
              "device": str(device), "torch": torch.__version__, "seconds": round(time.perf_counter() - started, 2),
              "final_loss": history[-1]["loss"]}
    write_json(out / RECORD, record)
    return record


def run(params: Mapping[str, Any], *, fold: int, arrays: Path, folds: Path, out: Path, gpus: int = 0,
        log: Callable[[str], None] = print) -> None:
    """Write ``out``: the pretraining pool of fold ``fold`` and one folder per configured encoder (on the
    device :func:`busflow.train.device.job_device` gives a job granted ``gpus`` GPUs)."""
    encoders = params["pretrain"]
    table = read_table(folds)
    if encoders:
        from busflow.train.job import job_seed

        data = load_arrays(arrays)
        image_ids = data["image_ids"]
    else:
        image_ids = table["image_id"].to_numpy()
    pool = pretraining_pool(table, image_ids, fold)
    with atomic_dir(out) as folder:
        write_csv(folder / POOL, pd.DataFrame({"image_id": image_ids[pool]}))
        if encoders:
            from busflow.train.device import configure_threads, params_device

            configure_threads()
            with params_device(params, gpus, log) as device:
                for name, settings in encoders.items():
                    log(f"pretraining {name} ({settings['arch']}) on fold {fold}: {len(pool)} training and validation images, no labels")
                    pretrain_one(name, settings, data["images"][pool], job_seed(params["seed"], name, fold), device,
                                 params["accelerator"]["deterministic"], folder / name, log)
    log(f"fold {fold}: pretraining pool of {len(pool)} images, {len(encoders)} encoder(s)")

