"""Assemble the report's sections as renderer-neutral blocks."""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .loading import RunResults
from .render import (
    Block,
    Bullets,
    Details,
    Figure,
    Heading,
    KeyValues,
    Links,
    Para,
    Table,
    fmt_mean_sd,
    fmt_value,
    format_frame,
)
from .tables import overlap_by_fold

HEADLINE_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "roc_auc_macro",
    "dice",
    "iou_tumour",
    "dice_lesion_images",
    "empty_image_false_positive_rate",
)

METRIC_DOCS: tuple[tuple[str, str], ...] = (
    ("accuracy", "fraction of test images whose predicted class equals the true class."),
    ("balanced_accuracy", "mean per-class recall; insensitive to class imbalance (chance level = 1/number of classes)."),
    ("precision_macro", "unweighted mean over classes of TP / (TP + FP)."),
    ("recall_macro", "unweighted mean over classes of TP / (TP + FN) (sensitivity)."),
    ("specificity_macro", "unweighted mean over classes of TN / (TN + FP), each class one-vs-rest."),
    ("f1_macro", "unweighted mean over classes of the harmonic mean of precision and recall."),
    ("roc_auc_macro", "mean one-vs-rest area under the ROC curve; n/a when a class is missing from the test set."),
    ("dice", "2|P∩T| / (|P| + |T|) between the predicted (probability ≥ 0.5) and the true lesion mask."),
    ("iou_tumour", "intersection over union |P∩T| / |P∪T| of the lesion class."),
    ("iou_background", "intersection over union of the background class."),
    ("pixel_accuracy", "fraction of pixels labelled correctly (lesion or background)."),
    ("dice_lesion_images / iou_lesion_images", "Dice / IoU restricted to images whose ground truth has a lesion."),
    ("empty_image_false_positive_rate", "fraction of lesion-free images on which the model predicts any lesion pixel."),
    ("mean ± sd", "over the test folds (sample sd, ddof = 1; n/a with one fold); undefined fold values are skipped."),
    ("pooled", "computed once on all test images of all folds together (classification: pooled predictions; "
               "segmentation: mean of per-image values)."),
)


@dataclass(frozen=True)
class ReportTables:
    """The tables of the report, keyed like their CSV files."""

    dataset: pd.DataFrame
    split: pd.DataFrame
    leaderboard: pd.DataFrame
    classification: pd.DataFrame
    segmentation: pd.DataFrame
    per_class: pd.DataFrame

    def files(self) -> dict[str, pd.DataFrame]:
        """Relative CSV path -> table."""
        return {f"tables/{name}.csv": getattr(self, name) for name in
                ("leaderboard", "classification", "segmentation", "per_class", "dataset", "split")}


def library_versions() -> dict[str, str]:
    """Versions of the interpreter and the report's libraries (read at runtime)."""
    import matplotlib
    import numpy
    import seaborn
    import sklearn

    return {"python": platform.python_version(), "numpy": numpy.__version__, "pandas": pd.__version__,
            "scikit-learn": sklearn.__version__, "matplotlib": matplotlib.__version__,
            "seaborn": seaborn.__version__}


def build_blocks(run: RunResults, tables: ReportTables, run_info: Mapping[str, Any]) -> list[Block]:
    """All report sections in order."""
    return [
        *summary_blocks(run, tables, run_info),
        *dataset_blocks(tables),
        *split_blocks(tables),
        *leaderboard_blocks(tables),
        *figure_blocks(run),
        *per_fold_blocks(run, tables),
        *metric_blocks(),
        *convention_blocks(run_info),
        *params_blocks(run_info),
        *file_blocks(tables),
    ]


def summary_blocks(run: RunResults, tables: ReportTables, run_info: Mapping[str, Any]) -> list[Block]:
    """Dataset, hash, versions, models and folds."""
    index = run.index
    pairs = [
        ("dataset", str(run_info.get("dataset", "n/a"))),
        ("params sha256", str(run_info.get("params_sha256", "n/a"))),
        ("busflow", str(run_info.get("busflow_version", "n/a"))),
        *library_versions().items(),
        ("classes", ", ".join(run.classes)),
        ("images / patients", f"{len(index)} / {index['patient_id'].nunique() if 'patient_id' in index else 'n/a'}"),
        ("folds", ", ".join(str(f) for f in run.folds)),
    ]
    models = tuple(f"{row.model}: {row.tasks} ({row.n_folds} folds)" for row in tables.leaderboard.itertuples())
    return [Heading("Run summary"), KeyValues(tuple(pairs)), Para("Models:"),
            Bullets(models or ("no models in this run",))]


def dataset_blocks(tables: ReportTables) -> list[Block]:
    frame = format_frame(tables.dataset, count_columns=("images", "patients"))
    return [Heading("Dataset"), Table(frame, "Images and patients per class (tables/dataset.csv)")]


def split_blocks(tables: ReportTables) -> list[Block]:
    """Per-fold overlap verdict and the role-by-role counts."""
    blocks: list[Block] = [Heading("Patient-level split audit")]
    overlaps = overlap_by_fold(tables.split)
    for fold, text in overlaps.items():
        css = "ok" if text == "none" else "bad"
        blocks.append(Para(f"fold {fold}: patient overlap: {text}", css))
    if not overlaps:
        blocks.append(Para("no split information for the requested folds", "note"))
    counts = [c for c in tables.split.columns if c not in ("fold", "role", "patient_overlap")]
    frame = format_frame(tables.split.drop(columns=["patient_overlap"]), count_columns=counts)
    blocks.append(Table(frame, "Images, patients, groups and class counts per fold and role (tables/split.csv)"))
    return blocks


def leaderboard_display(leaderboard: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Headline metrics per model as ``mean ± sd`` (kind="mean_sd") or pooled values (kind="pooled")."""
    rows = []
    for _, row in leaderboard.iterrows():
        out = {"model": row["model"], "tasks": row["tasks"], "folds": fmt_value(row["n_folds"])}
        for metric in HEADLINE_METRICS:
            out[metric] = (fmt_mean_sd(row[f"{metric}_mean"], row[f"{metric}_sd"]) if kind == "mean_sd"
                           else fmt_value(row[f"{metric}_pooled"]))
        rows.append(out)
    return pd.DataFrame(rows, columns=["model", "tasks", "folds", *HEADLINE_METRICS])


def leaderboard_blocks(tables: ReportTables) -> list[Block]:
    lb = tables.leaderboard
    return [
        Heading("Leaderboard"),
        Table(leaderboard_display(lb, "mean_sd"), "Headline metrics, mean ± sd over folds", "no models"),
        Table(leaderboard_display(lb, "pooled"), "Headline metrics pooled over all test folds", "no models"),
        Para("All leaderboard metrics (mean, sd and pooled columns) are in tables/leaderboard.csv.", "note"),
    ]


def figure_blocks(run: RunResults) -> list[Block]:
    """Figure links with captions (placeholders say when a section does not apply)."""
    return [
        Heading("Figures"),
        Figure("figures/metrics_bar.png", "Key metrics per model, mean over folds with sd error bars."),
        Figure("figures/roc.png", "One-vs-rest ROC curves per class, test predictions pooled over folds."),
        Figure("figures/confusion.png", "Confusion matrices summed over folds (rows: true class)."),
        Figure("figures/overlays.png", "Best, median and worst test image by Dice per segmentation model: "
                                       "ground truth in green, prediction (p ≥ 0.5) in red."),
        Figure("figures/training_curves.png", "Training (solid) and validation (dashed) loss per epoch and fold."),
    ]


def per_fold_blocks(run: RunResults, tables: ReportTables) -> list[Block]:
    """Per model x fold metric tables."""
    no_cls, no_seg = "no classification models in this run", "no segmentation models in this run"
    counts = ("fold", "n_test_images", "n_lesion_images", "n_empty_images", "support")
    return [
        Heading("Per-fold results"),
        Table(format_frame(tables.classification, counts), "Classification (tables/classification.csv)", no_cls),
        Table(format_frame(tables.segmentation, counts), "Segmentation (tables/segmentation.csv)", no_seg),
        Table(format_frame(tables.per_class, counts), "Per-class classification metrics (tables/per_class.csv)",
              no_cls),
    ]


def metric_blocks() -> list[Block]:
    return [Heading("Metric definitions"), Bullets(tuple(f"{name}: {text}" for name, text in METRIC_DOCS))]


def convention_blocks(run_info: Mapping[str, Any]) -> list[Block]:
    """The empty-mask convention as recorded by the run, with context."""
    value = run_info.get("empty_mask_convention")
    recorded = "not recorded" if value is None else (value if isinstance(value, str) else _dump(value))
    return [
        Heading("Empty-mask convention"),
        Para(f"Recorded convention: {recorded}"),
        Para("Normal images contain no lesion, so their ground-truth mask is empty and Dice/IoU are 0/0 when the "
             "prediction is empty too; the convention above states how such images are scored in 'dice' and "
             "'iou_tumour'. dice_lesion_images and iou_lesion_images use lesion images only, and "
             "empty_image_false_positive_rate reports how often a lesion-free image receives a predicted lesion."),
    ]


def params_blocks(run_info: Mapping[str, Any]) -> list[Block]:
    params = run_info.get("params")
    text = _dump(params) if params is not None else "params not recorded"
    return [Heading("Parameters"), Details("params.yaml (click to expand)", text)]


def file_blocks(tables: ReportTables) -> list[Block]:
    return [Heading("Tables"), Links(tuple((path, path) for path in tables.files()))]


def _dump(value: Any) -> str:
    """YAML dump (sorted keys); JSON fallback for objects YAML cannot represent."""
    try:
        import yaml

        return yaml.safe_dump(value, sort_keys=True, default_flow_style=False, allow_unicode=True)
    except Exception:  # noqa: BLE001 - any representer error falls back to JSON
        return json.dumps(value, indent=2, sort_keys=True, default=str)
