"""The cross-dataset matrix: models trained on one dataset (rows) tested on others (columns), Dice and the
positive class's (malignant's) one-vs-rest ROC AUC, each cell pooled with its group-bootstrap interval.

The diagonal is in-domain: the model's own test folds (the interval of tables/intervals.csv). An off-diagonal
cell pools every fold model's predictions on every image of the external dataset, resampling the external
dataset's patients (``n_images`` there counts the pooled predictions: each image once per fold model). One run
trains on one dataset, so its report holds one row of the matrix (tables/cross_dataset.csv); :func:`combine_runs`
stacks the rows of several runs into the full matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from busflow.evaluate.catalogue import CLASSIFICATION, PER_CLASS, SEGMENTATION
from busflow.layout import report_table
from busflow.report.loading import RunResults
from busflow.report.uncertainty import INTERVAL_COLUMNS, BootstrapSettings, external_cases, interval_rows

TABLE = "cross_dataset"  # tables/cross_dataset.csv, figures/cross_dataset.png
CROSS_COLUMNS: tuple[str, ...] = ("run", "model", "metric", "trained_on", "tested_on", "in_domain", "n_images", "n_groups",
                                  "estimate", "ci_low", "ci_high", "confidence", "resamples")
DICE = f"{SEGMENTATION}.dice"


def cross_metrics(params: Mapping[str, Any]) -> tuple[str, str]:
    """Dice and the ROC AUC of ``evaluate.operating_point.positive_class`` (malignant) against the rest, named as in
    tables/intervals.csv."""
    point = ((params.get("evaluate") or {}).get("operating_point") or {})
    return DICE, f"{CLASSIFICATION}.{PER_CLASS}.{point.get('positive_class', 'malignant')}.roc_auc"


def metric_label(metric: str) -> str:
    """``Dice``, ``malignant vs rest ROC AUC``: a matrix metric as the report and the heat map name it."""
    parts = metric.split(".")
    if parts[:2] == [CLASSIFICATION, PER_CLASS] and parts[-1] == "roc_auc":
        return f"{parts[2]} vs rest ROC AUC"
    return "Dice" if metric == DICE else parts[-1]


def cross_dataset_table(run: RunResults, params: Mapping[str, Any], intervals: pd.DataFrame,
                        settings: BootstrapSettings) -> pd.DataFrame:
    """The run's row of the matrix: per model of ``external.models`` and matrix metric, the in-domain cell (from
    ``intervals``) and one cell per external dataset; empty when the run tests on no external dataset."""
    metrics = cross_metrics(params)
    trained_on = str(params.get("dataset", "in-domain"))
    in_domain = intervals[intervals["metric"].isin(metrics)]
    rows = []
    for model in dict.fromkeys(r.model for results in run.external.values() for r in results):
        cells = [{**row, "tested_on": trained_on, "in_domain": True}
                 for row in in_domain[in_domain["model"] == model][INTERVAL_COLUMNS].to_dict("records")]
        for dataset, results in run.external.items():
            cases = external_cases([r for r in results if r.model == model])
            if not cases.empty:
                cells += [{**row, "tested_on": dataset, "in_domain": False}
                          for row in interval_rows(run, model, cases, settings, metrics)]
        rows += sorted(cells, key=lambda cell: metrics.index(cell["metric"]))
    return pd.DataFrame(rows, columns=CROSS_COLUMNS).assign(run=run.root.name, trained_on=trained_on)


def read_run_table(run_dir: Path) -> pd.DataFrame:
    """tables/cross_dataset.csv of a run's report, its ``run`` column the folder given."""
    path = Path(run_dir) / "report" / report_table(TABLE)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no cross-dataset table (build the run's report first: busflow report, or "
                                "the workflow's report target)")
    table = pd.read_csv(path, dtype={"run": str, "model": str, "trained_on": str, "tested_on": str})
    if table.empty:
        raise ValueError(f"{path}: no cross-dataset cells: that run tests on no external dataset (set "
                         "external.datasets and external.models, then rerun its external and report stages)")
    return table.assign(run=Path(run_dir).as_posix())


def combine_runs(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The rows of several runs (each :func:`read_run_table`) as one matrix; a cell given by two runs (both
    trained on one dataset) is an error."""
    frame = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=CROSS_COLUMNS)
    repeated = frame[frame.duplicated(["model", "metric", "trained_on", "tested_on"], keep=False)]
    if not repeated.empty:
        runs = repeated.groupby("trained_on", sort=False)["run"].agg(lambda names: ", ".join(dict.fromkeys(names)))
        raise ValueError("cells of one training dataset come from several runs (or one run given twice): "
                         + "; ".join(f"{dataset} in {names}" for dataset, names in runs.items())
                         + "; pass one run per training dataset")
    return frame[[*CROSS_COLUMNS, *(c for c in frame.columns if c not in CROSS_COLUMNS)]]


def tested_datasets(table: pd.DataFrame) -> list[str]:
    """The matrix's columns: the training datasets in row order (so the diagonal lines up), then the others."""
    trained = list(dict.fromkeys(table["trained_on"]))
    return [*trained, *(d for d in dict.fromkeys(table["tested_on"]) if d not in trained)]
