"""Reproduction tables: a paper's published numbers beside this run's (mean ± sd over folds), with both
protocols named, so a reader sees how much of a published number survives a leak-free split."""

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
REPRODUCTION_COLUMNS = ["paper", "model", "metric", "paper_value", "ours_mean", "ours_sd", "folds", "delta",
                        "ours_pooled", "ci_low", "ci_high", "status", "our_protocol", "paper_protocol"]


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


def _row(paper: str, entry: dict[str, Any], results: Sequence[FoldResult], our_protocol: str, paper_protocol: str,
         pooled: Mapping[tuple[str, str], tuple[float, float, float]]) -> dict[str, Any]:
    values = pd.Series([metric_value(r.metrics, entry["metric"]) for r in results if r.model == entry["model"]], dtype=float)
    defined = values.dropna()
    mean = float(defined.mean()) if len(defined) else math.nan
    status = ("model not in this run" if values.empty else "metric not computed" if defined.empty else "ok")
    return {"paper": paper, "model": entry["model"], "metric": entry["label"], "paper_value": float(entry["value"]),
            "ours_mean": mean, "ours_sd": float(defined.std(ddof=1)) if len(defined) > 1 else math.nan,
            "folds": len(defined), "delta": mean - float(entry["value"]), "status": status,
            **dict(zip(("ours_pooled", "ci_low", "ci_high"), pooled.get((entry["model"], entry["metric"]), (math.nan,) * 3))),
            "our_protocol": our_protocol, "paper_protocol": paper_protocol}


def reproduction_table(paper: str | None, results: Sequence[FoldResult], our_protocol: str, intervals: pd.DataFrame) -> pd.DataFrame:
    """One row per published number of ``paper`` (empty when the run reproduces no paper): ours as mean ± sd
    over folds and as the pooled value with its bootstrap interval (tables/intervals.csv)."""
    if not paper:
        return pd.DataFrame(columns=REPRODUCTION_COLUMNS)
    if paper not in published():
        raise ValueError(f"reproduces: no published values for '{paper}' (known: {sorted(published())})")
    source = published()[paper]
    pooled = interval_lookup(intervals)
    rows = [_row(paper, entry, results, our_protocol, source["protocol"], pooled) for entry in source["rows"]]
    return pd.DataFrame(rows, columns=REPRODUCTION_COLUMNS)
