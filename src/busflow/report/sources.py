"""Provenance of every report table row: a ``source`` column naming the declared pipeline outputs it was
computed from (paths relative to ``results/<run>/``, ``; ``-joined). The HTML report turns them into links.

Each table's source is one of the functions below (see :data:`busflow.report.registry.TABLES`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from busflow.layout import SPLIT_FILES
from busflow.report.loading import FoldResult, RunResults
from busflow.report.render import SOURCE

Source = Callable[[RunResults, Any], str]  # (run, table row) -> the row's source


def with_source(frame: pd.DataFrame, run: RunResults, source: Source) -> pd.DataFrame:
    """``frame`` with its ``source`` column."""
    return frame.assign(**{SOURCE: [source(run, row) for row in frame.itertuples(index=False)]})


def _joined(run: RunResults, results: Iterable[FoldResult], name: str = "metrics.json") -> str:
    return "; ".join((r.directory / name).relative_to(run.root).as_posix() for r in results)


def constant(*paths: str) -> Source:
    """The same files for every row (the data and split tables)."""
    return lambda run, row: "; ".join(paths)


def model_metrics(run: RunResults, row: Any) -> str:
    return _joined(run, run.of_model(row.model))


def fold_metrics(run: RunResults, row: Any) -> str:
    return _joined(run, [run.fold_result(row.model, int(row.fold))])


def model_images(run: RunResults, row: Any) -> str:
    return _joined(run, run.of_model(row.model), "per_image.csv")


def fold_images(run: RunResults, row: Any) -> str:
    return _joined(run, [run.fold_result(row.model, int(row.fold))], "per_image.csv")


def compared_images(run: RunResults, row: Any) -> str:
    """Both models' per-image files of a paired comparison."""
    return "; ".join([_joined(run, run.of_model(model), "per_image.csv") for model in (row.model, row.reference)])


def leakage_metrics(run: RunResults, row: Any) -> str:
    """The model's grouped and image-level (leaky) folds."""
    return "; ".join([_joined(run, run.of_model(row.model)),
                      _joined(run, [r for r in run.leaky_results if r.model == row.model])])


def leakage_images(run: RunResults, row: Any) -> str:
    """The model's per-image files under both splits, and the image-level split that says which images leaked."""
    return "; ".join([_joined(run, run.of_model(row.model), "per_image.csv"),
                      _joined(run, [r for r in run.leaky_results if r.model == row.model], "per_image.csv"),
                      SPLIT_FILES["leaky"]])


def external_metrics(run: RunResults, row: Any) -> str:
    return _joined(run, [r for r in run.external[row.dataset] if r.model == row.model])


def cross_dataset_images(run: RunResults, row: Any) -> str:
    """An in-domain cell's per-image files; an external cell's per-image files and the predictions.csv files
    that group its images."""
    if row.in_domain:
        return model_images(run, row)
    tested = [r for r in run.external[row.tested_on] if r.model == row.model]
    return "; ".join([_joined(run, tested, "per_image.csv"), _joined(run, tested, "predictions.csv")])


def ablation_metrics(run: RunResults, row: Any) -> str:
    return _joined(run, run.ablation[(float(row.lr), row.options)])


def job_log(run: RunResults, row: Any) -> str:
    return f"logs/{row.job}.log"
