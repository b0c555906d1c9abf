"""The ``init-weights`` stage: where one model's encoder starts, recorded with the weight file's sha256.

Its output is a folder: ``init.json`` and, for a pretrained start, ``weights``, a link to the weight file.
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
from busflow.weights import InitSource, fetch_weights, init_source


def init_record(params: Mapping[str, Any], model: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The init record of ``model`` (a trained model or the cascade), fetching a catalogue checkpoint if needed."""
    spec = model_spec(params, model)
    source = init_source(spec["init"], params["weights"])
    record: dict[str, Any] = {"model": model, "arch": spec["arch"], "init": "scratch"}
    if source.scratch:
        return record
    path = _weight_file(source, model, log)
    return {**record, "init": "weights", "file": os.path.abspath(path), "sha256": sha256_of(path), "format": source.format,
            "normalization": source.normalization, "checkpoint": source.checkpoint}


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
    if not isinstance(record, dict) or record.get("init") not in ("scratch", "weights"):
        raise ModelFileError(f"{path}: not an init record of busflow init-weights")
    return record


def run(params: Mapping[str, Any], *, model: str, out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the init folder of ``model`` to ``out``: the record, and a link to the weight file it names."""
    record = init_record(params, model, log)
    with atomic_dir(out) as folder:
        write_json(folder / RECORD, record)
        if record["init"] == "weights":
            os.symlink(os.path.abspath(record["file"]), folder / LINK)
    log(f"{model}: encoder starts from {'scratch' if record['init'] == 'scratch' else record['file']}")
    return record
