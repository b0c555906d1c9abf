"""The README's default-run paragraph is what benchmarks/default_run_summary.py makes of the committed run tables."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import default_run_summary as summary_script
from readme_results import README, with_table


def test_the_readme_paragraph_is_what_the_committed_tables_give() -> None:
    current = README.read_text(encoding="utf-8")
    assert current == with_table(current, summary_script.summary(), summary_script.START, summary_script.END)


def test_every_model_with_the_metric_is_named_with_its_interval() -> None:
    leaderboard = pd.read_csv(summary_script.RUN_DIR / "leaderboard.csv")
    text = summary_script.summary()
    for _, row in leaderboard[leaderboard["split"] == "kfold"].iterrows():
        for metric in (summary_script.CLASSIFICATION, summary_script.SEGMENTATION):
            if pd.notna(row[f"{metric}_pooled"]):
                assert f"{row.model} {row[f'{metric}_pooled']:.3f} [" in text


def _paired(ci_low: float, ci_high: float) -> pd.DataFrame:
    return pd.DataFrame([{"model": "unet", "score": "dice", "subset": "all", "n_pairs": 10, "n_seeds": 2,
                          "difference": (ci_low + ci_high) / 2, "ci_low": ci_low, "ci_high": ci_high}])


def test_an_interval_that_excludes_zero_is_called_a_leakage_effect() -> None:
    found = summary_script.leakage_sentence(_paired(0.01, 0.05))
    assert "+0.030 [+0.010, +0.050], significant" in found and "show a leakage effect" in found
    none = summary_script.leakage_sentence(_paired(-0.02, 0.04))
    assert "not significant" in none and "no leakage effect was found" in none


def test_every_model_and_score_of_the_paired_table_is_reported() -> None:
    paired = pd.concat([_paired(-0.02, 0.04), _paired(0.01, 0.05).assign(model="resnet50", score="roc_auc_macro")])
    text = summary_script.leakage_sentence(paired)
    assert "unet's Dice: all (10 image × draw pairs) +0.010 [−0.020, +0.040], not significant" in text
    assert "resnet50's macro ROC AUC: all (10 image × draw pairs) +0.030 [+0.010, +0.050], significant" in text
    assert text.endswith("so the phantoms show a leakage effect.")


def test_each_segmenter_s_diameter_error_is_reported_with_its_interval() -> None:
    sizes = pd.DataFrame([{"model": m, "statistic": statistic, "estimate": e, "ci_low": e - 0.3, "ci_high": e + 0.3,
                           "true_diameter_median_mm": 9.66}
                          for m, e in (("unet", 1.32), ("seg_ensemble", 1.36)) for statistic in ("diameter_abs_error_mm", "diameter_error_mm")])
    text = summary_script.size_sentence(sizes)
    assert "unet 1.32 [1.02, 1.62] mm, seg_ensemble 1.36 [1.06, 1.66] mm" in text and "median true diameter 9.7 mm" in text
    assert summary_script.size_sentence(sizes.iloc[:0]) == "The run measures no lesion sizes in mm."
