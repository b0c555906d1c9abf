"""Read the pipeline's result files (data, split, per-model/per-fold outputs) into memory."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from busflow.io import read_table

DONE_LINE = re.compile(r"^busflow (\w+): done in ([0-9.]+)s$", re.MULTILINE)  # the CLI's last line per job
from busflow.layout import LEAKY_SPLIT, SPLIT_FILES, ablation_cell, leaky_part


@dataclass(frozen=True)
class FoldResult:
    """Everything one model produced on one fold."""

    model: str
    fold: int
    directory: Path
    metrics: dict[str, Any]
    history: pd.DataFrame
    per_image: pd.DataFrame
    predictions: pd.DataFrame | None
    description: dict[str, Any] = field(default_factory=dict)  # model.json
    split_seed: int | None = None  # a leakage-study run: the seed its image-level split was drawn with

    @property
    def classification(self) -> dict[str, Any] | None:
        return self.metrics.get("classification") or None

    @property
    def segmentation(self) -> dict[str, Any] | None:
        return self.metrics.get("segmentation") or None

    @property
    def masks_path(self) -> Path:
        """Test-set outputs of the train stage; lesion probabilities under key ``mask_probs``."""
        return self.directory / "predictions.npz"


@dataclass(frozen=True)
class RunResults:
    """All inputs of the report stage."""

    index: pd.DataFrame
    arrays_path: Path
    folds_table: pd.DataFrame
    groups: pd.DataFrame
    links: pd.DataFrame
    conflicts: pd.DataFrame
    split_counts: pd.DataFrame
    audit: dict[str, Any]
    models: tuple[str, ...]
    folds: tuple[int, ...]
    classes: tuple[str, ...]
    results: tuple[FoldResult, ...] = field(default_factory=tuple)
    leakage_models: tuple[str, ...] = ()
    leaky_results: tuple[FoldResult, ...] = field(default_factory=tuple)  # the same models on the image-level split
    external: dict[str, tuple[FoldResult, ...]] = field(default_factory=dict)  # dataset -> fold models tested on it
    ablation: dict[tuple[float, str], tuple[FoldResult, ...]] = field(default_factory=dict)  # (lr, option set) -> folds

    @property
    def root(self) -> Path:
        """``results/<run>/``, which every pipeline output path is relative to."""
        return self.arrays_path.parent.parent

    def job_times(self) -> pd.DataFrame:
        """Wall time of every finished pipeline job, from the last line of its log under ``logs/``."""
        logs, rows = self.root / "logs", []
        for log in sorted(logs.rglob("*.log")):
            found = DONE_LINE.findall(log.read_text(encoding="utf-8", errors="replace"))
            if found:
                stage, seconds = found[-1]
                rows.append({"job": log.relative_to(logs).with_suffix("").as_posix(), "stage": stage, "seconds": float(seconds)})
        return pd.DataFrame(rows, columns=["job", "stage", "seconds"])

    @property
    def protocol(self) -> str:
        """The split protocol the models were trained on (``protocol`` column of folds.csv)."""
        return str(self.folds_table["protocol"].iloc[0]) if len(self.folds_table) else "n/a"

    @property
    def leaky(self) -> bool:
        """True when the main split itself is the deliberately leaky image-level split."""
        return self.protocol == LEAKY_SPLIT

    def of_model(self, model: str) -> list[FoldResult]:
        """The fold results of one model, in fold order."""
        return [r for r in self.results if r.model == model]

    def fold_result(self, model: str, fold: int) -> FoldResult:
        """The result of one model on one fold."""
        return next(r for r in self.results if r.model == model and r.fold == fold)

    def has_classification(self, model: str) -> bool:
        return any(r.classification is not None for r in self.of_model(model))

    def has_segmentation(self, model: str) -> bool:
        return any(r.segmentation is not None for r in self.of_model(model))

    @property
    def cls_models(self) -> list[str]:
        return [m for m in self.models if self.has_classification(m)]

    @property
    def seg_models(self) -> list[str]:
        return [m for m in self.models if self.has_segmentation(m)]


def to_float(value: Any) -> float:
    """Metric value as float; ``None``/non-numeric/non-finite become NaN."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


def _read_csv_optional(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.exists() else None


def fold_directory(results_dir: Path, model: str, fold: int, split: str = "main", ensembles: Sequence[str] = (),
                   split_seed: int | None = None) -> Path:
    """Where one model's fold outputs are: ``models/<model>/[random_image/seed<S>/]fold<k>`` or
    ``ensembles/<name>/fold<k>``."""
    if model in ensembles:
        return results_dir / "ensembles" / model / f"fold{fold}"
    return results_dir / "models" / model / f"{leaky_part(split, split_seed)}fold{fold}"


def load_fold(directory: Path, model: str, fold: int, split_seed: int | None = None) -> FoldResult:
    """Read metrics.json, history.csv (absent for ensembles), per_image.csv and predictions.csv of one fold."""
    metrics = json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
    history = _read_csv_optional(directory / "history.csv")
    per_image = _read_csv_optional(directory / "per_image.csv")
    return FoldResult(
        model=model,
        fold=int(fold),
        directory=directory,
        metrics=metrics,
        history=history if history is not None else pd.DataFrame(),
        per_image=per_image if per_image is not None else pd.DataFrame(),
        predictions=_read_csv_optional(directory / "predictions.csv"),
        description=json.loads((directory / "model.json").read_text(encoding="utf-8")) if (directory / "model.json").exists() else {},
        split_seed=split_seed,
    )


def _classes_from(arrays_path: Path, fallback: Sequence[str]) -> tuple[str, ...]:
    if arrays_path.exists():
        with np.load(arrays_path, allow_pickle=False) as npz:
            if "classes" in npz.files:
                return tuple(str(c) for c in npz["classes"])
    return tuple(str(c) for c in fallback)


def _read_split(results_dir: Path, key: str) -> pd.DataFrame:
    """One table of the split stage (:data:`SPLIT_FILES`)."""
    return read_table(results_dir / SPLIT_FILES[key])


def _audit(results_dir: Path) -> dict[str, Any]:
    """The main split's audit, joined with the leakage study's where the run has one."""
    audits = [json.loads((results_dir / SPLIT_FILES["audit"]).read_text(encoding="utf-8"))]
    leaky = results_dir / SPLIT_FILES["leaky_audit"]
    if leaky.is_file():
        audits.append(json.loads(leaky.read_text(encoding="utf-8")))
    return {"passed": all(audit["passed"] for audit in audits), "splits": [s for audit in audits for s in audit["splits"]]}


def _split_counts(results_dir: Path) -> pd.DataFrame:
    counts = [_read_split(results_dir, "counts")]
    if (results_dir / SPLIT_FILES["leaky_counts"]).is_file():
        counts.append(_read_split(results_dir, "leaky_counts"))
    return pd.concat(counts, ignore_index=True)


def load_results(
    results_dir: Path,
    models: Sequence[str],
    folds: Sequence[int],
    classes: Sequence[str],
    leakage_models: Sequence[str] = (),
    ensembles: Sequence[str] = (),
    external: Mapping[str, Any] | None = None,
    ablation: Mapping[str, Any] | None = None,
    leakage_seeds: Sequence[int] = (),
) -> RunResults:
    """Load every input of the report for the given models (ensembles among them) and folds, and the
    leakage study's runs (each leakage model on each fold of the image-level split of each seed)."""
    results_dir = Path(results_dir)
    arrays_path = results_dir / "data" / "arrays.npz"
    return RunResults(
        index=read_table(results_dir / "data" / "index.csv"),
        arrays_path=arrays_path,
        folds_table=_read_split(results_dir, "folds"),
        groups=_read_split(results_dir, "groups"),
        links=_read_split(results_dir, "links"),
        conflicts=_read_split(results_dir, "conflicts"),
        split_counts=_split_counts(results_dir),
        audit=_audit(results_dir),
        models=tuple(models),
        folds=tuple(int(f) for f in folds),
        classes=_classes_from(arrays_path, classes),
        results=tuple(load_fold(fold_directory(results_dir, m, f, ensembles=ensembles), m, f) for m in models for f in folds),
        leakage_models=tuple(leakage_models),
        leaky_results=tuple(load_fold(fold_directory(results_dir, m, f, LEAKY_SPLIT, split_seed=s), m, f, split_seed=s)
                            for m in leakage_models for s in leakage_seeds for f in folds),
        external={dataset: tuple(load_fold(results_dir / "external" / dataset / m / f"fold{f}", m, f)
                                 for m in external["models"] for f in folds)
                  for dataset in (external or {}).get("datasets", [])},
        ablation=_load_ablation(results_dir, ablation, folds),
    )


def _load_ablation(results_dir: Path, ablation: Mapping[str, Any] | None, folds: Sequence[int]) -> dict[tuple[float, str], tuple[FoldResult, ...]]:
    if not ablation or not ablation.get("model"):
        return {}
    model = ablation["model"]
    return {(float(lr), variant): tuple(load_fold(results_dir / "models" / model / "ablation" / ablation_cell(lr, variant) / f"fold{f}", model, f)
                                        for f in folds)
            for lr in ablation["lr"] for variant in ablation["options"]}
