"""The ``report`` stage: tables, figures, report.md and index.html of a run (no torch import)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from busflow import __version__
from busflow.config import cascade_settings, params_sha256
from busflow.evaluate.metrics import EMPTY_MASK_CONVENTIONS
from busflow.settings_notes import file_notes


def run(params: Mapping[str, Any], *, results: Path, out: Path, params_path: Path | None = None,
        log: Callable[[str], None] = print) -> None:
    """Report every model, cascade and ensemble of ``params`` found under ``results`` into ``out``; the
    settings ``params_path`` marks as busflow's choice or as a deviation from the paper go into the report too."""
    from busflow.report.build import build_report

    models = [*params["train"]["models"], *cascade_settings(params), *params["ensembles"]]
    notes = [asdict(note) for note in file_notes(params_path)] if params_path is not None else []
    run_info = {"dataset": params["dataset"], "params_sha256": params_sha256(params), "busflow_version": __version__,
                "empty_mask_convention": EMPTY_MASK_CONVENTIONS[params["evaluate"]["empty_mask"]], "params": params,
                "settings_notes": notes}
    build_report(results_dir=results, out_dir=out, models=models, folds=params["train"]["folds"], run_info=run_info)
    log(f"report written to {out / 'index.html'}")
