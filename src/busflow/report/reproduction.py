"""Reproduction tables: a paper's published numbers beside this run's (mean ± sd over folds, and the best fold
where the paper reports its best fold), with both protocols and both metric definitions named, so a reader sees
how much of a published number survives a leak-free split."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from busflow.report.loading import FoldResult
from busflow.report.uncertainty import interval_lookup

PUBLISHED = Path(__file__).with_name("published.yaml")
REPRODUCTION_COLUMNS = ["paper", "model", "paper_model", "metric", "paper_value", "ours_mean", "ours_sd", "ours_best",
                        "folds", "delta", "ours_pooled", "ci_low", "ci_high", "status", "definition", "paper_source",
                        "our_protocol", "paper_protocol"]
BEST_FOLD = "best_fold"  # an entry's aggregate when the paper reports its best fold
LOWER_IS_BETTER = ("fpr", "hd95")  # metric names whose best fold is the lowest value


@cache
def published() -> dict[str, Any]:
    """Published values per paper key (p000 ... p004)."""
    return yaml.safe_load(PUBLISHED.read_text(encoding="utf-8"))


def metric_value(metrics: dict[str, Any], path: str) -> float:
    """A value of metrics.json by dotted path; ``...per_class.<c>.fpr`` is 1 - that class's specificity."""
    *parents, leaf = path.split(".")
    node: Any = metrics
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return math.nan
    if leaf == "fpr" and node.get("specificity") is not None:
        return 1.0 - float(node["specificity"])
    value = node.get(leaf)
    return float(value) if isinstance(value, (int, float)) else math.nan


def _fold_value(metric: str) -> str:
    """How busflow computes one test fold's value of ``metric``."""
    block, *path = metric.split(".")
    name = path[-1]
    if block == "classification":
        if path[0] == "per_class":
            return f"{path[1]} against the rest"
        return {"macro": "macro mean over classes", "weighted": "support-weighted mean over classes"}.get(
            name.rpartition("_")[2], name.replace("_", " "))
    if name.startswith("pooled_"):
        return "pixel-pooled"
    if name.endswith("_lesion_images"):
        return "per-image mean over lesion images"
    if name == "pixel_accuracy":
        return "pooled over all pixels"
    return "per-image mean" + (" (empty masks: evaluate.empty_mask)" if name in ("dice", "iou_tumour") else "")


def our_definition(metric: str, aggregate: str | None = None) -> str:
    """The definition of our value beside a published number: per test fold, then over folds."""
    spread = "mean ± sd and best fold" if aggregate == BEST_FOLD else "mean ± sd over folds"
    return f"{_fold_value(metric)} on each test fold, {spread}"


def _best(values: pd.Series, metric: str) -> float:
    if values.empty:
        return math.nan
    return float(values.min() if metric.rpartition(".")[2] in LOWER_IS_BETTER else values.max())


def _class_mismatch(entry: Mapping[str, Any], classes: Sequence[str]) -> str | None:
    """Why a published number over other classes than the run's is not set beside ours (None: comparable)."""
    if "classes" not in entry or set(entry["classes"]) == set(classes):
        return None
    return f"paper's value is over {', '.join(entry['classes'])}; this run has {', '.join(classes)}"


def _row(paper: str, entry: dict[str, Any], results: Sequence[FoldResult], our_protocol: str, paper_protocol: str,
         pooled: Mapping[tuple[str, str], tuple[float, float, float]], classes: Sequence[str]) -> dict[str, Any]:
    mismatch = _class_mismatch(entry, classes)
    compared = [] if mismatch else [r for r in results if r.model == entry["model"]]
    values = pd.Series([metric_value(r.metrics, entry["metric"]) for r in compared], dtype=float)
    defined = values.dropna()
    mean = float(defined.mean()) if len(defined) else math.nan
    status = mismatch or ("model not in this run" if values.empty else "metric not computed" if defined.empty else "ok")
    if mismatch:
        pooled = {}
    aggregate = entry.get("aggregate")
    return {"paper": paper, "model": entry["model"], "paper_model": entry["paper_model"], "metric": entry["label"],
            "paper_value": float(entry["value"]), "ours_mean": mean,
            "ours_sd": float(defined.std(ddof=1)) if len(defined) > 1 else math.nan,
            "ours_best": _best(defined, entry["metric"]) if aggregate == BEST_FOLD else math.nan,
            "folds": len(defined), "delta": mean - float(entry["value"]), "status": status,
            **dict(zip(("ours_pooled", "ci_low", "ci_high"), pooled.get((entry["model"], entry["metric"]), (math.nan,) * 3))),
            "definition": f"{entry['definition']} (paper) / {our_definition(entry['metric'], aggregate)} (ours)",
            "paper_source": entry["source"], "our_protocol": our_protocol, "paper_protocol": paper_protocol}


def reproduction_table(paper: str | None, results: Sequence[FoldResult], our_protocol: str, intervals: pd.DataFrame, *,
                       classes: Sequence[str]) -> pd.DataFrame:
    """One row per published number of ``paper`` (empty when the run reproduces no paper): ours as mean ± sd
    over folds (and the best fold where the paper gives its best fold), as the pooled value with its bootstrap
    interval (tables/intervals.csv), and both definitions with the paper's table or section. A number the paper
    gives over other ``classes`` than the run's (an entry's ``classes:``) is listed without ours beside it."""
    if not paper:
        return pd.DataFrame(columns=REPRODUCTION_COLUMNS)
    if paper not in published():
        raise ValueError(f"reproduces: no published values for '{paper}' (known: {sorted(published())})")
    source = published()[paper]
    pooled = interval_lookup(intervals)
    rows = [_row(paper, entry, results, our_protocol, source["protocol"], pooled, classes) for entry in source["rows"]]
    return pd.DataFrame(rows, columns=REPRODUCTION_COLUMNS)
