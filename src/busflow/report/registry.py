"""The report's tables and figures, each listed once: how a table is computed and which pipeline outputs its rows
come from (its ``source`` column), and how a figure is drawn.

Their names, which fix the files and their order, are :data:`busflow.layout.REPORT_TABLES` and
:data:`busflow.layout.REPORT_FIGURES`, in a light module the Snakefile imports to declare the report's outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from busflow.layout import REPORT_FIGURES, REPORT_TABLES, SPLIT_FILES, report_figure
from busflow.report import figures, sources
from busflow.report.content import ReportTables
from busflow.report.cross_dataset import cross_dataset_table
from busflow.report.leakage import leakage_paired_table
from busflow.report.lesion_size import lesion_size_table
from busflow.report.loading import RunResults
from busflow.report.reproduction import reproduction_table
from busflow.report.tables import (
    ablation_table,
    classification_table,
    dataset_table,
    duplicate_clusters,
    external_table,
    groups_table,
    leaderboard_table,
    leakage_table,
    per_class_table,
    segmentation_table,
    split_label,
    split_table,
)
from busflow.report.uncertainty import (
    BootstrapSettings,
    bootstrap_settings,
    calibration_table,
    comparison_table,
    failure_table,
    interval_table,
)


@dataclass(frozen=True)
class TableContext:
    """What a table is computed from: the run, its params and the other tables (each computed once, when first
    asked for)."""

    run: RunResults
    params: Mapping[str, Any]
    computed: dict[str, pd.DataFrame] = field(default_factory=dict)

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self.computed:
            self.computed[name] = TABLES[name].compute(self)
        return self.computed[name]

    @property
    def bootstrap(self) -> BootstrapSettings:
        return bootstrap_settings(self.params)

    @property
    def reference_model(self) -> str | None:
        return (self.params.get("evaluate") or {}).get("reference_model")


@dataclass(frozen=True)
class ReportTable:
    """How one table of ``tables/<name>.csv`` is computed, and where each of its rows comes from."""

    compute: Callable[[TableContext], pd.DataFrame]
    source: sources.Source


def our_protocol(run: RunResults) -> str:
    grouping = "image level, LEAKY" if run.leaky else "grouped by patient or duplicate cluster, leak-free"
    return f"busflow {split_label(run)} split, {len(run.folds)} test fold(s), {grouping}"


TABLES: dict[str, ReportTable] = {
    "leaderboard": ReportTable(lambda c: leaderboard_table(c.run, c["classification"], c["segmentation"],
                                                           c["intervals"]), sources.model_metrics),
    "classification": ReportTable(lambda c: classification_table(c.run), sources.fold_metrics),
    "segmentation": ReportTable(lambda c: segmentation_table(c.run), sources.fold_metrics),
    "per_class": ReportTable(lambda c: per_class_table(c.run), sources.fold_metrics),
    "dataset": ReportTable(lambda c: dataset_table(c.run.index, c.run.classes), sources.constant("data/index.csv")),
    "split": ReportTable(lambda c: split_table(c.run), sources.constant(SPLIT_FILES["counts"], SPLIT_FILES["audit"])),
    "groups": ReportTable(lambda c: groups_table(c.run), sources.constant(SPLIT_FILES["groups"], SPLIT_FILES["links"])),
    "label_conflicts": ReportTable(lambda c: c.run.conflicts, sources.constant(SPLIT_FILES["conflicts"])),
    "leakage": ReportTable(lambda c: leakage_table(c.run), sources.leakage_metrics),
    "external": ReportTable(lambda c: external_table(c.run), sources.external_metrics),
    "ablation": ReportTable(lambda c: ablation_table(c.run), sources.ablation_metrics),
    "reproduction": ReportTable(lambda c: reproduction_table(c.params.get("reproduces"), c.run.results,
                                                             our_protocol(c.run), c["intervals"], classes=c.run.classes),
                                sources.model_metrics),
    "intervals": ReportTable(lambda c: interval_table(c.run, c.bootstrap), sources.model_images),
    "comparisons": ReportTable(lambda c: comparison_table(c.run, c.reference_model, c.bootstrap),
                               sources.compared_images),
    "calibration": ReportTable(lambda c: calibration_table(c.run), sources.model_images),
    "failures": ReportTable(lambda c: failure_table(c.run), sources.fold_images),
    "jobs": ReportTable(lambda c: c.run.job_times(), sources.job_log),
    "leakage_paired": ReportTable(lambda c: leakage_paired_table(c.run, c.bootstrap), sources.leakage_images),
    "cross_dataset": ReportTable(lambda c: cross_dataset_table(c.run, c.params, c["intervals"], c.bootstrap),
                                 sources.cross_dataset_images),
    "lesion_size": ReportTable(lambda c: lesion_size_table(c.run, c.bootstrap), sources.model_images),
}

Plot = Callable[[RunResults, ReportTables, Path], None]  # (run, tables, target PNG)
FIGURES: dict[str, Plot] = {
    "roc": lambda run, tables, target: figures.plot_roc(run, target),
    "metrics_bar": lambda run, tables, target: figures.plot_metrics_bar(tables["intervals"], run.models, target),
    "overlays": lambda run, tables, target: figures.plot_overlays(run, target),
    "training_curves": lambda run, tables, target: figures.plot_training_curves(run, target),
    "confusion": lambda run, tables, target: figures.plot_confusion(run, target),
    "leakage": lambda run, tables, target: figures.plot_leakage(tables["leakage"], tables["leakage_paired"], target),
    "calibration": lambda run, tables, target: figures.plot_calibration(tables["calibration"], tables["intervals"],
                                                                        run.models, target),
    "pr": lambda run, tables, target: figures.plot_pr(run, target),
    "failures": lambda run, tables, target: figures.plot_failures(tables["failures"], run.arrays_path, target),
    "ablation": lambda run, tables, target: figures.plot_ablation(tables["ablation"], target),
    "comparisons": lambda run, tables, target: figures.plot_comparisons(tables["comparisons"], run.models, target),
    "cross_dataset": lambda run, tables, target: figures.plot_cross_dataset(tables["cross_dataset"], target),
}


def compute_tables(run: RunResults, params: Mapping[str, Any]) -> ReportTables:
    """Every table of REPORT_TABLES with its ``source`` column, and the duplicate clusters."""
    context = TableContext(run, params)
    frames = {name: sources.with_source(context[name], run, TABLES[name].source) for name in REPORT_TABLES}
    return ReportTables(frames, duplicate_clusters(run))


def write_figures(run: RunResults, tables: ReportTables, out_dir: Path) -> None:
    """Draw every figure of REPORT_FIGURES into ``out_dir``."""
    for name in REPORT_FIGURES:
        FIGURES[name](run, tables, out_dir / report_figure(name))
