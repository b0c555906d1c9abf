"""Report tables: dataset, split audit, groups and duplicate clusters, per-fold and per-class metrics,
leaderboard and leakage study.

All functions return plain :class:`pandas.DataFrame` objects with a fixed column order so the
CSV files are deterministic and header-only (but valid) when a section does not apply.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from busflow.data.folder import patients_known
from busflow.evaluate.catalogue import CLASSIFICATION, PER_CLASS, SEGMENTATION, names, selected
from busflow.layout import REPORT_DIRS
from busflow.report.loading import FoldResult, RunResults, to_float
from busflow.report.uncertainty import interval_lookup
from busflow.split.protocols import EXCLUDED, role_columns

CLS_METRICS = names("table", CLASSIFICATION)  # the columns of tables/classification.csv
SEG_METRICS = names("table", SEGMENTATION)  # ... of tables/segmentation.csv
PER_CLASS_METRICS = names("table", PER_CLASS)  # ... of tables/per_class.csv
# Metrics summarised in the leaderboard: mean and sd over folds; pooled value with its bootstrap interval.
LEADERBOARD_METRICS = selected("leaderboard")
GROUP_COLUMNS: tuple[str, ...] = ("group_id", "n_images", "image_ids", "labels", "reasons", "min_score", "max_score",
                                  "label_conflict")
SHEETS_DIR = REPORT_DIRS[0]  # the contact sheets of the duplicate clusters
CARDS_DIR = REPORT_DIRS[1]  # one card per model (figures.write_model_cards)


def card_name(model: str) -> str:
    """The card file of ``model``, relative to the cards folder."""
    return f"{model}.png"
# (metrics.json block, metric) compared between the grouped and the image-level split in the leakage study,
# between the in-domain and the external test images, and across the ablation grid.
LEAKAGE_METRICS = tuple((m.block, m.name) for m in selected("study"))
ABLATION_COLUMNS: tuple[str, ...] = ("model", "lr", "options", "metric", "mean", "sd", "folds")
EXTERNAL_COLUMNS: tuple[str, ...] = ("dataset", "model", "metric", "in_domain_mean", "in_domain_sd", "external_mean",
                                     "external_sd", "difference", "folds", "external_images")
LEAKAGE_COLUMNS: tuple[str, ...] = ("model", "metric", "grouped_mean", "grouped_sd", "grouped_folds",
                                    "image_level_mean", "image_level_sd", "image_level_folds", "inflation")


# --------------------------------------------------------------------------- dataset & split


def dataset_table(index: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Images, patients (n/a where the source publishes none) and colour-overlay images per class, plus ``all``."""
    rows = []
    for name in [*classes, *sorted(set(index["label"].astype(str)) - set(classes))]:
        part = index[index["label"].astype(str) == name]
        rows.append(_count_row(name, part, len(index)))
    rows.append(_count_row("all", index, len(index)))
    return pd.DataFrame(rows, columns=["class", "images", "patients", "fraction_images", "colour_overlay"])


def _count_row(name: str, part: pd.DataFrame, total: int) -> dict[str, object]:
    return {
        "class": name,
        "images": len(part),
        "patients": part["patient_id"].nunique() if patients_known(part) else math.nan,
        "fraction_images": len(part) / total if total else math.nan,
        "colour_overlay": int(part["colour_overlay"].astype(bool).sum()),
    }


def split_table(run: RunResults) -> pd.DataFrame:
    """split/split_counts.csv (one row per split x role column x role) plus the audit's ``crossings`` there."""
    crossings = audit_crossings(run.audit)
    keys = zip(run.split_counts["split"], run.split_counts["column"])
    return run.split_counts.assign(crossings=[crossings.get(key, "none") for key in keys])


def audit_crossings(audit: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    """(split, column) -> ``"none"`` or the non-zero crossing counts of split/audit.json, ``; ``-joined."""
    out = {}
    for split in audit.get("splits", []):
        for check in split.get("columns", []):
            found = [f"{n} {what}" for what, n in check.items() if " across " in what and n]
            out[(str(split["split"]), str(check["column"]))] = "; ".join(found) or "none"
    return out


def excluded_images(folds: pd.DataFrame) -> int:
    """Images excluded from every test fold's roles (e.g. label conflicts dropped by the split)."""
    columns = [c for c in role_columns(folds) if c.startswith("fold")]
    return int((folds[columns] == EXCLUDED).all(axis=1).sum()) if columns else 0


# --------------------------------------------------------------------------- grouping & duplicate clusters


def groups_table(run: RunResults) -> pd.DataFrame:
    """One row per group of several images: members, labels, link reasons and link score range."""
    groups = run.groups.merge(run.index[["image_id", "label"]], on="image_id", how="left")
    group_of = dict(zip(groups["image_id"], groups["group_id"]))
    links_of = dict(tuple(run.links.groupby(run.links["image_a"].map(group_of), sort=False)))
    rows = []
    for group_id, part in groups.groupby("group_id", sort=True):
        if len(part) < 2:
            continue
        links = links_of.get(group_id, run.links.iloc[:0])
        scores = pd.to_numeric(links["score"], errors="coerce")
        rows.append({"group_id": group_id, "n_images": len(part), "image_ids": "; ".join(sorted(part["image_id"])),
                     "labels": "; ".join(sorted(set(part["label"].astype(str)))),
                     "reasons": "; ".join(sorted(set(links["reason"].astype(str)))),
                     "min_score": scores.min(), "max_score": scores.max(),
                     "label_conflict": bool(part["label_conflict"].any())})
    frame = pd.DataFrame(rows, columns=GROUP_COLUMNS)
    return frame.sort_values(["n_images", "group_id"], ascending=[False, True], kind="stable").reset_index(drop=True)


def duplicate_links(links: pd.DataFrame) -> pd.DataFrame:
    """The links found in the images (exact, near-duplicate, same-lesion views), not the patient links."""
    return links[links["reason"].astype(str) != "patient"]


@dataclass(frozen=True)
class DuplicateCluster:
    """Images joined by exact/near-duplicate links, with those links and the path of its contact sheet."""

    cluster_id: str
    image_ids: tuple[str, ...]
    labels: tuple[str, ...]
    label_conflict: bool
    links: pd.DataFrame = field(compare=False)
    sheet: str = ""  # relative to the report directory

    @property
    def caption(self) -> str:
        """Cluster, size and labels, ``LABEL CONFLICT`` when they differ."""
        conflict = " · LABEL CONFLICT" if self.label_conflict else ""
        return f"cluster {self.cluster_id}: {len(self.image_ids)} images · {', '.join(self.labels)}{conflict}"


def duplicate_clusters(run: RunResults) -> tuple[DuplicateCluster, ...]:
    """Connected components of the duplicate links; label conflicts first, then larger clusters, then by id."""
    from busflow.split.dedup import duplicate_clusters as components

    links = duplicate_links(run.links)
    roots = pd.Series(components(sorted(set(links["image_a"]) | set(links["image_b"])), links), dtype=str)
    label_of = dict(zip(run.index["image_id"], run.index["label"].astype(str)))
    conflict_of = dict(zip(run.groups["image_id"], run.groups["label_conflict"]))
    found = []
    for cluster_id, members in roots.groupby(roots, sort=True):
        ids = tuple(sorted(members.index))
        found.append(DuplicateCluster(str(cluster_id), ids, tuple(sorted({label_of.get(i, "?") for i in ids})),
                                      any(conflict_of.get(i, False) for i in ids),
                                      links[links["image_a"].isin(ids)].reset_index(drop=True)))
    found.sort(key=lambda c: (not c.label_conflict, -len(c.image_ids), c.cluster_id))
    return tuple(replace(c, sheet=f"{SHEETS_DIR}/{k:04d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', c.cluster_id)}.png")
                 for k, c in enumerate(found, start=1))


# --------------------------------------------------------------------------- per-fold metrics


def split_label(run: RunResults) -> str:
    """The split protocol of the run's models, marked ``(LEAKY)`` for the image-level split."""
    return f"{run.protocol} (LEAKY)" if run.leaky else run.protocol


def _fold_table(run: RunResults, part: str, metrics: tuple[str, ...]) -> pd.DataFrame:
    """One row per model x fold with the scalar ``metrics`` of one part ('classification'/'segmentation')."""
    columns = ["model", "split", "fold", "n_test_images", *metrics]
    rows = [
        {"model": r.model, "split": split_label(run), "fold": r.fold, "n_test_images": r.metrics.get("n_test_images"),
         **{m: to_float(getattr(r, part).get(m)) for m in metrics}}
        for r in run.results
        if getattr(r, part) is not None
    ]
    return pd.DataFrame(rows, columns=columns)


def classification_table(run: RunResults) -> pd.DataFrame:
    """One row per model x fold with all scalar classification metrics."""
    return _fold_table(run, CLASSIFICATION, CLS_METRICS)


def segmentation_table(run: RunResults) -> pd.DataFrame:
    """One row per model x fold with all scalar segmentation metrics and image counts."""
    return _fold_table(run, SEGMENTATION, SEG_METRICS)


def per_class_table(run: RunResults) -> pd.DataFrame:
    """One row per model x fold x class."""
    columns = ["model", "fold", "class", *PER_CLASS_METRICS]
    rows = []
    for r in run.results:
        if r.classification is None:
            continue
        per_class = r.classification.get("per_class") or {}
        for name in model_classes(r, run.classes):
            values = per_class.get(name) or {}
            rows.append({"model": r.model, "fold": r.fold, "class": name,
                         **{m: to_float(values.get(m)) for m in PER_CLASS_METRICS}})
    return pd.DataFrame(rows, columns=columns)


def model_classes(result: FoldResult, default: Sequence[str]) -> list[str]:
    """Class names of a classification result (from metrics.json, else the run's classes)."""
    cls = result.classification or {}
    return [str(c) for c in (cls.get("classes") or default)]


# --------------------------------------------------------------------------- leaderboard


def leaderboard_table(run: RunResults, cls_table: pd.DataFrame, seg_table: pd.DataFrame, intervals: pd.DataFrame) -> pd.DataFrame:
    """One row per model: mean and sd over folds (NaN-skipping, sd with ddof=1), and the pooled value over
    all test images with its group-bootstrap interval (tables/intervals.csv)."""
    columns = ["model", "split", "tasks", "n_folds"]
    for metric in names("leaderboard"):
        columns += [f"{metric}_mean", f"{metric}_sd", f"{metric}_pooled", f"{metric}_ci_low", f"{metric}_ci_high"]
    pooled = interval_lookup(intervals)
    tables = {CLASSIFICATION: cls_table, SEGMENTATION: seg_table}
    rows = []
    for model in run.models:
        row: dict[str, object] = {"model": model, "split": split_label(run), "tasks": model_tasks(run, model),
                                  "n_folds": len(run.of_model(model))}
        for metric in LEADERBOARD_METRICS:
            table, name = tables[metric.block], metric.name
            row[f"{name}_mean"], row[f"{name}_sd"] = mean_sd(table.loc[table["model"] == model, name])
            estimate = pooled.get((model, metric.path), (math.nan,) * 3)
            row[f"{name}_pooled"], row[f"{name}_ci_low"], row[f"{name}_ci_high"] = estimate
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def headline_metrics(leaderboard: pd.DataFrame) -> dict[str, dict[str, dict[str, float | None]]]:
    """``report/headline.json``: per model and headline metric its pooled value with interval and the fold mean
    and sd (null where undefined), the file ``dvc metrics show`` and ``dvc exp show`` list."""
    def value(number: object) -> float | None:
        number = float(number)
        return None if math.isnan(number) else round(number, 6)

    return {row["model"]: {metric: {part: value(row[f"{metric}_{part}"]) for part in ("pooled", "ci_low", "ci_high", "mean", "sd")}
                           for metric in names("headline")}
            for _, row in leaderboard.iterrows()}


def mean_sd(values: pd.Series) -> tuple[float, float]:
    """Mean and sample sd (ddof=1) of the defined values; NaN when too few are defined."""
    values = pd.to_numeric(values, errors="coerce")
    mean = float(values.mean()) if values.notna().any() else math.nan
    sd = float(values.std(ddof=1)) if values.notna().sum() > 1 else math.nan
    return mean, sd


# --------------------------------------------------------------------------- leakage study


def leakage_table(run: RunResults) -> pd.DataFrame:
    """Per leakage model and headline metric: grouped vs image-level mean ± sd over folds and the inflation."""
    rows = []
    for model in run.leakage_models:
        leaky = [r for r in run.leaky_results if r.model == model]
        for part, metric in LEAKAGE_METRICS:
            grouped, image_level = _metric_values(run.of_model(model), part, metric), _metric_values(leaky, part, metric)
            if grouped.isna().all() and image_level.isna().all():
                continue
            (g_mean, g_sd), (i_mean, i_sd) = mean_sd(grouped), mean_sd(image_level)
            rows.append({"model": model, "metric": metric, "grouped_mean": g_mean, "grouped_sd": g_sd,
                         "grouped_folds": int(grouped.notna().sum()), "image_level_mean": i_mean,
                         "image_level_sd": i_sd, "image_level_folds": int(image_level.notna().sum()),
                         "inflation": i_mean - g_mean})
    return pd.DataFrame(rows, columns=LEAKAGE_COLUMNS)


def ablation_table(run: RunResults) -> pd.DataFrame:
    """Per ablation cell (learning rate x option set) and headline metric: mean ± sd over folds."""
    rows = []
    for (lr, variant), results in run.ablation.items():
        for part, metric in LEAKAGE_METRICS:
            values = _metric_values(results, part, metric)
            if values.isna().all():
                continue
            mean, sd = mean_sd(values)
            rows.append({"model": results[0].model, "lr": lr, "options": variant, "metric": metric, "mean": mean, "sd": sd,
                         "folds": int(values.notna().sum())})
    return pd.DataFrame(rows, columns=ABLATION_COLUMNS)


def external_table(run: RunResults) -> pd.DataFrame:
    """Per external dataset, model and headline metric: the in-domain test value beside the external one
    (both mean ± sd over the fold models) and their difference."""
    rows = []
    for dataset, results in run.external.items():
        for model in dict.fromkeys(r.model for r in results):
            tested = [r for r in results if r.model == model]
            for part, metric in LEAKAGE_METRICS:
                inside, outside = _metric_values(run.of_model(model), part, metric), _metric_values(tested, part, metric)
                if outside.isna().all():
                    continue
                (in_mean, in_sd), (out_mean, out_sd) = mean_sd(inside), mean_sd(outside)
                rows.append({"dataset": dataset, "model": model, "metric": metric, "in_domain_mean": in_mean,
                             "in_domain_sd": in_sd, "external_mean": out_mean, "external_sd": out_sd,
                             "difference": out_mean - in_mean, "folds": int(outside.notna().sum()),
                             "external_images": int(tested[0].metrics.get("n_test_images", 0))})
    return pd.DataFrame(rows, columns=EXTERNAL_COLUMNS)


def _metric_values(results: Sequence[FoldResult], part: str, metric: str) -> pd.Series:
    """One metric of one metrics.json block over folds (NaN where undefined or the block is absent)."""
    return pd.Series([to_float((getattr(r, part) or {}).get(metric)) for r in results], dtype=float)


def model_tasks(run: RunResults, model: str) -> str:
    """``cls``, ``seg`` or ``cls+seg`` from which metric blocks the model reported."""
    tasks = [t for t, has in (("cls", run.has_classification(model)), ("seg", run.has_segmentation(model))) if has]
    return "+".join(tasks) if tasks else "none"


def pooled_predictions(run: RunResults, model: str) -> pd.DataFrame:
    """Test predictions of all folds of a model, concatenated with a ``fold`` column."""
    parts = [r.predictions.assign(fold=r.fold) for r in run.of_model(model) if r.predictions is not None]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def one_vs_rest_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of a binary problem, NaN when only one class is present."""
    if len(np.unique(y_true)) < 2:
        return math.nan
    return float(roc_auc_score(y_true, scores))


def pooled_per_image(run: RunResults, model: str) -> pd.DataFrame:
    """Per-image segmentation rows of all folds of a model, with a ``fold`` column."""
    parts = [r.per_image.assign(fold=r.fold) for r in run.of_model(model)
             if r.segmentation is not None and "dice" in r.per_image]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
