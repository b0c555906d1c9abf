"""The ``init-weights`` stage: where one model's encoder starts, recorded with the weight file's sha256.

Its output is a folder: ``init.json`` and, for a pretrained start, ``weights``, a link to the weight file (or,
for a self-supervised encoder of the ``pretrain`` section, ``fold<k>.safetensors``, one link per test fold).
Training jobs read this folder instead of the params, so they rerun exactly when the file they start from
changes: Snakemake sees the weight file as this rule's input, and DVC hashes the folder through the link, so a
replaced file changes this stage's output and the dependent training stages. A catalogue checkpoint is fetched
into the weights folder when it is missing and verified against its pin. No torch import.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from busflow.config import model_spec
from busflow.data.download import sha256_of
from busflow.errors import ModelFileError
from busflow.io import atomic_dir, read_json, write_json
from busflow.layout import PRETRAIN_ENCODER as ENCODER
from busflow.layout import PRETRAIN_POOL as POOL
from busflow.weights import InitSource, fetch_weights, init_source


def init_record(params: Mapping[str, Any], model: str, pretrained: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The init record of ``model`` (a trained model or the cascade), fetching a catalogue checkpoint if needed;
    ``pretrained`` holds the pretrain stage's fold folders."""
    spec = model_spec(params, model)
    source = init_source(spec["init"], params["weights"])
    record: dict[str, Any] = {"model": model, "arch": spec["arch"], "init": "scratch"}
    if source.scratch:
        return record
    if source.pretrain is not None:
        return {**record, "init": "pretrain", "pretrain": source.pretrain, "format": "busflow", "normalization": "none",
                "folds": {str(fold): _fold_encoder(pretrained, fold, source.pretrain) for fold in params["train"]["folds"]}}
    path = _weight_file(source, model, log)
    return {**record, "init": "weights", "file": os.path.abspath(path), "sha256": sha256_of(path), "format": source.format,
            "normalization": source.normalization, "checkpoint": source.checkpoint}


def _fold_encoder(pretrained: Path, fold: int, name: str) -> dict[str, str]:
    folder = pretrained / f"fold{fold}"
    path = folder / name / ENCODER
    if not path.is_file():
        raise ModelFileError(f"{path}: the pretrained encoder {name!r} of fold {fold} does not exist (run the pretrain stage)")
    return {"file": os.path.abspath(path), "sha256": sha256_of(path), "pool": os.path.abspath(folder / POOL)}


def _weight_file(source: InitSource, model: str, log: Callable[[str], None]) -> Path:
    assert source.path is not None
    if source.checkpoint is not None:
        return fetch_weights(source.checkpoint, source.path.parent, log=log)
    if not source.path.is_file():
        raise ModelFileError(f"{source.path}: the weight file of models.{model}.init does not exist")
    return source.path


RECORD, LINK = "init.json", "weights"


def read_init_record(folder: Path) -> dict[str, Any]:
    """The init record in a folder written by this stage; an error naming the file when it is not one."""
    path = folder / RECORD
    if not path.is_file():
        raise ModelFileError(f"{folder}: not an init-weights folder (no {RECORD})")
    record = read_json(path)
    if not isinstance(record, dict) or record.get("init") not in ("scratch", "weights", "pretrain"):
        raise ModelFileError(f"{path}: not an init record of busflow init-weights")
    return record


def run(params: Mapping[str, Any], *, model: str, pretrained: Path, out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the init folder of ``model`` to ``out``: the record, and links to the weight file(s) it names."""
    record = init_record(params, model, pretrained, log)
    with atomic_dir(out) as folder:
        write_json(folder / RECORD, record)
        if record["init"] == "weights":
            os.symlink(record["file"], folder / LINK)
        for fold, encoder in record.get("folds", {}).items():
            os.symlink(encoder["file"], folder / f"fold{fold}.safetensors")
    starts = {"scratch": "scratch", "weights": record.get("file"), "pretrain": f"the fold's {record.get('pretrain')} encoder"}
    log(f"{model}: encoder starts from {starts[record['init']]}")
    return record
