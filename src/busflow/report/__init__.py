"""Report stage: tables, figures, Markdown and HTML summarising a busflow run.

Entry point: :func:`build_report`. Every file it writes is listed in :data:`REPORT_FILES` and every directory
in :data:`REPORT_DIRS` (relative to ``out_dir``) so workflow orchestrators can declare them as outputs.
No torch import here: the report only reads files written by earlier stages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from busflow import CLASSES
from busflow.io import write_csv, write_text
from busflow.layout import REPORT_DIRS, REPORT_FILES
from busflow.report import figures
from busflow.report.content import ReportTables, build_blocks
from busflow.report.loading import RunResults, load_results
from busflow.report.render import render_html, render_markdown
from busflow.report.uncertainty import BootstrapSettings, calibration_table, comparison_table, failure_table, interval_table
from busflow.report.reproduction import reproduction_table
from busflow.report.sources import add_sources
from busflow.report.tables import (
    SHEETS_DIR,
    classification_table,
    ablation_table,
    dataset_table,
    external_table,
    duplicate_clusters,
    groups_table,
    leaderboard_table,
    leakage_table,
    per_class_table,
    segmentation_table,
    split_label,
    split_table,
)

__all__ = ["REPORT_DIRS", "REPORT_FILES", "build_report"]


def our_protocol(run: RunResults) -> str:
    grouping = "image level, LEAKY" if run.leaky else "grouped by patient or duplicate cluster, leak-free"
    return f"busflow {split_label(run)} split, {len(run.folds)} test fold(s), {grouping}"


def bootstrap_settings(params: Mapping[str, Any]) -> BootstrapSettings:
    bootstrap = (params.get("evaluate") or {}).get("bootstrap") or {}
    return BootstrapSettings(int(bootstrap.get("resamples", 1000)), float(bootstrap.get("confidence", 0.95)), int(params.get("seed", 0)))


def compute_tables(run: RunResults, params: Mapping[str, Any]) -> ReportTables:
    """All report tables from the loaded results; ``reproduces`` in params adds its reproduction table."""
    cls_table, seg_table = classification_table(run), segmentation_table(run)
    settings = bootstrap_settings(params)
    intervals = interval_table(run, settings)
    return ReportTables(
        dataset=dataset_table(run.index, run.classes),
        split=split_table(run),
        leaderboard=leaderboard_table(run, cls_table, seg_table, intervals),
        classification=cls_table,
        segmentation=seg_table,
        per_class=per_class_table(run),
        groups=groups_table(run),
        label_conflicts=run.conflicts,
        leakage=leakage_table(run),
        external=external_table(run),
        ablation=ablation_table(run),
        reproduction=reproduction_table(params.get("reproduces"), run.results, our_protocol(run), intervals),
        intervals=intervals,
        comparisons=comparison_table(run, (params.get("evaluate") or {}).get("reference_model"), settings),
        calibration=calibration_table(run),
        failures=failure_table(run),
        jobs=run.job_times(),
        clusters=duplicate_clusters(run),
    )


def write_figures(run: RunResults, tables: ReportTables, out_dir: Path) -> None:
    """Render every figure into ``out_dir/figures``."""
    fig_dir = out_dir / "figures"
    figures.plot_roc(run, fig_dir / "roc.png")
    figures.plot_pr(run, fig_dir / "pr.png")
    figures.plot_failures(tables.failures, run.arrays_path, fig_dir / "failures.png")
    figures.plot_metrics_bar(tables.classification, tables.segmentation, run.models, fig_dir / "metrics_bar.png")
    figures.plot_overlays(run, fig_dir / "overlays.png")
    figures.plot_training_curves(run, fig_dir / "training_curves.png")
    figures.plot_confusion(run, fig_dir / "confusion.png")
    figures.plot_leakage(tables.leakage, fig_dir / "leakage.png")
    figures.plot_ablation(tables.ablation, fig_dir / "ablation.png")
    figures.plot_calibration(tables.calibration, tables.intervals, fig_dir / "calibration.png")


def build_report(
    *,
    results_dir: Path,
    out_dir: Path,
    models: Sequence[str],
    folds: Sequence[int],
    run_info: Mapping[str, Any],
) -> None:
    """Write the tables, figures, ``report.md`` and ``index.html`` of a run into ``out_dir``.

    ``index.html`` is written last, so its presence means the report is complete.
    """
    out_dir = Path(out_dir)
    params = run_info.get("params") or {}
    leakage_models = (params.get("leakage") or {}).get("models") or ()
    ensembles = tuple(params.get("ensembles") or ())
    run = load_results(Path(results_dir), models, folds, run_info.get("classes") or CLASSES, leakage_models, ensembles,
                       params.get("external"), params.get("ablation"))
    tables = add_sources(compute_tables(run, params), run)
    for rel_path, frame in tables.files().items():
        write_csv(out_dir / rel_path, frame)
    write_figures(run, tables, out_dir)
    unreadable = figures.write_contact_sheets(run, tables.sheets, out_dir / SHEETS_DIR)
    blocks = build_blocks(run, tables, run_info, unreadable)
    write_text(out_dir / "report.md", render_markdown(blocks))
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    leaky = f" — {split_label(run)} split" if run.leaky else ""
    title = f"busflow report — {run_info.get('dataset', 'unknown dataset')}{leaky}"
    subtitle = f"generated {generated} · busflow {run_info.get('busflow_version', 'n/a')}"
    write_text(out_dir / "index.html", render_html(blocks, title, subtitle))
