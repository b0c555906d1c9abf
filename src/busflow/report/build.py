"""Build the report of a run: tables, figures, ``report.md`` and ``index.html``; and the cross-dataset matrix of
several runs' reports.

Every file it writes is listed in :data:`busflow.layout.REPORT_FILES` and every directory in
:data:`busflow.layout.REPORT_DIRS` (relative to ``out_dir``) so workflow orchestrators can declare them as outputs.
No torch import here: the report only reads files written by earlier stages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from busflow import CLASSES
from busflow.io import write_csv, write_json, write_text
from busflow.layout import REPORT_METRICS, report_figure, report_table
from busflow.report import figures
from busflow.report.content import build_blocks
from busflow.report.cross_dataset import TABLE, combine_runs, read_run_table
from busflow.report.loading import load_results
from busflow.report.registry import compute_tables, write_figures
from busflow.report.render import render_html, render_markdown
from busflow.report.tables import CARDS_DIR, SHEETS_DIR, headline_metrics, split_label


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
                       params.get("external"), params.get("ablation"), (params.get("leakage") or {}).get("seeds") or ())
    tables = compute_tables(run, params)
    for rel_path, frame in tables.files().items():
        write_csv(out_dir / rel_path, frame)
    write_json(out_dir / REPORT_METRICS, headline_metrics(tables["leaderboard"]))
    write_figures(run, tables, out_dir)
    unreadable = figures.write_contact_sheets(run, tables.sheets, out_dir / SHEETS_DIR)
    figures.write_model_cards(run, tables["intervals"], out_dir / CARDS_DIR)
    blocks = build_blocks(run, tables, run_info, unreadable)
    write_text(out_dir / "report.md", render_markdown(blocks))
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    leaky = f" — {split_label(run)} split" if run.leaky else ""
    title = f"busflow report — {run_info.get('dataset', 'unknown dataset')}{leaky}"
    subtitle = f"generated {generated} · busflow {run_info.get('busflow_version', 'n/a')}"
    write_text(out_dir / "index.html", render_html(blocks, title, subtitle))


def build_cross_matrix(*, runs: Sequence[Path], out_dir: Path) -> Path:
    """The cross-dataset matrix of several runs (each one row: its report's tables/cross_dataset.csv) as
    ``tables/cross_dataset.csv`` and ``figures/cross_dataset.png`` under ``out_dir``; returns the figure's path."""
    table = combine_runs([read_run_table(Path(run)) for run in runs])
    write_csv(Path(out_dir) / report_table(TABLE), table)
    figure = Path(out_dir) / report_figure(TABLE)
    figures.plot_cross_dataset(table, figure)
    return figure
