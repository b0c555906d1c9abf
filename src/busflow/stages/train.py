"""The ``train`` stage: one model (or one cell of the ablation grid) on one test fold."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from busflow.config import model_spec
from busflow.errors import ParamsError
from busflow.split.protocols import leaky_stage
from busflow.stages.init_weights import read_init_record
from busflow.train.job import FoldData, run_training_job
from busflow.train.spec import TrainSpec


def training_spec(params: Mapping[str, Any], model: str, lr: float | None = None, variant: str | None = None) -> TrainSpec:
    """The spec of ``model``; with ``lr`` and ``variant``, that of one cell of the ablation grid."""
    if (lr is None) != (variant is None):
        raise ParamsError("an ablation cell needs both --lr and --variant")
    spec = TrainSpec.of(model_spec(params, model))
    if variant is None:
        return spec
    ablation = params["ablation"]
    if model != ablation["model"]:
        raise ParamsError(f"--variant: model '{model}' is not ablation.model ('{ablation['model']}')")
    if variant not in ablation["options"]:
        raise ParamsError(f"ablation.options: no option set '{variant}' (defined: {sorted(ablation['options'])})")
    return spec.with_cell(lr, ablation["options"][variant])


def run(params: Mapping[str, Any], *, model: str, fold: int, arrays: Path, folds: Path, init: Path, out: Path,
        lr: float | None = None, variant: str | None = None, split_seed: int | None = None, gpus: int = 0) -> None:
    """Train ``model`` on test fold ``fold`` into ``out`` (weights, model.json, history, predictions), its encoder
    started as the init record ``init`` says (``gpus``: what the scheduler granted the job). With ``split_seed``,
    ``folds`` is the leakage study's image-level split and the fold is that seed's draw."""
    spec = training_spec(params, model, lr, variant)
    stage = "fold" if split_seed is None else leaky_stage(split_seed)
    run_training_job(params, model, fold, spec, FoldData.load(arrays, folds, fold, stage=stage), out,
                     init=read_init_record(init), gpus=gpus)
