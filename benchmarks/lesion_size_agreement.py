"""How well each segmenter of a finished run measures lesions in mm: its predicted against the true longest diameter
and area, from the ``per_image.csv`` of every fold (the run's images must have a known pixel spacing).

    python benchmarks/lesion_size_agreement.py --results results/synthetic [--csv FILE]

Over the test images with a true lesion and a known spacing, pooled over folds: the mean absolute error of the
longest diameter and its bias (predicted − true), each with a 95 % group-bootstrap interval (patients or
duplicate clusters, from ``predictions.csv``), the median absolute error, the correlation of the diameters, the
relative area error, and the fraction of lesions missed (no predicted lesion: no diameter to compare; left out
of the errors).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from busflow.evaluate.statistics import GroupBootstrap, percentile_interval, weighted_mean

N_RESAMPLES, SEED = 2000, 0
SIZE_COLUMNS = ["lesion_diameter_mm_true", "lesion_diameter_mm_pred", "lesion_area_mm2_true", "lesion_area_mm2_pred"]


def fold_tables(results: Path) -> dict[str, pd.DataFrame]:
    """Per model (a network or an ensemble): its folds' per-image sizes with each image's group, stacked."""
    tables: dict[str, list[pd.DataFrame]] = {}
    for per_image in sorted(results.glob("*/*/fold*/per_image.csv")):
        if per_image.parts[-4] not in ("models", "ensembles"):
            continue
        table = pd.read_csv(per_image, dtype={"image_id": str})
        if "lesion_diameter_mm_true" not in table.columns:
            continue
        groups = pd.read_csv(per_image.parent / "predictions.csv", dtype={"image_id": str, "group_id": str})
        table = table.merge(groups[["image_id", "group_id"]], on="image_id", validate="one_to_one")
        tables.setdefault(per_image.parts[-3], []).append(table.assign(fold=per_image.parent.name))
    return {model: pd.concat(parts, ignore_index=True) for model, parts in tables.items()}


def _interval(values: np.ndarray, groups: pd.Series) -> tuple[float, float, float]:
    bootstrap = GroupBootstrap.draw(groups.tolist(), N_RESAMPLES, SEED)
    low, high = percentile_interval(weighted_mean(values, bootstrap.weights), 0.95)
    return float(values.mean()), low, high


def agreement(model: str, table: pd.DataFrame) -> dict[str, object]:
    """The size agreement of one model over its lesion images of known spacing."""
    lesions = table[table["lesion_diameter_mm_true"].notna()]
    found = lesions[lesions["lesion_diameter_mm_pred"].notna()]
    error = (found["lesion_diameter_mm_pred"] - found["lesion_diameter_mm_true"]).to_numpy()
    mae, mae_low, mae_high = _interval(np.abs(error), found["group_id"])
    bias, bias_low, bias_high = _interval(error, found["group_id"])
    area_error = (found["lesion_area_mm2_pred"] - found["lesion_area_mm2_true"]) / found["lesion_area_mm2_true"]
    return {"model": model, "lesion_images": len(lesions), "missed": round(1 - len(found) / len(lesions), 3),
            "true_diameter_median_mm": round(float(found["lesion_diameter_mm_true"].median()), 2),
            "diameter_mae_mm": round(mae, 2), "mae_ci_low": round(mae_low, 2), "mae_ci_high": round(mae_high, 2),
            "diameter_bias_mm": round(bias, 2), "bias_ci_low": round(bias_low, 2), "bias_ci_high": round(bias_high, 2),
            "diameter_median_abs_error_mm": round(float(np.median(np.abs(error))), 2),
            "diameter_correlation": round(float(np.corrcoef(found["lesion_diameter_mm_true"], found["lesion_diameter_mm_pred"])[0, 1]), 3),
            "area_median_relative_error": round(float(area_error.median()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True, help="a finished run's results/<run> folder")
    parser.add_argument("--csv", type=Path, help="also write the table here")
    args = parser.parse_args()
    tables = fold_tables(args.results)
    if not tables:
        raise SystemExit(f"{args.results}: no per_image.csv with lesion sizes in mm (is the pixel spacing known?)")
    summary = pd.DataFrame([agreement(model, table) for model, table in sorted(tables.items())])
    print(summary.to_string(index=False))
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        summary.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
