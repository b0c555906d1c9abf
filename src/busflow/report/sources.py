"""Provenance of every report table row: a ``source`` column naming the declared pipeline outputs it was
computed from (paths relative to ``results/<run>/``, ``; ``-joined). The HTML report turns them into links."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
import pandas as pd

from busflow.layout import SPLIT_FILES
from busflow.report.content import ReportTables
from busflow.report.loading import FoldResult, RunResults
from busflow.report.render import SOURCE



def _joined(run: RunResults, results: Iterable[FoldResult], name: str) -> str:
    return "; ".join((r.directory / name).relative_to(run.root).as_posix() for r in results)


def _per_row(frame: pd.DataFrame, make) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    return frame.assign(**{SOURCE: [make(row) for row in frame.itertuples(index=False)]})


def add_sources(tables: ReportTables, run: RunResults) -> ReportTables:
    """The same tables, each with a ``source`` column (constant for the data and split tables)."""
    def of_model(model: str, name: str = "metrics.json") -> str:
        return _joined(run, run.of_model(model), name)

    def of_fold(model: str, fold: int, name: str = "metrics.json") -> str:
        return _joined(run, [run.fold_result(model, int(fold))], name)

    def constant(frame: pd.DataFrame, *paths: str) -> pd.DataFrame:
        return frame.assign(**{SOURCE: "; ".join(paths)})

    leaky = {m: [r for r in run.leaky_results if r.model == m] for m in run.leakage_models}
    return replace(
        tables,
        dataset=constant(tables.dataset, "data/index.csv"),
        split=constant(tables.split, SPLIT_FILES["counts"], SPLIT_FILES["audit"]),
        groups=constant(tables.groups, SPLIT_FILES["groups"], SPLIT_FILES["links"]),
        label_conflicts=constant(tables.label_conflicts, SPLIT_FILES["conflicts"]),
        leaderboard=_per_row(tables.leaderboard, lambda r: of_model(r.model)),
        classification=_per_row(tables.classification, lambda r: of_fold(r.model, r.fold)),
        segmentation=_per_row(tables.segmentation, lambda r: of_fold(r.model, r.fold)),
        per_class=_per_row(tables.per_class, lambda r: of_fold(r.model, r.fold)),
        reproduction=_per_row(tables.reproduction, lambda r: of_model(r.model)),
        intervals=_per_row(tables.intervals, lambda r: of_model(r.model, "per_image.csv")),
        comparisons=_per_row(tables.comparisons, lambda r: "; ".join([of_model(r.model, "per_image.csv"),
                                                                      of_model(r.reference, "per_image.csv")])),
        calibration=_per_row(tables.calibration, lambda r: of_model(r.model, "per_image.csv")),
        failures=_per_row(tables.failures, lambda r: of_fold(r.model, r.fold, "per_image.csv")),
        leakage=_per_row(tables.leakage, lambda r: "; ".join([of_model(r.model), _joined(run, leaky[r.model], "metrics.json")])),
        external=_per_row(tables.external, lambda r: _joined(run, [x for x in run.external[r.dataset] if x.model == r.model],
                                                             "metrics.json")),
        ablation=_per_row(tables.ablation, lambda r: _joined(run, run.ablation[(float(r.lr), r.options)], "metrics.json")),
        jobs=_per_row(tables.jobs, lambda r: f"logs/{r.job}.log"),
    )
