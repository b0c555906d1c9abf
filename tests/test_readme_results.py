"""The README's real-data table is exactly what benchmarks/readme_results.py makes of the committed CSVs."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from readme_results import COLUMNS, NONE_YET, README, read_results, results_table, with_table


def test_the_readme_table_is_generated_from_the_committed_results() -> None:
    readme = README.read_text(encoding="utf-8")
    assert with_table(readme, results_table(read_results())) == readme


def _row(model: str, metric: str, pooled: float) -> dict:
    return {"dataset": "busi", "task": "benign vs malignant", "protocol": "grouped 5-fold", "size": 128, "model": model,
            "init": "scratch", "metric": metric, "fold_mean": pooled - 0.01, "fold_sd": 0.02, "pooled": pooled,
            "ci_low": pooled - 0.05, "ci_high": pooled + 0.04, "images": 647, "groups": 500, "wall_min": 12.4,
            "command": "python benchmarks/busi_transfer.py"}


def test_a_results_file_becomes_one_row_per_model_with_a_column_per_metric(tmp_path: Path) -> None:
    pd.DataFrame([_row("resnet50", "roc_auc_macro", 0.84), _row("resnet50", "balanced_accuracy", 0.75),
                  _row("mtl", "roc_auc_macro", 0.8)]).to_csv(tmp_path / "busi.csv", index=False)
    table = results_table(read_results(tmp_path))
    header, rule, first, second = table.splitlines()[:4]
    assert "| roc_auc_macro | balanced_accuracy |" in header and rule.count("---") == 10
    assert "| resnet50 | scratch | 0.840 [0.790, 0.880] · 0.830 ± 0.020 | 0.750 [0.700, 0.790] · 0.740 ± 0.020 |" in first
    assert second.endswith("| 0.800 [0.750, 0.840] · 0.790 ± 0.020 | n/a | 647 | 12 |")
    assert "    python benchmarks/busi_transfer.py" in table
    assert results_table(read_results(tmp_path / "empty")) == NONE_YET


def test_a_results_file_without_the_expected_columns_is_named(tmp_path: Path) -> None:
    pd.DataFrame([{c: 1 for c in COLUMNS if c != "ci_low"}]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad\.csv: missing column\(s\) \['ci_low'\]"):
        read_results(tmp_path)


def test_a_runs_note_is_printed_once_under_the_table(tmp_path: Path) -> None:
    note = "measured on shared cores"
    rows = [{**_row("resnet50", "roc_auc_macro", 0.84), "note": note}, {**_row("resnet50", "balanced_accuracy", 0.75), "note": note}]
    pd.DataFrame(rows).to_csv(tmp_path / "busi.csv", index=False)
    pd.DataFrame([_row("mtl", "roc_auc_macro", 0.8)]).to_csv(tmp_path / "other.csv", index=False)
    table = results_table(read_results(tmp_path))
    assert table.count(f"Note: {note}") == 1 and table.endswith(f"Note: {note}")
